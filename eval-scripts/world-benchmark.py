"""The paper's experiment on the concept-world model: erase styles with every method (CiE, SepCE, ESD, FMN and
Ablating Concepts in the authors' variants, UCE, the original FMN and Ablating Concepts), attack the erasures with
concept inversion, measure accuracy / feature distance / FID with the world classifier, report with intervals.

    python eval-scripts/world-benchmark.py --form short          # a few minutes on 2 CPU cores (README quick start)
    python eval-scripts/world-benchmark.py --form full           # one erasure per method, with the attack
    python eval-scripts/world-benchmark.py --form sweep --jobs 2 # every method x every reported style x 2 seeds
    python eval-scripts/world-benchmark.py --form short --dry_run   # the commands, as a shell script

Stages: data erase generate attack metrics table (see sepce/world/benchmark.py); everything goes under --work_dir
and re-running resumes. Single-erasure forms: single-concept methods erase --concept, SepCE erases
--sepce_concepts together and the table adds the subsets that restore the later ones; report.md has the table,
drops and verdicts with 95 % intervals, the attack, the restoration check and a contact sheet. The sweep form
erases every reported style (--styles) with every --seeds and SepCE's disjoint triples, and writes sweep.md.
Method flags are the world presets unless overridden with --preset 'CiE=--lr 1e-4 --iterations 100' (how the
presets were tuned, on the held-out styles: --form tune --concept grid --sepce_concepts grid stripes).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional, Sequence

from sepce.classes import load_class_map
from sepce.cli import EXIT_HELP, add_quiet, parser, run
from sepce.io import write_text
from sepce.reproduce import StepFailed, run_step
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
    run_metrics,
    single_cells,
    sweep_cells,
)
from sepce.world.concept_classifier import SHIPPED_CLASSIFIER
from sepce.world.model import SHIPPED_CKPT, SHIPPED_CONFIG
from sepce.world.report import Timer, book_invocation, record_time, write_report, write_sweep_report


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
        "--jobs",
        type=int,
        default=1,
        help="run up to this many independent training chains at once, each a one-thread subprocess",
    )
    p.add_argument(
        "--runner",
        choices=("subprocess", "inprocess"),
        default="inprocess",
        help="run each script in this interpreter (faster) or in a new Python process (always with --jobs > 1)",
    )
    p.add_argument("--dry_run", action="store_true", help="print the script steps as a shell script; run nothing")
    add_quiet(p)
    args = p.parse_args(argv)
    if args.batch_size < 1 or args.jobs < 1:
        p.error(f"--batch_size {args.batch_size} and --jobs {args.jobs} must be >= 1")
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
    plan = plan_benchmark(lay, form, cells, presets, args.batch_size, args.quiet, args.attacks)
    if args.dry_run:
        print("#!/usr/bin/env bash\nset -euo pipefail")
        for step in plan.steps:
            print(f"\n# [{step.stage}] {step.name}\n{step.shell()}")
        return None
    stamp = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
    invocation = {"started": stamp, "stages": list(args.stages), "jobs": args.jobs}
    started = time.monotonic()

    def book() -> list:  # this invocation's wall time so far, with the earlier (resumed) ones
        seconds = round(time.monotonic() - started, 1)
        return book_invocation(lay.work / "invocations.json", {**invocation, "seconds": seconds})

    try:
        return _run_plan(args, lay, form, plan, presets, book)
    finally:
        book()


def _run_plan(args, lay, form, plan, presets, book) -> Optional[dict]:
    timings_file = lay.work / "timings.json"
    timings = json.loads(timings_file.read_text()) if timings_file.is_file() else {}
    lock = threading.Lock()
    runner = "subprocess" if args.jobs > 1 else args.runner
    if args.jobs > 1:
        os.environ["OMP_NUM_THREADS"] = "1"  # each child process one thread: --jobs of them share the cores

    def record(stage: str, name: str, status: str, seconds: float, resumes: bool) -> None:
        with lock:
            if record_time(timings, stage, name, status, seconds, resumes):
                write_text(timings_file, json.dumps(timings, indent=2) + "\n")

    def execute(steps) -> None:
        for step in (s for s in steps if s.stage in args.stages):
            print(f"=== [{step.stage}] {step.name}", flush=True)
            with Timer() as timer:
                try:
                    status = run_step(step, runner)
                except StepFailed as error:
                    raise ValueError(f"{error}; fix it and re-run (finished steps are skipped)") from None
            if step.write is None:
                record(step.stage, step.name, status, timer.seconds, step.resumes)

    execute(plan.setup)
    if args.jobs > 1:
        with ThreadPoolExecutor(args.jobs) as pool:
            for future in [pool.submit(execute, chain) for chain in plan.chains]:
                future.result()
    else:
        for chain in plan.chains:
            execute(chain)
    if "metrics" in args.stages:
        print("=== [metrics] accuracy, feature distance, FID", flush=True)
        with Timer() as timer:
            run_metrics(lay, plan.cells)
        record("metrics", "accuracy, feature distance and FID", "done", timer.seconds, False)
    if "table" not in args.stages:
        return None
    execute(plan.table)
    order = {s.name: i for i, s in enumerate(plan.steps)}
    ordered = sorted(timings.values(), key=lambda t: (order.get(t["name"], len(order)), t["name"]))
    used = {m: presets[m] for m in args.methods}
    writer = write_sweep_report if form.sweep else write_report
    report, summary = writer(lay, form, plan, ordered, used, book())
    print(report.read_text())
    print(f"wrote {report}")
    return summary


if __name__ == "__main__":
    run(parse_args, main)
