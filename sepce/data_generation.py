"""Training images of one concept (``eval-scripts/generate-data.py``): case seeds, the data folder, its manifest
and the classifier's class folders.

A run writes ``--num_cases`` cases of one prompt to ``<save_path>/<prompt>/`` (the folder the erasure scripts
read) through :func:`sepce.generation.generate_rows`. Case ``i``'s seed is :func:`derive_seed` (``--seed``, i);
``manifest.csv`` beside the images is a prompt CSV of those cases (so ``generate-images.py --prompts_path`` can
redo any image), and every image is also placed in the classifier's class folder (:func:`link_file`).
"""

from __future__ import annotations

import csv
import filecmp
import hashlib
import io
import logging
import os
import shutil
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from sepce.classes import ConceptClass, class_by_name
from sepce.generation import file_slug, image_name
from sepce.io import atomic_write
from sepce.prompt_csv import PromptRow, read_prompt_csv

log = logging.getLogger(__name__)

MANIFEST = "manifest.csv"
LINK_MODES = ("hardlink", "symlink", "copy", "none")


def derive_seed(seed: int, case_number: int) -> int:
    """Seed of case ``case_number`` of a ``generate-data.py`` run with ``--seed seed``: the first four bytes
    of SHA-256(``"<seed>:<case_number>"``) as a big-endian integer, modulo 2^31. Stable across runs, machines
    and ``--num_cases``; recorded in the manifest beside the images."""
    digest = hashlib.sha256(f"{int(seed)}:{int(case_number)}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % 2**31


def concept_class(prompt: str, class_spec: Optional[str], classes: Sequence[ConceptClass]) -> Optional[ConceptClass]:
    """The class the images of ``prompt`` belong to: ``class_spec`` is generate-data's ``--model_name`` (a class
    index or name of the class map, checked against the class's prompt; ``none``: no class), or None to look the
    prompt up in the class map (no class, with a warning, when it is not there)."""
    if class_spec is not None and class_spec.strip().lower() == "none":
        return None
    if class_spec is None:
        try:
            return class_by_name(list(classes), prompt)
        except KeyError:
            log.warning("prompt %r is not in the class map; no class folder is filled (pass --model_name)", prompt)
            return None
    text = class_spec.strip()
    if text.isdigit():
        match = [c for c in classes if c.index == int(text)]
        if not match:
            raise ValueError(f"--model_name {text}: not a class index of the class map (0..{len(classes) - 1})")
        chosen = match[0]
    else:
        try:
            chosen = class_by_name(list(classes), text)
        except KeyError:
            raise ValueError(
                f"--model_name {text!r} is neither a class index, a class name nor 'none'; "
                f"classes: {[f'{c.index}={c.name}' for c in classes]}"
            ) from None
    if chosen.prompt.replace(" ", "").lower() != prompt.replace(" ", "").lower():
        raise ValueError(
            f"--model_name {text} is class {chosen.name!r} (prompt {chosen.prompt!r}), but --prompt is "
            f"{prompt!r}; use the matching class index, edit the class map, or pass --model_name none"
        )
    return chosen


def data_folder_name(prompt: str, class_name: Optional[str] = None) -> str:
    """Folder of a prompt's training images under ``--save_path``: the prompt itself (``./data/Van Gogh/``, as
    the training scripts read ``./data/<prompt>/``); the class name (``blank``) for the empty prompt."""
    name = prompt.strip() or (class_name or "blank")
    if "/" in name or "\\" in name or name.startswith(".") or name in ("train", "eval"):
        raise ValueError(f"--prompt {prompt!r} cannot name a data folder (no '/', no leading '.', not 'train'/'eval')")
    return name


def data_rows(prompt: str, num_cases: int, seed: int, class_index: Optional[int]) -> List[PromptRow]:
    """Cases ``0..num_cases-1`` of a prompt with seeds :func:`derive_seed` (``seed``, case)."""
    return [PromptRow(case, prompt, derive_seed(seed, case), class_index, case + 2) for case in range(num_cases)]


def write_manifest(folder: Path, rows: Sequence[PromptRow], overwrite: bool = False) -> Path:
    """Write ``<folder>/manifest.csv`` (a prompt CSV: case_number, prompt, evaluation_seed, class) holding
    ``rows`` merged with the rows already recorded there. A recorded case with another prompt or seed is
    refused unless ``overwrite`` (then the new rows replace the old manifest)."""
    path = Path(folder) / MANIFEST
    merged = {row.case_number: row for row in rows}
    if path.is_file() and not overwrite:
        for old in read_prompt_csv(path, allow_empty_prompt=True):
            new = merged.get(old.case_number)
            if new is not None and (new.prompt, new.evaluation_seed) != (old.prompt, old.evaluation_seed):
                raise FileExistsError(
                    f"{path} records case {old.case_number} as prompt {old.prompt!r} seed {old.evaluation_seed}, "
                    f"not {new.prompt!r} seed {new.evaluation_seed} (another --prompt/--seed?); use another "
                    "--save_path or pass --overwrite"
                )
            merged.setdefault(old.case_number, old)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["case_number", "prompt", "evaluation_seed", "class"])
    for case in sorted(merged):
        row = merged[case]
        writer.writerow([case, row.prompt, row.evaluation_seed, "" if row.class_index is None else row.class_index])
    if path.is_file() and path.read_text() == buffer.getvalue():
        return path
    return atomic_write(path, lambda p: p.write_text(buffer.getvalue()))


def link_file(source: Path, destination: Path, mode: str, overwrite: bool = False) -> bool:
    """Place ``source`` at ``destination`` as a hard link (falling back to a copy across file systems), a
    relative symlink or a copy, atomically. Returns False (and leaves it) when a different file is already
    there and ``overwrite`` is false; True when it was placed or is already the same content."""
    if mode not in LINK_MODES or mode == "none":
        raise ValueError(f"link mode {mode!r}: expected one of {list(LINK_MODES[:-1])}")
    if destination.exists() and filecmp.cmp(source, destination, shallow=False):
        return True
    if (destination.exists() or destination.is_symlink()) and not overwrite:
        return False

    def place(tmp: Path) -> None:
        tmp.unlink()
        if mode == "symlink":
            os.symlink(os.path.relpath(source.resolve(), destination.parent.resolve()), tmp)
            return
        if mode == "hardlink":
            try:
                os.link(source, tmp)
                return
            except OSError:
                pass
        shutil.copyfile(source, tmp)

    atomic_write(destination, place)
    return True


def fill_class_folder(
    folder: Path,
    rows: Sequence[PromptRow],
    num_samples: int,
    class_folder: Path,
    prompt: str,
    mode: str,
    overwrite: bool = False,
) -> Tuple[int, List[str]]:
    """Place the images ``<case>_<k>.png`` of ``rows`` in ``folder`` into the classifier's ``class_folder`` as
    ``<prompt file slug>_<case>_<k>.png`` (:func:`link_file` with ``mode``; missing images are left out). Returns
    the number placed and the names of the different files already there that were left in place."""
    placed, conflicts = 0, []
    for row in rows:
        for k in range(num_samples):
            source = folder / image_name(row.case_number, k)
            target = class_folder / f"{file_slug(prompt)}_{image_name(row.case_number, k)}"
            if source.is_file():
                if link_file(source, target, mode, overwrite):
                    placed += 1
                else:
                    conflicts.append(target.name)
    return placed, conflicts
