"""Benchmark statistics (sepce.world.analysis) on synthetic predictions: pooled drops equal the direct means,
intervals bracket them, verdicts follow the intervals, restored/attack columns read the right folders."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from sepce.classes import ConceptClass
from sepce.evaluation.results import write_metric
from sepce.world.analysis import Evaluated, contact_sheet, model_report, outcomes, paired_matrix, summarise_method

CLASSES = [ConceptClass(i, n, f"in the style of {n}") for i, n in enumerate(["a", "b", "c", "d"])]
SEEDS = 16


def write(folder, correct: dict, metric: str = "accuracy"):
    """correct[style] = 0/1 array over seeds; image names k*10+class index so styles never share a name."""
    predictions = {}
    for c in CLASSES:
        for k, hit in enumerate(correct[c.name]):
            predictions[f"{k * 10 + c.index}_0.png"] = [c.index, c.index if hit else (c.index + 1) % len(CLASSES)]
    write_metric(folder, metric, [], ["class"], {"predictions": predictions})
    return folder


def draw(rng, p):
    return (rng.random(SEEDS) < p).astype(int)


@pytest.fixture()
def sweep(tmp_path):
    rng = np.random.default_rng(0)
    ori = write(tmp_path / "ori", {c.name: draw(rng, 0.95) for c in CLASSES})
    models = []
    for style in ("a", "b"):
        for seed in (0, 1):
            acc = {c.name: draw(rng, 0.1 if c.name == style else 0.9) for c in CLASSES}
            folder = write(tmp_path / f"m-{style}-{seed}", acc)
            attack = write(folder, {c.name: draw(rng, 0.6) for c in CLASSES}, "attack")
            models.append(Evaluated(f"M {style}", "M", folder, (style,), (), style, seed, attack))
    return tmp_path, ori, models


def test_pooled_numbers_equal_direct_means(sweep):
    root, ori_folder, models = sweep
    ori = outcomes(ori_folder, CLASSES)
    summary = summarise_method("M", models, ori, CLASSES, held_out=("d",), draws=300)
    names = [c.name for c in CLASSES]
    mats = {m.folder: paired_matrix(ori, outcomes(m.folder, CLASSES), names) for m in models}

    def per_unit(fn):
        units = {}
        for m in models:
            units.setdefault(m.unit, []).append(fn(m))
        return np.mean([np.mean(v) for v in units.values()])

    erased = per_unit(lambda m: mats[m.folder][:, names.index(m.erased[0])].mean())
    others = lambda m: [names.index(s) for s in names if s not in m.erased and s != "d"]  # noqa: E731
    assert summary.erased_drop.value == pytest.approx(erased)
    assert summary.other_mean_drop.value == pytest.approx(per_unit(lambda m: mats[m.folder][:, others(m)].mean()))
    assert summary.other_max_drop.value == pytest.approx(
        per_unit(lambda m: mats[m.folder][:, others(m)].mean(axis=0).max())
    )
    for est in (summary.erased_drop, summary.other_mean_drop, summary.attack_accuracy):
        assert est.low <= est.value <= est.high
    assert summary.units == 2 and summary.runs == 4
    assert math.isnan(summary.restored_drop.value)  # nothing restored
    assert "d" not in summary.per_style_collateral
    # collateral on "a" pools only the models that did not erase it
    a_only = [m for m in models if m.erased != ("a",)]
    direct = np.mean([mats[m.folder][:, 0].mean() for m in a_only])
    assert summary.per_style_collateral["a"].value == pytest.approx(direct)
    assert 40 <= summary.attack_accuracy.value <= 80
    assert summary.erased_verdict == "erased"


def test_model_report_verdicts_follow_intervals(sweep):
    root, ori_folder, models = sweep
    ori = outcomes(ori_folder, CLASSES)
    report = model_report(models[0], ori, CLASSES)
    assert set(report.drop) == {"a", "b", "c", "d"}
    assert report.erased_verdicts == {"a": "erased"}
    assert report.other_verdict in {"spared", "undecided", "damaged"}
    assert set(report.attack) == {"a"}
    same = model_report(Evaluated("ORI again", "ORI", ori_folder, ("a",)), ori, CLASSES)
    assert same.drop["b"].value == 0 and same.other_verdict == "spared"
    assert same.erased_verdicts == {"a": "not erased"} and not same.meets_aim


def test_missing_predictions_fail_with_one_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="no recorded predictions"):
        outcomes(tmp_path, CLASSES)


def test_contact_sheet_one_row_per_model(tmp_path):
    for color, name in (("red", "x.png"), ("blue", "y.png")):
        Image.new("RGB", (64, 64), color).save(tmp_path / name)
    sheet = contact_sheet(
        [("ORI", "x.png"), ("M", "y.png")], ["a", "b"], lambda folder, style: tmp_path / folder, label_width=100
    )
    assert sheet.size == (100 + 2 * 66 + 2, 14 + 2 * 66 + 2)
    assert sheet.getpixel((100 + 2 + 10, 14 + 2 + 10)) == (255, 0, 0)
    assert sheet.getpixel((100 + 2 + 10, 14 + 2 + 66 + 10)) == (0, 0, 255)
