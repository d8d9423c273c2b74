"""Train the concept-world model: a small SD-v1-format latent diffusion model of the procedural world.

    python train-scripts/train-world-model.py --output_dir models/world-train --export assets/world

Phase 1 trains the KL autoencoder (f=4), phase 2 the UNet with ``LatentDiffusion.p_losses`` on captions drawn by
``sepce.world.sample_prompt`` (see ``sepce/world/model.py``). Progress bars show both phases; ``state.pt`` in the
run folder is written atomically every ``--checkpoint_every`` steps, so an interrupted run (Ctrl-C finishes the
current step, saves and exits) continues where it stopped when the same command is run again. At the end the run
folder holds ``model.ckpt`` (float16 CompVis checkpoint), ``config.yaml``, ``samples.png``, ``losses.csv``,
``summary.json``; ``--export DIR`` copies the checkpoint and config there (the shipped model is
``assets/world/``).
"""

from __future__ import annotations

import argparse
import json
import resource
import signal
from pathlib import Path
from typing import Optional, Sequence

import torch

from sepce.cli import add_quiet, parser, run, show_progress
from sepce.io import write_json
from sepce.paths import MODELS_DIR
from sepce.world.model import (
    STATE_FILE,
    WORLD_CONFIG,
    WorldTrainer,
    WorldTrainSettings,
    export_model,
    load_state,
    write_sample_grid,
    write_summary,
)

DEFAULTS = WorldTrainSettings()


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = parser(__doc__)
    p.add_argument("--config_path", type=Path, default=WORLD_CONFIG, help="CompVis config of the world model")
    p.add_argument("--output_dir", type=Path, default=MODELS_DIR / "world-train", help="run folder (resumable)")
    p.add_argument("--export", type=Path, default=None, help="also copy model.ckpt and config.yaml into this folder")
    p.add_argument("--overwrite", action="store_true", help="restart a run folder made with other settings")
    p.add_argument(
        "--threads",
        type=int,
        default=2,
        help="torch CPU threads (1 avoids thread-barrier stalls when other jobs share the cores)",
    )
    p.add_argument("--seed", type=int, default=DEFAULTS.seed, help="seed of weights, data, captions and noise")
    p.add_argument("--pool_images", type=int, default=DEFAULTS.pool_images, help="rendered training images")
    p.add_argument("--vae_steps", type=int, default=DEFAULTS.vae_steps, help="autoencoder training steps")
    p.add_argument("--vae_batch_size", type=int, default=DEFAULTS.vae_batch_size, help="autoencoder batch size")
    p.add_argument("--vae_lr", type=float, default=DEFAULTS.vae_lr, help="autoencoder AdamW learning rate")
    p.add_argument("--vae_crop", type=int, default=DEFAULTS.vae_crop, help="autoencoder training crop (pixels)")
    p.add_argument("--kl_weight", type=float, default=DEFAULTS.kl_weight, help="weight of the per-pixel KL term")
    p.add_argument("--steps", type=int, default=DEFAULTS.steps, help="UNet training steps")
    p.add_argument("--batch_size", type=int, default=DEFAULTS.batch_size, help="UNet batch size")
    p.add_argument("--lr", type=float, default=DEFAULTS.lr, help="UNet AdamW peak learning rate")
    p.add_argument("--warmup", type=int, default=DEFAULTS.warmup, help="linear warm-up steps (UNet)")
    p.add_argument(
        "--min_lr_ratio", type=float, default=DEFAULTS.min_lr_ratio, help="final/peak learning rate (cosine)"
    )
    p.add_argument("--weight_decay", type=float, default=DEFAULTS.weight_decay, help="UNet AdamW weight decay")
    p.add_argument("--ema_decay", type=float, default=DEFAULTS.ema_decay, help="EMA decay of the exported UNet")
    p.add_argument(
        "--checkpoint_every", type=int, default=DEFAULTS.checkpoint_every, help="steps between state.pt saves"
    )
    p.add_argument(
        "--init_from",
        type=str,
        default=DEFAULTS.init_from,
        help="a finished run folder to continue from (its autoencoder and UNet; no autoencoder phase)",
    )
    p.add_argument(
        "--finish_at",
        type=int,
        default=None,
        help="end the UNet phase after this many steps and export (the learning-rate schedule still spans --steps); "
        "how a resumed run is cut short on purpose",
    )
    p.add_argument(
        "--style_weights",
        default=DEFAULTS.style_weights,
        help="draw the UNet's training images of some styles more often, e.g. 'checker=3,waves=1.5' (styles the "
        "model draws worst; the others weigh 1)",
    )
    p.add_argument("--grid_steps", type=int, default=50, help="DDIM steps of samples.png")
    p.add_argument("--grid_guidance", type=float, default=5.0, help="guidance scale of samples.png")
    add_quiet(p)
    p.add_argument("--no_progress", dest="quiet", action="store_true", help="same as --quiet")
    return p.parse_args(argv)


def settings_of(args: argparse.Namespace) -> WorldTrainSettings:
    names = WorldTrainSettings.__dataclass_fields__
    return WorldTrainSettings(**{k: getattr(args, k) for k in names}).validate()


def main(args: argparse.Namespace) -> dict:
    settings = settings_of(args)
    if args.threads < 1:
        raise ValueError(f"--threads {args.threads}: expected a positive integer")
    if not args.config_path.is_file():
        raise FileNotFoundError(f"config {args.config_path} does not exist (--config_path)")
    out = args.output_dir
    state_path = out / STATE_FILE
    if state_path.is_file():
        # settings added since the run started read as their defaults
        stored = WorldTrainSettings.from_dict(load_state(state_path).settings).to_dict()
        if stored != settings.to_dict():
            if not args.overwrite:
                changed = {k: (stored.get(k), v) for k, v in settings.to_dict().items() if stored.get(k) != v}
                raise FileExistsError(
                    f"{out} holds a run with other settings ({changed}); run the same command to resume, or pass "
                    "--overwrite to restart"
                )
            state_path.unlink()
    elif out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise FileExistsError(f"--output_dir {out} is not empty and holds no {STATE_FILE}; pass --overwrite")
    if args.export is not None and (args.export / "model.ckpt").exists() and not args.overwrite:
        raise FileExistsError(f"{args.export / 'model.ckpt'} exists; pass --overwrite to replace it")
    torch.set_num_threads(args.threads)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "args.json", {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()})

    stop = {"asked": False}

    def on_sigint(signum, frame):
        stop["asked"] = True

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        trainer = WorldTrainer(
            out, settings, args.config_path, show_progress(args.quiet), lambda: stop["asked"], args.finish_at
        )
        finished = trainer.run()
    finally:
        signal.signal(signal.SIGINT, previous)
    if not finished:
        print(f"interrupted at {trainer.state.phase} step {trainer.state.step}; run the same command to resume")
        raise SystemExit(130)
    model = trainer.model
    total_steps = settings.vae_steps + settings.steps
    ckpt, config = export_model(model, args.config_path, out, total_steps)
    grid = write_sample_grid(
        model, out / "samples.png", sampler="ddim", steps=args.grid_steps, guidance=args.grid_guidance
    )
    extra = {
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "checkpoint_bytes": ckpt.stat().st_size,
    }
    result = json.loads(write_summary(trainer, extra).read_text())
    if args.export is not None:
        export_model(model, args.config_path, args.export, total_steps)
    print(
        f"trained in {result['wall_time_s']} s (scale_factor {result['scale_factor']:.4f}); wrote {ckpt}, {config}, "
        f"{grid}" + (f"; exported to {args.export}" if args.export is not None else "")
    )
    return result


if __name__ == "__main__":
    run(parse_args, main)
