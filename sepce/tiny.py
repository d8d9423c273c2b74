"""Write a deterministic tiny random SD-v1-shaped checkpoint in the released CompVis format.

``python -m sepce.tiny [--out models/tiny]`` writes ``model.ckpt`` (``{"state_dict": ..., "global_step": 0}``,
text-encoder keys in the released ``cond_stage_model.transformer.text_model.*`` layout) and a copy of
``configs/tiny/v1-tiny.yaml`` as ``config.yaml``. Same seed → bit-identical file contents. Every parameter is
perturbed with N(0, 0.02²) after initialisation so that zero-initialised layers (``proj_out``, ``out.2``...) do not
hide mistakes in tests.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch
from ldm.checkpoint import build_model, denormalize_keys, load_config

from sepce.io import atomic_path, save_torch
from sepce.paths import REPO_ROOT

TINY_CONFIG = REPO_ROOT / "configs" / "tiny" / "v1-tiny.yaml"
#: The tiny model with a 256-wide text context: SepCE's null-space bases need more than 3 × 77 token dimensions.
TINY_WIDE_CONFIG = REPO_ROOT / "configs" / "tiny" / "v1-tiny-wide.yaml"
TINY_DIR = REPO_ROOT / "models" / "tiny"


def make_tiny_state_dict(config_path: Path = TINY_CONFIG, seed: int = 0, noise_std: float = 0.02) -> dict:
    """Deterministic random weights for the model of ``config_path`` (CPU, float32)."""
    config = load_config(config_path)
    torch.manual_seed(seed)
    model = build_model(config, "cpu")
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * noise_std)
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def write_tiny_checkpoint(
    out_dir: Path = TINY_DIR, config_path: Path = TINY_CONFIG, seed: int = 0, overwrite: bool = False
) -> Path:
    """Write ``out_dir/model.ckpt`` and ``out_dir/config.yaml``; returns the checkpoint path."""
    out_dir = Path(out_dir)
    ckpt = out_dir / "model.ckpt"
    if ckpt.exists() and not overwrite:
        raise FileExistsError(f"{ckpt} already exists; pass --overwrite to replace it")
    sd = denormalize_keys(make_tiny_state_dict(config_path, seed))
    save_torch(ckpt, {"state_dict": sd, "global_step": 0})
    with atomic_path(out_dir / "config.yaml") as tmp:
        shutil.copyfile(config_path, tmp)
    return ckpt


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--out", type=Path, default=TINY_DIR, help="folder for model.ckpt and config.yaml")
    p.add_argument("--config", type=Path, default=TINY_CONFIG, help="CompVis config of the tiny model")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model.ckpt")
    p.add_argument("--if_missing", action="store_true", help="do nothing (exit 0) when model.ckpt exists")
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> Path:
    ckpt = Path(args.out) / "model.ckpt"
    if args.if_missing and ckpt.exists():
        print(f"{ckpt} exists; keeping it")
        return ckpt
    ckpt = write_tiny_checkpoint(args.out, args.config, args.seed, args.overwrite)
    print(f"wrote {ckpt} and {Path(args.out) / 'config.yaml'}")
    return ckpt


if __name__ == "__main__":
    try:
        main(parse_args())
    except (FileExistsError, FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
