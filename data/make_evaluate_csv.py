"""Write ``data/evaluate.csv``, the evaluation prompts of the paper's protocol (docs/method.md, "Evaluation").

One row per (class, seed): every class of the class map (9 artists + the blank prompt) gets
``--seeds_per_class`` seeds (50), the prompt is the bare concept prompt from the class map (empty for the
blank class), or ``--template`` around it (the object evaluation: ``'Image of {prompt}'``, as ESD's Imagenette
prompts). Columns: ``case_number, prompt, evaluation_seed, class``. Case numbers run 0..N-1, class by
class.

Seeds are derived from ``--seed`` with SHA-256 (not Python's or NumPy's generators, whose streams may change
between versions), so the same arguments give the same file on every machine. Re-running with the same
arguments leaves an identical existing file in place; a different result needs ``--overwrite``.

    python data/make_evaluate_csv.py            # rewrites nothing if data/evaluate.csv is up to date
    python data/make_evaluate_csv.py --classes data/imagenette/classes.csv --template 'Image of {prompt}' \
        --output data/imagenette/evaluate.csv    # the 10 Imagenette classes, 50 seeds each (master seed 2024)
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
from pathlib import Path
from typing import List, Optional, Sequence

from sepce.classes import DEFAULT_CLASS_MAP, ConceptClass, load_class_map
from sepce.cli import run
from sepce.io import write_text

DATA_DIR = Path(__file__).resolve().parent
COLUMNS = ("case_number", "prompt", "evaluation_seed", "class")


def derive_seeds(master_seed: int, class_index: int, count: int, max_seed: int) -> List[int]:
    """``count`` distinct seeds in ``[0, max_seed)`` for one class, a pure function of its arguments."""
    if count > max_seed:
        raise ValueError(f"cannot draw {count} distinct seeds below --max_seed {max_seed}")
    seeds: List[int] = []
    draw = 0
    while len(seeds) < count:
        digest = hashlib.sha256(f"sepce-evaluate|{master_seed}|{class_index}|{draw}".encode()).digest()
        value = int.from_bytes(digest[:8], "big") % max_seed
        if value not in seeds:
            seeds.append(value)
        draw += 1
    return seeds


def build_rows(
    classes: Sequence[ConceptClass], seeds_per_class: int, master_seed: int, max_seed: int, template: str = "{prompt}"
) -> List[dict]:
    """The CSV rows, class by class, with consecutive case numbers; ``template`` wraps non-empty prompts."""
    rows = []
    for c in classes:
        prompt = template.format(prompt=c.prompt) if c.prompt else ""
        for seed in derive_seeds(master_seed, c.index, seeds_per_class, max_seed):
            rows.append({"case_number": len(rows), "prompt": prompt, "evaluation_seed": seed, "class": c.index})
    return rows


def render_csv(rows: Sequence[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--classes", type=Path, default=DEFAULT_CLASS_MAP, help="class map CSV (index,name,prompt)")
    parser.add_argument("--seeds_per_class", type=int, default=50, help="evaluation seeds drawn per class")
    parser.add_argument("--seed", type=int, default=2024, help="master seed the evaluation seeds derive from")
    parser.add_argument("--max_seed", type=int, default=100000, help="evaluation seeds lie in [0, max_seed)")
    parser.add_argument("--output", type=Path, default=DATA_DIR / "evaluate.csv", help="CSV file to write")
    parser.add_argument(
        "--template", default="{prompt}", help="each row's prompt, {prompt} standing for the class-map prompt"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output that differs")
    args = parser.parse_args(argv)
    if "{prompt}" not in args.template:
        parser.error(f"--template {args.template!r} must contain {{prompt}}")
    if args.seeds_per_class < 1:
        parser.error(f"--seeds_per_class {args.seeds_per_class} must be >= 1")
    if args.max_seed < 1:
        parser.error(f"--max_seed {args.max_seed} must be >= 1")
    return args


def main(args: argparse.Namespace) -> Path:
    classes = load_class_map(args.classes)
    text = render_csv(build_rows(classes, args.seeds_per_class, args.seed, args.max_seed, args.template))
    output = Path(args.output)
    if output.is_file() and output.read_text() == text:
        print(f"{output} is up to date ({len(classes)} classes x {args.seeds_per_class} seeds)")
        return output
    if output.exists() and not args.overwrite:
        raise FileExistsError(f"{output} exists and differs from what these arguments give; pass --overwrite")
    write_text(output, text)
    print(f"wrote {output}: {len(classes)} classes x {args.seeds_per_class} seeds")
    return output


if __name__ == "__main__":
    run(parse_args, main)
