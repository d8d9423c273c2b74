"""A step worker (``--runner inprocess`` with ``--jobs`` > 1): one long-lived Python process that runs a plan's
script steps one after another in its own interpreter, so torch and the library are imported once per worker
instead of once per step (about 5 s a step on a 2-core machine; the world benchmark's short form has 36 steps).

The launcher (:class:`sepce.pipeline.executors.Executor`) starts ``python -m sepce.pipeline.worker <in> <out>``
with two inherited pipe descriptors: it writes one JSON line ``{"argv": [...]}`` per step on ``<in>`` and reads
``{"code": <exit status>, "seconds": <run time>}`` back on ``<out>``; stdin is not used, the steps' output goes to
the worker's stdout/stderr as a step process's would. A step that raises prints its traceback and counts as exit
status 1; a step that kills the process (a crash, the OOM killer) is reported by the launcher, which starts a new
worker for the next step. End of ``<in>`` ends the worker, and so does the end of the launcher (on Linux the
worker asks for SIGTERM when its parent dies, so a killed launcher leaves no worker drawing unwatched).
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import signal
import sys
from typing import IO, List


def serve(commands: IO[str], answers: IO[str]) -> None:
    """Run each step read from ``commands`` and answer its exit status and run time on ``answers``."""
    from sepce.pipeline.executors import run_script
    from sepce.pipeline.timing import Timer

    for line in commands:
        argv: List[str] = json.loads(line)["argv"]
        with Timer() as timer:
            code = run_script(argv)
        gc.collect()  # the step's models go before the next step loads its own
        sys.stdout.flush()  # the step's output reaches the log before its end is reported
        sys.stderr.flush()
        answers.write(json.dumps({"code": code, "seconds": timer.seconds}) + "\n")
        answers.flush()


PR_SET_PDEATHSIG = 1  # prctl(2)


def end_with_parent() -> None:
    """Ask Linux for SIGTERM when the launcher dies (elsewhere: nothing; the worker then ends at the end of its
    commands, after its current step)."""
    parent = os.getppid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the launcher died before the request
        os.kill(os.getpid(), signal.SIGTERM)


def main(argv: List[str]) -> None:
    if len(argv) != 2:
        raise SystemExit("usage: python -m sepce.pipeline.worker <command fd> <answer fd>")
    end_with_parent()
    with os.fdopen(int(argv[0]), "r") as commands, os.fdopen(int(argv[1]), "w") as answers:
        serve(commands, answers)


if __name__ == "__main__":
    main(sys.argv[1:])
