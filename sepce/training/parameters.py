"""The trained parameters and their frozen originals: :func:`select_parameters` picks the UNet tensors a method
trains by a name rule (``attn2`` by default, ``attn2_kv`` for SepCE, or any callable such as ESD's train methods
in :mod:`sepce.methods.esd`); :class:`FrozenReference` gives ε of the frozen ORIGINAL model, the target every loss
compares the trained model with.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Mapping, Optional, Union

import torch

from sepce.modeling import unet_of

UNET_PREFIX = "model.diffusion_model."

#: Parameter rules over UNet-relative names (``input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight``).
PARAMETER_RULES: dict[str, Callable[[str], bool]] = {
    "attn2": lambda n: "attn2" in n,
    "attn2_kv": lambda n: ".attn2.to_k." in n or ".attn2.to_v." in n,
}


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(unet_of(model).parameters()).device


def select_parameters(
    model: torch.nn.Module, rule: Union[str, Callable[[str], bool]] = "attn2"
) -> dict[str, torch.nn.Parameter]:
    """The UNet parameters whose UNet-relative name satisfies ``rule`` (a :data:`PARAMETER_RULES` key or a
    callable name → bool), keyed by full state-dict name; they get ``requires_grad=True`` and EVERY other
    parameter of ``model`` gets ``requires_grad=False`` (so backward computes no unused weight gradients)."""
    fn = PARAMETER_RULES.get(rule) if isinstance(rule, str) else rule
    if fn is None:
        raise ValueError(f"parameter rule {rule!r}: expected one of {sorted(PARAMETER_RULES)} or a callable")
    chosen: dict[str, torch.nn.Parameter] = {}
    for name, p in model.named_parameters():
        take = name.startswith(UNET_PREFIX) and bool(fn(name[len(UNET_PREFIX) :]))
        p.requires_grad_(take)
        if take:
            chosen[name] = p
    if not chosen:
        raise ValueError(f"parameter rule {rule!r} selects no UNet parameter")
    return chosen


class FrozenReference:
    """ε of the frozen ORIGINAL model, without gradients, returned on the trained model's device.

    * :meth:`substituted` — one model copy: the trained model evaluated with the original values of its trained
      tensors substituted (``torch.func.functional_call``), so only those tensors are stored twice.
    * :meth:`copy` — a separate frozen model (the released two-device layout: ``--devices 0,1``).
    * :meth:`switched_off` — one model copy whose trained quantities are switched off inside a context manager
      (SepCE: increments off).

    ``originals`` holds θ_orig of the trained tensors on the trained model's device (for the L1 regulariser)."""

    def __init__(
        self,
        fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
        kind: str,
        originals: Optional[dict[str, torch.Tensor]] = None,
    ):
        self._fn = fn
        self.kind = kind
        self.originals = originals or {}

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self._fn(x, t, cond).to(x.device)

    @classmethod
    def substituted(cls, model: torch.nn.Module, trained: Mapping[str, torch.Tensor]) -> FrozenReference:
        originals = {k: v.detach().clone() for k, v in trained.items()}
        wrapper = model.model  # DiffusionWrapper: forward(x, t, c_crossattn=[...])
        prefix = "model."
        subs = {k[len(prefix) :]: v for k, v in originals.items()}
        key = "c_concat" if wrapper.conditioning_key == "concat" else "c_crossattn"

        def fn(x, t, cond):
            return torch.func.functional_call(wrapper, subs, (x, t), {key: [cond]})

        return cls(fn, "substituted", originals)

    @classmethod
    def copy(cls, frozen: torch.nn.Module, trained: Mapping[str, torch.Tensor]) -> FrozenReference:
        device = _device_of(frozen)
        params = dict(frozen.named_parameters())
        originals = {k: params[k].detach().to(v.device, copy=True) for k, v in trained.items()}

        def fn(x, t, cond):
            return frozen.apply_model(x.to(device), t.to(device), cond.to(device))

        return cls(fn, f"copy on {device}", originals)

    @classmethod
    def switched_off(
        cls, model: torch.nn.Module, off: Callable[[], contextlib.AbstractContextManager]
    ) -> FrozenReference:
        def fn(x, t, cond):
            with off():
                return model.apply_model(x, t, cond)

        return cls(fn, "switched off")
