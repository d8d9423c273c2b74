"""Protocol v2's per-image measures of a model folder (docs/world-benchmark.md, "Measures"): CRA predictions and
image quality against ground-truth renders and against the original.

- **CRA images** (``a <object> in the style of <style>``): the world classifier's style AND object prediction of
  every image, recorded per image in ``results/cra.json`` (UA/IRA in context from the style head, CRA from the
  object head; :mod:`sepce.world.analysis` pools them).
- **Quality** (``results/quality.json``): per style image, the world feature distance to a ground-truth render of
  the same style (:func:`render_for`: a fixed render seed, a random object, as many renders as images) and to the
  original model's image of the same name (same prompt and seed; the "LPIPS" of the world); and the FID of the
  classifier's pooled features against the renders, with a bootstrap interval over images.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from sepce.evaluation.common import fingerprint
from sepce.evaluation.fid import fid_from_features
from sepce.evaluation.images import index_images, parse_image_name
from sepce.evaluation.loading import load_images
from sepce.evaluation.results import OVERALL, metric_paths, stored_rows, write_metric
from sepce.evaluation.verify import verify_folders
from sepce.prompt_csv import PromptRow
from sepce.stats import BOOTSTRAP_DRAWS, Estimate, percentile_interval
from sepce.world.concept_classifier import WorldClassifier, feature_distance
from sepce.world.render import OBJECTS, STYLES, Scene, render

RENDER_SEED = 20  # the ground-truth renders' master seed (fixed before any v2 run)
IMAGE_SIZE = 64
OVERALL_ROW = {"class": OVERALL, "name": "overall"}
QUALITY_DRAWS = 1000  # bootstrap draws of the FID interval (each a 128-d Fréchet distance)


def render_for(style: str, index: int, size: int = IMAGE_SIZE) -> np.ndarray:
    """The ``index``-th ground-truth render of ``style`` (uint8 H×W×3): scene seed and object drawn from
    SHA-256 of (RENDER_SEED, style, index), so every folder is compared with the same renders."""
    digest = hashlib.sha256(f"sepce-render|{RENDER_SEED}|{style}|{index}".encode()).digest()
    seed = int.from_bytes(digest[:8], "big") & (2**63 - 1)
    return render(Scene(style, OBJECTS[digest[8] % len(OBJECTS)], seed), size)


def folder_rows(folder: Path, rows: Sequence[PromptRow]) -> List[Tuple[Path, PromptRow]]:
    """(image path, its prompt row) of every generated image in ``folder`` whose case is one of ``rows``."""
    index, _ = index_images(folder)
    by_case = {r.case_number: r for r in rows}
    out = []
    for name in sorted(index):
        parsed = parse_image_name(name)
        if parsed is not None and parsed[0] in by_case:
            out.append((index[name], by_case[parsed[0]]))
    return out


def _key(paths: Sequence[Path], classifier_id: str, **extra) -> str:
    return fingerprint(
        {"images": [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in paths], "net": classifier_id, **extra}
    )


@torch.no_grad()
def cra_results(folder: Path, rows: Sequence[PromptRow], classifier: WorldClassifier, classifier_id: str) -> dict:
    """Style and object predictions of a folder's CRA images → ``results/cra.json`` (``predictions``: name →
    [style, predicted style, object, predicted object]); reused when the images are unchanged."""
    verify_folders(folder)
    found = folder_rows(folder, rows)
    if not found:
        raise ValueError(f"{folder} holds no generated image of the CRA prompt CSV")
    paths = [p for p, _ in found]
    key = _key(paths, classifier_id)
    if stored_rows(folder, "cra", key, overwrite=True) is not None:
        return read_record(folder, "cra")
    classifier.eval()
    styles, objects = [], []
    for start in range(0, len(paths), 128):
        s, o = classifier(load_images(paths[start : start + 128], IMAGE_SIZE))
        styles += s.argmax(1).tolist()
        objects += o.argmax(1).tolist()
    predictions = {
        p.name: [r.class_index, s, int(r.extra["object"]), o] for (p, r), s, o in zip(found, styles, objects)
    }
    meta = {"classifier": classifier_id, "images": len(paths), "predictions": predictions, "fingerprint": key}
    correct = sum(int(v[2] == v[3]) for v in predictions.values())
    rows_out = [{**OVERALL_ROW, "images": len(paths), "object_accuracy_pct": 100.0 * correct / len(paths)}]
    write_metric(folder, "cra", rows_out, ["class", "name", "images", "object_accuracy_pct"], meta)
    return meta


def read_record(folder: Path, metric: str) -> Optional[dict]:
    """The stored ``results/<metric>.json`` of a folder, or None when there is none."""
    path = metric_paths(folder, metric)[1]
    return json.loads(path.read_text()) if path.is_file() else None


def bootstrap_fid(a: np.ndarray, b: np.ndarray, draws: int = QUALITY_DRAWS, seed: int = 0) -> Estimate:
    """FID of feature sets ``a`` (model) and ``b`` (renders, paired by index) with a bias-corrected percentile
    bootstrap over images (pairs resampled together): the percentile interval shifted by the resamples' median
    excess over the estimate, floored at 0.

    A resample repeats images, which shrinks the feature covariances' rank and biases the resampled FID upwards;
    the plain percentile interval then can miss the estimate altogether (seen: 23.2 [24.8, 40.0]). Shifting by the
    bootstrap bias (Efron & Tibshirani 1993, §10.2) keeps the interval's width and puts the estimate inside it."""
    value = fid_from_features(a, b)
    rng = np.random.default_rng(seed)
    out = np.empty(draws)
    for j in range(draws):
        idx = rng.integers(0, len(a), len(a))
        out[j] = fid_from_features(a[idx], b[idx])
    lo, hi = percentile_interval(out)
    bias = float(np.median(out)) - value
    return Estimate(value, max(0.0, lo - bias), hi - bias)


def mean_interval(values: Sequence[float], draws: int = BOOTSTRAP_DRAWS, seed: int = 0) -> Estimate:
    """Mean of per-image values with a percentile bootstrap over images."""
    x = np.asarray(values, np.float64)
    if x.size == 0:
        return Estimate(float("nan"), float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(draws, x.size))].mean(axis=1)
    lo, hi = percentile_interval(means)
    return Estimate(float(x.mean()), lo, hi)


@torch.no_grad()
def quality_results(
    folder: Path,
    original: Path,
    rows: Sequence[PromptRow],
    classifier: WorldClassifier,
    classifier_id: str,
) -> dict:
    """Per-image feature distances to the renders and to the original's same-named image, and the FID against
    the renders with its bootstrap interval → ``results/quality.json`` (reused when the images are unchanged).
    ``rows``: the plan's evaluation CSV; the i-th row of a style is compared with that style's i-th render."""
    verify_folders(original, folder)
    found = folder_rows(folder, rows)
    if not found:
        raise ValueError(f"{folder} holds no generated image of the evaluation CSV")
    position: Dict[int, int] = {}
    counters: Dict[int, int] = {}
    for r in rows:
        position[r.case_number] = counters.get(r.class_index, 0)
        counters[r.class_index] = position[r.case_number] + 1
    paths = [p for p, _ in found]
    key = _key(paths, classifier_id, original=str(original), renders=RENDER_SEED)
    if stored_rows(folder, "quality", key, overwrite=True) is not None:
        return read_record(folder, "quality")
    classifier.eval()
    originals, _ = index_images(original)
    to_render, to_original, features, render_features = {}, {}, [], []
    for start in range(0, len(found), 128):
        chunk = found[start : start + 128]
        images = load_images([p for p, _ in chunk], IMAGE_SIZE)
        renders = np.stack([render_for(STYLES[r.class_index], position[r.case_number]) for _, r in chunk])
        renders = torch.from_numpy(renders).permute(0, 3, 1, 2).float() / 255.0
        for (p, _), d in zip(chunk, feature_distance(classifier, images, renders).tolist()):
            to_render[p.name] = d
        features.append(classifier.features(images).double().numpy())
        render_features.append(classifier.features(renders).double().numpy())
        same = [(i, originals[p.name]) for i, (p, _) in enumerate(chunk) if p.name in originals]
        if same and Path(original).resolve() != Path(folder).resolve():
            mine = images[[i for i, _ in same]]
            theirs = load_images([q for _, q in same], IMAGE_SIZE)
            for (i, _), d in zip(same, feature_distance(classifier, mine, theirs).tolist()):
                to_original[chunk[i][0].name] = d
    fid = bootstrap_fid(np.concatenate(features), np.concatenate(render_features))
    meta = {
        "classifier": classifier_id,
        "images": len(paths),
        "render_seed": RENDER_SEED,
        "fid_to_renders": fid.to_dict(),
        "distance_to_renders": to_render,
        "distance_to_original": to_original,
        "fingerprint": key,
    }
    summary = [{**OVERALL_ROW, "images": len(paths), "fid_to_renders": fid.value}]
    write_metric(folder, "quality", summary, ["class", "name", "images", "fid_to_renders"], meta)
    return meta
