"""Benchmark: wall time and peak memory of the UCE closed-form edit (sepce/methods/uce.py) on the full SD v1.4
architecture.

Full-size SD v1.4 with RANDOM weights (``configs/stable-diffusion/v1-inference.yaml``, built on the CPU as
``bench_cie.py`` does), CPU: the edit of all 32 ``attn2`` ``to_k``/``to_v`` weights (16 layers, d_out 320–1280,
D = 768) for one erased concept ("Van Gogh" → guide "") without and with 10 preserve concepts. Each case runs in
its own subprocess so that peak RSS (ru_maxrss) is its own; it reports the model build time, the RSS once the
model is built, the edit's time (first call, then the median of the following repeats) split into the text
embeddings and the float64 solve, and the peak RSS after the edits (its excess over the built model is what the
edit needs).

    python bench/bench_uce.py               # full size: ~5 GB RAM per case, about a minute per case
    python bench/bench_uce.py --tiny        # tiny config, seconds (smoke test of this script)
    python bench/bench_uce.py --threads 1   # one thread (a busy machine)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/common.py
from common import GIB, bench_parser, model_config, peak_rss, random_model, run_child, save_results  # noqa: E402

from sepce.cli import positive_int  # noqa: E402

ERASE = ("Van Gogh",)
PRESERVE = (
    "Picasso",
    "Cezanne",
    "Claude Monet",
    "Rembrandt",
    "Salvador Dali",
    "Andy Warhol",
    "Frida Kahlo",
    "Leonardo da Vinci",
    "Johannes Vermeer",
    "Edvard Munch",
)
CASES = {"erase 1": 0, "erase 1, preserve 10": len(PRESERVE)}


def child(config_path: Path, n_preserve: int, repeats: int) -> dict:
    from sepce.methods.uce import UCESettings, closed_form_edit, kv_weights, last_word_embedding, uce_edit

    tic = time.perf_counter()
    model = random_model(config_path)
    build_s = time.perf_counter() - tic
    rss_built = peak_rss()
    settings = UCESettings(ERASE, preserve_concepts=PRESERVE[:n_preserve])
    totals, embed, solve = [], [], []
    for _ in range(repeats):
        tic = time.perf_counter()
        result = uce_edit(model, settings)  # what train-scripts/UCE.py runs
        totals.append(time.perf_counter() - tic)
        # the same work in its two parts: the text embeddings, then the solve for every weight
        tic = time.perf_counter()
        ce = last_word_embedding(model, settings.edit_concepts)
        cg = last_word_embedding(model, settings.guides)
        cp = last_word_embedding(model, settings.preserve_concepts) if n_preserve else None
        embed.append(time.perf_counter() - tic)
        weights = kv_weights(model)
        tic = time.perf_counter()
        closed_form_edit(weights, ce, cg, cp)
        solve.append(time.perf_counter() - tic)
    weights = kv_weights(model)
    later = slice(1, None) if repeats > 1 else slice(None)
    return {
        "preserve": n_preserve,
        "build_s": build_s,
        "first_s": totals[0],
        "edit_s": statistics.median(totals[later]),
        "embed_s": statistics.median(embed[later]),
        "solve_s": statistics.median(solve[later]),
        "rss_built_bytes": rss_built,
        "peak_rss_bytes": peak_rss(),
        "tensors": len(result.tensors),
        "columns": sum(w.shape[0] for w in weights.values()),
        "dim": int(next(iter(weights.values())).shape[1]),
        "erase_residual": result.erase_residual,
        "threads": torch.get_num_threads(),
    }


def spawn(args: argparse.Namespace, n_preserve: int) -> dict:
    argv = [__file__, "--child", n_preserve, "--config_path", args.config_path, "--repeats", args.repeats]
    argv += ["--threads", args.threads] if args.threads else []
    return run_child(argv, f"case with {n_preserve} preserve concepts")


def parse_args(argv=None) -> argparse.Namespace:
    p = bench_parser(__doc__, "tiny config (smoke test)")
    p.add_argument("--config_path", type=Path, default=None, help="model config (default: SD v1.4, or tiny)")
    p.add_argument("--repeats", type=positive_int, default=3, help="edits per case (the first is reported apart)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.config_path = model_config(args.tiny, args.config_path)
    return args


def main(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child is not None:
        print(json.dumps(child(Path(args.config_path), args.child, args.repeats)))
        return {}
    results = {name: spawn(args, n) for name, n in CASES.items()}
    first = next(iter(results.values()))
    print(
        f"UCE edit: {Path(args.config_path).name} (random weights), CPU, {first['threads']} thread(s); "
        f"{first['tensors']} weights ({first['columns']} rows x D = {first['dim']}), float64 solve; "
        f"median of edits 2..{args.repeats}"
    )
    print(
        f"{'case':22}{'build [s]':>11}{'first [s]':>11}{'edit [s]':>10}{'embed [s]':>11}{'solve [s]':>11}"
        f"{'RSS built [GiB]':>17}{'peak RSS [GiB]':>16}"
    )
    for name, r in results.items():
        print(
            f"{name:22}{r['build_s']:11.1f}{r['first_s']:11.2f}{r['edit_s']:10.2f}{r['embed_s']:11.3f}"
            f"{r['solve_s']:11.3f}{r['rss_built_bytes'] / GIB:17.2f}{r['peak_rss_bytes'] / GIB:16.2f}"
        )
    return save_results(args.json, results)


if __name__ == "__main__":
    main(parse_args())
