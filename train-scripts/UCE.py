"""Unified Concept Editing (UCE; Gandikota et al. 2024), a closed-form erasure baseline (docs/method.md, "UCE").

    python train-scripts/UCE.py --edit_concepts 'Van Gogh' --guide_concepts 'art' \\
        --preserve_concepts 'Picasso;Cezanne' --devices 0

No training loop: every cross-attention to_k/to_v weight becomes the minimiser of
lamb*|W - W_old|^2 + erase_scale * sum_i |W c_e_i - W_old c_g_i|^2 + preserve_scale * sum_j |W c_p_j - W_old c_p_j|^2
with c = a prompt's text embedding at its last word token (erased concepts e_i, guides g_i, preserved p_j), solved
in float64 in seconds. Writes <output_dir>/erasure.safetensors (the changed to_k/to_v tensors, as every method),
args.json, losses.csv (one row: the objective before and after), summary.json (the schema of every training run:
1 iteration, stop reason 'closed form') and, with --save_full, a full CompVis checkpoint;
eval-scripts/generate-images.py --model_name UCE-<concepts> then uses it.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Optional, Sequence

from sepce.cli import EXIT_HELP, add_quiet, default_device, parse_devices, parser, run, show_progress
from sepce.paths import DEFAULT_CKPT, DEFAULT_CONFIG
from sepce.training import FULL_FORMATS, FitResult, TrainingSession, TrainingSettings, finished_message
from sepce.uce import UCESettings, split_concepts, uce_edit

log = logging.getLogger("UCE")
METHOD = "UCE"
STOP_REASON = "closed form"


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
    p.add_argument("--erase_scale", type=float, default=1.0, help="weight s_e of the erase term (>= 0)")
    p.add_argument("--preserve_scale", type=float, default=1.0, help="weight s_p of the preserve term (>= 0)")
    p.add_argument("--lamb", type=float, default=0.5, help="weight lambda of |W - W_old|^2 (> 0)")
    p.add_argument(
        "--devices",
        type=str,
        default=default_device(),
        help="device of the model ('0', 'cuda:0', 'cpu'); of two devices ('0,1') only the first is used",
    )
    p.add_argument("--ckpt_path", type=Path, default=DEFAULT_CKPT, help="base CompVis checkpoint")
    p.add_argument("--config_path", type=Path, default=DEFAULT_CONFIG, help="CompVis model config (YAML)")
    p.add_argument(
        "--output_dir",
        type=Path,
        default=None,
        help="run folder (default: <repository>/models/<run name>, e.g. models/UCE-VanGogh); a non-empty folder "
        "needs --overwrite",
    )
    p.add_argument("--overwrite", action="store_true", help="reuse a non-empty --output_dir, replacing its run files")
    p.add_argument(
        "--save_full",
        nargs="?",
        const="ckpt",
        default=None,
        choices=FULL_FORMATS,
        help="also write a full CompVis checkpoint (several GB) beside erasure.safetensors, as .ckpt (the flag "
        "alone) or .safetensors (--save_full safetensors)",
    )
    add_quiet(p)
    return p.parse_args(argv)


def uce_settings(args: argparse.Namespace) -> UCESettings:
    """The validated concepts and scales (one-line ``ValueError`` on bad input)."""
    edit = split_concepts(args.edit_concepts)
    for c in edit:
        if "." in c:  # sepce.records refuses '.' in concept names: fail now, not at the save
            raise ValueError(f"--edit_concepts: {c!r} contains '.', which erasure records do not allow")
    return UCESettings(
        edit_concepts=tuple(edit),
        guide_concepts=tuple(split_concepts(args.guide_concepts)),
        preserve_concepts=tuple(split_concepts(args.preserve_concepts, keep_blank=False)),
        erase_scale=args.erase_scale,
        preserve_scale=args.preserve_scale,
        lamb=args.lamb,
    )


def run_settings(args: argparse.Namespace) -> TrainingSettings:
    """The run's shared settings (device, model files, run folder, --save_full), validated. UCE has no optimiser:
    ``lr`` is only there because :class:`TrainingSettings` requires one; it is used nowhere and the record's
    metadata says ``lr: None``."""
    devices = parse_devices(args.devices)
    if len(devices) > 1:
        log.info("UCE keeps no frozen copy: using %s only", devices[0])
    return TrainingSettings(
        lr=1.0,
        iterations=1,
        devices=(devices[0],),
        ckpt_path=Path(args.ckpt_path),
        config_path=Path(args.config_path),
        data_dir=None,
        output_dir=None if args.output_dir is None else Path(args.output_dir),
        save_full=args.save_full,
        overwrite=args.overwrite,
        progress=show_progress(args.quiet),
        command_line=dict(vars(args)),
    )


def main(args: argparse.Namespace) -> dict:
    settings = uce_settings(args)
    session = TrainingSession(run_settings(args), METHOD, settings.edit_concepts, images=False)
    model = session.load_model()
    resolved = {
        "edit": list(settings.edit_concepts),
        "guides": list(settings.guides),
        "preserve": list(settings.preserve_concepts),
    }
    run_folder = session.start_run({"resolved": resolved})
    tic = time.perf_counter()
    result = uce_edit(model, settings)
    seconds = time.perf_counter() - tic
    run_folder.log(
        {
            "iteration": 0,
            "loss": result.objective_after,
            "loss_before": result.objective_before,
            "erase_residual": max(result.erase_residual.values()),
            "preserve_drift": max(result.preserve_drift.values(), default=0.0),
            "seconds": round(seconds, 4),
        }
    )
    record = session.tensor_record(result.tensors)
    record.meta = {"lr": None}  # no optimiser (the record's own keys win over the session's)
    concepts = {
        c: {"iterations": 1, "stop_reason": STOP_REASON, "guide": g, "erase_residual": result.erase_residual[c]}
        for c, g in zip(settings.edit_concepts, settings.guides)
    }
    report = {
        **resolved,
        "erase_scale": settings.erase_scale,
        "preserve_scale": settings.preserve_scale,
        "lamb": settings.lamb,
        "edit_seconds": seconds,
        **result.summary(),
    }
    summary = session.finish(
        FitResult(1, STOP_REASON), record, reference="none (closed form)", concepts=concepts, settings=report
    )
    print(finished_message(summary))
    return summary


if __name__ == "__main__":
    run(parse_args, main)
