"""Reproduce the paper's main table: data → classifier → erasures → evaluation images → metrics → table.

    python eval-scripts/reproduce.py --tiny              # the whole pipeline on the tiny model (CPU, minutes)
    python eval-scripts/reproduce.py --dry_run           # print the full-size experiment as a shell script
    python eval-scripts/reproduce.py --device cuda --devices 0,1 --nproc_per_node 8 --precision fp16

Runs, in order, the repository scripts (see sepce/reproduce.py): ``generate-data.py`` for every class,
``artist-cls-train.py``, the erasures (CiE, SepCE on ``--sepce_concepts``, ESD, FMN, Ablating Concepts) with
the seed README's hyperparameters, ``generate-images.py`` on ``data/evaluate.csv`` for the original
(``evaluation_folder/default``), every erased model and the SepCE subsets (erase the first i concepts, the
others restored), ``move_image.py``, ``artist-cls-test.py``, ``lpips_eval.py`` (LPIPS + FID) and
``make-table.py`` (Markdown, CSV and bar chart in ``outputs/table``). Re-running resumes: finished runs and
images are skipped. ``--tiny`` does the same on the tiny random model (``python -m sepce.tiny``) under
``outputs/reproduce-tiny/`` with few images, steps and iterations and random metric backbones — it shows the
plumbing, not the paper's numbers.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import List, Optional, Sequence

from sepce.classes import load_class_map
from sepce.evaluation.common import default_device, run_script
from sepce.paths import DEFAULT_CKPT, DEFAULT_CONFIG, REPO_ROOT
from sepce.prompts import read_prompt_csv
from sepce.reproduce import METHODS, STAGES, Step, StepFailed, plan, run_step

TINY = {"num_cases": 4, "num_samples": 2, "cases_per_class": 2, "ddim_steps": 10, "image_size": 64, "iterations": 4}
FULL = {
    "num_cases": 1000,
    "num_samples": 5,
    "cases_per_class": None,
    "ddim_steps": 100,
    "image_size": 512,
    "iterations": None,
}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="run on the tiny random model with small settings")
    parser.add_argument("--dry_run", action="store_true", help="print the steps as a shell script; run nothing")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES), help="stages to run")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS), help="erasure methods")
    parser.add_argument("--concept", default="Van Gogh", help="concept erased by the single-concept methods")
    parser.add_argument(
        "--sepce_concepts",
        nargs="+",
        default=["Van Gogh", "Picasso", "Cezanne"],
        help="concepts SepCE erases together (subsets restore the later ones)",
    )
    parser.add_argument(
        "--work_dir",
        type=Path,
        default=None,
        help="root of data/, models/, evaluation_folder/, outputs/table/ (None: the current "
        "folder; --tiny: outputs/reproduce-tiny)",
    )
    parser.add_argument("--data_dir", type=Path, default=None, help="training images (None: <work_dir>/data)")
    parser.add_argument("--models_dir", type=Path, default=None, help="training runs (None: <work_dir>/models)")
    parser.add_argument(
        "--classifier",
        type=Path,
        default=None,
        help="classifier checkpoint (None: <work_dir>/models/artist-classifier/resnet18.pt)",
    )
    parser.add_argument("--classes", type=Path, default=REPO_ROOT / "data" / "classes.csv", help="class map CSV")
    parser.add_argument(
        "--prompts_path",
        type=Path,
        default=REPO_ROOT / "data" / "evaluate.csv",
        help="evaluation prompt CSV (case_number, prompt, evaluation_seed, class)",
    )
    parser.add_argument("--ckpt_path", type=Path, default=DEFAULT_CKPT, help="original SD v1.4 checkpoint")
    parser.add_argument("--config_path", type=Path, default=DEFAULT_CONFIG, help="its CompVis config")
    parser.add_argument("--num_cases", type=int, default=None, help="training images per class (1000; tiny 4)")
    parser.add_argument("--num_samples", type=int, default=None, help="evaluation images per seed (5; tiny 2)")
    parser.add_argument(
        "--cases_per_class",
        type=int,
        default=None,
        help="--tiny: evaluation seeds per class taken from the CSV (tiny 2)",
    )
    parser.add_argument("--ddim_steps", type=int, default=None, help="K-LMS steps (100; tiny 10)")
    parser.add_argument("--image_size", type=int, default=None, help="image size (512; tiny 64)")
    parser.add_argument(
        "--iterations",
        type=int,
        default=None,
        help="training iterations of every method (None: the seed commands'; tiny 4)",
    )
    parser.add_argument("--batch_size", type=int, default=8, help="images per sampler batch")
    parser.add_argument(
        "--precision",
        choices=("fp32", "fp16", "bf16"),
        default="fp32",
        help="generation precision (16-bit on GPU only)",
    )
    parser.add_argument("--device", default=default_device(), help="device of generation and metrics")
    parser.add_argument(
        "--devices", default=None, help="--devices of the training scripts (None: 0 with a GPU, else cpu)"
    )
    parser.add_argument(
        "--nproc_per_node", type=int, default=1, help="GPUs for image generation (torchrun, one process per GPU)"
    )
    parser.add_argument(
        "--runner",
        choices=("auto", "subprocess", "inprocess"),
        default="auto",
        help="run each step in a new Python process, or in this one (faster start-up); auto: in-process for --tiny",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars in the generation steps")
    args = parser.parse_args(argv)
    for key, value in (TINY if args.tiny else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.devices is None:
        args.devices = "cpu" if args.device == "cpu" else "0"
    for name in ("num_cases", "num_samples", "ddim_steps", "image_size", "batch_size", "nproc_per_node"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} {getattr(args, name)} must be >= 1")
    if args.runner == "auto":
        args.runner = "inprocess" if args.tiny else "subprocess"
    if args.nproc_per_node > 1 and args.runner == "inprocess":
        parser.error("--nproc_per_node > 1 launches torchrun; use --runner subprocess")
    if args.cases_per_class is not None and not args.tiny:
        parser.error("--cases_per_class subsets the CSV for --tiny runs; give a smaller --prompts_path instead")
    return args


def check_inputs(args: argparse.Namespace, steps: List[Step]) -> None:
    """Fail before running anything when a script, the class map, the CSV or the base checkpoint is missing."""
    missing = sorted(
        {s.argv[0] for s in steps if s.argv and s.argv[0] != "-m" and not (REPO_ROOT / s.argv[0]).is_file()}
    )
    if missing:
        raise FileNotFoundError(f"script(s) {missing} do not exist; choose --methods among the available ones")
    read_prompt_csv(args.prompts_path, load_class_map(args.classes), require_class=True)
    if not args.tiny and not args.dry_run and not Path(args.ckpt_path).is_file():
        raise FileNotFoundError(
            f"checkpoint {args.ckpt_path} does not exist (--ckpt_path); download "
            "sd-v1-4-full-ema.ckpt into models/ldm/, or try --tiny"
        )


def main(args: argparse.Namespace) -> List[Step]:
    steps = plan(args)
    check_inputs(args, steps)
    if args.dry_run:
        print("#!/usr/bin/env bash\nset -euo pipefail")
        for step in steps:
            print(
                f"\n# [{step.stage}] {step.name}" + (f" (skipped when {step.skip_if} exists)" if step.skip_if else "")
            )
            print(step.shell())
        return steps
    start = time.time()
    for n, step in enumerate(steps, 1):
        print(f"\n=== [{n}/{len(steps)}] {step.stage}: {step.name}", flush=True)
        try:
            status = run_step(step, args.runner)
        except StepFailed as error:
            raise ValueError(f"{error}; fix it and re-run (finished steps are skipped)") from None
        if status == "skipped":
            print(f"skipped: {step.skip_if or step.write} exists" + (" (same content)" if step.write else ""))
    print(f"\nreproduction finished in {time.time() - start:.0f} s")
    return steps


if __name__ == "__main__":
    run_script(parse_args, main)
