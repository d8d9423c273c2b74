"""The paper's experiment on the concept-world model: erase styles with CiE, SepCE, ESD, FMN and Ablating Concepts,
generate evaluation images, measure accuracy / feature distance / FID with the world classifier, print the table.

    python eval-scripts/world-benchmark.py --form short          # a few minutes on 2 CPU cores (README quick start)
    python eval-scripts/world-benchmark.py --form full           # the documented table (docs/world-benchmark.md)
    python eval-scripts/world-benchmark.py --form short --dry_run   # the commands, as a shell script

Stages ``data erase generate metrics table`` (see sepce/world/benchmark.py); everything goes under ``--work_dir``
and re-running resumes. Single-concept methods erase ``--concept``; SepCE erases ``--sepce_concepts`` together and
the table adds the subsets that restore the later ones. Method flags are the world presets unless overridden with
``--preset 'CiE=--lr 1e-4 --iterations 100'`` (how the presets were tuned, on held-out styles). Writes
``<work_dir>/report.md`` (table, original accuracy, drops, restoration check, run times), ``summary.json``,
``timings.csv`` and ``table/table.{md,csv,png}``.
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path
from typing import Optional, Sequence

from sepce.classes import load_class_map
from sepce.cli import EXIT_HELP, add_quiet, parser, run
from sepce.io import write_text
from sepce.reproduce import METHODS, StepFailed, run_step
from sepce.world.benchmark import (
    DEFAULT_CONCEPT,
    DEFAULT_SEPCE,
    FORMS,
    PRESETS,
    STAGES,
    Timer,
    benchmark_layout,
    concept_prompts,
    plan_benchmark,
    run_metrics,
    write_report,
)
from sepce.world.classifier import SHIPPED_CLASSIFIER
from sepce.world.model import SHIPPED_CKPT, SHIPPED_CONFIG


def _preset(value: str) -> tuple:
    name, sep, flags = value.partition("=")
    if not sep or name.strip() not in METHODS:
        raise argparse.ArgumentTypeError(f"{value!r} is not METHOD=FLAGS with METHOD one of {list(METHODS)}")
    return name.strip(), tuple(shlex.split(flags))


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = parser(__doc__, EXIT_HELP)
    p.add_argument("--form", choices=list(FORMS), default="short", help="how much of the protocol to run")
    p.add_argument("--work_dir", type=Path, default=None, help="output root (None: outputs/world-benchmark-<form>)")
    p.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES), help="stages to run")
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS), help="erasure methods")
    p.add_argument("--concept", default=DEFAULT_CONCEPT, help="style erased by the single-concept methods")
    p.add_argument("--sepce_concepts", nargs="+", default=list(DEFAULT_SEPCE), help="styles SepCE erases together")
    p.add_argument(
        "--preset", type=_preset, action="append", default=[], metavar="METHOD=FLAGS", help="replace a method's preset"
    )
    p.add_argument("--ckpt_path", type=Path, default=SHIPPED_CKPT, help="the world model (original)")
    p.add_argument("--config_path", type=Path, default=SHIPPED_CONFIG, help="its config")
    p.add_argument("--classifier", type=Path, default=SHIPPED_CLASSIFIER, help="the world classifier")
    p.add_argument("--batch_size", type=int, default=32, help="images per sampler batch")
    p.add_argument(
        "--runner",
        choices=("subprocess", "inprocess"),
        default="inprocess",
        help="run each script in this interpreter (faster) or in a new Python process",
    )
    p.add_argument("--dry_run", action="store_true", help="print the script steps as a shell script; run nothing")
    add_quiet(p)
    args = p.parse_args(argv)
    if args.batch_size < 1:
        p.error(f"--batch_size {args.batch_size} must be >= 1")
    if len(set(args.sepce_concepts)) != len(args.sepce_concepts):
        p.error(f"--sepce_concepts {args.sepce_concepts} names a style twice")
    return args


def main(args: argparse.Namespace) -> Optional[dict]:
    form = FORMS[args.form]
    work = args.work_dir or Path("outputs") / f"world-benchmark-{form.name}"
    lay = benchmark_layout(work, args.ckpt_path, args.config_path, args.classifier)
    classes = load_class_map(lay.classes)
    concept_prompts(classes, [args.concept, *args.sepce_concepts])
    for path, what in (
        (lay.ckpt_path, "--ckpt_path"),
        (lay.config_path, "--config_path"),
        (lay.classifier, "--classifier"),
    ):
        if not Path(path).is_file():
            raise FileNotFoundError(f"{what} {path} does not exist")
    presets = {**PRESETS, **dict(args.preset)}
    steps, rows = plan_benchmark(
        lay, form, args.methods, args.concept, args.sepce_concepts, presets, args.batch_size, args.quiet
    )
    if args.dry_run:
        print("#!/usr/bin/env bash\nset -euo pipefail")
        for step in steps:
            print(f"\n# [{step.stage}] {step.name}\n{step.shell()}")
        return None
    timings_file = lay.work / "timings.json"
    timings = json.loads(timings_file.read_text()) if timings_file.is_file() else {}

    def record(stage: str, name: str, status: str, seconds: float) -> None:
        if status == "done" or name not in timings:  # a skipped step keeps the time it took when it ran
            timings[name] = {"stage": stage, "name": name, "status": status, "seconds": round(seconds, 1)}
            write_text(timings_file, json.dumps(timings, indent=2) + "\n")

    for step in (s for s in steps if s.stage in args.stages and s.stage != "table"):
        print(f"=== [{step.stage}] {step.name}", flush=True)
        with Timer() as timer:
            try:
                status = run_step(step, args.runner)
            except StepFailed as error:
                raise ValueError(f"{error}; fix it and re-run (finished steps are skipped)") from None
        if step.write is None:
            record(step.stage, step.name, status, timer.seconds)
    if "metrics" in args.stages:
        print("=== [metrics] accuracy, feature distance, FID", flush=True)
        with Timer() as timer:
            run_metrics(lay, rows)
        record("metrics", "accuracy, feature distance and FID", "done", timer.seconds)
    if "table" not in args.stages:
        return None
    for step in (s for s in steps if s.stage == "table"):
        run_step(step, args.runner)
    order = {s.name: i for i, s in enumerate(steps)}
    ordered = sorted(timings.values(), key=lambda t: (order.get(t["name"], len(order)), t["name"]))
    report, summary = write_report(lay, form, rows, ordered, {m: presets[m] for m in args.methods})
    print(report.read_text())
    print(f"wrote {report}")
    return summary


if __name__ == "__main__":
    run(parse_args, main)
