"""Generate evaluation images for every row of a prompt CSV (seed README "Generating Images").

    python eval-scripts/generate-images.py --model_name='?' --prompts_path './data/evaluate.csv' \\
        --save_path 'evaluation_folder' --num_samples 5

Writes ``<save_path>/<output name>/<case_number>_<k>.png`` for each row (columns ``prompt``,
``evaluation_seed``, ``case_number``; validated before any model loads) and ``k`` in ``0..num_samples-1``.
The output name is ``--model_name`` (the file or folder name when it is a path) unless ``--output_name`` is
given. ``--model_name SD-v1-4`` is the original model; any other name is a run folder under ``models/``
(erasure record ``erasure.safetensors`` applied onto ``--ckpt_path``, or one full checkpoint) or a checkpoint
path; SepCE records take ``--erase c1 c2`` to erase only those concepts (the others stay restored).

A CSV with an ``evaluation_guidance`` column (the I2P prompts that nudity erasure is measured on, as ESD and SPM
publish them: ``prompt, categories, …, evaluation_seed, evaluation_guidance, sd_image_width, sd_image_height,
sd_model, case_number``) draws each row with its own seed and guidance scale (--guidance_scale is then unused;
images stay --image_size square, as in ESD's script):

    python eval-scripts/generate-images.py --model_name SD-v1-4 --prompts_path data/unsafe-prompts4703.csv \
        --save_path evaluation_folder --output_name i2p-SD-v1-4 --num_samples 1

Defaults follow the paper: K-LMS, 100 steps, guidance 7.5, 512 px. Image k of a case starts from row k of
``torch.randn((num_samples, 4, H/8, W/8), generator=manual_seed(evaluation_seed))`` (as ESD's script), so the
same seed gives the same image whatever the batch size. Existing images are skipped (resumable). Several GPUs:
``torchrun --nproc_per_node N eval-scripts/generate-images.py ...`` shards the rows by rank (on CPU the same
works with several processes). See sepce/generation.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import List, Optional, Sequence

from sepce.classes import load_class_map
from sepce.cli import EXIT_HELP, add_classes, add_prompts_path, non_negative_int, parser, run
from sepce.generation import (
    GenerationReport,
    add_model_arguments,
    add_output_arguments,
    add_sampling_arguments,
    generate_rows,
    generation_setup,
    model_from_args,
)
from sepce.prompt_csv import read_prompt_csv


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = parser(__doc__, EXIT_HELP)
    add_model_arguments(p)
    add_prompts_path(p, required=True)
    add_output_arguments(p, save_help="images go to <save_path>/<output name>/")
    p.add_argument("--from_case", type=non_negative_int, default=0, help="skip rows whose case_number is below this")
    add_classes(p)
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="regenerate existing images (also when the folder was made with other settings)",
    )
    add_sampling_arguments(p)
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> List[GenerationReport]:
    # every check happens here, before any model loads; the library trusts what it is handed
    setup = generation_setup(args, sharded=True)
    rows = read_prompt_csv(args.prompts_path, classes=load_class_map(args.classes))
    resolved = model_from_args(args)
    folder = Path(args.save_path) / (args.output_name or resolved.folder_name)
    extra = {"prompts_path": str(args.prompts_path)}
    if any(row.guidance is not None for row in rows):
        extra["row_guidance"] = "each row's evaluation_guidance"
    setup.check_folder(folder, resolved, args.overwrite, extra)
    report = generate_rows(
        rows, resolved, folder, setup, num_samples=args.num_samples, from_case=args.from_case, overwrite=args.overwrite
    )
    print(report.summary())
    return [report]


if __name__ == "__main__":
    run(parse_args, main)
