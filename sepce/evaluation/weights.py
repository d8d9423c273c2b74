"""Pretrained backbone weights for the evaluation networks, without any download.

The style classifier (ResNet18), LPIPS (AlexNet trunk) and FID (Inception-v3) use torchvision's ImageNet
weights. They are looked up where torchvision itself caches them — ``$TORCH_HOME/hub/checkpoints/<file>`` (see
``torch.hub.get_dir()``), e.g. ``resnet18-f37072fd.pth`` — or taken from an explicit ``--backbone_weights`` /
``--fid_weights`` file. When neither exists, :class:`MissingWeightsError` explains in one line where to put
the file. Nothing here touches the network; fill the cache once on a connected machine with e.g. ``python -c
"import torchvision; torchvision.models.resnet18(weights='IMAGENET1K_V1')"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

import torch


class MissingWeightsError(FileNotFoundError):
    """Pretrained weights are neither in torchvision's cache nor at the path the user gave."""


@dataclass(frozen=True)
class BackboneSpec:
    """Where torchvision publishes a backbone's ImageNet weights and how to fill the cache with them."""

    name: str
    url: str
    builder: str  # torchvision.models function name
    weights: str  # the weights enum member torchvision uses

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


RESNET18 = BackboneSpec(
    "ResNet18", "https://download.pytorch.org/models/resnet18-f37072fd.pth", "resnet18", "IMAGENET1K_V1"
)
ALEXNET = BackboneSpec(
    "AlexNet", "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth", "alexnet", "IMAGENET1K_V1"
)
INCEPTION_V3 = BackboneSpec(
    "Inception-v3",
    "https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth",
    "inception_v3",
    "IMAGENET1K_V1",
)


def cache_path(spec: BackboneSpec) -> Path:
    """The file torchvision would download ``spec`` to (``torch.hub.get_dir()/checkpoints/<file>``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / spec.filename


def resolve_weights(
    spec: BackboneSpec, explicit: Optional[str | Path] = None, flag: str = "--backbone_weights"
) -> Path:
    """The weights file to load: ``explicit`` if given (it must exist), else torchvision's cache file."""
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise MissingWeightsError(f"{flag} {path} does not exist (expected a {spec.name} state-dict file)")
        return path
    path = cache_path(spec)
    if not path.is_file():
        raise MissingWeightsError(
            f"{spec.name} ImageNet weights not found: no {path} in torchvision's cache and no {flag} given; "
            f"copy {spec.filename} ({spec.url}) there, pass {flag} PATH, or run "
            f"python -c \"import torchvision; torchvision.models.{spec.builder}(weights='{spec.weights}')\" "
            "on a machine with internet"
        )
    return path


def load_state_dict(path: str | Path) -> Dict[str, torch.Tensor]:
    """Load a state dict saved either bare or under a ``state_dict`` / ``model`` key."""
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise ValueError(f"{path} does not hold a state dict (found {type(obj).__name__})")
    return obj
