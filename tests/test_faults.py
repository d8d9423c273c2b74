"""Fault injection (issue 24, README "Runs, records and sharing them"): damaged erasure records and checkpoints,
non-finite models, concurrent and killed runs (also of folders drawn by step workers), and image folders changed
after generation, on the tiny model and the shipped concept-world model. Each fault must end with ONE error line and
exit status 4 (a failed check; a sealless record: a one-line warning), with nothing written, nothing lost, and
nothing half-written that a later run would take as complete."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, assert_one_line_error, run_script
from ldm.checkpoint import IntegrityError, load_model_from_config, read_state_dict
from PIL import Image

import sepce.generation as G
from sepce.cli import EXIT_CHECK_FAILED
from sepce.cli import run as run_cli
from sepce.evaluation.compare import CompareSettings, compare_folders
from sepce.evaluation.verify import FolderIntegrityError, verify_folders
from sepce.folders import IMAGES_KEY, SETTINGS_FILE
from sepce.io import save_torch, sha256_file
from sepce.pipeline.executors import Launch
from sepce.pipeline.runner import StepFailed, run_plan
from sepce.pipeline.steps import ScriptStep
from sepce.records import HEADER_KEY, RECORD_NAME, ErasureRecord, base_info, load_record, save_record
from sepce.world.model import SHIPPED_CKPT, SHIPPED_CONFIG

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

PROMPTS = "case_number,prompt,evaluation_seed,class\n0,Van Gogh,42,0\n1,Picasso,7,1\n2,,3,9\n"
NUM_SAMPLES = 2  # images per row: 6 in all


# ------------------------------------------------------------------------------------------------ helpers
@pytest.fixture(params=["tiny", "world"])
def base(request, tiny_ckpt) -> tuple[Path, Path]:
    """(checkpoint, config) of the tiny random model or of the shipped concept-world model."""
    if request.param == "tiny":
        return tiny_ckpt, tiny_ckpt.parent / "config.yaml"
    return SHIPPED_CKPT, SHIPPED_CONFIG


@pytest.fixture
def gen_images(load_script):
    return load_script("eval-scripts/generate-images.py")


@pytest.fixture
def prompts(tmp_path) -> Path:
    path = tmp_path / "prompts.csv"
    path.write_text(PROMPTS)
    return path


def attn2_key(state_dict) -> str:
    return next(k for k in state_dict if k.endswith("attn2.to_k.weight"))


def make_record(models: Path, ckpt: Path, config: Path) -> Path:
    """A CiE-style record (one attn2.to_k weight of the base, halved) in ``models/CiE-Test/``."""
    sd = read_state_dict(ckpt)
    key = attn2_key(sd)
    record = ErasureRecord("CiE", ["Test"], base_info(ckpt, config), tensors={key: sd[key] * 0.5})
    return save_record(models / "CiE-Test" / RECORD_NAME, record)


def tensor_span(path: Path, name: str) -> tuple[int, int]:
    """Byte range of tensor ``name``'s data in a safetensors file (8-byte header length, JSON header, data)."""
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    start, end = json.loads(raw[8 : 8 + length])[name]["data_offsets"]
    return 8 + length + start, 8 + length + end


def gen_argv(ckpt: Path, config: Path, prompts: Path, out: Path, model_name: str = "SD-v1-4", models=None) -> list:
    """generate-images.py flags: 2 images per row, DDIM 4 steps, 64 px, CPU."""
    argv = [
        *("--model_name", model_name, "--prompts_path", prompts, "--save_path", out, "--num_samples", NUM_SAMPLES),
        *("--ckpt_path", ckpt, "--config_path", config, "--image_size", 64, "--sampler", "ddim", "--ddim_steps", 4),
        *("--batch_size", 2, "--device", "cpu", "--quiet"),
    ]
    return [str(a) for a in argv + (["--models_dir", models] if models is not None else [])]


def run_in_process(capsys, module, argv) -> tuple[int, str]:
    """(exit status, stderr) of a script run in-process as its ``__main__`` does (:func:`sepce.cli.run`)."""
    capsys.readouterr()
    try:
        run_cli(module.parse_args, module.main, argv, prog=Path(module.__file__).name)
        code = 0
    except SystemExit as stop:
        code = stop.code
    return code, capsys.readouterr().err


def check_failed(result, *needles: str) -> str:
    """One error line holding ``needles``, exit status 4, no traceback."""
    return assert_one_line_error(result, *needles, status=EXIT_CHECK_FAILED)


def pngs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*.png")) if folder.exists() else []


# ------------------------------------------------------------------------------------------ erasure records
def test_flipped_bytes_in_a_record_fail_before_any_image(base, tmp_path, prompts):
    """64 flipped bytes in the tensor data (same size, a bad copy): refused from the command line with one line
    naming the file and the tensor that differs; no image is drawn."""
    ckpt, config = base
    record = make_record(tmp_path / "models", ckpt, config)
    start, end = tensor_span(record, f"tensor.{attn2_key(read_state_dict(ckpt))}")
    raw = bytearray(record.read_bytes())
    raw[start : start + 64] = bytes(b ^ 0xFF for b in raw[start : start + 64])
    record.write_bytes(bytes(raw))

    out = tmp_path / "eval"
    proc = run_script(
        "eval-scripts/generate-images.py",
        *gen_argv(ckpt, config, prompts, out, "CiE-Test", tmp_path / "models"),
        check=False,
    )
    check_failed(proc, str(record), "differ", "tensor.model.diffusion_model")
    assert pngs(out) == []


def test_truncated_record_fails_everywhere_it_is_read(base, tmp_path, prompts, gen_images, load_script, capsys):
    """A record cut short: generate-images, compose_erasure and convertModels --record each fail with one line."""
    ckpt, config = base
    record = make_record(tmp_path / "models", ckpt, config)
    record.write_bytes(record.read_bytes()[: record.stat().st_size // 2])

    out = tmp_path / "eval"
    result = run_in_process(capsys, gen_images, gen_argv(ckpt, config, prompts, out, "CiE-Test", tmp_path / "models"))
    check_failed(result, "cannot read erasure record", str(record))
    assert pngs(out) == []

    compose = load_script("train-scripts/compose_erasure.py")
    result = run_in_process(capsys, compose, ["--record", str(record), "--ckpt_path", str(ckpt)])
    check_failed(result, "cannot read erasure record")
    convert = load_script("train-scripts/convertModels.py")
    argv = ["--ckpt_path", ckpt, "--config_path", config, "--record", record, "--output_path", tmp_path / "unet.pt"]
    check_failed(run_in_process(capsys, convert, [str(a) for a in argv]), "cannot read erasure record")
    assert sorted(p.name for p in record.parent.iterdir()) == [RECORD_NAME]
    assert not (tmp_path / "unet.pt").exists()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_value_in_a_record(bad, base, tmp_path, prompts, gen_images, capsys, caplog):
    """NaN/inf written into a sealed record's tensor: its digest no longer matches. A record written before seals
    (no digest) holding NaN/inf: one warning, then refused naming the tensor. save_record refuses NaN/inf."""
    ckpt, config = base
    models = tmp_path / "models"
    record = make_record(models, ckpt, config)
    key = attn2_key(read_state_dict(ckpt))
    start, _ = tensor_span(record, f"tensor.{key}")
    raw = bytearray(record.read_bytes())
    raw[start : start + 4] = struct.pack("<f", bad)
    record.write_bytes(bytes(raw))
    check_failed(
        run_in_process(capsys, gen_images, gen_argv(ckpt, config, prompts, tmp_path / "a", "CiE-Test", models)),
        "differ",
        f"tensor.{key}",
    )

    from safetensors.torch import save_file

    sd = read_state_dict(ckpt)
    value = sd[key] * 0.5
    value.view(-1)[3] = bad
    header = {"format": "sepce-erasure/1", "method": "CiE", "concepts": ["Test"], "base": base_info(ckpt, config)}
    save_file({f"tensor.{key}": value.contiguous()}, str(record), metadata={HEADER_KEY: json.dumps(header)})
    caplog.clear()
    result = run_in_process(capsys, gen_images, gen_argv(ckpt, config, prompts, tmp_path / "b", "CiE-Test", models))
    check_failed(result, f"tensor.{key}", "non-finite", "1 non-finite value(s)")
    assert [r for r in caplog.records if "no content digest" in r.getMessage()] != []
    assert pngs(tmp_path / "a") == pngs(tmp_path / "b") == []

    with pytest.raises(IntegrityError, match=f"tensor.{key}"):
        save_record(tmp_path / "refused" / RECORD_NAME, ErasureRecord("CiE", ["Test"], {}, tensors={key: value}))
    assert not (tmp_path / "refused" / RECORD_NAME).exists()


def test_record_without_seal_loads_with_one_warning(base, tmp_path, prompts, gen_images, capsys, caplog):
    """A finite record written before records were sealed still works, with exactly one warning line."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    ckpt, config = base
    record = make_record(tmp_path / "models", ckpt, config)
    with safe_open(str(record), framework="pt") as f:
        tensors, header = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()["sepce"]
    save_file(tensors, str(record), metadata={"sepce": header})  # as records were written before seals
    caplog.clear()
    code, _ = run_in_process(
        capsys, gen_images, gen_argv(ckpt, config, prompts, tmp_path / "eval", "CiE-Test", tmp_path / "models")
    )
    assert code == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and str(record) in r.getMessage()]
    assert len(warnings) == 1 and "no content digest" in warnings[0]
    assert len(pngs(tmp_path / "eval")) == 3 * NUM_SAMPLES


def test_full_checkpoint_with_a_nan_is_refused(base, tmp_path, prompts, gen_images, capsys):
    """One NaN in a full checkpoint: loading it (as the model, or as the base) fails naming the tensor."""
    ckpt, config = base
    sd = read_state_dict(ckpt)
    key = attn2_key(sd)
    sd[key] = sd[key].clone()
    sd[key].view(-1)[0] = float("nan")
    bad = save_torch(tmp_path / "nan.ckpt", {"state_dict": sd})
    with pytest.raises(IntegrityError, match=key):
        load_model_from_config(config, bad)
    for argv in (
        gen_argv(ckpt, config, prompts, tmp_path / "a", str(bad)),
        gen_argv(bad, config, prompts, tmp_path / "b"),
    ):
        check_failed(run_in_process(capsys, gen_images, argv), key, "non-finite")
    assert pngs(tmp_path / "a") == pngs(tmp_path / "b") == []


# ----------------------------------------------------------------------------------------------- generation
def test_non_finite_latents_stop_the_folder_and_the_run_resumes(
    base, tmp_path, prompts, gen_images, capsys, monkeypatch
):
    """The model turns non-finite at the second batch: one line naming its images, the first batch stays written
    and recorded, nothing of the second is; after the fix the run resumes after the first batch."""
    ckpt, config = base
    argv = gen_argv(ckpt, config, prompts, tmp_path / "eval")
    folder = tmp_path / "eval" / "SD-v1-4"
    real, calls = G.ImageSampler.sample_latents, []

    def failing(self, prompts_, noise, progress=False):
        calls.append(len(prompts_))
        latents = real(self, prompts_, noise, progress)
        if len(calls) == 2:
            latents[1, 0, 0, 0] = float("nan")
        return latents

    monkeypatch.setattr(G.ImageSampler, "sample_latents", failing)
    check_failed(run_in_process(capsys, gen_images, argv), "non-finite latents", "1_1.png", "2 image(s) written")
    assert pngs(folder) == ["0_0.png", "0_1.png"]
    verify_folders(folder)
    before = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.png")}

    monkeypatch.setattr(G.ImageSampler, "sample_latents", real)
    code, _ = run_in_process(capsys, gen_images, argv)
    assert code == 0 and len(pngs(folder)) == 3 * NUM_SAMPLES
    assert {n: (folder / n).stat().st_mtime_ns for n in before} == before
    verify_folders(folder)


def test_a_nan_model_and_a_collapsed_decoder_write_nothing(
    tmp_path, tiny_ckpt, prompts, gen_images, capsys, monkeypatch
):
    """A model with a NaN weight (whatever let it through) or whose images come out constant writes no image."""
    config = tiny_ckpt.parent / "config.yaml"
    real_load = G.load_resolved

    def nan_model(resolved, device):
        model = real_load(resolved, device)
        weight = dict(model.named_parameters())[attn2_key(dict(model.named_parameters()))]
        weight.data.view(-1)[0] = float("nan")
        return model

    monkeypatch.setattr(G, "load_resolved", nan_model)
    check_failed(run_in_process(capsys, gen_images, gen_argv(tiny_ckpt, config, prompts, tmp_path / "a")), "non-finite")
    assert pngs(tmp_path / "a") == []

    def zeroed_decoder(resolved, device):
        model = real_load(resolved, device)
        conv_out = model.first_stage_model.decoder.conv_out
        conv_out.weight.data.zero_()
        conv_out.bias.data.zero_()
        return model

    monkeypatch.setattr(G, "load_resolved", zeroed_decoder)
    check_failed(
        run_in_process(capsys, gen_images, gen_argv(tiny_ckpt, config, prompts, tmp_path / "b")),
        "collapsed (constant) images",
        "0_0.png, 0_1.png",
    )
    assert pngs(tmp_path / "b") == []
    assert G.collapsed_rows(
        np.stack([np.full((4, 4, 3), 7, np.uint8), np.eye(4, dtype=np.uint8)[..., None].repeat(3, 2)])
    ) == [0]


def test_two_processes_generating_into_one_folder(base, tmp_path, prompts):
    """Two runs started at once into one folder: both succeed, every image is written once, recorded with its
    digest, and the folder verifies. Two runs with different settings: exactly one is refused."""
    ckpt, config = base
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    script = str(REPO / "eval-scripts/generate-images.py")

    def start(*extra):
        argv = gen_argv(ckpt, config, prompts, tmp_path / "eval") + list(extra)
        return subprocess.Popen(
            [sys.executable, script, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )

    procs = [start(), start()]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    written = [int(o[0].split("wrote ")[1].split(" ")[0]) for o in outs]
    folder = tmp_path / "eval" / "SD-v1-4"
    assert sum(written) == 3 * NUM_SAMPLES
    recorded = json.loads((folder / SETTINGS_FILE).read_text())[IMAGES_KEY]
    assert sorted(recorded) == pngs(folder) and len(recorded) == 3 * NUM_SAMPLES
    assert all(sha256_file(folder / n) == d for n, d in recorded.items())
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]
    verify_folders(folder)

    shutil.rmtree(folder)
    procs = [start(), start("--guidance_scale", "3")]
    outs = [p.communicate(timeout=600) for p in procs]
    assert sorted(p.returncode for p in procs) == [0, 1], [o[1][-2000:] for o in outs]
    refused = outs[[p.returncode for p in procs].index(1)][1]
    assert_one_line_error((1, refused), "holds images made with other settings")
    verify_folders(folder)
    assert len(pngs(folder)) == 3 * NUM_SAMPLES


# ------------------------------------------------------------------------------------------------ killed runs
KILL_AT_RENAME = """
import os, runpy, signal, sys
target, script = os.path.abspath(sys.argv[1]), sys.argv[2]
real = os.replace
def replace(src, dst, *args, **kwargs):
    if os.path.abspath(dst) == target:  # everything is written, the final rename is next: the worst moment
        os.kill(os.getpid(), signal.SIGKILL)
    return real(src, dst, *args, **kwargs)
os.replace = replace
sys.argv = [script, *sys.argv[3:]]
runpy.run_path(script, run_name="__main__")
"""


def killed_run(target: Path, script: str, *argv) -> subprocess.CompletedProcess:
    """``script argv`` killed (SIGKILL) right before it renames its finished output onto ``target``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-c", KILL_AT_RENAME, str(target), str(REPO / script), *map(str, argv)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def visible(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def test_kill_during_compose_erasure_leaves_nothing_taken_as_complete(base, tmp_path):
    ckpt, config = base
    record = make_record(tmp_path / "models", ckpt, config)
    output = record.parent / "composed-Test.ckpt"
    argv = ("--record", record, "--ckpt_path", ckpt, "--output", output)
    proc = killed_run(output, "train-scripts/compose_erasure.py", *argv)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert visible(record.parent) == [RECORD_NAME]  # no checkpoint, no sidecar
    run_script("train-scripts/compose_erasure.py", *argv)
    done = ["composed-Test.ckpt", "composed-Test.ckpt.json", RECORD_NAME, f"{RECORD_NAME}.sha256"]
    assert visible(record.parent) == done
    composed, key = read_state_dict(output), attn2_key(read_state_dict(ckpt))
    assert torch.equal(composed[key], load_record(record).tensors[key])


def test_kill_during_pipeline_export_leaves_nothing_taken_as_complete(base, tmp_path):
    ckpt, config = base
    output = tmp_path / "exported"
    argv = ("--ckpt_path", ckpt, "--config_path", config, "--output_path", output, "--pipeline")
    proc = killed_run(output, "train-scripts/convertModels.py", *argv)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert visible(tmp_path) == []  # no pipeline folder (its temporary folder is hidden and never read)
    run_script("train-scripts/convertModels.py", *argv)
    assert (output / "model_index.json").is_file() and (output / "unet" / "config.json").is_file()


# ---------------------------------------------------------------------------------------------- evaluation
def test_scorers_refuse_folders_changed_after_generation(base, tmp_path, prompts, gen_images, capsys):
    """An image replaced by another, a missing or extra image, a settings mismatch: one line, nothing scored."""
    ckpt, config = base
    run_in_process(capsys, gen_images, gen_argv(ckpt, config, prompts, tmp_path / "eval"))
    run_in_process(capsys, gen_images, gen_argv(ckpt, config, prompts, tmp_path / "eval") + ["--output_name", "copy"])
    original, edited = tmp_path / "eval" / "SD-v1-4", tmp_path / "eval" / "copy"
    verify_folders(original, edited)
    classes_of = {0: 0, 1: 1, 2: 9}

    def score():
        def unused():
            raise AssertionError("a metric network was built for a folder that should be refused")

        settings = CompareSettings(metrics=("lpips",), lpips_factory=unused)
        compare_folders(original, edited, classes_of, [], torch.device("cpu"), settings)

    saved = (edited / "0_0.png").read_bytes()
    shutil.copy(edited / "0_1.png", edited / "0_0.png")
    with pytest.raises(FolderIntegrityError, match=r"1 image\(s\) differ .*'0_0.png'.*delete them and rerun"):
        score()
    (edited / "0_0.png").unlink()
    with pytest.raises(FolderIntegrityError, match="records are missing: '0_0.png'"):
        score()
    run_in_process(capsys, gen_images, gen_argv(ckpt, config, prompts, tmp_path / "eval") + ["--output_name", "copy"])
    remade, before = (np.asarray(Image.open(p), np.int16) for p in (edited / "0_0.png", io.BytesIO(saved)))
    assert np.abs(remade - before).max() <= 1  # same seed, same image (up to batched round-off)
    shutil.copy(edited / "0_1.png", edited / "7_0.png")
    with pytest.raises(FolderIntegrityError, match="not written by generation .*'7_0.png'"):
        score()
    (edited / "7_0.png").unlink()
    verify_folders(original, edited)

    settings = json.loads((edited / SETTINGS_FILE).read_text())
    settings["settings"]["steps"] = 5
    (edited / SETTINGS_FILE).write_text(json.dumps(settings))
    with pytest.raises(FolderIntegrityError, match="different settings .*steps: 4 vs 5"):
        score()
    assert not (edited / "results").exists()

    from sepce.world.benchmark import accuracy_results

    shutil.copy(original / "0_1.png", original / "0_0.png")
    with pytest.raises(FolderIntegrityError, match="differ"):
        accuracy_results(original, None, "unused", classes_of, [])
    assert not (original / "results").exists()


# ------------------------------------------------------------------------------- generation in step workers
WORKER_PLAN = """
import json, sys
from pathlib import Path
from sepce.pipeline.executors import Launch
from sepce.pipeline.runner import run_plan
from sepce.pipeline.steps import ScriptStep
steps = [ScriptStep("generate", n, a, writes=(Path(o),), resumes=True) for n, a, o in json.loads(sys.argv[1])]
run_plan(steps, Launch(jobs=2, inprocess=True))
"""


def worker_steps(tmp_path: Path, out: Path, models: Path, names) -> list:
    """(name, generate-images argv, folder) of one world-model folder per model name: 24 rows, DPM-Solver++ 10."""
    rows = "".join(f"{i},in the style of waves,{100 + i},0\n" for i in range(24))
    csv_path = tmp_path / "rows.csv"
    csv_path.write_text("case_number,prompt,evaluation_seed,class\n" + rows)
    plan = []
    for name in names:
        argv = gen_argv(SHIPPED_CKPT, SHIPPED_CONFIG, csv_path, out, name, models)
        i = argv.index("--num_samples")
        argv[i + 1] = "1"
        argv[argv.index("--sampler") + 1], argv[argv.index("--ddim_steps") + 1] = "dpmpp_2m", "10"
        argv[argv.index("--batch_size") + 1] = "4"
        plan.append((f"images of {name}", ["eval-scripts/generate-images.py", *argv], str(out / name)))
    return plan


def as_steps(plan) -> list:
    return [ScriptStep("generate", name, argv, writes=(Path(out),), resumes=True) for name, argv, out in plan]


def test_worker_generation_resumes_after_a_kill_and_a_bad_folder_fails_alone(tmp_path):
    """Folders drawn by two step workers (world-benchmark's default): the launcher and its workers killed
    (SIGKILL) mid-folder leave only whole images, and the re-run finishes with exactly the images of an
    uninterrupted run; a folder whose record is damaged fails with one line and the other folders are complete."""
    models = tmp_path / "models"
    make_record(models, SHIPPED_CKPT, SHIPPED_CONFIG)
    bad = models / "CiE-Bad"
    shutil.copytree(models / "CiE-Test", bad)
    (bad / RECORD_NAME).write_bytes((bad / RECORD_NAME).read_bytes()[:-64])  # cut short
    names = ["SD-v1-4", "CiE-Test"]

    reference = tmp_path / "reference"
    run_plan(
        [
            ScriptStep("generate", n, a, writes=(Path(o),))
            for n, a, o in worker_steps(tmp_path, reference, models, names)
        ],
        Launch(jobs=2, inprocess=True),
    )

    out = tmp_path / "killed"
    plan = worker_steps(tmp_path, out, models, names)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = subprocess.Popen(
        [sys.executable, "-c", WORKER_PLAN, json.dumps(plan)], cwd=REPO, env=env, start_new_session=True
    )
    deadline = time.monotonic() + 300
    while len(pngs(out)) < 4 and time.monotonic() < deadline and launcher.poll() is None:
        time.sleep(0.05)
    os.killpg(launcher.pid, signal.SIGKILL)
    launcher.wait()
    drawn = pngs(out)
    assert 0 < len(drawn) < 48, drawn  # killed mid-run
    for png in out.rglob("*.png"):
        Image.open(png).load()  # every image there is whole

    steps = [ScriptStep("generate", n, a, writes=(Path(o),), resumes=True) for n, a, o in plan]
    steps += [
        ScriptStep("generate", n, a, writes=(Path(o),)) for n, a, o in worker_steps(tmp_path, out, models, ["CiE-Bad"])
    ]
    with pytest.raises(StepFailed) as info:
        run_plan(steps, Launch(jobs=2, inprocess=True))
    message = str(info.value)
    assert "\n" not in message and message.startswith("step 'images of CiE-Bad' failed (exit status 4)")
    for name in names:
        folder, ref = out / name, reference / name
        assert pngs(folder) == pngs(ref) and len(pngs(folder)) == 24
        assert all((folder / p).read_bytes() == (ref / p).read_bytes() for p in pngs(ref))
        verify_folders(folder)
    assert pngs(out / "CiE-Bad") == []
