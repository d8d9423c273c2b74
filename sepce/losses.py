"""Losses and stopping rules of CiE and SepCE (docs/method.md; Zhao et al., "Separable Multi-Concept Erasure from
Diffusion Models", Sec. 3). ESD/FMN/Ablating-Concepts losses live in :mod:`sepce.baseline_losses`.

Notation: ε(m, x_t, t, c) = ``m.apply_model``; the concept representation ("direction") of a model is
r(m) = ε(m, x_t, t, emb(prompt)) − ε(m, x_t, t, emb("")).

* CiE: loss = mean(r(θ) ⊙ r(θ_orig)) + β_reg · Σ_j Σ|θ_j − θ_j^orig| / J. The first term is a SIGNED mean of the
  element-wise product (not a norm): at θ = θ_orig it equals mean(r²) ≥ 0 and minimising it decorrelates the
  trained model's representation from the original's; it can go below zero.
* SepCE: per concept c, d_c = mean(r_c(θ + Σ ΔW) ⊙ r_c(θ_orig)) weighted by w_c = ‖p_1‖₂ / ‖p_c‖₂ (p_c the
  element-wise product, w_1 = 1, detached), plus β_reg Σ_l mean|A_{c,l}|; concepts that stopped have flag 0;
  total = Σ_c flag_c·loss_c / Σ_c flag_c.
* Stopping (both): momentum m_0 = d_0, m_i = 0.9 m_{i−1} + 0.1 d_i of the (unweighted, detached) direction
  term; stop once i > 10 and m_i < threshold, or at the iteration cap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional, Sequence

import torch


def concept_direction(eps_cond: torch.Tensor, eps_uncond: torch.Tensor) -> torch.Tensor:
    """r = ε(x_t, t, emb(prompt)) − ε(x_t, t, emb(""))."""
    return eps_cond - eps_uncond


def direction_product(r_model: torch.Tensor, r_orig: torch.Tensor) -> torch.Tensor:
    """r(θ) ⊙ r(θ_orig), the original's representation detached."""
    return r_model * r_orig.detach()


def direction_term(r_model: torch.Tensor, r_orig: torch.Tensor) -> torch.Tensor:
    """d = mean(r(θ) ⊙ r(θ_orig)) — signed, not a norm (docs/method.md, CiE)."""
    return direction_product(r_model, r_orig).mean()


def l1_drift(params: Mapping[str, torch.Tensor], originals: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """CiE regulariser Σ_j Σ|θ_j − θ_j^orig| / J over the J trained tensors."""
    if not params:
        raise ValueError("l1_drift needs at least one tensor")
    total = sum((p - originals[k].to(p.device, p.dtype)).abs().sum() for k, p in params.items())
    return total / len(params)


class DriftLog:
    """:func:`l1_drift` of trained tensors from their values when the log was made, for ``losses.csv`` only (the
    methods that do not regularise it: FMN, the original Ablating Concepts)."""

    def __init__(self, params: Mapping[str, torch.Tensor], originals: Optional[Mapping[str, torch.Tensor]] = None):
        self.params = params
        self.originals = originals if originals is not None else {k: p.detach().clone() for k, p in params.items()}

    @torch.no_grad()
    def __call__(self) -> float:
        return l1_drift(self.params, self.originals).item()


def cie_loss(
    r_model: torch.Tensor,
    r_orig: torch.Tensor,
    params: Mapping[str, torch.Tensor],
    originals: Mapping[str, torch.Tensor],
    reg_beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CiE loss → ``(loss, direction term d, regulariser)``; loss = d + reg_beta · l1_drift."""
    d = direction_term(r_model, r_orig)
    reg = l1_drift(params, originals) if reg_beta else torch.zeros((), device=d.device)
    return d + reg_beta * reg, d, reg


def cie_objective(
    model: torch.nn.Module,
    reference: Callable,
    x_t: torch.Tensor,
    t: torch.Tensor,
    cond: torch.Tensor,
    params: Mapping[str, torch.Tensor],
    originals: Mapping[str, torch.Tensor],
    reg_beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One CiE evaluation at a noisy latent ``x_t`` (1×4×h×w) and step ``t`` (1,): ε of the trained model for
    ``cond`` = [emb(prompt); emb("")] in one batched forward (same x_t, t), the frozen original's ε from
    ``reference(x, t, cond)``, then :func:`cie_loss` → ``(loss, d, reg)``."""
    x = x_t.expand(2, *x_t.shape[1:])
    tt = t.expand(2)
    e_c, e_u = model.apply_model(x, tt, cond).chunk(2)
    o_c, o_u = reference(x, tt, cond).chunk(2)
    return cie_loss(concept_direction(e_c, e_u), concept_direction(o_c, o_u), params, originals, reg_beta)


def coefficient_l1(coefs: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """SepCE regulariser of one concept: Σ_l mean|A_{c,l}| over its edited layers."""
    return sum(a.abs().mean() for a in coefs.values())


def balance_weights(products: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """w_1 = 1, w_c = ‖p_1‖₂ / ‖p_c‖₂ (detached), p_c = r_c(θ) ⊙ r_c(θ_orig): each concept's direction term is
    rescaled to the first concept's magnitude."""
    norms = [p.detach().float().norm() for p in products]
    ref = norms[0]
    return [torch.ones((), device=ref.device)] + [ref / n.clamp_min(torch.finfo(n.dtype).tiny) for n in norms[1:]]


def sepce_loss(
    directions: Sequence[torch.Tensor],
    weights: Sequence[torch.Tensor],
    regs: Sequence[torch.Tensor],
    flags: Sequence[bool],
    reg_beta: float,
) -> torch.Tensor:
    """Σ_c flag_c (w_c d_c + reg_beta reg_c) / Σ_c flag_c (docs/method.md, SepCE)."""
    active = sum(bool(f) for f in flags)
    if active == 0:
        raise ValueError("sepce_loss: every concept has stopped")
    total = sum((w * d + reg_beta * r) for d, w, r, f in zip(directions, weights, regs, flags) if f)
    return total / active


@dataclass
class MomentumStop:
    """Momentum statistic and stopping rule of CiE/SepCE: m_0 = d_0, m_i = β m_{i−1} + (1−β) d_i; stop once
    i > ``min_index`` and m_i < ``threshold`` (momentum reason), or when i + 1 == ``max_iterations`` (cap).
    ``i`` counts from 0 (the released loops' index)."""

    threshold: float
    max_iterations: Optional[int] = None
    beta: float = 0.9
    min_index: int = 10
    momentum: Optional[float] = None
    i: int = -1
    history: list[float] = field(default_factory=list)

    def update(self, d: float) -> Optional[str]:
        """Feed the direction term of the next iteration; returns a stop reason or None."""
        d = float(d)
        self.i += 1
        self.momentum = d if self.momentum is None else self.beta * self.momentum + (1 - self.beta) * d
        self.history.append(self.momentum)
        if self.i > self.min_index and self.momentum < self.threshold:
            return f"momentum {self.momentum:.6g} < threshold {self.threshold:g} at iteration {self.i}"
        if self.max_iterations is not None and self.i + 1 >= self.max_iterations:
            return f"iteration cap reached ({self.max_iterations} iterations; momentum {self.momentum:.6g})"
        return None
