"""The pre-registered sampler rule (sepce/world/sampler_rule.py): each part of the rule on constructed predictions,
the choice order, and one end-to-end run on the shipped world model (2 seeds per held-out style, one cheap
candidate) through the script."""

import functools
import json

import numpy as np
import pytest

from sepce.cli import run as run_cli
from sepce.stats import wilson
from sepce.world import sampler_rule as R

NAMES = {0: "stripes", 4: "grid"}


def constructed(correct_ref: int, correct_candidate: int, n: int = 50):
    """Labels of two styles (n each), DDIM-50 predictions with ``correct_ref`` right per style and candidate
    predictions with ``correct_candidate`` right per style (wrong ones predict style 1)."""
    labels = np.array([0] * n + [4] * n)
    ref, cand = labels.copy(), labels.copy()
    for style in (0, 4):
        idx = np.flatnonzero(labels == style)
        ref[idx[correct_ref:]] = 1
        cand[idx[correct_candidate:]] = 1
    return labels, ref, cand


@pytest.mark.parametrize(
    "correct_ref, correct_candidate, inside",
    [(47, 47, True), (47, 42, True), (47, 41, False), (47, 50, False), (50, 47, True), (50, 46, False)],
)
def test_accuracy_part_is_the_wilson_interval_of_ddim50(correct_ref, correct_candidate, inside):
    labels, ref, cand = constructed(correct_ref, correct_candidate)
    result = R.evaluate("dpmpp_2m", 10, cand, ref, labels, 0.0, 1.0, NAMES)
    interval = wilson(correct_ref, 50)
    assert [s.reference for s in result.styles] == [interval, interval]
    assert (interval.low <= correct_candidate / 50 <= interval.high) == inside
    assert result.passes_accuracy == inside and result.evaluations == 20


def test_closeness_part_needs_distance_and_agreement():
    labels, ref, _ = constructed(50, 50)
    cand = ref.copy()
    assert R.evaluate("ddim", 25, cand, ref, labels, 0.25, 0.25, NAMES).passes_closeness
    assert not R.evaluate("ddim", 25, cand, ref, labels, 0.2501, 0.25, NAMES).passes_closeness
    cand[:10] = 1  # 90 % agree: still passes; 11 disagreements: fails
    assert R.evaluate("ddim", 25, cand, ref, labels, 0.1, 0.25, NAMES).agreement == pytest.approx(0.9)
    assert R.evaluate("ddim", 25, cand, ref, labels, 0.1, 0.25, NAMES).passes_closeness
    cand[10] = 1
    assert not R.evaluate("ddim", 25, cand, ref, labels, 0.1, 0.25, NAMES).passes_closeness


def test_choice_is_the_first_passing_candidate_else_ddim50():
    labels, ref, _ = constructed(48, 48)
    fail = R.evaluate("dpmpp_2m", 10, np.full_like(ref, 1), ref, labels, 0.0, 1.0, NAMES)
    ok15 = R.evaluate("dpmpp_2m", 15, ref, ref, labels, 0.5, 1.0, NAMES)
    ok20 = R.evaluate("dpmpp_2m", 20, ref, ref, labels, 0.1, 1.0, NAMES)
    result = R.RuleResult(50, 4.0, 1.0, R.evaluate(*R.REFERENCE, ref, ref, labels, 0.0, 1.0, NAMES))
    assert result.chosen == R.REFERENCE
    result.candidates = [fail, ok15, ok20]
    assert result.chosen == ("dpmpp_2m", 15)
    assert "**Chosen: DPM-Solver++(2M) 15**" in R.rule_markdown(result)
    result.candidates = [fail]
    assert "DDIM 50 stays" in R.rule_markdown(result)
    assert [c for c, _ in R.CANDIDATES] == ["dpmpp_2m"] * 5 + ["ddim"]
    assert [2 * s for _, s in R.CANDIDATES] == sorted(2 * s for _, s in R.CANDIDATES)


def test_held_out_rows_and_bad_settings(tmp_path):
    rows = R.held_out_rows(R.RuleSettings(tmp_path, 50))
    assert len(rows) == 100 and {r.prompt for r in rows} == {"in the style of grid", "in the style of stripes"}
    with pytest.raises(ValueError, match="--styles \\['plaid'\\]"):
        R.held_out_rows(R.RuleSettings(tmp_path, 2, styles=("plaid",)))
    with pytest.raises(ValueError, match="fewer than 101 seeds"):  # data/world/evaluate.csv: 100 per style
        R.held_out_rows(R.RuleSettings(tmp_path, 101))
    with pytest.raises(ValueError, match="--ddim_steps 9: the CompVis uniform DDIM"):
        R.RuleSettings(tmp_path, 2, candidates=(("ddim", 9),))


def test_rule_end_to_end_on_the_world_model(tmp_path, load_script, monkeypatch, capsys):
    """Two seeds per held-out style, one 4-step candidate: images on disk, the spread over different seeds is
    larger than the same-seed distance, the reference agrees with itself, and a re-run draws nothing new."""
    script = load_script("eval-scripts/world-sampler-rule.py")
    quick = functools.partial(R.RuleSettings, candidates=(("dpmpp_2m", 4),), reference=("ddim", 10))
    monkeypatch.setattr(script, "RuleSettings", quick)
    argv = ["--work_dir", str(tmp_path), "--seeds_per_style", "2", "--quiet"]
    result = run_cli(script.parse_args, script.main, argv)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddim-10", "dpmpp_2m-4", "rule.json", "rule.md"]
    assert len(list((tmp_path / "dpmpp_2m-4").glob("*.png"))) == 4
    (candidate,) = result.candidates
    assert 0 < candidate.distance < result.spread and result.threshold == pytest.approx(result.spread / 4)
    assert result.reference.agreement == 1.0
    assert json.loads((tmp_path / "rule.json").read_text())["chosen"] == list(result.chosen)
    stamp = (tmp_path / "dpmpp_2m-4" / "0_0.png").stat().st_mtime_ns
    run_cli(script.parse_args, script.main, argv)
    assert (tmp_path / "dpmpp_2m-4" / "0_0.png").stat().st_mtime_ns == stamp
    assert "UNet evals / image" in capsys.readouterr().out
