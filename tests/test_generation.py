"""Image generation (sepce/generation.py, eval-scripts/generate-images.py, generate-data.py, txt2img.py) on the tiny
model: seeds → images (ESD convention, diffusers K-LMS loop as an independent oracle), batch-size and run
invariance, resumability, model resolution (original, erasure record, SepCE subsets, full checkpoint), bad input
before any model loads, the generate-data manifest and class folders, and torchrun sharding with two CPU
processes."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, assert_one_line_error, one_line_error
from ldm.checkpoint import read_state_dict
from ldm.models.diffusion import sampling as S
from PIL import Image

import sepce.data_generation as D
import sepce.generation as G
import sepce.modeling as M
from sepce.cli import parse_device
from sepce.cli import run as run_cli
from sepce.prompt_csv import PromptRow, read_prompt_csv
from sepce.records import ErasureRecord, base_info, changed_tensors, save_record, write_full_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

STEPS = 8


@pytest.fixture
def gen_images(load_script):
    return load_script("eval-scripts/generate-images.py")


@pytest.fixture
def gen_data(load_script):
    return load_script("eval-scripts/generate-data.py")


@pytest.fixture
def txt2img(load_script):
    return load_script("eval-scripts/txt2img.py")


def sd_argv(ckpt: Path, prompts, save_path, batch_size: int = 2, steps: int = STEPS) -> list:
    """generate-images.py flags: the original model (SD-v1-4, the tiny checkpoint ``ckpt``) on the ``prompts`` CSV,
    2 images per row, into ``save_path``."""
    return [
        *("--model_name", "SD-v1-4", "--prompts_path", prompts, "--save_path", save_path),
        *("--num_samples", 2, "--batch_size", batch_size, *tiny_args(ckpt, steps)),
    ]


def run(module, *argv):
    """Run a script in-process as its ``__main__`` does (:func:`sepce.cli.run`)."""
    return run_cli(module.parse_args, module.main, [str(a) for a in argv], prog=Path(module.__file__).name)


def tiny_args(ckpt: Path, steps: int = STEPS) -> list:
    return [
        "--ckpt_path",
        ckpt,
        "--config_path",
        ckpt.parent / "config.yaml",
        "--image_size",
        64,
        "--ddim_steps",
        steps,
        "--device",
        "cpu",
        "--quiet",
    ]


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(np.int16)


def assert_same_image(a: Path, b: Path, exact: bool) -> None:
    """Same batch composition → bit-identical; another batch size may move a few pixels by one grey level
    (round-off of batched CPU kernels; the start noise itself is identical, see test_case_noise_*)."""
    diff = np.abs(pixels(a) - pixels(b))
    if exact:
        assert diff.max() == 0, f"{a.name} differs"
    else:
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01, f"{a.name}: max {diff.max()}, {(diff > 0).mean()}"


PROMPTS = "case_number,prompt,evaluation_seed,class\n0,Van Gogh,42,0\n1,Picasso,7,1\n2,,3,9\n"


@pytest.fixture
def prompts(tmp_path) -> Path:
    return write_csv(tmp_path / "prompts.csv", PROMPTS)


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if a model is loaded (bad input must be caught before)."""

    def boom(*args, **kwargs):
        raise AssertionError("a model was loaded before the bad input was reported")

    monkeypatch.setattr(M, "load_model", boom)


# ------------------------------------------------------------------------------------------------ seeds
def test_case_noise_is_the_esd_latent_and_independent_of_num_samples():
    shape = (4, 8, 8)
    with torch.random.fork_rng(devices=[]):
        esd = torch.randn((5, *shape), generator=torch.manual_seed(1234))  # ESD generate-images.py
    assert torch.equal(G.case_noise(1234, 5, shape), esd)
    assert torch.equal(G.case_noise(1234, 2, shape), esd[:2])
    assert not torch.equal(G.case_noise(1235, 1, shape)[0], esd[0])


def test_derive_seed_is_the_documented_hash():
    digest = hashlib.sha256(b"7:12").digest()
    assert D.derive_seed(7, 12) == int.from_bytes(digest[:4], "big") % 2**31
    seeds = [D.derive_seed(0, i) for i in range(200)]
    assert len(set(seeds)) == 200 and all(0 <= s < 2**31 for s in seeds)
    assert [r.evaluation_seed for r in D.data_rows("x", 3, 0, None)] == seeds[:3]


def test_generated_images_match_esd_diffusers_lms_loop(tmp_path, tiny_ckpt, tiny_model, prompts, gen_images):
    """Independent oracle: ESD's generate-images.py recipe (diffusers LMSDiscreteScheduler, latents from
    torch.manual_seed(seed) × init_noise_sigma, guidance 7.5, (x/2+0.5).clamp → round(255 x))."""
    from diffusers import LMSDiscreteScheduler

    run(
        gen_images,
        *sd_argv(tiny_ckpt, prompts, tmp_path / "out"),
    )
    model, scale = tiny_model, 7.5
    for row in read_prompt_csv(prompts, allow_empty_prompt=True):
        oracle = LMSDiscreteScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000
        )
        oracle.set_timesteps(STEPS)
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            latents = torch.randn((2, 4, 8, 8), generator=torch.manual_seed(row.evaluation_seed))
            latents = latents * oracle.init_noise_sigma
            text = model.get_learned_conditioning([""] * 2 + [row.prompt] * 2)
            for t in oracle.timesteps:
                model_in = oracle.scale_model_input(torch.cat([latents] * 2), t)
                e_u, e_c = model.apply_model(model_in, t.expand(4), text).chunk(2)
                latents = oracle.step(e_u + scale * (e_c - e_u), t, latents).prev_sample
            image = (model.decode_first_stage(latents) / 2 + 0.5).clamp(0, 1)
            expected = (image.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.int16)
        for k in range(2):
            got = pixels(tmp_path / "out" / "SD-v1-4" / f"{row.case_number}_{k}.png")
            assert np.abs(got - expected[k]).max() <= 1
            assert (np.abs(got - expected[k]) > 0).mean() < 0.01
    meta = Image.open(tmp_path / "out" / "SD-v1-4" / "1_1.png").text
    assert (meta["prompt"], meta["seed"], meta["sample"], meta["sampler"]) == ("Picasso", "7", "1", "klms")


@pytest.mark.parametrize("sampler", ["klms", "ddim", "plms", "dpmpp_2m"])
def test_same_seed_same_image_across_runs_and_batch_sizes(tmp_path, tiny_ckpt, prompts, sampler, gen_images):
    for name, batch in (("a", 3), ("b", 3), ("c", 1), ("d", 5)):
        run(
            gen_images,
            *sd_argv(tiny_ckpt, prompts, tmp_path / name, batch_size=batch, steps=5),
            "--sampler",
            sampler,
        )
    names = sorted(p.name for p in (tmp_path / "a" / "SD-v1-4").glob("*.png"))
    assert names == [f"{c}_{k}.png" for c in range(3) for k in range(2)]
    for n in names:
        assert_same_image(tmp_path / "a/SD-v1-4" / n, tmp_path / "b/SD-v1-4" / n, exact=True)
        assert_same_image(tmp_path / "a/SD-v1-4" / n, tmp_path / "c/SD-v1-4" / n, exact=False)
        assert_same_image(tmp_path / "a/SD-v1-4" / n, tmp_path / "d/SD-v1-4" / n, exact=False)
    # different seeds / samples give different images
    assert np.abs(pixels(tmp_path / "a/SD-v1-4/0_0.png") - pixels(tmp_path / "a/SD-v1-4/0_1.png")).mean() > 1


# ------------------------------------------------------------------------------------------- resumability
def test_resume_skips_existing_and_recovers_from_interruption(tmp_path, tiny_ckpt, prompts, monkeypatch, gen_images):
    folder = tmp_path / "out" / "SD-v1-4"
    args = sd_argv(tiny_ckpt, prompts, tmp_path / "out")
    real_save, calls = G.save_png, []

    def interrupted(path, image, text):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(path)
        return real_save(path, image, text)

    monkeypatch.setattr(G, "save_png", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(gen_images, *args)
    monkeypatch.setattr(G, "save_png", real_save)
    assert sorted(p.name for p in folder.iterdir()) == ["0_0.png", "0_1.png", "1_0.png", "generation.json"]
    before = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.png")}

    report = run(gen_images, *args)[0]
    assert (report.written, report.skipped) == (3, 3)
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("*.png") if p.name in before} == before
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temporary files left

    run(gen_images, *args[:5], tmp_path / "fresh", *args[6:])
    for p in folder.glob("*.png"):
        assert_same_image(p, tmp_path / "fresh" / "SD-v1-4" / p.name, exact=False)

    (folder / "1_1.png").unlink()
    assert run(gen_images, *args, "--from_case", 1)[0].written == 1
    assert run(gen_images, *args)[0].written == 0


def test_folder_settings_mismatch_is_refused(tmp_path, tiny_ckpt, prompts, gen_images, capsys):
    args = ["--model_name", "SD-v1-4", "--prompts_path", prompts, "--save_path", tmp_path, "--num_samples", 1]
    run(gen_images, *args, *tiny_args(tiny_ckpt, 4))
    with one_line_error(capsys, pattern=r"other settings \(guidance_scale: 7.5 -> 3.0\)"):
        run(gen_images, *args, *tiny_args(tiny_ckpt, 4), "--guidance_scale", 3)
    report = run(gen_images, *args, *tiny_args(tiny_ckpt, 4), "--guidance_scale", 3, "--overwrite")[0]
    assert report.written == 3
    assert '"guidance_scale": 3.0' in (tmp_path / "SD-v1-4" / G.SETTINGS_FILE).read_text()


def test_without_bars_each_finished_stage_is_one_log_line(tmp_path, tiny_ckpt, prompts, gen_images, caplog):
    """--quiet (or stderr not a terminal): no bar; the model load and the sampling each log one line."""
    caplog.set_level(logging.INFO)
    args = ["--model_name", "SD-v1-4", "--prompts_path", prompts, "--save_path", tmp_path, "--num_samples", 1]
    run(gen_images, *args, *tiny_args(tiny_ckpt, 3))
    done = [r.getMessage() for r in caplog.records if r.name == "sepce.generation"]
    assert len(done) == 1 and re.fullmatch(r"SD-v1-4: generated 3 image\(s\) in \d+ s", done[0]), done
    assert any(r.name == "sepce.modeling" and r.getMessage().startswith("loaded ") for r in caplog.records)


def test_dpmpp_2m_images_and_generation_json_record_the_sampler(tmp_path, tiny_ckpt, tiny_model, prompts, gen_images):
    """``--sampler dpmpp_2m --steps 7``: generation.json and the PNGs record it; the pixels are those of
    ``dpmpp_2m_sample`` with guidance on the same start noise (the ImageSampler wiring)."""
    run(gen_images, *sd_argv(tiny_ckpt, prompts, tmp_path / "out", steps=5), "--sampler", "dpmpp_2m", "--steps", "7")
    folder = tmp_path / "out" / "SD-v1-4"
    settings = json.loads((folder / G.SETTINGS_FILE).read_text())["settings"]
    assert (settings["sampler"], settings["steps"]) == ("dpmpp_2m", 7)
    assert Image.open(folder / "0_0.png").text["sampler"] == "dpmpp_2m"
    sampler = G.ImageSampler(tiny_model, G.SamplingSettings("dpmpp_2m", 7, 7.5, 64), torch.device("cpu"))
    noise, prompt = G.case_noise(42, 1, sampler.latent_shape), "Van Gogh"  # case 0 of PROMPTS
    with torch.no_grad():
        fn = S.cfg(sampler.model_fn, sampler.embed([""]), 7.5)
        latents = S.dpmpp_2m_sample(fn, noise, sampler.embed([prompt]), tiny_model.alphas_cumprod, 7)
    expected = sampler.decode(latents)[0].astype(np.int16)
    assert np.abs(pixels(folder / "0_0.png") - expected).max() <= 1


def test_sampling_settings_are_checked_when_built():
    assert G.SamplingSettings("ddim", 50, 5.0, 64).steps == 50
    for bad, message in (
        (("euler", 10, 7.5, 64), r"--sampler 'euler' is not supported"),
        (("klms", 0, 7.5, 64), r"--ddim_steps 0 must lie in 1..1000"),
        (("klms", 10, float("nan"), 64), r"--guidance_scale nan must be a finite number"),
        (("klms", 10, 7.5, 60), r"--image_size 60 must be a positive multiple of 8"),
    ):
        with pytest.raises(ValueError, match=message):
            G.SamplingSettings(*bad)


# ----------------------------------------------------------------------------------------- bad input
BAD_CSVS = {
    "case_number,prompt\n0,a\n": r"lacks column\(s\) \['evaluation_seed'\]",
    "case_number,prompt,evaluation_seed\n0,a,x\n": r"evaluation_seed 'x' is not an integer",
    "case_number,prompt,evaluation_seed\n0,a,1\n0,b,2\n": r"case_number 0 already appears on line 2",
    "case_number,prompt,evaluation_seed,class\n0,,1,0\n": r"case 0 has an empty prompt",
}


@pytest.mark.parametrize("text", list(BAD_CSVS))
def test_bad_csv_fails_before_model_load(tmp_path, tiny_ckpt, no_model_load, text, gen_images, capsys):
    csv_path = write_csv(tmp_path / "bad.csv", text)
    with one_line_error(capsys, pattern=BAD_CSVS[text]):
        run(
            gen_images,
            "--model_name",
            "SD-v1-4",
            "--prompts_path",
            csv_path,
            "--save_path",
            tmp_path,
            *tiny_args(tiny_ckpt),
        )
    assert not (tmp_path / "SD-v1-4").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--precision", "fp16"], r"--precision fp16 needs a GPU"),
        (["--precision", "bf16"], r"--precision bf16 needs a GPU"),
        (["--device", "cuda:99"], r"no CUDA device is visible" if not torch.cuda.is_available() else r"cuda:99"),
        (["--device", "toaster"], r"--device 'toaster' is not a device name"),
        (["--model_name", "no-such-run"], r"unknown model 'no-such-run'.*available: SD-v1-4, original, run-a"),
        (["--erase", "Van Gogh"], r"--erase \['Van Gogh'\] needs a SepCE erasure record"),
        (["--ddim_steps", "600", "--sampler", "ddim"], r"--ddim_steps 600 must lie in 1..500"),
        (["--image_size", "60"], r"--image_size 60 must be a positive multiple of 8"),
        (["--ddim_steps", "9", "--sampler", "plms"], r"--ddim_steps 9: the CompVis uniform DDIM discretisation"),
        (["--steps", "501", "--sampler", "dpmpp_2m"], r"--ddim_steps 501 must lie in 1..500 for the dpmpp_2m"),
    ],
)
def test_bad_options_fail_before_model_load(
    tmp_path, tiny_ckpt, prompts, no_model_load, extra, message, gen_images, capsys
):
    (tmp_path / "models" / "run-a").mkdir(parents=True)
    (tmp_path / "models" / "run-a" / "model.ckpt").write_bytes(b"x")
    (tmp_path / "models" / "empty").mkdir()
    args = [
        *tiny_args(tiny_ckpt),
        "--model_name",
        "SD-v1-4",
        "--prompts_path",
        prompts,
        "--save_path",
        tmp_path,
        "--models_dir",
        tmp_path / "models",
        *extra,
    ]
    with one_line_error(capsys, pattern=message):
        run(gen_images, *args)


def test_script_error_is_one_line_and_nonzero(tmp_path):
    from conftest import run_script as run_subprocess

    csv_path = write_csv(tmp_path / "bad.csv", "case_number,prompt\n0,a\n")
    proc = run_subprocess(
        "eval-scripts/generate-images.py",
        "--model_name",
        "SD-v1-4",
        "--prompts_path",
        csv_path,
        "--ckpt_path",
        tmp_path / "missing.ckpt",
        check=False,
    )
    line = assert_one_line_error(proc)
    assert line == (
        f"generate-images.py: error: prompt CSV {csv_path} lacks column(s) ['evaluation_seed'] (it has "
        "['case_number', 'prompt']); expected case_number, prompt, evaluation_seed"
    )


# -------------------------------------------------------------------------------------- model resolution
def synthetic_sepce_record(model, ckpt: Path, concepts=("VanGogh", "Picasso"), rank: int = 6) -> ErasureRecord:
    """Random separable increments on every attn2 to_k/to_v (coef d_out × n_c, basis n_c × D)."""
    g = torch.Generator().manual_seed(5)
    sd = model.state_dict()
    layers = [k for k in sd if re.search(r"attn2\.to_[kv]\.weight$", k)]
    dim = sd[layers[0]].shape[1]
    bases = {c: torch.linalg.qr(torch.randn(dim, rank, generator=g))[0].T.contiguous() for c in concepts}
    coefs = {c: {k: torch.randn(sd[k].shape[0], rank, generator=g) for k in layers} for c in concepts}
    return ErasureRecord("SepCE", list(concepts), base_info(ckpt), bases=bases, coefs=coefs, beta=0.5)


@pytest.fixture
def runs(tmp_path, tiny_ckpt, tiny_model):
    """models/sepce-run (record), models/full-run (full checkpoint of the record with every concept)."""
    models = tmp_path / "models"
    record = synthetic_sepce_record(tiny_model, tiny_ckpt)
    save_record(models / "sepce-run" / "erasure.safetensors", record)
    base = read_state_dict(tiny_ckpt)
    write_full_checkpoint(tiny_ckpt, models / "full-run" / "model.ckpt", changed_tensors(record, base))
    return models, record, base


def test_resolve_original_record_subset_and_full_checkpoint(tiny_ckpt, runs):
    models, record, base = runs
    config = tiny_ckpt.parent / "config.yaml"
    original = M.resolve_model("original", tiny_ckpt, config, models)
    assert (original.kind, original.ckpt_path, original.folder_name) == ("original", tiny_ckpt, "original")

    subset = M.resolve_model("sepce-run", tiny_ckpt, config, models, erase=["picasso"])
    assert (subset.kind, subset.erase, subset.folder_name) == ("record", ["Picasso"], "sepce-run")
    every = M.resolve_model(str(models / "sepce-run"), tiny_ckpt, config, models)
    assert every.erase == ["VanGogh", "Picasso"]
    by_file = M.resolve_model(str(models / "sepce-run" / "erasure.safetensors"), tiny_ckpt, config, models)
    assert (by_file.kind, by_file.folder_name) == ("record", "erasure")
    full = M.resolve_model("full-run", tiny_ckpt, config, models)
    assert (full.kind, full.ckpt_path) == ("checkpoint", models / "full-run" / "model.ckpt")

    cpu = torch.device("cpu")
    w_subset = M.load_resolved(subset, cpu).state_dict()
    w_full = M.load_resolved(full, cpu).state_dict()
    for layer, coef in record.coefs["Picasso"].items():
        expected_subset = base[layer] + coef @ (0.5 * record.bases["Picasso"])
        torch.testing.assert_close(w_subset[layer], expected_subset, rtol=0, atol=1e-6)
        expected_full = expected_subset + record.coefs["VanGogh"][layer] @ (0.5 * record.bases["VanGogh"])
        torch.testing.assert_close(w_full[layer], expected_full, rtol=0, atol=1e-6)
    untouched = [k for k in base if "attn2.to_k" not in k and "attn2.to_v" not in k and k in w_subset]
    assert all(torch.equal(w_subset[k], base[k]) for k in untouched[:50])


def test_record_resolution_errors(tmp_path, tiny_ckpt, runs):
    models, record, _ = runs
    config = tiny_ckpt.parent / "config.yaml"
    with pytest.raises(ValueError, match=r"--erase 'Monet' is not a concept of .* holds \['VanGogh', 'Picasso'\]"):
        M.resolve_model("sepce-run", tiny_ckpt, config, models, erase=["Monet"])
    other = tmp_path / "other.ckpt"
    other.write_bytes(tiny_ckpt.read_bytes() + b"\0")
    with pytest.raises(ValueError, match=r"was made for base checkpoint"):
        M.resolve_model("sepce-run", other, config, models)
    joint = ErasureRecord(
        "CiE",
        ["Van Gogh", "Picasso"],
        base_info(tiny_ckpt),
        tensors={k: v for k, v in list(read_state_dict(tiny_ckpt).items())[:1]},
    )
    save_record(models / "cie-run" / "erasure.safetensors", joint)
    with pytest.raises(ValueError, match=r"erases \['Van Gogh', 'Picasso'\] jointly; a subset needs a SepCE"):
        M.resolve_model("cie-run", tiny_ckpt, config, models, erase=["Van Gogh"])
    (models / "full-run" / "second.ckpt").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"holds no erasure.safetensors and 2 full checkpoints"):
        M.resolve_model("full-run", tiny_ckpt, config, models)
    with pytest.raises(ValueError, match=r"available: SD-v1-4, original, cie-run, full-run, sepce-run"):
        M.resolve_model("nope", tiny_ckpt, config, models)


def test_run_names_of_the_training_scripts_are_found(tmp_path, tiny_ckpt, runs):
    """A run folder is named by sepce.paths.run_name (what the training scripts write); --model_name may spell the
    concepts as prompts ('Van Gogh') or in another case."""
    models, _, _ = runs
    config = tiny_ckpt.parent / "config.yaml"
    (models / "sepce-run").rename(models / "SepCE-VanGogh+Picasso")
    for name in ("SepCE-VanGogh+Picasso", "SepCE-Van Gogh+Picasso", "sepce-vangogh+picasso"):
        resolved = M.resolve_model(name, tiny_ckpt, config, models)
        assert (resolved.kind, resolved.folder_name) == ("record", "SepCE-VanGogh+Picasso"), name
    assert M.find_run(models, "SepCE-Van Gogh") is None
    with pytest.raises(
        ValueError, match=r"training runs are named <method>-<Concept>\[\+<Concept>...\], e.g. CiE-VanGogh"
    ):
        M.resolve_model("CiE-Van Gogh", tiny_ckpt, config, models)


def test_erased_images_record_equals_full_checkpoint_and_subsets_differ(
    tmp_path, tiny_ckpt, runs, prompts, gen_images, capsys
):
    models, _, _ = runs
    common = [
        "--prompts_path",
        prompts,
        "--save_path",
        tmp_path / "eval",
        "--num_samples",
        1,
        "--batch_size",
        3,
        "--models_dir",
        models,
        *tiny_args(tiny_ckpt),
    ]
    run(gen_images, "--model_name", "sepce-run", *common)
    run(gen_images, "--model_name", "full-run", *common)
    run(gen_images, "--model_name", "sepce-run", "--erase", "Picasso", "--output_name", "sepce-picasso", *common)
    run(gen_images, "--model_name", "SD-v1-4", *common)
    with one_line_error(capsys, pattern=r"other settings \(model.erase: \['VanGogh', 'Picasso'\] -> \['Picasso'\]"):
        run(gen_images, "--model_name", "sepce-run", "--erase", "Picasso", *common)
    out = tmp_path / "eval"
    for case in range(3):
        assert_same_image(out / "sepce-run" / f"{case}_0.png", out / "full-run" / f"{case}_0.png", exact=True)
        for a, b in (("sepce-run", "SD-v1-4"), ("sepce-run", "sepce-picasso"), ("sepce-picasso", "SD-v1-4")):
            assert np.abs(pixels(out / a / f"{case}_0.png") - pixels(out / b / f"{case}_0.png")).mean() > 0.5
    assert Image.open(out / "sepce-picasso" / "0_0.png").text["erase"] == "Picasso"


def test_txt2img_writes_named_images_and_refuses_overwrite(tmp_path, tiny_ckpt, prompts, gen_images, txt2img, capsys):
    paths = run(
        txt2img,
        "--prompt",
        "Van Gogh",
        "--n_samples",
        2,
        "--seed",
        42,
        "--outdir",
        tmp_path / "t2i",
        *tiny_args(tiny_ckpt),
    )
    assert [p.name for p in paths] == ["van-gogh-42_0.png", "van-gogh-42_1.png"]
    run(
        gen_images,
        *sd_argv(tiny_ckpt, prompts, tmp_path / "eval"),
    )
    for k in range(2):  # same prompt and seed (case 0 of the CSV) → same image as generate-images.py
        assert_same_image(paths[k], tmp_path / "eval" / "SD-v1-4" / f"0_{k}.png", exact=False)
    with one_line_error(capsys, pattern=r"van-gogh-42_0.png already exists; pass --overwrite"):
        run(txt2img, "--prompt", "Van Gogh", "--outdir", tmp_path / "t2i", *tiny_args(tiny_ckpt))


# ----------------------------------------------------------------------------------------- generate-data
def test_generate_data_manifest_class_folder_and_resume(tmp_path, tiny_ckpt, gen_images, gen_data, capsys):
    data = tmp_path / "data"
    common = ["--save_path", data, "--num_samples", 2, "--batch_size", 4, *tiny_args(tiny_ckpt)]
    report = run(gen_data, "--prompt", "Van Gogh", "--model_name", "0", "--num_cases", 3, *common)
    folder = data / "Van Gogh"
    assert report.written == 6
    manifest = read_prompt_csv(folder / "manifest.csv")
    assert [(r.case_number, r.prompt, r.evaluation_seed, r.class_index) for r in manifest] == [
        (i, "Van Gogh", D.derive_seed(0, i), 0) for i in range(3)
    ]
    for i in range(3):
        for k in range(2):
            image, linked = folder / f"{i}_{k}.png", data / "train" / "0" / f"van-gogh_{i}_{k}.png"
            assert os.path.samefile(image, linked)
            assert Image.open(image).text["seed"] == str(D.derive_seed(0, i))

    # the manifest is a prompt CSV: generate-images.py redoes the same images from it
    run(
        gen_images,
        *sd_argv(tiny_ckpt, folder / "manifest.csv", tmp_path / "redo", batch_size=4),
    )
    for image in folder.glob("*.png"):
        assert_same_image(image, tmp_path / "redo" / "SD-v1-4" / image.name, exact=True)

    report = run(gen_data, "--prompt", "Van Gogh", "--num_cases", 4, *common)  # class looked up from the prompt
    assert (report.written, report.skipped) == (2, 6)
    assert len(read_prompt_csv(folder / "manifest.csv")) == 4
    assert len(list((data / "train" / "0").glob("*.png"))) == 8
    with one_line_error(capsys, pattern=r"records case 0 as prompt 'Van Gogh' seed \d+, not 'Van Gogh' seed"):
        run(gen_data, "--prompt", "Van Gogh", "--num_cases", 4, "--seed", 1, *common)
    with one_line_error(capsys, pattern=r"other settings \(steps: 8 -> 9\)"):
        run(gen_data, "--prompt", "Van Gogh", "--num_cases", 4, *common, "--ddim_steps", 9)


def test_generate_data_blank_prompt_and_class_checks(tmp_path, tiny_ckpt, no_model_load, gen_data, capsys):
    data = tmp_path / "data"
    common = ["--save_path", data, "--num_cases", 1, *tiny_args(tiny_ckpt)]
    with one_line_error(capsys, pattern=r"--model_name 1 is class 'Picasso' .* but --prompt is 'Van Gogh'"):
        run(gen_data, "--prompt", "Van Gogh", "--model_name", "1", *common)
    with one_line_error(capsys, pattern=r"--model_name 12: not a class index"):
        run(gen_data, "--prompt", "Van Gogh", "--model_name", "12", *common)
    with one_line_error(capsys, pattern=r"--model_name 'Monet' is neither a class index"):
        run(gen_data, "--prompt", "Van Gogh", "--model_name", "Monet", *common)
    with one_line_error(capsys, pattern=r"cannot name a data folder"):
        run(gen_data, "--prompt", "a/b", "--model_name", "none", *common)
    assert not data.exists() or not any(data.rglob("*.png"))


def test_generate_data_blank_prompt_goes_to_blank_folder(tmp_path, tiny_ckpt, gen_data):
    data = tmp_path / "data"
    run(gen_data, "--prompt", "", "--save_path", data, "--num_cases", 2, "--link", "copy", *tiny_args(tiny_ckpt, 3))
    assert sorted(p.name for p in (data / "blank").glob("*.png")) == ["0_0.png", "1_0.png"]
    copies = sorted((data / "train" / "9").iterdir())
    assert [p.name for p in copies] == ["blank_0_0.png", "blank_1_0.png"]
    assert not os.path.samefile(copies[0], data / "blank" / "0_0.png")
    assert read_prompt_csv(data / "blank" / "manifest.csv", allow_empty_prompt=True)[0].class_index == 9


def test_link_file_modes(tmp_path):
    source = tmp_path / "a.png"
    source.write_bytes(b"one")
    for mode in ("hardlink", "symlink", "copy"):
        target = tmp_path / mode / "a.png"
        assert D.link_file(source, target, mode) and target.read_bytes() == b"one"
        assert D.link_file(source, target, mode)  # idempotent
    assert (tmp_path / "symlink" / "a.png").is_symlink()
    other = tmp_path / "b.png"
    other.write_bytes(b"two")
    assert not D.link_file(other, tmp_path / "copy" / "a.png", "copy")
    assert D.link_file(other, tmp_path / "copy" / "a.png", "copy", overwrite=True)
    assert (tmp_path / "copy" / "a.png").read_bytes() == b"two"


# -------------------------------------------------------------------------------------------- torchrun
def test_torchrun_two_cpu_processes_write_every_file_exactly_once(tmp_path, tiny_ckpt, gen_images):
    rows = "".join(f"{i},{['Van Gogh', 'Picasso', 'Cezanne'][i % 3]},{100 + i},{i % 3}\n" for i in range(5))
    csv_path = write_csv(tmp_path / "p.csv", "case_number,prompt,evaluation_seed,class\n" + rows)
    args = [
        str(a)
        for a in [
            "--model_name",
            "SD-v1-4",
            "--prompts_path",
            csv_path,
            "--num_samples",
            2,
            "--batch_size",
            1,
            *tiny_args(tiny_ckpt, 4),
        ]
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(REPO / "eval-scripts" / "generate-images.py"),
            *args,
            "--save_path",
            str(tmp_path / "dist"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = {
        int(m.group(2)): int(m.group(1))
        for m in re.finditer(r"wrote (\d+) image\(s\), 0 already existed \(rank (\d)/2\)", proc.stdout)
    }
    assert written == {0: 6, 1: 4}  # rows 0,2,4 and 1,3 (round-robin), 2 samples each
    files = sorted(p.name for p in (tmp_path / "dist" / "SD-v1-4").glob("*.png"))
    assert files == sorted(f"{c}_{k}.png" for c in range(5) for k in range(2))
    assert sum(written.values()) == len(files)  # no file was written twice

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun worker (OMP_NUM_THREADS=1): same kernels, same round-off
    try:
        run(gen_images, *args, "--save_path", tmp_path / "single")
    finally:
        torch.set_num_threads(threads)
    for name in files:
        assert_same_image(tmp_path / "dist" / "SD-v1-4" / name, tmp_path / "single" / "SD-v1-4" / name, exact=True)


def test_rank_from_env_and_device(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    rank = G.Rank.from_env()
    assert (rank.rank, rank.world_size, rank.local_rank) == (3, 4, 1)
    assert parse_device("cpu") == torch.device("cpu")  # a bare 'cuda' would be cuda:1 (sepce.cli)
    rows = [PromptRow(i, "p", i) for i in range(10)]
    assert [r.case_number for r in G.shard_rows(rows, rank.rank, rank.world_size)] == [3, 7]
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ValueError, match="inconsistent"):
        G.Rank.from_env()


def test_bench_sampling_tiny_smoke(tmp_path, capsys, load_script):
    bench = load_script("bench/bench_sampling.py")
    args = bench.parse_args(
        ["--tiny", "--steps", "4", "--batch_size", "2", "--repeats", "1", "--out", str(tmp_path / "b.json")]
    )
    result = bench.main(args)
    assert json.loads((tmp_path / "b.json").read_text()) == result
    for key in ("unet_s", "step_s", "decode_s", "save_s", "end_to_end_s", "images_per_s", "images_per_s_at_100_steps"):
        assert result[key] > 0, key
    assert (result["steps"], result["batch_size"], result["image_size"]) == (4, 2, 64)
    assert '"loop_overhead_pct"' in capsys.readouterr().out


def test_16_bit_sampling_runs_under_autocast_close_to_fp32(tiny_ckpt):
    """The --precision bf16/fp16 code path (GPU-only on the CLI), exercised on the CPU through the library."""
    resolved = M.resolve_model("SD-v1-4", tiny_ckpt, tiny_ckpt.parent / "config.yaml")
    model = M.load_resolved(resolved, torch.device("cpu"))
    settings = G.SamplingSettings("klms", 6, 7.5, 64)
    images = {}
    for dtype in (torch.float32, torch.bfloat16):
        sampler = G.ImageSampler(model, settings, torch.device("cpu"), dtype)
        noise = G.case_noise(3, 2, sampler.latent_shape)
        images[dtype] = sampler(["Van Gogh", "Picasso"], noise).astype(np.int16)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # weights untouched
    diff = np.abs(images[torch.bfloat16] - images[torch.float32])
    assert 0 < diff.mean() < 3
