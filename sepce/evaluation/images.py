"""Finding, sorting and pairing generated evaluation images.

Layout. Generation writes ``<save_path>/<model_name>/<case_number>_<k>.png`` for every row of a prompt CSV and
``k`` in ``0..num_samples-1``. A *model folder* (e.g. ``evaluation_folder/default`` for the original model,
``evaluation_folder/eval`` for an erased one) either holds those files flat, or — after
:func:`sort_into_class_folders` (``train-scripts/move_image.py``) — in *class folders* ``0``..``K-1`` named by
the CSV's ``class`` column. Results of the metric scripts go to ``<model folder>/results/`` (see
:mod:`sepce.evaluation.results`); any folder whose name is not a class index is ignored here.

Pairing (:func:`pair_images`) matches files with the same name in two model folders, whether flat or sorted,
and assigns each pair the class that the prompt CSV gives its case number.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from sepce.classes import ConceptClass

from .common import examples, plural

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
_NAME = re.compile(r"^(\d+)_(\d+)\.(?:png|jpe?g|webp)$", re.IGNORECASE)


def is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def parse_image_name(name: str) -> Optional[Tuple[int, int]]:
    """``'12_3.png'`` -> ``(12, 3)`` (case number, sample index); ``None`` for any other name."""
    match = _NAME.match(name)
    return (int(match.group(1)), int(match.group(2))) if match else None


def loose_images(folder: Path) -> List[Path]:
    """Image files directly inside ``folder`` (not in subfolders), sorted by name."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if is_image(p)) if folder.is_dir() else []


def generated_images(folder: Path) -> List[Path]:
    """Loose images of ``folder`` named like generated ones (``<case_number>_<k>.png``)."""
    return [p for p in loose_images(folder) if parse_image_name(p.name) is not None]


def class_folders(folder: Path, classes: Sequence[ConceptClass]) -> Dict[int, Path]:
    """The existing class folders ``<folder>/<index>`` for the classes of the map."""
    folder = Path(folder)
    return {c.index: folder / str(c.index) for c in classes if (folder / str(c.index)).is_dir()}


def has_class_folders(folder: Path) -> bool:
    """Whether ``folder`` has at least one subfolder whose name is an integer (a class folder)."""
    folder = Path(folder)
    return folder.is_dir() and any(p.is_dir() and p.name.isdigit() for p in folder.iterdir())


def images_by_class(folder: Path, classes: Sequence[ConceptClass]) -> Tuple[Dict[int, List[Path]], List[int]]:
    """Images of each existing class folder, plus the class indices whose folder is missing."""
    found = class_folders(folder, classes)
    missing = [c.index for c in classes if c.index not in found]
    return {index: loose_images(path) for index, path in found.items()}, missing


@dataclass
class SortReport:
    """What :func:`sort_into_class_folders` did in one model folder."""

    folder: Path
    moved: int = 0
    already_sorted: int = 0
    not_in_csv: List[str] = field(default_factory=list)
    unparsable: List[str] = field(default_factory=list)
    conflicts: List[str] = field(default_factory=list)

    def warnings(self) -> List[str]:
        """One counted warning line per kind of problem."""
        problems = [
            (self.not_in_csv, "its case number is not in the prompt CSV"),
            (self.unparsable, "not named <case_number>_<k>.png"),
            (self.conflicts, "already in its class folder (pass --overwrite to replace)"),
        ]
        return [
            f"{self.folder}: left {plural(len(names), 'image')} in place, {reason} ({examples(names)})"
            for names, reason in problems
            if names
        ]


def sort_into_class_folders(
    folder: Path,
    case_to_class: Mapping[int, int],
    dry_run: bool = False,
    overwrite: bool = False,
) -> SortReport:
    """Move the loose ``<case>_<k>.png`` files of ``folder`` into ``folder/<class>/`` (``move_image.py``).

    Idempotent: files already in class folders are counted, not touched. Files whose case is not in
    ``case_to_class``, files with other names, and files whose destination already exists (unless
    ``overwrite``) stay where they are and are reported in the returned :class:`SortReport`.
    """
    folder = Path(folder)
    report = SortReport(folder)
    report.already_sorted = sum(
        len(loose_images(sub)) for sub in folder.iterdir() if sub.is_dir() and sub.name.isdigit()
    )
    for path in loose_images(folder):
        parsed = parse_image_name(path.name)
        if parsed is None:
            report.unparsable.append(path.name)
            continue
        class_index = case_to_class.get(parsed[0])
        if class_index is None:
            report.not_in_csv.append(path.name)
            continue
        destination = folder / str(class_index) / path.name
        if destination.exists() and not overwrite:
            report.conflicts.append(path.name)
            continue
        if not dry_run:
            destination.parent.mkdir(exist_ok=True)
            os.replace(path, destination)
        report.moved += 1
    return report


def index_images(folder: Path) -> Tuple[Dict[str, Path], List[str]]:
    """Map file name -> path over ``folder`` and its class folders; also the names found more than once."""
    folder = Path(folder)
    index: Dict[str, Path] = {}
    duplicates: List[str] = []
    places = [folder] + sorted(p for p in folder.iterdir() if p.is_dir() and p.name.isdigit())
    for place in places:
        for path in loose_images(place):
            if path.name in index:
                duplicates.append(path.name)
            else:
                index[path.name] = path
    return index, duplicates


@dataclass
class PairReport:
    """Same-named image pairs of two model folders, grouped by class, and what could not be paired."""

    pairs: Dict[int, List[Tuple[Path, Path]]]
    only_original: List[str] = field(default_factory=list)
    only_edited: List[str] = field(default_factory=list)
    not_in_csv: List[str] = field(default_factory=list)
    duplicates: List[str] = field(default_factory=list)
    original: Optional[Path] = None
    edited: Optional[Path] = None

    @property
    def num_pairs(self) -> int:
        return sum(len(v) for v in self.pairs.values())

    def warnings(self) -> List[str]:
        """One counted warning line per kind of problem."""
        problems = [
            (self.only_original, f"in {self.original} without a same-named image in {self.edited}"),
            (self.only_edited, f"in {self.edited} without a same-named image in {self.original}"),
            (
                self.not_in_csv,
                "whose case number is not in the prompt CSV (or not named <case_number>_<k>.png)",
            ),
        ]
        lines = [
            f"skipped {plural(len(names), 'image')} {reason} ({examples(names)})" for names, reason in problems if names
        ]
        if self.duplicates:
            lines.append(
                f"{plural(len(self.duplicates), 'file name')} found in more than one class folder; "
                f"the first copy is used ({examples(self.duplicates)})"
            )
        return lines


def pair_images(original: Path, edited: Path, case_to_class: Mapping[int, int]) -> PairReport:
    """Pair same-named images of two model folders (flat or sorted) by class, from the prompt CSV."""
    original, edited = Path(original), Path(edited)
    for folder in (original, edited):
        if not folder.is_dir():
            raise NotADirectoryError(f"image folder {folder} does not exist")
    left, left_dup = index_images(original)
    right, right_dup = index_images(edited)
    report = PairReport(pairs={}, original=original, edited=edited, duplicates=left_dup + right_dup)
    report.only_original = sorted(set(left) - set(right))
    report.only_edited = sorted(set(right) - set(left))
    for name in sorted(set(left) & set(right)):
        parsed = parse_image_name(name)
        class_index = case_to_class.get(parsed[0]) if parsed else None
        if class_index is None:
            report.not_in_csv.append(name)
            continue
        report.pairs.setdefault(class_index, []).append((left[name], right[name]))
    if not left:
        raise ValueError(f"original image folder {original} holds no images (flat or in class folders)")
    if not right:
        raise ValueError(f"edited image folder {edited} holds no images (flat or in class folders)")
    if not report.pairs:
        raise ValueError(
            f"no same-named images of {original} and {edited} belong to a case of the prompt CSV; "
            "check --prompts_path and the folders"
        )
    return report
