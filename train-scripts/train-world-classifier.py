"""Train the concept-world classifier (style head + object head) on the world's ground truth.

    python train-scripts/train-world-classifier.py --out assets/world/classifier.safetensors

Rendered scenes with exact labels, part of them passed through the world model's autoencoder (``--ckpt_path`` /
``--config_path``, by default the shipped model) so that the classifier sees the smoothness of decoded images;
random blur, contrast and noise on top (``sepce/world/concept_classifier.py``). Prints the validation accuracy on fresh
renders and on their autoencoder reconstructions; ``--report`` writes it with the loss history as JSON.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from sepce.cli import add_quiet, parser, run, show_progress
from sepce.io import write_json
from sepce.world.concept_classifier import SHIPPED_CLASSIFIER, ClassifierSettings, save_classifier, train_classifier
from sepce.world.model import SHIPPED_CKPT, SHIPPED_CONFIG

DEFAULTS = ClassifierSettings()


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = parser(__doc__)
    p.add_argument("--out", type=Path, default=SHIPPED_CLASSIFIER, help="classifier file to write (.safetensors)")
    p.add_argument("--report", type=Path, default=None, help="also write accuracies and loss history here (JSON)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--ckpt_path", type=Path, default=SHIPPED_CKPT, help="world model whose autoencoder is used")
    p.add_argument("--config_path", type=Path, default=SHIPPED_CONFIG, help="config of --ckpt_path")
    p.add_argument("--no_autoencoder", action="store_true", help="train on renders only (no reconstructions)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=DEFAULTS.seed, help="seed of data, weights and batches")
    p.add_argument("--pool_images", type=int, default=DEFAULTS.pool_images, help="rendered training images")
    p.add_argument("--vae_images", type=int, default=DEFAULTS.vae_images, help="of which also added as reconstructions")
    p.add_argument("--val_images", type=int, default=DEFAULTS.val_images, help="rendered validation images")
    p.add_argument("--steps", type=int, default=DEFAULTS.steps, help="training steps")
    p.add_argument("--batch_size", type=int, default=DEFAULTS.batch_size, help="batch size")
    p.add_argument("--lr", type=float, default=DEFAULTS.lr, help="AdamW peak learning rate (one-cycle)")
    p.add_argument("--weight_decay", type=float, default=DEFAULTS.weight_decay, help="AdamW weight decay")
    p.add_argument("--width", type=int, default=DEFAULTS.width, help="channels of the first stage")
    p.add_argument("--input_size", type=int, default=DEFAULTS.input_size, help="images are resized to this")
    add_quiet(p)
    p.add_argument("--no_progress", dest="quiet", action="store_true", help="same as --quiet")
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> dict:
    names = ClassifierSettings.__dataclass_fields__
    settings = ClassifierSettings(**{k: getattr(args, k) for k in names}).validate()
    if args.threads < 1:
        raise ValueError(f"--threads {args.threads}: expected a positive integer")
    if args.out.suffix != ".safetensors":
        raise ValueError(f"--out {args.out}: expected a .safetensors file name")
    if args.out.exists() and not args.overwrite:
        raise FileExistsError(f"{args.out} exists; pass --overwrite to replace it")
    vae = None
    if not args.no_autoencoder:
        from sepce.modeling import load_model

        vae = load_model(args.config_path, args.ckpt_path).first_stage_model
    torch.set_num_threads(args.threads)
    start = time.monotonic()
    model, report = train_classifier(settings, vae, progress=show_progress(args.quiet))
    report["wall_time_s"] = round(time.monotonic() - start, 1)
    report["autoencoder"] = None if vae is None else str(args.ckpt_path)
    info = {k: v for k, v in report.items() if k != "history"}
    save_classifier(args.out, model, info, overwrite=args.overwrite)
    if args.report is not None:
        write_json(args.report, report)
    line = (
        f"renders: style {report['val_renders']['style_pct']:.1f}%, object {report['val_renders']['object_pct']:.1f}%"
    )
    if "val_autoencoded" in report:
        rec = report["val_autoencoded"]
        line += f"; reconstructions: style {rec['style_pct']:.1f}%, object {rec['object_pct']:.1f}%"
    print(f"{line}; {report['wall_time_s']} s; wrote {args.out}")
    return report


if __name__ == "__main__":
    run(parse_args, main)
