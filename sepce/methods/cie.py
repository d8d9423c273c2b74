"""Concept-irrelevant Erasure (CiE; Zhao et al., "Separable Multi-Concept Erasure from Diffusion Models", Sec. 3;
docs/method.md, "CiE").

Trains every UNet ``attn2`` tensor with Adam on

    loss = mean(r(θ) ⊙ r(θ_orig)) + β_reg · Σ_j Σ|θ_j − θ_j^orig| / J,

r(m) = ε(m, x_t, t, emb(prompt)) − ε(m, x_t, t, emb("")) (:mod:`sepce.methods.common`), one training image of the
concept per iteration (the common training step of :mod:`sepce.training`); stops once the momentum of the
direction term falls below the threshold after iteration 10, or at the iteration cap
(:class:`~sepce.methods.common.MomentumStop`).

* :func:`cie_loss` / :func:`cie_objective` — the loss, from two directions or from the models at one x_t;
* :data:`CIE_DEFAULTS` and :class:`CiESettings` — the released defaults and the method's own settings;
* :func:`train_cie` — the run on a :class:`~sepce.training.TrainingSession`; :func:`run_cie` opens the session
  (``train-scripts/CiE.py`` is its flags and this one call).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping

import torch

from sepce.methods.common import MomentumStop, concept_direction, direction_term, l1_drift
from sepce.training import TrainingSession, TrainingSettings, TrainStep, select_parameters

METHOD = "CiE"
#: The released command's values (``--lr 1e-6 --reg_beta 3e-5 --threshold 0``), 1000 iterations at most.
CIE_DEFAULTS = {"lr": 1e-6, "iterations": 1000, "threshold": 0.0, "reg_beta": 3e-5}
#: CiE trains every cross-attention tensor (:data:`sepce.training.PARAMETER_RULES`).
PARAMETER_RULE = "attn2"


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


@dataclass(frozen=True)
class CiESettings:
    """CiE's own settings, validated on construction (one-line ``ValueError`` naming the flag): the concept
    ``prompt`` (its images in ``<data_dir>/<prompt>/``), the momentum ``threshold`` and the regulariser weight."""

    prompt: str
    threshold: float = CIE_DEFAULTS["threshold"]
    reg_beta: float = CIE_DEFAULTS["reg_beta"]

    def __post_init__(self) -> None:
        if not math.isfinite(self.threshold):
            raise ValueError(f"--threshold {self.threshold!r}: expected a finite number")
        if not (math.isfinite(self.reg_beta) and self.reg_beta >= 0):
            raise ValueError(f"--reg_beta {self.reg_beta!r}: expected a finite number >= 0")


def train_cie(session: TrainingSession, settings: CiESettings) -> dict:
    """One CiE run: the model, its attn2 tensors, the frozen original, the training loop and the run's end
    (:meth:`~sepce.training.TrainingSession.finish`); returns the summary."""
    prompt = settings.prompt
    model = session.load_model()
    params = select_parameters(model, PARAMETER_RULE)
    reference = session.frozen_reference(model, params)
    cond = model.get_learned_conditioning([prompt, ""]).detach()  # 2 77 D: concept, blank
    session.start_run()
    stopper = MomentumStop(settings.threshold, session.settings.iterations)

    def step(i: int) -> TrainStep:
        _, t = session.timesteps()
        x = session.noisy(session.latent(prompt), t)  # 1 4 h w
        loss, d, reg = cie_objective(model, reference, x, t, cond, params, reference.originals, settings.reg_beta)
        stop = stopper.update(d.item())
        return TrainStep(loss, {"direction": d.item(), "reg": reg.item(), "momentum": stopper.momentum}, stop)

    result = session.fit(params, step, desc=f"{METHOD} {prompt}")
    concept = {"iterations": result.iterations, "stop_reason": result.stop_reason, "final_momentum": stopper.momentum}
    return session.finish(
        result,
        session.tensor_record(params),
        reference=reference.kind,
        concepts={prompt: concept},
        settings={"prompt": prompt, "threshold": settings.threshold, "reg_beta": settings.reg_beta},
    )


def run_cie(common: TrainingSettings, settings: CiESettings) -> dict:
    """Check the image folder and the output folder (``models/CiE-<prompt>`` by default) before a model loads,
    then :func:`train_cie`."""
    return train_cie(TrainingSession(common, METHOD, [settings.prompt]), settings)
