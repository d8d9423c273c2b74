"""The results table's intervals: Wilson ACC intervals from stored counts, paired drops from per-image predictions,
error bars and a legend that covers no data."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from sepce.classes import load_class_map
from sepce.evaluation.results import write_metric
from sepce.evaluation.table import ModelSpec, accuracy_drops, collect, plot_table, to_csv, to_markdown
from sepce.stats import paired_difference, wilson

COLUMNS = ["class", "name", "correct", "images", "accuracy_pct"]


def write_accuracy(folder, classes, outcomes):
    """outcomes[class index] = list of 0/1 per image (same order = same seed in every folder)."""
    rows, predictions = [], {}
    for c in classes:
        hits = outcomes.get(c.index, [])
        rows.append(
            {
                "class": c.index,
                "name": c.name,
                "correct": int(sum(hits)),
                "images": len(hits),
                "accuracy_pct": 100.0 * sum(hits) / len(hits) if hits else math.nan,
            }
        )
        for k, hit in enumerate(hits):
            predictions[f"{c.index * 100 + k}_0.png"] = [c.index, c.index if hit else (c.index + 1) % len(classes)]
    write_metric(folder, "accuracy", rows, COLUMNS, {"predictions": predictions})


@pytest.fixture()
def folders(tmp_path):
    classes = load_class_map()[:3]
    rng = np.random.default_rng(0)
    ori = {c.index: [int(x) for x in rng.random(16) < 0.9] for c in classes}
    erased = {**ori, 0: [int(x) for x in rng.random(16) < 0.2]}
    write_accuracy(tmp_path / "ori", classes, ori)
    write_accuracy(tmp_path / "erased", classes, erased)
    return tmp_path, classes, ori, erased


def test_accuracy_cells_carry_wilson_intervals(folders):
    root, classes, ori, erased = folders
    models = [ModelSpec("ORI", root / "ori", original=True), ModelSpec("X", root / "erased", [classes[0].name])]
    table = collect(models, classes)
    first = table.accuracy_intervals["X"][classes[0].name]
    expected = wilson(sum(erased[0]), 16).scaled(100)
    assert (first.value, first.low, first.high) == pytest.approx((expected.value, expected.low, expected.high))
    regular = table.accuracy_intervals["X"]["regular"]
    pooled = wilson(sum(erased[1]) + sum(erased[2]), 32).scaled(100)
    assert regular.low == pytest.approx(pooled.low) and regular.high == pytest.approx(pooled.high)
    markdown = to_markdown(table)
    assert f"{expected.value:.1f} [{expected.low:.0f}, {expected.high:.0f}]" in markdown
    rows = {r["model"]: r for r in csv.DictReader(to_csv(table).splitlines())}
    assert float(rows["X"][f"{classes[0].name} ACC low"]) == pytest.approx(expected.low, rel=1e-5)
    assert float(rows["X"]["regular avg ACC high"]) == pytest.approx(pooled.high, rel=1e-5)


def test_drops_pair_images_by_name(folders):
    root, classes, ori, erased = folders
    drops = accuracy_drops(root / "ori", root / "erased", classes)
    expected = paired_difference(ori[0], erased[0]).scaled(100)
    assert drops[classes[0].name] == expected
    assert drops[classes[1].name].value == 0.0 and drops[classes[1].name].high == 0.0
    assert accuracy_drops(root / "ori", root / "nowhere", classes) == {}


def test_chart_has_error_bars_and_a_legend_outside_the_panels(folders, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    root, classes, _, _ = folders
    models = [ModelSpec("ORI", root / "ori", original=True), ModelSpec("X", root / "erased", [classes[0].name])]
    table = collect(models, classes)
    captured = {}
    monkeypatch.setattr(plt, "close", lambda fig: captured.setdefault("fig", fig))
    path = plot_table(table, root / "chart.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    fig = captured["fig"]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legend = fig.legends[0].get_window_extent(renderer)
    for ax in fig.axes:
        assert not legend.overlaps(ax.get_window_extent(renderer)), "the legend covers a panel"
    top_left = fig.axes[0]
    assert any(c.__class__.__name__ == "ErrorbarContainer" for c in top_left.containers)
