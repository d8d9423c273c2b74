"""Render a seeded dataset of the concept world (sepce.world): PNGs, metadata.csv, world.json, class maps.

Example::

    python train-scripts/make-world-data.py --out data/world/train --num_images 6400 --seed 0 --size 64
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sepce.cli import add_quiet, parser, run, show_progress
from sepce.io import save_image
from sepce.world import OBJECTS, STYLES, make_dataset, preview_grid


def parse_args(argv=None) -> argparse.Namespace:
    p = parser(__doc__)
    p.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")
    p.add_argument(
        "--num_images",
        type=int,
        default=6400,
        help=f"number of images; multiples of {len(STYLES) * len(OBJECTS)} are balanced over style x object",
    )
    p.add_argument("--seed", type=int, default=0, help="dataset seed (image i gets scene seed image_seed(seed, i))")
    p.add_argument("--size", type=int, default=64, help="image side in pixels (8..1024)")
    p.add_argument("--aa", type=int, default=4, help="supersampling factor for anti-aliasing (1..16)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a dataset with other settings in --out (same settings resume) or an old --preview",
    )
    p.add_argument(
        "--preview",
        type=Path,
        default=None,
        help="also save a contact sheet PNG (row per style, column per object)",
    )
    add_quiet(p)
    args = p.parse_args(argv)
    if not 1 <= args.num_images <= 10_000_000:
        p.error(f"--num_images {args.num_images} must be in [1, 10000000]")
    if not 0 <= args.seed < 2**63:
        p.error(f"--seed {args.seed} must be in [0, 2**63)")
    if not 8 <= args.size <= 1024:
        p.error(f"--size {args.size} must be in [8, 1024]")
    if not 1 <= args.aa <= 16:
        p.error(f"--aa {args.aa} must be in [1, 16]")
    if args.out.exists() and not args.out.is_dir():
        p.error(f"--out {args.out} exists and is not a folder")
    if args.preview is not None and args.preview.suffix.lower() != ".png":
        p.error(f"--preview {args.preview} must end in .png")
    if args.preview is not None and args.preview.exists() and not args.overwrite:
        p.error(f"--preview {args.preview} already exists; pass --overwrite to replace it")
    return args


def main(args: argparse.Namespace) -> Path:
    metadata = make_dataset(
        args.out,
        args.num_images,
        args.seed,
        args.size,
        args.aa,
        overwrite=args.overwrite,
        progress=show_progress(args.quiet),
    )
    print(f"wrote {args.num_images} images and {metadata}")
    if args.preview is not None:
        save_image(args.preview, preview_grid(args.seed, args.size), overwrite=args.overwrite)
        print(f"wrote preview {args.preview}")
    return metadata


if __name__ == "__main__":
    run(parse_args, main)
