"""The paper's experiment on the concept-world model: erase styles with every method (CiE, SepCE, ESD, FMN and
Ablating Concepts in the authors' variants, UCE, the original FMN and Ablating Concepts), attack the erasures with
concept inversion, measure accuracy / feature distance / FID with the world classifier, report with intervals.

    python eval-scripts/world-benchmark.py --form short          # a few minutes on 2 CPU cores (README quick start)
    python eval-scripts/world-benchmark.py --form full           # one erasure per method, with the attack
    python eval-scripts/world-benchmark.py --form sweep          # every method x every reported style x 5 seeds
    python eval-scripts/world-benchmark.py --form short --dry_run   # the commands, as a shell script
    python eval-scripts/world-benchmark.py --form sweep --launcher slurm --slurm_partition cpu   # one job per step

Stages: data erase generate attack metrics table (see sepce/world/benchmark.py); everything goes under --work_dir
and re-running resumes. Single-erasure forms: single-concept methods erase --concept, SepCE erases
--sepce_concepts together and the table adds the subsets that restore the later ones; report.md has protocol v2's
table (drops and per-style verdicts on exact-hulled 95 % intervals, UA/IRA/CRA, quality, the attack, paired method
differences), the paper-style table, the restoration check and a contact sheet. The sweep form erases every
reported style (--styles) with every --seeds (training seed i on evaluation-seed block i) and SepCE's disjoint
triples, and writes sweep.md with the same v2 tables pooled over the runs.
Method flags are the world presets unless overridden with --preset 'CiE=--lr 1e-4 --iterations 100' (how the
presets were tuned, on the held-out styles: --form tune --concept grid --sepce_concepts grid stripes).
Steps go to the pipeline runner (sepce/pipeline): --jobs at once (on the CPU one per core by default) in one-thread
worker processes started once (--runner subprocess: a process per step), or as submitit jobs
(--launcher submitit-local / slurm; a folder and log per job under <work_dir>/jobs/).
"""

from __future__ import annotations

import argparse
import functools
import os
import shlex
from pathlib import Path
from typing import Optional, Sequence

from sepce.classes import load_class_map
from sepce.cli import EXIT_HELP, add_launcher, add_quiet, check_launcher, launch_of, parse_device, parser, run
from sepce.pipeline.runner import dry_run, jobs_dir, run_plan
from sepce.pipeline.timing import Booking
from sepce.world.benchmark import (
    ATTACK_SCRIPTS,
    DEFAULT_CONCEPT,
    DEFAULT_METHODS,
    DEFAULT_SEPCE,
    FORMS,
    PRESETS,
    STAGES,
    SWEEP_SEEDS,
    SWEEP_TRIPLES,
    WORLD_METHODS,
    benchmark_layout,
    concept_prompts,
    plan_benchmark,
    reported_styles,
    single_cells,
    sweep_cells,
)
from sepce.world.concept_classifier import SHIPPED_CLASSIFIER
from sepce.world.model import SHIPPED_CKPT, SHIPPED_CONFIG
from sepce.world.report import write_report, write_sweep_report


def _preset(value: str) -> tuple:
    name, sep, flags = value.partition("=")
    if not sep or name.strip() not in WORLD_METHODS:
        raise argparse.ArgumentTypeError(f"{value!r} is not METHOD=FLAGS with METHOD one of {list(WORLD_METHODS)}")
    return name.strip(), tuple(shlex.split(flags))


def _triple(value: str) -> tuple:
    styles = tuple(s.strip() for s in value.split("+") if s.strip())
    if len(styles) < 2:
        raise argparse.ArgumentTypeError(f"{value!r}: expected styles joined by '+', e.g. waves+dots+gradient")
    return styles


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = parser(__doc__, EXIT_HELP)
    p.add_argument("--form", choices=list(FORMS), default="short", help="how much of the protocol to run")
    p.add_argument("--work_dir", type=Path, default=None, help="output root (None: outputs/world-benchmark-<form>)")
    p.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES), help="stages to run")
    p.add_argument(
        "--methods", nargs="+", choices=list(WORLD_METHODS), default=list(DEFAULT_METHODS), help="erasure methods"
    )
    p.add_argument("--concept", default=DEFAULT_CONCEPT, help="style erased by the single-concept methods")
    p.add_argument("--sepce_concepts", nargs="+", default=list(DEFAULT_SEPCE), help="styles SepCE erases together")
    p.add_argument("--styles", nargs="+", default=None, help="sweep: styles erased (None: every non-held-out style)")
    p.add_argument(
        "--triples",
        nargs="+",
        type=_triple,
        default=["+".join(t) for t in SWEEP_TRIPLES],
        help="sweep: style groups SepCE erases together",
    )
    p.add_argument("--seeds", nargs="+", type=int, default=list(SWEEP_SEEDS), help="sweep: training seeds")
    p.add_argument(
        "--preset",
        type=_preset,
        action="append",
        default=[],
        metavar="METHOD=FLAGS",
        help="replace a method's preset; given several times for one method (weakest first), each is a tuning "
        "candidate with its own run, and report.md applies the preset rule (docs/world-benchmark.md)",
    )
    p.add_argument(
        "--attacks",
        nargs="+",
        choices=list(ATTACK_SCRIPTS),
        default=["inversion"],
        help="attacks of the attack stage (forms with the attack): concept inversion and/or the adversarial-prompt "
        "attack (results/adversarial.*: ASR before/after)",
    )
    p.add_argument("--ckpt_path", type=Path, default=SHIPPED_CKPT, help="the world model (original)")
    p.add_argument("--config_path", type=Path, default=SHIPPED_CONFIG, help="its config")
    p.add_argument("--classifier", type=Path, default=SHIPPED_CLASSIFIER, help="the world classifier")
    p.add_argument("--batch_size", type=int, default=32, help="images per sampler batch")
    p.add_argument(
        "--runner",
        choices=("subprocess", "inprocess"),
        default="inprocess",
        help="local launcher: run the scripts in this interpreter (--jobs 1) or in --jobs worker processes started "
        "once (no start-up per step: faster), or each in a new Python process (always with a submitit launcher)",
    )
    p.add_argument(
        "--device",
        default="cpu",
        help="where every script trains and samples (cpu, cuda, cuda:N); the metrics run on the CPU",
    )
    p.add_argument(
        "--dry_run",
        action="store_true",
        help="print the steps as a shell script, with the jobs (resources, dependencies) a launcher would start; "
        "run nothing",
    )
    add_launcher(p)
    add_quiet(p)
    args = p.parse_args(argv)
    check_launcher(p, args, local_jobs=len(os.sched_getaffinity(0)) if args.device == "cpu" else 1)
    if args.batch_size < 1:
        p.error(f"--batch_size {args.batch_size} must be >= 1")
    if len(set(args.sepce_concepts)) != len(args.sepce_concepts):
        p.error(f"--sepce_concepts {args.sepce_concepts} names a style twice")
    args.triples = [t if isinstance(t, tuple) else _triple(t) for t in args.triples]
    return args


def main(args: argparse.Namespace) -> Optional[dict]:
    form = FORMS[args.form]
    work = args.work_dir or Path("outputs") / f"world-benchmark-{form.name}"
    lay = benchmark_layout(work, args.ckpt_path, args.config_path, args.classifier)
    classes = load_class_map(lay.classes)
    styles = args.styles or reported_styles(classes)
    concept_prompts(classes, [args.concept, *args.sepce_concepts, *styles, *(s for t in args.triples for s in t)])
    for path, what in (
        (lay.ckpt_path, "--ckpt_path"),
        (lay.config_path, "--config_path"),
        (lay.classifier, "--classifier"),
    ):
        if not Path(path).is_file():
            raise FileNotFoundError(f"{what} {path} does not exist")
    candidates: dict = {}
    for method, flags in args.preset:
        candidates.setdefault(method, []).append(flags)
    presets = {**PRESETS, **{m: flags[0] for m, flags in candidates.items() if len(flags) == 1}}
    if form.sweep:
        if any(len(flags) > 1 for flags in candidates.values()):
            raise ValueError("--preset candidates (one method given several presets) need a single-erasure form")
        cells = sweep_cells(args.methods, styles, args.triples, args.seeds)
    else:
        cells = single_cells(args.methods, args.concept, args.sepce_concepts, candidates)
    parse_device(args.device)  # one line before anything runs when the device does not exist
    plan = plan_benchmark(lay, form, cells, presets, args.batch_size, args.quiet, args.device, args.attacks)
    steps = [s for s in plan.steps if s.stage in args.stages]
    inprocess = args.runner == "inprocess" and args.launcher == "local"
    launch = launch_of(args, jobs_dir(lay.work), inprocess)
    if args.dry_run:
        print(dry_run(steps, launch), end="")
        return None
    booking = Booking(lay.work, {"stages": list(args.stages), "jobs": args.jobs, "launcher": args.launcher})
    try:
        run_plan(steps, launch, booking, say=functools.partial(print, flush=True))
        if "table" not in args.stages:
            return None
        used = {m: presets[m] for m in args.methods}
        writer = write_sweep_report if form.sweep else write_report
        timings = booking.ordered([s.name for s in plan.steps])
        report, summary = writer(lay, form, plan, timings, used, booking.book())
        print(report.read_text())
        print(f"wrote {report}")
        return summary
    finally:
        booking.book()


if __name__ == "__main__":
    run(parse_args, main)
