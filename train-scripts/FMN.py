"""Forget-Me-Not attention re-steering (FMN; Zhang et al. 2023, "Forget-Me-Not: Learning to Forget in
Text-to-Image Diffusion Models"), as in the released SepCE baselines (METHOD.md, "FMN").

    python train-scripts/FMN.py --lr 1e-5 --iter_break 10 --prompt 'Van Gogh' --devices '0,1'

Trains every UNet ``attn2`` tensor with Adam on loss = Σ over the cross-attention layers of
MSE(q·k_cᵀ/√d − q·k_c2ᵀ/√d, 0), c = emb("a painting of <prompt>"), c2 = emb("a painting of"), the queries q coming
from the UNet forward at x_t (one image of ``<data_dir>/<prompt>/`` per iteration, common timestep draw) with c.
FMN needs no frozen original: with two ``--devices`` only the first is used. Writes
``<output_dir>/erasure.safetensors`` (the changed attn2 tensors), ``args.json``, ``losses.csv`` (with the L1 drift
of the weights, logged only), ``summary.json``, ``loss.png`` and, with ``--save_full``, a full CompVis checkpoint.
"""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

import torch

from sepce.baseline_losses import check_concept_names, fmn_loss, fmn_prompts
from sepce.cli import EXIT_HELP, parser, run
from sepce.losses import l1_drift
from sepce.modeling import attn2_modules, prompts_embeddings
from sepce.paths import run_name
from sepce.training import Step, TrainingSession, add_common_args, select_parameters


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = parser(__doc__, epilog=EXIT_HELP)
    add_common_args(p, lr=1e-5, iterations=10)
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> dict:
    check_concept_names([args.prompt])
    session = TrainingSession(args, "FMN", [args.prompt])
    model = session.load_model()
    params = select_parameters(model, "attn2")
    originals = {k: p.detach().clone() for k, p in params.items()}  # for the logged drift only
    layers = attn2_modules(model)
    concept_text, free_text = fmn_prompts(args.prompt)
    context, context2 = prompts_embeddings(model, [concept_text]), prompts_embeddings(model, [free_text])
    run = session.start_run({"concept_prompt": concept_text, "concept_free_prompt": free_text})
    model.train()

    def step(i: int) -> Step:
        _, t = session.timesteps()
        x = session.noisy(session.latent(args.prompt), t)
        loss = fmn_loss(model, x, t, context, context2, layers)
        with torch.no_grad():
            drift = l1_drift(params, originals)
        return Step(loss, {"l1_drift": drift.item()})

    result = session.trainer(params, desc=f"FMN {args.prompt}").fit(step)
    model.eval()
    meta = {
        "prompt": args.prompt,
        "concept_prompt": concept_text,
        "concept_free_prompt": free_text,
        "iterations": result.iterations,
        "stop_reason": result.stop_reason,
        "lr": args.lr,
        "attention_layers": len(layers),
    }
    session.save_tensors([args.prompt], params, meta)
    if args.save_full:
        session.save_full(run_name("FMN", [args.prompt]), {k: p.detach() for k, p in params.items()})
    summary = run.finish(
        result.iterations,
        result.stop_reason,
        ok=result.ok,
        attention_layers=len(layers),
        concepts={args.prompt: {"iterations": result.iterations, "stop_reason": result.stop_reason}},
    )
    print(f"FMN {args.prompt!r}: {result.iterations} iterations, {result.stop_reason}; saved {run.dir}")
    return summary


if __name__ == "__main__":
    run(parse_args, main)
