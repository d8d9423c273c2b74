"""Small helpers shared by the evaluation scripts: result fingerprints and message formatting (the script runner,
user errors and devices are :mod:`sepce.cli`)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence


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
