"""Benchmark: SD v1.4 UNet forward and forward+backward, this stack vs the original attention arithmetic.

Full SD v1.4 size (random weights, one 4×64×64 latent, 77×768 context, fp32, CPU by default). The reference is the
same UNet with attention computed the way the original CompVis code does it — a materialised softmax(QKᵀ)V via
einsum — so the ratio isolates the attention implementation. Each variant runs in its own subprocess so that peak
memory (ru_maxrss) is measured separately; the printed ratios are ours / reference.

    python bench/bench_unet.py                 # full size, CPU (about 3 minutes on 2 cores)
    python bench/bench_unet.py --tiny          # the tiny config, seconds (smoke test)
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/common.py
from common import GIB, bench_parser, model_config, peak_rss, run_child, save_results  # noqa: E402


def einsum_attention(self, x, context=None, mask=None):
    """CompVis ``CrossAttention.forward``: similarity matrix materialised, softmax, einsum with V."""
    h = self.heads
    context = x if context is None else context
    q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
    if self.kv_delta is not None:
        dk, dv = self.kv_delta(context)
        k, v = k + dk, v + dv
    b, n, _ = q.shape
    q, k, v = (
        t.reshape(t.shape[0], t.shape[1], h, -1).permute(0, 2, 1, 3).reshape(t.shape[0] * h, t.shape[1], -1)
        for t in (q, k, v)
    )
    sim = torch.einsum("b i d, b j d -> b i j", q, k) * self.scale
    attn = sim.softmax(dim=-1)
    out = torch.einsum("b i j, b j d -> b i d", attn, v)
    out = out.reshape(b, h, n, -1).permute(0, 2, 1, 3).reshape(b, n, -1)
    return self.to_out(out)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def run_variant(variant: str, config_path: str, repeats: int, checkpointing: bool, device: str) -> dict:
    from ldm.checkpoint import load_config
    from ldm.modules.attention import CrossAttention
    from ldm.util import instantiate_from_config

    if variant == "reference":
        CrossAttention.forward = einsum_attention
    cfg = load_config(config_path).model.params.unet_config
    torch.manual_seed(0)
    unet = instantiate_from_config(cfg).to(device)
    unet.set_gradient_checkpointing(checkpointing)
    size = 64 if cfg.params.model_channels >= 320 else 8
    x = torch.randn(1, cfg.params.in_channels, size, size, device=device)
    t = torch.tensor([500], device=device)
    ctx = torch.randn(1, 77, cfg.params.context_dim, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    base_rss = rss_bytes()
    with torch.no_grad():
        unet(x, t, context=ctx)  # warm-up
        sync()
        start = time.perf_counter()
        for _ in range(repeats):
            unet(x, t, context=ctx)
        sync()
        forward = (time.perf_counter() - start) / repeats
    fwd_peak = peak_rss()
    unet.train()
    start = time.perf_counter()
    for _ in range(repeats):
        unet.zero_grad(set_to_none=True)
        unet(x, t, context=ctx).square().mean().backward()
    sync()
    backward = (time.perf_counter() - start) / repeats
    peak = peak_rss()
    return {
        "variant": variant,
        "forward_s": forward,
        "forward_backward_s": backward,
        "weights_rss": base_rss,
        "forward_peak_rss": fwd_peak,
        "peak_rss": peak,
        "threads": torch.get_num_threads(),
    }


def parse_args(argv=None) -> argparse.Namespace:
    p = bench_parser(__doc__, "use configs/tiny/v1-tiny.yaml (smoke test)")
    p.add_argument("--config_path", type=str, default=None, help="UNet config (default: SD v1.4 or tiny)")
    p.add_argument("--repeats", type=int, default=1, help="timed repetitions per measurement")
    p.add_argument(
        "--checkpointing",
        action="store_true",
        help="gradient checkpointing in the forward+backward (the config's setting); off by default",
    )
    p.add_argument("--device", type=str, default="cpu", help="device to run on")
    p.add_argument("--variant", choices=["ours", "reference"], default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> dict:
    config = str(model_config(args.tiny, args.config_path))
    if args.variant:
        print(json.dumps(run_variant(args.variant, config, args.repeats, args.checkpointing, args.device)))
        return {}
    results = {}
    for variant in ("reference", "ours"):
        argv = [__file__, "--variant", variant, "--config_path", config, "--repeats", args.repeats]
        argv += ["--device", args.device] + (["--checkpointing"] if args.checkpointing else [])
        results[variant] = run_child(argv, f"variant {variant}")
    ref, ours = results["reference"], results["ours"]
    print(
        f"UNet {Path(config).name}, device {args.device}, {ours['threads']} threads, checkpointing "
        f"{'on' if args.checkpointing else 'off'}"
    )
    print(f"{'':24}{'reference (einsum)':>20}{'ours (SDPA)':>14}{'ratio':>8}")
    for key, label in (("forward_s", "forward [s]"), ("forward_backward_s", "forward+backward [s]")):
        print(f"{label:24}{ref[key]:20.2f}{ours[key]:14.2f}{ours[key] / ref[key]:8.2f}")
    for key, label in (
        ("forward_peak_rss", "forward peak RSS [GiB]"),
        ("peak_rss", "fwd+bwd peak RSS [GiB]"),
    ):
        print(f"{label:24}{ref[key] / GIB:20.2f}{ours[key] / GIB:14.2f}{ours[key] / ref[key]:8.2f}")
    act_ref = ref["peak_rss"] - ref["weights_rss"]
    act_ours = ours["peak_rss"] - ours["weights_rss"]
    print(f"{'fwd+bwd peak above weights':24}{act_ref / GIB:20.2f}{act_ours / GIB:14.2f}{act_ours / act_ref:8.2f}")
    return save_results(args.json, results)


if __name__ == "__main__":
    main(parse_args())
