"""Separable Concept Erasure (SepCE; Zhao et al., "Separable Multi-Concept Erasure from Diffusion Models", Sec. 3;
docs/method.md, "SepCE"): its loss, settings and training.

Each concept c gets ΔW_{c,l} = A_{c,l} (β S_c) on every attn2 to_k/to_v (A zero-initialised, S_c the null-space
basis of the token embeddings of "", the other concepts and the preserved prompts; :mod:`sepce.increments`).

* The loss: per concept c, d_c = mean(r_c(θ + Σ ΔW) ⊙ r_c(θ_orig)) (the direction term of
  :mod:`sepce.methods.common`) weighted by w_c = ‖p_1‖₂ / ‖p_c‖₂ (:func:`balance_weights`; p_c the element-wise
  product, w_1 = 1, detached), plus β_reg Σ_l mean|A_{c,l}| (:func:`coefficient_l1`); concepts that stopped have
  flag 0; total = Σ_c flag_c·loss_c / Σ_c flag_c (:func:`sepce_loss`).

* :class:`SepCESettings` — the method's own settings (concepts, thresholds, β, regulariser weight, preserved
  prompts, rank tolerance, one-at-a-time training, a run to extend), validated on construction;
  :func:`check_settings` adds the checks that need the common settings (``--add_to`` record, full checkpoints).
* :class:`ConceptDirections` — per concept c in a batch (one image each, shared t) the element-wise product
  p_c = r_c(θ + ΣΔW) ⊙ r_c(θ_orig) and its mean d_c, r(m) = ε(m, x_t, t, emb(c)) − ε(m, x_t, t, emb("")).
* :class:`JointTraining` — all concepts together on Σ_c flag_c (w_c d_c + reg_beta Σ_l mean|A_{c,l}|) / Σ_c flag_c
  (w_c = ‖p_1‖₂ / ‖p_c‖₂); concept c stops (flag 0, coefficients snapshotted — the snapshot is what is saved) once
  its momentum is below its threshold after iteration 10 or at the iteration cap; training ends when every flag
  is 0.
* :class:`SequentialTraining` — one concept at a time (the later version's "optimization decoupling"): only its
  increment active, a fresh optimizer each; also how concepts are added to an existing run (``add_to``).
* :func:`train_sepce` — the whole run on a :class:`~sepce.training.TrainingSession`: bases, increments, training,
  the record (bases + coefficients + metadata) and the run's end; :func:`run_sepce` checks everything first and
  opens the session (``train-scripts/SepCE.py`` is its flags and this one call).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import torch

from sepce import records
from sepce.increments import SeparableIncrements, basic_solution_sets
from sepce.methods.common import MomentumStop, concept_direction, direction_product
from sepce.training import FitResult, FrozenReference, ParameterTrainer, TrainingSession, TrainingSettings, TrainStep

log = logging.getLogger(__name__)

METHOD = "SepCE"
RELEASED_CONCEPTS = ("VanGogh", "Cezanne", "Picasso")
RELEASED_THRESHOLDS = (0.0, 1.5e-4, 0.0)
#: The released command's values (``--lr 1e-2 --scale_factor 1e-4 --reg_beta 3e-5``), 1000 iterations at most.
SEPCE_DEFAULTS = {"lr": 1e-2, "iterations": 1000, "scale_factor": 1e-4, "reg_beta": 3e-5}
#: --save_full writes 2^n − 1 full checkpoints for n concepts: refused above this many.
MAX_FULL_CONCEPTS = 4

#: ``(params, desc) -> trainer``: how :class:`JointTraining` / :class:`SequentialTraining` get their optimiser loop
#: (``TrainingSession.trainer`` in a run).
TrainerFactory = Callable[[Sequence[torch.Tensor], str], ParameterTrainer]
#: ``batch -> (products, directions)``: p_c and d_c = mean(p_c) per concept of ``batch`` (:class:`ConceptDirections`).
DirectionFn = Callable[[list[str]], tuple[list[torch.Tensor], list[torch.Tensor]]]


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


@dataclass(frozen=True)
class SepCESettings:
    """SepCE's own settings. ``thresholds`` None: the released thresholds for the released concepts, else 0; one
    value applies to every concept. ``add_to``: an existing SepCE run (or record) to extend with ``concepts``."""

    concepts: tuple[str, ...] = RELEASED_CONCEPTS
    thresholds: Optional[tuple[float, ...]] = None
    scale_factor: float = SEPCE_DEFAULTS["scale_factor"]
    reg_beta: float = SEPCE_DEFAULTS["reg_beta"]
    preserve: tuple[str, ...] = ()
    rank_rtol: Optional[float] = None
    sequential: bool = False
    add_to: Optional[Path] = None

    def __post_init__(self) -> None:
        concepts = list(self.concepts)
        if not concepts:
            raise ValueError("--prompts: expected at least one concept")
        for c in concepts:
            if not c.strip():
                raise ValueError("--prompts: the blank prompt cannot be erased (every basis is orthogonal to it)")
            records.check_concept_name(c, "--prompts")
        dup = sorted({c for c in concepts if concepts.count(c) > 1})
        if dup:
            raise ValueError(f"--prompts names {dup} more than once")
        clash = [p for p in self.preserve if p in concepts or not p.strip()]
        if clash:
            raise ValueError(f"--preserve {clash[0]!r}: a preserved prompt may not be blank or a concept to erase")
        if self.thresholds is not None and len(self.thresholds) not in (1, len(concepts)):
            raise ValueError(
                f"--thresholds has {len(self.thresholds)} values for {len(concepts)} concepts "
                f"({', '.join(concepts)}); give one value or one per concept"
            )
        if not all(math.isfinite(t) for t in self.thresholds or ()):
            raise ValueError(f"--thresholds {list(self.thresholds)}: expected finite numbers")
        if not (math.isfinite(self.scale_factor) and self.scale_factor > 0):
            raise ValueError(f"--scale_factor {self.scale_factor!r}: expected a positive number")
        if not (math.isfinite(self.reg_beta) and self.reg_beta >= 0):
            raise ValueError(f"--reg_beta {self.reg_beta!r}: expected a finite number >= 0")
        if self.rank_rtol is not None and not 0 <= self.rank_rtol < 1:
            raise ValueError(f"--rank_rtol {self.rank_rtol!r}: expected a number in [0, 1)")

    def resolved_thresholds(self) -> list[float]:
        """One momentum threshold per concept."""
        if self.thresholds is None:
            released = tuple(self.concepts) == RELEASED_CONCEPTS
            return list(RELEASED_THRESHOLDS) if released else [0.0] * len(self.concepts)
        if len(self.thresholds) == 1:
            return list(self.thresholds) * len(self.concepts)
        return list(self.thresholds)


def check_settings(settings: SepCESettings, common: TrainingSettings) -> Optional[records.ErasureRecord]:
    """Checks that need the common settings, before any model loads; returns the record ``add_to`` names."""
    old = None
    if settings.add_to is not None:
        old = records.load_record(settings.add_to)
        if not old.separable:
            raise ValueError(f"--add_to {settings.add_to}: a {old.method} record has no separable increments")
        records.check_base(old, common.ckpt_path)
        again = [c for c in settings.concepts if c in old.concepts]
        if again:
            raise ValueError(f"--add_to {settings.add_to} already erases {again}; choose new --prompts")
        if not math.isclose(old.beta, settings.scale_factor, rel_tol=1e-9):
            raise ValueError(
                f"--scale_factor {settings.scale_factor:g} differs from beta {old.beta:g} of --add_to "
                f"{settings.add_to}; pass --scale_factor {old.beta:g}"
            )
    total = len(settings.concepts) + (len(old.concepts) if old else 0)
    if common.save_full and total > MAX_FULL_CONCEPTS:
        raise ValueError(
            f"--save_full with {total} concepts would write {2**total - 1} full checkpoints; use "
            f"train-scripts/compose_erasure.py for the subsets you need"
        )
    return old


class ConceptDirections:
    """:data:`DirectionFn` of a run: for a batch of concepts, one shared timestep, one training image each,
    x_t = q_sample(z_c, t); one batched forward of the model with the increments as currently active and one of
    the frozen original, on [emb(c)...; emb("")...]; returns (p_c, d_c) per concept (docs/method.md, "SepCE")."""

    def __init__(
        self,
        session: TrainingSession,
        model: torch.nn.Module,
        reference: FrozenReference,
        embeddings: Mapping[str, torch.Tensor],
    ):
        self.session = session
        self.model = model
        self.reference = reference
        self.embeddings = embeddings

    def __call__(self, batch: list[str]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        n = len(batch)
        _, t = self.session.timesteps()
        x = torch.cat([self.session.noisy(self.session.latent(c), t) for c in batch])  # n 4 h w
        x2, t2 = torch.cat([x, x]), t.expand(2 * n)  # 2n 4 h w, 2n
        ctx = torch.cat([self.embeddings[c] for c in batch] + [self.embeddings[""]] * n).to(self.session.device)
        e = self.model.apply_model(x2, t2, ctx)  # 2n 4 h w
        o = self.reference(x2, t2, ctx)  # 2n 4 h w
        r_m, r_o = concept_direction(e[:n], e[n:]), concept_direction(o[:n], o[n:])
        products = [direction_product(r_m[j], r_o[j]) for j in range(n)]
        return products, [p.mean() for p in products]


class ConceptTraining:
    """What both training modes hold: the increments ``inc``, the new ``concepts`` with one momentum stop each
    (threshold, iteration cap), the regulariser weight, the direction function, and per concept the coefficients
    to save (:attr:`snapshots`) and its iterations and stop reason (:attr:`info`)."""

    def __init__(
        self,
        inc: SeparableIncrements,
        concepts: Sequence[str],
        thresholds: Sequence[float],
        iterations: int,
        reg_beta: float,
        directions: DirectionFn,
    ):
        self.inc = inc
        self.concepts = list(concepts)
        self.reg_beta = reg_beta
        self.directions = directions
        self.stoppers = {c: MomentumStop(th, iterations) for c, th in zip(self.concepts, thresholds)}
        self.snapshots: dict[str, dict[str, torch.Tensor]] = {}
        self.info: dict[str, dict] = {}


class JointTraining(ConceptTraining):
    """All ``concepts`` trained together (their increments active in ``inc``), per iteration the loss
    Σ_c flag_c (w_c d_c + reg_beta Σ_l mean|A_{c,l}|) / Σ_c flag_c. The first concept stays in the batch after it
    stopped (it sets the balancing weights w_c). A concept whose momentum rule fires stops after that iteration's
    optimizer step: flag 0 and its coefficients snapshotted (:attr:`snapshots`, what is saved — with accumulated
    gradients Adam keeps moving them afterwards). Training ends once every concept stopped."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.flags = dict.fromkeys(self.concepts, True)
        self.pending: dict[str, str] = {}

    def step(self, i: int) -> TrainStep:
        batch = [c for c in self.concepts if self.flags[c] or c == self.concepts[0]]
        products, ds = self.directions(batch)
        weights = balance_weights(products)
        regs = [coefficient_l1(self.inc.coefs[c]) for c in batch]
        loss = sepce_loss(ds, weights, regs, [self.flags[c] for c in batch], self.reg_beta)
        values: dict = {}
        for c, d, w in zip(batch, ds, weights):
            if self.flags[c]:
                reason = self.stoppers[c].update(d.item())
                if reason:
                    self.pending[c] = reason
            values.update({f"d[{c}]": d.item(), f"m[{c}]": self.stoppers[c].momentum, f"w[{c}]": float(w)})
        values.update({f"flag[{c}]": int(self.flags[c]) for c in self.concepts})
        return TrainStep(loss, values)

    def after_step(self, i: int, _: TrainStep) -> Optional[str]:
        for c, reason in self.pending.items():
            self.flags[c] = False
            self.snapshots[c] = self.inc.snapshot(c)
            self.info[c] = {"iterations": i + 1, "stop_reason": reason}
        self.pending.clear()
        return None if any(self.flags.values()) else "every concept stopped"

    def fit(self, make_trainer: TrainerFactory) -> list[FitResult]:
        """Train until every concept stopped (or the run failed); concepts still running at the end keep their
        current coefficients and the run's iterations and stop reason."""
        result = make_trainer(self.inc.parameters(self.concepts), METHOD).fit(self.step, self.after_step)
        for c in self.concepts:
            self.info.setdefault(c, {"iterations": result.iterations, "stop_reason": result.stop_reason})
        return [result]


class SequentialTraining(ConceptTraining):
    """The ``concepts`` trained one after another, each with only its own increment active (plus none of the
    others: with the null-space bases they do not change its loss) and a fresh optimizer, on
    d_c + reg_beta Σ_l mean|A_{c,l}|, until its momentum rule fires. Iterations are numbered on across concepts;
    a failed concept (non-finite loss, Ctrl-C) ends the run, later concepts stay untrained."""

    def _step(self, c: str) -> Callable[[int], TrainStep]:
        def step(i: int) -> TrainStep:
            _, (d,) = self.directions([c])
            reg = coefficient_l1(self.inc.coefs[c])
            loss = sepce_loss([d], [torch.ones((), device=d.device)], [reg], [True], self.reg_beta)
            stop = self.stoppers[c].update(d.item())
            values = {"concept": c, "direction": d.item(), "reg": reg.item(), "momentum": self.stoppers[c].momentum}
            return TrainStep(loss, values, stop)

        return step

    def fit(self, make_trainer: TrainerFactory) -> list[FitResult]:
        results: list[FitResult] = []
        offset = 0
        for c in self.concepts:
            self.inc.activate([c])
            result = make_trainer(self.inc.parameters([c]), f"{METHOD} {c}").fit(self._step(c), start=offset)
            results.append(result)
            offset += result.iterations + (0 if result.ok else 1)
            self.info[c] = {"iterations": result.iterations, "stop_reason": result.stop_reason}
            self.snapshots[c] = self.inc.snapshot(c)
            if not result.ok:
                break
        for c in self.concepts:
            self.info.setdefault(c, {"iterations": 0, "stop_reason": "not trained: an earlier concept's run failed"})
        return results


def train_sepce(session: TrainingSession, settings: SepCESettings, old: Optional[records.ErasureRecord]) -> dict:
    """One SepCE run (``old``: the record :func:`check_settings` returned for ``add_to``): bases for the new
    concepts, their zero-initialised increments (``old``'s concepts copied, frozen), joint or one-at-a-time
    training, then the record of every kept concept and the run's end (:meth:`TrainingSession.finish`); returns
    the summary."""
    concepts = list(settings.concepts)
    thresholds = settings.resolved_thresholds()
    model = session.load_model()
    for p in model.parameters():
        p.requires_grad_(False)

    earlier = old.concepts if old is not None else []
    all_concepts = earlier + concepts
    preserve = list(dict.fromkeys([*(old.meta.get("preserve", []) if old else []), *settings.preserve]))
    prompts = all_concepts + [""] + preserve
    emb = {p: e.unsqueeze(0) for p, e in zip(prompts, model.get_learned_conditioning(prompts))}  # each 1 77 D
    fixed = {p: emb[p] for p in [""] + preserve}
    sets = basic_solution_sets({c: emb[c] for c in all_concepts}, fixed, which=concepts, rtol=settings.rank_rtol)

    inc = SeparableIncrements(model, settings.scale_factor)
    for c in earlier:
        inc.add(c, old.bases[c], old.coefs[c], trainable=False)
    for c in concepts:
        inc.add(c, sets[c].basis)
    if session.two_devices:
        reference = FrozenReference.copy(session.load_model(session.devices[1]), {})
    else:
        reference = FrozenReference.switched_off(model, inc.disabled)
    session.start_run({"thresholds_resolved": thresholds, "preserve_resolved": preserve})
    model.train()

    directions = ConceptDirections(session, model, reference, emb)
    sequential = settings.sequential or old is not None
    iterations = session.settings.iterations
    if sequential:
        training = SequentialTraining(inc, concepts, thresholds, iterations, settings.reg_beta, directions)
    else:
        inc.activate(all_concepts)
        training = JointTraining(inc, concepts, thresholds, iterations, settings.reg_beta, directions)
    results = training.fit(lambda params, desc: session.trainer(params, desc=desc))
    inc.close()
    model.eval()

    info, snapshots = training.info, training.snapshots
    mode = "sequential" if sequential else "joint"
    concept_meta = dict(old.meta.get("concepts", {})) if old else {}
    for c, th in zip(concepts, thresholds):
        concept_meta[c] = {
            **info[c],
            "threshold": th,
            "final_momentum": training.stoppers[c].momentum,
            "basis": sets[c].info(),
            "max_relative_leak_on_excluded": inc.leakage(c, {p: emb[p] for p in sets[c].excluded}, snapshots.get(c)),
            "mode": mode,
        }
    trained = [c for c in concepts if info[c]["iterations"] > 0 or c in snapshots]
    kept = earlier + trained
    meta = {
        "concepts": {c: concept_meta[c] for c in kept},
        "preserve": preserve,
        "layers": inc.layer_keys(),
        "added_to": str(old.path) if old is not None else None,
    }
    record = inc.to_record(session.base_info(), kept, coefs=snapshots, meta=meta)
    return session.finish(
        results,
        record,
        reference=reference.kind,
        concepts={c: concept_meta[c] for c in concepts},
        settings={
            "mode": mode,
            "thresholds": thresholds,
            "scale_factor": settings.scale_factor,
            "reg_beta": settings.reg_beta,
            "preserve": preserve,
            "rank_rtol": settings.rank_rtol,
            "added_to": meta["added_to"],
        },
        stop_reason="; ".join(f"{c}: {info[c]['stop_reason']}" for c in concepts),
    )


def run_sepce(common: TrainingSettings, settings: SepCESettings) -> dict:
    """Check everything that can be checked before a model loads (:func:`check_settings`, image folders, output
    folder — ``models/SepCE-<concepts>`` by default, ``...-added`` when extending a run), then :func:`train_sepce`."""
    old = check_settings(settings, common)
    session = TrainingSession(common, METHOD, settings.concepts, folder_suffix="added" if old is not None else None)
    return train_sepce(session, settings, old)
