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
method>.ckpt`` (or ``.safetensors``). The default run folder is ``models/ESD-<prompt>-<train method>``. The method
itself is ``sepce/methods/esd.py``.
"""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

from sepce.cli import run
from sepce.methods.esd import ESD_DEFAULTS, ESD_SAMPLING, ESD_TRAIN_METHODS, ESDSettings, check_ddim_steps, run_esd
from sepce.training import finished_message, settings_from_args, training_parser


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = training_parser(
        __doc__,
        lr=ESD_DEFAULTS["lr"],
        iterations=ESD_DEFAULTS["iterations"],
        prompt=False,
        images=False,
        zero_grad_flag=False,
    )
    p.add_argument(
        "--prompt",
        type=str,
        required=True,
        help="concept to erase (several with --seperator); ESD needs no training images",
    )
    p.add_argument(
        "--train_method",
        type=str,
        default=ESD_DEFAULTS["train_method"],
        choices=list(ESD_TRAIN_METHODS),
        help="UNet parameters to train: xattn (cross-attention, ESD-x), noxattn (all but "
        "cross-attention, time embedding and output head, ESD-u), selfattn, full, notime (all "
        "but time embedding and output head), xlayer (cross-attention of output blocks 6 and "
        "8), selflayer (self-attention of input blocks 4 and 7)",
    )
    p.add_argument(
        "--start_guidance",
        type=float,
        default=ESD_DEFAULTS["start_guidance"],
        help="classifier-free guidance of the DDIM sampling that produces z_t",
    )
    p.add_argument(
        "--negative_guidance",
        type=float,
        default=ESD_DEFAULTS["negative_guidance"],
        help="eta of the target eps(z,t,'') - eta * (eps(z,t,c) - eps(z,t,''))",
    )
    p.add_argument(
        "--sampling",
        choices=ESD_SAMPLING,
        default=ESD_DEFAULTS["sampling"],
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
    settings = ESDSettings(
        prompt=args.prompt,
        train_method=args.train_method,
        start_guidance=args.start_guidance,
        negative_guidance=args.negative_guidance,
        sampling=args.sampling,
        separator=args.seperator,
    )
    check_ddim_steps(args.ddim_steps)  # ESD's own bound first, before the model files are checked
    summary = run_esd(settings_from_args(args), settings)
    print(finished_message(summary))
    return summary


if __name__ == "__main__":
    run(parse_args, main)
