"""What several erasure methods share (Zhao et al., "Separable Multi-Concept Erasure from Diffusion Models", Sec. 3;
docs/method.md, "CiE" and "SepCE").

Notation: ε(m, x_t, t, c) = ``m.apply_model``; the concept representation ("direction") of a model is
r(m) = ε(m, x_t, t, emb(prompt)) − ε(m, x_t, t, emb("")).

* The direction term d = mean(r(θ) ⊙ r(θ_orig)) (:func:`direction_term`) of CiE and SepCE: a SIGNED mean of the
  element-wise product (not a norm); at θ = θ_orig it equals mean(r²) ≥ 0 and minimising it decorrelates the
  trained model's representation from the original's; it can go below zero.
* The L1 drift Σ_j Σ|θ_j − θ_j^orig| / J (:func:`l1_drift`): CiE's regulariser, logged only by FMN and Ablating
  Concepts (:class:`DriftLog`).
* The stopping rule of CiE and SepCE (:class:`MomentumStop`): momentum m_0 = d_0, m_i = 0.9 m_{i−1} + 0.1 d_i of the
  (unweighted, detached) direction term; stop once i > 10 and m_i < threshold, or at the iteration cap.
* :func:`check_concept_names` — a ``--prompt``'s concepts checked before any model loads (ESD, FMN, AC).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional

import torch

from sepce import records


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


def check_concept_names(concepts: list[str]) -> list[str]:
    """``--prompt``'s concepts, non-empty and as erasure records accept them (:func:`sepce.records.check_concept_name`):
    checked before any model is loaded instead of failing at the save after training."""
    for c in concepts:
        if not c.strip():
            raise ValueError("--prompt is empty; expected a concept name such as 'Van Gogh'")
        records.check_concept_name(c, "--prompt")
    return concepts
