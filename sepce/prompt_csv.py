"""Prompt CSVs: reading, validating and sharding the rows that image generation and evaluation work from.

A prompt CSV (e.g. ``data/evaluate.csv``, made by ``data/make_evaluate_csv.py``) has one row per case with the
columns ``case_number`` (unique integer), ``prompt`` (text; may be empty only for a class whose class-map
prompt is empty, i.e. the blank-prompt class, or when the caller allows it), ``evaluation_seed`` (non-negative
integer) and, optionally, ``class`` (an index into the class map ``data/classes.csv``) and
``evaluation_guidance`` (the row's own classifier-free guidance scale, as in the I2P prompt file that ESD and
SPM evaluate nudity on: ``prompt, categories, …, evaluation_seed, evaluation_guidance, sd_image_width,
sd_image_height, sd_model, case_number``). Any further columns are kept in :attr:`PromptRow.extra`.

:func:`read_prompt_csv` checks everything before a model is loaded and raises a ``ValueError`` (or
``FileNotFoundError``) whose one-line message names the file, the line and the bad value. Scripts turn it into
an ``error:`` line and a non-zero exit status.

Typical use in a generation script::

    rows = read_prompt_csv(args.prompts_path, classes=load_class_map(args.classes))
    for row in shard_rows(rows, rank, world_size):
        ...  # files <save_path>/<model_name>/<row.case_number>_<k>.png
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, TypeVar

from sepce.classes import ConceptClass

REQUIRED_COLUMNS = ("case_number", "prompt", "evaluation_seed")
CLASS_COLUMN = "class"
GUIDANCE_COLUMN = "evaluation_guidance"

T = TypeVar("T")


@dataclass(frozen=True)
class PromptRow:
    """One validated row of a prompt CSV.

    ``line`` is the 1-based line number in the file (the header is line 1), for error messages downstream.
    ``class_index`` is ``None`` when the CSV has no ``class`` column or the cell is empty.
    """

    case_number: int
    prompt: str
    evaluation_seed: int
    class_index: Optional[int] = None
    line: int = 0
    extra: Dict[str, str] = field(default_factory=dict, compare=False)
    guidance: Optional[float] = None  # the row's own guidance scale (column evaluation_guidance), else None


def _parse_int(path: Path, line: int, column: str, value: str, minimum: Optional[int] = None) -> int:
    text = (value or "").strip()
    try:
        number = int(text)
    except ValueError:
        raise ValueError(f"{path} line {line}: {column} {value!r} is not an integer") from None
    if minimum is not None and number < minimum:
        raise ValueError(f"{path} line {line}: {column} {number} is negative; expected an integer >= {minimum}")
    return number


def _parse_guidance(path: Path, line: int, value: str) -> float:
    text = (value or "").strip()
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{path} line {line}: {GUIDANCE_COLUMN} {value!r} is not a finite number >= 0")
    return number


def read_prompt_csv(
    path: str | Path,
    classes: Optional[Sequence[ConceptClass]] = None,
    require_class: bool = False,
    allow_empty_prompt: bool = False,
) -> List[PromptRow]:
    """Read and validate a prompt CSV; return its rows in file order.

    Args:
        path: the CSV file.
        classes: the class map (``sepce.classes.load_class_map()``). When given, every ``class`` value must be
            one of its indices, and an empty prompt is accepted for rows whose class has an empty class-map
            prompt (the blank class). When ``None``, class values need only be non-negative integers.
        require_class: the ``class`` column must exist and every row must name a class (sorting and
            per-class evaluation need it).
        allow_empty_prompt: accept empty prompts on any row.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: a missing column, an empty prompt where one is required, a non-integer or negative seed or
            case number, a duplicate case number, an unknown class index, or no rows at all. The message
            is one line naming the file, line and value.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"prompt CSV {path} does not exist (expected columns {', '.join(REQUIRED_COLUMNS)}[, class])"
        )
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [name.strip() for name in (reader.fieldnames or [])]
        reader.fieldnames = header
        required = list(REQUIRED_COLUMNS) + ([CLASS_COLUMN] if require_class else [])
        missing = [name for name in required if name not in header]
        if missing:
            raise ValueError(
                f"prompt CSV {path} lacks column(s) {missing} (it has {header}); expected {', '.join(required)}"
            )
        raw_rows = [(reader.line_num, row) for row in reader]

    by_index = {c.index: c for c in classes} if classes is not None else None
    has_class = CLASS_COLUMN in header
    rows: List[PromptRow] = []
    first_line: Dict[int, int] = {}
    for line, raw in raw_rows:
        if all(not (value or "").strip() for value in raw.values() if isinstance(value, str)):
            continue  # a blank line
        case = _parse_int(path, line, "case_number", raw["case_number"], minimum=0)
        if case in first_line:
            raise ValueError(f"{path} line {line}: case_number {case} already appears on line {first_line[case]}")
        first_line[case] = line
        seed = _parse_int(path, line, "evaluation_seed", raw["evaluation_seed"], minimum=0)

        class_index: Optional[int] = None
        class_text = (raw.get(CLASS_COLUMN) or "").strip() if has_class else ""
        if class_text:
            class_index = _parse_int(path, line, CLASS_COLUMN, class_text, minimum=0)
            if by_index is not None and class_index not in by_index:
                raise ValueError(
                    f"{path} line {line}: class {class_index} is not in the class map (indices 0..{len(by_index) - 1})"
                )
        elif require_class:
            raise ValueError(f"{path} line {line}: case {case} has an empty class; every row needs a class index")

        prompt = (raw["prompt"] or "").strip()
        if not prompt and not allow_empty_prompt:
            blank_class = by_index is not None and class_index is not None and not by_index[class_index].prompt
            if not blank_class:
                raise ValueError(
                    f"{path} line {line}: case {case} has an empty prompt; empty prompts are allowed "
                    "only for a class whose class-map prompt is empty"
                )
        extra = {
            key: value
            for key, value in raw.items()
            if key is not None and key not in REQUIRED_COLUMNS and key != CLASS_COLUMN
        }
        guidance = _parse_guidance(path, line, raw[GUIDANCE_COLUMN]) if GUIDANCE_COLUMN in header else None
        rows.append(PromptRow(case, prompt, seed, class_index, line, extra, guidance))
    if not rows:
        raise ValueError(f"prompt CSV {path} has a header but no rows")
    return rows


def case_classes(rows: Iterable[PromptRow]) -> Dict[int, int]:
    """Map case number -> class index for the rows that have a class."""
    return {row.case_number: row.class_index for row in rows if row.class_index is not None}


def shard_rows(rows: Sequence[T], rank: int, world_size: int) -> List[T]:
    """The rows that process ``rank`` of ``world_size`` handles (``torchrun`` sharding).

    Rows are dealt round-robin (``rows[rank::world_size]``), so shards differ in length by at most one, every
    row lands in exactly one shard, and each shard keeps the file order.
    """
    if world_size < 1:
        raise ValueError(f"world_size {world_size} must be >= 1")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside 0..{world_size - 1} (world_size {world_size})")
    return list(rows[rank::world_size])
