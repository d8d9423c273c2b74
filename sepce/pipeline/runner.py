"""Run a plan: every step once its dependencies completed, as many at once as the launch allows.

Resume: a step whose output is complete (:meth:`ScriptStep.complete`) is skipped, so a re-run starts or submits
only what is missing; steps that resume on their own (generation) run again and keep what they find. A failed step
stops only the steps that depend on it; the others go on, and the run ends with one line naming every failed step,
its command and its job log. Interrupted (Ctrl-C, SIGTERM), the run ends the steps it started (and its workers).
Step and invocation wall times are booked as they happen (:class:`sepce.pipeline.timing.Booking`).
"""

from __future__ import annotations

import signal
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, List, Optional, Sequence

from sepce.io import write_text
from sepce.pipeline.executors import SUBMITIT_LAUNCHERS, Executor, Launch, Outcome, job_parameters, step_gpus
from sepce.pipeline.steps import ScriptStep, dependencies
from sepce.pipeline.timing import Booking, Timer

DONE, SKIPPED, FAILED, NOT_RUN = "done", "skipped", "failed", "not run"


class StepFailed(ValueError):
    """Steps of a plan failed (the steps not depending on them ran); the message is one line."""


@dataclass
class StepResult:
    """How one step of a run ended."""

    stage: str
    name: str
    status: str  # DONE, SKIPPED, FAILED or NOT_RUN (a step it depends on failed)
    seconds: float = 0.0
    outcome: Optional[Outcome] = None


def _failure(step: ScriptStep, outcome: Outcome) -> str:
    why = f"exit status {outcome.code}" if not outcome.error else outcome.error
    log = f" (log {outcome.log})" if outcome.log is not None else ""
    return f"step '{step.name}' failed ({why}){log}: {step.shell()}"


def _interrupt(signum, frame) -> None:
    """SIGTERM (``kill``, ``scancel`` of the launching job) ends a run as Ctrl-C does."""
    raise KeyboardInterrupt(f"signal {signum}")


def run_plan(
    steps: Sequence[ScriptStep],
    launch: Launch,
    booking: Optional[Booking] = None,
    say: Callable[[str], None] = lambda line: None,
) -> List[StepResult]:
    """Run ``steps`` (see the module docstring); ``say`` gets one line per event. Raises :class:`StepFailed`
    after every step that could run has run."""
    after = dependencies(steps)
    executor = Executor(launch, steps)
    results: List[Optional[StepResult]] = [None] * len(steps)
    previous = (
        signal.signal(signal.SIGTERM, _interrupt) if threading.current_thread() is threading.main_thread() else None
    )
    try:
        _schedule(steps, after, launch, executor, results, booking, say)
    except BaseException:  # Ctrl-C, kill or a bug: no job may go on writing into the work directory unwatched
        executor.stop()
        raise
    finally:
        executor.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    done = [r for r in results if r is not None]
    failed = [(steps[i], r) for i, r in enumerate(results) if r is not None and r.status == FAILED]
    if failed:
        skipped = sum(r.status == NOT_RUN for r in done)
        lines = [_failure(step, r.outcome) for step, r in failed]
        if skipped:
            lines.append(f"{skipped} step(s) depending on them not run")
        raise StepFailed("; ".join(lines) + "; fix it and re-run (finished steps are skipped)")
    return done


def _schedule(steps, after, launch, executor, results, booking, say) -> None:
    """Start every step whose dependencies completed (as many at once as ``launch`` allows) until none is left;
    fills ``results``."""
    started: set = set()
    while True:
        progressed = False
        for i, step in enumerate(steps):
            if results[i] is not None or i in started:
                continue
            if any(results[d] is not None and results[d].status in (FAILED, NOT_RUN) for d in after[i]):
                results[i] = StepResult(step.stage, step.name, NOT_RUN)
                say(f"not run: [{step.stage}] {step.name} (a step it depends on failed)")
                progressed = True
                continue
            if not all(results[d] is not None for d in after[i]):
                continue
            with Timer() as check:
                complete = step.complete()
            if complete or step.write is not None:
                say(f"=== [{step.stage}] {step.name}")
                if not complete:
                    write_text(step.write, step.content)
                else:
                    say(f"skipped: {step.skip_if or step.write} exists" + (" (same content)" if step.write else ""))
                    if booking is not None and step.write is None:
                        booking.record(step.stage, step.name, SKIPPED, check.seconds, step.resumes)
                results[i] = StepResult(step.stage, step.name, SKIPPED if complete else DONE, check.seconds)
                progressed = True
                continue
            if (launch.jobs is not None and len(started) >= launch.jobs) or not executor.fits(step):
                continue
            say(f"=== [{step.stage}] {step.name}")
            where = executor.start(step, i)
            if where != "in this interpreter":
                say(f"    {where}")
            started.add(i)
            progressed = True
        for i, outcome in executor.ended().items():
            step = steps[i]
            started.discard(i)
            progressed = True
            if outcome.code == 0:
                results[i] = StepResult(step.stage, step.name, DONE, outcome.seconds, outcome)
                if booking is not None:
                    booking.record(step.stage, step.name, DONE, outcome.seconds, step.resumes)
            else:
                results[i] = StepResult(step.stage, step.name, FAILED, outcome.seconds, outcome)
                say(f"FAILED: {_failure(step, outcome)}")
        if not started and not progressed:
            break
        if not progressed:
            executor.wait()


def dry_run(steps: Sequence[ScriptStep], launch: Launch) -> str:
    """The plan as a shell script (runnable in order) with, per step, what it comes after and its resources (for
    the submitit launchers the exact job parameters). Nothing is run, written or submitted."""
    after = dependencies(steps)
    lines = ["#!/usr/bin/env bash", "set -euo pipefail", f"# {len(steps)} steps; {launch.describe()}"]
    for i, step in enumerate(steps):
        skip = f" (skipped when {step.skip_if} exists)" if step.skip_if else ""
        lines += ["", f"# [{step.stage}] {step.name}{skip}"]
        if step.write is None:
            deps = ", ".join(str(d + 1) for d in after[i]) or "nothing"
            if launch.launcher in SUBMITIT_LAUNCHERS:
                params = " ".join(f"{k}={v}" for k, v in job_parameters(step, i + 1, launch).items())
                lines.append(f"# job {i + 1}/{len(steps)}, after {deps}: {params}")
            else:
                res = replace(step.resources, gpus=step_gpus(step, launch))
                lines.append(f"# step {i + 1}/{len(steps)}, after {deps}: {res.text()}")
        lines.append(step.shell())
    return "\n".join(lines) + "\n"


def jobs_dir(work: Path) -> Path:
    """Where submitit puts the job folders of a work directory (one per step, with its log)."""
    return Path(work) / "jobs"
