"""Shared training harness of the erasure methods (CiE, SepCE, ESD, Forget-Me-Not, Ablating Concepts).

Everything the five training scripts have in common lives here, so each script only holds its flags and its loss:

* :func:`training_parser` / :func:`add_common_args` — the flags every training script takes (``--prompt``, ``--lr``,
  ``--iterations``/``--iter_break``, ``--ddim_steps``, ``--image_size``, ``--data_dir``, ``--seed``, ``--zero_grad``,
  ``--gradient_checkpointing``, ``--precision``) and the run flags of :func:`add_run_args` (``--devices``,
  ``--ckpt_path``, ``--config_path``, ``--output_dir``, ``--overwrite``, ``--save_full``, ``--quiet``), which UCE's
  closed form takes alone; :func:`settings_from_args` turns them, once, into a validated :class:`TrainingSettings`
  — the only place that reads those flags off an ``argparse.Namespace``.
* :class:`TrainingSession` — checks the image folders and the output folder BEFORE any model is loaded (bad input →
  one-line ``ValueError``/``FileNotFoundError``/``FileExistsError``), then loads the model, draws the common
  training step of docs/method.md (one image per iteration, Resize+CenterCrop, [-1, 1]; ``z`` = posterior sample ×
  scale_factor; ``t_enc ~ U{0..S-1}``, DDPM ``t ~ U[round(t_enc/S·T), round((t_enc+1)/S·T))``;
  ``x_t = q_sample(z, t)``, Ho et al. 2020 Eq. 4), builds the frozen original (:class:`FrozenReference`) and ends
  every run the same way (:meth:`TrainingSession.finish`: record, optional full checkpoints, one summary schema).
* :func:`select_parameters` — trained parameters by UNet name rule (``attn2`` by default, ``attn2_kv`` for SepCE,
  or any callable such as ESD's train methods in :mod:`sepce.esd_params`).
* :class:`ParameterTrainer` — the optimisation loop over a set of tensors (Adam; gradient ACCUMULATION as in the
  released CiE/SepCE/FMN/AC scripts unless ``zero_grad``; a non-finite loss or gradient stops the run and keeps
  the last good state; Ctrl-C stops cleanly) with a tqdm bar, recording into a :class:`Run`.
* :class:`Run` — the run folder: ``args.json``, ``losses.csv`` (one row per iteration, flushed as it goes),
  ``summary.json`` (:data:`SUMMARY_KEYS`), ``loss.png``, ``erasure.safetensors`` (:mod:`sepce.records`) and
  optional full CompVis checkpoints.

All randomness (image choice, timesteps, posterior and forward-process noise) comes from ``--seed``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import itertools
import json
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import torch

from sepce import records
from sepce.cli import EXIT_HELP, add_precision, add_quiet, parse_devices, parse_precision, parser, show_progress
from sepce.io import atomic_path, write_json
from sepce.modeling import check_model_files, load_model, unet_of
from sepce.paths import DATA_DIR, DEFAULT_CKPT, DEFAULT_CONFIG, MODELS_DIR, run_name

log = logging.getLogger(__name__)

UNET_PREFIX = "model.diffusion_model."
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
RUN_FILES = ("args.json", "losses.csv", "summary.json", "loss.png", records.RECORD_NAME)
FULL_FORMATS = ("ckpt", "safetensors")
GRADIENT_CHECKPOINTING = {"config": None, "on": True, "off": False}
#: The keys of every run's ``summary.json``, whatever the method (:meth:`TrainingSession.finish`).
SUMMARY_KEYS = (
    "method",
    "concepts",
    "iterations",
    "stop_reason",
    "ok",
    "reference",
    "devices",
    "data",
    "settings",
    "output_dir",
    "wall_time_s",
    "cpu_peak_rss_bytes",
    "cuda_max_allocated_bytes",
    "files",
)

#: Parameter rules over UNet-relative names (``input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight``).
PARAMETER_RULES: dict[str, Callable[[str], bool]] = {
    "attn2": lambda n: "attn2" in n,
    "attn2_kv": lambda n: ".attn2.to_k." in n or ".attn2.to_v." in n,
}


# ------------------------------------------------------------------------------------------------ arguments
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
    method's own dataclass, e.g. :class:`sepce.sepce_training.SepCESettings`).

    ``output_dir`` None means the default run folder ``MODELS_DIR / run_name(method, concepts[, suffix])``;
    ``lr`` None means the method has no optimiser (UCE's closed form: :meth:`TrainingSession.trainer` refuses it
    and the record leaves ``lr`` out); ``data_dir`` None means the method reads no training images;
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


def check_output_dir(path: Path, overwrite: bool) -> None:
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"--output_dir {path} exists and is not a folder")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise FileExistsError(
            f"--output_dir {path} is not empty; refusing to overwrite a run (pass --overwrite "
            f"or choose another --output_dir)"
        )


def check_positive(name: str, value: float, integer: bool = False) -> None:
    if integer and (not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} {value!r}: expected a positive integer")
    if not integer and not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} {value!r}: expected a positive number")


# ------------------------------------------------------------------------------------------------ images
class ImageFolder:
    """The training images of one concept: every readable image in ``folder``, one drawn per iteration.

    Construction validates the folder (missing, empty, or no readable image → one-line error) without touching
    a model; unreadable files are skipped and counted (``skipped``)."""

    def __init__(self, folder: Union[str, Path], image_size: int = 512):
        from PIL import Image

        self.folder = Path(folder)
        self.image_size = image_size
        if not self.folder.is_dir():
            raise FileNotFoundError(
                f"image folder {self.folder} does not exist: expected images the original model "
                f"generated for this prompt (eval-scripts/generate-data.py) in <data_dir>/<prompt>/"
            )
        candidates = sorted(p for p in self.folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not candidates:
            raise ValueError(f"image folder {self.folder} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
        self.files: list[Path] = []
        self.skipped: list[Path] = []
        for p in candidates:
            try:
                with Image.open(p) as im:
                    im.verify()
                self.files.append(p)
            except Exception:  # noqa: BLE001 - any decoder error means "unreadable"
                self.skipped.append(p)
        if self.skipped:
            log.warning(
                "%s: skipped %d unreadable image(s) of %d (first: %s)",
                self.folder,
                len(self.skipped),
                len(candidates),
                self.skipped[0].name,
            )
        if not self.files:
            raise ValueError(f"image folder {self.folder}: none of its {len(candidates)} image file(s) is readable")
        from torchvision import transforms

        self.transform = transforms.Compose(
            [transforms.Resize(image_size), transforms.CenterCrop(image_size), transforms.ToTensor()]
        )

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> torch.Tensor:
        """Image ``index`` as a 1×3×S×S tensor in [-1, 1]."""
        from PIL import Image

        with Image.open(self.files[index]) as im:
            x = self.transform(im.convert("RGB"))
        return (2.0 * x - 1.0).unsqueeze(0)

    def sample(self, generator: torch.Generator) -> torch.Tensor:
        """A uniformly drawn image; files that fail to decode now are dropped (and counted) and another is drawn."""
        while self.files:
            index = int(torch.randint(len(self.files), (1,), generator=generator))
            try:
                return self.load(index)
            except Exception:  # noqa: BLE001
                bad = self.files.pop(index)
                self.skipped.append(bad)
                log.warning("skipping unreadable image %s", bad)
        raise ValueError(f"image folder {self.folder}: no readable image is left")


# ------------------------------------------------------------------------------------------------ diffusion step
def sample_timesteps(ddim_steps: int, generator: torch.Generator, num_timesteps: int = 1000) -> tuple[int, int]:
    """``(t_enc, t)``: t_enc ~ U{0..S-1}, then the DDPM step t ~ U[round(t_enc/S·T), round((t_enc+1)/S·T)) — the
    released scripts' draw, uniform over 0..T-1 overall (docs/method.md, common step 3)."""
    t_enc = int(torch.randint(ddim_steps, (1,), generator=generator))
    lo = round(t_enc / ddim_steps * num_timesteps)
    hi = round((t_enc + 1) / ddim_steps * num_timesteps)
    return t_enc, int(torch.randint(lo, hi, (1,), generator=generator))


@torch.no_grad()
def encode_latents(model: torch.nn.Module, images: torch.Tensor, generator: Optional[torch.Generator] = None):
    """``get_first_stage_encoding(encode_first_stage(x))``: a posterior sample × scale_factor, without gradients."""
    first = next(model.first_stage_model.parameters())
    posterior = model.encode_first_stage(images.to(first.device, first.dtype))
    return model.get_first_stage_encoding(posterior, generator=generator).detach()


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(unet_of(model).parameters()).device


def q_sample(model: torch.nn.Module, z: torch.Tensor, t: torch.Tensor, generator: Optional[torch.Generator] = None):
    """x_t = √ᾱ_t z + √(1−ᾱ_t) ε with fresh ε (Ho et al. 2020, Eq. 4)."""
    noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
    return model.q_sample(z, t.to(z.device), noise=noise)


# ------------------------------------------------------------------------------------------------ parameters
def select_parameters(
    model: torch.nn.Module, rule: Union[str, Callable[[str], bool]] = "attn2"
) -> dict[str, torch.nn.Parameter]:
    """The UNet parameters whose UNet-relative name satisfies ``rule`` (a :data:`PARAMETER_RULES` key or a
    callable name → bool), keyed by full state-dict name; they get ``requires_grad=True`` and EVERY other
    parameter of ``model`` gets ``requires_grad=False`` (so backward computes no unused weight gradients)."""
    fn = PARAMETER_RULES.get(rule) if isinstance(rule, str) else rule
    if fn is None:
        raise ValueError(f"parameter rule {rule!r}: expected one of {sorted(PARAMETER_RULES)} or a callable")
    chosen: dict[str, torch.nn.Parameter] = {}
    for name, p in model.named_parameters():
        take = name.startswith(UNET_PREFIX) and bool(fn(name[len(UNET_PREFIX) :]))
        p.requires_grad_(take)
        if take:
            chosen[name] = p
    if not chosen:
        raise ValueError(f"parameter rule {rule!r} selects no UNet parameter")
    return chosen


# ------------------------------------------------------------------------------------------------ frozen original
class FrozenReference:
    """ε of the frozen ORIGINAL model, without gradients, returned on the trained model's device.

    * :meth:`substituted` — one model copy: the trained model evaluated with the original values of its trained
      tensors substituted (``torch.func.functional_call``), so only those tensors are stored twice.
    * :meth:`copy` — a separate frozen model (the released two-device layout: ``--devices 0,1``).
    * :meth:`switched_off` — one model copy whose trained quantities are switched off inside a context manager
      (SepCE: increments off).

    ``originals`` holds θ_orig of the trained tensors on the trained model's device (for the L1 regulariser)."""

    def __init__(
        self,
        fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
        kind: str,
        originals: Optional[dict[str, torch.Tensor]] = None,
    ):
        self._fn = fn
        self.kind = kind
        self.originals = originals or {}

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self._fn(x, t, cond).to(x.device)

    @classmethod
    def substituted(cls, model: torch.nn.Module, trained: Mapping[str, torch.Tensor]) -> FrozenReference:
        originals = {k: v.detach().clone() for k, v in trained.items()}
        wrapper = model.model  # DiffusionWrapper: forward(x, t, c_crossattn=[...])
        prefix = "model."
        subs = {k[len(prefix) :]: v for k, v in originals.items()}
        key = "c_concat" if wrapper.conditioning_key == "concat" else "c_crossattn"

        def fn(x, t, cond):
            return torch.func.functional_call(wrapper, subs, (x, t), {key: [cond]})

        return cls(fn, "substituted", originals)

    @classmethod
    def copy(cls, frozen: torch.nn.Module, trained: Mapping[str, torch.Tensor]) -> FrozenReference:
        device = _device_of(frozen)
        params = dict(frozen.named_parameters())
        originals = {k: params[k].detach().to(v.device, copy=True) for k, v in trained.items()}

        def fn(x, t, cond):
            return frozen.apply_model(x.to(device), t.to(device), cond.to(device))

        return cls(fn, f"copy on {device}", originals)

    @classmethod
    def switched_off(
        cls, model: torch.nn.Module, off: Callable[[], contextlib.AbstractContextManager]
    ) -> FrozenReference:
        def fn(x, t, cond):
            with off():
                return model.apply_model(x, t, cond)

        return cls(fn, "switched off")


# ------------------------------------------------------------------------------------------------ run folder
def cpu_peak_rss_bytes() -> int:
    """Peak resident memory of this process so far, in bytes (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss * (1 if sys.platform == "darwin" else 1024))


def peak_memory() -> dict:
    """Peak resident memory of this process (bytes) and, per CUDA device used, ``torch.cuda.max_memory_allocated``."""
    out: dict[str, Any] = {"cpu_peak_rss_bytes": cpu_peak_rss_bytes(), "cuda_max_allocated_bytes": {}}
    if torch.cuda.is_available():
        out["cuda_max_allocated_bytes"] = {
            f"cuda:{i}": int(torch.cuda.max_memory_allocated(i))
            for i in range(torch.cuda.device_count())
            if torch.cuda.max_memory_allocated(i) > 0
        }
    return out


class Run:
    """A run folder: ``args.json`` now, ``losses.csv`` row by row (:meth:`log`), ``summary.json`` and ``loss.png``
    at :meth:`finish`. With ``overwrite`` the run files of an earlier run there (and the checkpoints its summary
    lists) are removed first, so the folder never mixes two runs."""

    def __init__(
        self,
        directory: Union[str, Path],
        args: Union[argparse.Namespace, Mapping, None],
        method: str,
        overwrite: bool = False,
    ):
        self.dir = Path(directory)
        self.method = method
        check_output_dir(self.dir, overwrite)
        self.dir.mkdir(parents=True, exist_ok=True)
        if overwrite:
            self._clear_previous()
        self.started = time.time()
        self.rows: list[dict] = []
        self.files: list[str] = []
        self._csv = None
        self._writer = None
        payload = vars(args) if isinstance(args, argparse.Namespace) else dict(args or {})
        self.write_json("args.json", {"method": method, **payload})

    def _clear_previous(self) -> None:
        old = self.dir / "summary.json"
        extra: list[str] = []
        if old.is_file():
            try:
                extra = [f for f in json.loads(old.read_text()).get("files", []) if "/" not in f]
            except (ValueError, AttributeError):
                extra = []
        for name in {*RUN_FILES, *extra}:
            p = self.dir / name
            if p.is_file():
                p.unlink()

    def path(self, name: str) -> Path:
        return self.dir / name

    def write_json(self, name: str, obj: Any) -> Path:
        path = write_json(self.path(name), obj)
        self._note(name)
        return path

    def _note(self, name: str) -> None:
        if name not in self.files:
            self.files.append(name)

    def log(self, row: Mapping[str, Any]) -> None:
        """Append one row to ``losses.csv`` (columns fixed by the first row; a later row may leave some blank)."""
        row = dict(row)
        if self._writer is None:
            self._csv = self.path("losses.csv").open("w", newline="")
            self._writer = csv.DictWriter(self._csv, fieldnames=list(row), restval="")
            self._writer.writeheader()
            self._note("losses.csv")
        unknown = [k for k in row if k not in self._writer.fieldnames]
        if unknown:
            raise ValueError(f"losses.csv row has columns {unknown} that the first row did not declare")
        self._writer.writerow({k: _fmt(v) for k, v in row.items()})
        self._csv.flush()
        self.rows.append(row)

    def close(self) -> None:
        if self._csv is not None:
            self._csv.close()
            self._csv = None

    def plot(self, name: str = "loss.png", x: str = "iteration", group: str = "concept") -> Optional[Path]:
        """Loss curves (matplotlib, Agg backend): one panel per numeric quantity against ``x``; columns named
        ``quantity[label]`` share a panel (one line per label), and rows with a ``group`` column (SepCE's
        one-at-a-time mode) give one line per group value. ``seconds`` and ``flag[...]`` columns are left out."""
        if not self.rows:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        def numeric(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool)

        panels: dict[str, list[tuple[str, str]]] = {}  # quantity → [(column, label)]
        for col in self.rows[0]:
            if (
                col in (x, "seconds", group)
                or col.startswith("flag[")
                or not any(numeric(r.get(col)) for r in self.rows)
            ):
                continue
            quantity, _, label = col.partition("[")
            panels.setdefault(quantity, []).append((col, label.rstrip("]")))
        if not panels:
            return None
        fig, axes = plt.subplots(len(panels), 1, figsize=(7, 2.4 * len(panels)), sharex=True, squeeze=False)
        style = "o-" if len(self.rows) < 30 else "-"
        for ax, (quantity, cols) in zip(axes[:, 0], panels.items()):
            for col, label in cols:
                groups = dict.fromkeys(str(r.get(group)) for r in self.rows) if group in self.rows[0] else {"": None}
                for g in groups:
                    pts = [
                        (r[x], r[col]) for r in self.rows if numeric(r.get(col)) and (not g or str(r.get(group)) == g)
                    ]
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], style, lw=1, ms=3, label=label or g or None)
            if len(cols) > 1 or (group in self.rows[0]):
                ax.legend(fontsize=7)
            ax.set_ylabel(quantity, fontsize=8)
            ax.grid(alpha=0.3)
        axes[-1, 0].set_xlabel(x)
        fig.suptitle(f"{self.method}: {self.dir.name}", fontsize=10)
        fig.tight_layout()
        with atomic_path(self.path(name)) as tmp:
            fig.savefig(tmp, format="png", dpi=90)
        plt.close(fig)
        self._note(name)
        return self.path(name)

    def finish(self, iterations: int, stop_reason: str, **extra: Any) -> dict:
        """Write ``loss.png`` and ``summary.json`` (iterations, stop reason, wall time, peak memory, ``extra``)."""
        self.close()
        self.plot()
        summary = {
            "method": self.method,
            "iterations": iterations,
            "stop_reason": stop_reason,
            "wall_time_s": round(time.time() - self.started, 3),
            **peak_memory(),
            **extra,
        }
        self._note("summary.json")
        summary["files"] = list(self.files)
        write_json(self.path("summary.json"), summary)
        return summary


def _fmt(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        v = v.item()
    if isinstance(v, float):
        return repr(v)
    return v


# ------------------------------------------------------------------------------------------------ optimisation
@dataclass
class TrainStep:
    """What a method's step function returns: the loss to minimise (with grad), values for ``losses.csv``, and
    optionally a stop reason decided from this iteration (applied after its optimizer step)."""

    loss: torch.Tensor
    values: dict[str, Any] = field(default_factory=dict)
    stop: Optional[str] = None


@dataclass
class FitResult:
    iterations: int
    stop_reason: str
    ok: bool = True  # False after a non-finite loss/gradient or an interruption


class ParameterTrainer:
    """Adam over the tensors ``params`` for at most ``iterations`` steps of ``step_fn`` (see :meth:`fit`).

    Gradients accumulate across iterations unless ``zero_grad`` (the released scripts never zeroed them). A
    non-finite loss stops the run and restores the parameters of the previous iteration (whose loss was
    finite); a non-finite gradient stops it before the optimizer step. ``precision`` other than fp32 runs
    ``step_fn`` under ``torch.autocast`` (fp16 with a gradient scaler on CUDA)."""

    def __init__(
        self,
        params: Union[Mapping[str, torch.Tensor], Sequence[torch.Tensor]],
        lr: float,
        iterations: int,
        run: Optional[Run] = None,
        zero_grad: bool = False,
        desc: str = "training",
        precision: torch.dtype = torch.float32,
        device: Optional[torch.device] = None,
        keep_last_good: bool = True,
        progress: bool = True,
        optimizer: Optional[torch.optim.Optimizer] = None,
    ):
        self.params = list(params.values()) if isinstance(params, Mapping) else list(params)
        if not self.params:
            raise ValueError("nothing to train: the parameter list is empty")
        self.optimizer = optimizer or torch.optim.Adam(self.params, lr=lr)
        self.iterations = iterations
        self.run = run
        self.zero_grad = zero_grad
        self.desc = desc
        self.precision = precision
        self.device = device or self.params[0].device
        self.keep_last_good = keep_last_good
        self.progress = progress
        self._last_good: Optional[list[torch.Tensor]] = None
        use_scaler = precision == torch.float16 and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda") if use_scaler else None

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.precision)

    def _grads_finite(self) -> bool:
        return all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in self.params)

    @torch.no_grad()
    def _remember(self) -> None:
        if not self.keep_last_good:
            return
        if self._last_good is None:
            self._last_good = [p.detach().clone() for p in self.params]
        else:
            for saved, p in zip(self._last_good, self.params):
                saved.copy_(p)

    @torch.no_grad()
    def _roll_back(self) -> bool:
        if self._last_good is None:
            return False
        for saved, p in zip(self._last_good, self.params):
            p.copy_(saved)
        return True

    def fit(
        self,
        step_fn: Callable[[int], TrainStep],
        after_step: Optional[Callable[[int, TrainStep], Optional[str]]] = None,
        start: int = 0,
    ) -> FitResult:
        """Run ``step_fn(i)`` → backward → optimizer step for i = start, start+1, …; log one row per iteration
        (``iteration``, ``loss``, the step's values, ``seconds``); stop at the first stop reason (the step's, or
        ``after_step(i, step)``'s, evaluated after the optimizer step) or after ``iterations`` iterations."""
        from tqdm import tqdm

        bar = tqdm(
            range(start, start + self.iterations),
            desc=self.desc,
            disable=not self.progress,
            file=sys.stderr,
            dynamic_ncols=True,
        )
        started = time.perf_counter()
        done, reason, ok = 0, f"iteration cap reached ({self.iterations} iterations)", True
        i = start
        stepping = False
        try:
            for i in bar:
                tic = time.perf_counter()
                if self.zero_grad:
                    self.optimizer.zero_grad(set_to_none=True)
                with self.autocast():
                    step = step_fn(i)
                value = float(step.loss.detach().float())
                row = {"iteration": i, "loss": value, **step.values}
                if not math.isfinite(value):
                    if self._roll_back():
                        done -= 1
                        kept = f"restored the parameters of iteration {i - 1}, whose loss was finite"
                    else:
                        kept = "no optimizer step had been taken"
                    reason, ok = f"non-finite loss ({value}) at iteration {i}; stopped and {kept}", False
                    self._log(row, tic)
                    break
                (self.scaler.scale(step.loss) if self.scaler else step.loss).backward()
                if self.scaler is None and not self._grads_finite():
                    reason, ok = (
                        (
                            f"non-finite gradient at iteration {i}; stopped before its optimizer step "
                            f"(parameters of iteration {i} kept, their loss {value:.6g} was finite)"
                        ),
                        False,
                    )
                    self._log(row, tic)
                    break
                self._remember()
                stepping = True
                if self.scaler is not None:
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                else:
                    self.optimizer.step()
                stepping = False
                done = i - start + 1
                self._log(row, tic)
                bar.set_postfix(
                    {
                        k: (f"{v:.4g}" if isinstance(v, float) else v)
                        for k, v in row.items()
                        if k in ("loss", "momentum")
                    }
                )
                stop = step.stop or (after_step(i, step) if after_step else None)
                if stop:
                    reason = stop
                    break
        except KeyboardInterrupt:
            if stepping:
                self._roll_back()
            reason, ok = f"interrupted by the user at iteration {i} ({done} optimizer steps kept)", False
        finally:
            bar.close()
        if not ok:
            log.warning("%s: %s", self.desc, reason)
        if not self.progress:  # no bar to watch: one line per finished run
            log.info("%s: %d iteration(s), %s, %.1f s", self.desc, done, reason, time.perf_counter() - started)
        return FitResult(iterations=done, stop_reason=reason, ok=ok)

    def _log(self, row: dict, tic: float) -> None:
        if self.run is not None:
            self.run.log({**row, "seconds": round(time.perf_counter() - tic, 4)})


# ------------------------------------------------------------------------------------------------ session
class TrainingSession:
    """One training run of ``method`` erasing ``concepts``: its validated settings, model loading, the common
    training step, and the one way every run ends (:meth:`finish`).

    Construction checks (before any model is loaded) that every ``<data_dir>/<concept>/`` image folder holds
    readable images (when ``images``) and that the output folder is empty or ``overwrite`` was given.
    ``image_folders`` are training images of other names (the original Ablating Concepts trains on its anchor
    prompt's images), drawn with :meth:`image` / :meth:`latent` under their key and counted in the summary. The
    output folder is ``settings.output_dir`` or ``MODELS_DIR / run_name(method, concepts, folder_suffix or
    suffix)``; full checkpoints are named ``run_name(method, <concepts>, suffix)`` (``ESD-VanGogh-xattn.ckpt``)."""

    def __init__(
        self,
        settings: TrainingSettings,
        method: str,
        concepts: Sequence[str],
        images: bool = True,
        suffix: Optional[str] = None,
        folder_suffix: Optional[str] = None,
        image_folders: Optional[Mapping[str, ImageFolder]] = None,
    ):
        self.settings = settings
        self.method = method
        self.concepts = list(concepts)
        self.suffix = suffix
        self.output_dir = settings.output_dir or MODELS_DIR / run_name(method, self.concepts, folder_suffix or suffix)
        check_output_dir(self.output_dir, settings.overwrite)
        self.folders: dict[str, ImageFolder] = dict(image_folders or {})
        if images:
            if settings.data_dir is None:
                raise ValueError(f"{method} trains on images, but no --data_dir was given")
            for c in self.concepts:
                self.folders[c] = ImageFolder(Path(settings.data_dir) / c, settings.image_size)
        self.generator = torch.Generator().manual_seed(settings.seed)
        self.device_generator: Optional[torch.Generator] = None
        self.model: Optional[torch.nn.Module] = None
        self.run: Optional[Run] = None

    @classmethod
    def from_args(cls, args: argparse.Namespace, method: str, concepts: Sequence[str], **kw: Any) -> TrainingSession:
        """The session of a script's parsed flags (:func:`settings_from_args`); ``kw`` as the constructor's."""
        return cls(settings_from_args(args), method, concepts, **kw)

    @property
    def devices(self) -> list[torch.device]:
        return list(self.settings.devices)

    @property
    def device(self) -> torch.device:
        return self.settings.devices[0]

    @property
    def two_devices(self) -> bool:
        return len(self.devices) == 2 and self.devices[0] != self.devices[1]

    def load_model(self, device: Optional[torch.device] = None) -> torch.nn.Module:
        """The base model on the first device (fp32), gradient checkpointing as the settings say."""
        device = device or self.device
        model = load_model(self.settings.config_path, self.settings.ckpt_path, device)
        if self.settings.gradient_checkpointing is not None:
            unet_of(model).set_gradient_checkpointing(self.settings.gradient_checkpointing)
        if self.model is None:
            self.model = model
            self.device_generator = torch.Generator(device).manual_seed(self.settings.seed + 1)
        return model

    def frozen_reference(self, model: torch.nn.Module, trained: Mapping[str, torch.Tensor]) -> FrozenReference:
        """The frozen original: a copy on the second device with two distinct devices, otherwise the same
        weights with the original trained tensors substituted (one model copy in memory)."""
        if self.two_devices:
            frozen = self.load_model(self.devices[1])
            return FrozenReference.copy(frozen, trained)
        return FrozenReference.substituted(model, trained)

    def start_run(self, extra_args: Optional[Mapping[str, Any]] = None) -> Run:
        """Create the run folder (after the model loaded, so a failed load leaves nothing behind); ``args.json``
        holds the command line, ``extra_args`` and the resolved devices."""
        payload = {
            **self.settings.command_line,
            **(extra_args or {}),
            "devices_resolved": [str(d) for d in self.devices],
        }
        self.run = Run(self.output_dir, payload, self.method, overwrite=self.settings.overwrite)
        return self.run

    def trainer(
        self,
        params: Union[Mapping[str, torch.Tensor], Sequence[torch.Tensor]],
        desc: Optional[str] = None,
        zero_grad: Optional[bool] = None,
        iterations: Optional[int] = None,
        **kw: Any,
    ) -> ParameterTrainer:
        """A :class:`ParameterTrainer` wired to this run's learning rate, iterations, ``zero_grad``, precision,
        progress display and ``losses.csv``; refused for a run without a learning rate (``lr`` None)."""
        if self.settings.lr is None:
            raise ValueError(f"{self.method}: the run's settings have no learning rate (lr None), so no optimiser")
        return ParameterTrainer(
            params,
            lr=self.settings.lr,
            iterations=iterations or self.settings.iterations,
            run=self.run,
            zero_grad=self.settings.zero_grad if zero_grad is None else zero_grad,
            desc=desc or self.method,
            precision=self.settings.dtype,
            device=self.device,
            progress=self.settings.progress,
            **kw,
        )

    def fit(
        self,
        params: Union[Mapping[str, torch.Tensor], Sequence[torch.Tensor]],
        step_fn: Callable[[int], TrainStep],
        desc: Optional[str] = None,
        **kw: Any,
    ) -> FitResult:
        """Train ``params`` with ``step_fn`` (:meth:`trainer`'s loop; ``kw`` goes to it): the model in train mode
        for the loop, in eval mode after it, whatever stopped it."""
        model = self._model()
        model.train()
        try:
            return self.trainer(params, desc, **kw).fit(step_fn)
        finally:
            model.eval()

    # -- the common training step ----------------------------------------------------------------------
    def timesteps(self) -> tuple[int, torch.Tensor]:
        """``(t_enc, t)`` with ``t`` a 1-element long tensor on the training device."""
        t_enc, t = sample_timesteps(self.settings.ddim_steps, self.generator, self._model().num_timesteps)
        return t_enc, torch.tensor([t], device=self.device, dtype=torch.long)

    def image(self, concept: str) -> torch.Tensor:
        """One training image of ``concept`` (1×3×S×S in [-1, 1], on the training device)."""
        return self.folders[concept].sample(self.generator).to(self.device)

    def latent(self, concept: str) -> torch.Tensor:
        """z of one training image of ``concept`` (posterior sample × scale_factor, no grad)."""
        return encode_latents(self._model(), self.image(concept), self.device_generator)

    def noisy(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t = q_sample(z, t) with fresh noise."""
        return q_sample(self._model(), z, t.expand(z.shape[0]), self.device_generator)

    def _model(self) -> torch.nn.Module:
        if self.model is None:
            raise RuntimeError("load_model() first")
        return self.model

    # -- the end of every run ----------------------------------------------------------------------------
    def base_info(self) -> dict:
        return records.base_info(self.settings.ckpt_path, self.settings.config_path)

    def tensor_record(self, tensors: Mapping[str, torch.Tensor]) -> records.ErasureRecord:
        """A replaced-tensor record of the trained tensors' new values (CiE, ESD, FMN, Ablating Concepts)."""
        return records.ErasureRecord(
            method=self.method,
            concepts=list(self.concepts),
            base=self.base_info(),
            tensors={k: v.detach().float().cpu() for k, v in tensors.items()},
        )

    def finish(
        self,
        results: Union[FitResult, Sequence[FitResult]],
        record: records.ErasureRecord,
        *,
        reference: str,
        settings: Mapping[str, Any],
        concepts: Optional[Mapping[str, Mapping[str, Any]]] = None,
        stop_reason: Optional[str] = None,
    ) -> dict:
        """End the run: save ``record`` (``erasure.safetensors``), the full checkpoints ``--save_full`` asks for,
        ``loss.png`` and ``summary.json``; return the summary.

        ``concepts`` is per concept at least ``iterations`` and ``stop_reason`` (None: every concept of the run
        with the run's iterations and stop reason); ``settings`` the method's own settings and derived values
        (prompts built, sampling mode, ...). Both go into the record's metadata (keys the record already holds
        win, e.g. SepCE's per-concept bases; ``lr`` only when the run has one) and into the summary, whose keys
        are :data:`SUMMARY_KEYS` for every method. ``results`` is one :class:`FitResult` or several (SepCE
        trained one concept at a time); ``stop_reason`` overrides the joined stop reasons. Full checkpoints: one
        of the record's tensors, or for a separable record one per non-empty subset of its concepts."""
        if self.run is None:
            raise RuntimeError("start_run() first")
        results = [results] if isinstance(results, FitResult) else list(results)
        iterations = sum(r.iterations for r in results)
        reason = stop_reason or "; ".join(r.stop_reason for r in results)
        ok = all(r.ok for r in results)
        if concepts is None:
            concepts = {c: {"iterations": iterations, "stop_reason": reason} for c in self.concepts}
        common = {
            "iterations": iterations,
            "stop_reason": reason,
            "ok": ok,
            **({} if self.settings.lr is None else {"lr": self.settings.lr}),
            "reference": reference,
            "concepts": {c: dict(v) for c, v in concepts.items()},
        }
        record.meta = {**dict(settings), **common, **record.meta}
        records.save_record(self.run.path(records.RECORD_NAME), record, overwrite=True)
        self.run._note(records.RECORD_NAME)
        if self.settings.save_full:
            self._save_full(record)
        data = {
            c: {"folder": str(f.folder), "images": len(f), "skipped_unreadable": len(f.skipped)}
            for c, f in self.folders.items()
        }
        return self.run.finish(
            iterations,
            reason,
            ok=ok,
            reference=reference,
            concepts=common["concepts"],
            devices=[str(d) for d in self.devices],
            data=data,
            settings=dict(settings),
            output_dir=str(self.output_dir),
        )

    def _save_full(self, record: records.ErasureRecord) -> None:
        if record.separable:
            base = dict(self._model().named_parameters())
            subsets = [
                s for k in range(1, len(record.concepts) + 1) for s in itertools.combinations(record.concepts, k)
            ]
        else:
            base, subsets = {}, [tuple(record.concepts)]
        for subset in subsets:
            name = f"{run_name(self.method, subset, self.suffix)}.{self.settings.save_full}"
            changed = records.changed_tensors(record, base, list(subset))
            records.write_full_checkpoint(self.settings.ckpt_path, self.run.path(name), changed, overwrite=True)
            self.run._note(name)


def finished_message(summary: Mapping[str, Any]) -> str:
    """What a training script prints at the end: one line per concept (iterations, stop reason), then the run
    folder."""
    lines = [
        f"{summary['method']} {c!r}: {info['iterations']} iterations, {info['stop_reason']}"
        for c, info in summary["concepts"].items()
    ]
    return "\n".join([*lines, f"saved {summary['output_dir']}"])
