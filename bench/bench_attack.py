"""Benchmark: one optimisation step of the concept-inversion attack (sepce.attack.train_word) on CPU, fp32.

* ``sd`` — the FULL-SIZE SD v1.4 architecture (``configs/stable-diffusion/v1-inference.yaml``) with RANDOM weights,
  one 512×512 image per step (batch 1), gradient checkpointing as the config says (on);
* ``world`` — the shipped concept-world model (``assets/world/``), 64×64 images, batch 1 and the world preset's
  batch (:data:`sepce.attack.PRESETS`).

Each variant runs in its own subprocess (peak RSS = ru_maxrss of that process, model included) on a folder holding
ONE random training image, through the library's ``train_word`` (templates of the domain, Adam on v* only). The
first step includes the autoencoder's encoding of the image; later steps reuse its posterior
(:class:`sepce.attack.TrainingLatents`), so "later step" is the cost of the text encoder with v*, the UNet
forward and the backward to v*, and the optimizer step. Times are wall-clock means over steps 2..n.

    python bench/bench_attack.py              # full size: ~6 GB peak RSS, 3-6 minutes on 2 cores
    python bench/bench_attack.py --tiny       # tiny config instead of SD v1.4 (smoke test of this script)

On a machine shared with other jobs, ``OMP_NUM_THREADS=1`` avoids thread oversubscription (measured here with a
load average of 4-5 on 2 cores: the world step took 0.11 s with one thread and 1.0-2.3 s with two).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/common.py
from common import GIB, bench_parser, model_config, peak_rss, random_model, run_child, save_results  # noqa: E402


def child(variant: str, batch_size: int, steps: int, tiny: bool) -> dict:
    import numpy as np
    from PIL import Image

    from sepce.attack import PRESETS, TEMPLATES, train_word
    from sepce.training import ImageFolder

    if variant == "sd":
        model = random_model(model_config(tiny), frozen=False)  # train_word freezes what it does not train
        size, domain = (64 if tiny else 512), "sd"
    else:
        from sepce.modeling import load_model
        from sepce.world.model import SHIPPED_CKPT, SHIPPED_CONFIG

        model = load_model(SHIPPED_CONFIG, SHIPPED_CKPT)
        size, domain = 64, "world"
    with tempfile.TemporaryDirectory() as tmp:
        pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(Path(tmp) / "0_0.png")
        images = ImageFolder(tmp, size)
        preset = replace(PRESETS[domain], steps=steps, batch_size=batch_size)
        marks = [time.perf_counter()]
        train_word(model, images, TEMPLATES[domain], preset, after_step=lambda i: marks.append(time.perf_counter()))
    times = [b - a for a, b in zip(marks, marks[1:])]
    later = times[1:] or times
    return {
        "variant": variant,
        "image_size": size,
        "batch_size": batch_size,
        "first_s": times[0],
        "step_s": sum(later) / len(later),
        "steps": len(times),
        "peak_rss_bytes": peak_rss(),
        "threads": torch.get_num_threads(),
    }


def spawn(variant: str, batch_size: int, steps: int, tiny: bool) -> dict:
    argv = [__file__, "--child", variant, "--batch_size", batch_size, "--steps", steps]
    return run_child(argv + (["--tiny"] if tiny else []), f"variant {variant}")


def parse_args(argv=None) -> argparse.Namespace:
    p = bench_parser(__doc__, "tiny config instead of full-size SD v1.4 (smoke test)")
    p.add_argument("--steps", type=int, default=3, help="steps per variant (the first one includes VAE encoding)")
    p.add_argument("--world_steps", type=int, default=10, help="steps of the world variants")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--batch_size", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.steps < 2 or args.world_steps < 2:
        p.error("--steps and --world_steps must be >= 2 (the first step is reported apart)")
    return args


def main(args: argparse.Namespace) -> list:
    if args.child:
        print(json.dumps(child(args.child, args.batch_size, args.steps, args.tiny)))
        return []
    from sepce.attack import PRESETS

    runs = [("sd", 1, args.steps), ("world", 1, args.world_steps)]
    runs.append(("world", PRESETS["world"].batch_size, args.world_steps))
    results = [spawn(variant, batch, steps, args.tiny) for variant, batch, steps in runs]
    sd_name = "tiny config (random)" if args.tiny else "SD v1.4 full size (random)"
    names = {"sd": sd_name, "world": "concept world (assets/world)"}
    print(f"concept-inversion attack step: CPU fp32, {results[0]['threads']} threads, mean of steps 2..n")
    print(f"{'model':32}{'px':>5}{'batch':>7}{'first step [s]':>16}{'later step [s]':>16}{'peak RSS [GiB]':>16}")
    for r in results:
        print(
            f"{names[r['variant']]:32}{r['image_size']:5d}{r['batch_size']:7d}{r['first_s']:16.3f}"
            f"{r['step_s']:16.3f}{r['peak_rss_bytes'] / GIB:16.2f}"
        )
    return save_results(args.json, results)


if __name__ == "__main__":
    main(parse_args())
