"""Generate training images of one concept with the ORIGINAL model (seed README "Training Guide", step 1).

    python eval-scripts/generate-data.py --prompt 'Van Gogh' --model_name '0' --save_path './data/' \\
        --num_samples 1 --device 'cuda:0'

Writes ``--num_cases`` cases × ``--num_samples`` images of ``--prompt`` to ``<save_path>/<prompt>/`` as
``<case>_<k>.png`` — the folder the erasure scripts read (``./data/Van Gogh/``; the empty prompt goes to
``<save_path>/blank/``) — with ``manifest.csv`` beside them (``case_number, prompt, evaluation_seed, class``:
a prompt CSV, so ``generate-images.py --prompts_path`` can redo any image) and ``generation.json`` (settings).
Case i's seed is derived from ``--seed`` (first 4 bytes of SHA-256("<seed>:<i>") mod 2^31), image k of a case
starts from row k of ``torch.randn((num_samples, 4, H/8, W/8), generator=manual_seed(case seed))``.
Defaults follow the paper: K-LMS, 100 steps, guidance 7.5, 512 px, 1000 cases. Existing images are skipped.

``--model_name`` is the class index of the prompt in ``data/classes.csv`` (the seed README's '0' = Van Gogh;
default: looked up from the prompt; ``none``: no class folder). Every image is also placed in the
classifier's class folder ``<class_dir>/<index>/`` (default ``<save_path>/train/<index>/``, the folders
``artist-cls-train.py`` reads) as ``<prompt-slug>_<case>_<k>.png`` — a hard link by default (``--link``).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Optional, Sequence

from sepce.classes import load_class_map
from sepce.cli import EXIT_HELP, add_classes, non_negative_int, parser, positive_int, run
from sepce.data_generation import (
    LINK_MODES,
    concept_class,
    data_folder_name,
    data_rows,
    fill_class_folder,
    write_manifest,
)
from sepce.generation import (
    GenerationReport,
    add_model_arguments,
    add_sampling_arguments,
    generate_rows,
    generation_setup,
    model_from_args,
)

log = logging.getLogger("generate-data")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = parser(__doc__, EXIT_HELP)
    p.add_argument("--prompt", required=True, help="concept prompt, e.g. 'Van Gogh' ('' for the blank class)")
    p.add_argument(
        "--model_name",
        default=None,
        help="class index (or class name) of the prompt in --classes; 'none' for no class folder "
        "(None: the class whose prompt is --prompt, if any)",
    )
    p.add_argument("--save_path", type=Path, default=Path("data"), help="images go to <save_path>/<prompt>/")
    p.add_argument("--num_cases", type=positive_int, default=1000, help="number of cases (seeds)")
    p.add_argument("--num_samples", type=positive_int, default=1, help="images per case")
    p.add_argument(
        "--seed", type=non_negative_int, default=0, help="run seed from which the per-case seeds are derived"
    )
    p.add_argument(
        "--class_dir",
        type=Path,
        default=None,
        help="classifier class folders <class_dir>/<index>/ (None: <save_path>/train)",
    )
    p.add_argument("--link", choices=LINK_MODES, default="hardlink", help="how images are placed in the class folder")
    add_classes(p)
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="regenerate existing images and replace a manifest made with another --seed/--prompt",
    )
    add_sampling_arguments(p)
    add_model_arguments(p, erase=False, model_name=False)  # --model_name is the class here
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> GenerationReport:
    # every check happens here, before any model loads; the library trusts what it is handed
    setup = generation_setup(args, sharded=True)
    prompt = args.prompt.strip()
    chosen = concept_class(prompt, args.model_name, load_class_map(args.classes))
    folder = Path(args.save_path) / data_folder_name(prompt, chosen.name if chosen else None)
    resolved = model_from_args(args, "SD-v1-4")
    rows = data_rows(prompt, args.num_cases, args.seed, chosen.index if chosen else None)
    extra = {"prompt": prompt, "seed": args.seed}
    setup.check_folder(folder, resolved, args.overwrite, extra)
    write_manifest(folder, rows, args.overwrite)
    report = generate_rows(rows, resolved, folder, setup, num_samples=args.num_samples, overwrite=args.overwrite)
    print(report.summary())
    if chosen is not None and args.link != "none":
        class_folder = Path(args.class_dir or Path(args.save_path) / "train") / str(chosen.index)
        placed, conflicts = fill_class_folder(
            folder, report.rows, args.num_samples, class_folder, prompt, args.link, args.overwrite
        )
        if conflicts:
            log.warning(
                "%d image(s) in %s differ from the new ones and were left in place (e.g. %s)",
                len(conflicts),
                class_folder,
                conflicts[:3],
            )
        print(f"{class_folder}: {placed} image(s) of class {chosen.index} ({chosen.name}) in place")
    return report


if __name__ == "__main__":
    run(parse_args, main)
