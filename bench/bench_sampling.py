"""Benchmark: cost of a sampling step vs one batched UNet forward, decoding, saving, and images per second.

Measured in one run on one model (``sepce.generation.ImageSampler``, the code generate-images.py uses):

* ``unet_s``: one classifier-free-guidance UNet forward (``apply_model`` on a batch of 2B latents), averaged;
* ``step_s``: a full sampler run (``--steps`` steps of ``--sampler``, guidance, embeddings cached) / steps;
  ``loop_overhead_pct`` = (step_s − unet_s) / unet_s — the sampler arithmetic, guidance combination and Python
  loop around the UNet (target: under 5 %);
* ``text_s`` (text encoder, once per new prompt), ``decode_s`` (VAE decoder), ``save_s`` (PNG encoding and atomic
  writes) per batch, with ``save_overhead_pct`` relative to the whole batch;
* ``images_per_s`` for this run and ``images_per_s_at_100_steps`` extrapolated to the paper's 100 steps
  (K-LMS and DDIM steps cost one guided UNet forward each).

Full size uses random SD v1.4 weights built from ``configs/stable-diffusion/v1-inference.yaml`` (or
``--ckpt_path`` real weights); nothing is downloaded.

    python bench/bench_sampling.py --tiny                                  # seconds (smoke test)
    python bench/bench_sampling.py --batch_size 1 --steps 4                # full size on CPU: ~8 GB, minutes
    python bench/bench_sampling.py --device cuda --precision fp16 --batch_size 8 --steps 50 --sampler ddim
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/common.py
from common import model_config, random_model, save_results  # noqa: E402

from sepce.cli import Runtime, add_precision, parser, positive_int, run  # noqa: E402
from sepce.generation import (  # noqa: E402
    SAMPLERS,
    ImageJob,
    ImageSampler,
    SamplingSettings,
    case_noise,
    run_jobs,
    save_png,
)


def parse_args(argv=None) -> argparse.Namespace:
    p = parser(__doc__)
    p.add_argument("--tiny", action="store_true", help="tiny random model, 64 px (smoke test)")
    p.add_argument("--config_path", type=Path, default=None, help="model config (None: SD v1 or tiny)")
    p.add_argument("--ckpt_path", type=Path, default=None, help="weights (None: random initialisation)")
    p.add_argument("--device", default="cpu", help="torch device")
    add_precision(p, help="network precision (16-bit under torch.autocast, GPU only)")
    p.add_argument("--sampler", choices=SAMPLERS, default="ddim", help="sampler")
    p.add_argument("--steps", type=positive_int, default=None, help="sampler steps (None: 50 on GPU, 4 on CPU)")
    p.add_argument("--batch_size", type=positive_int, default=None, help="images per batch (None: 8 GPU, 1 CPU)")
    p.add_argument("--image_size", type=positive_int, default=None, help="image size (None: 512; tiny 64)")
    p.add_argument("--repeats", type=positive_int, default=3, help="timed UNet forwards (after one warm-up)")
    p.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = p.parse_args(argv)
    gpu = not args.device.startswith("cpu")
    args.steps = args.steps or (50 if gpu or args.tiny else 4)
    args.batch_size = args.batch_size or (8 if gpu or args.tiny else 1)
    args.image_size = args.image_size or (64 if args.tiny else 512)
    args.config_path = model_config(args.tiny, args.config_path)
    return args


def build(args, device: torch.device):
    """The model in float32 (16-bit runs under autocast in ImageSampler): real weights or a random init."""
    from sepce.modeling import load_model

    if args.ckpt_path is not None:
        return load_model(args.config_path, args.ckpt_path, device)
    return random_model(args.config_path, device=device)


def timed(fn, device: torch.device, repeats: int = 1) -> float:
    """Mean wall time of ``fn()`` over ``repeats`` calls (CUDA synchronised)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - start) / repeats


def main(args: argparse.Namespace) -> dict:
    runtime = Runtime.from_flags(args.device, args.precision)
    device, dtype = runtime.device, runtime.dtype
    settings = SamplingSettings(args.sampler, args.steps, 7.5, args.image_size)
    t0 = time.perf_counter()
    model = build(args, device)
    build_s = time.perf_counter() - t0
    sampler = ImageSampler(model, settings, device, dtype)
    prompts = [f"a painting in the style of artist {i % 4}" for i in range(args.batch_size)]
    noise = torch.cat([case_noise(1000 + i, 1, sampler.latent_shape) for i in range(args.batch_size)])

    text_s = timed(lambda: sampler.embed(prompts), device)  # first call: the text encoder runs (then cached)
    sampler.embed([""])
    cond, uncond = sampler.embed(prompts), sampler.embed([""]).expand(args.batch_size, -1, -1)
    x2 = torch.cat([noise, noise]).to(device)
    t2 = torch.full((2 * args.batch_size,), 500, device=device, dtype=torch.long)
    c2 = torch.cat([uncond, cond])
    with torch.no_grad():
        sampler.model_fn(x2, t2, c2)  # warm-up
        unet_s = timed(lambda: sampler.model_fn(x2, t2, c2), device, args.repeats)
        latents = None

        def sample():
            nonlocal latents
            latents = sampler.sample_latents(prompts, noise)

        sample_s = timed(sample, device)
        decode_s = timed(lambda: sampler.decode(latents), device)
    step_s = sample_s / args.steps
    with tempfile.TemporaryDirectory() as tmp:
        jobs = [ImageJob(i, 0, p, 1000 + i, Path(tmp) / f"{i}_0.png") for i, p in enumerate(prompts)]
        images = sampler.decode(latents)
        save_s = timed(lambda: [save_png(j.path, im, {"prompt": j.prompt}) for j, im in zip(jobs, images)], device)
        end_to_end_s = timed(lambda: run_jobs(sampler, jobs, args.batch_size, 1, progress=False), device)
    batch_s = sample_s + decode_s + save_s
    full_batch_s = 100 * step_s + decode_s + save_s
    result = {
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "precision": args.precision,
        "config": str(args.config_path),
        "weights": str(args.ckpt_path) if args.ckpt_path else "random",
        "sampler": args.sampler,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "torch_threads": torch.get_num_threads(),
        "build_s": round(build_s, 3),
        "text_s": round(text_s, 5),
        "unet_s": round(unet_s, 5),
        "step_s": round(step_s, 5),
        "loop_overhead_pct": round(100 * (step_s - unet_s) / unet_s, 2),
        "decode_s": round(decode_s, 5),
        "save_s": round(save_s, 5),
        "save_overhead_pct": round(100 * save_s / batch_s, 2),
        "end_to_end_s": round(end_to_end_s, 4),
        "images_per_s": round(args.batch_size / end_to_end_s, 4),
        "images_per_s_at_100_steps": round(args.batch_size / full_batch_s, 4),
    }
    print(json.dumps(result, indent=2))
    save_results(args.out, result)
    return result


if __name__ == "__main__":
    run(parse_args, main)
