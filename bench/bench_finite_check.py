"""Benchmark: what refusing NaN/inf costs when a full checkpoint is read (:func:`ldm.checkpoint.check_finite`).

Writes the state dict of a random full-size SD v1 model (``v1-inference.yaml``: UNet, VAE, CLIP text encoder; 4 GB
of float32; ``--ema`` adds the EMA copy of the UNet that ``sd-v1-4-full-ema.ckpt`` holds, 7 GB) to a
safetensors file, then times in the same run, best of ``--repeats``:

* ``read``: ``safetensors.torch.load_file`` of that file plus one copy of every tensor (the baseline: reading and
  materialising the weights once, as building a model from them does; ``load_file`` alone maps the file lazily);
* ``check``: :func:`~ldm.checkpoint.check_finite` over the tensors read (what :func:`read_state_dict` adds);
* ``mask_check``: ``isfinite(t).all()`` per tensor, the obvious alternative (for comparison).

Prints the seconds and ``check / read``. ``--tiny`` uses the tiny config (smoke test, seconds)::

    python bench/bench_finite_check.py --json finite.json   # 4 GB on disk, 8 GB of memory
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/common.py
from common import GIB, bench_parser, model_config, random_model, save_results  # noqa: E402


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def parse_args(argv=None) -> argparse.Namespace:
    p = bench_parser(__doc__, "tiny config (smoke test)")
    p.add_argument("--repeats", type=int, default=3, help="timings per measurement (the best is reported)")
    p.add_argument("--ema", action="store_true", help="add the EMA copy of the UNet (model_ema.*), as SD's file has")
    p.add_argument("--dir", type=Path, default=None, help="where the temporary checkpoint goes (default: system tmp)")
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> dict:
    from ldm.checkpoint import check_finite
    from safetensors.torch import load_file

    from sepce.records import ema_key, save_safetensors

    model = random_model(model_config(args.tiny))
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    del model
    if args.ema:
        sd.update({ema_key(k): v for k, v in sd.items() if k.startswith("model.")})
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "model.safetensors"
        save_safetensors(path, sd)
        del sd
        size = path.stat().st_size
        read_s = best_of(args.repeats, lambda: [t.clone() for t in load_file(str(path)).values()])
        loaded = load_file(str(path))
        check_s = best_of(args.repeats, lambda: check_finite(loaded, str(path)))
        mask_s = best_of(args.repeats, lambda: [bool(torch.isfinite(t).all()) for t in loaded.values()])
    results = {
        "config": str(model_config(args.tiny)),
        "tensors": len(loaded),
        "gib": round(size / GIB, 3),
        "threads": torch.get_num_threads(),
        "read_s": round(read_s, 3),
        "check_s": round(check_s, 3),
        "mask_check_s": round(mask_s, 3),
        "check_over_read": round(check_s / read_s, 3),
    }
    print(
        f"{results['gib']} GiB, {results['tensors']} tensors: read {read_s:.2f} s, finite check {check_s:.2f} s "
        f"(check / read = {results['check_over_read']}; isfinite().all() {mask_s:.2f} s)"
    )
    return save_results(args.json, results)


if __name__ == "__main__":
    main(parse_args())
