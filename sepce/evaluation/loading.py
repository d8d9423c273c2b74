"""Loading evaluation images as tensors: RGB, Resize(size) + CenterCrop(size), values in [0, 1].

One transform serves every use of an image set (docs/method.md, "Deliberate differences": the classifier is
trained and tested with the same transform; the released test script used 256 px against 512 px in training).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, List, Optional, Sequence

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms


def square_transform(size: int) -> transforms.Compose:
    """Resize the short side to ``size`` (bilinear, antialiased), centre-crop it square, scale to [0, 1]."""
    return transforms.Compose(
        [
            transforms.Resize(size, interpolation=transforms.InterpolationMode.BILINEAR, antialias=True),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
        ]
    )


class ImageFiles(Dataset):
    """Images (and optional integer labels) from a list of files; items are ``(image, label)``."""

    def __init__(self, paths: Sequence[Path], size: int, labels: Optional[Sequence[int]] = None):
        if labels is not None and len(labels) != len(paths):
            raise ValueError(f"{len(paths)} images but {len(labels)} labels")
        self.paths = [Path(p) for p in paths]
        self.labels = list(labels) if labels is not None else [-1] * len(self.paths)
        self.transform = square_transform(size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        with Image.open(self.paths[i]) as image:
            tensor = self.transform(image.convert("RGB"))
        return tensor, self.labels[i]


def image_loader(
    paths: Sequence[Path],
    size: int,
    batch_size: int,
    labels: Optional[Sequence[int]] = None,
    shuffle: bool = False,
    num_workers: int = 0,
) -> DataLoader:
    """A DataLoader over :class:`ImageFiles`."""
    return DataLoader(ImageFiles(paths, size, labels), batch_size=batch_size, shuffle=shuffle, num_workers=num_workers)


def iterate_images(paths: Sequence[Path], size: int, batch_size: int, num_workers: int = 0) -> Iterator[torch.Tensor]:
    """Batches ``(B, 3, size, size)`` in [0, 1] of the given files, in order."""
    for images, _ in image_loader(paths, size, batch_size, num_workers=num_workers):
        yield images


def load_images(paths: Sequence[Path], size: int) -> torch.Tensor:
    """All images at once, ``(N, 3, size, size)`` in [0, 1] (small sets only)."""
    dataset = ImageFiles(paths, size)
    items: List[torch.Tensor] = [dataset[i][0] for i in range(len(dataset))]
    return torch.stack(items) if items else torch.empty(0, 3, size, size)
