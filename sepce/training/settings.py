"""The flags every training script takes and the validated settings they become (docs/method.md, "The common
training step").

* :func:`training_parser` / :func:`add_common_args` — the flags of every training script (``--prompt``, ``--lr``,
  ``--iterations``/``--iter_break``, ``--ddim_steps``, ``--image_size``, ``--data_dir``, ``--seed``, ``--zero_grad``,
  ``--gradient_checkpointing``, ``--precision``) and the run flags of :func:`add_run_args` (``--devices``,
  ``--ckpt_path``, ``--config_path``, ``--output_dir``, ``--overwrite``, ``--save_full``, ``--quiet``), which UCE's
  closed form takes alone.
* :func:`settings_from_args` turns them, once, into a validated :class:`TrainingSettings` — the only place that
  reads those flags off an ``argparse.Namespace``.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from sepce.cli import EXIT_HELP, add_precision, add_quiet, parse_devices, parse_precision, parser, show_progress
from sepce.modeling import check_model_files
from sepce.paths import DATA_DIR, DEFAULT_CKPT, DEFAULT_CONFIG

FULL_FORMATS = ("ckpt", "safetensors")
GRADIENT_CHECKPOINTING = {"config": None, "on": True, "off": False}


def add_common_args(
    parser: argparse.ArgumentParser,
    *,
    lr: float,
    iterations: int,
    prompt: bool = True,
    prompt_default: Optional[str] = None,
    images: bool = True,
    zero_grad_flag: bool = True,
    devices: str = "0,1",
) -> argparse.ArgumentParser:
    """Add the flags shared by every training script to ``parser`` (see the module docstring), the run flags of
    :func:`add_run_args` included.

    ``prompt=False`` leaves ``--prompt`` out (SepCE adds ``--prompts``, ESD its own ``--prompt``); ``images=False``
    leaves ``--data_dir`` out (ESD samples its own latents); ``zero_grad_flag=False`` leaves ``--zero_grad`` out
    (for methods that always zero their gradients, like ESD). ``--iterations`` and ``--iter_break`` are two
    spellings of one flag (``args.iterations``)."""
    if prompt:
        parser.add_argument(
            "--prompt",
            type=str,
            required=prompt_default is None,
            default=prompt_default,
            help="concept prompt to erase; training images are read from <data_dir>/<prompt>/",
        )
    parser.add_argument("--lr", type=float, default=lr, help="learning rate")
    parser.add_argument(
        "--iterations",
        "--iter_break",
        dest="iterations",
        type=int,
        default=iterations,
        help="maximum number of iterations (both spellings are accepted)",
    )
    parser.add_argument(
        "--ddim_steps",
        type=int,
        default=50,
        help="DDIM steps S of the timestep draw: t_enc ~ U{0..S-1}, DDPM t in "
        "[round(t_enc/S*1000), round((t_enc+1)/S*1000))",
    )
    parser.add_argument(
        "--image_size",
        type=int,
        default=512,
        help="training images are resized (shorter side) and centre-cropped to this size"
        if images
        else "size of the images whose latents (image_size/8) are sampled: 512 for SD v1.4, 64 for the tiny model",
    )
    if images:
        parser.add_argument(
            "--data_dir",
            type=Path,
            default=DATA_DIR,
            help="folder holding one image folder per concept prompt: <data_dir>/<prompt>/",
        )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of image choice, timesteps and noise (the released scripts were unseeded)",
    )
    if zero_grad_flag:
        parser.add_argument(
            "--zero_grad",
            action="store_true",
            help="zero the gradients every iteration; by default they ACCUMULATE across iterations, "
            "as in the released scripts, which never called zero_grad()",
        )
    parser.add_argument(
        "--gradient_checkpointing",
        choices=tuple(GRADIENT_CHECKPOINTING),
        default="config",
        help="recompute activations in backward (less memory, slower); 'config' keeps the "
        "model config's use_checkpoint (on for v1-inference.yaml)",
    )
    add_precision(parser, help="autocast dtype of forward passes; weights and optimizer state stay fp32")
    return add_run_args(parser, devices=devices)


def training_parser(description: Optional[str], **common: Any) -> argparse.ArgumentParser:
    """A training script's parser: :func:`sepce.cli.parser` with the exit-status epilog
    (:data:`sepce.cli.EXIT_HELP`) and the flags of :func:`add_common_args` (``common`` are its keywords)."""
    return add_common_args(parser(description, epilog=EXIT_HELP), **common)


def add_run_args(
    parser: argparse.ArgumentParser,
    *,
    devices: str = "0,1",
    devices_help: str = "'0,1': trained model on GPU 0, frozen original on GPU 1 (as released); one device "
    "('0', 'cuda:0', 'cpu'): one model copy, the original's outputs from the same weights",
) -> argparse.ArgumentParser:
    """Add the flags of a run's model and run folder to ``parser``: ``--devices``, ``--ckpt_path``,
    ``--config_path``, ``--output_dir``, ``--overwrite``, ``--save_full`` and ``--quiet`` — every erasure script
    takes them, the closed-form UCE (no optimiser, no training images) only them."""
    parser.add_argument("--devices", type=str, default=devices, help=devices_help)
    parser.add_argument("--ckpt_path", type=Path, default=DEFAULT_CKPT, help="base CompVis checkpoint")
    parser.add_argument("--config_path", type=Path, default=DEFAULT_CONFIG, help="CompVis model config (YAML)")
    parser.add_argument(
        "--output_dir",
        type=Path,
        default=None,
        help="run folder (default: <repository>/models/<run name>, e.g. models/CiE-VanGogh, whatever the working "
        "directory); a non-empty folder needs --overwrite",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="reuse a non-empty --output_dir, replacing its run files"
    )
    parser.add_argument(
        "--save_full",
        nargs="?",
        const="ckpt",
        default=None,
        choices=FULL_FORMATS,
        help="also write full CompVis checkpoints (several GB each) beside erasure.safetensors, as .ckpt (the "
        "flag alone) or .safetensors (--save_full safetensors)",
    )
    add_quiet(parser)
    return parser


@dataclass(frozen=True)
class TrainingSettings:
    """The settings every training method shares, validated on construction (one-line ``ValueError`` /
    ``FileNotFoundError`` naming the flag). Method-specific settings travel separately (plain arguments or the
    method's own dataclass, e.g. :class:`sepce.methods.sepce.SepCESettings`).

    ``output_dir`` None means the default run folder ``MODELS_DIR / run_name(method, concepts[, suffix])``;
    ``lr`` None means the method has no optimiser (UCE's closed form: ``TrainingSession.trainer`` refuses it and
    the record leaves ``lr`` out); ``data_dir`` None means the method reads no training images;
    ``gradient_checkpointing`` None keeps the config's ``use_checkpoint``; ``save_full`` is None or the full
    checkpoints' format (:data:`FULL_FORMATS`); ``command_line`` is what ``args.json`` records (the flags as
    parsed)."""

    devices: tuple[torch.device, ...]
    lr: Optional[float] = None
    iterations: int = 1
    ckpt_path: Path = DEFAULT_CKPT
    config_path: Path = DEFAULT_CONFIG
    data_dir: Optional[Path] = DATA_DIR
    output_dir: Optional[Path] = None
    ddim_steps: int = 50
    image_size: int = 512
    seed: int = 0
    zero_grad: bool = False
    save_full: Optional[str] = None
    gradient_checkpointing: Optional[bool] = None
    precision: str = "fp32"
    overwrite: bool = False
    progress: bool = True
    command_line: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.lr is not None:
            check_positive("--lr", self.lr)
        check_positive("--iterations", self.iterations, integer=True)
        check_positive("--image_size", self.image_size, integer=True)
        if (
            isinstance(self.ddim_steps, bool)
            or not isinstance(self.ddim_steps, int)
            or not 1 <= self.ddim_steps <= 1000
        ):
            raise ValueError(f"--ddim_steps {self.ddim_steps!r}: expected an integer in 1..1000")
        if self.image_size % 8:
            raise ValueError(f"--image_size {self.image_size}: expected a multiple of 8 (latents are 8x smaller)")
        if not 1 <= len(self.devices) <= 2:
            raise ValueError(f"devices {list(self.devices)}: expected one or two devices")
        if self.save_full is not None and self.save_full not in FULL_FORMATS:
            raise ValueError(f"--save_full {self.save_full!r}: expected one of {', '.join(FULL_FORMATS)}")
        parse_precision(self.precision)
        check_model_files(self.config_path, self.ckpt_path)

    @property
    def dtype(self) -> torch.dtype:
        """Autocast dtype of the forward passes (``precision``)."""
        return parse_precision(self.precision)


def settings_from_args(args: argparse.Namespace) -> TrainingSettings:
    """The :class:`TrainingSettings` of a script's parsed flags (:func:`add_common_args`, or :func:`add_run_args`
    alone), validated — the one place that reads them off the ``Namespace``. Flags a script left out take their
    neutral value (no ``--lr``: no optimiser, one iteration, the defaults of the training step; no ``--data_dir``:
    no training images; no ``--zero_grad``: accumulate)."""
    data_dir = getattr(args, "data_dir", None)
    output_dir = args.output_dir
    training = {}
    if hasattr(args, "lr"):  # the training flags of add_common_args
        training = dict(
            lr=args.lr,
            iterations=args.iterations,
            ddim_steps=args.ddim_steps,
            image_size=args.image_size,
            seed=args.seed,
            gradient_checkpointing=GRADIENT_CHECKPOINTING[args.gradient_checkpointing],
            precision=args.precision,
        )
    return TrainingSettings(
        devices=tuple(parse_devices(args.devices)),
        ckpt_path=Path(args.ckpt_path),
        config_path=Path(args.config_path),
        data_dir=None if data_dir is None else Path(data_dir),
        output_dir=None if output_dir is None else Path(output_dir),
        zero_grad=bool(getattr(args, "zero_grad", False)),
        save_full=args.save_full,
        overwrite=args.overwrite,
        progress=show_progress(args.quiet),
        command_line=dict(vars(args)),
        **training,
    )


def check_positive(name: str, value: float, integer: bool = False) -> None:
    if integer and (not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} {value!r}: expected a positive integer")
    if not integer and not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} {value!r}: expected a positive number")
