"""Accuracy of a model folder's generated images under any judge of :mod:`sepce.evaluation.classifiers`.

The object evaluation (docs/method.md, "Object erasure"): the images ``generate-images.py`` drew from an
evaluation CSV (``<case>_<k>.png``, the class of each case from the CSV) are classified, and each class's
top-1 accuracy is written to ``<model folder>/results/accuracy.csv`` — the file ``make-table.py`` reads as ACC —
with its 95 % Wilson interval (:func:`sepce.stats.wilson`). ``accuracy.json`` records the judge
(:class:`~sepce.evaluation.classifiers.ClassifierInfo`: name, version, weights digest), each image's true and
predicted class and the confusion matrix. Unchanged inputs reuse the stored results; results of other inputs
need ``overwrite``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from sepce.classes import ConceptClass, load_class_map
from sepce.prompt_csv import case_classes, read_prompt_csv
from sepce.stats import wilson

from .artist_classifier import accuracy_table
from .classifiers import ClassifierKind, check_classifier, open_classifier
from .common import file_signature, fingerprint
from .images import index_images, parse_image_name
from .results import stored_rows, write_metric

METRIC = "accuracy"
COLUMNS = ["class", "name", "correct", "images", "accuracy_pct", "ci_low_pct", "ci_high_pct"]


@dataclass(frozen=True)
class AccuracySettings:
    folders: List[Path]  # model folders of generate-images.py
    prompts_path: Path
    class_map: Path
    classifier: Optional[Path] = None  # None: the kind's default (ImageNet weights from the torch hub cache)
    kind: Optional[str] = None  # None/auto: from the file
    device: torch.device = torch.device("cpu")
    batch_size: int = 32
    overwrite: bool = False
    pretrained: bool = True  # False: imagenet with random weights (tiny runs)


@dataclass
class AccuracyPlan:
    settings: AccuracySettings
    classes: List[ConceptClass]
    kind: ClassifierKind
    images: Dict[Path, tuple]  # folder -> (paths, labels)


def labelled_images(folder: Path, case_to_class: Dict[int, int]) -> tuple[List[Path], List[int]]:
    """The generated images of ``folder`` (flat or in class folders) whose case is in the CSV, with its class."""
    index, _ = index_images(folder)
    paths, labels = [], []
    for name in sorted(index):
        parsed = parse_image_name(name)
        if parsed is not None and parsed[0] in case_to_class:
            paths.append(index[name])
            labels.append(case_to_class[parsed[0]])
    return paths, labels


def plan_accuracy(settings: AccuracySettings) -> AccuracyPlan:
    """Check the class map, the CSV, the judge and every folder without loading a network (one-line errors)."""
    classes = load_class_map(settings.class_map)
    rows = read_prompt_csv(settings.prompts_path, classes=classes, require_class=True)
    kind = check_classifier(settings.classifier, classes, settings.kind, settings.class_map, settings.pretrained)
    images = {}
    for folder in settings.folders:
        if not Path(folder).is_dir():
            raise NotADirectoryError(f"model folder {folder} does not exist")
        paths, labels = labelled_images(Path(folder), case_classes(rows))
        if not paths:
            raise ValueError(f"{folder} holds no generated <case>_<k>.png image of {settings.prompts_path}")
        images[Path(folder)] = (paths, labels)
    return AccuracyPlan(settings, classes, kind, images)


def with_intervals(rows: Sequence[dict]) -> List[dict]:
    """``rows`` with the 95 % Wilson interval (%) of each accuracy (empty when the accuracy is)."""
    out = []
    for row in rows:
        estimate = wilson(row["correct"], row["images"]) if row["accuracy_pct"] == row["accuracy_pct"] else None
        low, high = (100 * estimate.low, 100 * estimate.high) if estimate else (float("nan"), float("nan"))
        out.append({**row, "ci_low_pct": low, "ci_high_pct": high})
    return out


def run_accuracy(plan: AccuracyPlan) -> Dict[Path, List[dict]]:
    """Classify every folder's images (or reuse unchanged results) and write ``results/accuracy.*``."""
    s = plan.settings
    judge = None
    results = {}
    for folder, (paths, labels) in plan.images.items():
        key = fingerprint(
            {
                "images": file_signature(paths, folder),
                "classifier": plan.kind.value,
                "classifier_file": file_signature([s.classifier]) if s.classifier else None,
                "pretrained": s.pretrained,
                "classes": [c.name for c in plan.classes],
            }
        )
        rows = stored_rows(folder, METRIC, key, s.overwrite)
        if rows is None:
            judge = judge or open_classifier(
                s.classifier, plan.classes, s.device, plan.kind, class_map=s.class_map, pretrained=s.pretrained
            )
            predictions = judge.predict(paths, s.batch_size)
            rows, confusion = accuracy_table(plan.classes, labels, predictions)
            rows = with_intervals(rows)
            meta = {
                "model_folder": str(folder),
                "prompts_path": str(s.prompts_path),
                "classifier": judge.info.to_dict(),
                "fingerprint": key,
                "confusion": confusion,
                "predictions": {p.name: [label, int(pred)] for p, label, pred in zip(paths, labels, predictions)},
            }
            write_metric(folder, METRIC, rows, COLUMNS, meta)
        results[folder] = rows
    return results
