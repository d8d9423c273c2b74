"""The world classifier and the world benchmark (sepce/world/concept_classifier.py, sepce/world/benchmark.py,
eval-scripts/world-benchmark.py); includes the CI check that the shipped model still draws its styles."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_script

from sepce.classes import load_class_map
from sepce.pipeline.steps import dependencies
from sepce.world import OBJECTS, STYLES, build_prompt, make_arrays
from sepce.world.benchmark import (
    CLASS_MAP,
    DEFAULT_SEPCE,
    FORMS,
    HELD_OUT,
    PRESETS,
    SWEEP_ATTACK_SEEDS,
    SWEEP_SEEDS,
    SWEEP_TRIPLES,
    WORLD_METHODS,
    benchmark_layout,
    concept_prompts,
    evaluation_prompts,
    expand_preset,
    plan_benchmark,
    reported_styles,
    single_cells,
    sweep_cells,
)
from sepce.world.concept_classifier import (
    accuracies,
    feature_distance,
    load_classifier,
    predict,
    save_classifier,
    to_unit_images,
)
from sepce.world.model import load_world_model, sample_images

#: The shipped model's accuracy on its own generations must not fall below this (styles, %).
ORI_STYLE_ACCURACY = 90.0


@pytest.fixture(scope="module")
def classifier():
    return load_classifier()[0]


def test_classifier_recognises_fresh_renders(classifier):
    data = make_arrays(128, seed=4242)
    acc = accuracies(classifier, data.images, data.style, data.object)
    assert acc["style_pct"] >= 95.0 and acc["object_pct"] >= 90.0, acc


def test_feature_distance_is_a_semimetric_on_pairs(classifier):
    x = to_unit_images(make_arrays(6, seed=7).images)
    y = x.flip(0)
    d_xy, d_yx, d_xx = (
        feature_distance(classifier, x, y),
        feature_distance(classifier, y, x),
        feature_distance(classifier, x, x),
    )
    assert torch.equal(d_xx, torch.zeros(6, dtype=torch.float64))
    assert torch.allclose(d_xy, d_yx) and (d_xy > 0).all()
    assert torch.allclose(feature_distance(classifier, x[:2], y[:2]), d_xy[:2])  # no batch coupling (eval BN)


def test_classifier_file_round_trip_and_refusals(tmp_path, classifier):
    path = save_classifier(tmp_path / "c.safetensors", classifier, {"note": "copy"})
    again, info = load_classifier(path)
    x = torch.rand(4, 3, 64, 64)
    assert all(torch.equal(a, b) for a, b in zip(classifier(x), again(x)))
    assert info["info"] == {"note": "copy"} and info["styles"] == list(STYLES)
    with pytest.raises(FileNotFoundError, match="train-world-classifier"):
        load_classifier(tmp_path / "missing.safetensors")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, str(tmp_path / "other.safetensors"), metadata={"format": "x"})
    with pytest.raises(ValueError, match="not a world classifier"):
        load_classifier(tmp_path / "other.safetensors")


def test_shipped_model_still_reaches_its_original_accuracy(classifier):
    """CI check: the shipped model draws the style it is prompted with (fixed seeds, 4 per style, the benchmark's
    guidance 7.5; docs/world-benchmark.md reports 96.9 % here), and objects well above chance (12.5 %)."""
    model = load_world_model()
    prompts = [build_prompt(s, None) for s in STYLES for _ in range(4)]
    images = sample_images(model, prompts, list(range(len(prompts))), steps=20, guidance=7.5)
    styles, _ = predict(classifier, to_unit_images(images))
    accuracy = 100.0 * float(np.mean(styles == np.repeat(np.arange(len(STYLES)), 4)))
    assert accuracy >= ORI_STYLE_ACCURACY, accuracy
    objects = [build_prompt(None, o) for o in OBJECTS for _ in range(4)]
    _, found = predict(
        classifier, to_unit_images(sample_images(model, objects, list(range(32)), steps=20, guidance=7.5))
    )
    assert float(np.mean(found == np.repeat(np.arange(len(OBJECTS)), 4))) >= 0.5


def test_plan_names_the_presets_and_the_model_geometry(tmp_path):
    lay = benchmark_layout(tmp_path / "work")
    cells = single_cells(list(WORLD_METHODS), "waves", ["waves", "dots", "rings"])
    plan = plan_benchmark(lay, FORMS["full"], cells)
    steps = plan.steps
    by_name = {s.name: s for s in steps}
    esd = next(s for s in steps if s.stage == "erase" and s.name.startswith("ESD"))
    assert esd.argv[esd.argv.index("--image_size") + 1] == "128"  # ESD samples image_size/8 = 16-px latents
    cie = next(s for s in steps if s.stage == "erase" and s.name.startswith("CiE"))
    assert all(flag in cie.argv for flag in PRESETS["CiE"]) and cie.argv[cie.argv.index("--seed") + 1] == "0"
    assert [c.label for c in plan.cells] == [
        "ORI",
        "CiE",
        "SepCE",
        "SepCE (restore rings)",
        "SepCE (restore dots+rings)",
        "ESD",
        "FMN (authors' variant)",
        "AC (authors' variant)",
        "UCE",
        "FMN (original)",
        "AC (original)",
    ]
    outputs = [Path(s.argv[s.argv.index("--output_dir") + 1]).name for s in steps if s.stage == "erase"]
    assert outputs[:3] == ["CiE-waves-seed0", "SepCE-waves+dots+rings-seed0", "ESD-waves-seed0"]
    # world templates: FMN compares the class prompt with it minus the style word; AC anchors to the blank caption
    fmn = next(s for s in steps if s.stage == "erase" and s.name.startswith("FMN-waves"))
    assert fmn.argv[fmn.argv.index("--prompt") + 1] == "in the style of waves"
    assert fmn.argv[fmn.argv.index("--neutral_prompt") + 1] == "in the style of"
    ac = next(s for s in steps if s.stage == "erase" and s.name.startswith("AC-original"))
    assert ac.argv[ac.argv.index("--anchor_prompt") + 1] == "" and "--variant" in ac.argv
    uce = next(s for s in steps if s.stage == "erase" and s.name.startswith("UCE"))
    preserved = uce.argv[uce.argv.index("--preserve_concepts") + 1].split(";")
    assert "waves style" not in preserved and len(preserved) == len(STYLES) - 1 and "--seed" not in uce.argv
    assert "grid style" in preserved  # the training template of every other style, held-out ones included
    restore = next(c for c in plan.cells if c.label == "SepCE (restore rings)")
    gen = by_name[f"evaluation images of {restore.folder}"]
    assert gen.argv[gen.argv.index("--model_name") + 1] == "SepCE-waves+dots+rings-seed0"
    erase = gen.argv[gen.argv.index("--erase") + 1 : gen.argv.index("--erase") + 3]
    assert erase == concept_prompts(load_class_map(CLASS_MAP), ["waves", "dots"])
    # every erased style of every model is attacked, and each of them on the original (the ceiling)
    assert plan.attacked["default"] == ["waves", "dots", "rings"]
    assert plan.attacked[restore.folder] == ["waves", "dots"]
    data = {s.argv[s.argv.index("--prompt") + 1] for s in plan.setup if s.stage == "data"}
    assert data == {"", "in the style of waves", "in the style of dots", "in the style of rings"}
    csv_text = by_name["evaluation CSV"].content.splitlines()
    assert len(csv_text) == 1 + len(STYLES) * FORMS["full"].seeds_per_class
    cra = by_name["CRA prompt CSV"].content.splitlines()
    assert len(cra) == 1 + len(STYLES) * len(OBJECTS) and cra[1].split(",")[1] == "a circle in the style of stripes"
    assert any(s.name == "CRA images of SepCE-waves+dots+rings-seed0-restore-rings" for s in steps)
    short = plan_benchmark(lay, FORMS["short"], cells)
    assert not short.attacked and not any(s.stage == "attack" for s in short.steps)
    # every image the protocol draws uses the sampler the pre-registered rule chose (docs/world-benchmark.md)
    drawn = [s for s in short.steps if s.stage in ("data", "generate") and s.argv]
    assert {(s.argv[s.argv.index("--sampler") + 1], s.argv[s.argv.index("--ddim_steps") + 1]) for s in drawn} == {
        ("dpmpp_2m", "10")
    }
    # --device: every script trains and samples there (a GPU run of the whole protocol); the default is the CPU
    assert {s.argv[s.argv.index("--device") + 1] for s in steps if "--device" in s.argv} == {"cpu"}
    on_gpu = plan_benchmark(lay, FORMS["short"], cells, device="cuda").steps
    assert {s.argv[s.argv.index("--device") + 1] for s in on_gpu if "--device" in s.argv} == {"cuda"}
    assert {s.argv[s.argv.index("--devices") + 1] for s in on_gpu if s.stage == "erase"} == {"cuda"}
    sampled = [s for s in on_gpu if s.stage in ("data", "generate") and s.argv]
    assert sampled and all("--device" in s.argv for s in sampled)


def test_sweep_covers_every_reported_style_seed_and_triple(tmp_path):
    lay = benchmark_layout(tmp_path / "work")
    classes = load_class_map(CLASS_MAP)
    styles = reported_styles(classes)
    assert not set(styles) & set(HELD_OUT) and len(styles) == len(STYLES) - len(HELD_OUT)
    assert not set(SWEEP_TRIPLES[0]) & set(SWEEP_TRIPLES[1])  # disjoint triples of reported styles
    cells = sweep_cells(["CiE", "UCE", "SepCE"], styles, SWEEP_TRIPLES, SWEEP_SEEDS)
    runs = {c.run for c in cells if not c.original}
    assert len(runs) == len(styles) * len(SWEEP_SEEDS) + len(styles) + len(SWEEP_TRIPLES) * len(SWEEP_SEEDS)
    assert sum(c.original for c in cells) == 1  # the original's images are generated once and shared
    plan = plan_benchmark(lay, FORMS["sweep"], cells)
    assert not plan.table and len(plan.chains) == len(runs) + 1
    # protocol v2: training seed i on seed block i (16 seeds each); UCE's one run and the original on all 80
    spc, span = FORMS["sweep"].seeds_per_class, len(SWEEP_SEEDS)
    by_name = {s.name: s for s in plan.steps}
    assert len(by_name["evaluation CSV"].content.splitlines()) == 1 + len(STYLES) * spc * span
    for cell in cells:
        gen = by_name[f"evaluation images of {cell.folder}"]
        path = Path(gen.argv[gen.argv.index("--prompts_path") + 1])
        content = by_name["evaluation CSV" if path == lay.prompts_path else f"evaluation CSV {path.name}"].content
        expected = span if cell.original or cell.method == "UCE" else 1
        assert len(content.splitlines()) == 1 + len(STYLES) * spc * expected, cell.folder
        if cell.method == "CiE":
            assert path.name == f"evaluate-blocks{cell.seed}-{cell.seed}.csv"
    seeds_of = {}
    for cell in cells:
        if cell.method == "CiE" and cell.styles == ("waves",):
            gen = by_name[f"evaluation images of {cell.folder}"]
            text = by_name[f"evaluation CSV {Path(gen.argv[gen.argv.index('--prompts_path') + 1]).name}"].content
            seeds_of[cell.seed] = {line.split(",")[0] for line in text.splitlines()[1:]}  # cases
    assert len(set.union(*seeds_of.values())) == sum(map(len, seeds_of.values()))  # disjoint blocks
    attacked_seeds = {c.seed for c in cells if plan.attacked.get(c.folder) and not c.original}
    assert attacked_seeds == set(SWEEP_ATTACK_SEEDS)
    for chain in plan.chains:  # a chain trains first, then generates and attacks that run's models
        names = [s.name for s in chain]
        assert chain[0].stage == "erase" or chain[0].name == "evaluation images of default"
        for i, step in enumerate(chain):
            if step.stage == "attack":
                folder = step.argv[step.argv.index("--output_name") + 1]
                assert f"evaluation images of {folder}" in names[:i]
    # each model's metrics are a step of its own, after its images and attacks (and the original's metrics), so
    # they run beside other models' generation; the last metrics step comes after all of them
    steps = plan.steps
    after = dependencies(steps)
    index = {s.name: i for i, s in enumerate(steps)}

    def ancestors(i: int) -> set:
        seen, todo = set(), list(after[i])
        while todo:
            j = todo.pop()
            if j not in seen:
                seen.add(j)
                todo += after[j]
        return seen

    final = ancestors(index["accuracy, CRA, quality, feature distance and FID"])
    for cell in cells:
        own = index[f"metrics of {cell.folder}"]
        needed = {index[f"evaluation images of {cell.folder}"], index[f"CRA images of {cell.folder}"]}
        needed |= {i for i, s in enumerate(steps) if s.stage == "attack" and s.name.endswith(f" in {cell.folder}")}
        if not cell.original:
            needed.add(index["metrics of default"])
        assert needed <= ancestors(own) and own in final, cell.folder


def test_benchmark_refuses_bad_input(tmp_path):
    bad = run_script("eval-scripts/world-benchmark.py", "--concept", "paisley", "--work_dir", tmp_path, check=False)
    assert bad.returncode != 0 and "paisley" in bad.stderr and "Traceback" not in bad.stderr
    bad = run_script("eval-scripts/world-benchmark.py", "--preset", "XYZ=--lr 1", check=False)
    assert bad.returncode != 0 and "XYZ" in bad.stderr
    if not torch.cuda.is_available():
        bad = run_script("eval-scripts/world-benchmark.py", "--device", "cuda", "--work_dir", tmp_path, check=False)
        assert bad.returncode != 0 and "no CUDA device is visible" in bad.stderr and "Traceback" not in bad.stderr
        assert not (tmp_path / "invocations.json").exists()


def test_benchmark_smoke_form_prints_the_table_and_restores_exactly(tmp_path):
    work = tmp_path / "bench"
    run = run_script("eval-scripts/world-benchmark.py", "--form", "smoke", "--work_dir", work, "--quiet")
    first, *later = DEFAULT_SEPCE
    restore_rows = [f"SepCE (restore {'+'.join(later[i:])})" for i in range(len(later))]
    assert "| ORI |" in run.stdout and all(f"| {row} |" in run.stdout for row in restore_rows)
    summary = json.loads((work / "summary.json").read_text())
    assert summary["protocol"] == "v2" and summary["commit"]
    assert set(summary["original"]["accuracy"]) == set(STYLES)
    assert all({"value", "low", "high"} <= set(c["estimate"]) for c in summary["original"]["accuracy"].values())
    for run in summary["runs"]:
        for check in summary["restoration"].get(run["folder"], {}).values():
            assert check["images"] >= 1 and check["max_abs_diff"] <= 1, (run, check)
    for row in summary["rows"]:
        assert [a["style"] for a in row["attack"]] == [v["style"] for v in row["erased"]]  # every erased style
        assert {v["style"] for v in row["collateral"]} | {v["style"] for v in row["erased"]} == set(STYLES)
        assert row["cra"]["images"] == len(STYLES) * FORMS["smoke"].cra_objects * FORMS["smoke"].num_samples
        assert row["quality"]["images"] > 0 and row["aim"] in {"yes", "no", "undecided"}
    assert set(summary["original"]["attack_ceiling"]) == set(DEFAULT_SEPCE)
    assert {d["measure"] for d in summary["differences"]} == {"erased drop", "collateral"}
    for folder in ("CiE-waves-seed0", "ESD-waves-seed0", "UCE-waves-seed0", "SepCE-waves+dots+gradient-seed0"):
        assert (work / "images" / folder / "results" / "fid.csv").is_file()
    report = (work / "report.md").read_text()
    assert "contact.png" in report and (work / "contact.png").is_file()
    assert "FMN (authors' variant)" in report and "AC (original)" in report and "[" in report
    assert "| Row | runs | erased: drop (verdict, images) | UA | IRA |" in report and "Holm p" in report
    assert (work / "table" / "table.png").is_file()
    (invocation,) = json.loads((work / "invocations.json").read_text())
    # on the CPU the default is one job per core, each a worker process started once
    assert invocation["jobs"] == len(os.sched_getaffinity(0)) and invocation["seconds"] > 0 and "Wall time" in report


def test_step_times_survive_a_resumed_run(tmp_path):
    """A re-run that finds a generation step's images already there adds its check to the booked time (it used to
    replace minutes of sampling with the 2 s check); a skipped training step keeps its time, a re-trained one books
    its new run; invocations add up to the wall time."""
    from sepce.pipeline.timing import book_invocation, record_time
    from sepce.world.report import timing_lines

    timings: dict = {}
    assert record_time(timings, "generate", "images of A", "done", 115.0, resumes=True)
    assert record_time(timings, "generate", "images of A", "done", 1.8, resumes=True)
    assert timings["images of A"]["seconds"] == pytest.approx(116.8)
    record_time(timings, "erase", "A", "done", 20.0, resumes=False)
    assert not record_time(timings, "erase", "A", "skipped", 0.1, resumes=False)
    assert timings["A"]["seconds"] == 20.0
    record_time(timings, "erase", "A", "done", 18.0, resumes=False)
    assert timings["A"]["seconds"] == 18.0
    assert record_time(timings, "erase", "B", "skipped", 0.1, resumes=False)  # never ran here: its check is booked
    path = tmp_path / "work" / "invocations.json"
    book_invocation(path, {"started": "t0", "seconds": 100.0, "jobs": 2, "stages": ["generate"]})
    book_invocation(path, {"started": "t1", "seconds": 10.0, "jobs": 2, "stages": ["generate"]})
    both = book_invocation(path, {"started": "t1", "seconds": 50.0, "jobs": 2, "stages": ["generate"]})
    assert [i["seconds"] for i in both] == [100.0, 50.0]
    lines = timing_lines(list(timings.values()), detail=False, invocations=both)
    assert lines[0].startswith("Wall time 150 s (2.5 min) over 2 invocation(s)")
    assert "| generate | 117 | 87 % |" in lines  # 116.8 of 134.9 s


def test_tuning_candidates_get_their_own_runs_and_the_rule_picks_the_weakest_that_erases(tmp_path):
    from sepce.stats import Estimate
    from sepce.world.analysis import Count, Quality, RowResult, StyleVerdict
    from sepce.world.report import choose_presets

    lay = benchmark_layout(tmp_path / "work")
    weak, strong = ("--lr", "1e-6", "--iterations", "5"), ("--lr", "1e-4", "--iterations", "5")
    cells = single_cells(["CiE", "ESD"], "grid", ["grid", "stripes"], {"CiE": [weak, strong]})
    assert [c.label for c in cells] == ["ORI", "CiE [c1]", "CiE [c2]", "ESD"]
    erase = {s.name: s for s in plan_benchmark(lay, FORMS["tune"], cells).steps if s.stage == "erase"}
    assert set(erase) == {"CiE-grid-seed0-c1", "CiE-grid-seed0-c2", "ESD-grid-seed0"}
    assert "1e-6" in erase["CiE-grid-seed0-c1"].argv and "1e-4" in erase["CiE-grid-seed0-c2"].argv
    assert all(f in erase["ESD-grid-seed0"].argv for f in PRESETS["ESD"])

    def row(verdict, value, stripes="spared"):
        erased = [StyleVerdict("grid", Estimate(value, value - 5, value + 5), verdict, 40, 1)]
        other = [StyleVerdict("stripes", Estimate(0.0, -1.0, 9.0), stripes, 40, 1)]
        return RowResult("", "CiE", 1, erased, other, (), *[Count(Estimate(0, 0, 0), 0)] * 5, Quality())

    both = {"CiE [c1]": row("erased", 80.0), "CiE [c2]": row("erased", 100.0)}
    assert choose_presets(both, cells)["CiE"].tag == "c1"
    # protocol v2's rule also needs the other held-out style spared
    damaging = {"CiE [c1]": row("erased", 80.0, "undecided"), "CiE [c2]": row("erased", 100.0)}
    assert choose_presets(damaging, cells)["CiE"].tag == "c2"
    none = {"CiE [c1]": row("undecided", 40.0), "CiE [c2]": row("not erased", 20.0)}
    assert choose_presets(none, cells)["CiE"].tag == "c1" and "largest" in choose_presets(none, cells)["CiE"].reason


def test_sweep_report_pools_what_ran_and_names_its_seeds(tmp_path):
    """sweep.md on synthetic predictions (no model): the seeds and triples it states are the ones run, every run
    has a row, a style's pooled drop is the mean over its runs' images (training seed i on seed block i), and UCE's
    one run has as many images as the seeded method's runs together."""
    from sepce.evaluation.results import write_metric
    from sepce.world.benchmark import eval_csv_text
    from sepce.world.report import summarise, summary_json, sweep_markdown

    lay = benchmark_layout(tmp_path / "work")
    classes = load_class_map(lay.classes)
    lay.prompts_path.parent.mkdir(parents=True)
    lay.prompts_path.write_text(eval_csv_text(classes, 8))
    styles = ["waves", "dots"]
    cells = sweep_cells(["CiE", "UCE"], styles, [], [0, 3])
    plan = plan_benchmark(lay, FORMS["sweep"], cells)

    def write(folder, keys, miss):  # images ``keys`` per style, all right except ``miss[style]`` of them
        preds = {}
        for c in classes:
            for j, k in enumerate(keys):
                wrong = j < miss.get(c.name, 0)
                preds[f"{k * 10 + c.index}_0.png"] = [c.index, (c.index + 1) % len(classes) if wrong else c.index]
        write_metric(lay.eval_dir / folder, "accuracy", [], ["class"], {"predictions": preds})

    for cell in cells:  # blocks of 4 seeds; CiE seed 0 (block 0): 50-point drop, seed 3 (block 1): 75
        keys = range(4 * cell.block, 4 * (cell.block + cell.blocks))
        write(cell.folder, keys, {s: (2 + cell.seed // 3) if cell.method == "CiE" else 2 for s in cell.erased})
    summary = summarise(lay, plan, sweep=True, form="sweep")
    assert summary.seeds == [0, 3] and summary.triples == []
    assert [r.seed for r in summary.runs if r.row == "CiE"] == [0, 3, 0, 3]
    cie, uce = summary.row("CiE"), summary.row("UCE")
    assert cie.drop_of("waves").drop.value == pytest.approx(62.5) and cie.erased[0].images == 8
    assert uce.erased[0].drop.value == pytest.approx(25.0) and uce.erased[0].images == 8  # one run, all blocks
    assert cie.erased_drop.value == pytest.approx(62.5)
    assert json.loads(json.dumps(summary_json(summary), default=float))["rows"][0]["label"] == "CiE"
    text = sweep_markdown(FORMS["sweep"], summary, [], PRESETS)
    assert "training seeds 0, 3" in text and "SepCE erased" not in text
    assert all(f"| CiE | {s} | {seed} |" in text for s in styles for seed in (0, 3))
    assert "| erased drop | CiE | UCE | 2 |" in text  # paired over the two erased styles


def test_restoration_table_names_each_runs_seed_and_totals_the_checks():
    from types import SimpleNamespace

    from sepce.world.report import PixelCheck, RunRecord, restoration_lines

    runs = [
        RunRecord("SepCE (restore 1)", f"SepCE-t-seed{seed}-restore", ("a", "b"), ("c",), seed, {}) for seed in (0, 4)
    ]
    checks = {
        runs[0].folder: {"c": PixelCheck(16, 10, 16, 1, 0.0001)},
        runs[1].folder: {"c": PixelCheck(16, 3, 15, 2, 0.0004)},
    }
    lines = restoration_lines(SimpleNamespace(runs=runs, restoration=checks))
    assert "| SepCE (restore 1) | 0 | c | 16 | 10 | 16 | 1 | 0.0001 |" in lines
    assert "| SepCE (restore 1) | 4 | c | 16 | 3 | 15 | 2 | 0.0004 |" in lines
    assert lines[-1] == (
        "Over all 2 checks: 13 of 32 restored images identical to the original's, 31 within one grey level, "
        "largest difference 2 levels."
    )


def test_uce_preserves_no_evaluation_prompt():
    """Protocol v2, "No leaks": UCE's preserved prompts (the training template of every other style) and the
    evaluation prompts (style and CRA prompts) are disjoint."""
    classes = load_class_map(CLASS_MAP)
    evaluated = evaluation_prompts(classes)
    assert "in the style of waves" in evaluated and "a star in the style of waves" in evaluated
    assert len(evaluated) == len(STYLES) * (1 + len(OBJECTS))
    for style in STYLES:
        flags = expand_preset(PRESETS["UCE"], classes, [style])
        preserved = set(flags[flags.index("--preserve_concepts") + 1].split(";"))
        assert len(preserved) == len(STYLES) - 1 and f"{style} style" not in preserved
        assert not preserved & evaluated, preserved & evaluated
