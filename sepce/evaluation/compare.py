"""Original-vs-edited image comparison per class: LPIPS and FID, stored in the edited folder's ``results/``.

:func:`compare_folders` is what ``eval-scripts/lpips_eval.py`` runs; other pipelines (e.g. the tiny-world
reproduction) call it with their own FID feature extractor. Networks are built through factories only when a
result has to be (re)computed; unchanged inputs reuse the stored ``lpips.csv`` / ``fid.csv``.

Each FID result records which feature network made it under the ``network`` key of ``fid.json``
(:data:`~sepce.evaluation.fid.FID_INCEPTION_NETWORK` = ``"FID (pytorch-fid Inception)"`` for the paper-comparable
FID, :data:`~sepce.evaluation.fid.FID_WORLD_CLASSIFIER_NETWORK` = ``"FID (world classifier features)"`` for the
tiny-world benchmark), so tables can label the two apart.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import torch

from sepce.classes import ConceptClass

from .common import fingerprint
from .fid import FeatureExtractor, fid_per_class
from .images import PairReport, pair_images
from .lpips_metric import LPIPS_IMAGE_SIZE, lpips_per_class, summarize
from .results import stored_rows, write_metric
from .verify import verify_folders

log = logging.getLogger(__name__)

LPIPS_COLUMNS = ["class", "name", "pairs", "lpips", "lpips_std"]
FID_COLUMNS = ["class", "name", "original", "edited", "fid"]
METRICS = ("lpips", "fid")


def metric_settings(settings: Mapping[str, object], metric: str) -> dict:
    """The part of ``settings`` that describes ``metric``: keys prefixed with another metric's name are dropped.

    E.g. ``fid_size`` or ``fid_weights`` belong to FID only, so adding FID to a run does not invalidate stored
    LPIPS results.
    """
    others = tuple(f"{name}_" for name in METRICS if name != metric)
    return {key: value for key, value in settings.items() if not key.startswith(others)}


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


@dataclass(frozen=True)
class CompareSettings:
    """What :func:`compare_folders` measures and how.

    ``lpips_factory`` / ``fid_factory`` build the networks, only when a result has to be (re)computed;
    ``fid_network`` labels the FID feature network (recorded as ``network`` in ``fid.json``; e.g.
    :data:`~sepce.evaluation.fid.FID_INCEPTION_NETWORK`). ``fid_image_size`` None reads images at their stored
    size as pytorch-fid does (its Inception resizes by itself); an int resizes them first. ``info`` describes the
    networks (weights files, pretrained or not) and goes into the results' meta and fingerprint together with the
    image files and sizes; keys starting with ``lpips_`` or ``fid_`` go to that metric only
    (:func:`metric_settings`). ``progress``: progress bars while a metric is computed (scripts pass
    :func:`sepce.cli.show_progress`). ``overwrite``: replace stored results made from other inputs.
    """

    metrics: Sequence[str] = METRICS
    lpips_factory: Optional[Callable[[], torch.nn.Module]] = None
    fid_factory: Optional[Callable[[], FeatureExtractor]] = None
    fid_network: Optional[str] = None
    info: Mapping[str, object] = field(default_factory=dict)
    batch_size: int = 50
    lpips_image_size: int = LPIPS_IMAGE_SIZE
    fid_image_size: Optional[int] = None
    overwrite: bool = False
    progress: bool = True

    def validate(self) -> CompareSettings:
        """One line naming the bad value; returns ``self``."""
        if "network" in self.info:
            raise ValueError("settings may not set 'network'; the FID network label is fid_network")
        for metric in self.metrics:
            if metric not in METRICS:
                raise ValueError(f"unknown metric {metric!r}; expected 'lpips' or 'fid'")
            if (self.lpips_factory if metric == "lpips" else self.fid_factory) is None:
                raise ValueError(f"metric {metric!r} needs a network factory")
        if "fid" in self.metrics and not self.fid_network:
            raise ValueError("metric 'fid' needs fid_network, the label of its feature network")
        return self


def compare_folders(
    original: Path,
    edited: Path,
    case_to_class: Mapping[int, int],
    classes: Sequence[ConceptClass],
    device: torch.device,
    settings: CompareSettings,
    pairs: Optional[PairReport] = None,
) -> Dict[str, List[dict]]:
    """Compute (or reuse) LPIPS and/or FID of ``edited`` against ``original`` as ``settings`` say
    (:class:`CompareSettings`); returns ``{metric: rows}``. Both folders are checked first
    (:func:`~sepce.evaluation.verify.verify_folders`). ``pairs``: the image pairing when the caller already
    has it (else :func:`~sepce.evaluation.images.pair_images`); unpaired files are logged as counted warnings.
    """
    verify_folders(original, edited)
    s = settings.validate()
    metrics, batch_size, progress = s.metrics, s.batch_size, s.progress
    lpips_image_size, fid_image_size, fid_network = s.lpips_image_size, s.fid_image_size, s.fid_network
    info = dict(s.info)
    report = pairs if pairs is not None else pair_images(original, edited, case_to_class)
    if pairs is None:
        for line in report.warnings():
            log.warning(line)
    signature = [
        (a.name, a.stat().st_size, a.stat().st_mtime_ns, b.stat().st_size, b.stat().st_mtime_ns)
        for class_pairs in report.pairs.values()
        for a, b in class_pairs
    ]  # by file name: sorting the folders into class folders later does not invalidate results
    base = {"original": str(original), "edited": str(edited), "images": signature, "classes": [c.name for c in classes]}
    described = {
        "lpips": {**metric_settings(info, "lpips"), "image_size": lpips_image_size},
        "fid": {**metric_settings(info, "fid"), "image_size": fid_image_size, "network": fid_network},
    }
    keys = {metric: fingerprint({**base, **described[metric], "metric": metric}) for metric in METRICS}
    stored = {metric: stored_rows(edited, metric, keys[metric], s.overwrite) for metric in metrics}
    meta = {"original": str(original), "edited": str(edited), "pairs": report.num_pairs}
    results = {}
    for metric in metrics:
        if stored[metric] is not None:
            log.info("%s: inputs unchanged, reusing stored %s results", edited, metric)
            results[metric] = stored[metric]
            continue
        if metric == "lpips":
            distances = lpips_per_class(s.lpips_factory(), report.pairs, device, batch_size, lpips_image_size, progress)
            rows = lpips_rows(classes, distances)
            write_metric(
                edited,
                "lpips",
                rows,
                LPIPS_COLUMNS,
                {**meta, **described["lpips"], "fingerprint": keys["lpips"]},
            )
        else:
            left = {c: [a for a, _ in p] for c, p in report.pairs.items()}
            right = {c: [b for _, b in p] for c, p in report.pairs.items()}
            fids = fid_per_class(left, right, s.fid_factory(), device, fid_image_size, batch_size, progress)
            rows = fid_rows(classes, fids)
            write_metric(
                edited,
                "fid",
                rows,
                FID_COLUMNS,
                {**meta, **described["fid"], "fingerprint": keys["fid"]},
            )
        results[metric] = rows
    return results
