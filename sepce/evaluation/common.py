"""Small helpers shared by the evaluation scripts: user-error handling, devices, result fingerprints."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

log = logging.getLogger(__name__)

#: Exceptions that mean "bad input": a script reports them as one ``error:`` line and exits with status 1.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError)


def run_script(
    parse_args: Callable[[Optional[Sequence[str]]], argparse.Namespace],
    main: Callable[[argparse.Namespace], Any],
    argv: Optional[Sequence[str]] = None,
    prog: Optional[str] = None,
) -> Any:
    """Parse arguments and run ``main``; :data:`USER_ERRORS` become ``SystemExit("<prog>: error: ...")``."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    args = parse_args(argv)
    try:
        return main(args)
    except USER_ERRORS as error:
        name = prog or Path(sys.argv[0]).name
        raise SystemExit(f"{name}: error: {error}") from None


def default_device() -> str:
    """``cuda:0`` when a GPU is visible, else ``cpu``."""
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"


def resolve_device(name: str):
    """``torch.device(name)``, with a one-line error when a CUDA device is asked for but not visible."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a device name (expected e.g. 'cpu' or 'cuda:0')") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name!r} asks for CUDA, but no CUDA device is visible; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name!r}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return device


def fingerprint(parts: Any) -> str:
    """A short stable digest of JSON-serialisable ``parts`` (tells whether stored results are current)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def file_signature(paths: Iterable[Path], root: Optional[Path] = None) -> list:
    """(name, size, mtime) of each file: a cheap identity of a set of inputs for :func:`fingerprint`."""
    signature = []
    for path in sorted(Path(p) for p in paths):
        stat = path.stat()
        name = str(path.relative_to(root)) if root is not None else str(path.resolve())
        signature.append((name, stat.st_size, stat.st_mtime_ns))
    return signature


def plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def examples(names: Sequence[str], limit: int = 3) -> str:
    """``'a', 'b', 'c', ...`` for warning messages."""
    shown = ", ".join(repr(str(n)) for n in list(names)[:limit])
    return shown + (", ..." if len(names) > limit else "")
