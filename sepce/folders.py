"""The seal of a folder of generated images: ``generation.json`` and the lock that guards it.

``<folder>/generation.json`` holds

* ``settings`` — what decides an image's pixels besides its prompt and seed (model, sampler, steps, guidance,
  size, precision, seed scheme; :func:`sepce.generation.folder_settings`);
* ``images`` — ``{file name: SHA-256 of the PNG file}`` of every image generation wrote there, added batch by
  batch right after the images are written (a folder made before image digests existed has no ``images`` and is
  read as unverified);
* whatever else the script records (``prompts_path``, ...).

Every read-modify-write of the file happens under :func:`folder_lock`, an exclusive ``flock`` on the folder
itself (POSIX; released by the kernel when the process ends, so a killed run never leaves a stale lock and no lock
file sits among the images). :mod:`sepce.evaluation.verify` checks a folder against it before anything is scored.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Iterator, Mapping, Optional

from ldm.checkpoint import IntegrityError

from sepce.io import write_json

SETTINGS_FILE = "generation.json"
IMAGES_KEY = "images"


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``folder`` (created if missing) for the block; waits for another
    process's block to end (generation holds it only while it writes one batch's images and their digests)."""
    import fcntl

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def read_manifest(folder: Path) -> Optional[dict]:
    """``generation.json`` of ``folder`` as a dict, None when there is none; a damaged one is an
    :class:`~ldm.checkpoint.IntegrityError` (one line)."""
    path = Path(folder) / SETTINGS_FILE
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except ValueError:
        raise IntegrityError(f"{path} is not valid JSON; the folder's record of its images is damaged") from None
    if not isinstance(manifest, dict):
        raise IntegrityError(f"{path} holds no settings object; the folder's record of its images is damaged")
    return manifest


def current_manifest(folder: Path, settings: dict) -> dict:
    """``generation.json`` of ``folder`` read by a process about to write images made with ``settings`` (the caller
    holds :func:`folder_lock`). Refused (one line, before any image is written) when it now records other
    settings: another process started the folder over with other settings meanwhile."""
    manifest = read_manifest(folder)
    if manifest is None:  # a folder without generation.json (not made by a generation script): nothing to record
        return {}
    if manifest.get("settings") != json.loads(json.dumps(settings)):
        raise IntegrityError(
            f"{Path(folder) / SETTINGS_FILE} changed to other settings while images were being generated into "
            f"{folder}; stopped before writing more (rerun to continue with the folder's settings)"
        )
    return manifest


def record_images(folder: Path, manifest: dict, digests: Mapping[str, str]) -> None:
    """Add ``digests`` (file name → SHA-256) to the ``images`` of ``manifest`` (:func:`current_manifest`, under the
    same lock) and write it back atomically. A folder made before image digests existed (no ``images``) stays
    unverified: nothing is added."""
    if IMAGES_KEY not in manifest or not digests:
        return
    manifest[IMAGES_KEY] = {**manifest[IMAGES_KEY], **digests}
    write_json(Path(folder) / SETTINGS_FILE, manifest)
