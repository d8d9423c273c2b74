"""The shared training harness (the sepce/training/ package): flags, image folders, the common diffusion step,
parameter selection, the frozen original, the optimisation loop (accumulation, NaN handling, stopping) and the run
folder."""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from sepce import records, training
from sepce.paths import DATA_DIR, DEFAULT_CKPT, DEFAULT_CONFIG
from sepce.training import (
    SUMMARY_KEYS,
    FrozenReference,
    ImageFolder,
    ParameterTrainer,
    Run,
    TrainingSession,
    TrainStep,
    add_common_args,
    encode_latents,
    sample_timesteps,
    select_parameters,
    settings_from_args,
)


def parser_with(**kw) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    return add_common_args(p, **{"lr": 1e-5, "iterations": 1000, **kw})


def write_images(folder, n=3, size=(40, 32), seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


# ------------------------------------------------------------------------------------------------ flags
def test_common_flags_defaults_and_both_iteration_spellings():
    p = parser_with()
    a = p.parse_args(["--prompt", "Van Gogh"])
    assert (a.ddim_steps, a.image_size, a.devices, a.seed, a.zero_grad, a.save_full) == (50, 512, "0,1", 0, False, None)
    assert (a.data_dir, a.ckpt_path, a.config_path) == (DATA_DIR, DEFAULT_CKPT, DEFAULT_CONFIG)  # not cwd-relative
    assert a.data_dir.is_absolute() and a.quiet is False
    assert (a.gradient_checkpointing, a.precision, a.iterations, a.lr) == ("config", "fp32", 1000, 1e-5)
    assert p.parse_args(["--prompt", "x", "--iter_break", "7"]).iterations == 7
    assert p.parse_args(["--prompt", "x", "--iterations", "9"]).iterations == 9
    assert p.parse_args(["--prompt", "x", "--save_full"]).save_full == "ckpt"
    assert p.parse_args(["--prompt", "x", "--save_full", "safetensors"]).save_full == "safetensors"
    with pytest.raises(SystemExit):
        p.parse_args(["--prompt", "x", "--save_full", "pt"])
    assert "ACCUMULATE" in p.format_help()
    with pytest.raises(SystemExit):
        p.parse_args([])  # --prompt is required
    q = parser_with(prompt=False, images=False, zero_grad_flag=False)
    b = q.parse_args([])
    assert not hasattr(b, "prompt") and not hasattr(b, "data_dir") and not hasattr(b, "zero_grad")


# ------------------------------------------------------------------------------------------------ timesteps
@pytest.mark.parametrize("steps", [50, 3, 7])
def test_timestep_draw_follows_the_ddim_bucket_rule(steps):
    g = torch.Generator().manual_seed(0)
    seen_t, seen_enc = set(), set()
    for _ in range(4000):
        t_enc, t = sample_timesteps(steps, g)
        lo = int(math.floor(t_enc / steps * 1000 + 0.5))  # round half up; the bucket ends are never .5 here
        hi = int(math.floor((t_enc + 1) / steps * 1000 + 0.5))
        assert 0 <= t_enc < steps and lo <= t < hi
        seen_t.add(t)
        seen_enc.add(t_enc)
    assert seen_enc == set(range(steps))
    assert min(seen_t) >= 0 and max(seen_t) <= 999
    if steps <= 7:  # buckets tile 0..999 without gaps: every DDPM step is reachable
        assert len(seen_t) > 900


# ------------------------------------------------------------------------------------------------ images
def test_image_folder_validation(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageFolder(tmp_path / "nope", 32)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="no image files"):
        ImageFolder(tmp_path / "empty", 32)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.png").write_bytes(b"not a png")
    (bad / "b.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(ValueError, match="none of its 2"):
        ImageFolder(bad, 32)
    write_images(bad, 2)  # 0.png, 1.png readable
    folder = ImageFolder(bad, 32)
    assert len(folder) == 2 and len(folder.skipped) == 2


def test_image_transform_is_resize_centercrop_to_minus1_1(tmp_path):
    """A 128x64 image whose middle half is blue and outer quarters red: Resize(32) + CenterCrop(32) keeps the
    middle half only → blue (-1, -1, 1) after scaling to [-1, 1]."""
    arr = np.zeros((64, 128, 3), np.uint8)
    arr[:, :, 0] = 255
    arr[:, 32:96] = (0, 0, 255)
    (tmp_path / "c").mkdir()
    Image.fromarray(arr).save(tmp_path / "c" / "x.png")
    x = ImageFolder(tmp_path / "c", 32).sample(torch.Generator().manual_seed(0))
    assert x.shape == (1, 3, 32, 32) and x.min() >= -1 and x.max() <= 1
    inner = x[0, :, :, 2:-2]
    torch.testing.assert_close(inner, torch.tensor([-1.0, -1.0, 1.0]).view(3, 1, 1).expand_as(inner), atol=0.02, rtol=0)


def test_image_choice_is_seeded(tmp_path):
    folder = ImageFolder(write_images(tmp_path / "c", 5), 16)
    g1, g2 = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
    seq1 = [folder.sample(g1) for _ in range(6)]
    seq2 = [folder.sample(g2) for _ in range(6)]
    assert all(torch.equal(u, v) for u, v in zip(seq1, seq2)) and seq1[0].shape == (1, 3, 16, 16)
    assert len({float(u.sum()) for u in seq1}) > 1  # not always the same image


# ------------------------------------------------------------------------------------------------ model pieces
def test_encode_latents_is_posterior_sample_times_scale_factor(tiny_model):
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    z = encode_latents(tiny_model, x, torch.Generator().manual_seed(5))
    with torch.no_grad():
        post = tiny_model.first_stage_model.encode(x)
    noise = torch.randn(post.mean.shape, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(z, tiny_model.scale_factor * (post.mean + post.std * noise))
    assert not z.requires_grad


def test_select_parameters_rules(tiny_model):
    model = copy.deepcopy(tiny_model)
    p = select_parameters(model, "attn2")
    names = [n for n, _ in model.model.diffusion_model.named_parameters()]
    assert sorted(p) == sorted(f"model.diffusion_model.{n}" for n in names if "attn2" in n)
    assert all(v.requires_grad for v in p.values())
    assert sum(v.requires_grad for v in model.parameters()) == len(p)
    kv = select_parameters(model, "attn2_kv")
    n_attn2 = sum(1 for n, _ in model.named_modules() if n.endswith("attn2"))
    assert len(kv) == 2 * n_attn2 and all(k.endswith(("to_k.weight", "to_v.weight")) for k in kv)
    assert sum(v.requires_grad for v in model.parameters()) == len(kv)
    selfattn = select_parameters(model, lambda n: "attn1" in n)
    assert selfattn and all("attn1" in k for k in selfattn)
    with pytest.raises(ValueError):
        select_parameters(model, "nothing-like-this")
    with pytest.raises(ValueError, match="selects no"):
        select_parameters(model, lambda n: False)


def test_frozen_reference_substitution_equals_a_frozen_copy(tiny_model):
    """One model copy + substituted originals gives the original's outputs after the trained tensors changed,
    exactly like the released layout's separate frozen copy."""
    original = copy.deepcopy(tiny_model)
    model = copy.deepcopy(tiny_model)
    params = select_parameters(model, "attn2")
    ref = FrozenReference.substituted(model, params)
    two = FrozenReference.copy(original, params)
    with torch.no_grad():
        for v in params.values():
            v.add_(torch.randn_like(v) * 0.5)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 900])
    c = model.get_learned_conditioning(["Van Gogh", ""])
    with torch.no_grad():
        expected = original.apply_model(x, t, c)
        changed = model.apply_model(x, t, c)
    out = ref(x, t, c)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(two(x, t, c), expected, rtol=0, atol=0)
    assert not torch.allclose(changed, expected, atol=1e-4)
    assert not out.requires_grad
    for k, v in ref.originals.items():
        assert torch.equal(v, dict(original.named_parameters())[k])
    # the substitution is temporary: the model still holds the trained values
    torch.testing.assert_close(model.apply_model(x, t, c).detach(), changed)


# ------------------------------------------------------------------------------------------------ trainer
def scripted(values):
    """A step function whose loss is Σ_j v_i · p_j (gradient v_i per element), v from a script."""

    def make(p):
        def step(i):
            return TrainStep((values[i] * p).sum(), {"v": float(values[i])})

        return step

    return make


@pytest.mark.parametrize("zero_grad", [False, True])
def test_gradients_accumulate_unless_zero_grad(zero_grad):
    p = torch.zeros(3, requires_grad=True)
    lr = 0.1
    tr = ParameterTrainer(
        [p], lr=lr, iterations=3, zero_grad=zero_grad, optimizer=torch.optim.SGD([p], lr=lr), progress=False
    )
    res = tr.fit(scripted([1.0, 1.0, 1.0])(p))
    # accumulated gradients: 1, 2, 3 → p = -(1+2+3)·lr; zeroed: 1, 1, 1 → -3·lr
    expected = -3 * lr if zero_grad else -6 * lr
    torch.testing.assert_close(p.detach(), torch.full((3,), expected))
    assert res.ok and res.iterations == 3 and "cap" in res.stop_reason


def test_nan_loss_stops_and_restores_the_last_good_parameters(tmp_path):
    p = torch.ones(2, requires_grad=True)
    run = Run(tmp_path / "run", {"x": 1}, "test")
    tr = ParameterTrainer(
        [p], lr=0.5, iterations=10, run=run, optimizer=torch.optim.SGD([p], lr=0.5), zero_grad=True, progress=False
    )
    seen = []

    def step(i):
        seen.append(p.detach().clone())
        v = [1.0, 1.0, float("nan"), 1.0][i]
        return TrainStep((v * p).sum())

    res = tr.fit(step)
    assert not res.ok and "non-finite loss" in res.stop_reason and "iteration 2" in res.stop_reason
    assert res.iterations == 1  # the step of iteration 1 (which led to the NaN) is undone
    torch.testing.assert_close(p.detach(), seen[1])  # the parameters whose loss (iteration 1) was finite
    run.close()
    rows = list(csv.DictReader((tmp_path / "run" / "losses.csv").open()))
    assert [r["iteration"] for r in rows] == ["0", "1", "2"] and rows[2]["loss"] == "nan"


def test_non_finite_gradient_stops_before_the_step():
    p = torch.zeros(1, requires_grad=True)
    tr = ParameterTrainer([p], lr=0.1, iterations=5, progress=False)
    res = tr.fit(lambda i: TrainStep(p.abs().sqrt().sum()))  # d/dp sqrt|p| at 0 is inf/nan
    assert not res.ok and "non-finite gradient" in res.stop_reason and res.iterations == 0
    assert torch.equal(p.detach(), torch.zeros(1))


def test_step_stop_and_after_step_end_the_loop_after_the_update():
    p = torch.zeros(1, requires_grad=True)
    tr = ParameterTrainer(
        [p], lr=1.0, iterations=50, optimizer=torch.optim.SGD([p], lr=1.0), zero_grad=True, progress=False
    )
    res = tr.fit(lambda i: TrainStep(p.sum(), stop="done" if i == 4 else None))
    assert res.stop_reason == "done" and res.iterations == 5 and float(p.detach()) == -5.0
    q = torch.zeros(1, requires_grad=True)
    tr2 = ParameterTrainer(
        [q], lr=1.0, iterations=50, optimizer=torch.optim.SGD([q], lr=1.0), zero_grad=True, progress=False
    )
    res2 = tr2.fit(lambda i: TrainStep(q.sum()), after_step=lambda i, s: "enough" if float(q.detach()) <= -3 else None)
    assert res2.stop_reason == "enough" and res2.iterations == 3


def test_without_progress_bars_a_finished_run_is_one_log_line(caplog):
    p = torch.zeros(1, requires_grad=True)
    with caplog.at_level("INFO", logger="sepce.training"):
        ParameterTrainer([p], lr=0.1, iterations=2, desc="demo", progress=False).fit(lambda i: TrainStep(p.sum()))
    lines = [r.getMessage() for r in caplog.records if r.name == "sepce.training"]
    assert len(lines) == 1 and lines[0].startswith("demo: 2 iteration(s), iteration cap reached") and " s" in lines[0]
    caplog.clear()
    with caplog.at_level("INFO", logger="sepce.training"):
        ParameterTrainer([p], lr=0.1, iterations=2, progress=True).fit(lambda i: TrainStep(p.sum()))
    assert not [r for r in caplog.records if r.name == "sepce.training"]  # the bar says it


# ------------------------------------------------------------------------------------------------ run folder
def test_run_folder_files_and_overwrite(tmp_path):
    d = tmp_path / "run"
    run = Run(d, {"lr": 0.1}, "CiE")
    assert json.loads((d / "args.json").read_text()) == {"method": "CiE", "lr": 0.1}
    for i in range(4):
        run.log({"iteration": i, "loss": 1.0 / (i + 1), "momentum": 0.5})
        assert len((d / "losses.csv").read_text().strip().splitlines()) == i + 2  # flushed row by row
    with pytest.raises(ValueError, match="columns"):
        run.log({"iteration": 9, "surprise": 1})
    (d / "CiE-x.ckpt").write_bytes(b"old checkpoint")
    run.files.append("CiE-x.ckpt")
    s = run.finish(4, "iteration cap reached", extra_field=3)
    summary = json.loads((d / "summary.json").read_text())
    assert summary == s and s["iterations"] == 4 and s["stop_reason"] == "iteration cap reached"
    assert s["cpu_peak_rss_bytes"] > 10_000_000 and s["wall_time_s"] >= 0 and s["extra_field"] == 3
    assert (d / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(FileExistsError, match="not empty"):
        Run(d, {}, "CiE")
    (d / "user-notes.txt").write_text("keep me")
    Run(d, {"lr": 0.2}, "CiE", overwrite=True)
    left = sorted(p.name for p in d.iterdir())
    assert left == ["args.json", "user-notes.txt"]  # earlier run files (and its listed checkpoint) removed


# ------------------------------------------------------------------------------------------------ session
def session_argv(tiny_ckpt, tmp_path):
    model = ["--ckpt_path", str(tiny_ckpt), "--config_path", str(tiny_ckpt.parent / "config.yaml")]
    places = ["--data_dir", str(tmp_path / "data"), "--output_dir", str(tmp_path / "out")]
    return ["--prompt", "Van Gogh", *model, *places, "--devices", "cpu", "--image_size", "64"]


def session_settings(tiny_ckpt, tmp_path, *extra):
    return settings_from_args(parser_with().parse_args([*session_argv(tiny_ckpt, tmp_path), *extra]))


def test_settings_from_args_are_typed_and_validated(tiny_ckpt, tmp_path):
    s = session_settings(tiny_ckpt, tmp_path, "--gradient_checkpointing", "off", "--save_full", "--quiet")
    assert s.devices == (torch.device("cpu"),) and s.dtype == torch.float32 and s.gradient_checkpointing is False
    assert s.save_full == "ckpt" and s.progress is False and s.output_dir == tmp_path / "out"
    assert s.data_dir == tmp_path / "data" and s.command_line["prompt"] == "Van Gogh"
    assert session_settings(tiny_ckpt, tmp_path).gradient_checkpointing is None  # "config": as the config says
    with pytest.raises(ValueError, match="--save_full 'pt'"):
        training.TrainingSettings(lr=1.0, iterations=1, devices=(torch.device("cpu"),), save_full="pt")


def test_run_flags_alone_give_a_run_without_an_optimiser(tiny_ckpt, tmp_path):
    """add_run_args is the group UCE's closed form takes: its settings have no learning rate, the session refuses
    a trainer, and the record's metadata leaves lr out."""
    p = training.add_run_args(argparse.ArgumentParser(), devices="cpu")
    model = ["--ckpt_path", str(tiny_ckpt), "--config_path", str(tiny_ckpt.parent / "config.yaml")]
    args = p.parse_args([*model, "--output_dir", str(tmp_path / "out"), "--quiet"])
    assert not hasattr(args, "lr") and not hasattr(args, "prompt")
    settings = settings_from_args(args)
    assert (settings.lr, settings.iterations, settings.data_dir, settings.progress) == (None, 1, None, False)
    session = TrainingSession(settings, "UCE", ["Van Gogh"], images=False)
    with pytest.raises(ValueError, match="no learning rate"):
        session.trainer([torch.zeros(1, requires_grad=True)])
    model = session.load_model()
    session.start_run()
    params = select_parameters(model, "attn2_kv")
    record = session.tensor_record(params)
    summary = session.finish(training.FitResult(1, "closed form"), record, reference="none", settings={})
    assert summary["concepts"] == {"Van Gogh": {"iterations": 1, "stop_reason": "closed form"}}
    meta = records.load_record(tmp_path / "out").meta
    assert "lr" not in meta and meta["concepts"] == summary["concepts"] and meta["stop_reason"] == "closed form"


def test_concept_names_with_a_dot_are_refused_naming_the_flag():
    assert records.check_concept_name("Van Gogh", "--prompt") == "Van Gogh"
    with pytest.raises(ValueError, match=r"^--prompts 'St\. Ives' contains '\.', which erasure records"):
        records.check_concept_name("St. Ives", "--prompts")


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--lr", "-1"], "--lr"),
        (["--iterations", "0"], "--iterations"),
        (["--image_size", "60"], "multiple of 8"),
        (["--ddim_steps", "0"], "--ddim_steps"),
        (["--devices", "cuda:7"], "--devices 'cuda:7'"),
        (["--devices", "0,1,2"], "one or two devices"),
        (["--prompt", "Monet"], "does not exist"),
        (["--ckpt_path", "missing.ckpt"], "missing.ckpt"),
    ],
)
def test_session_rejects_bad_input_before_loading(tiny_ckpt, tmp_path, monkeypatch, extra, message):
    write_images(tmp_path / "data" / "Van Gogh", 2)
    monkeypatch.setattr(training.session, "load_model", lambda *a, **k: pytest.fail("model loaded before validation"))
    args = parser_with().parse_args([*session_argv(tiny_ckpt, tmp_path), *extra])
    with pytest.raises((ValueError, FileNotFoundError)) as info:
        TrainingSession(settings_from_args(args), "CiE", [args.prompt])
    assert message in str(info.value) and "\n" not in str(info.value)


def test_session_refuses_a_used_output_dir_and_runs_the_common_step(tiny_ckpt, tmp_path):
    write_images(tmp_path / "data" / "Van Gogh", 2, size=(64, 64))
    (tmp_path / "data" / "Van Gogh" / "broken.png").write_bytes(b"\x89PNG truncated")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "args.json").write_text("{}")
    with pytest.raises(FileExistsError, match="--overwrite"):
        TrainingSession(session_settings(tiny_ckpt, tmp_path), "CiE", ["Van Gogh"])
    settings = session_settings(tiny_ckpt, tmp_path, "--overwrite", "--seed", "4", "--save_full", "safetensors")
    s = TrainingSession(settings, "CiE", ["Van Gogh"])
    assert not s.two_devices and s.devices == [torch.device("cpu")]
    model = s.load_model()
    t_enc, t = s.timesteps()
    z = s.latent("Van Gogh")
    x = s.noisy(z, t)
    assert z.shape == x.shape == (1, 4, 8, 8) and t.dtype == torch.long and 0 <= int(t) < 1000
    params = select_parameters(model, "attn2")
    ref = s.frozen_reference(model, params)
    assert ref.kind == "substituted"
    run = s.start_run()
    assert json.loads((run.dir / "args.json").read_text())["devices_resolved"] == ["cpu"]
    with torch.no_grad():
        next(iter(params.values())).add_(1.0)
    result = training.FitResult(iterations=0, stop_reason="test")
    concepts = {"Van Gogh": {"iterations": 0, "stop_reason": "test"}}
    summary = s.finish(result, s.tensor_record(params), reference=ref.kind, concepts=concepts, settings={"k": 1})
    assert set(summary) == set(SUMMARY_KEYS)
    assert summary["data"]["Van Gogh"]["images"] == 2 and summary["data"]["Van Gogh"]["skipped_unreadable"] == 1
    assert summary["devices"] == ["cpu"] and json.loads((run.dir / "summary.json").read_text()) == summary
    assert summary["settings"] == {"k": 1} and summary["output_dir"] == str(tmp_path / "out")
    record = records.load_record(run.dir)
    assert record.meta["k"] == 1 and record.meta["concepts"] == concepts and record.meta["reference"] == "substituted"
    from ldm.checkpoint import read_state_dict

    full = read_state_dict(run.dir / "CiE-VanGogh.safetensors")  # --save_full safetensors: the suffix follows
    base = read_state_dict(tiny_ckpt)
    assert full.keys() == base.keys()
    assert all(torch.equal(full[k], record.tensors[k] if k in record.tensors else base[k]) for k in base)
    assert "CiE-VanGogh.safetensors" in summary["files"]


# ------------------------------------------------------------------------------------------------ default run folder
@pytest.fixture()
def unique_run():
    """A concept name no other run uses, and its default run name; the ``models/<run>`` folder the test creates
    under the repository is removed afterwards."""
    import shutil
    import uuid

    from sepce.paths import MODELS_DIR, run_name

    concept = f"cwdcheck{uuid.uuid4().hex[:10]}"
    name = run_name("CiE", [concept])
    yield concept, name
    shutil.rmtree(MODELS_DIR / name, ignore_errors=True)


def test_default_run_folder_does_not_depend_on_the_working_directory(tiny_ckpt, tmp_path, unique_run):
    """Train with the default --output_dir from another working directory, then generate from the run by its name
    with generate-images.py's default --models_dir: both resolve to <repository>/models/<run name>."""
    from conftest import run_script

    from sepce.paths import MODELS_DIR

    concept, name = unique_run
    write_images(tmp_path / "data" / concept, 2, size=(64, 64))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    model = ["--ckpt_path", tiny_ckpt, "--config_path", tiny_ckpt.parent / "config.yaml"]
    run_script(
        "train-scripts/CiE.py",
        *("--prompt", concept, "--data_dir", tmp_path / "data", "--image_size", "64", "--iterations", "1"),
        *(*model, "--devices", "cpu"),
        cwd=elsewhere,
    )
    assert (MODELS_DIR / name / "erasure.safetensors").is_file()
    assert not (elsewhere / "models").exists()
    (tmp_path / "prompts.csv").write_text(f"case_number,prompt,evaluation_seed\n0,{concept},3\n")
    proc = run_script(
        "eval-scripts/generate-images.py",
        *("--model_name", name, "--prompts_path", tmp_path / "prompts.csv", "--save_path", tmp_path / "images"),
        *("--num_samples", "1", "--sampler", "ddim", "--ddim_steps", "2", "--image_size", "64", "--device", "cpu"),
        *model,
        cwd=elsewhere,
    )
    assert (tmp_path / "images" / name / "0_0.png").is_file(), proc.stdout + proc.stderr


def test_record_names_and_erased_tensors_are_checked_once_for_every_script():
    """records.match_concepts (generate-images.py --erase, compose_erasure.py --erase/--restore, convertModels.py)
    and records.erased_tensors (compose_erasure.py, convertModels.py)."""
    basis = torch.eye(2)
    record = records.ErasureRecord(
        "SepCE",
        ["Van Gogh", "Picasso"],
        {},
        bases={"Van Gogh": basis, "Picasso": basis},
        coefs={"Van Gogh": {"w": torch.ones(3, 2)}, "Picasso": {"w": 2 * torch.ones(3, 2)}},
    )
    assert records.match_concepts(record, ["vangogh", "Van Gogh"]) == ["Van Gogh"]
    with pytest.raises(ValueError, match=r"^--restore 'Monet' is not a concept of the record"):
        records.match_concepts(record, ["Monet"], "--restore")
    base = {"w": torch.zeros(3, 2, dtype=torch.float16), "other": torch.ones(1)}
    changed = records.erased_tensors(base, record, ["Picasso"])
    assert (
        list(changed) == ["w"] and changed["w"].dtype == torch.float16 and torch.equal(changed["w"], 2 * base["w"] + 2)
    )
    assert records.erased_state_dict(base, record)["other"] is base["other"]
    with pytest.raises(ValueError, match="has no tensor 'w'"):
        records.erased_tensors({"other": torch.ones(1)}, record)
    joint = records.ErasureRecord("CiE", ["Van Gogh", "Picasso"], {}, tensors={"w": torch.ones(3, 2)})
    with pytest.raises(ValueError, match=r"shape \[3, 2\], the base \[2, 3\]"):
        records.erased_tensors({"w": torch.zeros(2, 3)}, joint)
    with pytest.raises(ValueError, match="jointly; a subset needs a SepCE record"):
        records.match_concepts(joint, ["Picasso"])
