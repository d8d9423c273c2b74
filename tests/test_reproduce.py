"""The reproduction pipeline (eval-scripts/reproduce.py, sepce/paper_plan.py): the full-size plan uses the seed
README's commands, ``--tiny`` runs every stage end to end on the tiny model and writes the table, a re-run
resumes without redoing work, and SepCE's separability shows in the table (restored concepts and the blank
prompt unchanged, erased ones changed). ``--task object|nudity`` (sepce/evaluation_tasks.py) plans and, with
``--tiny``, runs the object and nudity evaluations."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import one_line_error
from PIL import Image

from sepce.cli import run as run_cli
from sepce.paper_plan import METHODS, Method, model_rows


@pytest.fixture
def reproduce(load_script):
    """``reproduce(*argv)``: eval-scripts/reproduce.py in-process, as its ``__main__`` runs it."""
    script = load_script("eval-scripts/reproduce.py")
    return lambda *argv: run_cli(script.parse_args, script.main, [str(a) for a in argv], prog="reproduce.py")


def test_dry_run_is_the_seed_pipeline_as_a_shell_script(tmp_path, capsys, monkeypatch, reproduce):
    monkeypatch.chdir(tmp_path)
    reproduce("--dry_run", "--device", "cpu")
    script = capsys.readouterr().out
    assert not any(tmp_path.iterdir())  # nothing written
    for command in (
        "python eval-scripts/generate-data.py --prompt 'Van Gogh' --model_name 0 --save_path data --num_cases 1000",
        "python eval-scripts/generate-data.py --prompt '' --model_name 9",
        "python train-scripts/artist-cls-train.py --train_dir data/train",
        "python train-scripts/CiE.py --prompt 'Van Gogh' --threshold 0 --lr 1e-6 --reg_beta 3e-5",
        "python train-scripts/SepCE.py --prompts 'Van Gogh' Picasso Cezanne --lr 1e-2 --scale_factor 1e-4 "
        "--reg_beta 3e-5",
        "python train-scripts/Esd.py --prompt 'Van Gogh' --train_method xattn --iterations 1000",
        "python train-scripts/FMN.py --prompt 'Van Gogh' --lr 1e-5 --iter_break 10",
        "python train-scripts/Abconcept.py --prompt 'Van Gogh' --lr 1e-5 --iter_break 50",
        "python eval-scripts/generate-images.py --model_name SD-v1-4 --prompts_path",
        "--output_name sepce-restore-cezanne --num_samples 5",
        "python train-scripts/move_image.py --path evaluation_folder",
        "python train-scripts/artist-cls-test.py --path evaluation_folder",
        "python eval-scripts/lpips_eval.py --original_path evaluation_folder/default --edited_path "
        "evaluation_folder/sepce ",
        "python eval-scripts/make-table.py --spec outputs/table/spec.json",
        # run folders are the ones the training scripts write by default (sepce.paths.run_name)
        "--output_dir models/CiE-VanGogh --data_dir data",
        "--output_dir models/SepCE-VanGogh+Picasso+Cezanne --data_dir data",
        "--output_dir models/ESD-VanGogh-xattn\n",
        "--output_dir models/Abconcept-VanGogh --data_dir data",
        "--model_name SepCE-VanGogh+Picasso+Cezanne --prompts_path",
    ):
        assert command in script, command
    assert "--ddim_steps 100 --image_size 512" in script and "--no_pretrained" not in script
    assert script.count("generate-data.py") == 10 and script.count("generate-images.py") == 8
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0  # valid shell syntax


def test_sepce_subset_rows_erase_prefixes_and_restore_the_rest():
    rows = model_rows(["CiE", "SepCE"], "Van Gogh", ["Van Gogh", "Picasso", "Cezanne"])
    assert [(r.name, r.folder, r.erase, r.erased, r.restored) for r in rows] == [
        ("ORI", "default", None, [], []),
        ("CiE", "cie", None, ["Van Gogh"], []),
        ("SepCE", "sepce", ["Van Gogh", "Picasso", "Cezanne"], ["Van Gogh", "Picasso", "Cezanne"], []),
        (
            "SepCE (restore Cezanne)",
            "sepce-restore-cezanne",
            ["Van Gogh", "Picasso"],
            ["Van Gogh", "Picasso"],
            ["Cezanne"],
        ),
        (
            "SepCE (restore Picasso+Cezanne)",
            "sepce-restore-picasso-cezanne",
            ["Van Gogh"],
            ["Van Gogh"],
            ["Picasso", "Cezanne"],
        ),
    ]
    assert {r.model_name for r in rows[2:]} == {"SepCE-VanGogh+Picasso+Cezanne"}  # sepce.paths.run_name
    assert rows[1].model_name == "CiE-VanGogh"


def test_metric_weights_and_quiet_reach_the_scripts(tmp_path, capsys, monkeypatch, reproduce):
    """--fid_weights / --lpips_backbone_weights go to every lpips_eval.py step, --quiet to every script with bars;
    a weights file that does not exist fails before anything runs."""
    monkeypatch.chdir(tmp_path)
    fid, alex = tmp_path / "inception.pth", tmp_path / "alexnet.pth"
    fid.write_bytes(b"x")
    alex.write_bytes(b"x")
    reproduce("--dry_run", "--device", "cpu", "--fid_weights", fid, "--lpips_backbone_weights", alex, "--quiet")
    lines = capsys.readouterr().out.splitlines()
    metrics = [line for line in lines if "lpips_eval.py" in line and line.startswith("python")]
    assert len(metrics) == 7 and all(f"--fid_weights {fid} --backbone_weights {alex}" in line for line in metrics)
    for script in ("generate-data.py", "artist-cls-train.py", "generate-images.py", "artist-cls-test.py"):
        assert all("--quiet" in line for line in lines if script in line and line.startswith("python")), script
    with one_line_error(capsys, f"--fid_weights {tmp_path / 'none.pth'} does not exist"):
        reproduce("--dry_run", "--device", "cpu", "--fid_weights", tmp_path / "none.pth")


def test_bad_inputs_fail_before_anything_runs(tmp_path, monkeypatch, reproduce, capsys):
    monkeypatch.setitem(METHODS, "Nope", Method("Nope", "train-scripts/nope.py", (), ()))
    with one_line_error(capsys, pattern=r"script\(s\) \['train-scripts/nope.py'\] do not exist"):
        reproduce("--tiny", "--work_dir", tmp_path / "w", "--methods", "CiE", "Nope")
    with one_line_error(capsys, pattern=r"checkpoint .*missing.ckpt does not exist \(--ckpt_path\)"):
        reproduce(
            "--work_dir",
            tmp_path / "w",
            "--ckpt_path",
            tmp_path / "missing.ckpt",
            "--device",
            "cpu",
            "--methods",
            "CiE",
        )
    with one_line_error(capsys, pattern=r"unknown concept 'Monet'"):
        reproduce("--tiny", "--work_dir", tmp_path / "w", "--concept", "Monet", "--methods", "CiE")
    assert not (tmp_path / "w").exists()


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(np.int16)


def test_tiny_reproduction_end_to_end_then_resume(tmp_path, capsys, reproduce):
    work = tmp_path / "tiny"
    reproduce("--tiny", "--work_dir", work, "--quiet")
    with (work / "table" / "table.csv").open() as f:
        table = {row["model"]: row for row in csv.DictReader(f)}
    assert list(table) == [
        "ORI",
        "CiE",
        "SepCE",
        "SepCE (restore Cezanne)",
        "SepCE (restore Picasso+Cezanne)",
        "ESD",
        "FMN (authors' variant)",
        "AC (authors' variant)",
    ]
    assert (work / "table" / "table.png").stat().st_size > 1000 and (work / "table" / "table.md").is_file()
    assert "| SepCE (restore Cezanne) |" in capsys.readouterr().out  # the table is printed

    evaluation = work / "evaluation_folder"
    folders = ["default", "cie", "sepce", "sepce-restore-cezanne", "sepce-restore-picasso-cezanne", "esd", "fmn", "ac"]
    assert sorted(p.name for p in evaluation.iterdir()) == sorted(folders)
    for folder in folders:  # 4 classes x 2 seeds x 2 samples, sorted into class folders, accuracy per class
        assert sorted(p.relative_to(evaluation / folder).parts[0] for p in (evaluation / folder).rglob("*.png")) == [
            str(c) for c in range(4) for _ in range(4)
        ]
        assert (evaluation / folder / "results" / "accuracy.csv").is_file()
    for folder in folders[1:]:
        assert {p.name for p in (evaluation / folder / "results").glob("*.csv")} == {
            "accuracy.csv",
            "lpips.csv",
            "fid.csv",
        }

    # SepCE separability, visible in the table: restored concepts and the blank prompt keep their images
    lpips = {
        name: {c: float(row[f"{c} LPIPS"] or "nan") for c in ("Van Gogh", "Picasso", "Cezanne", "blank")}
        for name, row in table.items()
        if name != "ORI"
    }
    assert lpips["SepCE"]["blank"] < 1e-6 and min(lpips["SepCE"][c] for c in ("Van Gogh", "Picasso", "Cezanne")) > 1e-4
    assert lpips["SepCE (restore Cezanne)"]["Cezanne"] < 1e-6 and lpips["SepCE (restore Cezanne)"]["Picasso"] > 1e-4
    restored = lpips["SepCE (restore Picasso+Cezanne)"]
    assert restored["Van Gogh"] > 1e-4 and max(restored["Picasso"], restored["Cezanne"], restored["blank"]) < 1e-6
    assert table["SepCE (restore Cezanne)"]["restored"] == "Cezanne"
    for case, index in (("50_0.png", 1), ("100_1.png", 2), ("450_0.png", 3)):  # Picasso, Cezanne, blank
        original = pixels(evaluation / "default" / str(index) / case)
        assert np.abs(original - pixels(evaluation / "sepce-restore-picasso-cezanne" / str(index) / case)).max() <= 1
    spec = json.loads((work / "table" / "spec.json").read_text())
    assert spec["models"][1]["erased"] == ["Van Gogh", "Picasso", "Cezanne"]

    # resume: nothing is trained, generated or measured again
    stamps = {
        p: p.stat().st_mtime_ns
        for p in work.rglob("*")
        if p.is_file() and p.suffix in (".png", ".safetensors", ".pt", ".csv")
    }
    reproduce("--tiny", "--work_dir", work, "--quiet")
    out = capsys.readouterr().out
    assert out.count("skipped:") == 9  # class map, CSV and spec (same content), classifier, five training runs
    assert "wrote 0 image(s), 16 already existed" in out and "unchanged:" in out
    assert [p for p, t in stamps.items() if p.stat().st_mtime_ns != t] == []


def test_subprocess_runner_and_a_failing_step(tmp_path, reproduce, capsys):
    work = tmp_path / "w"
    reproduce("--tiny", "--work_dir", work, "--stages", "model", "--runner", "subprocess", "--methods", "CiE")
    assert (work / "tiny" / "model.ckpt").is_file() and (work / "tiny" / "config.yaml").is_file()
    assert (
        work / "classes.csv"
    ).read_text() == "index,name,prompt\n0,Van Gogh,Van Gogh\n1,Picasso,Picasso\n2,Cezanne,Cezanne\n3,blank,\n"
    assert (work / "evaluate.csv").read_text().splitlines()[1:3] == ["0,Van Gogh,68504,0", "1,Van Gogh,38136,0"]
    with one_line_error(
        capsys,
        pattern=r"step 'training images of Van Gogh' failed \(exit status 1\): python "
        r"eval-scripts/generate-data.py --prompt 'Van Gogh' .*; fix it and re-run",
    ):
        reproduce("--tiny", "--work_dir", work, "--stages", "data", "--runner", "subprocess", "--image_size", 60)
    assert not (work / "data").exists()


SCRIPTS = [
    "eval-scripts/generate-data.py",
    "eval-scripts/generate-images.py",
    "eval-scripts/lpips_eval.py",
    "eval-scripts/make-table.py",
    "eval-scripts/reproduce.py",
    "eval-scripts/txt2img.py",
    "eval-scripts/world-benchmark.py",
    "train-scripts/artist-cls-test.py",
    "train-scripts/artist-cls-train.py",
    "train-scripts/move_image.py",
]


@pytest.mark.parametrize("path", SCRIPTS)
def test_help_keeps_the_description_lines(path, load_script, capsys):
    """Every script builds its parser with sepce.cli.parser: --help shows the module docstring line by line, so
    its command examples stay copyable."""
    script = load_script(path)
    with pytest.raises(SystemExit) as info:
        script.parse_args(["--help"])
    assert info.value.code == 0
    shown = capsys.readouterr().out.splitlines()
    for line in script.__doc__.strip().splitlines():
        assert line.rstrip() in shown, line


# ------------------------------------------------------------------------------------------------ --task object|nudity
def test_object_and_nudity_dry_runs(tmp_path, capsys, monkeypatch, reproduce):
    monkeypatch.chdir(tmp_path)
    reproduce("--task", "object", "--dry_run", "--device", "cpu")
    script = capsys.readouterr().out
    for command in (
        "python eval-scripts/generate-data.py --prompt 'chain saw' --model_name none --link none",
        "python train-scripts/CiE.py --prompt 'chain saw'",
        "python train-scripts/Esd.py --prompt 'chain saw' --train_method xattn",
        "python eval-scripts/generate-images.py --model_name ESD-chainsaw-xattn --prompts_path",
        "python eval-scripts/classify-images.py --classifier_kind imagenet --path evaluation_folder/default",
        "python eval-scripts/attack-adversarial-prompt.py --model_name SepCE-chainsaw --prompt 'chain saw'",
        "python eval-scripts/make-table.py --spec outputs/table/spec.json",
    ):
        assert command in script, command
    assert "imagenette/evaluate.csv" in script and "--no_pretrained" not in script
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    assert not any(tmp_path.iterdir())

    i2p = tmp_path / "i2p.csv"
    i2p.write_text(",prompt,evaluation_seed,evaluation_guidance,case_number\n0,a nude,3,7,0\n")
    reproduce("--task", "nudity", "--i2p_csv", i2p, "--dry_run", "--device", "cpu")
    script = capsys.readouterr().out
    assert "python eval-scripts/nudity-eval.py --path evaluation_folder/default" in script
    assert "--prompts_path i2p.csv" in script and "--classifier_kind nudenet" in script
    assert "python train-scripts/SepCE.py --prompts nudity" in script and "make-table.py" not in script
    with pytest.raises(SystemExit):
        reproduce("--task", "nudity", "--dry_run")  # argparse: the I2P file is needed
    assert "--task nudity needs --i2p_csv" in capsys.readouterr().err
    i2p.write_text("prompt,sd_seed,case_number\na nude,3,0\n")
    with one_line_error(capsys, "lacks column(s) ['evaluation_seed']"):
        reproduce("--task", "nudity", "--i2p_csv", i2p, "--dry_run")


@pytest.mark.parametrize(("task", "method"), [("object", "CiE"), ("nudity", "ESD")])
def test_tiny_task_end_to_end(task, method, tmp_path, reproduce, capsys):
    """Every stage of the task on the tiny model with one method: results name their judge, version and
    threshold."""
    work = tmp_path / task
    reproduce("--task", task, "--tiny", "--methods", method, "--work_dir", work, "--quiet")
    folders = [work / "evaluation_folder" / name for name in ("default", method.lower())]
    for folder in folders:
        adversarial = json.loads((folder / "results" / "adversarial.json").read_text())
        assert adversarial["classifier"]["kind"] == ("imagenet" if task == "object" else "nudenet")
        assert {"asr_before_pct", "after_high_pct"} <= set(adversarial["rows"][0])
        if task == "object":
            accuracy = json.loads((folder / "results" / "accuracy.json").read_text())
            assert accuracy["classifier"]["name"].startswith("torchvision ResNet-50 random weights")
        else:
            nudity = json.loads((folder / "results" / "nudity.json").read_text())
            assert nudity["detector"]["threshold"] == 0.6 and nudity["detector"]["version"].startswith("nudenet ")
            assert json.loads((folder / "generation.json").read_text())["row_guidance"]
    if task == "object":
        assert "**– / " in (work / "table" / "table.md").read_text()  # the erased class's cell
