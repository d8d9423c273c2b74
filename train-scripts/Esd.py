"""Erased Stable Diffusion (ESD; Gandikota et al. 2023, "Erasing Concepts from Diffusion Models", Eq. 3): fine-tune
the UNet so that its prediction for the concept follows the original's negatively guided prediction
(docs/method.md, "ESD").

    python train-scripts/Esd.py --prompt 'Van Gogh' --train_method 'xattn' --iterations 1000 --devices '0,1'

Each iteration draws one concept (``--prompt`` split by ``--seperator``), t_enc ~ U{0..S-1} and the DDPM t of the
common step, samples z by DDIM (eta 0) from x_T ~ N(0, I) with the model being trained, guidance
``--start_guidance`` and emb(concept), "till t" as ESD's sampler does (S+1−t_enc steps, all S for t_enc = 0, so
that z's noise level follows t; no grad), and minimises MSE(ε_θ(z, t, c), ε(z, t, "") − η (ε(z, t, c) − ε(z, t, "")))
with ε the frozen original's and η ``--negative_guidance``. ``--sampling authors_all_steps`` instead samples all S
steps every time and scores the clean latent at t, as the authors' Esd.py did (its sampler ignored the stop): for
reproducing the paper's ESD row. Gradients are zeroed every step (as ESD does). No training images are needed.
Writes ``<output_dir>/erasure.safetensors`` (the trained tensors), ``args.json``, ``losses.csv``,
``summary.json``, ``loss.png`` and, with ``--save_full``, a full CompVis checkpoint ``ESD-<prompt>-<train
method>.ckpt`` (or ``.safetensors``). The default run folder is ``models/ESD-<prompt>-<train method>``.
"""

from __future__ import annotations

import argparse
import math
from typing import Optional, Sequence

import torch

from sepce.baseline_losses import (
    ESD_SAMPLING,
    check_concept_names,
    esd_loss,
    esd_sample_till_t,
    esd_sampling_steps,
    split_concepts,
)
from sepce.cli import run
from sepce.esd_params import ESD_TRAIN_METHODS, SMALL_TRAIN_METHODS
from sepce.modeling import prompts_embeddings
from sepce.training import TrainingSession, TrainStep, finished_message, select_parameters, training_parser


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = training_parser(__doc__, lr=1e-5, iterations=1000, prompt=False, images=False, zero_grad_flag=False)
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
        "--sampling",
        choices=ESD_SAMPLING,
        default="till_t",
        help="till_t: DDIM runs until z's noise level matches the t it is scored at (ESD's sampler); "
        "authors_all_steps: always all steps, the clean latent scored at t — for reproducing the paper's ESD row",
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
    session = TrainingSession.from_args(args, "ESD", concepts, images=False, suffix=args.train_method)
    model = session.load_model()
    params = select_parameters(model, ESD_TRAIN_METHODS[args.train_method])
    reference = session.frozen_reference(model, params)
    uncond = prompts_embeddings(model, [""])  # 1 77 D
    conds = {c: prompts_embeddings(model, [c]) for c in concepts}  # each 1 77 D
    latent_shape = (1, model.channels, args.image_size // 8, args.image_size // 8)
    run_folder = session.start_run({"concepts": concepts, "trained_tensors": len(params)})

    def step(i: int) -> TrainStep:
        concept = concepts[int(torch.randint(len(concepts), (1,), generator=session.generator))]
        t_enc, t = session.timesteps()
        start_code = torch.randn(latent_shape, generator=session.generator).to(session.device)
        z = esd_sample_till_t(
            model, start_code, conds[concept], uncond, t_enc, args.ddim_steps, args.start_guidance, args.sampling
        )
        e_0, e_p = reference(z.expand(2, -1, -1, -1), t.expand(2), torch.cat([uncond, conds[concept]])).chunk(2)
        e_n = model.apply_model(z, t, conds[concept])
        loss = esd_loss(e_n, e_0, e_p, args.negative_guidance)
        steps = esd_sampling_steps(t_enc, args.ddim_steps, args.sampling, model.num_timesteps)
        return TrainStep(loss, {"concept": concept, "t_enc": t_enc, "t": int(t), "ddim_steps_run": steps})

    # The rollback copy of the trained tensors is skipped for the methods that train most of the UNet.
    result = session.fit(
        params,
        step,
        desc=f"ESD-{args.train_method} {args.prompt}",
        zero_grad=True,
        keep_last_good=args.train_method in SMALL_TRAIN_METHODS,
    )
    draws = {c: sum(r.get("concept") == c for r in run_folder.rows[: result.iterations]) for c in concepts}
    summary = session.finish(
        result,
        session.tensor_record(params),
        reference=reference.kind,
        concepts={
            c: {"iterations": result.iterations, "stop_reason": result.stop_reason, "draws": draws[c]} for c in concepts
        },
        settings={
            "prompt": args.prompt,
            "train_method": args.train_method,
            "sampling": args.sampling,
            "start_guidance": args.start_guidance,
            "negative_guidance": args.negative_guidance,
            "trained_tensors": len(params),
        },
        stop_reason=result.stop_reason,
    )
    print(finished_message(summary))
    return summary


if __name__ == "__main__":
    run(parse_args, main)
