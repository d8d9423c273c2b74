"""Ablating Concepts, authors' variant (Kumari et al. 2023, "Ablating Concepts in Text-to-Image Diffusion Models",
model-based, Eq. 4, as the released SepCE baselines implement it; docs/method.md, "Ablating concepts").

    python train-scripts/Abconcept.py --lr 1e-5 --iter_break 50 --prompt 'Van Gogh' --devices '0,1'

Trains every UNet ``attn2`` tensor with Adam on loss = MSE(e_pn, e_n) + 10 · MSE(e_p0, e_n), where at x_t (one image
of ``<data_dir>/<prompt>/`` per iteration, common timestep draw) e_pn and e_p0 are the trained model's predictions
for the concept prompt (``--concept_template`` filled with ``--prompt``: "<prompt> painting") and the anchor
(``--anchor_prompt``: "painting"), and e_n is the frozen original's for the anchor. This is the authors' variant
that the paper's table measured, not the original Ablating Concepts (anchor images, target from the trained model,
a prior-preservation term). For concepts that are not painters, set the prompts, e.g. ``--concept_template '{}'
--anchor_prompt ''``. Writes ``<output_dir>/erasure.safetensors`` (the changed attn2 tensors), ``args.json``,
``losses.csv``, ``summary.json``, ``loss.png`` and, with ``--save_full``, a full CompVis checkpoint
``Abconcept-<prompt>.ckpt`` (or ``.safetensors``).
"""

from __future__ import annotations

import argparse
import math
from typing import Optional, Sequence

import torch

from sepce.baseline_losses import (
    ABLATING_ANCHOR_PROMPT,
    ABLATING_ANCHOR_WEIGHT,
    ABLATING_CONCEPT_TEMPLATE,
    VARIANTS,
    ablating_loss,
    ablating_prompts,
    check_concept_names,
    check_template,
)
from sepce.cli import EXIT_HELP, parser, run
from sepce.losses import l1_drift
from sepce.modeling import prompts_embeddings
from sepce.training import (
    TrainingSession,
    TrainStep,
    add_common_args,
    finished_message,
    select_parameters,
    settings_from_args,
)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = parser(__doc__, epilog=EXIT_HELP)
    add_common_args(p, lr=1e-5, iterations=50)
    p.add_argument(
        "--anchor_weight",
        type=float,
        default=ABLATING_ANCHOR_WEIGHT,
        help="weight of the term MSE(e_p0, e_n) that keeps the anchor prompt's prediction",
    )
    p.add_argument(
        "--concept_template",
        default=ABLATING_CONCEPT_TEMPLATE,
        help="concept prompt of the authors' variant: this text with {} replaced by --prompt",
    )
    p.add_argument(
        "--anchor_prompt",
        default=ABLATING_ANCHOR_PROMPT,
        help="anchor prompt of the authors' variant: the concept prompt's prediction is pulled to the original's "
        "prediction for it",
    )
    p.add_argument(
        "--variant",
        choices=VARIANTS,
        default="authors",
        help="authors: the authors' variant of the released baselines, which the paper's table measured (the "
        "original Ablating Concepts is not offered yet)",
    )
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> dict:
    if not (math.isfinite(args.anchor_weight) and args.anchor_weight >= 0):
        raise ValueError(f"--anchor_weight {args.anchor_weight!r}: expected a finite number >= 0")
    check_concept_names([args.prompt])
    check_template(args.concept_template)
    session = TrainingSession(settings_from_args(args), "Abconcept", [args.prompt])
    model = session.load_model()
    params = select_parameters(model, "attn2")
    reference = session.frozen_reference(model, params)
    concept_text, anchor_text = ablating_prompts(args.prompt, args.concept_template, args.anchor_prompt)
    conds = prompts_embeddings(model, [concept_text, anchor_text])  # 2 77 D: concept, anchor
    session.start_run({"concept_prompt": concept_text})
    model.train()

    def step(i: int) -> TrainStep:
        _, t = session.timesteps()
        x = session.noisy(session.latent(args.prompt), t)
        e_n = reference(x, t, conds[1:])
        e_pn, e_p0 = model.apply_model(x.expand(2, -1, -1, -1), t.expand(2), conds).chunk(2)
        loss, concept_term, anchor_term = ablating_loss(e_pn, e_p0, e_n, args.anchor_weight)
        with torch.no_grad():
            drift = l1_drift(params, reference.originals)
        values = {"concept_mse": concept_term.item(), "anchor_mse": anchor_term.item(), "l1_drift": drift.item()}
        return TrainStep(loss, values)

    result = session.trainer(params, desc=f"Abconcept {args.prompt}").fit(step)
    model.eval()
    summary = session.finish(
        result,
        session.tensor_record(params),
        reference=reference.kind,
        concepts={args.prompt: {"iterations": result.iterations, "stop_reason": result.stop_reason}},
        settings={
            "prompt": args.prompt,
            "variant": args.variant,
            "concept_template": args.concept_template,
            "concept_prompt": concept_text,
            "anchor_prompt": anchor_text,
            "anchor_weight": args.anchor_weight,
        },
    )
    print(finished_message(summary))
    return summary


if __name__ == "__main__":
    run(parse_args, main)
