"""Protocol v2's per-image measures (sepce.world.measures) on ground-truth renders with the shipped classifier:
renders are deterministic and show their style, a folder of the renders themselves is at distance 0 and FID 0 from
them, the distance to another folder is positive, CRA predictions carry the right labels, results are reused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from sepce.classes import load_class_map
from sepce.evaluation.fid import fid_from_features
from sepce.prompt_csv import read_prompt_csv
from sepce.world.benchmark import CLASS_MAP, cra_csv_text, eval_csv_text
from sepce.world.concept_classifier import load_classifier, predict
from sepce.world.measures import bootstrap_fid, cra_results, quality_results, read_record, render_for
from sepce.world.render import OBJECTS, STYLES, Scene, render

SEEDS = 3


@pytest.fixture(scope="module")
def classifier():
    return load_classifier()[0]


@pytest.fixture()
def rows(tmp_path):
    classes = load_class_map(CLASS_MAP)
    path = tmp_path / "evaluate.csv"
    path.write_text(eval_csv_text(classes, SEEDS))
    return read_prompt_csv(path, classes, require_class=True)


def save(folder, name, image):
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(folder / name)


def test_renders_are_fixed_and_show_their_style(classifier):
    a, b = render_for("waves", 0), render_for("waves", 0)
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
    assert not np.array_equal(render_for("waves", 0), render_for("waves", 1))
    images = np.stack([render_for(s, i) for s in STYLES for i in range(2)])
    found, _ = predict(classifier, torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255)
    assert float(np.mean(found == np.repeat(np.arange(len(STYLES)), 2))) >= 0.9


def test_quality_of_the_renders_themselves_and_of_another_folder(tmp_path, rows, classifier):
    model, other = tmp_path / "model", tmp_path / "other"
    position = {}
    for r in rows:
        i = position[r.class_index] = position.get(r.class_index, -1) + 1
        save(model, f"{r.case_number}_0.png", render_for(STYLES[r.class_index], i))
        save(other, f"{r.case_number}_0.png", render(Scene(STYLES[r.class_index], "star", 1000 + r.case_number)))
    itself = quality_results(model, model, rows, classifier, "test")
    assert itself["images"] == len(rows) == len(STYLES) * SEEDS
    assert max(itself["distance_to_renders"].values()) < 1e-6
    assert itself["fid_to_renders"]["value"] == pytest.approx(0.0, abs=1e-6)
    measured = quality_results(other, model, rows, classifier, "test")
    assert min(measured["distance_to_original"].values()) > 0
    assert measured["distance_to_original"] == pytest.approx(measured["distance_to_renders"])  # model = renders
    fid = measured["fid_to_renders"]
    assert fid["value"] > 0 and fid["high"] > fid["low"] > 0
    stamp = (other / "results" / "quality.json").stat().st_mtime_ns
    assert quality_results(other, model, rows, classifier, "test") == read_record(other, "quality")
    assert (other / "results" / "quality.json").stat().st_mtime_ns == stamp  # unchanged inputs: reused


def test_cra_predictions_carry_style_and_object_labels(tmp_path, classifier):
    classes = load_class_map(CLASS_MAP)
    path = tmp_path / "cra.csv"
    path.write_text(cra_csv_text(classes, len(OBJECTS)))
    rows = read_prompt_csv(path, classes, require_class=True)
    assert len(rows) == len(STYLES) * len(OBJECTS) and rows[9].prompt == "a square in the style of dots"
    folder = tmp_path / "cra"
    for r in rows:
        scene = Scene(STYLES[r.class_index], OBJECTS[int(r.extra["object"])], r.evaluation_seed)
        save(folder, f"{r.case_number}_0.png", render(scene))
    meta = cra_results(folder, rows, classifier, "test")
    values = list(meta["predictions"].values())
    assert [v[0] for v in values] == [r.class_index for r in sorted(rows, key=lambda r: f"{r.case_number}_0.png")]
    assert np.mean([v[0] == v[1] for v in values]) >= 0.9 and np.mean([v[2] == v[3] for v in values]) >= 0.85
    assert json.loads((folder / "results" / "cra.json").read_text())["images"] == len(rows)


def test_bootstrap_fid_brackets_the_fid():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(60, 8)), rng.normal(0.5, 1.0, size=(60, 8))
    est = bootstrap_fid(a, b, draws=200)
    assert est.value == pytest.approx(fid_from_features(a, b))
    assert est.low < est.value < est.high
    # few images for their dimension: resampling repeats images and biases the resampled FID upwards, so the plain
    # percentile interval lies above the estimate; the basic interval must still contain it
    wide_a, wide_b = rng.normal(size=(40, 32)), rng.normal(0.2, 1.0, size=(40, 32))
    resampled = [fid_from_features(wide_a[i], wide_b[i]) for i in rng.integers(0, 40, size=(100, 40))]
    assert np.quantile(resampled, 0.025) > fid_from_features(wide_a, wide_b)  # the bias the fix is for
    wide = bootstrap_fid(wide_a, wide_b, draws=200)
    assert 0.0 <= wide.low <= wide.value <= wide.high
