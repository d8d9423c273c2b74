"""Unified Concept Editing (UCE; Gandikota et al. 2024), a closed-form erasure baseline (docs/method.md, "UCE").

    python train-scripts/UCE.py --edit_concepts 'Van Gogh' --guide_concepts 'art' \\
        --preserve_concepts 'Picasso;Cezanne' --devices 0

No training loop: every cross-attention to_k/to_v weight becomes the minimiser of
lamb*|W - W_old|^2 + erase_scale * sum_i |W c_e_i - W_old c_g_i|^2 + preserve_scale * sum_j |W c_p_j - W_old c_p_j|^2
with c = a prompt's text embedding at its last word token (erased concepts e_i, guides g_i, preserved p_j), solved
in float64 in seconds. Writes <output_dir>/erasure.safetensors (the changed to_k/to_v tensors, as every method),
args.json, losses.csv (one row: the objective before and after), summary.json (the schema of every training run:
1 iteration, stop reason 'closed form') and, with --save_full, a full CompVis checkpoint;
eval-scripts/generate-images.py --model_name UCE-<concepts> then uses it. The method itself is
sepce/methods/uce.py.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import replace
from typing import Optional, Sequence

from sepce.cli import EXIT_HELP, default_device, parser, run
from sepce.methods.uce import METHOD, UCE_DEFAULTS, UCESettings, run_uce, split_concepts
from sepce.records import check_concept_name
from sepce.training import TrainingSettings, add_run_args, finished_message, settings_from_args

log = logging.getLogger(METHOD)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = parser(__doc__, epilog=EXIT_HELP)
    p.add_argument(
        "--edit_concepts", type=str, required=True, help="';'-separated concepts to erase, e.g. 'Van Gogh;Picasso'"
    )
    p.add_argument(
        "--guide_concepts",
        type=str,
        default="",
        help="';'-separated guides: one per erased concept or one for all; '' is the blank prompt",
    )
    p.add_argument(
        "--preserve_concepts",
        type=str,
        default=None,
        help="';'-separated concepts whose keys/values should stay (none by default)",
    )
    p.add_argument(
        "--erase_scale", type=float, default=UCE_DEFAULTS["erase_scale"], help="weight s_e of the erase term (>= 0)"
    )
    p.add_argument(
        "--preserve_scale",
        type=float,
        default=UCE_DEFAULTS["preserve_scale"],
        help="weight s_p of the preserve term (>= 0)",
    )
    p.add_argument("--lamb", type=float, default=UCE_DEFAULTS["lamb"], help="weight lambda of |W - W_old|^2 (> 0)")
    add_run_args(
        p,
        devices=default_device(),
        devices_help="device of the model ('0', 'cuda:0', 'cpu'); of two devices ('0,1') only the first is used",
    )
    return p.parse_args(argv)


def uce_settings(args: argparse.Namespace) -> UCESettings:
    """The validated concepts and scales (one-line ``ValueError`` on bad input)."""
    return UCESettings(
        edit_concepts=tuple(check_concept_name(c, "--edit_concepts") for c in split_concepts(args.edit_concepts)),
        guide_concepts=tuple(split_concepts(args.guide_concepts)),
        preserve_concepts=tuple(split_concepts(args.preserve_concepts, keep_blank=False)),
        erase_scale=args.erase_scale,
        preserve_scale=args.preserve_scale,
        lamb=args.lamb,
    )


def run_settings(args: argparse.Namespace) -> TrainingSettings:
    """The run's shared settings (device, model files, run folder, --save_full), validated; no learning rate (UCE
    has no optimiser) and one device."""
    settings = settings_from_args(args)
    if len(settings.devices) > 1:
        log.info("UCE keeps no frozen copy: using %s only", settings.devices[0])
        settings = replace(settings, devices=settings.devices[:1])
    return settings


def main(args: argparse.Namespace) -> dict:
    settings = uce_settings(args)  # the concepts and scales are checked first
    summary = run_uce(run_settings(args), settings)
    print(finished_message(summary))
    return summary


if __name__ == "__main__":
    run(parse_args, main)
