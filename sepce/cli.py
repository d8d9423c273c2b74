"""The command-line layer every script shares: the runner, user errors and exit codes, devices, shared flags.

A script is ``parse_args()`` + ``main(args)``; it ends with ``run(parse_args, main)``. The runner

- sets up logging (one line per record on stderr) and parses the arguments;
- turns :data:`USER_ERRORS` (bad values, missing files, refused overwrites) into ONE line on stderr,
  ``<script>: error: <message>``, and exit status :data:`EXIT_USER_ERROR` — no traceback, nothing written;
- turns an :class:`~ldm.checkpoint.IntegrityError` (a record or checkpoint whose content fails its digest or
  holds NaN/inf, a model that produced non-finite or collapsed images, an image folder that does not match its
  ``generation.json``) into ONE line and exit status :data:`EXIT_CHECK_FAILED`, with nothing written;
- turns a returned summary with ``ok`` False (a training run stopped early: non-finite loss, Ctrl-C) into a
  warning and exit status :data:`EXIT_STOPPED_EARLY`, after the script has saved its last good state.

A check script that ran to its end but found a failed check (``bench/gpu_check.py``) exits with
:data:`EXIT_CHECK_FAILED`.

Scripts validate their flags once, here at the boundary (:func:`parse_device`, :func:`parse_devices`,
:func:`parse_precision`, ...), and hand the library typed settings; the library never reads flag names.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Optional, Sequence, Union

import torch
from ldm.checkpoint import IntegrityError

log = logging.getLogger(__name__)

#: Exceptions that mean "bad input": reported as one ``error:`` line, exit status :data:`EXIT_USER_ERROR`.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError)
EXIT_USER_ERROR = 1
EXIT_STOPPED_EARLY = 3
EXIT_CHECK_FAILED = 4
EXIT_HELP = (
    "exit status: 0 done; 1 bad input (one line on stderr, nothing written); 3 stopped early (non-finite loss or "
    "Ctrl-C) after saving the last good state; 4 a check failed (corrupt or non-finite weights, non-finite or "
    "collapsed images, an image folder that does not match its generation.json)"
)
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows defaults and keeps the description's line breaks (the module docstrings are written as text)."""


def parser(description: Optional[str], epilog: Optional[str] = None) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` with the project's help formatter."""
    return argparse.ArgumentParser(description=description, epilog=epilog, formatter_class=HelpFormatter)


def script_name() -> str:
    return Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "sepce"


def import_script(path: Union[str, Path], prefix: str = "script_") -> ModuleType:
    """A script file (``train-scripts/CiE.py``) imported as a module named ``<prefix><stem>``, to call its
    ``parse_args`` / ``main`` in-process (its ``__main__`` block does not run)."""
    path = Path(path)
    spec = importlib.util.spec_from_file_location(prefix + re.sub(r"\W", "_", path.stem), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(
    parse_args: Callable[[Optional[Sequence[str]]], argparse.Namespace],
    main: Callable[[argparse.Namespace], Any],
    argv: Optional[Sequence[str]] = None,
    prog: Optional[str] = None,
) -> Any:
    """Parse, run ``main`` and map its outcome to the exit statuses above (see the module docstring)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    args = parse_args(argv)
    try:
        result = main(args)
    except IntegrityError as error:
        print(f"{prog or script_name()}: error: {error}", file=sys.stderr)
        raise SystemExit(EXIT_CHECK_FAILED) from None
    except USER_ERRORS as error:
        print(f"{prog or script_name()}: error: {error}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR) from None
    if isinstance(result, Mapping) and result.get("ok") is False:
        print(
            f"warning: training stopped early: {result.get('stop_reason')}; the saved weights are its last good state",
            file=sys.stderr,
        )
        raise SystemExit(EXIT_STOPPED_EARLY)
    return result


# ------------------------------------------------------------------------------------------------ devices
def default_device() -> str:
    """``cuda`` when a GPU is visible (``cuda:<LOCAL_RANK>`` under torchrun, see :func:`parse_device`), else
    ``cpu``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def local_rank() -> int:
    """``LOCAL_RANK`` of a torchrun launch (0 without one)."""
    value = os.environ.get("LOCAL_RANK", "").strip()
    if not value:
        return 0
    if not value.isdigit():
        raise ValueError(f"environment variable LOCAL_RANK={value!r} is not a non-negative integer")
    return int(value)


def parse_device(spec: Union[str, int, torch.device], flag: str = "--device") -> torch.device:
    """``cpu``, ``cuda``, ``cuda:1``, ``mps`` or a bare GPU index (``0``) → torch.device, checked to exist.
    Under torchrun (``WORLD_SIZE`` > 1) a bare ``cuda`` is this process's GPU, ``cuda:<LOCAL_RANK>``.
    ``flag`` names the option in the error message."""
    if isinstance(spec, torch.device):
        device, text = spec, str(spec)
    else:
        text = str(spec).strip()
        if text == "cuda" and int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
            text = f"cuda:{local_rank()}"
        try:
            device = torch.device(f"cuda:{text}" if text.isdigit() else text)
        except RuntimeError:
            raise ValueError(f"{flag} {spec!r} is not a device name (expected cpu, cuda, cuda:N or N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{flag} {text!r} asks for CUDA but no CUDA device is visible; use {flag} cpu")
        if (device.index or 0) >= torch.cuda.device_count():
            raise ValueError(f"{flag} {text!r}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{flag} {text!r} asks for MPS, which is not available; use {flag} cpu")
    return device


def parse_devices(spec: str) -> list[torch.device]:
    """``--devices`` of the training scripts: ``'0,1'`` (trained model on the first, frozen reference on the
    second, as the released scripts did), ``'0'`` (one device), ``cpu`` or ``cuda:0,cpu``."""
    parts = [p for p in str(spec).split(",") if p.strip()]
    if not parts or len(parts) > 2:
        raise ValueError(f"--devices {spec!r}: expected one or two devices such as '0,1', '0' or 'cpu'")
    return [parse_device(p, "--devices") for p in parts]


def parse_precision(name: str, device: Optional[torch.device] = None, flag: str = "--precision") -> torch.dtype:
    """``fp32|fp16|bf16`` → dtype. Given the ``device`` of a generation script, 16-bit is refused on the CPU
    (no fast kernels there; training autocast passes no device and may use bf16 on the CPU)."""
    if name not in PRECISIONS:
        raise ValueError(f"{flag} {name!r}: expected one of {sorted(PRECISIONS)}")
    dtype = PRECISIONS[name]
    if device is not None and device.type == "cpu" and dtype != torch.float32:
        raise ValueError(f"{flag} {name} needs a GPU (--device cuda); use {flag} fp32 on the CPU")
    return dtype


# ------------------------------------------------------------------------------------------------ flag types
def _int_at_least(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"{value} must be >= {least}")
    return value


def positive_int(text: str) -> int:
    """``type=`` of counts and sizes: an integer >= 1, else argparse's usage error naming the flag
    (``error: argument --num_samples: 0 must be >= 1``, exit status 2)."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """``type=`` of seeds and start indices: an integer >= 0 (argparse's usage error otherwise)."""
    return _int_at_least(text, 0)


def folder_name(text: str) -> str:
    """``type=`` of an output folder's name: non-empty, without ``/`` (argparse's usage error otherwise)."""
    if not text.strip() or "/" in text:
        raise argparse.ArgumentTypeError(f"{text!r} must be a non-empty folder name without '/'")
    return text


# ------------------------------------------------------------------------------------------------ shared flags
def add_device(p: argparse.ArgumentParser, help: str = "torch device: cpu, cuda, cuda:N or N") -> None:
    p.add_argument("--device", default=default_device(), help=help)


def add_precision(p: argparse.ArgumentParser, help: str = "dtype of the model's forward passes") -> None:
    p.add_argument("--precision", choices=tuple(PRECISIONS), default="fp32", help=help)


def add_classes(p: argparse.ArgumentParser, default: Optional[Path] = None) -> None:
    from sepce.classes import DEFAULT_CLASS_MAP

    p.add_argument(
        "--classes", type=Path, default=default or DEFAULT_CLASS_MAP, help="class map CSV (index,name,prompt)"
    )


def add_prompts_path(p: argparse.ArgumentParser, default: Optional[Path] = None, required: bool = False) -> None:
    p.add_argument(
        "--prompts_path",
        type=Path,
        default=default,
        required=required,
        help="prompt CSV with columns case_number, prompt, evaluation_seed (and class)",
    )


def add_quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress bars (also off when stderr is not a terminal)")


def add_evaluation_path(p: argparse.ArgumentParser, help: str) -> None:
    """``--path``: the folder of model folders (``evaluation_folder``) a script sorts or evaluates."""
    from sepce.paths import EVALUATION_DIR

    p.add_argument("--path", type=Path, default=EVALUATION_DIR, help=help)


def add_batch_args(
    p: argparse.ArgumentParser, batch_size: int, batch_help: str = "images per forward pass", workers: bool = True
) -> None:
    """``--device``, ``--batch_size``, ``--num_workers`` (unless ``workers`` is False) and ``--quiet``: the flags
    of a script that runs a network over image files (classifier training and test, LPIPS/FID);
    :meth:`BatchSettings.from_args` reads them."""
    add_device(p)
    p.add_argument("--batch_size", type=positive_int, default=batch_size, help=batch_help)
    if workers:
        p.add_argument("--num_workers", type=non_negative_int, default=0, help="DataLoader worker processes")
    add_quiet(p)


# ------------------------------------------------------------------------------------------------ launchers
def add_launcher(p: argparse.ArgumentParser) -> None:
    """``--launcher``, ``--jobs`` and the ``--slurm_*`` flags of a script that hands its plan to
    :mod:`sepce.pipeline`; :func:`check_launcher` validates them, :func:`launch_of` turns them into a ``Launch``."""
    from sepce.pipeline.executors import LAUNCHERS

    g = p.add_argument_group("where the steps run (sepce.pipeline)")
    g.add_argument(
        "--launcher",
        choices=LAUNCHERS,
        default="local",
        help="local: processes on this machine, each GPU step on GPUs of its own (CUDA_VISIBLE_DEVICES); "
        "submitit-local: submitit's local executor (a job folder and log per step; tests, laptops); "
        "slurm: one Slurm job per step through submitit",
    )
    g.add_argument(
        "--jobs",
        type=positive_int,
        default=None,
        help="steps running at once (None: every ready step for slurm; for the local launchers 1, or one per CPU "
        "core for world-benchmark.py on the CPU)",
    )
    g.add_argument("--slurm_partition", default=None, help="slurm: the partition every job goes to (required)")
    g.add_argument("--slurm_account", default=None, help="slurm: the account jobs are charged to")
    g.add_argument(
        "--slurm_gpus_per_job",
        type=positive_int,
        default=None,
        help="slurm: GPUs of every step that uses GPUs (None: the step's own count)",
    )
    g.add_argument(
        "--slurm_time",
        type=positive_int,
        default=None,
        metavar="MINUTES",
        help="slurm: time limit of every job (None: each step's own estimate)",
    )


def check_launcher(p: argparse.ArgumentParser, args: argparse.Namespace, local_jobs: int = 1) -> None:
    """Refuse launcher flags that do not fit together (argparse's error exit); fill in ``--jobs`` (``local_jobs``
    for the local launchers)."""
    slurm_flags = [f"--{k}" for k in ("slurm_partition", "slurm_account", "slurm_gpus_per_job", "slurm_time")]
    given = [f for f in slurm_flags if getattr(args, f[2:]) is not None]
    if args.launcher == "slurm" and args.slurm_partition is None:
        p.error("--launcher slurm needs --slurm_partition")
    if args.launcher != "slurm" and given:
        p.error(f"{', '.join(given)} only apply to --launcher slurm, not {args.launcher}")
    if args.jobs is None and args.launcher != "slurm":
        args.jobs = local_jobs


def launch_of(args: argparse.Namespace, jobs_dir: Path, inprocess: bool):
    """The ``sepce.pipeline.executors.Launch`` of the launcher flags (``inprocess``: the script's choice)."""
    from sepce.pipeline.executors import Launch, SlurmSettings

    slurm = None
    if args.launcher == "slurm":
        slurm = SlurmSettings(args.slurm_partition, args.slurm_account, args.slurm_gpus_per_job, args.slurm_time)
    return Launch(args.launcher, args.jobs, inprocess, jobs_dir, slurm)


def show_progress(quiet: bool = False) -> bool:
    """Progress bars only for a person watching: not with ``--quiet`` and not when stderr is a file or pipe
    (CI logs, ``nohup``), where finished stages are logged as one line each instead."""
    return not quiet and sys.stderr.isatty()


@dataclass(frozen=True)
class BatchSettings:
    """Validated flags of :func:`add_batch_args`."""

    device: torch.device
    batch_size: int
    num_workers: int = 0
    progress: bool = True

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> BatchSettings:
        return cls(
            parse_device(args.device), args.batch_size, getattr(args, "num_workers", 0), show_progress(args.quiet)
        )


@dataclass(frozen=True)
class Runtime:
    """Validated ``--device`` / ``--precision`` of a generation or evaluation script."""

    device: torch.device
    dtype: torch.dtype
    precision: str

    @classmethod
    def from_flags(cls, device: str, precision: str = "fp32") -> Runtime:
        torch_device = parse_device(device)
        return cls(torch_device, parse_precision(precision, torch_device), precision)
