"""Pretrained weights for the evaluation networks, without any download.

The style classifier (ResNet18) and LPIPS (AlexNet trunk) use torchvision's ImageNet weights; FID uses the
``pytorch-fid`` package's FID Inception weights (``pt_inception-2015-12-05-6726825d.pth``, the TensorFlow FID
Inception ported to PyTorch). All are looked up where ``torch.hub`` caches downloads —
``$TORCH_HOME/hub/checkpoints/<file>`` (see ``torch.hub.get_dir()``), e.g. ``resnet18-f37072fd.pth`` — or taken
from an explicit ``--backbone_weights`` / ``--fid_weights`` file. When neither exists,
:class:`MissingWeightsError` explains in one line where to put the file. Nothing here touches the network; fill
the cache once on a connected machine with the command of the spec (:attr:`BackboneSpec.fetch`), e.g. ``python -c
"import torchvision; torchvision.models.resnet18(weights='IMAGENET1K_V1')"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

import torch
from pytorch_fid.inception import FID_WEIGHTS_URL


class MissingWeightsError(FileNotFoundError):
    """Pretrained weights are neither in the torch hub cache nor at the path the user gave."""


@dataclass(frozen=True)
class BackboneSpec:
    """Where a network's weights are published and how to fill the torch hub cache with them."""

    name: str
    kind: str  # what the weights are, for messages: "<name> <kind> weights not found"
    url: str
    fetch: str  # a shell command that downloads the file into the cache on a connected machine
    cache_glob: Optional[str] = None  # other cache file names accepted (e.g. another hash suffix)

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


def _torchvision(name: str, url: str, builder: str) -> BackboneSpec:
    fetch = f"python -c \"import torchvision; torchvision.models.{builder}(weights='IMAGENET1K_V1')\""
    return BackboneSpec(name, "ImageNet", url, fetch)


RESNET18 = _torchvision("ResNet18", "https://download.pytorch.org/models/resnet18-f37072fd.pth", "resnet18")
RESNET50 = _torchvision("ResNet-50", "https://download.pytorch.org/models/resnet50-0676ba61.pth", "resnet50")
ALEXNET = _torchvision("AlexNet", "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth", "alexnet")
FID_INCEPTION = BackboneSpec(
    "pytorch-fid",
    "FID Inception",
    FID_WEIGHTS_URL,
    'python -c "from pytorch_fid.inception import fid_inception_v3; fid_inception_v3()"',
    cache_glob="pt_inception-2015-12-05-*.pth",
)


def cache_path(spec: BackboneSpec) -> Path:
    """The file ``torch.hub`` would download ``spec`` to (``torch.hub.get_dir()/checkpoints/<file>``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / spec.filename


def resolve_weights(
    spec: BackboneSpec, explicit: Optional[str | Path] = None, flag: str = "--backbone_weights"
) -> Path:
    """The weights file to load: ``explicit`` if given (it must exist), else the cache file.

    In the cache the published file name wins; otherwise a single file matching ``spec.cache_glob`` is used.
    """
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise MissingWeightsError(f"{flag} {path} does not exist (expected a {spec.name} state-dict file)")
        return path
    path = cache_path(spec)
    if path.is_file():
        return path
    others = sorted(path.parent.glob(spec.cache_glob)) if spec.cache_glob and path.parent.is_dir() else []
    if len(others) == 1:
        return others[0]
    if len(others) > 1:
        raise MissingWeightsError(
            f"several {spec.name} {spec.kind} weights files in {path.parent} ({', '.join(p.name for p in others)})"
            f" and none named {spec.filename}; pass {flag} PATH"
        )
    raise MissingWeightsError(
        f"{spec.name} {spec.kind} weights not found: no {path} in the torch hub cache and no {flag} given; "
        f"copy {spec.filename} ({spec.url}) there, pass {flag} PATH, or run {spec.fetch} on a machine with internet"
    )


def load_state_dict(path: str | Path) -> Dict[str, torch.Tensor]:
    """Load a state dict saved either bare or under a ``state_dict`` / ``model`` key."""
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise ValueError(f"{path} does not hold a state dict (found {type(obj).__name__})")
    return obj
