"""LPIPS between same-named images of the original and an edited model (docs/method.md, "Evaluation").

LPIPS (Zhang et al., "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric", CVPR 2018) with
the AlexNet trunk of the ``lpips`` package, v0.1 linear calibration, images Resize+CenterCrop to 64 px and
scaled to [-1, 1]. The package ships its linear-layer weights; the AlexNet trunk, which the package would have
torchvision download, is built empty and loaded from torchvision's cache or ``--backbone_weights``
(:mod:`sepce.evaluation.weights`).
"""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from tqdm import tqdm

from .loading import load_images
from .weights import ALEXNET, load_state_dict, resolve_weights

LPIPS_IMAGE_SIZE = 64
_SLICE = re.compile(r"^slice\d+\.")


def build_lpips(pretrained: bool = True, backbone_weights: Optional[str | Path] = None) -> torch.nn.Module:
    """The ``lpips.LPIPS(net='alex')`` metric with its AlexNet trunk loaded offline.

    ``pretrained=False`` leaves the trunk randomly initialised (tests only; the values are not LPIPS then).
    """
    import lpips

    if pretrained:
        path = resolve_weights(ALEXNET, backbone_weights, "--backbone_weights")
    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # a random trunk (tests) is the same network on every run
        warnings.filterwarnings("ignore", message=".*(pretrained|weights).*", category=UserWarning)
        metric = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False)
    if pretrained:
        state = load_state_dict(path)
        trunk = metric.net
        # lpips keeps torchvision's feature indices: slice<k>.<i>.weight <- features.<i>.weight
        wanted = {name: "features." + _SLICE.sub("", name) for name in trunk.state_dict()}
        absent = [source for source in wanted.values() if source not in state]
        if absent:
            raise ValueError(f"{path} is not an AlexNet state dict (missing {absent[:2]})")
        trunk.load_state_dict({name: state[source] for name, source in wanted.items()})
    return metric.eval()


@torch.no_grad()
def lpips_per_class(
    metric: torch.nn.Module,
    pairs: Dict[int, List[Tuple[Path, Path]]],
    device: torch.device,
    batch_size: int = 50,
    image_size: int = LPIPS_IMAGE_SIZE,
    progress: bool = True,
) -> Dict[int, List[float]]:
    """LPIPS distance of every pair, grouped by class (values in pair order); a progress bar with ``progress``."""
    metric = metric.to(device).eval()
    distances: Dict[int, List[float]] = {}
    total = sum(len(v) for v in pairs.values())
    with tqdm(total=total, desc="LPIPS", disable=not progress) as bar:
        for class_index, class_pairs in sorted(pairs.items()):
            values: List[float] = []
            for start in range(0, len(class_pairs), batch_size):
                chunk = class_pairs[start : start + batch_size]
                left = load_images([a for a, _ in chunk], image_size).to(device) * 2 - 1  # (B, 3, 64, 64)
                right = load_images([b for _, b in chunk], image_size).to(device) * 2 - 1
                values += metric(left, right).flatten().float().cpu().tolist()
                bar.update(len(chunk))
            distances[class_index] = values
    return distances


def summarize(values: Sequence[float]) -> Tuple[float, float]:
    """Mean and (population) standard deviation; NaN for no values."""
    if not values:
        return math.nan, math.nan
    tensor = torch.tensor(values, dtype=torch.float64)
    return tensor.mean().item(), tensor.std(unbiased=False).item()
