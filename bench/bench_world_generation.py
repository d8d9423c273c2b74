"""Benchmark: images/s of the concept-world benchmark's generation, today's path vs the protocol's new setting.

Both paths run what the world benchmark runs for each model folder: one ``eval-scripts/generate-images.py``
process per folder (the shipped world model with an erasure record applied, 64 px, guidance 7.5, fp32, one
image per evaluation seed of ``data/world/evaluate.csv``):

* ``baseline`` -- today's path before issue 19: DDIM 50 (100 UNet evaluations per image), batch 32;
* ``new`` -- the sampler and steps the world protocol uses now (``sepce.world.benchmark.FORMS``, chosen by the
  pre-registered rule in docs/world-benchmark.md), batch ``--batch_size``;
* ``worker`` -- ``new`` as ``world-benchmark.py`` now runs it: every folder drawn in turn by one worker process
  (:mod:`sepce.pipeline.worker`, started once and counted in its wall time), so torch and the library are
  imported once, not once per folder.

The erased models are UCE edits of the first ``--models`` reported styles (closed form, seconds; made once, in a
temporary folder), so each folder also pays for reading and applying an erasure record, as in the benchmark. The
paths alternate folder by folder, so a change in the machine's load hits all alike. Reported per path: images/s (all
folders), peak RSS (the largest of its processes, ``wait4``; the worker's ``VmHWM``), and the fixed cost per folder
and the cost per image from a two-point fit: one extra one-image folder gives T(1) = fixed + c, the real folders
T(N) = fixed + N c (the worker's once started; its start, ``start_s`` -- imports and a first one-image folder --
is counted once in its wall time).
``ratio`` = new images/s / baseline images/s, ``ratio_worker`` the same for the worker (the issue asks >= 3). Each
process runs ``--threads`` threads (default 1: ``world-benchmark.py`` on 2 cores runs two one-thread workers).

    python bench/bench_world_generation.py                            # 6 models x 128 images (tens of minutes)
    python bench/bench_world_generation.py --models 2 --seeds_per_style 4   # 2 x 32 images, a few minutes
    python bench/bench_world_generation.py --tiny                     # 1 x 8 images (smoke test)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/common.py
from common import GIB, REPO, bench_parser, save_results  # noqa: E402

from sepce.classes import load_class_map  # noqa: E402
from sepce.cli import positive_int, run  # noqa: E402
from sepce.io import write_text  # noqa: E402
from sepce.pipeline.executors import Worker  # noqa: E402
from sepce.world.benchmark import (  # noqa: E402
    CLASS_MAP,
    FORMS,
    IMAGE_SIZE,
    PRESETS,
    eval_csv_text,
    expand_preset,
    reported_styles,
)
from sepce.world.model import SHIPPED_CKPT, SHIPPED_CONFIG  # noqa: E402

BASELINE = ("ddim", 50, 32)  # sampler, steps, batch size of the world benchmark before issue 19


@dataclass(frozen=True)
class GenPath:
    """One generation path: its name and the sampler flags of generate-images.py."""

    name: str
    sampler: str
    steps: int
    batch_size: int


@dataclass
class PathResult:
    name: str
    sampler: str
    steps: int
    batch_size: int
    folders: int = 0
    images: int = 0
    wall_s: float = 0.0
    images_per_s: float = 0.0
    folder_s: List[float] = field(default_factory=list)
    one_image_folder_s: float = 0.0
    start_s: float = 0.0  # worker: starting it (imports), once; counted in wall_s
    per_image_s: float = 0.0
    fixed_per_folder_s: float = 0.0
    peak_rss_gib: float = 0.0


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = bench_parser(__doc__, tiny_help="1 model x 8 images (smoke test of this script)")
    p.add_argument("--models", type=positive_int, default=6, help="erased model folders per path")
    p.add_argument("--seeds_per_style", type=positive_int, default=16, help="images per folder = 8 x this")
    p.add_argument("--batch_size", type=positive_int, default=32, help="new path: images per sampler batch")
    p.add_argument("--threads", type=positive_int, default=1, help="torch threads of each generation process")
    args = p.parse_args(argv)
    if args.tiny:
        args.models, args.seeds_per_style = 1, 1
    return args


def _timed_child(argv: Sequence[str], threads: int) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of ``python argv`` (its own ``wait4`` usage); a failure ends the bench."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    tic = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *map(str, argv)], env=env, cwd=REPO, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - tic
    proc.returncode = os.waitstatus_to_exitcode(status)
    stderr = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if proc.returncode != 0:
        raise SystemExit(f"error: {' '.join(map(str, argv[:1]))} failed:\n{stderr[-2000:]}")
    return seconds, usage.ru_maxrss * 1024


class TimedWorker:
    """A step worker with ``threads`` threads that draws folders one at a time (its start is counted once)."""

    def __init__(self, threads: int):
        tic = time.perf_counter()
        self.worker = Worker({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})
        self.start_s = time.perf_counter() - tic

    def run(self, argv: Sequence[str]) -> float:
        """Wall seconds of one folder (the script's ``argv``) in the worker; a failure ends the bench."""
        tic = time.perf_counter()
        self.worker.send([str(a) for a in argv])
        while (outcome := self.worker.poll()) is None:
            time.sleep(0.01)
        if outcome.code != 0:
            raise SystemExit(f"error: {argv[0]} failed in the worker ({outcome.error or outcome.code})")
        return time.perf_counter() - tic

    def peak_rss(self) -> int:
        """The worker's peak resident memory in bytes (``VmHWM``)."""
        for line in Path(f"/proc/{self.worker.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return 0


def make_models(work: Path, count: int, threads: int) -> List[str]:
    """UCE erasures of the first ``count`` reported styles (cycled), as run folders under ``work/models``."""
    classes = load_class_map(CLASS_MAP)
    styles = reported_styles(classes)
    prompt_of = {c.name: c.prompt for c in classes}
    names = []
    for i in range(count):
        style = styles[i % len(styles)]
        name = f"UCE-{style}-{i}"
        argv = ["train-scripts/UCE.py", "--edit_concepts", prompt_of[style]]
        argv += expand_preset(PRESETS["UCE"], classes, [style])
        argv += ["--ckpt_path", SHIPPED_CKPT, "--config_path", SHIPPED_CONFIG, "--devices", "cpu"]
        argv += ["--output_dir", work / "models" / name, "--quiet"]
        _timed_child(argv, threads)
        names.append(name)
    return names


def generate_argv(work: Path, model: str, prompts: Path, out: str, path: GenPath) -> List[str]:
    """The generate-images.py call of one folder, with the flags the world benchmark passes."""
    return [
        "eval-scripts/generate-images.py",
        *("--model_name", model, "--models_dir", work / "models", "--prompts_path", prompts),
        *("--save_path", work / "images" / path.name, "--output_name", out, "--num_samples", "1"),
        *("--classes", CLASS_MAP, "--ckpt_path", SHIPPED_CKPT, "--config_path", SHIPPED_CONFIG),
        *("--sampler", path.sampler, "--ddim_steps", str(path.steps), "--guidance_scale", "7.5"),
        *("--image_size", str(IMAGE_SIZE), "--device", "cpu", "--batch_size", str(path.batch_size), "--quiet"),
    ]


def main(args: argparse.Namespace) -> dict:
    protocol = FORMS["sweep"]
    new = (protocol.sampler, protocol.steps, args.batch_size)
    paths = [GenPath("baseline", *BASELINE), GenPath("new", *new), GenPath("worker", *new)]
    results: Dict[str, PathResult] = {p.name: PathResult(p.name, p.sampler, p.steps, p.batch_size) for p in paths}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-world-") as tmp:
        work = Path(tmp)
        classes = load_class_map(CLASS_MAP)
        prompts = write_text(work / "evaluate.csv", eval_csv_text(classes, args.seeds_per_style))
        first = eval_csv_text(classes, 1).splitlines()[:2]  # the header and the first row: a one-image folder
        one = write_text(work / "one.csv", "\n".join(first) + "\n")
        images = len(prompts.read_text().splitlines()) - 1
        models = make_models(work, args.models, args.threads)
        worker = TimedWorker(args.threads)
        try:
            # the worker's start: its imports, and its first folder (the imports a first model load makes)
            worker.start_s += worker.run(generate_argv(work, models[0], one, "warm", paths[2]))
            results["worker"].start_s = results["worker"].wall_s = worker.start_s
            for path in paths:  # the fixed-cost probe: a folder of one image (the worker's first, once started)
                argv = generate_argv(work, models[0], one, "probe", path)
                if path.name == "worker":
                    seconds, rss = worker.run(argv), worker.peak_rss()
                else:
                    seconds, rss = _timed_child(argv, args.threads)
                results[path.name].one_image_folder_s = seconds
                results[path.name].peak_rss_gib = rss / GIB
            for model in models:
                for path in paths:
                    argv = generate_argv(work, model, prompts, model, path)
                    if path.name == "worker":
                        seconds, rss = worker.run(argv), worker.peak_rss()
                    else:
                        seconds, rss = _timed_child(argv, args.threads)
                    r = results[path.name]
                    r.folder_s.append(seconds)
                    r.folders, r.images, r.wall_s = r.folders + 1, r.images + images, r.wall_s + seconds
                    r.peak_rss_gib = max(r.peak_rss_gib, rss / GIB)
        finally:
            worker.worker.close()
    for r in results.values():
        r.images_per_s = r.images / r.wall_s
        mean_folder = (r.wall_s - r.start_s) / r.folders
        r.per_image_s = (mean_folder - r.one_image_folder_s) / max(images - 1, 1)
        r.fixed_per_folder_s = r.one_image_folder_s - r.per_image_s
    base, new, pooled = results["baseline"], results["new"], results["worker"]
    summary = {
        "images_per_folder": images,
        "models": args.models,
        "threads_per_process": args.threads,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "paths": {
            k: {key: (round(v, 4) if isinstance(v, float) else v) for key, v in asdict(r).items()}
            for k, r in results.items()
        },
        "ratio_images_per_s": round(new.images_per_s / base.images_per_s, 3),
        "ratio_per_image": round(base.per_image_s / new.per_image_s, 3),
        "ratio_worker_images_per_s": round(pooled.images_per_s / base.images_per_s, 3),
    }
    for r in results.values():
        print(
            f"{r.name:8s} {r.sampler} {r.steps} (batch {r.batch_size}): {r.images} images in {r.wall_s:.1f} s = "
            f"{r.images_per_s:.3f} img/s; fixed {r.fixed_per_folder_s:.2f} s/folder, {r.per_image_s:.4f} s/image; "
            f"peak RSS {r.peak_rss_gib:.2f} GiB"
        )
    print(
        f"ratio (new / baseline images/s): {summary['ratio_images_per_s']:.2f}x, worker / baseline "
        f"{summary['ratio_worker_images_per_s']:.2f}x; load {summary['load_average_after']}"
    )
    print(json.dumps(summary))
    return save_results(args.json, summary)


if __name__ == "__main__":
    run(parse_args, main)
