"""UCE: unified concept editing, a closed-form erasure baseline (Gandikota et al. 2024; docs/method.md "UCE").

No training loop. For every cross-attention (``attn2``) ``to_k`` and ``to_v`` weight W_old (d_out × D), with
c_p = the text embedding of prompt p at its LAST word token (:func:`last_word_embedding`), erased concepts e_i,
their guides g_i (default ``""``) and preserved concepts p_j, the edit is the minimiser of

    λ ‖W − W_old‖²_F + s_e Σ_i ‖W c_{e_i} − W_old c_{g_i}‖² + s_p Σ_j ‖W c_{p_j} − W_old c_{p_j}‖²,

whose normal equations W M = A give (docs/method.md "UCE")

    W_new = (λ W_old + s_e Σ_i (W_old c_{g_i}) c_{e_i}ᵀ + s_p Σ_j (W_old c_{p_j}) c_{p_j}ᵀ)
            · (λ I + s_e Σ_i c_{e_i} c_{e_i}ᵀ + s_p Σ_j c_{p_j} c_{p_j}ᵀ)⁻¹.

M = λ I + s_e Σ c_e c_eᵀ + s_p Σ c_p c_pᵀ is symmetric positive definite (λ > 0) and the same for every layer, so
all layers are solved at once in float64 as M W_newᵀ = Aᵀ (one ``torch.linalg.solve`` over the stacked right-hand
sides; no explicit inverse). The erased concept's key/value moves to the guide's original key/value, up to the
regularisation λ (exact as λ → 0 when the erased and preserved embeddings are linearly independent); preserved
concepts' keys/values move less the larger s_p.

* :class:`UCESettings` — the validated concepts and scales (built once by ``train-scripts/UCE.py``).
* :func:`last_word_positions`, :func:`last_word_embedding` — where and what c_p is.
* :func:`closed_form_edit` — the edit of given weights for given embeddings (pure linear algebra).
* :func:`uce_edit` — the edit of a model's ``attn2`` ``to_k``/``to_v`` weights, with residual diagnostics.
* :func:`objective` — the value of the objective above for one weight.
* :func:`run_uce` — the run on a :class:`~sepce.training.TrainingSession` (its run folder, ``losses.csv`` row,
  record and summary): ``train-scripts/UCE.py`` is its flags and this one call.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

import torch

from sepce.modeling import attn2_modules
from sepce.training import FitResult, TrainingSession, TrainingSettings

METHOD = "UCE"
STOP_REASON = "closed form"
PROJECTIONS = ("to_k", "to_v")
#: The released defaults of the objective's weights (s_e, s_p, λ).
UCE_DEFAULTS = {"erase_scale": 1.0, "preserve_scale": 1.0, "lamb": 0.5}


# ------------------------------------------------------------------------------------------------ settings
def split_concepts(text: Optional[str], keep_blank: bool = True) -> list[str]:
    """``'Van Gogh; Picasso'`` → ``['Van Gogh', 'Picasso']`` (``;``-separated, items stripped). ``None`` → ``[]``.
    With ``keep_blank`` an empty item is the blank prompt ``""`` (``''`` → ``['']``); without it, empty items are
    dropped (``''`` → ``[]``)."""
    if text is None:
        return []
    items = [item.strip() for item in text.split(";")]
    return items if keep_blank else [item for item in items if item]


def check_scales(erase_scale: float, preserve_scale: float, lamb: float) -> None:
    """λ > 0 (it keeps M positive definite), s_e ≥ 0, s_p ≥ 0, all finite; else a one-line ``ValueError``."""
    if not (isinstance(lamb, (int, float)) and math.isfinite(lamb) and lamb > 0):
        raise ValueError(f"lamb {lamb!r}: expected a finite number > 0 (the weight λ of ‖W − W_old‖²)")
    for name, value in (("erase_scale", erase_scale), ("preserve_scale", preserve_scale)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} {value!r}: expected a finite number >= 0")


@dataclass(frozen=True)
class UCESettings:
    """What to erase, towards what, what to keep, and the weights λ, s_e, s_p of the objective.

    ``guide_concepts`` holds one guide per erased concept or one shared by all (default: the blank prompt ``""``).
    Construction validates everything (one-line ``ValueError``): at least one erased concept, none blank or
    repeated, guide count 1 or ``len(edit_concepts)``, no concept both erased and preserved, λ > 0, scales ≥ 0."""

    edit_concepts: tuple[str, ...]
    guide_concepts: tuple[str, ...] = ("",)
    preserve_concepts: tuple[str, ...] = ()
    erase_scale: float = UCE_DEFAULTS["erase_scale"]
    preserve_scale: float = UCE_DEFAULTS["preserve_scale"]
    lamb: float = UCE_DEFAULTS["lamb"]

    def __post_init__(self) -> None:
        for name in ("edit_concepts", "guide_concepts", "preserve_concepts"):
            value = getattr(self, name)
            if isinstance(value, str):
                raise ValueError(f"{name} {value!r}: expected a sequence of prompts, not one string")
            object.__setattr__(self, name, tuple(value))
        edit, guides, preserve = self.edit_concepts, self.guide_concepts, self.preserve_concepts
        if not edit:
            raise ValueError("edit_concepts is empty: expected at least one concept to erase")
        blank = [i for i, c in enumerate(edit) if not c.strip()]
        if blank:
            raise ValueError(
                f"edit_concepts {list(edit)!r}: item {blank[0]} is blank; the blank prompt is only a guide "
                f"(its last word token is the start token, shared by every prompt)"
            )
        repeated = sorted({c for c in edit if edit.count(c) > 1})
        if repeated:
            raise ValueError(f"edit_concepts {list(edit)!r}: {repeated[0]!r} is named more than once")
        if len(guides) not in (1, len(edit)):
            raise ValueError(
                f"guide_concepts {list(guides)!r}: expected 1 guide or one per erased concept ({len(edit)})"
            )
        both = [c for c in edit if c in preserve]
        if both:
            raise ValueError(f"{both[0]!r} is both an edit concept and a preserve concept; it can only be one")
        check_scales(self.erase_scale, self.preserve_scale, self.lamb)

    @property
    def guides(self) -> tuple[str, ...]:
        """The guide of each erased concept (a shared guide repeated)."""
        return self.guide_concepts * len(self.edit_concepts) if len(self.guide_concepts) == 1 else self.guide_concepts


# ------------------------------------------------------------------------------------------------ embeddings
def tokenizer_of(model: torch.nn.Module):
    """The model's own CLIP tokenizer (``cond_stage_model.tokenizer``, ldm/modules/encoders)."""
    tokenizer = getattr(getattr(model, "cond_stage_model", None), "tokenizer", None)
    if tokenizer is None:
        raise ValueError("the model's text encoder (cond_stage_model) has no tokenizer; UCE needs token positions")
    return tokenizer


def last_word_positions(tokenizer, prompts: Sequence[str]) -> list[int]:
    """Position of each prompt's LAST word token in the encoder's sequence: ``n`` for ``n`` word tokens (the start
    token is position 0, so ``""`` → 0; "Van Gogh" → 2); a prompt longer than the context keeps its first
    ``max_length − 2`` word tokens, as the tokenizer truncates it."""
    limit = tokenizer.max_length - 2
    return [min(len(tokenizer.encode(p)), limit) for p in prompts]


@torch.no_grad()
def last_word_embedding(model: torch.nn.Module, prompts: Sequence[str]) -> torch.Tensor:
    """c_p for each prompt: ``get_learned_conditioning(prompts)`` at the prompt's last word token
    (:func:`last_word_positions`) — an N × D tensor in the text encoder's dtype, on its device."""
    prompts = list(prompts)
    if not prompts:
        raise ValueError("last_word_embedding: expected at least one prompt")
    positions = last_word_positions(tokenizer_of(model), prompts)
    emb = model.get_learned_conditioning(prompts)  # N L D
    rows = torch.arange(len(prompts), device=emb.device)
    return emb[rows, torch.tensor(positions, device=emb.device)]  # N D


# ------------------------------------------------------------------------------------------------ the edit
def _compute_device(device: torch.device) -> torch.device:
    return torch.device("cpu") if device.type == "mps" else device  # MPS has no float64


@torch.no_grad()
def closed_form_edit(
    weights: Mapping[str, torch.Tensor],
    erase: torch.Tensor,
    guide: torch.Tensor,
    preserve: Optional[torch.Tensor] = None,
    *,
    erase_scale: float = 1.0,
    preserve_scale: float = 1.0,
    lamb: float = 0.5,
) -> dict[str, torch.Tensor]:
    """W_new of every weight in ``weights`` (name → d_out × D): the minimiser of λ‖W − W_old‖²_F +
    s_e Σ_i ‖W c_{e_i} − W_old c_{g_i}‖² + s_p Σ_j ‖W c_{p_j} − W_old c_{p_j}‖² (docs/method.md "UCE").

    ``erase`` and ``guide`` are N_e × D (row i: c_{e_i} and its guide c_{g_i}), ``preserve`` N_p × D or None.
    Solved in float64 as M W_newᵀ = Aᵀ with M = λI + s_e C_eᵀC_e + s_p C_pᵀC_p and
    A = λ W_old + s_e (W_old C_gᵀ) C_e + s_p (W_old C_pᵀ) C_p, one ``torch.linalg.solve`` for all weights (M is
    shared); returned as new tensors in each weight's dtype and on its device."""
    check_scales(erase_scale, preserve_scale, lamb)
    if not weights:
        raise ValueError("closed_form_edit: no weights to edit")
    if erase.ndim != 2 or erase.shape != guide.shape:
        raise ValueError(
            f"erase {tuple(erase.shape)} and guide {tuple(guide.shape)} embeddings: expected two N x D matrices"
        )
    dim = erase.shape[1]
    if preserve is None:
        preserve = erase.new_zeros(0, dim)
    if preserve.ndim != 2 or preserve.shape[1] != dim:
        raise ValueError(f"preserve embeddings {tuple(preserve.shape)}: expected N x {dim}")
    for name, w in weights.items():
        if w.ndim != 2 or w.shape[1] != dim:
            raise ValueError(f"weight {name} has shape {tuple(w.shape)}; expected d_out x {dim}")
    device = _compute_device(next(iter(weights.values())).device)
    ce, cg, cp = (x.detach().to(device, torch.float64) for x in (erase, guide, preserve))
    m = lamb * torch.eye(dim, dtype=torch.float64, device=device) + erase_scale * ce.T @ ce
    m = m + preserve_scale * cp.T @ cp  # D D, symmetric positive definite
    rhs = []
    for w in weights.values():
        w_old = w.detach().to(device, torch.float64)  # d_out D
        a = lamb * w_old + erase_scale * (w_old @ cg.T) @ ce + preserve_scale * (w_old @ cp.T) @ cp  # d_out D
        rhs.append(a.T)  # D d_out
    solution = torch.linalg.solve(m, torch.cat(rhs, dim=1))  # D Σd_out: W_newᵀ of every weight, side by side
    out: dict[str, torch.Tensor] = {}
    start = 0
    for name, w in weights.items():
        stop = start + w.shape[0]
        out[name] = solution[:, start:stop].T.to(w.device, w.dtype).contiguous()
        start = stop
    return out


def kv_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every ``attn2`` ``to_k``/``to_v`` weight of the UNet, by full state-dict key
    (``model.diffusion_model....attn2.to_k.weight``, the keys of :mod:`sepce.records` and SepCE)."""
    modules = attn2_modules(model)
    if not modules:
        raise ValueError("the model has no cross-attention (attn2) layers; UCE edits their to_k/to_v weights")
    return {f"{prefix}.{proj}.weight": getattr(m, proj).weight for prefix, m in modules.items() for proj in PROJECTIONS}


@dataclass
class UCEResult:
    """The new weights and how well they meet the objective's targets.

    ``erase_residual`` per erased concept: ‖W_new c_e − W_old c_g‖ / ‖W_old c_g‖ (root of the sums over layers);
    ``preserve_drift`` per preserved concept: ‖W_new c_p − W_old c_p‖ / ‖W_old c_p‖; ``weight_change``:
    ‖W_new − W_old‖_F / ‖W_old‖_F over all edited weights; ``objective_before``/``objective_after``: the objective
    (module docstring) summed over the edited weights at W_old and at W_new; ``positions``: the last-word position
    of every prompt."""

    tensors: dict[str, torch.Tensor]
    positions: dict[str, int]
    erase_residual: dict[str, float] = field(default_factory=dict)
    preserve_drift: dict[str, float] = field(default_factory=dict)
    weight_change: float = 0.0
    objective_before: float = 0.0
    objective_after: float = 0.0

    def summary(self) -> dict:
        return {
            "layers": len(self.tensors),
            "positions": dict(self.positions),
            "objective_before": self.objective_before,
            "objective_after": self.objective_after,
            "erase_residual": dict(self.erase_residual),
            "preserve_drift": dict(self.preserve_drift),
            "weight_change": self.weight_change,
        }


@torch.no_grad()
def uce_edit(model: torch.nn.Module, settings: UCESettings) -> UCEResult:
    """Edit every ``attn2`` ``to_k``/``to_v`` weight of ``model`` by :func:`closed_form_edit` with the last-word
    embeddings of ``settings``' concepts. The model is left unchanged; the new tensors are returned."""
    edit, guides, preserve = list(settings.edit_concepts), list(settings.guides), list(settings.preserve_concepts)
    prompts = list(dict.fromkeys(edit + guides + preserve))
    emb = dict(zip(prompts, last_word_embedding(model, prompts)))
    positions = dict(zip(prompts, last_word_positions(tokenizer_of(model), prompts)))
    ce = torch.stack([emb[c] for c in edit])  # N_e D
    cg = torch.stack([emb[g] for g in guides])  # N_e D
    cp = torch.stack([emb[p] for p in preserve]) if preserve else None  # N_p D
    weights = kv_weights(model)
    tensors = closed_form_edit(
        weights,
        ce,
        cg,
        cp,
        erase_scale=settings.erase_scale,
        preserve_scale=settings.preserve_scale,
        lamb=settings.lamb,
    )
    residual = _relative_errors(weights, tensors, ce, cg, edit)
    drift = _relative_errors(weights, tensors, cp, cp, preserve) if preserve else {}
    num = sum(float((tensors[k].double() - w.double()).square().sum()) for k, w in weights.items())
    den = sum(float(w.double().square().sum()) for w in weights.values())
    scales = (settings.erase_scale, settings.preserve_scale, settings.lamb)
    before = sum(objective(w, w, ce, cg, cp, *scales) for w in weights.values())
    after = sum(objective(tensors[k], w, ce, cg, cp, *scales) for k, w in weights.items())
    return UCEResult(tensors, positions, residual, drift, math.sqrt(num / den) if den else 0.0, before, after)


def objective(
    w: torch.Tensor,
    w_old: torch.Tensor,
    erase: torch.Tensor,
    guide: torch.Tensor,
    preserve: Optional[torch.Tensor],
    erase_scale: float,
    preserve_scale: float,
    lamb: float,
) -> float:
    """λ‖W − W_old‖²_F + s_e Σ_i ‖W c_{e_i} − W_old c_{g_i}‖² + s_p Σ_j ‖W c_{p_j} − W_old c_{p_j}‖² (in float64)."""
    device = _compute_device(w_old.device)
    w, w_old, ce, cg = (x.detach().to(device, torch.float64) for x in (w, w_old, erase, guide))
    value = lamb * (w - w_old).square().sum() + erase_scale * (ce @ w.T - cg @ w_old.T).square().sum()
    if preserve is not None:
        cp = preserve.detach().to(device, torch.float64)
        value = value + preserve_scale * (cp @ (w - w_old).T).square().sum()
    return float(value)


def _relative_errors(
    weights: Mapping[str, torch.Tensor],
    new: Mapping[str, torch.Tensor],
    inputs: torch.Tensor,
    targets: torch.Tensor,
    names: Sequence[str],
) -> dict[str, float]:
    """Per row r: sqrt(Σ_l ‖W_new,l x_r − W_old,l t_r‖²) / sqrt(Σ_l ‖W_old,l t_r‖²) over the edited weights."""
    num = torch.zeros(len(names), dtype=torch.float64)
    den = torch.zeros(len(names), dtype=torch.float64)
    for key, w in weights.items():
        device = _compute_device(w.device)
        x, t = inputs.to(device, torch.float64), targets.to(device, torch.float64)
        target = t @ w.detach().to(device, torch.float64).T  # N d_out
        got = x @ new[key].to(device, torch.float64).T  # N d_out
        num += (got - target).square().sum(1).cpu()
        den += target.square().sum(1).cpu()
    return {n: float((a / b).sqrt()) if b > 0 else float(a.sqrt()) for n, a, b in zip(names, num, den)}


def run_uce(common: TrainingSettings, settings: UCESettings) -> dict:
    """One UCE run (one device, no optimiser): the model, the edit (:func:`uce_edit`), one ``losses.csv`` row (the
    objective before and after, the worst residuals), the record of the changed to_k/to_v tensors and the summary
    of every training run (1 iteration, stop reason :data:`STOP_REASON`); returns the summary."""
    session = TrainingSession(common, METHOD, settings.edit_concepts, images=False)
    model = session.load_model()
    resolved = {
        "edit": list(settings.edit_concepts),
        "guides": list(settings.guides),
        "preserve": list(settings.preserve_concepts),
    }
    run_folder = session.start_run({"resolved": resolved})
    tic = time.perf_counter()
    result = uce_edit(model, settings)
    seconds = time.perf_counter() - tic
    run_folder.log(
        {
            "iteration": 0,
            "loss": result.objective_after,
            "loss_before": result.objective_before,
            "erase_residual": max(result.erase_residual.values()),
            "preserve_drift": max(result.preserve_drift.values(), default=0.0),
            "seconds": round(seconds, 4),
        }
    )
    record = session.tensor_record(result.tensors)
    concepts = {
        c: {"iterations": 1, "stop_reason": STOP_REASON, "guide": g, "erase_residual": result.erase_residual[c]}
        for c, g in zip(settings.edit_concepts, settings.guides)
    }
    report = {
        **resolved,
        "erase_scale": settings.erase_scale,
        "preserve_scale": settings.preserve_scale,
        "lamb": settings.lamb,
        "edit_seconds": seconds,
        **result.summary(),
    }
    return session.finish(
        FitResult(1, STOP_REASON), record, reference="none (closed form)", concepts=concepts, settings=report
    )
