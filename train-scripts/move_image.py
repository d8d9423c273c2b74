"""Sort generated evaluation images into class folders (seed README: "python train-scripts/move_image.py").

Generation writes ``<save_path>/<model_name>/<case_number>_<k>.png``; this moves every such file of each model
folder into ``<model folder>/<class>/`` with the class that the prompt CSV's ``class`` column gives its case
number (class indices from ``data/classes.csv``). By default it sorts ``--path`` itself if it holds such
files, and every subfolder of ``--path`` that holds such files or class folders (e.g. ``evaluation_folder/default``
and ``evaluation_folder/eval``); other folders (``results/``, a table folder) are left alone.

Idempotent: already sorted images are left alone, so it can be re-run after more images were generated. Images
whose case number is not in the CSV, files with other names, and files whose destination exists (without
``--overwrite``) stay in place and are reported as counted warnings.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import List, Optional, Sequence

from sepce.classes import load_class_map
from sepce.cli import EXIT_HELP, add_classes, add_evaluation_path, add_prompts_path, parser, run
from sepce.evaluation.images import SortReport, generated_images, has_class_folders, sort_into_class_folders
from sepce.evaluation.results import RESULTS_DIR
from sepce.paths import EVALUATE_CSV
from sepce.prompt_csv import case_classes, read_prompt_csv

log = logging.getLogger("move_image")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = parser(__doc__, EXIT_HELP)
    add_evaluation_path(p, help="folder holding the model folders (or a model folder itself)")
    p.add_argument(
        "--folders",
        nargs="+",
        default=None,
        help="names of the model folders under --path to sort; None: every subfolder with generated images",
    )
    add_prompts_path(p, default=EVALUATE_CSV)
    add_classes(p)
    p.add_argument("--dry_run", action="store_true", help="report what would move without moving anything")
    p.add_argument("--overwrite", action="store_true", help="replace an image that already exists in its class folder")
    return p.parse_args(argv)


def target_folders(path: Path, names: Optional[Sequence[str]]) -> List[Path]:
    """The model folders to sort: the named ones, else ``path`` and its subfolders that hold images."""
    if not path.is_dir():
        raise NotADirectoryError(f"--path {path} does not exist")
    if names:
        folders = [path / name for name in names]
        absent = [str(f) for f in folders if not f.is_dir()]
        if absent:
            raise NotADirectoryError(f"model folder(s) {absent} do not exist under {path}")
        return folders
    candidates = [path] + sorted(p for p in path.iterdir() if p.is_dir() and not p.name.isdigit())
    folders = [
        f for f in candidates if f.name != RESULTS_DIR and (generated_images(f) or (f != path and has_class_folders(f)))
    ]
    if not folders:
        raise ValueError(f"no images under {path}: expected model folders holding <case_number>_<k>.png files")
    return folders


def main(args: argparse.Namespace) -> List[SortReport]:
    classes = load_class_map(args.classes)
    case_to_class = case_classes(read_prompt_csv(args.prompts_path, classes, require_class=True))
    reports = []
    for folder in target_folders(Path(args.path), args.folders):
        report = sort_into_class_folders(folder, case_to_class, dry_run=args.dry_run, overwrite=args.overwrite)
        verb = "would move" if args.dry_run else "moved"
        print(f"{folder}: {verb} {report.moved} image(s), {report.already_sorted} already in class folders")
        for line in report.warnings():
            log.warning(line)
        reports.append(report)
    return reports


if __name__ == "__main__":
    run(parse_args, main)
