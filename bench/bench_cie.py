"""Benchmark: one CiE iteration as released (two full model copies) vs ours (one copy), and the basis computation.

Full-size SD v1.4 with RANDOM weights (``configs/stable-diffusion/v1-inference.yaml``), CPU, fp32, one 512×512
image, measured in one run; each variant runs in its own subprocess so that peak RSS (ru_maxrss) is separate:

* ``released`` — the released layout, emulated: a trained model and a deep-copied frozen original (two full
  copies), CompVis attention arithmetic (materialised softmax(QKᵀ), from ``bench_unet.einsum_attention``), every
  UNet parameter with ``requires_grad`` (CompVis loads them so; only attn2 is in the optimizer), the prompt and
  blank forwards as two separate calls, the frozen original under ``torch.no_grad`` (the benefit of the doubt),
  gradient checkpointing as the config says, Adam without ``zero_grad``.
* ``ours`` — ``train-scripts/CiE.py``'s path: one model copy, the original's outputs with the original attn2
  tensors substituted (``FrozenReference.substituted``), gradients only for attn2, one batched forward for prompt
  and blank (``sepce.methods.cie.cie_objective``), SDPA attention, the shared ``ParameterTrainer``; checkpointing
  per config.
* ``ours-nockpt`` — the same with ``--gradient_checkpointing off`` (faster, more activation memory).

Each iteration includes the VAE encoding of the image, the timestep draw and q_sample. Times are the mean over
iterations after the first (the first is reported separately). Then the basis computation: basic solution sets of
3 concepts ("" + the two others stacked, 231×768 each) by float64 SVD (``sepce.increments``) vs the released
approach, an exact symbolic null space (``sympy.Matrix.nullspace``) of one 77×768 embedding matrix — in a
subprocess with a timeout; skipped with a note when sympy is missing.

    python bench/bench_cie.py                # full size: ~20 GB RAM, both cores, several minutes
    python bench/bench_cie.py --tiny         # tiny config, seconds (smoke test of this script)
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/common.py
from common import GIB, bench_parser, model_config, peak_rss, random_model, run_child, save_results  # noqa: E402

CONCEPTS = ["VanGogh", "Cezanne", "Picasso"]
VARIANTS = ("released", "ours", "ours-nockpt")
TARGET = 0.5
CHECKPOINTING = {"config": None, "on": True, "off": False}


def build(config_path: Path, checkpointing: str) -> torch.nn.Module:
    return random_model(config_path, frozen=False, gradient_checkpointing=CHECKPOINTING[checkpointing])


def draw(model: torch.nn.Module, image_size: int, gen: torch.Generator):
    """The common step: a random image → z (posterior sample × scale_factor), DDIM-bucketed t, x_t."""
    from sepce.training import encode_latents, q_sample, sample_timesteps

    img = torch.rand(1, 3, image_size, image_size, generator=gen) * 2 - 1
    z = encode_latents(model, img, gen)
    _, t = sample_timesteps(50, gen)
    t = torch.tensor([t])
    return q_sample(model, z, t, gen), t


def run_released(config_path: Path, iterations: int, image_size: int, lr: float, reg_beta: float) -> list[float]:
    from bench_unet import einsum_attention
    from ldm.modules.attention import CrossAttention

    CrossAttention.forward = einsum_attention
    model = build(config_path, "config")
    for p in model.model.diffusion_model.parameters():  # CompVis leaves the UNet trainable
        p.requires_grad_(True)
    orig = copy.deepcopy(model)
    model.train()
    params = [p for n, p in model.model.diffusion_model.named_parameters() if "attn2" in n]
    originals = [p for n, p in orig.model.diffusion_model.named_parameters() if "attn2" in n]
    opt = torch.optim.Adam(params, lr=lr)
    gen = torch.Generator().manual_seed(0)
    times = []
    for _ in range(iterations):
        tic = time.perf_counter()
        with torch.no_grad():
            emb_c = model.get_learned_conditioning(["Van Gogh"])
            emb_u = model.get_learned_conditioning([""])
        x, t = draw(model, image_size, gen)
        e_c = model.apply_model(x, t, emb_c)
        e_u = model.apply_model(x, t, emb_u)
        with torch.no_grad():
            o_c = orig.apply_model(x, t, emb_c)
            o_u = orig.apply_model(x, t, emb_u)
        reg = sum((o - p).abs().sum() for o, p in zip(originals, params)) / len(params)
        loss = ((e_c - e_u) * (o_c - o_u)).mean() + reg_beta * reg
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - tic)
    return times


def run_ours(
    config_path: Path, iterations: int, image_size: int, lr: float, reg_beta: float, checkpointing: str
) -> list[float]:
    from sepce.methods.cie import cie_objective
    from sepce.training import FrozenReference, ParameterTrainer, TrainStep, select_parameters

    model = build(config_path, checkpointing)
    params = select_parameters(model, "attn2")
    ref = FrozenReference.substituted(model, params)
    with torch.no_grad():
        cond = model.get_learned_conditioning(["Van Gogh", ""])
    model.train()
    gen = torch.Generator().manual_seed(0)
    starts: list[float] = []
    times: list[float] = []

    def step(i: int) -> TrainStep:
        starts.append(time.perf_counter())
        x, t = draw(model, image_size, gen)
        loss, d, _ = cie_objective(model, ref, x, t, cond, params, ref.originals, reg_beta)
        return TrainStep(loss, {"direction": d.item()})

    def after(i: int, _: TrainStep) -> None:
        times.append(time.perf_counter() - starts[-1])

    ParameterTrainer(params, lr=lr, iterations=iterations, progress=False).fit(step, after)
    return times


def run_basis(config_path: Path) -> dict:
    """SVD bases of 3 concepts (each against "" and the two others) with a random-weight text encoder."""
    from ldm.checkpoint import load_config
    from ldm.util import instantiate_from_config

    from sepce.increments import null_space_basis

    torch.manual_seed(0)
    encoder = instantiate_from_config(load_config(config_path).model.params.cond_stage_config).eval()
    with torch.no_grad():
        emb = {p: e for p, e in zip(["", *CONCEPTS], encoder(["", *CONCEPTS]))}
    tic = time.perf_counter()
    sizes = {}
    for c in CONCEPTS:
        E = torch.cat([emb[p] for p in ["", *CONCEPTS] if p != c])
        sizes[c] = null_space_basis(E).n
    seconds = time.perf_counter() - tic
    return {"svd_s": seconds, "n_c": sizes, "dim": int(emb[""].shape[-1]), "blank": emb[""].tolist()}


def run_symbolic(blank: list) -> dict:
    import sympy

    tic = time.perf_counter()
    space = sympy.Matrix(blank).nullspace()
    return {"symbolic_s": time.perf_counter() - tic, "n": len(space), "shape": [len(blank), len(blank[0])]}


def child(args: argparse.Namespace) -> dict:
    config = Path(args.config_path)
    if args.variant == "released":
        times = run_released(config, args.iterations, args.image_size, args.lr, args.reg_beta)
    elif args.variant in ("ours", "ours-nockpt"):
        ckpt = "off" if args.variant == "ours-nockpt" else "config"
        times = run_ours(config, args.iterations, args.image_size, args.lr, args.reg_beta, ckpt)
    elif args.variant == "basis":
        return run_basis(config)
    else:  # symbolic: the blank embedding comes on stdin
        return run_symbolic(json.loads(sys.stdin.read()))
    later = times[1:] or times
    return {
        "variant": args.variant,
        "first_s": times[0],
        "time_per_iter_s": sum(later) / len(later),
        "peak_rss_bytes": peak_rss(),
        "threads": torch.get_num_threads(),
        "iterations": len(times),
    }


def spawn(args: argparse.Namespace, variant: str, stdin: str = "", timeout: float = None) -> dict:
    argv = [__file__, "--variant", variant, "--config_path", args.config_path, "--iterations", args.iterations]
    return run_child([*argv, "--image_size", args.image_size], f"variant {variant}", stdin, timeout)


def parse_args(argv=None) -> argparse.Namespace:
    p = bench_parser(__doc__, "tiny config and 64 px images (smoke test)")
    p.add_argument("--config_path", type=Path, default=None, help="model config (default: SD v1.4, or tiny)")
    p.add_argument("--image_size", type=int, default=None, help="training image size (default 512, tiny: 64)")
    p.add_argument("--iterations", type=int, default=2, help="CiE iterations per variant (first one is warm-up)")
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS), help="variants to run")
    p.add_argument("--lr", type=float, default=1e-6, help="Adam learning rate (the seed command's)")
    p.add_argument("--reg_beta", type=float, default=3e-5, help="L1 regulariser weight (the seed command's)")
    p.add_argument("--symbolic_timeout", type=float, default=900, help="seconds allowed for the sympy null space")
    p.add_argument("--variant", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.config_path = model_config(args.tiny, args.config_path)
    if args.image_size is None:
        args.image_size = 64 if args.tiny else 512
    return args


def main(args: argparse.Namespace) -> dict:
    if args.variant:
        print(json.dumps(child(args)))
        return {}
    results = {v: spawn(args, v) for v in args.variants}
    basis = spawn(args, "basis")
    blank = basis.pop("blank")
    try:
        import sympy  # noqa: F401

        try:
            basis.update(spawn(args, "symbolic", json.dumps(blank), timeout=args.symbolic_timeout))
        except subprocess.TimeoutExpired:
            basis["symbolic_s"] = f"> {args.symbolic_timeout:.0f} (timed out)"
    except ImportError:
        basis["symbolic_s"] = "sympy not installed: symbolic null space not timed"
    results["basis"] = basis

    ref = results.get("released")
    print(
        f"CiE iteration: {Path(args.config_path).name} (random weights), {args.image_size} px, CPU fp32, "
        f"{next(iter(results.values()))['threads']} threads, mean of iterations 2..{args.iterations}"
    )
    print(
        f"{'variant':14}{'first [s]':>11}{'time/iter [s]':>15}{'peak RSS [GiB]':>16}{'time ratio':>12}{'mem ratio':>11}"
    )
    for v in args.variants:
        r = results[v]
        tr = f"{r['time_per_iter_s'] / ref['time_per_iter_s']:.2f}" if ref else "-"
        mr = f"{r['peak_rss_bytes'] / ref['peak_rss_bytes']:.2f}" if ref else "-"
        print(
            f"{v:14}{r['first_s']:11.2f}{r['time_per_iter_s']:15.2f}{r['peak_rss_bytes'] / GIB:16.2f}{tr:>12}{mr:>11}"
        )
    if ref:
        print(f"targets: ours/released <= {TARGET} in time per iteration and in peak memory")
    sym = basis["symbolic_s"]
    print(
        f"basis, 3 concepts by float64 SVD: {basis['svd_s'] * 1000:.1f} ms in all (n_c = {basis['n_c']}, "
        f"D = {basis['dim']})"
    )
    if isinstance(sym, float):
        print(
            f"basis, one 77x{basis['dim']} symbolic null space (sympy, as released): {sym:.2f} s "
            f"(n = {basis['n']}); SVD for all 3 concepts is {sym / basis['svd_s']:.0f}x faster"
        )
    else:
        print(f"basis, symbolic null space: {sym}")
    return save_results(args.json, results)


if __name__ == "__main__":
    main(parse_args())
