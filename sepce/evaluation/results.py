"""The results layout shared by the metric scripts and the table command.

Every model folder (``evaluation_folder/default``, ``evaluation_folder/eval``, ...) gets a ``results/``
subfolder:

=====================  =========================================  ======================================
file                   written by                                 value column
=====================  =========================================  ======================================
``accuracy.csv/json``  ``train-scripts/artist-cls-test.py``       ``accuracy_pct`` (classifier top-1, %)
``lpips.csv/json``     ``eval-scripts/lpips_eval.py`` (edited)    ``lpips`` (mean over same-named pairs)
``fid.csv/json``       ``eval-scripts/lpips_eval.py`` (edited)    ``fid`` (original vs edited image set)
``attack.csv/json``    ``eval-scripts/attack-inversion.py``       ``accuracy_pct`` (on the images of the
                                                                  concept-inversion attack's learned word)
=====================  =========================================  ======================================

Each CSV has one row per class (``class`` = index, ``name`` = class-map name, the value column, a count
column) and a last row with ``class`` = ``all``. A value is empty where it could not be computed (no images).
The JSON beside it holds the same rows plus how they were made (inputs, network, image size; for accuracy also
``predictions``, each image's true and predicted class, from which paired drops get their intervals) and a
``fingerprint`` of the inputs: a script re-run on unchanged inputs reuses the stored result, and changed
inputs need ``--overwrite`` to replace it, so results are never overwritten silently. LPIPS and FID results of
an erased model live in the
*edited* folder and name the original folder they were measured against.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from sepce.io import write_json, write_text

RESULTS_DIR = "results"
VALUE_COLUMNS = {
    "accuracy": "accuracy_pct",
    "lpips": "lpips",
    "fid": "fid",
    "attack": "accuracy_pct",
    "cra": "object_accuracy_pct",  # world protocol v2: object accuracy on the CRA images (sepce.world.measures)
    "quality": "fid_to_renders",  # world protocol v2: FID against ground-truth renders
    "nudity": "share_pct",  # nudity-eval.py: share of images with an exposed detection
    "adversarial": "asr_after_pct",  # attack-adversarial-prompt.py: attack success rate after the attack
}
OVERALL = "all"


def results_dir(model_folder: str | Path) -> Path:
    return Path(model_folder) / RESULTS_DIR


def metric_paths(model_folder: str | Path, metric: str) -> tuple:
    """``(csv_path, json_path)`` of a metric's results for a model folder."""
    if metric not in VALUE_COLUMNS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {sorted(VALUE_COLUMNS)}")
    base = results_dir(model_folder)
    return base / f"{metric}.csv", base / f"{metric}.json"


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def write_csv(path: str | Path, rows: Sequence[dict], columns: Sequence[str]) -> Path:
    """Atomically write ``columns`` of ``rows`` as CSV; floats with 6 significant digits, NaN/None empty."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(column)) for column in columns])
    return write_text(path, buffer.getvalue())


def stored_rows(model_folder: str | Path, metric: str, fingerprint: str, overwrite: bool) -> Optional[List[dict]]:
    """Rows of an up-to-date stored result (same fingerprint), or ``None`` when it must be (re)computed.

    Raises ``FileExistsError`` when a result made from different inputs exists and ``overwrite`` is false.
    """
    csv_path, json_path = metric_paths(model_folder, metric)
    if not (csv_path.exists() or json_path.exists()):
        return None
    if json_path.is_file():
        stored = json.loads(json_path.read_text())
        if stored.get("fingerprint") == fingerprint and csv_path.is_file():
            return stored["rows"]
    if overwrite:
        return None
    raise FileExistsError(
        f"{csv_path} holds {metric} results made from other inputs (images, network or settings changed); "
        "pass --overwrite to replace them"
    )


def write_metric(
    model_folder: str | Path, metric: str, rows: Sequence[dict], columns: Sequence[str], meta: dict
) -> Path:
    """Write ``<metric>.csv`` (``columns`` of ``rows``) and ``<metric>.json`` (``meta`` + rows) atomically."""
    csv_path, json_path = metric_paths(model_folder, metric)
    write_csv(csv_path, rows, columns)
    clean_rows = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()} for row in rows]
    write_json(json_path, {**meta, "metric": metric, "rows": clean_rows})
    return csv_path


def read_metric(model_folder: str | Path, metric: str) -> Optional[Dict[str, float]]:
    """``{class name: value}`` (plus ``'all'``) from a metric CSV, or ``None`` when the file does not exist.

    Empty cells read as NaN.
    """
    csv_path, _ = metric_paths(model_folder, metric)
    if not csv_path.is_file():
        return None
    column = VALUE_COLUMNS[metric]
    with csv_path.open(newline="") as f:
        reader = csv.DictReader(f)
        if column not in (reader.fieldnames or []) or "name" not in (reader.fieldnames or []):
            raise ValueError(f"{csv_path} lacks the column 'name' or {column!r}; was it written by this toolkit?")
        values = {}
        for row in reader:
            text = (row[column] or "").strip()
            key = OVERALL if row.get("class") == OVERALL else row["name"]
            values[key] = float(text) if text else math.nan
    return values


def read_counts(model_folder: str | Path) -> Optional[Dict[str, tuple]]:
    """``{class name: (correct, images)}`` (plus ``'all'``) from ``accuracy.csv``, or ``None`` without the file or
    its count columns (an accuracy interval needs the counts, not only the percentage)."""
    csv_path, _ = metric_paths(model_folder, "accuracy")
    if not csv_path.is_file():
        return None
    with csv_path.open(newline="") as f:
        reader = csv.DictReader(f)
        if not {"name", "correct", "images"} <= set(reader.fieldnames or []):
            return None
        counts = {}
        for row in reader:
            key = OVERALL if row.get("class") == OVERALL else row["name"]
            if (row["correct"] or "").strip() and (row["images"] or "").strip():
                counts[key] = (int(row["correct"]), int(row["images"]))
    return counts


def read_predictions(model_folder: str | Path, metric: str = "accuracy") -> Optional[Dict[str, tuple]]:
    """``{image file name: (true class index, predicted class index)}`` recorded in ``<metric>.json`` (key
    ``predictions``; ``accuracy`` or ``attack``) by the accuracy writers, or ``None`` when absent. Paired drops
    between two models use the images both have under the same name (same case and seed)."""
    _, json_path = metric_paths(model_folder, metric)
    if not json_path.is_file():
        return None
    stored = json.loads(json_path.read_text()).get("predictions")
    if not isinstance(stored, dict):
        return None
    return {str(name): (int(pair[0]), int(pair[1])) for name, pair in stored.items()}
