"""The concept classifier of the world benchmark: which style and which object a generated image shows.

A purpose-built small CNN (:class:`WorldClassifier`) stands in for the paper's ImageNet ResNet18 (no pretrained
weights can be downloaded here, and the world's concepts are known exactly): images in [0, 1] are area-resized to
``input_size`` (32 px by default: every concept stays recognisable there, see :mod:`sepce.world.render`) and
go through four stages of two 3x3 conv-BatchNorm-ReLU layers (max-pooling between stages), global average
pooling and two linear heads, one over ``STYLES`` and one over ``OBJECTS``.

Training (:func:`train_classifier`) uses the world's ground truth only: rendered scenes with their exact labels,
a fraction of them passed through the world model's autoencoder (encode → decode), because generated images are
decoded by it and are smoother than renders, plus random blur, contrast and noise. It never sees an image the
diffusion model generated.

The classifier also supplies the benchmark's image features:

* :meth:`WorldClassifier.features` — the pooled penultimate features, the FID feature extractor
  (:data:`sepce.evaluation.fid.FeatureExtractor`);
* :func:`feature_distance` — a perceptual distance in the LPIPS construction (Zhang et al. 2018, Eq. 1) with unit
  channel weights (their "baseline" variant without learned linear layers): per stage, unit-normalise each
  position's feature vector over channels, take the squared difference, average over positions, sum over stages.
  Random-weight LPIPS would be meaningless; these features were trained to tell this world's concepts apart.

Weights ship as ``assets/world/classifier.safetensors`` with the architecture and class names in the file's
metadata (:func:`save_classifier` / :func:`load_classifier`).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from sepce.io import atomic_write
from sepce.paths import REPO_ROOT
from sepce.world.dataset import make_arrays, to_model_images, to_unit_images
from sepce.world.render import OBJECTS, STYLES

log = logging.getLogger(__name__)

CLASSIFIER_FORMAT = "sepce-world-classifier-v1"
IMAGE_SIZE = 64  # the world model's images, loaded at this size (the network area-resizes to its input_size)
SHIPPED_CLASSIFIER = REPO_ROOT / "assets" / "world" / "classifier.safetensors"


def _stage(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class WorldClassifier(nn.Module):
    """Images (B, 3, H, W) in [0, 1] → (style logits (B, 8), object logits (B, 8))."""

    def __init__(self, width: int = 32, input_size: int = 32, num_styles: int = len(STYLES), num_objects: int = 8):
        super().__init__()
        self.width, self.input_size = width, input_size
        channels = [width, 2 * width, 4 * width, 4 * width]
        self.stages = nn.ModuleList(_stage(c_in, c_out) for c_in, c_out in zip([3] + channels[:-1], channels))
        self.style_head = nn.Linear(channels[-1], num_styles)
        self.object_head = nn.Linear(channels[-1], num_objects)
        self.feature_dim = channels[-1]

    def stage_outputs(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Activations after each stage (before pooling): B×w×s×s, B×2w×s/2×s/2, ..."""
        x = images
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="area")
        x = (x - 0.5) / 0.25
        outs = []
        for i, stage in enumerate(self.stages):
            if i:
                x = F.max_pool2d(x, 2)
            x = stage(x)
            outs.append(x)
        return outs

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled penultimate features (B, 4·width) — the FID feature extractor."""
        return self.stage_outputs(images)[-1].mean((2, 3))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(images)
        return self.style_head(f), self.object_head(f)


@torch.no_grad()
def feature_distance(model: WorldClassifier, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-pair perceptual distance (B,) of images a, b (B, 3, H, W) in [0, 1] (see the module docstring)."""
    total = torch.zeros(a.shape[0], dtype=torch.float64)
    for fa, fb in zip(model.stage_outputs(a), model.stage_outputs(b)):
        na = fa / (fa.norm(dim=1, keepdim=True) + 1e-10)
        nb = fb / (fb.norm(dim=1, keepdim=True) + 1e-10)
        total += ((na - nb) ** 2).sum(1).mean((1, 2)).double()
    return total


# ------------------------------------------------------------------------------------------------ files
def save_classifier(path: Path | str, model: WorldClassifier, info: Optional[dict] = None, overwrite: bool = True):
    """Weights (float32) + metadata (format, width, input size, class names, ``info``) as safetensors."""
    from safetensors.torch import save_file

    meta = {
        "format": CLASSIFIER_FORMAT,
        "width": str(model.width),
        "input_size": str(model.input_size),
        "styles": json.dumps(list(STYLES)),
        "objects": json.dumps(list(OBJECTS)),
        "info": json.dumps(info or {}),
    }
    tensors = {k: v.detach().float().contiguous().clone() for k, v in model.state_dict().items()}
    tensors = {k: (v.long() if k.endswith("num_batches_tracked") else v) for k, v in tensors.items()}
    return atomic_write(path, lambda p: save_file(tensors, str(p), metadata=meta), overwrite=overwrite)


def load_classifier(path: Path | str = SHIPPED_CLASSIFIER) -> tuple[WorldClassifier, dict]:
    """(model in eval mode, metadata) of a classifier file; checks that its classes are this world's."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"world classifier {path} does not exist; train one with train-scripts/train-world-classifier.py"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise ValueError(f"cannot read world classifier {path}: {str(e)[:200]}") from None
    if meta.get("format") != CLASSIFIER_FORMAT:
        raise ValueError(f"{path} is not a world classifier (format {meta.get('format')!r}, not {CLASSIFIER_FORMAT})")
    if json.loads(meta["styles"]) != list(STYLES) or json.loads(meta["objects"]) != list(OBJECTS):
        raise ValueError(f"world classifier {path} was trained on other classes than this world's STYLES/OBJECTS")
    model = WorldClassifier(int(meta["width"]), int(meta["input_size"]))
    model.load_state_dict(tensors)
    info = {k: (json.loads(v) if k in ("styles", "objects", "info") else v) for k, v in meta.items()}
    return model.eval(), info


# ------------------------------------------------------------------------------------------------ training
@dataclass
class ClassifierSettings:
    seed: int = 0
    pool_images: int = 6400
    vae_images: int = 2048
    val_images: int = 1024
    steps: int = 800
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 5e-4
    width: int = 32
    input_size: int = 32

    def validate(self) -> ClassifierSettings:
        for name, value in asdict(self).items():
            if name in ("lr", "weight_decay"):
                if not (math.isfinite(value) and value >= 0 and (name != "lr" or value > 0)):
                    raise ValueError(f"--{name} {value!r}: expected a {'positive' if name == 'lr' else '>= 0'} number")
            elif isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "seed" else 1):
                raise ValueError(f"--{name} {value!r}: expected a {'>= 0' if name == 'seed' else 'positive'} integer")
        if self.vae_images > self.pool_images:
            raise ValueError(f"--vae_images {self.vae_images} must not exceed --pool_images {self.pool_images}")
        if self.input_size % 8:
            raise ValueError(f"--input_size {self.input_size}: expected a multiple of 8")
        return self


@torch.no_grad()
def autoencode(vae: nn.Module, images: np.ndarray, batch_size: int = 64, progress: bool = False) -> np.ndarray:
    """uint8 images through the world model's autoencoder (posterior mean → decoder), as uint8."""
    out = []
    for start in tqdm(range(0, len(images), batch_size), desc="autoencode", disable=not progress):
        x = to_model_images(images[start : start + batch_size])
        y = vae.decode(vae.encode(x).mode())
        out.append(((y.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random blur (3x3 box, half the images), contrast 0.8–1.2 around the mean, Gaussian noise σ ≤ 0.03."""
    b = x.shape[0]
    blur = torch.rand(b, generator=generator) < 0.5
    if blur.any():
        x = x.clone()
        x[blur] = F.avg_pool2d(F.pad(x[blur], (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    contrast = 0.8 + 0.4 * torch.rand(b, 1, 1, 1, generator=generator)
    mean = x.mean((1, 2, 3), keepdim=True)
    x = (x - mean) * contrast + mean
    noise = 0.03 * torch.rand(b, 1, 1, 1, generator=generator) * torch.randn(x.shape, generator=generator)
    return (x + noise).clamp(0, 1)


@torch.no_grad()
def predict(model: WorldClassifier, images: torch.Tensor, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(style indices, object indices) for images (N, 3, H, W) in [0, 1]."""
    model.eval()
    styles, objects = [], []
    for chunk in images.split(batch_size):
        s, o = model(chunk)
        styles.append(s.argmax(1))
        objects.append(o.argmax(1))
    return torch.cat(styles).numpy(), torch.cat(objects).numpy()


@torch.no_grad()
def classify_paths(model: WorldClassifier, paths: Sequence[Path], batch_size: int = 128) -> List[int]:
    """Predicted style index of each image file (loaded at :data:`IMAGE_SIZE`)."""
    from sepce.evaluation.loading import load_images

    out: List[int] = []
    for start in range(0, len(paths), batch_size):
        out += predict(model, load_images(paths[start : start + batch_size], IMAGE_SIZE))[0].tolist()
    return out


def accuracies(model: WorldClassifier, images: np.ndarray, style: np.ndarray, obj: np.ndarray) -> dict:
    """Style and object accuracy (%) on uint8 images with known labels."""
    ps, po = predict(model, to_unit_images(images))
    return {"style_pct": float(100 * (ps == style).mean()), "object_pct": float(100 * (po == obj).mean())}


def train_classifier(
    settings: ClassifierSettings, vae: Optional[nn.Module] = None, progress: bool = True
) -> tuple[WorldClassifier, dict]:
    """Train a :class:`WorldClassifier` on rendered scenes (seed ``settings.seed``), ``vae_images`` of them also
    as autoencoder reconstructions; returns the model and a report (validation accuracies on fresh renders of seed
    ``seed + 1`` and on their reconstructions, loss history, settings)."""
    cfg = settings.validate()
    torch.manual_seed(cfg.seed)
    pool = make_arrays(cfg.pool_images, cfg.seed + 1000, progress=progress)
    val = make_arrays(cfg.val_images, cfg.seed + 2000, progress=progress)
    images, styles, objects = pool.images, pool.style, pool.object
    val_rec = None
    if vae is not None:
        rec = autoencode(vae, images[: cfg.vae_images], progress=progress)
        images = np.concatenate([images, rec])
        styles = np.concatenate([styles, pool.style[: cfg.vae_images]])
        objects = np.concatenate([objects, pool.object[: cfg.vae_images]])
        val_rec = autoencode(vae, val.images, progress=progress)
    x_all = to_unit_images(images)
    s_all, o_all = torch.from_numpy(styles), torch.from_numpy(objects)
    model = WorldClassifier(cfg.width, cfg.input_size)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(cfg.steps, 2), pct_start=0.15)
    gen = torch.Generator().manual_seed(cfg.seed)
    history = []
    model.train()
    for step in tqdm(range(cfg.steps), desc="classifier", disable=not progress):
        idx = torch.randint(len(x_all), (cfg.batch_size,), generator=gen)
        x = augment(x_all[idx], gen)
        ls, lo = model(x)
        loss = F.cross_entropy(ls, s_all[idx]) + F.cross_entropy(lo, o_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        history.append({"step": step, "loss": loss.item(), "lr": sched.get_last_lr()[0]})
    model.eval()
    report = {
        "settings": asdict(cfg),
        "val_renders": accuracies(model, val.images, val.style, val.object),
        "history": history,
    }
    if val_rec is not None:
        report["val_autoencoded"] = accuracies(model, val_rec, val.style, val.object)
    return model, report
