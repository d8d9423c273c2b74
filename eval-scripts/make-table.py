"""Assemble the paper's table: FID / ACC / LPIPS per concept for the original (ORI) and erased models.

    python eval-scripts/make-table.py --original ./evaluation_folder/default \\
        --model CiE=./evaluation_folder/cie --erased 'CiE=Van Gogh' \\
        --model SepCE=./evaluation_folder/sepce --erased 'SepCE=Van Gogh,Picasso' --restored 'SepCE=Picasso'

or ``--spec table.json`` (format in sepce/evaluation/table.py). Reads each model folder's ``results/``
(``accuracy.csv`` from artist-cls-test.py, ``lpips.csv`` / ``fid.csv`` from lpips_eval.py) and writes
``table.md``, ``table.csv`` and ``table.png`` (bar chart) to ``--output_dir``; also prints the Markdown.
Concepts are class-map names (case and spaces ignored); averages over erased / restored / regular concepts per
model.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from sepce.classes import load_class_map
from sepce.cli import EXIT_HELP, add_classes, parser, run
from sepce.evaluation.table import ModelSpec, collect, load_spec, plot_table, to_csv, to_markdown
from sepce.io import write_text
from sepce.paths import EVALUATION_DIR


def _named(value: str) -> tuple:
    name, sep, rest = value.partition("=")
    if not sep or not name.strip() or not rest.strip():
        raise argparse.ArgumentTypeError(f"{value!r} is not of the form NAME=VALUE")
    return name.strip(), rest.strip()


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = parser(__doc__, EXIT_HELP)
    p.add_argument("--spec", type=Path, default=None, help="JSON spec of the models (instead of the flags below)")
    p.add_argument("--original", type=Path, default=None, help="model folder of the original model")
    p.add_argument("--original_name", default="ORI", help="row name of the original model")
    p.add_argument(
        "--model",
        type=_named,
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="an erased model's row name and folder (repeat for several)",
    )
    p.add_argument(
        "--erased",
        type=_named,
        action="append",
        default=[],
        metavar="NAME=CONCEPTS",
        help="comma-separated concepts the model NAME erased (repeatable)",
    )
    p.add_argument(
        "--restored",
        type=_named,
        action="append",
        default=[],
        metavar="NAME=CONCEPTS",
        help="comma-separated concepts the model NAME erased and then restored (repeatable)",
    )
    p.add_argument(
        "--concepts",
        nargs="+",
        default=None,
        help="concept columns to show, in order; None: every class of the class map",
    )
    add_classes(p)
    p.add_argument(
        "--output_dir",
        type=Path,
        default=EVALUATION_DIR / "table",
        help="folder for table.md, table.csv and table.png",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing table that differs")
    args = p.parse_args(argv)
    if args.spec is not None and (args.original or args.model or args.erased or args.restored):
        p.error("give either --spec or --original/--model/--erased/--restored, not both")
    if args.spec is None and args.original is None and not args.model:
        p.error("nothing to tabulate: give --spec, or --original and/or --model NAME=PATH")
    return args


def model_specs(args: argparse.Namespace) -> tuple:
    """``(models, concepts)`` from ``--spec`` or from the flags."""
    if args.spec is not None:
        models, concepts = load_spec(args.spec)
        return models, args.concepts or concepts
    models: List[ModelSpec] = []
    if args.original is not None:
        models.append(ModelSpec(args.original_name, args.original, original=True))
    models += [ModelSpec(name, Path(path)) for name, path in args.model]
    by_name: Dict[str, ModelSpec] = {m.name: m for m in models}
    for flag, pairs in (("--erased", args.erased), ("--restored", args.restored)):
        for name, concepts in pairs:
            if name not in by_name or by_name[name].original:
                raise ValueError(f"{flag} {name}=...: no erased model named {name!r} (models: {list(by_name)})")
            target = by_name[name].erased if flag == "--erased" else by_name[name].restored
            target += [c.strip() for c in concepts.split(",") if c.strip()]
    return models, args.concepts


def main(args: argparse.Namespace) -> Path:
    classes = load_class_map(args.classes)
    models, concepts = model_specs(args)
    table = collect(models, classes, concepts)
    markdown, csv_text = to_markdown(table), to_csv(table)
    out = Path(args.output_dir)
    paths = {"md": out / "table.md", "csv": out / "table.csv", "png": out / "table.png"}
    unchanged = all(p.is_file() for p in paths.values()) and (
        paths["md"].read_text() == markdown and paths["csv"].read_text() == csv_text
    )
    if not unchanged:
        existing = [str(p) for p in paths.values() if p.exists()]
        if existing and not args.overwrite:
            raise FileExistsError(f"{existing} exist and differ from the new table; pass --overwrite to replace them")
        write_text(paths["md"], markdown)
        write_text(paths["csv"], csv_text)
        plot_table(table, paths["png"])
    print(markdown)
    print(f"{'unchanged' if unchanged else 'wrote'}: {paths['md']}, {paths['csv']}, {paths['png']}")
    return out


if __name__ == "__main__":
    run(parse_args, main)
