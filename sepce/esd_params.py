"""Which UNet parameters ESD trains, per ``--train_method`` (Gandikota et al. 2023, Sec. 4 and the released
ESD training script).

Rules over the UNet's own parameter names (``model.model.diffusion_model.named_parameters()``, e.g.
``input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight``):

=============  =================================================================================
``xattn``      cross-attention only (``attn2`` in the name) — ESD-x, the paper's choice for styles
``noxattn``    everything except cross-attention, the time embedding (``time_embed``) and the output
               head (names starting ``out.``) — ESD-u
``selfattn``   self-attention only (``attn1``)
``full``       every UNet parameter
``notime``     everything except the time embedding and the output head
``xlayer``     cross-attention of ``output_blocks.6.`` and ``output_blocks.8.`` only
``selflayer``  self-attention of ``input_blocks.4.`` and ``input_blocks.7.`` only
=============  =================================================================================
"""

from __future__ import annotations

from typing import Callable, Iterable

UNET_PREFIX = "model.diffusion_model."


def _excluded_head_or_time(name: str) -> bool:
    return name.startswith("out.") or "time_embed" in name


def _in_blocks(name: str, blocks: tuple[str, ...]) -> bool:
    return any(b in name for b in blocks)


ESD_TRAIN_METHODS: dict[str, Callable[[str], bool]] = {
    "xattn": lambda n: "attn2" in n,
    "noxattn": lambda n: not (_excluded_head_or_time(n) or "attn2" in n),
    "selfattn": lambda n: "attn1" in n,
    "full": lambda n: True,
    "notime": lambda n: not _excluded_head_or_time(n),
    "xlayer": lambda n: "attn2" in n and _in_blocks(n, ("output_blocks.6.", "output_blocks.8.")),
    "selflayer": lambda n: "attn1" in n and _in_blocks(n, ("input_blocks.4.", "input_blocks.7.")),
}

#: Train methods that select a small part of the UNet (attention only).
SMALL_TRAIN_METHODS = ("xattn", "selfattn", "xlayer", "selflayer")


def check_train_method(train_method: str) -> str:
    if train_method not in ESD_TRAIN_METHODS:
        raise ValueError(
            f"--train_method {train_method!r} is not an ESD train method; expected one of "
            f"{', '.join(ESD_TRAIN_METHODS)}"
        )
    return train_method


def esd_unet_names(unet_names: Iterable[str], train_method: str) -> list[str]:
    """The UNet-relative names (as ``diffusion_model.named_parameters()`` yields them) ESD trains."""
    rule = ESD_TRAIN_METHODS[check_train_method(train_method)]
    return [n for n in unet_names if rule(n)]


def esd_parameter_keys(model_names: Iterable[str], train_method: str) -> list[str]:
    """The full state-dict keys (``model.diffusion_model.<unet name>``) of a LatentDiffusion's parameters that
    ESD trains; names outside the UNet are never selected."""
    rule = ESD_TRAIN_METHODS[check_train_method(train_method)]
    return [n for n in model_names if n.startswith(UNET_PREFIX) and rule(n[len(UNET_PREFIX) :])]
