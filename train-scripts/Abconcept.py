"""Ablating Concepts (Kumari et al. 2023, "Ablating Concepts in Text-to-Image Diffusion Models", model-based
variant), as in the released SepCE baselines (METHOD.md, "Ablating concepts").

    python train-scripts/Abconcept.py --lr 1e-5 --iter_break 50 --prompt 'Van Gogh' --devices '0,1'

Trains every UNet ``attn2`` tensor with Adam on loss = MSE(e_pn, e_n) + 10 · MSE(e_p0, e_n), where at x_t (one image
of ``<data_dir>/<prompt>/`` per iteration, common timestep draw) e_pn and e_p0 are the trained model's predictions
for the concept prompt ``<prompt> painting`` and the anchor ``painting``, and e_n is the frozen original's for the
anchor. Writes ``<output_dir>/erasure.safetensors`` (the changed attn2 tensors), ``args.json``, ``losses.csv``,
``summary.json``, ``loss.png`` and, with ``--save_full``, a full CompVis checkpoint.
"""

from __future__ import annotations

import argparse
import math
from typing import Optional, Sequence

import torch

from sepce.baseline_losses import ABLATING_ANCHOR_WEIGHT, ablating_loss, ablating_prompts, check_concept_names
from sepce.cli import EXIT_HELP, parser, run
from sepce.losses import l1_drift
from sepce.modeling import prompts_embeddings
from sepce.paths import run_name
from sepce.training import Step, TrainingSession, add_common_args, select_parameters


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = parser(__doc__, epilog=EXIT_HELP)
    add_common_args(p, lr=1e-5, iterations=50)
    p.add_argument(
        "--anchor_weight",
        type=float,
        default=ABLATING_ANCHOR_WEIGHT,
        help="weight of the term MSE(e_p0, e_n) that keeps the anchor prompt's prediction",
    )
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> dict:
    if not (math.isfinite(args.anchor_weight) and args.anchor_weight >= 0):
        raise ValueError(f"--anchor_weight {args.anchor_weight!r}: expected a finite number >= 0")
    check_concept_names([args.prompt])
    session = TrainingSession(args, "Abconcept", [args.prompt])
    model = session.load_model()
    params = select_parameters(model, "attn2")
    reference = session.frozen_reference(model, params)
    concept_text, anchor_text = ablating_prompts(args.prompt)
    conds = prompts_embeddings(model, [concept_text, anchor_text])  # 2 77 D: concept, anchor
    run = session.start_run({"concept_prompt": concept_text, "anchor_prompt": anchor_text})
    model.train()

    def step(i: int) -> Step:
        _, t = session.timesteps()
        x = session.noisy(session.latent(args.prompt), t)
        e_n = reference(x, t, conds[1:])
        e_pn, e_p0 = model.apply_model(x.expand(2, -1, -1, -1), t.expand(2), conds).chunk(2)
        loss, concept_term, anchor_term = ablating_loss(e_pn, e_p0, e_n, args.anchor_weight)
        with torch.no_grad():
            drift = l1_drift(params, reference.originals)
        return Step(
            loss, {"concept_mse": concept_term.item(), "anchor_mse": anchor_term.item(), "l1_drift": drift.item()}
        )

    result = session.trainer(params, desc=f"Abconcept {args.prompt}").fit(step)
    model.eval()
    meta = {
        "prompt": args.prompt,
        "concept_prompt": concept_text,
        "anchor_prompt": anchor_text,
        "anchor_weight": args.anchor_weight,
        "iterations": result.iterations,
        "stop_reason": result.stop_reason,
        "lr": args.lr,
        "reference": reference.kind,
    }
    session.save_tensors([args.prompt], params, meta)
    if args.save_full:
        session.save_full(run_name("Abconcept", [args.prompt]), {k: p.detach() for k, p in params.items()})
    summary = run.finish(
        result.iterations,
        result.stop_reason,
        ok=result.ok,
        reference=reference.kind,
        concepts={args.prompt: {"iterations": result.iterations, "stop_reason": result.stop_reason}},
    )
    print(f"Abconcept {args.prompt!r}: {result.iterations} iterations, {result.stop_reason}; saved {run.dir}")
    return summary


if __name__ == "__main__":
    run(parse_args, main)
