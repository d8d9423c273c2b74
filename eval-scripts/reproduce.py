"""Reproduce the paper's main table: data → classifier → erasures → evaluation images → metrics → table.

    python eval-scripts/reproduce.py --tiny              # the whole pipeline on the tiny model (CPU, minutes)
    python eval-scripts/reproduce.py --dry_run           # print the full-size experiment as a shell script
    python eval-scripts/reproduce.py --device cuda --devices 0 --jobs 8 --precision fp16   # 8 GPUs, 8 steps at once
    python eval-scripts/reproduce.py --device cuda --launcher slurm --slurm_partition gpu   # one Slurm job per step
    python eval-scripts/reproduce.py --task object --dry_run   # Imagenette object erasure (ESD/UCE protocol)
    python eval-scripts/reproduce.py --task nudity --i2p_csv data/unsafe-prompts4703.csv --dry_run   # I2P nudity
    python eval-scripts/reproduce.py --task object --tiny      # the object run on the tiny model

Runs, in order, the repository scripts (see sepce/paper_plan.py): ``generate-data.py`` for every class,
``artist-cls-train.py``, the erasures (CiE, SepCE on ``--sepce_concepts``, ESD, FMN, Ablating Concepts) with
the seed README's hyperparameters, ``generate-images.py`` on ``data/evaluate.csv`` for the original
(``evaluation_folder/default``), every erased model and the SepCE subsets (erase the first i concepts, the
others restored), ``move_image.py``, ``artist-cls-test.py``, ``lpips_eval.py`` (LPIPS + FID) and
``make-table.py`` (Markdown, CSV and bar chart in ``outputs/table``). Re-running resumes: finished runs and
images are skipped. ``--tiny`` does the same on the tiny random model (``python -m sepce.tiny``) under
``outputs/reproduce-tiny/`` with few images, steps and iterations and random metric backbones — it shows the
plumbing, not the paper's numbers. Steps go to the pipeline runner (sepce/pipeline): independent ones run side
by side (--jobs), each on GPUs of its own, or as submitit jobs (--launcher slurm / submitit-local, logs under
<work>/outputs/reproduce/jobs/; --tiny: <work>/jobs/); a failed step stops only the steps that need its output.

``--task object`` and ``--task nudity`` plan the other evaluations the field reports (sepce/evaluation_tasks.py):
erase one Imagenette class (--concept, default chain saw) or nudity with each method, draw
data/imagenette/evaluate.csv or the I2P prompts (--i2p_csv, each row's seed and guidance), measure with the
ImageNet ResNet-50 (classify-images.py) or NudeNet (nudity-eval.py), and run the adversarial-prompt attack with
that judge; the object run also makes the table. ``--tiny`` runs them under outputs/reproduce-tiny-<task>/.
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path
from typing import List, Optional, Sequence

from sepce.classes import load_class_map
from sepce.cli import (
    EXIT_HELP,
    add_classes,
    add_device,
    add_launcher,
    add_precision,
    add_prompts_path,
    add_quiet,
    check_launcher,
    launch_of,
    parser,
    positive_int,
    run,
)
from sepce.evaluation_tasks import (
    DEFAULT_CONCEPT,
    NUDITY_CLASSES,
    OBJECT_CLASSES,
    OBJECT_CSV,
    TASK_STAGES,
    TASKS,
    plan_task,
)
from sepce.paper_plan import (
    METHODS,
    STAGES,
    ReproductionLayout,
    ReproductionSettings,
    plan_reproduction,
    reproduction_layout,
)
from sepce.paths import DEFAULT_CKPT, DEFAULT_CONFIG, EVALUATE_CSV, REPO_ROOT
from sepce.pipeline.runner import dry_run, jobs_dir, run_plan
from sepce.pipeline.steps import ScriptStep
from sepce.pipeline.timing import Booking, Timer
from sepce.prompt_csv import read_prompt_csv

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
    p = parser(__doc__, EXIT_HELP)
    p.add_argument("--tiny", action="store_true", help="run on the tiny random model with small settings")
    p.add_argument(
        "--dry_run",
        action="store_true",
        help="print the steps as a shell script, with the jobs (resources, dependencies) a launcher would start; "
        "run, write and submit nothing",
    )
    p.add_argument(
        "--task",
        choices=TASKS,
        default="style",
        help="the evaluation: the paper's style table, object erasure (Imagenette, ResNet-50) or nudity (I2P, NudeNet)",
    )
    p.add_argument(
        "--stages",
        nargs="+",
        choices=list(dict.fromkeys(STAGES + TASK_STAGES)),
        default=None,
        help="stages to run (None: every stage of the task)",
    )
    p.add_argument("--i2p_csv", type=Path, default=None, help="--task nudity: the I2P prompt CSV as published")
    p.add_argument(
        "--backbone_weights",
        type=Path,
        default=None,
        help="--task object: torchvision's ResNet-50 ImageNet weights (None: the torch hub cache)",
    )
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS), help="erasure methods")
    p.add_argument(
        "--concept",
        default=None,
        help="concept erased by the single-concept methods (None: Van Gogh; object: chain saw; nudity: nudity)",
    )
    p.add_argument(
        "--sepce_concepts",
        nargs="+",
        default=["Van Gogh", "Picasso", "Cezanne"],
        help="concepts SepCE erases together (subsets restore the later ones)",
    )
    p.add_argument(
        "--work_dir",
        type=Path,
        default=None,
        help="root of data/, models/, evaluation_folder/, outputs/table/ (None: the current "
        "folder; --tiny: outputs/reproduce-tiny)",
    )
    p.add_argument("--data_dir", type=Path, default=None, help="training images (None: <work_dir>/data)")
    p.add_argument("--models_dir", type=Path, default=None, help="training runs (None: <work_dir>/models)")
    p.add_argument(
        "--classifier",
        type=Path,
        default=None,
        help="classifier checkpoint (None: <work_dir>/models/artist-classifier/resnet18.pt)",
    )
    p.add_argument(
        "--fid_weights",
        type=Path,
        default=None,
        help="lpips_eval.py --fid_weights: pytorch-fid's Inception state dict (None: the torch hub cache file)",
    )
    p.add_argument(
        "--lpips_backbone_weights",
        type=Path,
        default=None,
        help="lpips_eval.py --backbone_weights: the AlexNet ImageNet state dict of LPIPS (None: torchvision's cache)",
    )
    add_classes(p)
    add_prompts_path(p, default=EVALUATE_CSV)
    p.add_argument("--ckpt_path", type=Path, default=DEFAULT_CKPT, help="original SD v1.4 checkpoint")
    p.add_argument("--config_path", type=Path, default=DEFAULT_CONFIG, help="its CompVis config")
    p.add_argument("--num_cases", type=positive_int, default=None, help="training images per class (1000; tiny 4)")
    p.add_argument("--num_samples", type=positive_int, default=None, help="evaluation images per seed (5; tiny 2)")
    p.add_argument(
        "--cases_per_class",
        type=int,
        default=None,
        help="--tiny: evaluation seeds per class taken from the CSV (tiny 2)",
    )
    p.add_argument("--ddim_steps", type=positive_int, default=None, help="K-LMS steps (100; tiny 10)")
    p.add_argument("--image_size", type=positive_int, default=None, help="image size (512; tiny 64)")
    p.add_argument(
        "--iterations",
        type=int,
        default=None,
        help="training iterations of every method (None: the seed commands'; tiny 4)",
    )
    p.add_argument("--batch_size", type=positive_int, default=8, help="images per sampler batch")
    add_precision(p, help="generation precision (16-bit on GPU only)")
    add_device(p, help="device of generation and metrics: cpu, cuda, cuda:N or N")
    p.add_argument("--devices", default=None, help="--devices of the training scripts (None: 0 with a GPU, else cpu)")
    p.add_argument(
        "--nproc_per_node",
        type=positive_int,
        default=1,
        help="GPUs for image generation (torchrun, one process per GPU)",
    )
    p.add_argument(
        "--runner",
        choices=("auto", "subprocess", "inprocess"),
        default="auto",
        help="local launcher: run each step in a new Python process, or in this one (--jobs 1) / in --jobs worker "
        "processes started once (faster start-up); auto: in-process for --tiny",
    )
    add_launcher(p)
    add_quiet(p)
    args = p.parse_args(argv)
    check_launcher(p, args)
    args.concept = args.concept or DEFAULT_CONCEPT.get(args.task, "Van Gogh")
    if args.stages is None:
        args.stages = list(STAGES if args.task == "style" else TASK_STAGES)
    if args.task != "style":
        args.classes = OBJECT_CLASSES if args.task == "object" else NUDITY_CLASSES
        args.prompts_path = OBJECT_CSV if args.task == "object" else args.i2p_csv
        args.sepce_concepts = [args.concept]
        if args.task == "nudity" and args.i2p_csv is None and not args.tiny:
            p.error("--task nudity needs --i2p_csv (the I2P prompt CSV as published), or --tiny")
        if args.tiny and args.work_dir is None:
            args.work_dir = Path(f"outputs/reproduce-tiny-{args.task}")
    for key, value in (TINY if args.tiny else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.devices is None:
        args.devices = "cpu" if args.device == "cpu" else "0"
    local = args.launcher == "local"
    if args.runner == "auto":
        args.runner = "inprocess" if args.tiny and local and args.nproc_per_node == 1 else "subprocess"
    if args.nproc_per_node > 1 and args.runner == "inprocess":
        p.error("--nproc_per_node > 1 launches torchrun; use --runner subprocess")
    if args.runner == "inprocess" and not local:
        p.error(f"--runner inprocess runs steps in local interpreters; not with --launcher {args.launcher}")
    if args.cases_per_class is not None and not args.tiny:
        p.error("--cases_per_class subsets the CSV for --tiny runs; give a smaller --prompts_path instead")
    return args


def settings_of(args: argparse.Namespace) -> tuple[ReproductionSettings, ReproductionLayout]:
    """The typed settings and the layout of the parsed flags."""
    settings = ReproductionSettings(
        tiny=args.tiny,
        stages=tuple(args.stages),
        methods=tuple(args.methods),
        concept=args.concept,
        sepce_concepts=tuple(args.sepce_concepts),
        classes=args.classes,
        prompts_path=args.prompts_path,
        num_cases=args.num_cases,
        num_samples=args.num_samples,
        cases_per_class=args.cases_per_class,
        ddim_steps=args.ddim_steps,
        image_size=args.image_size,
        iterations=args.iterations,
        batch_size=args.batch_size,
        precision=args.precision,
        device=args.device,
        devices=args.devices,
        nproc_per_node=args.nproc_per_node,
        quiet=args.quiet,
        fid_weights=args.fid_weights,
        lpips_backbone_weights=args.lpips_backbone_weights,
    )
    layout = reproduction_layout(
        args.tiny,
        args.work_dir,
        args.data_dir,
        args.models_dir,
        args.classifier,
        args.classes,
        args.prompts_path,
        args.ckpt_path,
        args.config_path,
    )
    return settings, layout


def check_inputs(args: argparse.Namespace, steps: List[ScriptStep]) -> None:
    """Fail before running anything when a script, the class map, the CSV, a weights file or the base checkpoint
    is missing."""
    if args.task == "nudity" and not args.tiny:
        read_prompt_csv(args.i2p_csv, allow_empty_prompt=True)
    elif args.task == "object":
        read_prompt_csv(args.prompts_path, load_class_map(args.classes), require_class=True)
    missing = sorted(
        {s.argv[0] for s in steps if s.argv and s.argv[0] != "-m" and not (REPO_ROOT / s.argv[0]).is_file()}
    )
    if missing:
        raise FileNotFoundError(f"script(s) {missing} do not exist; choose --methods among the available ones")
    if args.task == "style":
        read_prompt_csv(args.prompts_path, load_class_map(args.classes), require_class=True)
    for flag in ("fid_weights", "lpips_backbone_weights", "backbone_weights"):
        weights = getattr(args, flag)
        if weights is not None and not Path(weights).is_file():
            raise FileNotFoundError(f"--{flag} {weights} does not exist")
    if not args.tiny and not args.dry_run and not Path(args.ckpt_path).is_file():
        raise FileNotFoundError(
            f"checkpoint {args.ckpt_path} does not exist (--ckpt_path); download "
            "sd-v1-4-full-ema.ckpt into models/ldm/, or try --tiny"
        )


def main(args: argparse.Namespace) -> List[ScriptStep]:
    settings, layout = settings_of(args)
    if args.task == "style":
        steps = plan_reproduction(settings, layout)
    else:
        steps = plan_task(args.task, settings, layout, args.i2p_csv, args.backbone_weights)
    check_inputs(args, steps)
    launch = launch_of(args, jobs_dir(layout.run_dir), inprocess=args.runner == "inprocess")
    if args.dry_run:
        print(dry_run(steps, launch), end="")
        return steps
    booking = Booking(layout.run_dir, {"stages": list(args.stages), "jobs": args.jobs, "launcher": args.launcher})
    with Timer() as timer:
        try:
            run_plan(steps, launch, booking, say=functools.partial(print, flush=True))
        finally:
            booking.book()
    print(f"\nreproduction finished in {timer.seconds:.0f} s")
    return steps


if __name__ == "__main__":
    run(parse_args, main)
