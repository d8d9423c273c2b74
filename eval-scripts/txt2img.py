"""Prompt → images with the original or an erased model (quick start).

    python eval-scripts/txt2img.py --prompt 'Van Gogh' --model_name SD-v1-4 --n_samples 2
    python eval-scripts/txt2img.py --prompt 'Van Gogh' --model_name sepce-run --erase 'Van Gogh'

Writes ``<outdir>/<output name>/<prompt-slug>-<seed>_<k>.png`` (output name: the model name, as in
``generate-images.py``) and prints the paths. Same sampler, seeds and model resolution as
``generate-images.py`` (sepce/generation.py): the same ``--seed`` gives the same start noise for every model,
so images of the original and an erased model can be compared side by side. Refuses to replace existing images
unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import List, Optional, Sequence

from sepce.cli import EXIT_HELP, non_negative_int, parser, positive_int, run
from sepce.generation import (
    ImageJob,
    add_model_arguments,
    add_sampling_arguments,
    file_slug,
    generation_setup,
    model_from_args,
    png_text,
    run_jobs,
)
from sepce.modeling import load_resolved


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = parser(__doc__, EXIT_HELP)
    p.add_argument("--prompt", required=True, help="text prompt ('' for the unconditional image)")
    add_model_arguments(p, model_name="SD-v1-4")
    p.add_argument("--n_samples", type=positive_int, default=1, help="number of images")
    p.add_argument("--seed", type=non_negative_int, default=42, help="seed of the start noise")
    p.add_argument("--outdir", type=Path, default=Path("outputs/txt2img"), help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace existing images")
    add_sampling_arguments(p)
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> List[Path]:
    setup = generation_setup(args)
    resolved = model_from_args(args)
    folder = Path(args.outdir) / resolved.folder_name
    prompt = args.prompt.strip()
    jobs = [
        ImageJob(0, k, prompt, args.seed, folder / f"{file_slug(prompt)}-{args.seed}_{k}.png")
        for k in range(args.n_samples)
    ]
    existing = [str(job.path) for job in jobs if job.path.exists()]
    if existing and not args.overwrite:
        raise FileExistsError(f"{existing[0]} already exists; pass --overwrite or choose another --outdir/--seed")
    sampler = setup.sampler(load_resolved(resolved, setup.runtime.device))
    text = png_text(resolved, setup.sampling)
    run_jobs(sampler, jobs, setup.batch_size, args.n_samples, text, desc="txt2img", progress=setup.progress)
    for job in jobs:
        print(job.path)
    return [job.path for job in jobs]


if __name__ == "__main__":
    run(parse_args, main)
