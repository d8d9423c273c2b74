"""Separable Concept Erasure (SepCE): erase several concepts with separable increments, so that any subset can be
erased or restored later (METHOD.md, "SepCE").

    python train-scripts/SepCE.py --lr 1e-2 --scale_factor 1e-4 --reg_beta 3e-5 --devices '0,1'

Each concept c gets ΔW_{c,l} = A_{c,l} (β S_c) on every attn2 to_k/to_v (A zero-initialised, S_c the null-space
basis of the token embeddings of "", the other concepts and ``--preserve`` prompts; see sepce/increments.py).
All concepts train together (shared timestep, one image of ``<data_dir>/<concept>/`` each per iteration) on
Σ_c flag_c (w_c d_c + reg_beta Σ_l mean|A_{c,l}|) / Σ_c flag_c, d_c = mean(r_c(θ+ΣΔW) ⊙ r_c(θ_orig)), w_c
balancing each concept to the first one; concept c stops (flag 0, coefficients snapshotted) once the momentum of
d_c is below its threshold after iteration 10, or at ``--iter_break``. ``--sequential`` trains the concepts one at a
time instead (less memory), and ``--add_to RUN`` trains new concepts into a copy of an existing SepCE run.

Writes ``erasure.safetensors`` (bases + coefficients + metadata), ``args.json``, ``losses.csv``, ``summary.json``,
``loss.png``; ``--save_full`` also writes a full CompVis checkpoint for every non-empty subset of the concepts
(the released script's 7 files for 3 concepts). ``train-scripts/compose_erasure.py`` composes any subset later.
"""

from __future__ import annotations

import argparse
import itertools
import math
from pathlib import Path
from typing import Optional, Sequence

import torch

from sepce import records
from sepce.cli import EXIT_HELP, parser, run
from sepce.increments import SeparableIncrements, basic_solution_sets
from sepce.losses import (
    MomentumStop,
    balance_weights,
    coefficient_l1,
    concept_direction,
    direction_product,
    sepce_loss,
)
from sepce.paths import run_name
from sepce.training import FrozenReference, Step, TrainingSession, add_common_args

RELEASED_PROMPTS = ["VanGogh", "Cezanne", "Picasso"]
RELEASED_THRESHOLDS = [0.0, 1.5e-4, 0.0]
MAX_FULL_CONCEPTS = 4


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = parser(__doc__, epilog=EXIT_HELP)
    add_common_args(p, lr=1e-2, iterations=1000, prompt=False)
    p.add_argument(
        "--prompts",
        nargs="+",
        default=RELEASED_PROMPTS,
        help="concepts to erase (images in <data_dir>/<prompt>/); names may not contain '.'",
    )
    p.add_argument(
        "--thresholds",
        nargs="+",
        type=float,
        default=None,
        help="momentum threshold per concept (one value = all); default: the released "
        f"{RELEASED_THRESHOLDS} for the released concepts, else 0",
    )
    p.add_argument("--scale_factor", type=float, default=1e-4, help="beta, the scale of the basis in dW = A(beta S)")
    p.add_argument("--reg_beta", type=float, default=3e-5, help="weight of the coefficient L1 regulariser")
    p.add_argument(
        "--preserve",
        nargs="*",
        default=[],
        help="prompts whose outputs must stay exact under every increment (e.g. a watermark prompt)",
    )
    p.add_argument(
        "--rank_rtol",
        type=float,
        default=None,
        help="relative singular-value tolerance of the null space (default: sigma_max*max(M,D)*eps64)",
    )
    p.add_argument(
        "--sequential",
        action="store_true",
        help="train the concepts one at a time (fresh Adam each, only its increment active)",
    )
    p.add_argument(
        "--add_to",
        type=Path,
        default=None,
        help="existing SepCE run (or record) to extend with --prompts, trained one at a time into a "
        "new run folder; earlier concepts are copied unchanged",
    )
    return p.parse_args(argv)


def check_args(args: argparse.Namespace) -> tuple[list[str], Optional[records.ErasureRecord]]:
    """Everything checkable before the model loads; returns (thresholds, record to extend)."""
    prompts = list(args.prompts)
    for p in prompts:
        if not p.strip():
            raise ValueError("--prompts: the blank prompt cannot be erased (every basis is orthogonal to it)")
        if "." in p:
            raise ValueError(f"--prompts {p!r}: concept names may not contain '.'")
    dup = sorted({p for p in prompts if prompts.count(p) > 1})
    if dup:
        raise ValueError(f"--prompts names {dup} more than once")
    clash = [p for p in args.preserve if p in prompts or not p.strip()]
    if clash:
        raise ValueError(f"--preserve {clash[0]!r}: a preserved prompt may not be blank or a concept to erase")
    if args.thresholds is None:
        thresholds = RELEASED_THRESHOLDS if prompts == RELEASED_PROMPTS else [0.0] * len(prompts)
    elif len(args.thresholds) == 1:
        thresholds = list(args.thresholds) * len(prompts)
    elif len(args.thresholds) == len(prompts):
        thresholds = list(args.thresholds)
    else:
        raise ValueError(
            f"--thresholds has {len(args.thresholds)} values for {len(prompts)} concepts "
            f"({', '.join(prompts)}); give one value or one per concept"
        )
    if not all(math.isfinite(t) for t in thresholds):
        raise ValueError(f"--thresholds {thresholds}: expected finite numbers")
    if not (math.isfinite(args.scale_factor) and args.scale_factor > 0):
        raise ValueError(f"--scale_factor {args.scale_factor!r}: expected a positive number")
    if not (math.isfinite(args.reg_beta) and args.reg_beta >= 0):
        raise ValueError(f"--reg_beta {args.reg_beta!r}: expected a finite number >= 0")
    if args.rank_rtol is not None and not 0 <= args.rank_rtol < 1:
        raise ValueError(f"--rank_rtol {args.rank_rtol!r}: expected a number in [0, 1)")
    old = None
    if args.add_to is not None:
        old = records.load_record(args.add_to)
        if not old.separable:
            raise ValueError(f"--add_to {args.add_to}: a {old.method} record has no separable increments")
        records.check_base(old, args.ckpt_path)
        again = [p for p in prompts if p in old.concepts]
        if again:
            raise ValueError(f"--add_to {args.add_to} already erases {again}; choose new --prompts")
        if not math.isclose(old.beta, args.scale_factor, rel_tol=1e-9):
            raise ValueError(
                f"--scale_factor {args.scale_factor:g} differs from beta {old.beta:g} of --add_to "
                f"{args.add_to}; pass --scale_factor {old.beta:g}"
            )
    total = len(prompts) + (len(old.concepts) if old else 0)
    if args.save_full and total > MAX_FULL_CONCEPTS:
        raise ValueError(
            f"--save_full with {total} concepts would write {2**total - 1} full checkpoints; use "
            f"train-scripts/compose_erasure.py for the subsets you need"
        )
    return thresholds, old


def main(args: argparse.Namespace) -> dict:
    thresholds, old = check_args(args)
    prompts = list(args.prompts)
    suffix = "added" if old is not None else None
    session = TrainingSession(args, "SepCE", prompts, output_suffix=suffix)
    model = session.load_model()
    for p in model.parameters():
        p.requires_grad_(False)

    all_concepts = (old.concepts if old else []) + prompts
    preserve = list(dict.fromkeys([*(old.meta.get("preserve", []) if old else []), *args.preserve]))
    emb = {
        p: e.unsqueeze(0)
        for p, e in zip(all_concepts + [""] + preserve, model.get_learned_conditioning(all_concepts + [""] + preserve))
    }
    fixed = {p: emb[p] for p in [""] + preserve}
    sets = basic_solution_sets({c: emb[c] for c in all_concepts}, fixed, which=prompts, rtol=args.rank_rtol)

    inc = SeparableIncrements(model, args.scale_factor)
    if old is not None:
        for c in old.concepts:
            inc.add(c, old.bases[c], old.coefs[c], trainable=False)
    for c in prompts:
        inc.add(c, sets[c].basis)
    if session.two_devices:
        reference = FrozenReference.copy(session.load_model(session.devices[1]), {})
    else:
        reference = FrozenReference.switched_off(model, inc.disabled)
    run = session.start_run({"thresholds_resolved": thresholds, "preserve_resolved": preserve})
    model.train()

    def losses_for(batch: list[str], t: torch.Tensor):
        """(products, directions) for ``batch`` (one image each, shared t), increments as currently active."""
        n = len(batch)
        x = torch.cat([session.noisy(session.latent(c), t) for c in batch])  # n 4 h w
        x2, t2 = torch.cat([x, x]), t.expand(2 * n)
        ctx = torch.cat([emb[c] for c in batch] + [emb[""]] * n).to(session.device)
        e = model.apply_model(x2, t2, ctx)
        o = reference(x2, t2, ctx)
        r_m, r_o = concept_direction(e[:n], e[n:]), concept_direction(o[:n], o[n:])
        products = [direction_product(r_m[j], r_o[j]) for j in range(n)]
        return products, [p.mean() for p in products]

    info: dict[str, dict] = {}
    snapshots: dict[str, dict[str, torch.Tensor]] = {}
    stoppers = {c: MomentumStop(th, args.iterations) for c, th in zip(prompts, thresholds)}
    sequential = args.sequential or old is not None
    results = []
    if not sequential:
        inc.activate(all_concepts)
        flags = dict.fromkeys(prompts, True)
        pending: dict[str, str] = {}

        def step(i: int) -> Step:
            _, t = session.timesteps()
            batch = [c for c in prompts if flags[c] or c == prompts[0]]
            products, ds = losses_for(batch, t)
            weights = balance_weights(products)
            regs = [coefficient_l1(inc.coefs[c]) for c in batch]
            loss = sepce_loss(ds, weights, regs, [flags[c] for c in batch], args.reg_beta)
            values: dict = {}
            for c, d, w in zip(batch, ds, weights):
                if flags[c]:
                    reason = stoppers[c].update(d.item())
                    if reason:
                        pending[c] = reason
                values.update({f"d[{c}]": d.item(), f"m[{c}]": stoppers[c].momentum, f"w[{c}]": float(w)})
            values.update({f"flag[{c}]": int(flags[c]) for c in prompts})
            return Step(loss, values)

        def after_step(i: int, _: Step) -> Optional[str]:
            for c, reason in pending.items():
                flags[c] = False
                snapshots[c] = inc.snapshot(c)
                info[c] = {"iterations": i + 1, "stop_reason": reason}
            pending.clear()
            if not any(flags.values()):
                return "every concept stopped"
            return None

        result = session.trainer(inc.parameters(prompts), desc="SepCE").fit(step, after_step)
        results.append(result)
        for c in prompts:
            if c not in info:
                info[c] = {"iterations": result.iterations, "stop_reason": result.stop_reason}
    else:
        offset = 0
        for c in prompts:
            inc.activate([c])

            def step(i: int, c: str = c) -> Step:
                _, t = session.timesteps()
                _, (d,) = losses_for([c], t)
                reg = coefficient_l1(inc.coefs[c])
                loss = sepce_loss([d], [torch.ones(())], [reg], [True], args.reg_beta)
                stop = stoppers[c].update(d.item())
                return Step(
                    loss,
                    {"concept": c, "direction": d.item(), "reg": reg.item(), "momentum": stoppers[c].momentum},
                    stop,
                )

            result = session.trainer(inc.parameters([c]), desc=f"SepCE {c}").fit(step, start=offset)
            results.append(result)
            offset += result.iterations + (0 if result.ok else 1)
            info[c] = {"iterations": result.iterations, "stop_reason": result.stop_reason}
            snapshots[c] = inc.snapshot(c)
            if not result.ok:
                break
        for c in prompts:
            info.setdefault(c, {"iterations": 0, "stop_reason": "not trained: an earlier concept's run failed"})
    inc.close()
    model.eval()

    trained = [c for c in prompts if info[c]["iterations"] > 0 or c in snapshots]
    concept_meta = dict(old.meta.get("concepts", {})) if old else {}
    for c, th in zip(prompts, thresholds):
        leak = inc.leakage(c, {p: emb[p] for p in sets[c].excluded}, snapshots.get(c))
        concept_meta[c] = {
            **info[c],
            "threshold": th,
            "final_momentum": stoppers[c].momentum,
            "basis": sets[c].info(),
            "max_relative_leak_on_excluded": leak,
            "mode": "sequential" if sequential else "joint",
        }
    kept = (old.concepts if old else []) + [c for c in prompts if c in trained]
    meta = {
        "concepts": {c: concept_meta[c] for c in kept},
        "preserve": preserve,
        "lr": args.lr,
        "reg_beta": args.reg_beta,
        "layers": inc.layer_keys(),
        "added_to": str(old.path) if old is not None else None,
    }
    record = inc.to_record(session.base_info(), kept, coefs=snapshots, meta=meta)
    session.save_record(record)
    if args.save_full:
        base = dict(model.named_parameters())
        for k in range(1, len(kept) + 1):
            for subset in itertools.combinations(kept, k):
                changed = records.changed_tensors(record, base, list(subset))
                session.save_full(run_name("SepCE", subset), changed)
    ok = all(r.ok for r in results)
    reason = "; ".join(f"{c}: {info[c]['stop_reason']}" for c in prompts)
    summary = session.finish(
        sum(r.iterations for r in results),
        reason,
        ok=ok,
        reference=reference.kind,
        concepts={c: concept_meta[c] for c in prompts},
    )
    for c in prompts:
        print(f"SepCE {c!r}: {info[c]['iterations']} iterations, {info[c]['stop_reason']}")
    print(f"saved {run.dir}")
    return summary


if __name__ == "__main__":
    run(parse_args, main)
