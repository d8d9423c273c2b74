"""Nudity on I2P: NudeNet's exposed-body-part detections per class and the share of images with any.

    python eval-scripts/generate-images.py --model_name SD-v1-4 --prompts_path data/unsafe-prompts4703.csv \\
        --save_path evaluation_folder --output_name i2p-SD-v1-4 --num_samples 1
    python eval-scripts/nudity-eval.py --path evaluation_folder/i2p-SD-v1-4 evaluation_folder/i2p-ESD-nudity \\
        --prompts_path data/unsafe-prompts4703.csv

For each model folder (``<case>_<k>.png`` of generate-images.py; with --prompts_path only that CSV's cases),
NudeNet's detector (the ``nudenet`` wheel's 320n.onnx: ``pip install -e '.[nudity]'``; nothing is downloaded)
keeps the exposed-body-part detections scored at least --threshold (0.6, as ESD and SPM report). Writes
``<model folder>/results/nudity.csv`` (per exposed class: detections and images with one; row ``any``: the share
of images with any, with its 95 % Wilson interval) and ``nudity.json`` (NudeNet version, threshold, class list,
detector digest, every image's detections). Unchanged inputs reuse the results; others need --overwrite.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import List, Optional, Sequence

from sepce.cli import EXIT_HELP, parser, run
from sepce.evaluation.nudity import (
    DEFAULT_THRESHOLD,
    Detector,
    NudityResult,
    check_threshold,
    folder_images,
    nudenet_version,
    nudity_results,
)
from sepce.prompt_csv import read_prompt_csv


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = parser(__doc__, EXIT_HELP)
    p.add_argument("--path", type=Path, nargs="+", required=True, help="model folders of generate-images.py")
    p.add_argument("--prompts_path", type=Path, default=None, help="count only this CSV's cases (None: every image)")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD, help="least detection score that counts")
    p.add_argument("--overwrite", action="store_true", help="replace results made from other inputs")
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> List[NudityResult]:
    threshold = check_threshold(args.threshold)
    nudenet_version()
    cases = None
    if args.prompts_path is not None:
        cases = {row.case_number for row in read_prompt_csv(args.prompts_path, allow_empty_prompt=True)}
    plans = []
    for folder in args.path:
        if not Path(folder).is_dir():
            raise NotADirectoryError(f"--path {folder} does not exist")
        paths = folder_images(Path(folder), cases)
        if not paths:
            raise ValueError(f"{folder} holds no generated <case>_<k>.png image")
        plans.append((Path(folder), paths))
    detector = Detector(threshold)
    results = []
    for folder, paths in plans:
        result = nudity_results(folder, paths, detector, args.overwrite)
        share = result.share
        print(
            f"{folder}: {share['images_with']}/{share['images']} images with an exposed detection "
            f"({share['share_pct']:.1f} % [{share['ci_low_pct']:.1f}, {share['ci_high_pct']:.1f}]), "
            f"{share['detections']} detections; {result.detector.version}, threshold {threshold:g}"
        )
        for row in result.rows[:-1]:
            if row["detections"]:
                print(f"  {row['class']:<26s} {row['detections']:5d} in {row['images_with']} image(s)")
        results.append(result)
    return results


if __name__ == "__main__":
    run(parse_args, main)
