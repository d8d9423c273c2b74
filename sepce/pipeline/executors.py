"""Where a step runs (``--launcher``): ``local`` -- as a process of its own beside up to ``--jobs`` others, each
with its own GPU(s) through ``CUDA_VISIBLE_DEVICES`` (``inprocess``: for one job at a time in this interpreter,
for several in that many long-lived worker processes, :mod:`sepce.pipeline.worker`, started once);
``submitit-local`` and ``slurm`` -- as a job of submitit (its local executor: a subprocess with a job folder and
log; or a Slurm job with the step's resources). Nothing here schedules across machines: each step maps to one
submitit job and submitit does the rest.
"""

from __future__ import annotations

import json
import os
import re
import runpy
import select
import shutil
import subprocess
import sys
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from sepce.paths import REPO_ROOT
from sepce.pipeline.steps import ScriptStep
from sepce.pipeline.timing import Timer

LAUNCHERS = ("local", "submitit-local", "slurm")
SUBMITIT_LAUNCHERS = ("submitit-local", "slurm")


@dataclass(frozen=True)
class SlurmSettings:
    """What every Slurm job of a plan gets besides its step's resources."""

    partition: str
    account: Optional[str] = None
    gpus_per_job: Optional[int] = None  # GPUs of each step that uses GPUs (None: the step's own count)
    minutes: Optional[int] = None  # time limit of every job (None: the step's own estimate)


@dataclass(frozen=True)
class Launch:
    """How a plan runs."""

    launcher: str = "local"  # one of LAUNCHERS
    jobs: Optional[int] = 1  # steps running at once (None: every ready step; the Slurm default)
    inprocess: bool = False  # local: run the scripts in this interpreter (one job) or in --jobs workers (several)
    jobs_dir: Optional[Path] = None  # submitit: one folder per step with its job's log
    slurm: Optional[SlurmSettings] = None

    def __post_init__(self):
        if self.launcher not in LAUNCHERS:
            raise ValueError(f"launcher {self.launcher!r} is not one of {list(LAUNCHERS)}")
        if self.launcher == "slurm" and self.slurm is None:
            raise ValueError("the slurm launcher needs a partition (--slurm_partition)")
        if self.launcher in SUBMITIT_LAUNCHERS and self.jobs_dir is None:
            raise ValueError(f"the {self.launcher} launcher needs a folder for its jobs")
        if self.inprocess and self.launcher != "local":
            raise ValueError("running steps in long-lived interpreters needs the local launcher")
        if self.jobs is not None and self.jobs < 1:
            raise ValueError(f"jobs {self.jobs} must be >= 1")

    def describe(self) -> str:
        jobs = "every ready step at once" if self.jobs is None else f"up to {self.jobs} step(s) at once"
        if self.launcher == "local":
            where = "as local processes"
            if self.inprocess:
                where = "in this interpreter" if self.jobs == 1 else "in worker processes started once (one per job)"
            return f"launcher local: steps run {where}, {jobs}"
        text = f"launcher {self.launcher}: every step is one submitit job (log in {self.jobs_dir}/<step>/), {jobs}"
        if self.slurm is not None:
            text += f"; partition {self.slurm.partition}, account {self.slurm.account or '(default)'}"
        return text + "; a job is submitted once the steps it comes after have completed"


@dataclass
class Outcome:
    """How a started step ended: its exit status (0 done), its own run time, its log, why it has no status."""

    code: int
    seconds: float
    log: Optional[Path] = None
    error: str = ""


def step_gpus(step: ScriptStep, launch: Launch) -> int:
    """GPUs a step gets (``--slurm_gpus_per_job`` replaces the count of every step that uses GPUs)."""
    if step.resources.gpus and launch.slurm is not None and launch.slurm.gpus_per_job is not None:
        return launch.slurm.gpus_per_job
    return step.resources.gpus


def job_parameters(step: ScriptStep, number: int, launch: Launch) -> Dict[str, Any]:
    """The submitit parameters of the job of a plan's step ``number`` (1-based; what a dry run shows and what is
    submitted)."""
    minutes = launch.slurm.minutes if launch.slurm is not None and launch.slurm.minutes else step.resources.minutes
    params: Dict[str, Any] = {
        "name": f"{number:03d}-{slug(step.name)}",
        "timeout_min": int(minutes),
        "cpus_per_task": step.resources.cpus,
        "mem_gb": step.resources.mem_gb,
        "gpus_per_node": step_gpus(step, launch),
        "stderr_to_stdout": True,
    }
    if launch.slurm is not None:
        params["slurm_partition"] = launch.slurm.partition
        if launch.slurm.account:
            params["slurm_account"] = launch.slurm.account
    return params


def slug(name: str) -> str:
    """A step name as a folder / job name."""
    return re.sub(r"[^A-Za-z0-9_.+=-]+", "_", name).strip("_")[:80] or "step"


def visible_gpus() -> List[str]:
    """The GPUs this process may hand out: ``CUDA_VISIBLE_DEVICES`` when set, else every device torch sees."""
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return [g.strip() for g in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def run_job(step: ScriptStep, env: Dict[str, str]) -> tuple:
    """The body of a step's process or job: run the script (or the library function) with ``env`` added; returns
    (exit status, seconds). Its output goes where the job's goes (the submitit log)."""
    with Timer() as timer:
        if step.call is not None:
            os.environ.update(env)
            code = call_step(step)
        else:
            code = subprocess.run(step.command(), env={**os.environ, **env}).returncode
    return code, timer.seconds


def call_step(step: ScriptStep) -> int:
    """Call a step's library function; an exception is its failure (traceback on stderr, exit status 1)."""
    try:
        step.call()
    except Exception:
        traceback.print_exc()
        return 1
    return 0


def run_in_process(step: ScriptStep) -> int:
    """Run a step's script in this interpreter as ``__main__`` (or call its function); returns its exit status."""
    if step.call is not None:
        return call_step(step)
    return run_script(step.argv)


def run_script(argv: Sequence[str]) -> int:
    """Run a script (``argv[0]`` relative to the repository root) or ``-m module`` in this interpreter as
    ``__main__``, with ``argv`` as its ``sys.argv``; returns its exit status (an exception: traceback, 1)."""
    saved = sys.argv
    try:
        if argv[0] == "-m":
            sys.argv = [argv[1], *argv[2:]]
            with warnings.catch_warnings():  # "found in sys.modules": the module is imported already; harmless
                warnings.simplefilter("ignore", RuntimeWarning)
                runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = [str(REPO_ROOT / argv[0]), *argv[1:]]
            runpy.run_path(sys.argv[0], run_name="__main__")
    except SystemExit as exit_:
        if isinstance(exit_.code, str):
            print(exit_.code, file=sys.stderr)
            return 1
        return int(exit_.code or 0)
    except Exception:
        traceback.print_exc()
        return 1
    finally:
        sys.argv = saved
    return 0


class Worker:
    """A long-lived step process (:mod:`sepce.pipeline.worker`) with the environment it was started with; runs one
    step at a time."""

    def __init__(self, env: Dict[str, str]):
        self.env = dict(env)
        to_worker, self._commands = os.pipe()
        self._answers, from_worker = os.pipe()
        command = [sys.executable, "-m", "sepce.pipeline.worker", str(to_worker), str(from_worker)]
        self.process = subprocess.Popen(
            command, env={**os.environ, **env}, stdin=subprocess.DEVNULL, pass_fds=(to_worker, from_worker)
        )
        os.close(to_worker)
        os.close(from_worker)
        self._buffer = b""
        self.started = 0.0

    def send(self, argv: Sequence[str]) -> None:
        """Start a step."""
        self.started = time.monotonic()
        os.write(self._commands, (json.dumps({"argv": list(argv)}) + "\n").encode())

    def poll(self) -> Optional[Outcome]:
        """The running step's outcome once it ended (the worker's answer, or its death), else None."""
        while select.select([self._answers], [], [], 0)[0]:
            chunk = os.read(self._answers, 4096)
            if not chunk:
                break
            self._buffer += chunk
            if self._buffer.endswith(b"\n"):
                answer = json.loads(self._buffer)
                self._buffer = b""
                return Outcome(int(answer["code"]), float(answer["seconds"]))
        if self.process.poll() is not None:
            code = self.process.returncode
            return Outcome(code or 1, time.monotonic() - self.started, error=f"its worker process died ({code})")
        return None

    def close(self, wait: float = 10.0) -> None:
        """End the worker: end of its commands, then SIGTERM, then SIGKILL (a running step ends with it)."""
        for fd in (self._commands, self._answers):
            try:
                os.close(fd)
            except OSError:
                pass
        for end in (lambda: None, self.process.terminate, self.process.kill):
            end()
            try:
                self.process.wait(timeout=wait if end is not self.process.kill else None)
                return
            except subprocess.TimeoutExpired:
                continue


class WorkerPool:
    """At most ``size`` workers; a step takes an idle one started with its environment (GPUs, threads), or a new
    one in place of an idle one with another environment."""

    def __init__(self, size: int):
        self.size = size
        self.idle: List[Worker] = []
        self.busy: List[Worker] = []

    def take(self, env: Dict[str, str]) -> Worker:
        worker = next((w for w in self.idle if w.env == env), None)
        if worker is None:
            if len(self.idle) + len(self.busy) >= self.size and self.idle:
                self.idle.pop(0).close()
            worker = Worker(env)
        else:
            self.idle.remove(worker)
        self.busy.append(worker)
        return worker

    def give_back(self, worker: Worker) -> None:
        """A worker whose step ended: idle again, or closed when it died."""
        self.busy.remove(worker)
        if worker.process.poll() is None:
            self.idle.append(worker)
        else:
            worker.close()

    def close(self) -> None:
        for worker in self.idle + self.busy:
            worker.close(wait=2.0)
        self.idle, self.busy = [], []


class Executor:
    """Starts steps and reports the ones that ended. Local launchers hand out GPUs from one pool."""

    def __init__(self, launch: Launch, steps: Sequence[ScriptStep]):
        self.launch = launch
        if launch.launcher == "slurm" and shutil.which("sbatch") is None:
            raise ValueError("--launcher slurm: no Slurm here (sbatch not found); run it on a cluster's login node")
        needed = max((step_gpus(s, launch) for s in steps), default=0)
        self.free: List[str] = visible_gpus() if needed and launch.launcher != "slurm" else []
        self.gpu_pool = bool(self.free)
        if needed and launch.launcher != "slurm" and needed > len(self.free):
            worst = next(s for s in steps if step_gpus(s, launch) == needed)
            raise ValueError(
                f"step '{worst.name}' needs {needed} GPU(s), this machine shows {len(self.free)} "
                "(CUDA_VISIBLE_DEVICES); use fewer --nproc_per_node/--devices or --launcher slurm"
            )
        self.given: Dict[int, List[str]] = {}
        self.running: Dict[int, Any] = {}
        workers = launch.inprocess and launch.launcher == "local" and launch.jobs != 1
        self.pool: Optional[WorkerPool] = WorkerPool(launch.jobs or len(steps)) if workers else None

    def fits(self, step: ScriptStep) -> bool:
        """Whether the GPUs the step needs are free now."""
        return not self.gpu_pool or step_gpus(step, self.launch) <= len(self.free)

    def env(self, step: ScriptStep, index: int) -> Dict[str, str]:
        """Environment added to a step's process: its GPUs, and threads shared among the jobs."""
        env: Dict[str, str] = {}
        if self.gpu_pool:
            n = step_gpus(step, self.launch)
            self.given[index], self.free = self.free[:n], self.free[n:]
            env["CUDA_VISIBLE_DEVICES"] = ",".join(self.given[index])
        if self.launch.launcher == "slurm":
            env["OMP_NUM_THREADS"] = str(step.resources.cpus)
        elif self.launch.jobs != 1 and "OMP_NUM_THREADS" not in os.environ:
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // (self.launch.jobs or 1)))
        return env

    def start(self, step: ScriptStep, index: int) -> str:
        """Start the step; returns a line saying where it runs."""
        env = self.env(step, index)
        if self.pool is not None and step.call is None and step.nproc == 1:
            worker = self.pool.take(env)
            worker.send(step.argv)
            self.running[index] = worker
            gpus = env.get("CUDA_VISIBLE_DEVICES")
            return f"worker {worker.process.pid}" + (f", GPU(s) {gpus}" if gpus else "")
        if self.launch.inprocess and self.pool is None:
            with Timer() as timer:
                code = run_in_process(step)
            self.running[index] = Outcome(code, timer.seconds)
            return "in this interpreter"
        if self.launch.launcher == "local":
            if step.call is not None:  # a library function: in this interpreter while the processes go on
                self.running[index] = Outcome(*run_job(step, {}))
                return "in this interpreter"
            process = subprocess.Popen(step.command(), env={**os.environ, **env})
            self.running[index] = (process, time.monotonic())
            gpus = env.get("CUDA_VISIBLE_DEVICES")
            return f"process {process.pid}" + (f", GPU(s) {gpus}" if gpus else "")
        import submitit

        params = job_parameters(step, index + 1, self.launch)
        folder = Path(self.launch.jobs_dir) / params["name"]
        executor = submitit.AutoExecutor(folder=folder, cluster="local" if self.launch.launcher != "slurm" else "slurm")
        executor.update_parameters(**params)
        job = executor.submit(run_job, step, env)
        self.running[index] = job
        return f"job {job.job_id}, log {job.paths.stdout}"

    def ended(self) -> Dict[int, Outcome]:
        """The steps that ended since the last call, with their outcomes."""
        out: Dict[int, Outcome] = {}
        for index, handle in list(self.running.items()):
            if isinstance(handle, Outcome):
                out[index] = handle
            elif isinstance(handle, Worker):
                outcome = handle.poll()
                if outcome is not None:
                    out[index] = outcome
                    self.pool.give_back(handle)
            elif isinstance(handle, tuple):
                process, started = handle
                if process.poll() is not None:
                    out[index] = Outcome(process.returncode, time.monotonic() - started)
            elif handle.done():
                out[index] = _job_outcome(handle)
        for index in out:
            del self.running[index]
            self.free += self.given.pop(index, [])
        return out

    def stop(self) -> None:
        """End every running step (the run was interrupted): terminate local processes, cancel submitit jobs."""
        for handle in self.running.values():
            if isinstance(handle, Worker):
                continue  # closed with the pool below
            if isinstance(handle, tuple):
                handle[0].terminate()
                handle[0].wait()
            elif not isinstance(handle, Outcome):
                handle.cancel(check=False)
        self.running.clear()
        self.close()

    def close(self) -> None:
        """End the idle workers (the run is over)."""
        if self.pool is not None:
            self.pool.close()

    def wait(self) -> None:
        """Pause before the next look at running steps."""
        time.sleep(0.2 if self.launch.launcher == "local" else 2.0)


def _job_outcome(job) -> Outcome:
    log = Path(job.paths.stdout)
    try:
        code, seconds = job.result()
    except Exception as error:  # the job died without an exit status (killed, timed out, cancelled)
        lines = [line for line in str(error).splitlines() if line.strip()]
        return Outcome(-1, 0.0, log, lines[-1] if lines else type(error).__name__)
    return Outcome(int(code), float(seconds), log)
