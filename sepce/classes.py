"""The class map: which class index means which concept, read from ``data/classes.csv``.

Every script that needs class indices (data generation, sorting, the classifier, LPIPS/FID, the table) reads this
file instead of hard-coding ranges. Columns: ``index`` (0..K-1), ``name`` (a display name), ``prompt`` (the bare
concept prompt; empty for the blank-prompt class).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from sepce.paths import DATA_DIR

DEFAULT_CLASS_MAP = DATA_DIR / "classes.csv"


@dataclass(frozen=True)
class ConceptClass:
    index: int
    name: str
    prompt: str


def load_class_map(path: str | Path = DEFAULT_CLASS_MAP) -> list[ConceptClass]:
    """Read and validate a class map; classes come back sorted by index, indices must be 0..K-1."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class map {path} does not exist (expected a CSV with columns index,name,prompt)")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = {"index", "name", "prompt"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"class map {path} lacks column(s) {sorted(missing)}; expected index,name,prompt")
        rows = list(reader)
    classes = []
    for n, row in enumerate(rows, start=2):
        try:
            index = int(row["index"])
        except ValueError:
            raise ValueError(f"class map {path} line {n}: index {row['index']!r} is not an integer") from None
        classes.append(ConceptClass(index, row["name"].strip(), (row["prompt"] or "").strip()))
    classes.sort(key=lambda c: c.index)
    if [c.index for c in classes] != list(range(len(classes))):
        raise ValueError(f"class map {path}: indices {[c.index for c in classes]} are not 0..{len(classes) - 1}")
    return classes


def class_by_name(classes: list[ConceptClass], name: str) -> ConceptClass:
    """Find a class by display name or prompt (case- and space-insensitive)."""
    key = name.replace(" ", "").lower()
    for c in classes:
        if key in (c.name.replace(" ", "").lower(), c.prompt.replace(" ", "").lower()):
            return c
    raise KeyError(f"unknown concept {name!r}; the class map has {[c.name for c in classes]}")


def classes_by_names(classes: Sequence[ConceptClass], names: Sequence[str], what: str) -> list[ConceptClass]:
    """:func:`class_by_name` for each name; an unknown one raises a one-line ``ValueError`` prefixed by ``what``."""
    found = []
    for name in names:
        try:
            found.append(class_by_name(list(classes), name))
        except KeyError as error:
            raise ValueError(f"{what}: {error.args[0]}") from None
    return found
