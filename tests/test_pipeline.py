"""The pipeline runner (sepce/pipeline): the dependency graph read off what steps read and write, the runner's
resume and failure rules, the dry run of Slurm jobs, and the real submitit code path (its local executor: a
subprocess, a job folder and a log per step) on a small plan over the tiny model."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO

from sepce.cli import run as run_cli
from sepce.pipeline.executors import Launch, SlurmSettings
from sepce.pipeline.runner import DONE, NOT_RUN, SKIPPED, StepFailed, run_plan
from sepce.pipeline.steps import Resources, ScriptStep, dependencies
from sepce.pipeline.timing import Booking


def _touch(path: Path, fail: bool = False) -> None:
    """A step's library function: write ``path`` (or fail)."""
    if fail:
        raise RuntimeError(f"refusing to write {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("x")


def call_step(name: str, out: Path, reads=(), fail: bool = False) -> ScriptStep:
    return ScriptStep(
        "test", name, call=functools.partial(_touch, out, fail), reads=tuple(reads), writes=(out,), skip_if=out
    )


def test_dependencies_come_from_reads_and_writes(tmp_path):
    w = tmp_path
    steps = [
        ScriptStep("a", "model", writes=(w / "tiny",)),
        ScriptStep("a", "csv", write=w / "eval.csv", content="x"),
        ScriptStep("b", "train", reads=(w / "tiny" / "model.ckpt",), writes=(w / "models" / "A",)),
        ScriptStep("b", "images A", reads=(w / "tiny", w / "eval.csv", w / "models" / "A"), writes=(w / "img" / "A",)),
        ScriptStep("b", "images O", reads=(w / "tiny", w / "eval.csv"), writes=(w / "img" / "O",)),
        # writes inside a folder another step writes: waits for it, though it reads nothing of it
        ScriptStep("c", "attack A", reads=(w / "models" / "A",), writes=(w / "img" / "A" / "attack",)),
        ScriptStep("d", "metrics", reads=(w / "img",), writes=(w / "img" / "A" / "results", w / "img" / "O" / "r")),
        ScriptStep("d", "table", reads=(w / "img",), writes=(w / "table",)),
    ]
    after = dependencies(steps)
    named = {s.name: sorted(steps[d].name for d in after[i]) for i, s in enumerate(steps)}
    assert named == {
        "model": [],
        "csv": [],
        "train": ["model"],
        "images A": ["csv", "train"],  # "model" comes through "train" (transitive reduction)
        "images O": ["csv", "model"],
        "attack A": ["images A"],
        "metrics": ["attack A", "images O"],
        "table": ["metrics"],
    }


def test_a_failed_step_stops_only_its_dependents_and_a_rerun_resumes(tmp_path):
    w = tmp_path
    steps = [
        call_step("one", w / "one"),
        call_step("bad", w / "bad", fail=True),
        call_step("needs bad", w / "two", reads=[w / "bad"]),
        call_step("needs one", w / "three", reads=[w / "one"]),
    ]
    booking = Booking(w / "work", {"jobs": 1})
    lines: list = []
    with pytest.raises(StepFailed) as info:
        run_plan(steps, Launch(inprocess=True), booking, lines.append)
    message = str(info.value)
    assert "\n" not in message and message.startswith("step 'bad' failed (exit status 1)")
    assert "1 step(s) depending on them not run" in message and message.endswith("finished steps are skipped)")
    assert (w / "one").exists() and (w / "three").exists() and not (w / "two").exists()
    assert "not run: [test] needs bad (a step it depends on failed)" in lines
    assert set(booking.timings) == {"one", "needs one"}  # failed and not-run steps book no time

    steps[1] = call_step("bad", w / "bad")  # fixed
    results = run_plan(steps, Launch(inprocess=True), Booking(w / "work", {"jobs": 1}))
    assert [r.status for r in results] == [SKIPPED, DONE, DONE, SKIPPED]
    assert (w / "two").exists()
    assert json.loads((w / "work" / "timings.json").read_text())["bad"]["status"] == "done"


def test_an_invocation_is_booked_with_every_step(tmp_path):
    """Each finished step also books the invocation's wall time so far: a launcher SIGKILLed later (no ``finally``
    runs) still leaves its invocation, with the commit, in invocations.json, up to its last step."""
    work = tmp_path / "work"
    first = Booking(work, {"jobs": 2})
    first.record("test", "one", DONE, 3.0, False)
    (booked,) = json.loads((work / "invocations.json").read_text())
    assert booked["started"] == first.invocation["started"] and booked["jobs"] == 2 and "commit" in booked
    time.sleep(0.2)
    first.record("test", "two", DONE, 1.0, False)  # ... then the launcher is killed: book() is never called
    second = Booking(work, {"jobs": 2})
    second.record("test", "three", DONE, 1.0, False)
    earlier, later = json.loads((work / "invocations.json").read_text())
    assert earlier["started"] == first.invocation["started"] and earlier["seconds"] >= 0.2
    assert later["started"] == second.invocation["started"]


@pytest.mark.parametrize("inprocess", [False, True], ids=["processes", "workers"])
def test_local_processes_run_side_by_side_with_gpus_of_their_own(tmp_path, monkeypatch, inprocess):
    """--jobs 2 with four GPUs: each one-GPU step's process (or worker) sees one GPU of its own
    (CUDA_VISIBLE_DEVICES), a two-GPU step two; a step needing more GPUs than the machine has is refused before
    anything starts."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    monkeypatch.chdir(tmp_path)
    script = tmp_path / "env.py"  # the command of each step: python <repo>/<argv[0]>; an absolute path is kept
    script.write_text(
        "import os, sys, time\ntime.sleep(0.5)\nopen(sys.argv[1], 'w').write(os.environ['CUDA_VISIBLE_DEVICES'])\n"
    )
    steps = [
        ScriptStep("g", f"gpu {i}", [str(script), str(tmp_path / f"gpu{i}")], resources=Resources(gpus=g))
        for i, g in enumerate((1, 1, 2, 1))
    ]
    run_plan(steps, Launch(jobs=2, inprocess=inprocess))
    seen = [(tmp_path / f"gpu{i}").read_text().split(",") for i in range(4)]
    assert [len(s) for s in seen] == [1, 1, 2, 1] and all(set(s) <= {"4", "5", "6", "7"} for s in seen)
    assert set(seen[0]).isdisjoint(seen[1])  # the first two ran at once, each on its own GPU
    too_big = [ScriptStep("g", "eight GPUs", [str(script), "x"], resources=Resources(gpus=8))]
    with pytest.raises(ValueError, match=r"step 'eight GPUs' needs 8 GPU\(s\), this machine shows 4"):
        run_plan(too_big, Launch(jobs=2, inprocess=inprocess))


def test_slurm_dry_run_lists_jobs_with_resources_and_dependencies(tmp_path, capsys, monkeypatch, load_script):
    monkeypatch.chdir(tmp_path)
    script = load_script("eval-scripts/reproduce.py")
    argv = ["--tiny", "--launcher", "slurm", "--slurm_partition", "x", "--slurm_account", "lab", "--dry_run"]
    steps = run_cli(script.parse_args, script.main, argv + ["--slurm_time", "45"], prog="reproduce.py")
    out = capsys.readouterr().out
    assert not any(tmp_path.iterdir())  # nothing written, nothing submitted
    jobs = [line for line in out.splitlines() if line.startswith("# job ")]
    assert len(jobs) == sum(s.write is None for s in steps) == 29
    assert all("slurm_partition=x slurm_account=lab" in j and "timeout_min=45" in j for j in jobs)
    table = next(j for j in jobs if "-table " in j)
    assert table.startswith("# job 32/32, after 24, 25, 26, 27, 28, 29, 30, 31:") and "gpus_per_node=0" in table
    cie = out.split("# [erase] CiE on Van Gogh")[1].splitlines()
    assert cie[1].startswith("# job 9/32, after 4, 5, 6, 7: name=009-CiE_on_Van_Gogh")
    assert cie[2].startswith("python train-scripts/CiE.py")
    for bad, error in (
        (["--launcher", "slurm"], "--launcher slurm needs --slurm_partition"),
        (["--slurm_time", "5"], "--slurm_time only apply to --launcher slurm, not local"),
        (["--launcher", "submitit-local", "--runner", "inprocess"], "--runner inprocess runs steps in local interp"),
    ):
        with pytest.raises(SystemExit) as info:  # argparse's usage error
            script.parse_args(["--tiny", "--dry_run", *bad])
        assert info.value.code == 2 and error in capsys.readouterr().err


def test_slurm_jobs_get_the_steps_resources():
    from sepce.pipeline.executors import job_parameters

    step = ScriptStep("generate", "images of X", ["x.py"], resources=Resources(gpus=2, cpus=8, mem_gb=32, minutes=90))
    launch = Launch("slurm", None, jobs_dir=Path("jobs"), slurm=SlurmSettings("gpu", None, None, None))
    assert job_parameters(step, 3, launch) == {
        "name": "003-images_of_X",
        "timeout_min": 90,
        "cpus_per_task": 8,
        "mem_gb": 32,
        "gpus_per_node": 2,
        "stderr_to_stdout": True,
        "slurm_partition": "gpu",
    }
    override = Launch("slurm", None, jobs_dir=Path("jobs"), slurm=SlurmSettings("gpu", "lab", 1, 30))
    params = job_parameters(step, 3, override)
    assert params["gpus_per_node"] == 1 and params["timeout_min"] == 30 and params["slurm_account"] == "lab"
    cpu = ScriptStep("sort", "sort", ["x.py"])
    assert job_parameters(cpu, 4, override)["gpus_per_node"] == 0  # --slurm_gpus_per_job leaves CPU steps alone


def submitted(folder: Path) -> int:
    """Jobs submitit started from a step's folder (one ``<id>_submitted.pkl`` each)."""
    return len(list(folder.glob("*_submitted.pkl"))) if folder.is_dir() else 0


def tiny_plan(work: Path, uce_flags=()) -> list:
    """The tiny model, a two-row CSV, a UCE erasure, and the images of the original and of the erased model."""
    ckpt, config = work / "tiny" / "model.ckpt", work / "tiny" / "config.yaml"
    model = ["--ckpt_path", str(ckpt), "--config_path", str(config)]
    csv_path = work / "eval.csv"
    run = work / "models" / "UCE-VanGogh"
    sample = ["--image_size", "64", "--ddim_steps", "2", "--device", "cpu", "--quiet", "--num_samples", "1"]

    def images(name, folder, argv, reads):
        out = work / "images" / folder
        argv = ["eval-scripts/generate-images.py", *argv, "--prompts_path", str(csv_path), *model, *sample]
        argv += ["--save_path", str(work / "images"), "--output_name", folder]
        # complete once the last row's image exists (a plan names the output that means "done")
        return ScriptStep("generate", name, argv, reads=(*reads, csv_path), writes=(out,), skip_if=out / "1_0.png")

    return [
        ScriptStep(
            "model",
            "tiny model",
            ["-m", "sepce.tiny", "--out", str(ckpt.parent), "--if_missing"],
            writes=(ckpt.parent,),
            skip_if=ckpt,
        ),
        ScriptStep(
            "model", "csv", write=csv_path, content="case_number,prompt,evaluation_seed\n0,Van Gogh,1\n1,a cat,2\n"
        ),
        ScriptStep(
            "erase",
            "UCE",
            ["train-scripts/UCE.py", "--edit_concepts", "Van Gogh", *model, "--devices", "cpu", *uce_flags]
            + ["--output_dir", str(run)],
            reads=(ckpt.parent,),
            writes=(run,),
            skip_if=run / "erasure.safetensors",
        ),
        images("images of the original", "default", ["--model_name", "original"], [ckpt.parent]),
        images("images of UCE", "uce", ["--model_name", "UCE-VanGogh", "--models_dir", str(work / "models")], [run]),
    ]


def test_submitit_local_runs_fails_only_dependents_and_resumes(tmp_path, monkeypatch):
    """The real submitit code path (LocalExecutor: a subprocess per job, its folder and log): a failing step
    fails only the step that needs it, with one line naming its job log; the re-run submits only what is
    missing and completes the plan."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), str(REPO / "ldm-replace")]))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.chdir(tmp_path)
    work, jobs = tmp_path / "w", tmp_path / "w" / "jobs"
    launch = Launch("submitit-local", 2, jobs_dir=jobs)
    lines: list = []
    with pytest.raises(StepFailed) as info:
        run_plan(tiny_plan(work, ["--erase_scale", "oops"]), launch, Booking(work, {"jobs": 2}), lines.append)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"step 'UCE' failed (exit status 2) (log {jobs}/003-UCE/")
    log = Path(message.split("(log ")[1].split(")")[0])
    assert log.name.endswith("_log.out") and "--erase_scale: invalid float value: 'oops'" in log.read_text()
    assert "1 step(s) depending on them not run" in message
    assert sorted(p.name for p in (work / "images" / "default").glob("*.png")) == ["0_0.png", "1_0.png"]
    assert not (work / "images" / "uce").exists()
    assert {p.name: submitted(p) for p in jobs.iterdir()} == {
        "001-tiny_model": 1,
        "003-UCE": 1,
        "004-images_of_the_original": 1,
    }

    lines.clear()
    results = run_plan(tiny_plan(work), launch, Booking(work, {"jobs": 2}), lines.append)
    assert {r.name: r.status for r in results} == {
        "tiny model": SKIPPED,
        "csv": SKIPPED,
        "UCE": DONE,
        "images of the original": SKIPPED,
        "images of UCE": DONE,
    }
    assert {p.name: submitted(p) for p in jobs.iterdir()} == {
        "001-tiny_model": 1,
        "003-UCE": 2,
        "004-images_of_the_original": 1,
        "005-images_of_UCE": 1,
    }
    assert sorted(p.name for p in (work / "images" / "uce").glob("*.png")) == ["0_0.png", "1_0.png"]
    assert any(line.startswith("    job ") and "_log.out" in line for line in lines)
    timings = json.loads((work / "timings.json").read_text())
    assert timings["UCE"]["status"] == "done" and timings["UCE"]["seconds"] > 0
    assert NOT_RUN not in {r.status for r in results}


def test_slurm_job_scripts_carry_the_resources(tmp_path, monkeypatch):
    """The parameters a step maps to are valid for submitit's Slurm executor and land in its sbatch script
    (submitit needs ``srun`` on PATH to build one: a stand-in that is never run)."""
    import submitit

    from sepce.pipeline.executors import job_parameters

    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text("#!/bin/sh\nexit 1\n")
    (tmp_path / "bin" / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    step = ScriptStep("erase", "CiE", ["x.py"], resources=Resources(gpus=2, cpus=8, mem_gb=32, minutes=90))
    launch = Launch("slurm", None, jobs_dir=tmp_path / "jobs", slurm=SlurmSettings("gpu", "lab"))
    executor = submitit.AutoExecutor(folder=tmp_path / "jobs" / "%j", cluster="slurm")
    executor.update_parameters(**job_parameters(step, 7, launch))
    text = executor._executor._make_submission_file_text("python -c pass", "uid")
    for line in ("--partition=gpu", "--account=lab", "--gpus-per-node=2", "--cpus-per-task=8", "--mem=32GB"):
        assert f"#SBATCH {line}" in text, line
    assert "#SBATCH --time=90" in text and "#SBATCH --job-name=007-CiE" in text


def test_slurm_launcher_refuses_a_machine_without_slurm(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch
    launch = Launch("slurm", None, jobs_dir=tmp_path / "jobs", slurm=SlurmSettings("gpu"))
    with pytest.raises(ValueError, match="no Slurm here"):
        run_plan([call_step("one", tmp_path / "one")], launch)
    assert not (tmp_path / "one").exists() and not (tmp_path / "jobs").exists()


def test_workers_run_steps_in_long_lived_interpreters(tmp_path):
    """--runner inprocess with --jobs 2: the steps run in two worker processes started once (each runs several
    steps, imports stay loaded), side by side; a step that raises or exits non-zero fails with one line and its
    worker goes on; a step that kills its worker fails too, and the next step gets a new worker."""
    script = tmp_path / "step.py"
    script.write_text(
        "import os, sys, time\n"
        "out, how = sys.argv[1], sys.argv[2]\n"
        "time.sleep(0.3)\n"
        "if how == 'raise': raise RuntimeError('bad step')\n"
        "if how == 'exit': sys.exit(3)\n"
        "if how == 'die': os._exit(9)\n"
        "seen = 'yes' if 'sepce.pipeline.executors' in sys.modules else 'no'\n"
        "open(out, 'w').write(f'{os.getpid()} {os.getppid()} {seen}')\n"
    )

    def step(name: str, how: str = "ok", reads=()) -> ScriptStep:
        out = tmp_path / name
        return ScriptStep("s", name, [str(script), str(out), how], reads=tuple(reads), writes=(out,), skip_if=out)

    steps = [step(f"ok{i}") for i in range(4)]
    steps += [step("raise", "raise"), step("exit", "exit"), step("after raise", reads=[tmp_path / "raise"])]
    steps += [step("die", "die"), step("after die")]
    lines: list = []
    with pytest.raises(StepFailed) as info:
        run_plan(steps, Launch(jobs=2, inprocess=True), say=lines.append)
    message = str(info.value)
    assert "\n" not in message
    assert "step 'raise' failed (exit status 1)" in message and "step 'exit' failed (exit status 3)" in message
    assert "step 'die' failed (its worker process died (9))" in message
    assert "1 step(s) depending on them not run" in message
    written = {s.name: (tmp_path / s.name).read_text().split() for s in steps if (tmp_path / s.name).exists()}
    assert set(written) == {"ok0", "ok1", "ok2", "ok3", "after die"}
    assert all(seen == "yes" and int(parent) == os.getpid() for _, parent, seen in written.values())
    pids = {pid for pid, _, _ in written.values()}
    ok_pids = {written[f"ok{i}"][0] for i in range(4)}
    assert len(ok_pids) == 2  # four steps, two workers (each started once)
    assert sum(line.startswith("    worker ") for line in lines) == len(steps) - 1  # every step but the not-run one
    for pid in pids:  # every worker ended with the run
        with pytest.raises(ProcessLookupError):
            os.kill(int(pid), 0)


def _interrupt_once_written(path: Path) -> None:
    """Ctrl-C, once the other step's process has written ``path``."""
    deadline = time.monotonic() + 60
    while not (path.exists() and path.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    raise KeyboardInterrupt


def _terminate_once_written(path: Path) -> None:
    """``kill`` of the launching process, once the other step's process has written ``path``."""
    deadline = time.monotonic() + 60
    while not (path.exists() and path.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)  # the handler interrupts this


@pytest.mark.parametrize("inprocess", [False, True], ids=["processes", "workers"])
@pytest.mark.parametrize("stop", [_interrupt_once_written, _terminate_once_written], ids=["ctrl-c", "sigterm"])
def test_an_interrupted_run_ends_its_running_steps(tmp_path, stop, inprocess):
    """Ctrl-C or SIGTERM in the launching process: the steps it started end too (none goes on writing unwatched);
    the signal handler is put back afterwards."""
    script = tmp_path / "slow.py"
    script.write_text("import os, sys, time\nopen(sys.argv[1], 'w').write(str(os.getpid()))\ntime.sleep(60)\n")
    pid_file = tmp_path / "pid"
    steps = [
        ScriptStep("s", "slow", [str(script), str(pid_file)], writes=(tmp_path / "slow",)),
        ScriptStep("s", "stop", call=functools.partial(stop, pid_file), writes=(tmp_path / "x",)),
    ]
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_plan(steps, Launch(jobs=2, inprocess=inprocess))
    assert time.monotonic() - started < 50
    with pytest.raises(ProcessLookupError):  # terminated and reaped
        os.kill(int(pid_file.read_text()), 0)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


LAUNCH_ONE = """
import sys
from pathlib import Path
from sepce.pipeline.executors import Launch
from sepce.pipeline.runner import run_plan
from sepce.pipeline.steps import ScriptStep
outs = [Path(f"{sys.argv[2]}{i}") for i in (0, 1)]
steps = [ScriptStep("s", f"slow {o.name}", [sys.argv[1], str(o)], writes=(o,)) for o in outs]
run_plan(steps, Launch(jobs=2, inprocess=True))
"""


def test_workers_end_with_a_killed_launcher(tmp_path):
    """SIGKILL of the launching process alone (no handler runs): its workers get SIGTERM from Linux and end, so
    no step goes on writing unwatched."""
    script = tmp_path / "slow.py"
    script.write_text("import os, sys, time\nopen(sys.argv[1], 'w').write(str(os.getpid()))\ntime.sleep(60)\n")
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCH_ONE, str(script), str(tmp_path / "pid")], cwd=REPO)
    pid_files = [tmp_path / f"pid{i}" for i in (0, 1)]
    deadline = time.monotonic() + 60
    while not all(p.exists() and p.read_text() for p in pid_files) and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = [int(p.read_text()) for p in pid_files]
    assert len(set(workers)) == 2 and launcher.pid not in workers
    launcher.kill()
    launcher.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(_alive(pid) for pid in workers):
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in workers)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, ended but not reaped by its new parent, counts as ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False
