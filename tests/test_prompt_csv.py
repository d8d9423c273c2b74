"""Prompt-CSV validation (sepce/prompt_csv.py), torchrun sharding, and the committed data/evaluate.csv."""

from __future__ import annotations

import csv
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import assert_one_line_error

from sepce.classes import load_class_map
from sepce.prompt_csv import PromptRow, case_classes, read_prompt_csv, shard_rows

ROOT = Path(__file__).resolve().parent.parent
CLASSES = load_class_map()


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def load_make_evaluate():
    spec = importlib.util.spec_from_file_location("make_evaluate_csv", ROOT / "data" / "make_evaluate_csv.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------------- reading rows


def test_valid_csv_gives_typed_rows(tmp_path):
    path = write(
        tmp_path / "p.csv",
        "case_number,prompt,evaluation_seed,class,evaluation_guidance\n"
        "3, Van Gogh ,42,0,7.5\n"
        "7,,1234,9,7.5\n"
        "\n"
        "8,a cat,5,,7.5\n",
    )
    rows = read_prompt_csv(path, CLASSES)
    assert rows == [
        PromptRow(3, "Van Gogh", 42, 0, 2, guidance=7.5),  # the row's own guidance scale (I2P's column)
        PromptRow(7, "", 1234, 9, 3, guidance=7.5),
        PromptRow(8, "a cat", 5, None, 5, guidance=7.5),
    ]
    assert all(isinstance(r.case_number, int) and isinstance(r.evaluation_seed, int) for r in rows)
    assert rows[0].extra == {"evaluation_guidance": "7.5"}
    assert case_classes(rows) == {3: 0, 7: 9}


def test_csv_without_class_column_is_fine_unless_required(tmp_path):
    path = write(tmp_path / "p.csv", "prompt,evaluation_seed,case_number\nVan Gogh,1,0\n")
    assert read_prompt_csv(path)[0] == PromptRow(0, "Van Gogh", 1, None, 2)
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['class'\]"):
        read_prompt_csv(path, CLASSES, require_class=True)


@pytest.mark.parametrize("missing", ["case_number", "prompt", "evaluation_seed"])
def test_missing_column_is_named(tmp_path, missing):
    columns = [c for c in ("case_number", "prompt", "evaluation_seed") if c != missing]
    values = {"case_number": "0", "prompt": "Picasso", "evaluation_seed": "1"}
    path = write(tmp_path / "p.csv", ",".join(columns) + "\n" + ",".join(values[c] for c in columns) + "\n")
    with pytest.raises(ValueError, match=rf"lacks column\(s\) \['{missing}'\]") as info:
        read_prompt_csv(path, CLASSES)
    assert "\n" not in str(info.value)


def test_empty_prompt_only_for_blank_class_or_when_allowed(tmp_path):
    path = write(tmp_path / "p.csv", "case_number,prompt,evaluation_seed,class\n0,Picasso,1,1\n1,,2,1\n")
    with pytest.raises(ValueError, match=r"line 3: case 1 has an empty prompt"):
        read_prompt_csv(path, CLASSES)
    assert read_prompt_csv(path, CLASSES, allow_empty_prompt=True)[1].prompt == ""
    no_class = write(tmp_path / "q.csv", "case_number,prompt,evaluation_seed\n0,,1\n")
    with pytest.raises(ValueError, match="empty prompt"):
        read_prompt_csv(no_class, CLASSES)
    blank = write(tmp_path / "r.csv", "case_number,prompt,evaluation_seed,class\n0,,1,9\n")
    assert read_prompt_csv(blank, CLASSES)[0].class_index == 9


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("0,Picasso,abc,1", r"line 2: evaluation_seed 'abc' is not an integer"),
        ("0,Picasso,4.5,1", r"line 2: evaluation_seed '4.5' is not an integer"),
        ("0,Picasso,-3,1", r"line 2: evaluation_seed -3 is negative"),
        ("x,Picasso,3,1", r"line 2: case_number 'x' is not an integer"),
        ("0,Picasso,3,12", r"line 2: class 12 is not in the class map \(indices 0..9\)"),
        ("0,Picasso,3,one", r"line 2: class 'one' is not an integer"),
    ],
)
def test_bad_values_are_named_with_their_line(tmp_path, row, message):
    path = write(tmp_path / "p.csv", "case_number,prompt,evaluation_seed,class\n" + row + "\n")
    with pytest.raises(ValueError, match=message) as info:
        read_prompt_csv(path, CLASSES)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_duplicate_case_numbers(tmp_path):
    path = write(tmp_path / "p.csv", "case_number,prompt,evaluation_seed\n4,a,1\n5,b,2\n4,c,3\n")
    with pytest.raises(ValueError, match=r"line 4: case_number 4 already appears on line 2"):
        read_prompt_csv(path)


def test_required_class_cell_and_empty_files(tmp_path):
    path = write(tmp_path / "p.csv", "case_number,prompt,evaluation_seed,class\n0,Picasso,1,\n")
    assert read_prompt_csv(path, CLASSES)[0].class_index is None
    with pytest.raises(ValueError, match="line 2: case 0 has an empty class"):
        read_prompt_csv(path, CLASSES, require_class=True)
    with pytest.raises(ValueError, match="has a header but no rows"):
        read_prompt_csv(write(tmp_path / "h.csv", "case_number,prompt,evaluation_seed\n"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_prompt_csv(tmp_path / "absent.csv")


# ----------------------------------------------------------------------------------------------- sharding


@pytest.mark.parametrize("world_size", [1, 2, 3, 7])
def test_shard_rows_partitions_in_order(world_size):
    rows = list(range(20))
    shards = [shard_rows(rows, rank, world_size) for rank in range(world_size)]
    assert sorted(x for shard in shards for x in shard) == rows
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert all(shard == sorted(shard) for shard in shards)


def test_shard_rows_rejects_bad_rank():
    with pytest.raises(ValueError, match="rank 2 is outside 0..1"):
        shard_rows([1, 2, 3], 2, 2)
    with pytest.raises(ValueError, match="world_size 0"):
        shard_rows([1], 0, 0)


# ------------------------------------------------------------------------------------------ evaluate.csv


def test_committed_evaluate_csv_is_the_protocol_and_reproducible():
    path = ROOT / "data" / "evaluate.csv"
    with path.open(newline="") as f:
        assert next(csv.reader(f)) == ["case_number", "prompt", "evaluation_seed", "class"]
    rows = read_prompt_csv(path, CLASSES, require_class=True)
    assert len(rows) == len(CLASSES) * 50
    assert [r.case_number for r in rows] == list(range(len(rows)))
    for c in CLASSES:
        mine = [r for r in rows if r.class_index == c.index]
        assert len(mine) == 50
        assert {r.prompt for r in mine} == {c.prompt}
        assert len({r.evaluation_seed for r in mine}) == 50
    module = load_make_evaluate()
    args = module.parse_args([])
    assert module.render_csv(module.build_rows(CLASSES, 50, args.seed, args.max_seed)) == path.read_text()


def test_world_evaluate_csv_has_100_seeds_and_keeps_the_v1_seeds():
    """Protocol v2 (docs/world-benchmark.md): 100 seeds per style from the same master seed; the first 50 of each
    style are the v1 file's seeds."""
    path = ROOT / "data" / "world" / "evaluate.csv"
    world = load_class_map(ROOT / "data" / "world" / "classes.csv")
    module = load_make_evaluate()
    args = module.parse_args([])
    assert module.render_csv(module.build_rows(world, 100, args.seed, args.max_seed)) == path.read_text()
    rows = read_prompt_csv(path, world, require_class=True)
    v1 = module.build_rows(world, 50, args.seed, args.max_seed)
    for c in world:
        seeds = [r.evaluation_seed for r in rows if r.class_index == c.index]
        assert len(seeds) == len(set(seeds)) == 100
        assert seeds[:50] == [r["evaluation_seed"] for r in v1 if r["class"] == c.index]


def test_make_evaluate_csv_cli_is_deterministic_and_safe(tmp_path):
    out = tmp_path / "evaluate.csv"
    script = str(ROOT / "data" / "make_evaluate_csv.py")
    first = subprocess.run(
        [sys.executable, script, "--output", str(out), "--seeds_per_class", "3"],
        check=True,
        capture_output=True,
        text=True,
    )
    assert "wrote" in first.stdout
    text = out.read_text()
    again = subprocess.run(
        [sys.executable, script, "--output", str(out), "--seeds_per_class", "3"],
        check=True,
        capture_output=True,
        text=True,
    )
    assert "up to date" in again.stdout and out.read_text() == text
    assert len(text.strip().splitlines()) == 1 + 3 * len(CLASSES)
    other = subprocess.run(
        [sys.executable, script, "--output", str(out), "--seed", "7"], capture_output=True, text=True
    )
    assert out.read_text() == text
    assert_one_line_error(
        other, f"make_evaluate_csv.py: error: {out} exists and differs from what these arguments give; pass --overwrite"
    )
