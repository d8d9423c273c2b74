"""bench/gpu_check.py: the --tiny run end to end on the CPU (every section, the JSON report, the printed table, the
torchrun shard check), and its pure helpers (alternating timing, summaries, shard and image checks, rank lines,
failure detection, flag validation)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

SCRIPT = "bench/gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check(load_script):
    return load_script(SCRIPT)


@pytest.fixture(scope="module")
def tiny_run(gpu_check, tmp_path_factory):
    """One ``--tiny`` run (CPU, tiny model): the returned report, the JSON written and what was printed."""
    import contextlib
    import io

    folder = tmp_path_factory.mktemp("gpu-check")
    out = folder / "report.json"
    stdout = io.StringIO()
    threads = torch.get_num_threads()
    try:
        with contextlib.redirect_stdout(stdout):
            report = gpu_check.main(gpu_check.parse_args(["--tiny", "--output", str(out)]))
    finally:
        torch.set_num_threads(threads)
    return report, json.loads(out.read_text()), stdout.getvalue()


# ------------------------------------------------------------------------------------------------ end to end
def test_tiny_report_has_every_section_with_numbers(tiny_run):
    report, saved, _ = tiny_run
    assert saved["schema"] == "sepce-gpu-check/1"
    env = saved["environment"]
    assert env["torch"] == torch.__version__ and env["device"] == "cpu" and env["cpu_threads"] == 1
    assert {"cuda", "gpus", "gpu_count", "diffusers", "python"} <= set(env)
    settings = saved["settings"]
    assert settings["tiny"] is True and settings["sections"] == ["gen", "train", "torchrun"]
    assert settings["sizes"]["steps"] > 0 and settings["config_path"].endswith("v1-tiny-wide.yaml")
    assert saved["model"]["weights"].startswith("random") and Path(saved["model"]["checkpoint"]).name == "model.ckpt"
    assert {k: v["status"] for k, v in saved["sections"].items()} == {"gen": "ok", "train": "ok", "torchrun": "ok"}
    assert saved["wall_s"] > 0 and report["sections"].keys() == saved["sections"].keys()


def test_tiny_generation_against_diffusers(tiny_run):
    gen = tiny_run[1]["sections"]["gen"]
    sanity = gen["sanity"]
    assert sanity["status"] == "ok" and sanity["ok"] and sanity["finite"]
    assert 0 <= sanity["max_abs_diff"] <= sanity["tolerance"] == 1e-3
    assert sanity["image_std"] > 0.01  # a real image, not a constant both sides would match
    fp32 = gen["timings"]["fp32"]
    assert fp32["status"] == "ok"
    for side in ("ours", "diffusers"):
        entry = fp32[side]
        assert entry["status"] == "ok" and len(entry["seconds"]) == 2  # --tiny: 2 timed rounds after 1 warm-up
        assert entry["median_s"] > 0 and entry["images_per_s"] == pytest.approx(2 / entry["median_s"])
        assert "peak_bytes" not in entry  # no GPU memory on the CPU
    ratio = fp32["ours"]["images_per_s"] / fp32["diffusers"]["images_per_s"]
    assert fp32["ratio_ours_over_diffusers"] == pytest.approx(ratio)
    for precision in ("fp16", "bf16"):  # the generation scripts refuse 16-bit on the CPU
        entry = gen["timings"][precision]
        assert entry["status"] == "skipped" and "needs a GPU" in entry["reason"]


def test_tiny_training_rows(tiny_run):
    cases = tiny_run[1]["sections"]["train"]["cases"]
    assert list(cases) == [
        "CiE, 1 device, fp32",
        "CiE, 1 device, bf16 autocast",
        "SepCE, 3 concepts, 1 device, fp32",
        "CiE, 2 devices (0,1), fp32",
    ]
    for name in list(cases)[:3]:
        entry = cases[name]
        assert entry["status"] == "ok", entry
        assert entry["iterations"] == 4 and len(entry["iteration_seconds"]) == 4  # 1 warm-up + 3 timed
        assert entry["median_s_per_iteration"] > 0 and entry["peak_bytes"] is None
        assert "--devices" in entry["argv"] and entry["argv"][entry["argv"].index("--devices") + 1] == "cpu"
    bf16 = cases["CiE, 1 device, bf16 autocast"]["argv"]
    assert bf16[bf16.index("--precision") + 1] == "bf16"
    assert cases["SepCE, 3 concepts, 1 device, fp32"]["reference"] == "switched off"
    two = cases["CiE, 2 devices (0,1), fp32"]
    assert two["status"] == "skipped" and "two GPUs" in two["reason"]


def test_tiny_torchrun_split_and_images(tiny_run):
    sec = tiny_run[1]["sections"]["torchrun"]
    assert sec["ok"] and sec["processes"] == 2 and sec["rows"] == 4 and sec["device"] == "cpu"
    shards = sec["shards"]
    assert shards["per_rank_written"] == shards["per_rank_expected"] == {"0": 2, "1": 2}
    assert shards["found_images"] == shards["expected_images"] == 4
    assert shards["missing"] == shards["duplicated"] == shards["unexpected"] == [] and shards["split_ok"]
    same = sec["versus_single_process"]
    assert same == {"compared": 4, "max_abs_diff_levels": 0, "differing": [], "equal": True}
    assert sec["torchrun_wall_s"] > 0 and sec["single_process_wall_s"] > 0


def test_tiny_prints_one_table(tiny_run, gpu_check):
    report, _, printed = tiny_run
    lines = printed.strip().splitlines()
    assert lines[0].startswith("GPU check --tiny on CPU") and lines[-1].startswith("JSON: ")
    header = lines[1].split()
    assert header == ["section", "case", "result", "peak", "GiB", "note"] and set(lines[2]) == {"-"}
    body = lines[3:-1]
    assert len(body) == len(gpu_check.table_rows(report))
    assert [line.split()[0] for line in body] == ["gen"] * 6 + ["train"] * 4 + ["torchrun"]
    text = "\n".join(body)
    assert "fp32 vs diffusers, same latents" in text and "img/s" in text and "ours/diffusers" in text
    assert text.count(" s/it ") == 3 and "ok: per rank 2+2 (expected 2+2)" in text
    assert "ERROR" not in text and "FAILED" not in text


def test_a_failing_part_is_reported_and_the_rest_still_runs(gpu_check, tmp_path, capsys):
    broken = tmp_path / "broken.ckpt"
    broken.write_text("not a checkpoint")
    out = tmp_path / "report.json"
    argv = ["--tiny", "--ckpt_path", str(broken), "--sections", "gen", "train", "--output", str(out)]
    threads = torch.get_num_threads()
    try:
        with pytest.raises(SystemExit) as exit_info:
            gpu_check.main(gpu_check.parse_args(argv))
    finally:
        torch.set_num_threads(threads)
    assert exit_info.value.code == gpu_check.EXIT_CHECK_FAILED == 4
    saved = json.loads(out.read_text())
    assert saved["sections"]["gen"]["status"] == "error" and "broken.ckpt" in saved["sections"]["gen"]["error"]
    assert saved["sections"]["gen"]["traceback"]  # for the rare GPU run: where it broke
    cases = saved["sections"]["train"]["cases"]
    assert [c["status"] for c in cases.values()] == ["error", "error", "error", "skipped"]  # each case tried
    assert saved["sections"]["torchrun"] == {"status": "skipped", "reason": "not in --sections"}
    printed = capsys.readouterr()
    assert printed.out.count("ERROR") == 4 and "\n" not in saved["sections"]["gen"]["error"]
    assert printed.err.strip().splitlines()[-1].startswith("gpu_check.py: failed: gen; train.cases.CiE, 1 device")


# ------------------------------------------------------------------------------------------------ helpers
def test_alternate_runs_ours_then_theirs_and_drops_the_warmup(gpu_check):
    calls: list[str] = []
    clock = iter(range(1, 100))

    def measure(fn):
        fn()
        return gpu_check.Measurement(float(next(clock)))

    runners = {"ours": lambda: calls.append("ours"), "theirs": lambda: calls.append("theirs")}
    times, errors = gpu_check.alternate(runners, repeats=3, warmup=1, measure=measure)
    assert calls == ["ours", "theirs"] * 4 and errors == {}
    assert [m.seconds for m in times["ours"]] == [3.0, 5.0, 7.0]  # calls 1 and 2 were the warm-up round
    assert [m.seconds for m in times["theirs"]] == [4.0, 6.0, 8.0]


def test_alternate_keeps_timing_the_side_that_works(gpu_check):
    calls: list[str] = []

    def theirs():
        calls.append("theirs")
        if len(calls) > 2:
            raise RuntimeError("CUDA out of memory.\nTried to allocate 2 GiB")

    runners = {"ours": lambda: calls.append("ours"), "theirs": theirs}
    times, errors = gpu_check.alternate(runners, 2, 1, lambda fn: (fn(), gpu_check.Measurement(1.0))[1])
    assert errors == {"theirs": "RuntimeError: CUDA out of memory."}
    assert calls == ["ours", "theirs", "ours", "theirs", "ours"] and len(times["ours"]) == 2


def test_summarize_median_rate_and_own_peak(gpu_check):
    M = gpu_check.Measurement
    out = gpu_check.summarize([M(2.0, 900, 500), M(4.0, 1000, 400), M(3.0, 700, 600)], images=8, weights_bytes=300)
    assert out["median_s"] == 3.0 and out["images_per_s"] == pytest.approx(8 / 3)
    assert out["peak_bytes"] == 1000 and out["peak_own_bytes"] == 300 + 600  # largest growth of a call: 1000 - 400
    cpu = gpu_check.summarize([M(1.0), M(3.0)], images=2)
    assert cpu["median_s"] == 2.0 and "peak_bytes" not in cpu and "peak_own_bytes" not in cpu


def test_stopwatch_on_the_cpu_times_without_memory(gpu_check):
    m = gpu_check.Stopwatch(torch.device("cpu"))(lambda: sum(range(1000)))
    assert m.seconds >= 0 and m.peak_bytes is None and m.before_bytes is None


def _png(path: Path, value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(path)


def test_check_shards_passes_a_complete_split(gpu_check, tmp_path):
    names = [f"{c}_0.png" for c in range(4)]
    for n in names:
        _png(tmp_path / n)
    out = gpu_check.check_shards(tmp_path, names, {0: 2, 1: 2}, {0: 2, 1: 2})
    assert out["ok"] and out["split_ok"] and out["found_images"] == 4
    assert out["missing"] == out["duplicated"] == out["unexpected"] == []


def test_check_shards_finds_missing_duplicated_and_unexpected_images(gpu_check, tmp_path):
    names = [f"{c}_0.png" for c in range(4)]
    for n in ("0_0.png", "1_0.png", "2_0.png", "9_0.png"):
        _png(tmp_path / n)
    _png(tmp_path / "3" / "1_0.png")  # the same image again in a class folder
    out = gpu_check.check_shards(tmp_path, names, {0: 2, 1: 2}, {0: 2, 1: 2})
    assert not out["ok"] and out["split_ok"]
    assert out["missing"] == ["3_0.png"] and out["duplicated"] == ["1_0.png"] and out["unexpected"] == ["9_0.png"]


def test_check_shards_catches_ranks_that_did_each_others_rows(gpu_check, tmp_path):
    names = [f"{c}_0.png" for c in range(4)]
    for n in names:
        _png(tmp_path / n)  # the files alone look perfect: the second writer replaced the first
    out = gpu_check.check_shards(tmp_path, names, {0: 4, 1: 4}, {0: 2, 1: 2})
    assert not out["ok"] and not out["split_ok"] and out["per_rank_written"] == {"0": 4, "1": 4}
    assert not gpu_check.check_shards(tmp_path, names, {}, {0: 2, 1: 2})["ok"]  # no rank lines: not verified


def test_rank_counts_reads_the_summary_lines(gpu_check):
    text = (
        "/x/multi: wrote 3 image(s), 0 already existed (rank 1/2)\n"
        "noise\n/x/multi: wrote 2 image(s), 1 already existed (rank 0/2)\n"
    )
    assert gpu_check.rank_counts(text) == {0: 2, 1: 3}
    assert gpu_check.rank_counts("/x/single: wrote 4 image(s), 0 already existed\n") == {0: 4}
    assert gpu_check.rank_counts("nothing here") == {}


def test_compare_images_counts_one_level_differences(gpu_check, tmp_path):
    _png(tmp_path / "a" / "0_0.png", 10)
    _png(tmp_path / "b" / "0_0.png", 10)
    _png(tmp_path / "a" / "1_0.png", 10)
    _png(tmp_path / "b" / "1_0.png", 11)
    out = gpu_check.compare_images(tmp_path / "a", tmp_path / "b", ["0_0.png", "1_0.png"])
    assert out == {"compared": 2, "max_abs_diff_levels": 1, "differing": ["1_0.png"], "equal": False}


def test_failures_lists_errors_and_failed_checks_not_skips(gpu_check):
    report = {
        "sections": {
            "gen": {
                "status": "ok",
                "sanity": {"status": "ok", "ok": False},
                "timings": {"fp16": {"status": "ok", "diffusers": {"status": "error"}}, "bf16": {"status": "skipped"}},
            },
            "train": {"status": "error", "error": "x"},
            "torchrun": {"status": "skipped", "reason": "not in --sections"},
        }
    }
    assert gpu_check.failures(report) == ["gen.sanity", "gen.timings.fp16.diffusers", "train"]


def test_table_shows_errors_and_skips(gpu_check):
    report = {
        "settings": {"sizes": {"train_warmup": 1}},
        "sections": {
            "gen": {"status": "error", "error": "ModuleNotFoundError: No module named 'diffusers'"},
            "train": {"status": "ok", "cases": {"CiE": {"status": "skipped", "reason": "needs two GPUs"}}},
            "torchrun": {"status": "ok", "shards": {}},  # an unexpected shape: one row saying so, no crash
        },
    }
    rows = gpu_check.table_rows(report)
    assert rows[0] == ("gen", "(section)", "ERROR", "-", "ModuleNotFoundError: No module named 'diffusers'")
    assert rows[1] == ("train", "CiE", "skipped", "-", "needs two GPUs")
    assert rows[2][:3] == ("torchrun", "(report)", "ERROR") and "cannot tabulate" in rows[2][4]
    assert gpu_check.format_table(rows).splitlines()[0].split()[:3] == ["section", "case", "result"]


# ------------------------------------------------------------------------------------------------ flags
def test_without_a_gpu_the_full_check_asks_for_tiny(gpu_check, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.run(gpu_check.parse_args, gpu_check.main, argv=[], prog="gpu_check.py")
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gpu_check.py: error: the full check needs a GPU")
    assert "--tiny" in err[0]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--tiny", "--warmup", "-1"], "--warmup -1: expected an integer >= 0"),
        (["--tiny", "--image_size", "60"], "--image_size 60: expected a multiple of 8"),
        (["--tiny", "--repeats", "0"], "--repeats 0: expected an integer >= 1"),
        (["--tiny", "--device", "cuda:7"], "--device"),
        (["--tiny", "--ckpt_path", "no/such.ckpt"], "--ckpt_path no/such.ckpt does not exist"),
        (["--tiny", "--output", "report.txt"], "expected a .json file name"),
        (["--tiny", "--sanity_tol", "0"], "--sanity_tol 0.0: expected a positive number"),
    ],
)
def test_bad_flags_fail_before_any_work(gpu_check, argv, message, tmp_path):
    with pytest.raises((ValueError, FileNotFoundError), match=message.replace("(", r"\(")):
        gpu_check.settings_from_args(gpu_check.parse_args(argv))


def test_tiny_defaults_and_overrides(gpu_check):
    s = gpu_check.settings_from_args(gpu_check.parse_args(["--tiny", "--sections", "torchrun", "gen", "--steps", "3"]))
    assert s.sections == ("gen", "torchrun") and s.sizes.steps == 3 and s.sizes.batch_size == gpu_check.TINY.batch_size
    assert s.device == torch.device("cpu") and s.precisions == ("fp32", "fp16", "bf16") and s.threads == 1
    assert s.ckpt_path is None and s.nproc == 2


# ------------------------------------------------------------------------------------------------ GroupNorm A/B
def test_native_group_norm_switch_is_scoped_and_changes_nothing_off_cuda(gpu_check):
    """GroupNorm32.cuda_16bit_native (the fp16-gap experiment): off by default, on only inside with_native_norm
    (also when the call raises), timed only for 16-bit weights on CUDA; on the CPU it leaves the upcast path, and
    the native kernel on 16-bit input is the same float32-accumulated math (within one 16-bit rounding)."""
    from ldm.modules.diffusionmodules.util import GroupNorm32

    assert GroupNorm32.cuda_16bit_native is False
    seen = []
    assert gpu_check.with_native_norm(lambda: seen.append(GroupNorm32.cuda_16bit_native) or 7) == 7
    with pytest.raises(ZeroDivisionError):
        gpu_check.with_native_norm(lambda: 1 / 0)
    assert seen == [True] and GroupNorm32.cuda_16bit_native is False
    assert gpu_check.native_norm_applies(torch.float16, torch.device("cuda"))
    assert not gpu_check.native_norm_applies(torch.float32, torch.device("cuda"))
    assert not gpu_check.native_norm_applies(torch.bfloat16, torch.device("cpu"))

    torch.manual_seed(0)
    norm = GroupNorm32(32, 64).to(torch.bfloat16)
    torch.nn.init.normal_(norm.weight)
    x = (torch.randn(2, 64, 8, 8) * 3 + 1).to(torch.bfloat16)
    upcast = norm(x)
    assert torch.equal(gpu_check.with_native_norm(lambda: norm(x)), upcast)  # CPU: the switch does nothing
    native = torch.nn.functional.group_norm(x, 32, norm.weight, norm.bias, norm.eps)
    assert native.dtype == torch.bfloat16
    assert (native.float() - upcast.float()).abs().max() <= 2**-7 * upcast.float().abs().max()


def test_table_shows_the_native_group_norm_row(gpu_check):
    entry = {
        "status": "ok",
        "batch_size": 8,
        "image_size": 512,
        "steps": 50,
        "ours": {"status": "ok", "median_s": 2.8, "seconds": [2.8] * 3, "images_per_s": 2.86},
        "diffusers": {"status": "ok", "median_s": 2.66, "seconds": [2.66] * 3, "images_per_s": 3.0},
        "ratio_ours_over_diffusers": 0.953,
        "native_norm": {
            "status": "ok",
            "images_per_s": 3.0,
            "ratio_over_ours": 1.049,
            "pixels_differing": 0.001,
            "max_abs_diff_levels": 1,
            "peak_own_bytes": 2**30,
        },
    }
    sanity = {"status": "skipped", "reason": "not run"}
    rows = gpu_check.table_rows({"settings": {}, "sections": {"gen": {"sanity": sanity, "timings": {"fp16": entry}}}})
    (native,) = [r for r in rows if r[1] == "fp16 native GroupNorm"]
    assert native[2] == "1.049x" and "0.10 % of pixels differ, max 1 levels" in native[4]
