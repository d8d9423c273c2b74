"""Original-vs-edited image comparison per class: LPIPS and FID, stored in the edited folder's ``results/``.

:func:`compare_folders` is what ``eval-scripts/lpips_eval.py`` runs; other pipelines (e.g. the tiny-world
reproduction) call it with their own FID feature extractor. Networks are built through factories only when a
result has to be (re)computed; unchanged inputs reuse the stored ``lpips.csv`` / ``fid.csv``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import torch

from sepce.classes import ConceptClass

from .common import fingerprint
from .fid import INCEPTION_IMAGE_SIZE, FeatureExtractor, fid_per_class
from .images import PairReport, pair_images
from .lpips_metric import LPIPS_IMAGE_SIZE, lpips_per_class, summarize
from .results import stored_rows, write_metric

log = logging.getLogger(__name__)

LPIPS_COLUMNS = ["class", "name", "pairs", "lpips", "lpips_std"]
FID_COLUMNS = ["class", "name", "original", "edited", "fid"]


def lpips_rows(classes: Sequence[ConceptClass], distances: Mapping[int, List[float]]) -> List[dict]:
    """Per-class mean/std LPIPS rows and an ``all`` row over every pair."""
    rows = []
    for c in classes:
        mean, std = summarize(distances.get(c.index, []))
        rows.append(
            {
                "class": c.index,
                "name": c.name,
                "pairs": len(distances.get(c.index, [])),
                "lpips": mean,
                "lpips_std": std,
            }
        )
    every = [v for values in distances.values() for v in values]
    mean, std = summarize(every)
    rows.append({"class": "all", "name": "overall", "pairs": len(every), "lpips": mean, "lpips_std": std})
    return rows


def fid_rows(classes: Sequence[ConceptClass], results: Mapping[int, dict]) -> List[dict]:
    """Per-class FID rows (empty where a class has fewer than 2 images a side) and an ``all`` row."""
    rows = []
    for c in classes:
        entry = results.get(c.index, {"fid": math.nan, "original": 0, "edited": 0})
        rows.append({"class": c.index, "name": c.name, **entry})
    rows.append({"class": "all", "name": "overall", **results[-1]})
    return rows


def compare_folders(
    original: Path,
    edited: Path,
    case_to_class: Mapping[int, int],
    classes: Sequence[ConceptClass],
    device: torch.device,
    metrics: Sequence[str] = ("lpips", "fid"),
    lpips_factory: Optional[Callable[[], torch.nn.Module]] = None,
    fid_factory: Optional[Callable[[], FeatureExtractor]] = None,
    settings: Optional[dict] = None,
    batch_size: int = 50,
    lpips_image_size: int = LPIPS_IMAGE_SIZE,
    fid_image_size: int = INCEPTION_IMAGE_SIZE,
    overwrite: bool = False,
    pairs: Optional[PairReport] = None,
) -> Dict[str, List[dict]]:
    """Compute (or reuse) LPIPS and/or FID of ``edited`` against ``original``; returns ``{metric: rows}``.

    ``settings`` describes the networks (weights files, pretrained or not) and goes into the results'
    fingerprint together with the image files and sizes. Unpaired files are logged as counted warnings.
    """
    for metric in metrics:
        if metric not in ("lpips", "fid"):
            raise ValueError(f"unknown metric {metric!r}; expected 'lpips' or 'fid'")
        if (lpips_factory if metric == "lpips" else fid_factory) is None:
            raise ValueError(f"metric {metric!r} needs a network factory")
    report = pairs if pairs is not None else pair_images(original, edited, case_to_class)
    if pairs is None:
        for line in report.warnings():
            log.warning(line)
    signature = [
        (a.name, a.stat().st_size, a.stat().st_mtime_ns, b.stat().st_size, b.stat().st_mtime_ns)
        for class_pairs in report.pairs.values()
        for a, b in class_pairs
    ]  # by file name: sorting the folders into class folders later does not invalidate results
    base = {
        "original": str(original),
        "edited": str(edited),
        "images": signature,
        "classes": [c.name for c in classes],
        **(settings or {}),
    }
    keys = {
        "lpips": fingerprint({**base, "metric": "lpips", "image_size": lpips_image_size}),
        "fid": fingerprint({**base, "metric": "fid", "image_size": fid_image_size}),
    }
    stored = {metric: stored_rows(edited, metric, keys[metric], overwrite) for metric in metrics}
    meta = {"original": str(original), "edited": str(edited), "pairs": report.num_pairs, **(settings or {})}
    results = {}
    for metric in metrics:
        if stored[metric] is not None:
            log.info("%s: inputs unchanged, reusing stored %s results", edited, metric)
            results[metric] = stored[metric]
            continue
        if metric == "lpips":
            distances = lpips_per_class(lpips_factory(), report.pairs, device, batch_size, lpips_image_size)
            rows = lpips_rows(classes, distances)
            write_metric(
                edited,
                "lpips",
                rows,
                LPIPS_COLUMNS,
                {**meta, "image_size": lpips_image_size, "fingerprint": keys["lpips"]},
            )
        else:
            left = {c: [a for a, _ in p] for c, p in report.pairs.items()}
            right = {c: [b for _, b in p] for c, p in report.pairs.items()}
            fids = fid_per_class(left, right, fid_factory(), device, fid_image_size, batch_size)
            rows = fid_rows(classes, fids)
            write_metric(
                edited,
                "fid",
                rows,
                FID_COLUMNS,
                {**meta, "image_size": fid_image_size, "fingerprint": keys["fid"]},
            )
        results[metric] = rows
    return results
