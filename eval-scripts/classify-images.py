"""Top-1 accuracy of generated images per class, with 95 % Wilson intervals (object erasure and more).

    python eval-scripts/classify-images.py --classifier_kind imagenet \\
        --classes data/imagenette/classes.csv --prompts_path data/imagenette/evaluate.csv \\
        --path evaluation_folder/SD-v1-4 evaluation_folder/ESD-chainsaw

For each model folder of generate-images.py (``<case>_<k>.png``; each case's class from --prompts_path), the
judge of --classifier_kind classifies every image: ``imagenet`` is torchvision's ImageNet ResNet-50
(IMAGENET1K_V1) top-1 on each class's ``imagenet_index`` of the class map, as ESD and UCE report object
erasure; its weights come from the torch hub cache (resnet50-0676ba61.pth) or --classifier and are never
downloaded. ``world`` and ``artist`` take the world classifier or an artist-cls-train.py checkpoint. Writes
``<model folder>/results/accuracy.csv`` (per class: correct, images, accuracy and its Wilson interval; what
make-table.py reads as ACC) and ``accuracy.json`` (the classifier's name, version and weights digest, each image's
prediction, the confusion matrix). Unchanged inputs reuse the results; other inputs need --overwrite.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

from sepce.cli import EXIT_HELP, add_classes, add_device, add_prompts_path, parse_device, parser, positive_int, run
from sepce.evaluation.classifiers import ClassifierKind
from sepce.evaluation.folder_accuracy import AccuracySettings, plan_accuracy, run_accuracy


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = parser(__doc__, EXIT_HELP)
    p.add_argument("--path", type=Path, nargs="+", required=True, help="model folders of generate-images.py")
    add_prompts_path(p, required=True)
    add_classes(p)
    p.add_argument(
        "--classifier_kind",
        choices=["auto"] + [k.value for k in ClassifierKind],
        default="auto",
        help="the judge; auto: from the --classifier file (world or artist)",
    )
    p.add_argument(
        "--classifier",
        type=Path,
        default=None,
        help="the judge's file (for imagenet: ResNet-50 weights; None: the torch hub cache)",
    )
    p.add_argument(
        "--no_pretrained", action="store_true", help="imagenet: random ResNet-50 weights (tiny runs: plumbing only)"
    )
    add_device(p)
    p.add_argument("--batch_size", type=positive_int, default=32, help="images per forward pass")
    p.add_argument("--overwrite", action="store_true", help="replace results made from other inputs")
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> dict:
    settings = AccuracySettings(
        list(args.path),
        Path(args.prompts_path),
        Path(args.classes),
        args.classifier,
        args.classifier_kind,
        parse_device(args.device),
        args.batch_size,
        args.overwrite,
        not args.no_pretrained,
    )
    results = run_accuracy(plan_accuracy(settings))
    for folder, rows in results.items():
        print(folder)
        for row in rows:
            value = row["accuracy_pct"]
            text = (
                "–"
                if value is None or value != value
                else f"{value:6.2f}% [{row['ci_low_pct']:.1f}, {row['ci_high_pct']:.1f}]"
            )
            print(f"  {row['name']:<20s} {text}  ({row['correct']}/{row['images']})")
    return results


if __name__ == "__main__":
    run(parse_args, main)
