"""Loading models for the scripts: device parsing, path validation, the CompVis loader, erasure records.

Every script goes through :func:`load_model`, so a missing or wrong file fails with one line before any weights
are read.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from ldm.checkpoint import load_config, load_model_from_config

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def parse_device(spec: Union[str, int, torch.device], flag: str = "--device") -> torch.device:
    """``cpu``, ``cuda``, ``cuda:1``, ``mps`` or a bare GPU index (``0``) → torch.device, checked to exist
    (``flag`` names the command-line option in the error's hint)."""
    if isinstance(spec, torch.device):
        device = spec
    else:
        spec = str(spec).strip()
        device = torch.device(f"cuda:{spec}" if spec.isdigit() else spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {spec!r} asks for CUDA but no CUDA device is available; use {flag} cpu")
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise ValueError(f"device {spec!r}: only {torch.cuda.device_count()} CUDA device(s) exist")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {spec!r} asks for MPS, which is not available; use {flag} cpu")
    return device


def parse_devices(spec: str) -> list[torch.device]:
    """``--devices`` of the training scripts: ``'0,1'`` (trained model on the first, frozen reference on the
    second, as the released scripts did), ``'0'`` (one device), ``cpu`` or ``cuda:0,cpu``."""
    parts = [p for p in str(spec).split(",") if p.strip()]
    if not parts or len(parts) > 2:
        raise ValueError(f"--devices {spec!r}: expected one or two devices such as '0,1', '0' or 'cpu'")
    return [parse_device(p, "--devices") for p in parts]


def parse_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"precision {name!r} is not supported; expected one of {sorted(DTYPES)}")
    return DTYPES[name]


def check_model_files(config_path: Union[str, Path], ckpt_path: Union[str, Path]) -> None:
    """Fail fast, before anything heavy, when the config or checkpoint is missing."""
    if not Path(config_path).is_file():
        raise FileNotFoundError(f"config {config_path} does not exist (--config_path)")
    if not Path(ckpt_path).is_file():
        hint = (
            " — download sd-v1-4-full-ema.ckpt into models/ldm/ (see README), or run the tiny model with "
            "--ckpt_path models/tiny/model.ckpt --config_path configs/tiny/v1-tiny.yaml"
        )
        raise FileNotFoundError(f"checkpoint {ckpt_path} does not exist (--ckpt_path){hint}")


def load_model(
    config_path: Union[str, Path],
    ckpt_path: Union[str, Path],
    device: Union[str, torch.device] = "cpu",
    dtype: Optional[torch.dtype] = None,
    use_ema_weights: bool = False,
) -> torch.nn.Module:
    """The CompVis model of ``config_path`` with ``ckpt_path`` loaded, in eval mode, gradients off."""
    check_model_files(config_path, ckpt_path)
    config = load_config(config_path)
    model = load_model_from_config(config, ckpt_path, device=device, dtype=dtype, use_ema_weights=use_ema_weights)
    for p in model.parameters():
        p.requires_grad_(False)
    log.info("loaded %s (%s) on %s", ckpt_path, config_path, device)
    return model


def unet_of(model: torch.nn.Module) -> torch.nn.Module:
    """The UNet (``model.model.diffusion_model``)."""
    return model.model.diffusion_model


def attn2_modules(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Cross-attention modules by their full state-dict prefix (``model.diffusion_model....attn2``)."""
    return {name: m for name, m in model.named_modules() if name.endswith("attn2")}


def prompts_embeddings(model: torch.nn.Module, prompts: Sequence[str]) -> torch.Tensor:
    """``get_learned_conditioning`` without gradients."""
    with torch.no_grad():
        return model.get_learned_conditioning(list(prompts))
