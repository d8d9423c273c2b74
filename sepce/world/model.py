"""The concept-world text-to-image model: a small Stable-Diffusion-v1-format latent diffusion model trained here.

Architecture (``configs/world/v1-world.yaml``; the same ``target:`` classes as
``configs/stable-diffusion/v1-inference.yaml``): a KL autoencoder with downsampling factor 4 (64x64 RGB <->
4x16x16 latents), a UNet with SpatialTransformer cross-attention, and a CLIP text tower with the real CLIP
tokenizer at small width (context ``D = 128``, 16-token prompts, 2 layers) that stays FROZEN at its seeded random
initialisation. SepCE's basis for a concept is the null space of the stacked token embeddings of ``""`` and the
other concepts' prompts, so ``D`` must exceed the stack's rank: 16 tokens x 3 prompts leave
``n_c = 128 - 42 = 86`` directions (:func:`null_space_sizes` measures it).

Training (:class:`WorldTrainer`, two phases, Rombach et al. 2022 §3):

1. the autoencoder on random crops of rendered world images: L1 reconstruction + ``kl_weight`` x KL to N(0, I),
   both per pixel (the normalisation of the CompVis ``LPIPSWithDiscriminator`` loss, without its perceptual and
   adversarial terms); ``scale_factor`` = 1 / std of the latents of the pool (Rombach et al. §4.3.2);
2. the UNet with the stack's own ``LatentDiffusion.p_losses`` (Ho et al. 2020, Eq. 14) on posterior samples of the
   pool's latents, each image captioned afresh every step by :func:`sepce.world.sample_prompt` (its ~10 % blank
   captions are the classifier-free-guidance dropout of Ho & Salimans 2022); AdamW with linear warm-up and cosine
   decay; an exponential moving average of the UNet weights is what gets exported.

A run folder holds ``args.json``, ``state.pt`` (everything needed to resume: phase, step, weights, optimizer and
EMA states, RNG states, loss history, elapsed time; written atomically every ``checkpoint_every`` steps and at the
end of each phase), ``losses.csv``, ``summary.json``, and at the end ``model.ckpt`` (CompVis format, float16
weights, schedule buffers left out — the loader recomputes them and returns a float32 model), ``config.yaml`` (the
config with the measured ``scale_factor``) and ``samples.png``. Re-running the same command resumes.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import re
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from ldm.checkpoint import build_model, denormalize_keys, load_config
from ldm.modules.diffusionmodules.util import SCHEDULE_BUFFERS
from ldm.modules.ema import LitEma
from tqdm.auto import tqdm

from sepce.io import save_image, save_torch, write_json, write_text
from sepce.paths import REPO_ROOT
from sepce.world.dataset import make_arrays, to_model_images
from sepce.world.prompts import build_prompt, sample_prompt
from sepce.world.render import OBJECTS, STYLES, image_grid

log = logging.getLogger(__name__)

WORLD_CONFIG = REPO_ROOT / "configs" / "world" / "v1-world.yaml"
ASSETS_DIR = REPO_ROOT / "assets" / "world"
SHIPPED_CKPT = ASSETS_DIR / "model.ckpt"
SHIPPED_CONFIG = ASSETS_DIR / "config.yaml"
STATE_FILE = "state.pt"
PHASES = ("vae", "unet", "done")


@dataclass
class WorldTrainSettings:
    """Hyper-parameters of one training run (the defaults are stage 1 of the shipped model; its later stages
    continue with ``--init_from``, see ``assets/world/train-record.json``)."""

    seed: int = 0
    pool_images: int = 8192
    vae_steps: int = 800
    vae_batch_size: int = 16
    vae_lr: float = 2e-3
    vae_crop: int = 32
    kl_weight: float = 1e-4
    steps: int = 2200
    batch_size: int = 32
    lr: float = 6e-4
    warmup: int = 100
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    ema_decay: float = 0.998
    checkpoint_every: int = 100
    init_from: str = ""  # a finished run folder or an exported model folder: continue its autoencoder and UNet
    style_weights: str = ""  # "checker=3,waves=1.5": draw the UNet's training images of these styles more often

    def style_weight_map(self) -> dict[str, float]:
        """``style_weights`` parsed (styles not named weigh 1)."""
        out: dict[str, float] = {}
        for part in (p.strip() for p in self.style_weights.split(",") if p.strip()):
            name, sep, value = part.partition("=")
            try:
                weight = float(value)
            except ValueError:
                weight = math.nan
            if not sep or name.strip() not in STYLES or not (math.isfinite(weight) and weight > 0):
                raise ValueError(
                    f"--style_weights {self.style_weights!r}: expected STYLE=WEIGHT pairs (weights > 0) with styles "
                    f"from {list(STYLES)}, e.g. checker=3,waves=1.5"
                )
            out[name.strip()] = weight
        return out

    def validate(self) -> WorldTrainSettings:
        positive_ints = ("pool_images", "vae_batch_size", "batch_size", "checkpoint_every")
        for name in positive_ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"--{name} {value!r}: expected a positive integer")
        for name in ("vae_steps", "steps", "warmup", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"--{name} {value!r}: expected an integer >= 0")
        for name in ("vae_lr", "lr"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"--{name} {value!r}: expected a positive number")
        for name in ("kl_weight", "weight_decay"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"--{name} {value!r}: expected a number >= 0")
        for name in ("min_lr_ratio", "ema_decay"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0 <= value <= 1):
                raise ValueError(f"--{name} {value!r}: expected a number in [0, 1]")
        if self.vae_crop < 8 or self.vae_crop > 64 or self.vae_crop % 8:
            raise ValueError(f"--vae_crop {self.vae_crop!r}: expected a multiple of 8 in [8, 64]")
        self.style_weight_map()
        if self.init_from:
            source = Path(self.init_from)
            exported = (source / "model.ckpt").is_file() and (source / "config.yaml").is_file()
            if not (source / STATE_FILE).is_file() and not exported:
                raise FileNotFoundError(
                    f"--init_from {self.init_from}: no {STATE_FILE} and no model.ckpt + config.yaml there (expected a "
                    "finished run folder or an exported model folder such as assets/world)"
                )
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> WorldTrainSettings:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# ------------------------------------------------------------------------------------------------ model
def build_world_model(config_path: Path | str = WORLD_CONFIG, seed: int = 0) -> torch.nn.Module:
    """A freshly initialised (seeded) float32 LatentDiffusion of ``config_path`` on the CPU, in eval mode."""
    config = load_config(config_path)
    torch.manual_seed(seed)
    model = build_model(config, "cpu")
    return model.eval()


@torch.no_grad()
def null_space_sizes(model: torch.nn.Module, prompts: Sequence[str], rtol: float = 1e-6) -> dict[str, int]:
    """n_c = D − rank([emb(""); emb(other prompts)]) for each prompt (the size of SepCE's basis, docs/method.md)."""
    emb = {p: model.get_learned_conditioning([p])[0].double() for p in ["", *prompts]}
    sizes = {}
    for p in prompts:
        stack = torch.cat([emb[""]] + [emb[q] for q in prompts if q != p])
        s = torch.linalg.svdvals(stack)
        sizes[p] = int(stack.shape[1] - int((s > s[0] * rtol).sum()))
    return sizes


def lr_at(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Learning-rate multiplier: linear warm-up over ``warmup`` steps, then cosine decay to ``min_ratio``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def autoencoder_loss(vae: torch.nn.Module, x: torch.Tensor, kl_weight: float, generator: torch.Generator):
    """(loss, rec, kl): mean |x − D(z)| + kl_weight · KL(q(z|x) ‖ N(0, I)) / pixels, z a posterior sample."""
    posterior = vae.encode(x)
    rec = vae.decode(posterior.sample(generator=generator))
    rec_loss = (rec - x).abs().mean()
    kl = posterior.kl().mean() / x[0].numel()
    return rec_loss + kl_weight * kl, rec_loss.detach(), kl.detach()


@torch.no_grad()
def encode_pool(
    vae: torch.nn.Module, images: np.ndarray, batch_size: int = 256, progress: bool = False
) -> torch.Tensor:
    """Posterior moments (N, 2·z, h, w) of uint8 images (mean and log-variance, as ``quant_conv`` outputs)."""
    out = []
    for start in tqdm(range(0, len(images), batch_size), desc="encode", disable=not progress):
        x = to_model_images(images[start : start + batch_size])
        out.append(vae.quant_conv(vae.encoder(x)))
    return torch.cat(out)


def posterior_sample(moments: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A sample of DiagonalGaussianDistribution(moments) (log-variance clamped to [-30, 20] like CompVis)."""
    mean, logvar = moments.chunk(2, dim=1)
    std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
    return mean + std * torch.randn(mean.shape, generator=generator)


def latent_scale(moments: torch.Tensor, generator: torch.Generator) -> float:
    """1 / std of posterior samples: the ``scale_factor`` that gives the diffusion model unit-variance latents."""
    return float(1.0 / posterior_sample(moments, generator).std())


class CaptionEmbeddings:
    """Frozen text-encoder outputs, computed once per distinct caption."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def __call__(self, captions: Sequence[str]) -> torch.Tensor:
        new = [c for c in dict.fromkeys(captions) if c not in self.cache]
        if new:
            for c, e in zip(new, self.model.get_learned_conditioning(new)):
                self.cache[c] = e
        return torch.stack([self.cache[c] for c in captions])  # B N D


def exported_times(folder: Path) -> dict:
    """Total wall and CPU seconds that produced an exported model, from its ``train-record.json`` (the shipped
    model's stages) or ``summary.json``; zeros when neither is there."""
    totals = {"wall_time_s": 0.0, "cpu_time_s": 0.0}
    record = folder / "train-record.json"
    summaries = []
    if record.is_file():
        data = json.loads(record.read_text())
        summaries = [v["summary"] for k, v in data.items() if k.startswith("stage") and "summary" in v]
        summaries = summaries[-1:]  # the last stage's totals include the earlier stages
    elif (folder / "summary.json").is_file():
        summaries = [json.loads((folder / "summary.json").read_text())]
    for summ in summaries:
        totals["wall_time_s"] = float(summ.get("total_wall_time_s", summ.get("wall_time_s", 0.0)))
        totals["cpu_time_s"] = float(summ.get("total_cpu_time_s", summ.get("cpu_time_s", 0.0)))
    return totals


# ------------------------------------------------------------------------------------------------ run state
@dataclass
class TrainState:
    """Everything a run needs to resume (saved as ``state.pt``)."""

    phase: str = "vae"
    step: int = 0
    elapsed_s: float = 0.0
    cpu_s: float = 0.0
    scale_factor: Optional[float] = None
    history: list = None  # one dict per step: phase, step, loss, ..., seconds
    vae: Optional[dict] = None
    vae_opt: Optional[dict] = None
    unet: Optional[dict] = None
    unet_opt: Optional[dict] = None
    ema: Optional[dict] = None
    text: Optional[dict] = None  # the frozen text encoder's weights (random at the first stage's seed, then kept)
    torch_rng: Optional[torch.Tensor] = None
    numpy_rng: Optional[dict] = None
    settings: Optional[dict] = None
    init: Optional[dict] = None  # the run this one continues (--init_from): path, steps, wall and CPU seconds

    def __post_init__(self) -> None:
        if self.history is None:
            self.history = []


def load_state(path: Path) -> TrainState:
    raw = torch.load(path, map_location="cpu", weights_only=False)
    return TrainState(**raw)


class WorldTrainer:
    """The two-phase training described in the module docstring, resumable from ``<run_dir>/state.pt``."""

    def __init__(
        self,
        run_dir: Path,
        settings: WorldTrainSettings,
        config_path: Path = WORLD_CONFIG,
        progress: bool = True,
        should_stop: Callable[[], bool] = lambda: False,
        finish_at: Optional[int] = None,
    ):
        """``finish_at``: end the UNet phase after this many steps (the learning-rate schedule still spans
        ``settings.steps``): how a run is cut short on purpose, recorded in its summary."""
        self.run_dir = Path(run_dir)
        self.settings = settings.validate()
        if finish_at is not None and finish_at < 1:
            raise ValueError(f"--finish_at {finish_at}: expected a positive number of UNet steps")
        self.finish_at = finish_at
        self.config_path = Path(config_path)
        self.progress = progress
        self.should_stop = should_stop
        self.model = build_world_model(self.config_path, settings.seed)
        state_path = self.run_dir / STATE_FILE
        if state_path.is_file():
            self.state = load_state(state_path)
        else:
            self.state = TrainState(settings=settings.to_dict())
            if settings.init_from:
                self._continue(Path(settings.init_from))
        if self.state.text is None:  # a new run (or one saved before the encoder was recorded): its seeded encoder
            self.state.text = self._text_state(self.model)
        self.model.cond_stage_model.load_state_dict(self.state.text)
        self.generator = torch.Generator().manual_seed(settings.seed)
        self.rng = np.random.default_rng(settings.seed)
        if self.state.torch_rng is not None:
            self.generator.set_state(self.state.torch_rng)
            self.rng.bit_generator.state = self.state.numpy_rng
        self._started, self._cpu_started = time.monotonic(), time.process_time()
        self._elapsed0, self._cpu0 = self.state.elapsed_s, self.state.cpu_s
        self.pool = None
        self.moments = None

    def _continue(self, source_dir: Path) -> None:
        """Start the UNet phase from a finished run's autoencoder, scale and (EMA) UNet weights, or from an exported
        model folder (``model.ckpt`` + ``config.yaml``, e.g. the shipped ``assets/world``; its record, if any, in
        ``train-record.json`` / ``summary.json``)."""
        if not (source_dir / STATE_FILE).is_file():
            self._continue_exported(source_dir)
            return
        source = load_state(source_dir / STATE_FILE)
        if source.phase != "done":
            raise ValueError(f"--init_from {source_dir}: that run is not finished (phase {source.phase!r})")
        s = self.state
        s.vae, s.unet, s.scale_factor, s.phase = source.vae, source.unet, source.scale_factor, "unet"
        # the text encoder the source's UNet was trained with: recorded, or (runs saved before it was recorded)
        # the one its own seed drew
        s.text = source.text or self._text_state(build_world_model(self.config_path, source.settings["seed"]))
        earlier = source.init or {}
        s.init = {
            "path": str(source_dir),
            "settings": source.settings,
            "wall_time_s": source.elapsed_s + earlier.get("wall_time_s", 0.0),
            "cpu_time_s": source.cpu_s + earlier.get("cpu_time_s", 0.0),
        }

    def _continue_exported(self, source_dir: Path) -> None:
        model = load_world_model(source_dir / "model.ckpt", source_dir / "config.yaml")
        s = self.state
        s.vae = {k: v.clone() for k, v in model.first_stage_model.state_dict().items()}
        s.unet = {k: v.clone() for k, v in model.model.state_dict().items()}
        s.text = self._text_state(model)
        s.scale_factor, s.phase = float(model.scale_factor), "unet"
        s.init = {"path": str(source_dir), "settings": None, **exported_times(source_dir)}

    @staticmethod
    def _text_state(model: torch.nn.Module) -> dict:
        return {k: v.detach().clone() for k, v in model.cond_stage_model.state_dict().items()}

    # -------------------------------------------------------------------------------------------- helpers
    def elapsed(self) -> float:
        """Wall-clock seconds of this run, over every resumed session."""
        return self._elapsed0 + time.monotonic() - self._started

    def cpu_seconds(self) -> float:
        """CPU seconds (all threads) of this run, over every resumed session."""
        return self._cpu0 + time.process_time() - self._cpu_started

    def save(self, vae_opt=None, unet_opt=None, ema=None) -> None:
        s = self.state
        s.elapsed_s, s.cpu_s = self.elapsed(), self.cpu_seconds()
        s.torch_rng = self.generator.get_state()
        s.numpy_rng = self.rng.bit_generator.state
        s.vae = self.model.first_stage_model.state_dict()
        s.unet = self.model.model.state_dict()
        s.vae_opt = vae_opt.state_dict() if vae_opt is not None else s.vae_opt
        s.unet_opt = unet_opt.state_dict() if unet_opt is not None else s.unet_opt
        s.ema = ema.state_dict() if ema is not None else s.ema
        save_torch(self.run_dir / STATE_FILE, asdict(s))
        self.write_losses()

    def write_losses(self) -> None:
        keys: list[str] = []
        for row in self.state.history:
            keys += [k for k in row if k not in keys]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.state.history)
        write_text(self.run_dir / "losses.csv", buf.getvalue())

    def load_pool(self) -> None:
        if self.pool is None:
            log.info("rendering %d training images", self.settings.pool_images)
            self.pool = make_arrays(self.settings.pool_images, self.settings.seed, progress=self.progress)

    def _loop(self, total: int, step_fn: Callable[[int], dict], on_save: Callable[[], None]) -> bool:
        """Run steps ``state.step .. total-1``; returns False when stopped early (state saved)."""
        phase = self.state.phase
        bar = tqdm(
            total=total, initial=self.state.step, desc=f"world {phase}", disable=not self.progress, dynamic_ncols=True
        )
        try:
            while self.state.step < total:
                row = step_fn(self.state.step)
                self.state.history.append({"phase": phase, "step": self.state.step, **row, "seconds": self.elapsed()})
                self.state.step += 1
                bar.update(1)
                bar.set_postfix({k: f"{v:.4f}" for k, v in row.items() if k != "lr"})
                if self.state.step % self.settings.checkpoint_every == 0 and self.state.step < total:
                    on_save()
                if self.should_stop():
                    on_save()
                    return False
        finally:
            bar.close()
        return True

    # -------------------------------------------------------------------------------------------- phases
    def train_autoencoder(self) -> bool:
        cfg, vae = self.settings, self.model.first_stage_model
        vae.train()
        for p in vae.parameters():
            p.requires_grad_(True)
        opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
        if self.state.vae is not None:
            vae.load_state_dict(self.state.vae)
        if self.state.vae_opt is not None:
            opt.load_state_dict(self.state.vae_opt)
        self.load_pool()
        images = self.pool.images

        def step(i: int) -> dict:
            for group in opt.param_groups:
                group["lr"] = cfg.vae_lr * lr_at(i, cfg.vae_steps, min(cfg.warmup, cfg.vae_steps // 10), 0.1)
            idx = torch.randint(len(images), (cfg.vae_batch_size,), generator=self.generator).numpy()
            c = cfg.vae_crop
            oy, ox = (4 * torch.randint((64 - c) // 4 + 1, (2,), generator=self.generator)).tolist()
            x = to_model_images(images[idx, oy : oy + c, ox : ox + c])
            loss, rec, kl = autoencoder_loss(vae, x, cfg.kl_weight, self.generator)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return {"loss": loss.item(), "rec": rec.item(), "kl": kl.item(), "lr": opt.param_groups[0]["lr"]}

        done = self._loop(cfg.vae_steps, step, lambda: self.save(vae_opt=opt))
        vae.eval()
        for p in vae.parameters():
            p.requires_grad_(False)
        if done:
            self.state.phase, self.state.step = "unet", 0
            self.state.vae_opt = None
            self.save()
        return done

    def train_unet(self) -> bool:
        cfg, model = self.settings, self.model
        model.first_stage_model.load_state_dict(self.state.vae)
        self.load_pool()
        self.moments = encode_pool(model.first_stage_model, self.pool.images, progress=self.progress)
        if self.state.scale_factor is None:
            self.state.scale_factor = latent_scale(self.moments, torch.Generator().manual_seed(cfg.seed))
        model.scale_factor = self.state.scale_factor
        wrapper = model.model
        if self.state.unet is not None:
            wrapper.load_state_dict(self.state.unet)
        wrapper.train()
        for p in wrapper.parameters():
            p.requires_grad_(True)
        opt = torch.optim.AdamW(wrapper.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        if self.state.unet_opt is not None:
            opt.load_state_dict(self.state.unet_opt)
        ema = LitEma(wrapper, decay=cfg.ema_decay)
        if self.state.ema is not None:
            ema.load_state_dict(self.state.ema)
        embed = CaptionEmbeddings(model)
        styles, objects = self.pool.style, self.pool.object
        weights = cfg.style_weight_map()
        # the UNet's images: uniform over the pool, or each image weighted by its style (--style_weights)
        draw_probs = None
        if weights:
            draw_probs = torch.tensor([weights.get(STYLES[k], 1.0) for k in styles.tolist()], dtype=torch.float64)

        def step(i: int) -> dict:
            for group in opt.param_groups:
                group["lr"] = cfg.lr * lr_at(i, cfg.steps, cfg.warmup, cfg.min_lr_ratio)
            if draw_probs is None:
                idx = torch.randint(len(self.moments), (cfg.batch_size,), generator=self.generator)
            else:
                idx = torch.multinomial(draw_probs, cfg.batch_size, replacement=True, generator=self.generator)
            z = model.scale_factor * posterior_sample(self.moments[idx], self.generator)  # B 4 h w
            captions = [sample_prompt(STYLES[styles[k]], OBJECTS[objects[k]], self.rng) for k in idx.tolist()]
            t = torch.randint(model.num_timesteps, (cfg.batch_size,), generator=self.generator)
            noise = torch.randn(z.shape, generator=self.generator)
            loss, _ = model.p_losses(z, embed(captions), t, noise=noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(wrapper.parameters(), 1.0)
            opt.step()
            ema(wrapper)
            return {"loss": loss.item(), "grad_norm": float(grad_norm), "lr": opt.param_groups[0]["lr"]}

        total = cfg.steps if self.finish_at is None else min(cfg.steps, self.finish_at)
        done = self._loop(total, step, lambda: self.save(unet_opt=opt, ema=ema))
        wrapper.eval()
        for p in wrapper.parameters():
            p.requires_grad_(False)
        if done:
            ema.copy_to(wrapper)
            self.state.phase, self.state.step = "done", 0
            self.state.unet_opt = None
            self.save(ema=ema)
        return done

    def run(self) -> bool:
        """Train what is left; True when finished, False when stopped (resumable)."""
        if self.state.phase == "vae" and not self.train_autoencoder():
            return False
        if self.state.phase == "unet" and not self.train_unet():
            return False
        self.finish_model()
        return True

    def finish_model(self) -> torch.nn.Module:
        """Load the final weights (EMA UNet) into ``self.model`` (eval mode, gradients off)."""
        model = self.model
        model.first_stage_model.load_state_dict(self.state.vae)
        model.model.load_state_dict(self.state.unet)
        model.scale_factor = self.state.scale_factor
        for p in model.parameters():
            p.requires_grad_(False)
        return model.eval()


# ------------------------------------------------------------------------------------------------ export
def config_with_scale(config_path: Path, scale_factor: float) -> str:
    """The config text with ``model.params.scale_factor`` replaced (comments and layout kept)."""
    text = Path(config_path).read_text()
    pattern = re.compile(r"^(\s*scale_factor:\s*)\S+\s*$", re.MULTILINE)
    if len(pattern.findall(text)) != 1:
        raise ValueError(f"config {config_path} must hold exactly one 'scale_factor:' line")
    return pattern.sub(lambda m: f"{m.group(1)}{scale_factor:.6g}", text)


def shipped_state_dict(model: torch.nn.Module, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """State dict in the released CompVis layout, floating tensors in ``dtype``, schedule buffers left out."""
    sd = {k: v.detach() for k, v in model.state_dict().items() if k not in SCHEDULE_BUFFERS}
    sd = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous().clone() for k, v in sd.items()}
    return denormalize_keys(sd)


def export_model(
    model: torch.nn.Module, config_path: Path, out_dir: Path, global_step: int, overwrite: bool = True
) -> tuple[Path, Path]:
    """Write ``out_dir/model.ckpt`` (float16, CompVis format) and ``out_dir/config.yaml`` (measured scale)."""
    out_dir = Path(out_dir)
    ckpt = save_torch(
        out_dir / "model.ckpt",
        {"state_dict": shipped_state_dict(model), "global_step": int(global_step)},
        overwrite=overwrite,
    )
    config = write_text(out_dir / "config.yaml", config_with_scale(config_path, model.scale_factor), overwrite)
    return ckpt, config


def load_world_model(
    ckpt: Path | str = SHIPPED_CKPT, config: Path | str = SHIPPED_CONFIG, device: str | torch.device = "cpu"
) -> torch.nn.Module:
    """The shipped (or any exported) world model, float32, eval mode, gradients off."""
    from sepce.modeling import load_model

    return load_model(config, ckpt, device)


# ------------------------------------------------------------------------------------------------ samples
def grid_prompts() -> list[str]:
    """One full prompt per (style, object), row-major (a row per style)."""
    return [build_prompt(s, o) for s in STYLES for o in OBJECTS]


@torch.no_grad()
def sample_images(
    model: torch.nn.Module,
    prompts: Sequence[str],
    seeds: Sequence[int],
    sampler: str = "ddim",
    steps: int = 50,
    guidance: float = 5.0,
    batch_size: int = 64,
    progress: bool = False,
) -> np.ndarray:
    """uint8 images (N, 64, 64, 3), image i from ``prompts[i]`` and the start noise of seed ``seeds[i]``
    (:func:`sepce.generation.case_noise` row 0, the convention of ``generate-images.py``)."""
    from sepce.generation import ImageSampler, SamplingSettings, case_noise

    settings = SamplingSettings(sampler, steps, guidance, 64 * 2 ** (model.num_downs - 2))
    image_sampler = ImageSampler(model, settings, torch.device("cpu"))
    out = []
    for start in tqdm(range(0, len(prompts), batch_size), desc="samples", disable=not progress):
        chunk = list(range(start, min(len(prompts), start + batch_size)))
        noise = torch.stack([case_noise(int(seeds[i]), 1, image_sampler.latent_shape)[0] for i in chunk])
        out.append(image_sampler([prompts[i] for i in chunk], noise))
    return np.concatenate(out)


def write_sample_grid(model: torch.nn.Module, path: Path, seed: int = 0, **kwargs) -> Path:
    """``samples.png``: a row per style, a column per object, full prompts, seeds ``seed + k``."""
    prompts = grid_prompts()
    images = sample_images(model, prompts, [seed + k for k in range(len(prompts))], **kwargs)
    return save_image(path, image_grid(images, len(OBJECTS)))


def summary(trainer: WorldTrainer) -> dict:
    """What ``summary.json`` records about a finished run."""
    hist = trainer.state.history
    by_phase = {p: [r for r in hist if r["phase"] == p] for p in ("vae", "unet")}
    model = trainer.model
    counts = {n: sum(p.numel() for p in getattr(model, n).parameters()) for n in ("model", "first_stage_model")}
    counts["cond_stage_model"] = sum(p.numel() for p in model.cond_stage_model.parameters())
    earlier = trainer.state.init or {}
    return {
        "settings": trainer.settings.to_dict(),
        "continues": earlier or None,
        "total_wall_time_s": round(trainer.state.elapsed_s + earlier.get("wall_time_s", 0.0), 1),
        "total_cpu_time_s": round(trainer.state.cpu_s + earlier.get("cpu_time_s", 0.0), 1),
        "scale_factor": trainer.state.scale_factor,
        "wall_time_s": round(trainer.state.elapsed_s, 1),
        "cpu_time_s": round(trainer.state.cpu_s, 1),
        "vae_time_s": round(by_phase["vae"][-1]["seconds"], 1) if by_phase["vae"] else None,
        "final_vae_rec": float(np.mean([r["rec"] for r in by_phase["vae"][-50:]])) if by_phase["vae"] else None,
        "final_unet_loss": float(np.mean([r["loss"] for r in by_phase["unet"][-100:]])) if by_phase["unet"] else None,
        "parameters": counts,
        "torch_threads": torch.get_num_threads(),
        "unet_steps_run": len(by_phase["unet"]),
        "finished_at": trainer.finish_at,
    }


def write_summary(trainer: WorldTrainer, extra: Optional[dict] = None) -> Path:
    return write_json(trainer.run_dir / "summary.json", {**summary(trainer), **(extra or {})})
