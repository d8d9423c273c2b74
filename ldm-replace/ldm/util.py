"""Config instantiation and small helpers (CompVis ``ldm.util``)."""

from __future__ import annotations

import importlib
from inspect import isfunction
from typing import Any, Mapping

import torch


def exists(x) -> bool:
    return x is not None


def default(val, d):
    if exists(val):
        return val
    return d() if isfunction(d) else d


def count_params(model: torch.nn.Module) -> int:
    """Number of parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())


def get_obj_from_str(string: str, reload: bool = False):
    """Import ``package.module.Name`` and return ``Name``."""
    module, cls = string.rsplit(".", 1)
    mod = importlib.import_module(module)
    if reload:
        mod = importlib.reload(mod)
    try:
        return getattr(mod, cls)
    except AttributeError:
        raise ImportError(f"module {module!r} has no attribute {cls!r} (config target {string!r})") from None


def instantiate_from_config(config: Mapping[str, Any], **overrides):
    """Build ``config["target"](**config["params"], **overrides)`` — the one config instantiation path."""
    if "target" not in config:
        if config in ("__is_first_stage__", "__is_unconditional__"):
            return None
        raise KeyError(f"expected a config with a 'target:' key, got keys {sorted(config)}")
    params = dict(config.get("params", None) or {})
    params.update(overrides)
    return get_obj_from_str(config["target"])(**params)
