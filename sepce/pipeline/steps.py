"""Steps of a plan and the graph between them.

A step runs one repository script (``argv[0]`` a script path relative to the repository root, or ``-m module``),
writes one small file the plan computed (``write`` / ``content``), or calls a library function (``call``). It
names what it reads and what it writes; a step waits for every earlier step of the plan that writes something it
reads or writes (the same path, or one inside the other), so the graph needs no hand-kept edges and two steps never
write one folder at once. ``skip_if`` names the output whose existence means the step is complete (a finished
training run); a step that ``resumes`` keeps the partial output an interrupted run left (images, a learned word)
and goes on from it.
"""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple

from sepce.paths import REPO_ROOT


@dataclass(frozen=True)
class Resources:
    """What one step needs. Local launchers give a step ``gpus`` GPUs of their own (``CUDA_VISIBLE_DEVICES``);
    Slurm gets all four fields (``--gpus-per-node``, ``--cpus-per-task``, ``--mem``, ``--time``)."""

    gpus: int = 0  # 0: CPU only
    cpus: int = 1
    mem_gb: int = 8
    minutes: int = 60  # time limit of the job

    def text(self) -> str:
        return f"gpus={self.gpus} cpus={self.cpus} mem={self.mem_gb}G time={self.minutes}min"


@dataclass
class ScriptStep:
    """One step of a plan (see the module docstring)."""

    stage: str
    name: str
    argv: List[str] = field(default_factory=list)
    skip_if: Optional[Path] = None  # an output whose existence means the step is complete
    nproc: int = 1  # > 1: launched with torchrun, one process per GPU
    write: Optional[Path] = None  # a file this step writes (content below) instead of running a script
    content: str = ""
    resumes: bool = False  # keeps the output an interrupted run left (images, a learned word) and goes on from it
    reads: Tuple[Path, ...] = ()
    writes: Tuple[Path, ...] = ()
    resources: Resources = Resources()
    call: Optional[Callable[[], Any]] = None  # a library function run instead of a script (picklable)

    def outputs(self) -> Tuple[Path, ...]:
        """What the step writes (a ``write`` step: its file)."""
        return (*self.writes, *((self.write,) if self.write is not None else ()))

    def shell(self) -> str:
        """The step as a shell command line."""
        if self.write is not None:
            return (
                f"mkdir -p {shlex.quote(str(self.write.parent))} && cat > {shlex.quote(str(self.write))} <<'EOF'\n"
                f"{self.content.rstrip()}\nEOF"
            )
        if self.call is not None:
            target = getattr(self.call, "func", self.call)
            return f"# runs {target.__module__}.{target.__qualname__} (a library function, no script)"
        launcher = ["python"] if self.nproc == 1 else ["torchrun", "--standalone", "--nproc_per_node", str(self.nproc)]
        return shlex.join(launcher + self.argv)

    def command(self) -> List[str]:
        """The process to start: this interpreter on the script (``torch.distributed.run`` when ``nproc`` > 1)."""
        if self.argv[0] == "-m":
            return [sys.executable, *self.argv]
        script = str(REPO_ROOT / self.argv[0])
        if self.nproc > 1:
            torchrun = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(self.nproc)]
            return [sys.executable, *torchrun, script, *self.argv[1:]]
        return [sys.executable, script, *self.argv[1:]]

    def complete(self) -> bool:
        """Whether the step's output is already there: its file with this content, or its ``skip_if``."""
        if self.write is not None:
            return self.write.is_file() and self.write.read_text() == self.content
        return self.skip_if is not None and self.skip_if.exists()


def _key(path: Path) -> str:
    return os.path.abspath(path)


def _overlap(a: str, b: str) -> bool:
    """The same path, or one inside the other."""
    return a == b or a.startswith(b.rstrip(os.sep) + os.sep) or b.startswith(a.rstrip(os.sep) + os.sep)


def dependencies(steps: Sequence[ScriptStep]) -> List[Tuple[int, ...]]:
    """For each step, the earlier steps it waits for directly: those that write what it reads or writes, less the
    ones it already waits for through another (the transitive reduction, so a dry run lists few edges)."""
    writes = [[_key(p) for p in s.outputs()] for s in steps]
    touches = [[_key(p) for p in (*s.reads, *s.outputs())] for s in steps]
    direct: List[List[int]] = []
    ancestors: List[int] = []  # bit j of ancestors[i]: step i waits for step j, directly or not
    for i in range(len(steps)):
        found = [j for j in range(i) if any(_overlap(w, t) for w in writes[j] for t in touches[i])]
        closure = 0
        for j in found:
            closure |= ancestors[j] | (1 << j)
        implied = 0
        for j in found:
            implied |= ancestors[j]
        direct.append([j for j in found if not implied >> j & 1])
        ancestors.append(closure)
    return [tuple(d) for d in direct]
