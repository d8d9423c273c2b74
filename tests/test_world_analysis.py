"""Benchmark statistics (sepce.world.analysis, protocol v2) on synthetic predictions: pooled drops equal the direct
means, their intervals are never narrower than the exact bound, verdicts follow the one rule, collateral pools only
the runs that did not erase a style (held-out styles included), UA/IRA/CRA count the right images, and paired method
differences follow the paired t test with Holm's adjustment."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from sepce.classes import ConceptClass
from sepce.evaluation.results import write_metric
from sepce.stats import clopper_pearson, exact_drop, holm, paired_t, t_interval
from sepce.world.analysis import (
    Evaluated,
    Run,
    contact_sheet,
    load_run,
    outcomes,
    pair_differences,
    per_style_values,
    pooled_drop,
    row_result,
)

CLASSES = [ConceptClass(i, n, f"in the style of {n}") for i, n in enumerate(["a", "b", "c", "d"])]
SEEDS = 16


def write(folder, correct: dict, metric: str = "accuracy", offset: int = 0):
    """correct[style] = 0/1 array over seeds; image names (offset+k)*10+class index so styles never share a name."""
    predictions = {}
    for c in CLASSES:
        for k, hit in enumerate(correct[c.name]):
            name = f"{(offset + k) * 10 + c.index}_0.png"
            predictions[name] = [c.index, c.index if hit else (c.index + 1) % len(CLASSES)]
    write_metric(folder, metric, [], ["class"], {"predictions": predictions})
    return folder


def write_cra(folder, style_hits: dict, object_hits: dict):
    """CRA predictions: per style, one image per entry of the hit arrays (object index = position)."""
    predictions = {}
    for c in CLASSES:
        for j, (s_hit, o_hit) in enumerate(zip(style_hits[c.name], object_hits[c.name])):
            predictions[f"{c.index * 100 + j}_0.png"] = [c.index, c.index if s_hit else 99, j, j if o_hit else 99]
    write_metric(folder, "cra", [], ["class"], {"predictions": predictions})
    return folder


def draw(rng, p):
    return (rng.random(SEEDS) < p).astype(int)


@pytest.fixture()
def sweep(tmp_path):
    """The original on two seed blocks; method M erases a and b with training seeds 0, 1 (seed i on block i)."""
    rng = np.random.default_rng(0)
    ori = tmp_path / "ori"
    both = {c.name: np.r_[draw(rng, 0.95), draw(rng, 0.95)] for c in CLASSES}
    write(ori, both)
    models = []
    for style in ("a", "b"):
        for seed in (0, 1):
            acc = {c.name: draw(rng, 0.1 if c.name == style else 0.9) for c in CLASSES}
            folder = write(tmp_path / f"m-{style}-{seed}", acc, offset=SEEDS * seed)
            attack = write(folder, {c.name: draw(rng, 0.6) for c in CLASSES}, "attack", offset=SEEDS * seed)
            cra = write_cra(tmp_path / f"cra-{style}-{seed}", acc, {c.name: draw(rng, 0.75) for c in CLASSES})
            models.append(Evaluated(f"M {style}", "M", folder, (style,), (), style, seed, attack, cra))
    return tmp_path, ori, models


def test_pooled_drop_is_the_pooled_mean_and_never_narrower_than_exact(sweep):
    root, ori_folder, models = sweep
    ori = outcomes(ori_folder, CLASSES)
    runs = [load_run(m, CLASSES) for m in models if m.erased == ("a",)]
    pooled = pooled_drop(ori, runs, "a")
    drop, images = pooled.drop, pooled.images
    names = [sorted(set(ori["a"]) & set(r.styles["a"])) for r in runs]
    a = sum(ori["a"][n] for ns in names for n in ns)
    k = sum(r.styles["a"][n] for r, ns in zip(runs, names) for n in ns)
    assert images == 2 * SEEDS and (pooled.original_right, pooled.model_right) == (a, k)
    assert drop.value == pytest.approx(100 * (a - k) / images)
    exact = exact_drop(int(a), int(k), images)
    assert drop.low <= exact.low and drop.high >= exact.high  # the hull contains the exact interval
    per_run = [100 * np.mean([ori["a"][n] - r.styles["a"][n] for n in ns]) for r, ns in zip(runs, names)]
    half = 12.706 * np.std(per_run, ddof=1) / np.sqrt(2)  # t(0.975, 1): two runs
    low, high = (
        max(np.mean(per_run) - half, 100 * (a - images) / images),
        min(np.mean(per_run) + half, 100 * a / images),
    )
    assert drop.low <= low + 1e-3 and drop.high >= high - 1e-3  # the t interval, within what a drop can be


def test_pooled_drop_stays_within_what_a_drop_can_be():
    """Five runs whose drops spread widely: the t interval over runs reaches past 100 points (and below 0), but a
    drop on images the original gets all right lies in [0, 100]; where the original misses some, in
    [100 (a - n) / n, 100 a / n]. The exact interval is still inside."""
    names = [f"{i}_0.png" for i in range(16 * 5)]
    drops = (14, 16, 16, 9, 15)  # erased-model misses per run of 16 images (drops 87.5 ... 56.2 points)
    runs = []
    for r, misses in enumerate(drops):
        block = names[16 * r : 16 * (r + 1)]
        styles = {"a": {m: float(i >= misses) for i, m in enumerate(block)}}
        runs.append(Run(None, styles, {}, {}, {}))
    for original_hits in (80, 76):
        original = {"a": {m: float(i < original_hits) for i, m in enumerate(names)}}
        pooled = pooled_drop(original, runs, "a")
        drop, images = pooled.drop, pooled.images
        a, k = original_hits, sum(sum(r.styles["a"].values()) for r in runs)
        per_run = [
            100 * (sum(original["a"][m] for m in r.styles["a"]) - sum(r.styles["a"].values())) / 16 for r in runs
        ]
        assert t_interval(per_run).high > 100 * a / images  # the between-run interval alone runs past the range
        assert drop.high == pytest.approx(100 * a / images) and drop.low >= 100 * (a - images) / images
        exact = exact_drop(a, int(k), images)
        assert drop.low <= exact.low and drop.high >= exact.high - 1e-9


def test_row_judges_each_erased_style_and_every_other_style(sweep):
    root, ori_folder, models = sweep
    ori = outcomes(ori_folder, CLASSES)
    row = row_result("M", models, ori, CLASSES)
    assert [v.style for v in row.erased] == ["a", "b"] and row.runs == 4
    assert all(v.runs == 2 and v.images == 2 * SEEDS for v in row.erased)  # per erased style, its own runs only
    # collateral: every style, held-out ones included; a and b pooled over the runs that did not erase them
    assert [v.style for v in row.collateral] == ["a", "b", "c", "d"]
    assert row.drop_of("c").runs == 4 and [v.runs for v in row.collateral[:2]] == [2, 2]
    for v in row.erased:
        assert v.verdict == ("erased" if v.drop.low >= 50 else "not erased" if v.drop.high < 50 else "undecided")
    for v in row.collateral:
        expected = "spared" if v.drop.high <= 10 else "damaged" if v.drop.low > 10 else "undecided"
        assert v.verdict == expected
    # 64 images per pooled collateral style at p = 0.9 cannot be spared: its exact upper bound is above 10
    assert row.spares != "yes" and row.aim != "yes"
    # UA: erased-style images not classified as it; IRA: every other style's images; CRA: the object head
    runs = [load_run(m, CLASSES) for m in models]
    miss = sum(1 - v for r in runs for s in r.model.erased for v in r.styles[s].values())
    assert row.ua.images == 4 * SEEDS and row.ua.estimate.value == pytest.approx(100 * miss / (4 * SEEDS))
    cp = clopper_pearson(int(4 * SEEDS - miss), 4 * SEEDS)
    assert row.ua.estimate.low == pytest.approx(100 - 100 * cp.high)
    assert row.ira.images == 4 * 3 * SEEDS and row.cra.images == 4 * 4 * SEEDS
    objects = sum(v[1] for r in runs for values in r.context.values() for v in values.values())
    assert row.cra.estimate.value == pytest.approx(100 * objects / (16 * SEEDS))
    assert [a.style for a in row.attack] == ["a", "b"] and row.attack[0].accuracy.images == 2 * SEEDS


def test_one_model_row_and_an_original_that_erased_nothing(sweep):
    root, ori_folder, models = sweep
    ori = outcomes(ori_folder, CLASSES)
    single = row_result("M a 0", models[:1], ori, CLASSES)
    assert [v.style for v in single.erased] == ["a"] and single.erased[0].images == SEEDS
    same = row_result("ORI again", [Evaluated("ORI again", "ORI", ori_folder, ("a",))], ori, CLASSES)
    assert same.drop_of("b").drop.value == 0
    assert same.erased[0].verdict == "not erased" and same.aim == "no"
    # 32 error-free paired images are not enough for spared (exact bound 10.9 > 10)
    assert same.drop_of("b").drop.high >= 100 * (1 - clopper_pearson(32, 32).low) - 1e-9
    assert same.drop_of("b").verdict in {"undecided", "spared"}


def test_a_mean_over_styles_is_never_narrower_than_exact(sweep):
    """The summary columns (mean drop over styles): the t interval over the per-style values, hulled with the
    exact drop interval of all the styles' pooled images, so styles that all lose exactly nothing (t interval
    [0, 0]) still get the exact upper bound of their images."""
    root, ori_folder, models = sweep
    ori = outcomes(ori_folder, CLASSES)
    row = row_result("M", models, ori, CLASSES)
    others = row.collateral
    between = t_interval([v.drop.value for v in others])
    exact = exact_drop(
        sum(v.original_right for v in others), sum(v.model_right for v in others), 6 * 2 * SEEDS + 2 * 4 * SEEDS
    )
    summary = row.collateral_drop
    assert summary.value == pytest.approx(between.value)
    assert summary.low <= min(between.low, exact.low) + 1e-9 and summary.high >= max(between.high, exact.high) - 1e-9
    # every style of the original against itself: each drop is 0 on every image, the t interval has width 0
    all_right = {c.name: np.ones(2 * SEEDS, int) for c in CLASSES}
    same_folder = write(root / "all-right", all_right)
    nothing = row_result("ORI", [Evaluated("ORI", "ORI", same_folder, ("a",))], outcomes(same_folder, CLASSES), CLASSES)
    assert all(v.drop.value == 0 for v in nothing.collateral) and t_interval([0.0, 0.0, 0.0]).high == 0
    bound = 100 * (1 - clopper_pearson(3 * 2 * SEEDS, 3 * 2 * SEEDS).low)  # 0 errors in 96 images: 3.8 points
    assert nothing.collateral_drop.high == pytest.approx(bound) and bound > 3


def test_paired_differences_follow_the_paired_t_test_and_holm(sweep):
    root, ori_folder, models = sweep
    ori = outcomes(ori_folder, CLASSES)
    values = per_style_values(models, ori, CLASSES)
    direct = {}
    for m in models:
        drop = pooled_drop(ori, [load_run(m, CLASSES)], m.erased[0]).drop.value
        direct.setdefault(m.erased[0], []).append(drop)
    assert values["erased drop"] == pytest.approx({s: np.mean(v) for s, v in direct.items()})
    table = {
        "X": {"erased drop": {"a": 90.0, "b": 70.0, "c": 80.0}, "collateral": {"a": 1.0, "b": 2.0, "c": 3.0}},
        "Y": {"erased drop": {"a": 50.0, "b": 40.0, "c": 45.0}, "collateral": {"a": 1.0, "b": 2.5, "c": 2.0}},
        "Z": {"erased drop": {"a": 91.0, "b": 69.0, "c": 82.0}, "collateral": {"a": 0.0, "b": 2.0, "c": 3.5}},
    }
    pairs = pair_differences(table, ["a", "b", "c"])
    drops = [d for d in pairs if d.measure == "erased drop"]
    assert [(d.a, d.b) for d in drops] == [("X", "Y"), ("X", "Z"), ("Y", "Z")]
    raw = [paired_t(list(table[d.a]["erased drop"].values()), list(table[d.b]["erased drop"].values())) for d in drops]
    assert [d.test.p_value for d in drops] == pytest.approx([t.p_value for t in raw])
    assert [d.test.adjusted_p for d in drops] == pytest.approx(holm([t.p_value for t in raw]))
    assert drops[1].verdict == "not distinguishable"
    assert all(d.test.pairs == 3 for d in pairs)
    few = pair_differences({"X": table["X"], "Y": {"erased drop": {"a": 1.0}, "collateral": {}}}, ["a", "b"])
    assert few[0].verdict == "too few styles (1)" and math.isnan(few[0].test.p_value)


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
