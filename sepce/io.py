"""Atomic file writes and small I/O helpers shared by every script.

Every artifact (checkpoint, image, CSV, JSON) is written to a temporary file in the destination folder and
renamed into place, so an interrupted run never leaves a half-written file behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 24) -> str:
    """SHA-256 (hex) of a file's bytes."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` when the block succeeds.

    With ``overwrite=False`` an existing ``path`` raises ``FileExistsError`` before anything is written.
    """
    path = Path(path)
    if not overwrite and path.exists():
        raise FileExistsError(f"{path} already exists; refusing to overwrite it (pass --overwrite to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write(path: str | os.PathLike, writer: Callable[[Path], Any], overwrite: bool = True) -> Path:
    """Call ``writer(tmp_path)`` and move the result onto ``path`` atomically."""
    with atomic_path(path, overwrite=overwrite) as tmp:
        writer(tmp)
    return Path(path)


def write_text(path: str | os.PathLike, text: str, overwrite: bool = True) -> Path:
    """Atomically write a text file."""
    return atomic_write(path, lambda p: p.write_text(text), overwrite=overwrite)


def write_json(path: str | os.PathLike, obj: Any, overwrite: bool = True) -> Path:
    """Atomically write ``obj`` as indented JSON."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n", overwrite=overwrite)


def save_torch(path: str | os.PathLike, obj: Any, overwrite: bool = True) -> Path:
    """Atomically ``torch.save`` an object."""
    import torch

    return atomic_write(path, lambda p: torch.save(obj, p), overwrite=overwrite)


def save_image(path: str | os.PathLike, image, overwrite: bool = True) -> Path:
    """Atomically save a PIL image (format from the file suffix)."""
    fmt = Path(path).suffix.lstrip(".").upper().replace("JPG", "JPEG") or "PNG"
    return atomic_write(path, lambda p: image.save(p, format=fmt), overwrite=overwrite)
