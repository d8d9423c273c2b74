"""Object erasure's judge: torchvision's ImageNet ResNet-50 (IMAGENET1K_V1), top-1 (docs/method.md, "Object
erasure"; ESD, Gandikota et al. 2023, Sec. 5.3, and UCE report the top-1 accuracy of a pretrained ResNet-50 on
images of the 10 Imagenette classes).

The weights come from the torch hub cache (``resnet50-0676ba61.pth``) or ``--classifier`` and are never
downloaded here (:mod:`sepce.evaluation.weights`). Images take torchvision's own evaluation transform of these
weights (resize 256 bilinear, centre crop 224, ImageNet mean/std). The class map names each class's ImageNet
index in its ``imagenet_index`` column (``data/imagenette/classes.csv``).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import List, Optional, Sequence

import torch
import torchvision
from PIL import Image
from torch import nn

from sepce.classes import ConceptClass

from .weights import RESNET50, load_state_dict, resolve_weights

NUM_IMAGENET_CLASSES = 1000
INDEX_COLUMN = "imagenet_index"


def imagenet_indices(class_map: Path, classes: Sequence[ConceptClass]) -> List[int]:
    """Each class's ImageNet index, from the class map's :data:`INDEX_COLUMN` (one-line errors)."""
    with Path(class_map).open(newline="") as f:
        reader = csv.DictReader(f)
        if INDEX_COLUMN not in (reader.fieldnames or []):
            raise ValueError(
                f"class map {class_map} lacks the column {INDEX_COLUMN!r} that the ImageNet classifier needs "
                "(see data/imagenette/classes.csv)"
            )
        by_index = {}
        for line, row in enumerate(reader, start=2):
            text = (row[INDEX_COLUMN] or "").strip()
            if not text.isdigit() or int(text) >= NUM_IMAGENET_CLASSES:
                raise ValueError(f"class map {class_map} line {line}: {INDEX_COLUMN} {text!r} is not in 0..999")
            by_index[int(row["index"])] = int(text)
    return [by_index[c.index] for c in classes]


def weights_file(explicit: Optional[Path]) -> Path:
    """The ResNet-50 weights to load (``explicit`` or the torch hub cache); a one-line error when missing."""
    return resolve_weights(RESNET50, explicit, "--classifier")


def build_resnet50(path: Path) -> nn.Module:
    """torchvision's ResNet-50 with the state dict at ``path`` (strict), in eval mode."""
    model = torchvision.models.resnet50(weights=None)
    model.load_state_dict(load_state_dict(path))
    return model.eval()


def random_resnet50(seed: int = 0) -> nn.Module:
    """torchvision's ResNet-50 with random weights (seeded), in eval mode: tiny runs test the plumbing with it."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return torchvision.models.resnet50(weights=None).eval()


def transform():
    """torchvision's evaluation transform of the IMAGENET1K_V1 weights (needs no download)."""
    return torchvision.models.ResNet50_Weights.IMAGENET1K_V1.transforms()


@torch.no_grad()
def top1(model: nn.Module, paths: Sequence[Path], device: torch.device, batch_size: int = 32) -> List[int]:
    """The ImageNet class (0..999) the model ranks first for each image file."""
    model = model.to(device)
    prepare = transform()
    out: List[int] = []
    for start in range(0, len(paths), batch_size):
        batch = torch.stack([prepare(Image.open(p).convert("RGB")) for p in paths[start : start + batch_size]])
        out += model(batch.to(device)).argmax(1).tolist()
    return out
