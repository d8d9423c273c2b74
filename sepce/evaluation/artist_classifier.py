"""The style classifier of the evaluation protocol (docs/method.md, "Evaluation").

ResNet18 with ImageNet weights and a new K-way fully-connected layer (K = classes in ``data/classes.csv``);
only the FC layer is trained: 20 epochs of SGD (momentum 0.9, weight decay 5e-4), batch 30, one triangular
cyclic learning-rate cycle 0 -> 0.01 -> 0 over the whole run (stepped per batch), images Resize+CenterCrop 512
in [0, 1] without normalisation, the checkpoint with the best eval accuracy kept. One transform serves
training and testing (the released test script used 256 px — a deliberate fix).

Because the backbone is frozen and kept in eval mode (its BatchNorm statistics stay ImageNet's), its pooled
512-d features are computed once and the FC layer is trained on them: the same optimisation as running the
whole network every epoch, about ``epochs`` times cheaper.

Used by ``train-scripts/artist-cls-train.py`` and ``train-scripts/artist-cls-test.py``.
"""

from __future__ import annotations

import copy
import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torchvision
from torch import nn
from tqdm import tqdm

from sepce.classes import ConceptClass

from .images import images_by_class
from .loading import image_loader
from .weights import RESNET18, load_state_dict, resolve_weights

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "sepce-artist-classifier-v1"
FEATURE_DIM = 512


def build_resnet18(
    num_classes: int, pretrained: bool = True, backbone_weights: Optional[str | Path] = None
) -> nn.Module:
    """ResNet18, ImageNet weights (torchvision cache or ``backbone_weights``), a fresh ``num_classes`` FC."""
    model = torchvision.models.resnet18(weights=None)
    if pretrained:
        path = resolve_weights(RESNET18, backbone_weights, "--backbone_weights")
        model.load_state_dict(load_state_dict(path))
    model.fc = nn.Linear(FEATURE_DIM, num_classes)
    return model


def trunk(model: nn.Module) -> nn.Module:
    """Everything of a torchvision ResNet but its FC layer: images (B, 3, H, W) -> features (B, 512)."""
    return nn.Sequential(
        model.conv1,
        model.bn1,
        model.relu,
        model.maxpool,
        model.layer1,
        model.layer2,
        model.layer3,
        model.layer4,
        model.avgpool,
        nn.Flatten(1),
    )


@torch.no_grad()
def map_images(
    fn: Callable[[torch.Tensor], torch.Tensor],
    paths: Sequence[Path],
    image_size: int,
    batch_size: int,
    device: torch.device,
    num_workers: int = 0,
    desc: str = "images",
    progress: bool = True,
) -> List[torch.Tensor]:
    """``fn`` of every batch of the images (Resize+CenterCrop to ``image_size``, [0, 1], on ``device``), in order,
    each output on the CPU; a progress bar with ``progress``."""
    loader = image_loader(paths, image_size, batch_size, num_workers=num_workers)
    return [fn(images.to(device)).cpu() for images, _ in tqdm(loader, desc=desc, disable=not progress)]


def compute_features(
    model: nn.Module, paths: Sequence[Path], image_size: int, batch_size: int, device: torch.device, **options
) -> torch.Tensor:
    """Pooled backbone features ``(N, 512)`` of the images, backbone in eval mode; ``options`` are
    :func:`map_images`'s (``num_workers``, ``desc``, ``progress``)."""
    net = trunk(model).to(device).eval()
    options.setdefault("desc", "features")
    chunks = map_images(lambda x: net(x).float(), paths, image_size, batch_size, device, **options)
    return torch.cat(chunks) if chunks else torch.empty(0, FEATURE_DIM)


# ----------------------------------------------------------------------------------------------------- data


def labelled_images(root: Path, classes: Sequence[ConceptClass]) -> List[Tuple[Path, int]]:
    """``(image, class index)`` for each image in ``root/<index>/``; every class folder must hold images."""
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"image folder {root} does not exist")
    found, missing = images_by_class(root, classes)
    if missing:
        raise ValueError(
            f"{root} lacks class folder(s) {missing}; expected folders "
            f"{classes[0].index}..{classes[-1].index} named by the class map's index column"
        )
    empty = [index for index, paths in found.items() if not paths]
    if empty:
        raise ValueError(f"class folder(s) {empty} under {root} hold no images")
    return [(path, index) for index in sorted(found) for path in found[index]]


def split_per_class(
    items: Sequence[Tuple[Path, int]], train_fraction: float, seed: int
) -> Tuple[List[Tuple[Path, int]], List[Tuple[Path, int]]]:
    """Shuffle each class with ``seed`` and put ``round(train_fraction * n)`` of its images into training.

    Every class with at least two images keeps at least one image on each side.
    """
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train fraction {train_fraction} must lie strictly between 0 and 1")
    rng = random.Random(seed)
    train, held_out = [], []
    for label in sorted({label for _, label in items}):
        members = sorted(path for path, lab in items if lab == label)
        rng.shuffle(members)
        n_train = round(train_fraction * len(members))
        if len(members) >= 2:
            n_train = min(max(n_train, 1), len(members) - 1)
        train += [(p, label) for p in members[:n_train]]
        held_out += [(p, label) for p in members[n_train:]]
    return train, held_out


def training_sets(
    train_dir: Path, eval_dir: Path, classes: Sequence[ConceptClass], train_fraction: float, seed: int
) -> Tuple[List[Tuple[Path, int]], List[Tuple[Path, int]], str]:
    """Training and eval images: both folders if both exist, else a per-class split of the one that exists.

    Returns ``(train, eval, description)``.
    """
    train_dir, eval_dir = Path(train_dir), Path(eval_dir)
    if train_dir.is_dir() and eval_dir.is_dir():
        return (
            labelled_images(train_dir, classes),
            labelled_images(eval_dir, classes),
            f"{train_dir} / {eval_dir}",
        )
    for folder in (train_dir, eval_dir):
        if folder.is_dir():
            train, held_out = split_per_class(labelled_images(folder, classes), train_fraction, seed)
            return train, held_out, f"{folder} split {train_fraction:g}/{1 - train_fraction:g}"
    raise NotADirectoryError(
        f"no classifier data: neither {train_dir} nor {eval_dir} exists; generate images with "
        "eval-scripts/generate-data.py and put them into class folders 0..K-1 there"
    )


# ------------------------------------------------------------------------------------------------- training


@dataclass
class TrainConfig:
    """Optimisation settings of the FC layer (defaults: the paper's protocol)."""

    epochs: int = 20
    batch_size: int = 30
    max_lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0


def triangular_lr(step: int, total_steps: int, max_lr: float) -> float:
    """One triangular cycle 0 -> ``max_lr`` -> 0 over ``total_steps`` batches, taken at batch midpoints."""
    progress = (step + 0.5) / total_steps
    return max_lr * (1.0 - abs(2.0 * progress - 1.0))


def accuracy(fc: nn.Module, features: torch.Tensor, labels: torch.Tensor, batch_size: int = 4096) -> float:
    """Top-1 accuracy in percent of a linear head on precomputed features."""
    if len(labels) == 0:
        return math.nan
    with torch.no_grad():
        predictions = torch.cat([fc(chunk).argmax(1) for chunk in features.split(batch_size)])
    return 100.0 * int((predictions == labels).sum()) / len(labels)


def train_fc(
    fc: nn.Linear,
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    eval_features: torch.Tensor,
    eval_labels: torch.Tensor,
    config: TrainConfig,
    progress: bool = True,
) -> Tuple[Dict[str, torch.Tensor], List[dict]]:
    """Train the FC layer on cached features; return the best-eval-accuracy weights and the history
    (``progress``: a bar over the epochs)."""
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.SGD(fc.parameters(), lr=0.0, momentum=config.momentum, weight_decay=config.weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    steps_per_epoch = math.ceil(len(train_labels) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    best_state, best_accuracy, history, step = copy.deepcopy(fc.state_dict()), -1.0, [], 0
    for epoch in tqdm(range(1, config.epochs + 1), desc="epochs", disable=not progress):
        fc.train()
        order = torch.randperm(len(train_labels), generator=generator)
        total_loss, correct = 0.0, 0
        for batch in order.split(config.batch_size):
            lr = triangular_lr(step, total_steps, config.max_lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            logits = fc(train_features[batch])
            loss = loss_fn(logits, train_labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(batch)
            correct += (logits.argmax(1) == train_labels[batch]).sum().item()
            step += 1
        fc.eval()
        eval_accuracy = accuracy(fc, eval_features, eval_labels)
        history.append(
            {
                "epoch": epoch,
                "lr": lr,
                "train_loss": total_loss / len(train_labels),
                "train_accuracy_pct": 100.0 * correct / len(train_labels),
                "eval_accuracy_pct": eval_accuracy,
            }
        )
        if eval_accuracy > best_accuracy or math.isnan(eval_accuracy):  # no eval images: keep the last epoch
            best_accuracy, best_state = eval_accuracy, copy.deepcopy(fc.state_dict())
    return best_state, history


# ----------------------------------------------------------------------------------------------- checkpoints


def classifier_checkpoint(
    model: nn.Module, classes: Sequence[ConceptClass], image_size: int, extra: Optional[dict] = None
) -> dict:
    """The object ``artist-cls-train.py`` saves: weights plus what the test script needs to use them."""
    return {
        "format": CHECKPOINT_FORMAT,
        "arch": "resnet18",
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "classes": [[c.index, c.name, c.prompt] for c in classes],
        "image_size": int(image_size),
        **(extra or {}),
    }


def load_classifier(path: str | Path, classes: Sequence[ConceptClass]) -> Tuple[nn.Module, dict]:
    """Load a classifier checkpoint (CPU) and check that it was trained on this class map."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"classifier checkpoint {path} does not exist; train one with train-scripts/artist-cls-train.py"
        )
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a classifier checkpoint written by train-scripts/artist-cls-train.py")
    names = [name for _, name, _ in checkpoint["classes"]]
    if names != [c.name for c in classes]:
        raise ValueError(
            f"classifier {path} was trained on classes {names}, not on the class map's {[c.name for c in classes]}"
        )
    model = torchvision.models.resnet18(weights=None, num_classes=len(names))
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval(), {k: v for k, v in checkpoint.items() if k != "state_dict"}


def predict(
    model: nn.Module, paths: Sequence[Path], image_size: int, batch_size: int, device: torch.device, **options
) -> torch.Tensor:
    """Predicted class indices of the images; ``options`` are :func:`map_images`'s (``num_workers``, ``desc``,
    ``progress``)."""
    model = model.to(device).eval()
    options.setdefault("desc", "classify")
    predictions = map_images(lambda x: model(x).argmax(1), paths, image_size, batch_size, device, **options)
    return torch.cat(predictions) if predictions else torch.empty(0, dtype=torch.long)


def accuracy_table(
    classes: Sequence[ConceptClass],
    labels: Sequence[int],
    predictions: Sequence[int],
    missing: Sequence[int] = (),
) -> Tuple[List[dict], List[List[int]]]:
    """Per-class rows (``class, name, correct, images, accuracy_pct``), an overall row, the confusion matrix.

    Classes in ``missing`` or without images get an empty accuracy (NaN). A prediction outside the class map
    (``sepce.evaluation.classifiers.NO_CLASS``: an ImageNet class no row names) counts as wrong and stays out of
    the confusion matrix.
    """
    k = len(classes)
    confusion = [[0] * k for _ in range(k)]
    totals = [0] * k
    for label, prediction in zip(labels, predictions):
        totals[int(label)] += 1
        if 0 <= int(prediction) < k:
            confusion[int(label)][int(prediction)] += 1
    rows = []
    for c in classes:
        total = totals[c.index]
        correct = confusion[c.index][c.index]
        value = 100.0 * correct / total if total and c.index not in missing else math.nan
        rows.append({"class": c.index, "name": c.name, "correct": correct, "images": total, "accuracy_pct": value})
    total = len(labels)
    correct = sum(confusion[i][i] for i in range(k))
    rows.append(
        {
            "class": "all",
            "name": "overall",
            "correct": correct,
            "images": total,
            "accuracy_pct": 100.0 * correct / total if total else math.nan,
        }
    )
    return rows, confusion
