"""Refusing image folders that cannot be trusted, before anything is scored.

Every scorer (classifier accuracy, LPIPS, FID, the concept-world metrics, the attack's accuracy) calls
:func:`verify_folders` on the folders it reads. A folder whose ``generation.json`` (:mod:`sepce.folders`) records
image digests must hold exactly those images (flat or sorted into class folders) with exactly those SHA-256s: a
missing, extra or changed image fails with one line (:class:`FolderIntegrityError`, exit status 4). Folders
compared with each other must have been generated with the same settings apart from the model (sampler, steps,
guidance, size, precision, seed scheme). A folder without ``generation.json`` (images from another tool) or
whose ``generation.json`` predates image digests is scored with a one-line warning that it is unverified.

Cost: one SHA-256 pass over the image files (about 1 GB/s per core), whether or not stored results are reused.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from ldm.checkpoint import IntegrityError

from sepce.folders import IMAGES_KEY, SETTINGS_FILE, read_manifest
from sepce.io import sha256_file

from .common import examples
from .images import index_images

log = logging.getLogger(__name__)

#: Settings keys that may differ between compared folders (the weights are what is being compared).
PER_MODEL_SETTINGS = ("model",)


class FolderIntegrityError(IntegrityError):
    """An image folder whose images do not match its ``generation.json``, or folders made with other settings."""


def verify_folder(folder: Path) -> Optional[dict]:
    """Check ``folder``'s images against its ``generation.json`` (see the module docstring); returns the recorded
    generation settings (None without ``generation.json``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"image folder {folder} does not exist")
    manifest = read_manifest(folder)
    if manifest is None:
        log.warning("%s has no %s; its images are scored unverified", folder, SETTINGS_FILE)
        return None
    recorded = manifest.get(IMAGES_KEY)
    if recorded is None:
        log.warning("%s: %s predates image digests; its images are scored unverified", folder, SETTINGS_FILE)
        return manifest.get("settings")
    found, _ = index_images(folder)
    missing = sorted(set(recorded) - set(found))
    extra = sorted(set(found) - set(recorded))
    changed = sorted(n for n in set(found) & set(recorded) if sha256_file(found[n]) != recorded[n])
    problems = [
        (changed, "differ from the digest generation recorded (replaced or edited after generation)", "delete"),
        (missing, f"that {SETTINGS_FILE} records are missing", "rerun generation to remake"),
        (extra, f"were not written by generation ({SETTINGS_FILE} does not record them)", "remove"),
    ]
    for names, what, fix in problems:
        if names:
            remake = "" if fix != "delete" else " and rerun generation to remake"
            raise FolderIntegrityError(
                f"{folder}: {len(names)} image(s) {what}: {examples(names)}; refusing to score it ({fix} them{remake})"
            )
    return manifest.get("settings")


def verify_folders(*folders: Path) -> None:
    """:func:`verify_folder` of each folder, then the same generation settings (apart from the model) across
    them; one line naming the first setting that differs."""
    settings = [(Path(f), verify_folder(f)) for f in folders]
    known = [(f, s) for f, s in settings if s is not None]
    for folder, other in known[1:]:
        first, reference = known[0]
        keys = sorted((set(reference) | set(other)) - set(PER_MODEL_SETTINGS))
        differ = [k for k in keys if reference.get(k) != other.get(k)]
        if differ:
            k = differ[0]
            raise FolderIntegrityError(
                f"{first} and {folder} were generated with different settings ({k}: {reference.get(k)!r} vs "
                f"{other.get(k)!r}); refusing to compare them"
            )
