"""Losses of the baseline erasure methods the paper compares against: ESD, Forget-Me-Not, Ablating Concepts.

* **ESD** (Gandikota et al. 2023, "Erasing Concepts from Diffusion Models", Eq. 2/3): the trained model's
  concept-conditioned noise prediction is steered to the negatively guided prediction of the frozen original,
  ε*(z_t, c) = ε(z_t) − η (ε(z_t, c) − ε(z_t)), at latents z_t the trained model itself samples with DDIM
  "till t" (:func:`esd_sample_till_t`, :func:`esd_sampling_steps`).
* **Forget-Me-Not attention re-steering** (Zhang et al. 2023, Sec. 3.1), in the form of the released SepCE
  scripts: in every cross-attention layer (``attn2``) the scaled attention logits q·kᵀ/√d with the concept
  context minus those with the concept-free context (same queries) are driven to zero (:func:`fmn_loss`). The
  logits are captured through ``CrossAttention.attention_hook`` only while :class:`AttentionCapture` is active,
  so ordinary forwards pay nothing.
* **Ablating Concepts** (Kumari et al. 2023, "Ablating Concepts in Text-to-Image Diffusion Models", Eq. 4,
  model-based variant): the concept prompt's prediction is pulled to the frozen original's prediction for the
  anchor prompt, plus a term that keeps the anchor prompt's own prediction in place (:func:`ablating_loss`).

The exact computations the project reproduces are in ``docs/method.md`` (sections ESD, FMN, Ablating concepts).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

import torch
import torch.nn.functional as F
from ldm.models.diffusion.sampling import cfg, ddim_sample, ddim_timesteps

#: The released (authors' variant) prompts: FMN compares ``a painting of <prompt>`` with ``a painting of``,
#: Ablating Concepts maps ``<prompt> painting`` onto the anchor ``painting``.
FMN_CONCEPT_TEMPLATE = "a painting of {}"
FMN_NEUTRAL_PROMPT = "a painting of"
ABLATING_CONCEPT_TEMPLATE = "{} painting"
ABLATING_ANCHOR_PROMPT = "painting"
ABLATING_ANCHOR_WEIGHT = 10.0
#: Variants of FMN and Ablating Concepts: "authors" is the released scripts' form, which the paper's table measured
#: (the original methods, docs/method.md, are not implemented yet).
VARIANTS = ("authors",)
#: How ESD samples its latent z before scoring it at t (:func:`esd_sampling_steps`).
ESD_SAMPLING = ("till_t", "authors_all_steps")


# ------------------------------------------------------------------------------------------------------- ESD
def split_concepts(prompt: str, separator: Optional[str]) -> list[str]:
    """ESD's ``--seperator``: ``'Van Gogh, Picasso'`` with ``','`` → ``['Van Gogh', 'Picasso']`` (stripped);
    without a separator the whole prompt is one concept. Empty pieces are an error."""
    words = [w.strip() for w in prompt.split(separator)] if separator else [prompt.strip()]
    if not all(words):
        raise ValueError(
            f"--prompt {prompt!r} split by --seperator {separator!r} gives an empty concept; "
            "expected non-empty concept names"
        )
    return words


def check_concept_names(concepts: list[str]) -> list[str]:
    """Concept names go into the erasure record (:mod:`sepce.records`), which refuses ``'.'`` in them: check
    before any model is loaded instead of failing at the save after training."""
    for c in concepts:
        if not c.strip():
            raise ValueError("--prompt is empty; expected a concept name such as 'Van Gogh'")
        if "." in c:
            raise ValueError(f"--prompt {c!r} contains '.', which erasure records do not allow in concept names")
    return concepts


def esd_sampling_steps(t_enc: int, ddim_steps: int, sampling: str = "till_t", num_timesteps: int = 1000) -> int:
    """How many DDIM steps ESD runs from x_T for the drawn ``t_enc`` (docs/method.md, "ESD").

    ``till_t`` (default) is ESD's own sampler: the CompVis step index counts down from n−1 (n = number of DDIM
    timesteps, S = ``ddim_steps`` when S divides T) and the loop stops right after the step with index t_enc−1
    (``if index + 1 == till_T: break``) — n+1−t_enc steps for t_enc ≥ 1, all n steps for t_enc = 0 — so the
    latent's noise level follows the DDPM t ∈ [t_enc·T/S, (t_enc+1)·T/S) it is scored at (it ends at DDIM timestep
    ``ddim_timesteps[t_enc−2]``, two grid points below t's bucket, for t_enc ≥ 2).

    ``authors_all_steps`` reproduces the paper's ESD row: the authors' Esd.py passed ``till_T`` to a sampler that
    ignored it, so every iteration sampled all n steps and scored the clean latent at a random t."""
    if sampling not in ESD_SAMPLING:
        raise ValueError(f"--sampling {sampling!r}: expected one of {', '.join(ESD_SAMPLING)}")
    n = len(ddim_timesteps(ddim_steps, num_timesteps))
    if not 0 <= t_enc < n:
        raise ValueError(f"t_enc {t_enc!r}: expected an integer in 0..{n - 1}")
    if sampling == "authors_all_steps" or t_enc == 0:
        return n
    return n + 1 - t_enc


def esd_sample_till_t(
    model: torch.nn.Module,
    start_code: torch.Tensor,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    t_enc: int,
    ddim_steps: int,
    start_guidance: float,
    sampling: str = "till_t",
) -> torch.Tensor:
    """ESD's z_t: DDIM (eta 0, Song et al. 2021 Eq. 12) from ``start_code`` = x_T with the model being trained,
    classifier-free guidance ``start_guidance`` between ``cond`` (the concept) and ``uncond`` (``""``), for the
    :func:`esd_sampling_steps` of ``t_enc`` under ``sampling``. No gradients."""
    steps = esd_sampling_steps(int(t_enc), ddim_steps, sampling, int(model.alphas_cumprod.shape[0]))
    with torch.no_grad():
        model_fn = cfg(model.apply_model, uncond, start_guidance)
        return ddim_sample(model_fn, start_code, cond, model.alphas_cumprod, ddim_steps, eta=0.0, stop_after=steps)


def esd_target(e_0: torch.Tensor, e_p: torch.Tensor, negative_guidance: float) -> torch.Tensor:
    """ESD's target ε(z_t) − η (ε(z_t, c) − ε(z_t)) from the frozen original's predictions (Eq. 3)."""
    return e_0 - negative_guidance * (e_p - e_0)


def esd_loss(e_n: torch.Tensor, e_0: torch.Tensor, e_p: torch.Tensor, negative_guidance: float) -> torch.Tensor:
    """MSE between the trained model's ε(z_t, c) and :func:`esd_target` (targets detached)."""
    target = esd_target(e_0.detach(), e_p.detach(), negative_guidance).to(e_n.device, e_n.dtype)
    return F.mse_loss(e_n, target)


# ------------------------------------------------------------------------------------------------------- FMN
@dataclass
class CapturedAttention:
    """What one cross-attention layer saw in a captured forward."""

    name: str
    module: torch.nn.Module
    q: torch.Tensor  # B heads N d
    k: torch.Tensor  # B heads M d


class AttentionCapture:
    """Context manager recording every given CrossAttention layer's per-head queries and keys.

    Installs ``attention_hook`` on entry and removes it on exit. The hook only keeps references — it runs no
    tensor operations — so gradient checkpointing recomputes a block exactly as it ran, and the logits are
    formed afterwards, outside any checkpointed region. Layers that already carry a hook are refused.
    """

    def __init__(self, modules: Mapping[str, torch.nn.Module]):
        self.modules = dict(modules)
        self.records: list[CapturedAttention] = []
        self._names = {id(m): n for n, m in self.modules.items()}

    def _hook(self, module: torch.nn.Module, q: torch.Tensor, k: torch.Tensor, context: torch.Tensor) -> None:
        self.records.append(CapturedAttention(self._names[id(module)], module, q, k))

    def __enter__(self) -> AttentionCapture:
        busy = [n for n, m in self.modules.items() if m.attention_hook is not None]
        if busy:
            raise RuntimeError(f"attention layer {busy[0]} already has an attention_hook")
        for m in self.modules.values():
            m.attention_hook = self._hook
        return self

    def __exit__(self, *exc) -> None:
        for m in self.modules.values():
            m.attention_hook = None


def attention_keys(module: torch.nn.Module, context: torch.Tensor) -> torch.Tensor:
    """Per-head keys (B, heads, M, d) of a CrossAttention layer for ``context``, as its forward forms them
    (``to_k`` plus any ``kv_delta`` increment)."""
    k = module.to_k(context)
    if module.kv_delta is not None:
        k = k + module.kv_delta(context)[0]
    return module.split_heads(k)


def logit_difference(record: CapturedAttention, context2: torch.Tensor) -> torch.Tensor:
    """q·k_cᵀ/√d − q·k_c2ᵀ/√d for one captured layer: the same queries against the keys of the captured
    context and of ``context2`` (B, heads, N, M)."""
    k2 = attention_keys(record.module, context2.to(record.k.device, record.k.dtype))
    if k2.shape[0] != record.k.shape[0]:
        k2 = k2.expand(record.k.shape[0], *k2.shape[1:])
    return (record.q @ (record.k - k2).transpose(-1, -2)) * record.module.scale


def fmn_loss(
    model: torch.nn.Module,
    x_t: torch.Tensor,
    t: torch.Tensor,
    context: torch.Tensor,
    context2: torch.Tensor,
    attn_modules: Mapping[str, torch.nn.Module],
) -> torch.Tensor:
    """Forget-Me-Not attention re-steering: Σ over ``attn_modules`` (every attn2 layer) of
    MSE(q·k_cᵀ/√d − q·k_c2ᵀ/√d, 0), the queries coming from the forward of ``model`` at (x_t, t) with the
    concept context ``context`` (``a painting of <prompt>``) and ``context2`` = ``a painting of``."""
    with AttentionCapture(attn_modules) as capture:
        model.apply_model(x_t, t, context)
    if len(capture.records) != len(attn_modules):
        raise RuntimeError(f"captured {len(capture.records)} attention calls for {len(attn_modules)} layers")
    return sum(logit_difference(r, context2).pow(2).mean() for r in capture.records)


def check_template(template: str, flag: str = "--concept_template") -> str:
    """A concept-prompt template holds exactly one ``{}`` (where the concept goes) and no other format field."""
    import string

    try:
        fields = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise ValueError(f"{flag} {template!r}: {e}; expected text with exactly one {{}}") from None
    if fields != [("", "", None)]:
        raise ValueError(
            f"{flag} {template!r}: expected exactly one {{}} (where the concept goes), e.g. 'a painting of {{}}'"
        )
    return template


def fmn_prompts(
    prompt: str, concept_template: str = FMN_CONCEPT_TEMPLATE, neutral_prompt: str = FMN_NEUTRAL_PROMPT
) -> tuple[str, str]:
    """(concept context ``concept_template.format(prompt)``, concept-free context ``neutral_prompt``) of FMN's
    attention re-steering; the defaults are the released scripts' (authors' variant): (``a painting of
    <prompt>``, ``a painting of``)."""
    return check_template(concept_template).format(prompt), neutral_prompt


# ----------------------------------------------------------------------------------------- Ablating Concepts
def ablating_prompts(
    prompt: str, concept_template: str = ABLATING_CONCEPT_TEMPLATE, anchor_prompt: str = ABLATING_ANCHOR_PROMPT
) -> tuple[str, str]:
    """(concept prompt ``concept_template.format(prompt)``, anchor prompt ``anchor_prompt``); the defaults are the
    released scripts' (authors' variant): (``<prompt> painting``, ``painting``)."""
    return check_template(concept_template).format(prompt), anchor_prompt


def ablating_loss(
    e_pn: torch.Tensor, e_p0: torch.Tensor, e_n: torch.Tensor, anchor_weight: float = ABLATING_ANCHOR_WEIGHT
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MSE(e_pn, e_n) + w·MSE(e_p0, e_n): e_pn, e_p0 the trained model's predictions for the concept and the
    anchor prompt, e_n the frozen original's for the anchor (detached). Returns (loss, concept term, anchor
    term without the weight)."""
    e_n = e_n.detach().to(e_pn.device, e_pn.dtype)
    concept_term = F.mse_loss(e_pn, e_n)
    anchor_term = F.mse_loss(e_p0, e_n)
    return concept_term + anchor_weight * anchor_term, concept_term, anchor_term
