"""Forget-Me-Not attention re-steering, authors' variant (FMN; Zhang et al. 2023, "Forget-Me-Not: Learning to
Forget in Text-to-Image Diffusion Models", Sec. 3.1, as the released SepCE baselines implement it; docs/method.md,
"FMN").

    python train-scripts/FMN.py --lr 1e-5 --iter_break 10 --prompt 'Van Gogh' --devices '0,1'

Trains every UNet ``attn2`` tensor with Adam on loss = Σ over the cross-attention layers of
MSE(q·k_cᵀ/√d − q·k_c2ᵀ/√d, 0), c = emb(``--concept_template`` filled with ``--prompt``: "a painting of <prompt>"),
c2 = emb(``--neutral_prompt``: "a painting of"), the queries q coming from the UNet forward at x_t (one image of
``<data_dir>/<prompt>/`` per iteration, common timestep draw) with c. This is the authors' variant that the
paper's table measured, not the original Forget-Me-Not (which drives the post-softmax attention to the concept
tokens to zero). For concepts that are not painters, set the prompts, e.g. ``--prompt 'in the style of waves'
--concept_template '{}' --neutral_prompt 'in the style of'``. FMN needs no frozen original: with two
``--devices`` only the first is used. Writes ``<output_dir>/erasure.safetensors`` (the changed attn2 tensors),
``args.json``, ``losses.csv`` (with the L1 drift of the weights, logged only), ``summary.json``, ``loss.png`` and,
with ``--save_full``, a full CompVis checkpoint ``FMN-<prompt>.ckpt`` (or ``.safetensors``).
"""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

import torch

from sepce.baseline_losses import (
    FMN_CONCEPT_TEMPLATE,
    FMN_NEUTRAL_PROMPT,
    VARIANTS,
    check_concept_names,
    check_template,
    fmn_loss,
    fmn_prompts,
)
from sepce.cli import EXIT_HELP, parser, run
from sepce.losses import l1_drift
from sepce.modeling import attn2_modules, prompts_embeddings
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
    add_common_args(p, lr=1e-5, iterations=10)
    p.add_argument(
        "--concept_template",
        default=FMN_CONCEPT_TEMPLATE,
        help="concept context c of the authors' variant: this text with {} replaced by --prompt",
    )
    p.add_argument(
        "--neutral_prompt",
        default=FMN_NEUTRAL_PROMPT,
        help="concept-free context c2 of the authors' variant, whose attention logits c is steered to",
    )
    p.add_argument(
        "--variant",
        choices=VARIANTS,
        default="authors",
        help="authors: the authors' variant of the released baselines, which the paper's table measured (the "
        "original FMN is not offered yet)",
    )
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> dict:
    check_concept_names([args.prompt])
    check_template(args.concept_template)
    session = TrainingSession(settings_from_args(args), "FMN", [args.prompt])
    model = session.load_model()
    params = select_parameters(model, "attn2")
    originals = {k: p.detach().clone() for k, p in params.items()}  # for the logged drift only
    layers = attn2_modules(model)
    concept_text, neutral_text = fmn_prompts(args.prompt, args.concept_template, args.neutral_prompt)
    context, context2 = prompts_embeddings(model, [concept_text]), prompts_embeddings(model, [neutral_text])
    session.start_run({"concept_prompt": concept_text})
    model.train()

    def step(i: int) -> TrainStep:
        _, t = session.timesteps()
        x = session.noisy(session.latent(args.prompt), t)
        loss = fmn_loss(model, x, t, context, context2, layers)
        with torch.no_grad():
            drift = l1_drift(params, originals)
        return TrainStep(loss, {"l1_drift": drift.item()})

    result = session.trainer(params, desc=f"FMN {args.prompt}").fit(step)
    model.eval()
    summary = session.finish(
        result,
        session.tensor_record(params),
        reference="none (FMN compares two contexts of the trained model)",
        concepts={args.prompt: {"iterations": result.iterations, "stop_reason": result.stop_reason}},
        settings={
            "prompt": args.prompt,
            "variant": args.variant,
            "concept_template": args.concept_template,
            "neutral_prompt": neutral_text,
            "concept_prompt": concept_text,
            "attention_layers": len(layers),
        },
    )
    print(finished_message(summary))
    return summary


if __name__ == "__main__":
    run(parse_args, main)
