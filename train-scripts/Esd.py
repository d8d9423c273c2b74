"""Erased Stable Diffusion (ESD; Gandikota et al. 2023, "Erasing Concepts from Diffusion Models"): fine-tune the
UNet so that its prediction for the concept follows the original's negatively guided prediction (METHOD.md, "ESD").

    python train-scripts/Esd.py --prompt 'Van Gogh' --train_method 'xattn' --iterations 1000 --devices '0,1'

Each iteration draws one concept (``--prompt`` split by ``--seperator``), t_enc ~ U{0..S-1} and the DDPM t of the
common step, samples z by DDIM (eta 0) from x_T ~ N(0, I) with the model being trained, guidance
``--start_guidance`` and emb(concept), stopping after t_enc steps (no grad), and minimises
MSE(ε_θ(z, t, c), ε(z, t, "") − η (ε(z, t, c) − ε(z, t, ""))) with ε the frozen original's and η
``--negative_guidance``. Gradients are zeroed every step (as ESD does). No training images are needed. Writes
``<output_dir>/erasure.safetensors`` (the trained tensors), ``args.json``, ``losses.csv``, ``summary.json``,
``loss.png`` and, with ``--save_full``, a full CompVis checkpoint.
"""

from __future__ import annotations

import argparse
import math
from typing import Optional, Sequence

import torch

from sepce.baseline_losses import check_concept_names, esd_loss, esd_sample_until, split_concepts
from sepce.cli import EXIT_HELP, parser, run
from sepce.esd_params import ESD_TRAIN_METHODS, SMALL_TRAIN_METHODS
from sepce.modeling import prompts_embeddings
from sepce.paths import run_name
from sepce.training import Step, TrainingSession, add_common_args, select_parameters


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = parser(__doc__, epilog=EXIT_HELP)
    add_common_args(p, lr=1e-5, iterations=1000, prompt=False, images=False, zero_grad_flag=False)
    p.add_argument(
        "--prompt",
        type=str,
        required=True,
        help="concept to erase (several with --seperator); ESD needs no training images",
    )
    p.add_argument(
        "--train_method",
        type=str,
        default="xattn",
        choices=list(ESD_TRAIN_METHODS),
        help="UNet parameters to train: xattn (cross-attention, ESD-x), noxattn (all but "
        "cross-attention, time embedding and output head, ESD-u), selfattn, full, notime (all "
        "but time embedding and output head), xlayer (cross-attention of output blocks 6 and "
        "8), selflayer (self-attention of input blocks 4 and 7)",
    )
    p.add_argument(
        "--start_guidance",
        type=float,
        default=3.0,
        help="classifier-free guidance of the DDIM sampling that produces z_t",
    )
    p.add_argument(
        "--negative_guidance",
        type=float,
        default=1.0,
        help="eta of the target eps(z,t,'') - eta * (eps(z,t,c) - eps(z,t,''))",
    )
    p.add_argument(
        "--seperator",
        type=str,
        default=None,
        help="split --prompt at this string into several concepts (spelling as in ESD), one "
        "drawn at random per iteration, e.g. --prompt 'Van Gogh, Picasso' --seperator ','",
    )
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> dict:
    for name in ("start_guidance", "negative_guidance"):
        if not math.isfinite(getattr(args, name)):
            raise ValueError(f"--{name} {getattr(args, name)!r}: expected a finite number")
    if not 1 <= args.ddim_steps <= 500:
        raise ValueError(f"--ddim_steps {args.ddim_steps!r}: ESD samples with DDIM, expected an integer in 1..500")
    concepts = check_concept_names(split_concepts(args.prompt, args.seperator))
    session = TrainingSession(args, "ESD", concepts, images=False, output_suffix=args.train_method)
    model = session.load_model()
    params = select_parameters(model, ESD_TRAIN_METHODS[args.train_method])
    reference = session.frozen_reference(model, params)
    uncond = prompts_embeddings(model, [""])  # 1 77 D
    conds = {c: prompts_embeddings(model, [c]) for c in concepts}  # each 1 77 D
    latent_shape = (1, model.channels, args.image_size // 8, args.image_size // 8)
    run = session.start_run({"concepts": concepts, "trained_tensors": len(params)})
    model.train()

    def step(i: int) -> Step:
        concept = concepts[int(torch.randint(len(concepts), (1,), generator=session.generator))]
        t_enc, t = session.timesteps()
        start_code = torch.randn(latent_shape, generator=session.generator).to(session.device)
        z = esd_sample_until(model, start_code, conds[concept], uncond, t_enc, args.ddim_steps, args.start_guidance)
        e_0, e_p = reference(z.expand(2, -1, -1, -1), t.expand(2), torch.cat([uncond, conds[concept]])).chunk(2)
        e_n = model.apply_model(z, t, conds[concept])
        loss = esd_loss(e_n, e_0, e_p, args.negative_guidance)
        return Step(loss, {"concept": concept, "t_enc": t_enc, "t": int(t)})

    # The rollback copy of the trained tensors is skipped for the methods that train most of the UNet.
    trainer = session.trainer(
        params,
        desc=f"ESD-{args.train_method} {args.prompt}",
        zero_grad=True,
        keep_last_good=args.train_method in SMALL_TRAIN_METHODS,
    )
    result = trainer.fit(step)
    model.eval()
    meta = {
        "prompt": args.prompt,
        "concepts": concepts,
        "train_method": args.train_method,
        "start_guidance": args.start_guidance,
        "negative_guidance": args.negative_guidance,
        "iterations": result.iterations,
        "stop_reason": result.stop_reason,
        "lr": args.lr,
        "reference": reference.kind,
    }
    session.save_tensors(concepts, params, meta)
    if args.save_full:
        name = run_name("ESD", concepts, args.train_method)
        session.save_full(name, {k: p.detach() for k, p in params.items()})
    summary = run.finish(
        result.iterations,
        result.stop_reason,
        ok=result.ok,
        reference=reference.kind,
        train_method=args.train_method,
        trained_tensors=len(params),
        concepts={c: {"draws": sum(r.get("concept") == c for r in run.rows)} for c in concepts},
    )
    print(f"ESD-{args.train_method} {concepts}: {result.iterations} iterations, {result.stop_reason}; saved {run.dir}")
    return summary


if __name__ == "__main__":
    run(parse_args, main)
