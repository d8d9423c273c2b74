"""Classify generated images with the trained style classifier; per-class and overall accuracy (seed README).

    python train-scripts/artist-cls-test.py --path './evaluation_folder/'

Evaluates every model folder under ``--path`` that has class folders ``0..K-1`` (as made by
``train-scripts/move_image.py``), or ``--path`` itself if it has them. An image in class folder ``c`` counts
as correct when the classifier predicts ``c``. Prints per-class and overall accuracy and writes ``<model
folder>/results/accuracy.csv`` and ``accuracy.json`` (with the confusion matrix). Images use the same
Resize+CenterCrop size as in training (stored in the checkpoint). Up-to-date results are reused; results made
from other images or another classifier need ``--overwrite``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from sepce.classes import load_class_map
from sepce.cli import (
    EXIT_HELP,
    BatchSettings,
    add_batch_args,
    add_classes,
    add_evaluation_path,
    parser,
    positive_int,
    run,
)
from sepce.evaluation.artist_classifier import accuracy_table, load_classifier, predict
from sepce.evaluation.common import file_signature, fingerprint
from sepce.evaluation.images import generated_images, has_class_folders, images_by_class
from sepce.evaluation.results import RESULTS_DIR, stored_rows, write_metric
from sepce.evaluation.verify import verify_folders
from sepce.paths import ARTIST_CLASSIFIER

log = logging.getLogger("artist-cls-test")
COLUMNS = ["class", "name", "correct", "images", "accuracy_pct"]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = parser(__doc__, EXIT_HELP)
    add_evaluation_path(p, help="folder of model folders with class folders (or one model folder)")
    p.add_argument(
        "--classifier",
        type=Path,
        default=ARTIST_CLASSIFIER,
        help="checkpoint written by train-scripts/artist-cls-train.py",
    )
    add_classes(p)
    p.add_argument(
        "--image_size",
        type=positive_int,
        default=None,
        help="Resize+CenterCrop size; None: the size the classifier was trained with",
    )
    add_batch_args(p, batch_size=50)
    p.add_argument("--overwrite", action="store_true", help="replace results made from other inputs")
    return p.parse_args(argv)


def model_folders(path: Path) -> List[Path]:
    """``path`` if it has class folders, else its subfolders that have them."""
    if not path.is_dir():
        raise NotADirectoryError(f"--path {path} does not exist")
    if has_class_folders(path):
        return [path]
    subfolders = sorted(p for p in path.iterdir() if p.is_dir() and p.name != RESULTS_DIR)
    folders = [p for p in subfolders if has_class_folders(p)]
    if folders:
        return folders
    unsorted = [str(p) for p in [path] + subfolders if generated_images(p)]
    if unsorted:
        raise ValueError(
            f"{unsorted} hold images that are not sorted into class folders; run train-scripts/move_image.py first"
        )
    raise ValueError(f"no model folder with class folders 0..K-1 under {path}")


def main(args: argparse.Namespace) -> Dict[Path, List[dict]]:
    batches = BatchSettings.from_args(args)
    classes = load_class_map(args.classes)
    folders = model_folders(Path(args.path))
    if not Path(args.classifier).is_file():
        raise FileNotFoundError(
            f"classifier checkpoint {args.classifier} does not exist; train one with train-scripts/artist-cls-train.py"
        )
    model, info = load_classifier(args.classifier, classes)
    image_size = args.image_size or info["image_size"]
    if image_size != info["image_size"]:
        log.warning("testing at %d px, but the classifier was trained at %d px", image_size, info["image_size"])

    plans = []  # (folder, paths, labels, missing, fingerprint, stored rows or None); checked before any work
    for folder in folders:
        verify_folders(folder)
        found, missing = images_by_class(folder, classes)
        if missing:
            log.warning("%s lacks %d class folder(s) %s; their accuracy stays empty", folder, len(missing), missing)
        paths = [p for index in sorted(found) for p in found[index]]
        labels = [index for index in sorted(found) for _ in found[index]]
        if not paths:
            log.warning("%s: its class folders hold no images; skipped", folder)
            continue
        key = fingerprint(
            {
                "images": file_signature(paths, folder),
                "classifier": file_signature([Path(args.classifier)]),
                "image_size": image_size,
                "classes": [c.name for c in classes],
            }
        )
        plans.append((folder, paths, labels, missing, key, stored_rows(folder, "accuracy", key, args.overwrite)))

    results = {}
    for folder, paths, labels, missing, key, rows in plans:
        if rows is None:
            predictions = predict(
                model,
                paths,
                image_size,
                batches.batch_size,
                batches.device,
                num_workers=batches.num_workers,
                desc=f"classify {folder.name}",
                progress=batches.progress,
            )
            rows, confusion = accuracy_table(classes, labels, predictions.tolist(), missing)
            meta = {
                "model_folder": str(folder),
                "classifier": str(args.classifier),
                "image_size": image_size,
                "fingerprint": key,
                "missing_classes": missing,
                "confusion": confusion,
            }
            write_metric(folder, "accuracy", rows, COLUMNS, meta)
        else:
            print(f"{folder}: inputs unchanged, reusing {folder / RESULTS_DIR / 'accuracy.csv'}")
        print(f"\n{folder}")
        for row in rows:
            value = row["accuracy_pct"]
            text = "–" if value is None or value != value else f"{value:6.2f}%"
            print(f"  {row['name']:<20s} {text:>8s}  ({row['correct']}/{row['images']})")
        results[folder] = rows
    return results


if __name__ == "__main__":
    run(parse_args, main)
