"""GPU check: generation speed against diffusers, training speed and memory, torchrun sharding — one command.

Stable Diffusion v1 (configs/stable-diffusion/v1-inference.yaml) with the checkpoint at --ckpt_path when it
exists, else with deterministic random weights (sepce.tiny's generator, written as a CompVis checkpoint into the
work folder). Three sections; a section (or one configuration of it) that fails records its one-line error and
the others still run:

gen       images/s of this toolkit's sampler (sepce.generation.ImageSampler + SamplingSettings, what
          eval-scripts/generate-images.py runs: fp16/bf16 weights, no autocast) and of diffusers'
          StableDiffusionPipeline loaded from our own export (sepce.convert.export_pipeline, what
          `convertModels.py --pipeline` writes) with torch_dtype of that precision and a DDIMScheduler from the
          exported config (CompVis DDIM) — DDIM 50 steps, guidance 7.5, 512 px, batch 8, the same start latents
          and prompts. The two are called alternately (warm-up round, then ours, diffusers, ours, diffusers, ...),
          each call between torch.cuda.synchronize() calls; median per side, and peak GPU memory per call
          (max_memory_allocated, reset before each call; "own" = that model's weights + the call's growth above
          what was allocated before it). Sanity line: the two images from the same latents in fp32 at low
          resolution (TF32 off), max |difference| of the [0, 1] pixels.
train     seconds per iteration (median after warm-up, from the run's losses.csv) and peak GPU memory of
          train-scripts/CiE.py (one device, fp32 and bf16 autocast) and SepCE.py (3 concepts, joint), run
          in-process on a few random training images, and of CiE in the released two-copy layout
          (--devices 0,1) when two GPUs are visible. The momentum stop is disabled, so every run does all its
          iterations.
torchrun  `torchrun --nproc_per_node N eval-scripts/generate-images.py` (N = visible GPUs; --tiny on the CPU: 2
          processes) on a CSV of 2N rows, 1 image each: every expected <case>_<k>.png exists exactly once, each
          rank wrote exactly its shard (sepce.prompt_csv.shard_rows), the images equal a single-process run's;
          wall times of both.

    python bench/gpu_check.py                          # full check on the GPU(s); planned for < 8 min on an H200
    python bench/gpu_check.py --tiny                   # the same on the CPU with the tiny model, seconds (CI)
    python bench/gpu_check.py --tiny --device cuda     # the tiny model on the GPU: every CUDA path, seconds
    python bench/gpu_check.py --sections gen train     # a subset

Prints one table and writes --output (JSON, atomic, rewritten after every section): versions, GPU names, every
setting, every measurement, and per section or configuration its status (ok / skipped with the reason / error
with a one-line message and a short traceback).
"""

# no `from __future__ import annotations`: the tests import this file without registering it in sys.modules,
# and dataclasses cannot resolve string annotations then
import argparse
import contextlib
import copy
import csv
import functools
import gc
import importlib.metadata
import importlib.util
import io
import logging
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/common.py: sepce importable on a bare checkout
from common import REPO  # noqa: E402

from sepce.cli import (  # noqa: E402
    EXIT_CHECK_FAILED,
    PRECISIONS,
    import_script,
    parse_device,
    parse_precision,
    parser,
    run,
)
from sepce.paths import DEFAULT_CKPT, DEFAULT_CONFIG, REPO_ROOT  # noqa: E402
from sepce.tiny import TINY_WIDE_CONFIG  # noqa: E402

log = logging.getLogger("gpu_check")

SECTIONS = ("gen", "train", "torchrun")
DEFAULT_OUTPUT = REPO_ROOT / "outputs" / "gpu-check" / "gpu_check.json"
SCHEMA = "sepce-gpu-check/1"
GIB = 2**30
PROMPTS = (
    "a painting of a starry night over a village in the style of Van Gogh",
    "a photo of a cat sitting on a windowsill",
    "a city street at night in the rain",
    "a bowl of fruit on a table, oil painting",
    "a mountain lake at sunrise",
    "a portrait of a woman in the style of Picasso",
    "a harbour with fishing boats in the style of Cezanne",
    "an astronaut riding a horse",
)
CIE_CONCEPT = "Van Gogh"
SEPCE_CONCEPTS = ("VanGogh", "Cezanne", "Picasso")
NEVER_STOP = -1e30  # momentum threshold no run reaches: every training run does all its iterations
RANK_LINE = re.compile(r"wrote (\d+) image\(s\), \d+ already existed(?: \(rank (\d+)/(\d+)\))?")


# ------------------------------------------------------------------------------------------------ settings
@dataclass(frozen=True)
class Sizes:
    """Workload of each section (the defaults of a mode; every field has a flag)."""

    image_size: int  # gen: timed generation
    steps: int
    batch_size: int
    repeats: int
    warmup: int
    sanity_size: int  # gen: fp32 comparison with diffusers
    sanity_steps: int
    train_image_size: int
    train_warmup: int
    train_iterations: int  # timed iterations after the warm-up
    torchrun_image_size: int
    torchrun_steps: int


FULL = Sizes(512, 50, 8, 3, 1, 256, 10, 512, 2, 5, 256, 10)
TINY = Sizes(64, 20, 2, 2, 1, 64, 4, 64, 1, 3, 64, 4)


@dataclass(frozen=True)
class CheckSettings:
    """Validated settings of one check (:func:`settings_from_args`)."""

    tiny: bool
    device: torch.device
    sections: tuple[str, ...]
    precisions: tuple[str, ...]
    config_path: Path
    ckpt_path: Optional[Path]  # None: random weights
    output: Path
    work_dir: Optional[Path]  # None: a temporary folder, removed at the end
    sizes: Sizes
    guidance_scale: float
    sanity_tol: float
    nproc: int
    torchrun_timeout: float
    seed: int
    threads: Optional[int]  # torch CPU threads (None: torch's default)

    def as_json(self) -> dict:
        out = asdict(self)
        out["sizes"] = asdict(self.sizes)
        return {k: (str(v) if isinstance(v, (Path, torch.device)) else v) for k, v in out.items()}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = parser(__doc__, epilog=f"exit status: 0 every check passed; 1 bad input; {EXIT_CHECK_FAILED} a check failed")
    p.add_argument("--tiny", action="store_true", help="tiny config on the CPU (unless --device), seconds: for CI")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="sections to run")
    p.add_argument(
        "--device",
        default=None,
        help="device of the check (None: cuda; with --tiny, cpu); the full model on the CPU is a slow dry run",
    )
    p.add_argument(
        "--precisions",
        nargs="+",
        choices=tuple(PRECISIONS),
        default=None,
        help="generation precisions to time (None: fp16 bf16; with --tiny also fp32); 16-bit is skipped on the CPU",
    )
    p.add_argument(
        "--ckpt_path",
        type=Path,
        default=None,
        help=f"CompVis checkpoint (None: {DEFAULT_CKPT.relative_to(REPO_ROOT)} when it exists, else random "
        "weights; with --tiny always random)",
    )
    p.add_argument("--config_path", type=Path, default=None, help="model config (None: SD v1 inference, or tiny)")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON report (written atomically)")
    p.add_argument("--work_dir", type=Path, default=None, help="keep checkpoints/exports/images here (None: temp)")
    sizes = p.add_argument_group("workload (None: the full check's value / the --tiny value)")
    for name, help_text in (
        ("image_size", "gen: image size in pixels"),
        ("steps", "gen: DDIM steps"),
        ("batch_size", "gen: images per call"),
        ("repeats", "gen: timed rounds (median)"),
        ("warmup", "gen: untimed warm-up rounds"),
        ("sanity_size", "gen: image size of the fp32 comparison with diffusers"),
        ("sanity_steps", "gen: DDIM steps of the fp32 comparison"),
        ("train_image_size", "train: training image size"),
        ("train_warmup", "train: untimed warm-up iterations"),
        ("train_iterations", "train: timed iterations (median)"),
        ("torchrun_image_size", "torchrun: image size"),
        ("torchrun_steps", "torchrun: DDIM steps"),
    ):
        full, tiny = getattr(FULL, name), getattr(TINY, name)
        sizes.add_argument(f"--{name}", type=int, default=None, help=f"{help_text} ({full} / {tiny})")
    p.add_argument("--guidance_scale", type=float, default=7.5, help="gen: classifier-free guidance scale")
    p.add_argument("--sanity_tol", type=float, default=1e-3, help="gen: largest accepted fp32 pixel difference")
    p.add_argument("--nproc", type=int, default=None, help="torchrun processes (None: visible GPUs; CPU: 2)")
    p.add_argument("--torchrun_timeout", type=float, default=300, help="seconds allowed for each generation run")
    p.add_argument("--seed", type=int, default=0, help="seed of latents, prompts' seeds and training images")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads, also of the generation subprocesses (None: 1 for --tiny on the CPU, where a busy "
        "machine makes several threads crawl; else torch's default)",
    )
    return p.parse_args(argv)


def settings_from_args(args: argparse.Namespace) -> CheckSettings:
    """Check the flags (one-line ``ValueError`` / ``FileNotFoundError``), before anything heavy."""
    if args.device is None and not args.tiny and not torch.cuda.is_available():
        raise ValueError(
            "the full check needs a GPU and no CUDA device is visible; run `python bench/gpu_check.py --tiny` "
            "for the CPU version (or pass --device cpu for a slow full-size dry run)"
        )
    device = parse_device(args.device or ("cpu" if args.tiny else "cuda"))
    base = TINY if args.tiny else FULL
    values = {}
    for name in asdict(base):
        value = getattr(args, name)
        value = getattr(base, name) if value is None else value
        least = 0 if name in ("warmup", "train_warmup") else 1
        if value < least:
            raise ValueError(f"--{name} {value}: expected an integer >= {least}")
        if (name.endswith("image_size") or name == "sanity_size") and value % 8:
            raise ValueError(f"--{name} {value}: expected a multiple of 8")
        values[name] = value
    config = args.config_path or (TINY_WIDE_CONFIG if args.tiny else DEFAULT_CONFIG)  # SepCE needs the wide one
    if not config.is_file():
        raise FileNotFoundError(f"--config_path {config} does not exist")
    ckpt = args.ckpt_path
    if ckpt is not None and not ckpt.is_file():
        raise FileNotFoundError(f"--ckpt_path {ckpt} does not exist")
    if ckpt is None and not args.tiny and args.config_path is None and DEFAULT_CKPT.is_file():
        ckpt = DEFAULT_CKPT
    if not (math.isfinite(args.sanity_tol) and args.sanity_tol > 0):
        raise ValueError(f"--sanity_tol {args.sanity_tol}: expected a positive number")
    if not math.isfinite(args.guidance_scale):
        raise ValueError(f"--guidance_scale {args.guidance_scale}: expected a finite number")
    nproc = args.nproc or (torch.cuda.device_count() if device.type == "cuda" else 2)
    if nproc < 1 or (device.type == "cuda" and nproc > torch.cuda.device_count()):
        raise ValueError(f"--nproc {nproc}: expected 1..{torch.cuda.device_count()} (the visible GPUs)")
    if args.torchrun_timeout <= 0:
        raise ValueError(f"--torchrun_timeout {args.torchrun_timeout}: expected a positive number of seconds")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads {args.threads}: expected a positive integer")
    if args.output.suffix != ".json":
        raise ValueError(f"--output {args.output}: expected a .json file name")
    precisions = tuple(args.precisions or (("fp32", "fp16", "bf16") if args.tiny else ("fp16", "bf16")))
    return CheckSettings(
        tiny=args.tiny,
        device=device,
        sections=tuple(s for s in SECTIONS if s in args.sections),
        precisions=tuple(dict.fromkeys(precisions)),
        config_path=config,
        ckpt_path=ckpt,
        output=args.output,
        work_dir=args.work_dir,
        sizes=Sizes(**values),
        guidance_scale=args.guidance_scale,
        sanity_tol=args.sanity_tol,
        nproc=nproc,
        torchrun_timeout=args.torchrun_timeout,
        seed=args.seed,
        threads=args.threads or (1 if args.tiny and device.type == "cpu" else None),
    )


# ------------------------------------------------------------------------------------------------ helpers
def one_line(error: BaseException) -> str:
    """``Type: first line of the message`` (the table's and JSON's error text)."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def attempt(fn: Callable[..., dict], *args: Any) -> dict:
    """``fn(*args)`` (a result dict, status ``ok`` unless it says otherwise), or, when it raises, ``status: error``
    with the one-line error and the traceback's last lines; GPU memory is released either way."""
    tic = time.perf_counter()
    try:
        out = {"status": "ok", **fn(*args)}
    except (Exception, SystemExit) as e:  # a failing part is recorded and the check goes on (SystemExit: argparse)
        log.warning("%s", one_line(e))
        out = {"status": "error", "error": one_line(e), "traceback": traceback.format_exc().splitlines()[-12:]}
    out["seconds"] = round(time.perf_counter() - tic, 3)
    free_memory()
    return out


def skipped(reason: str) -> dict:
    return {"status": "skipped", "reason": reason}


def version(package: str) -> Optional[str]:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(device: torch.device) -> dict:
    """Versions, GPUs and host facts for the report."""
    cuda = torch.cuda.is_available()
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "diffusers": version("diffusers"),
        "transformers": version("transformers"),
        "device": str(device),
        "gpu_count": torch.cuda.device_count() if cuda else 0,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "gpu_memory_bytes": (
            [torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count())] if cuda else []
        ),
        "cpu_threads": torch.get_num_threads(),
        "git_commit": commit or None,
    }


def child_env(threads: Optional[int] = None) -> dict:
    """Environment of the generation subprocesses: the repository importable, offline, no inherited rank."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")}
    paths = [str(REPO), str(REPO / "ldm-replace"), *filter(None, [env.get("PYTHONPATH")])]
    env.update(PYTHONPATH=os.pathsep.join(paths), HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def cuda_devices(device: torch.device) -> list[int]:
    return list(range(torch.cuda.device_count())) if device.type == "cuda" else []


# ------------------------------------------------------------------------------------------------ timing
@dataclass(frozen=True)
class Measurement:
    """One timed call: seconds; on CUDA the peak allocated during it and what was allocated before it."""

    seconds: float
    peak_bytes: Optional[int] = None
    before_bytes: Optional[int] = None


class Stopwatch:
    """Times one call on ``device``: on CUDA synchronised before and after, the peak-memory counter reset before."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"

    def __call__(self, fn: Callable[[], Any]) -> Measurement:
        before = None
        if self.cuda:
            torch.cuda.synchronize(self.device)
            before = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        tic = time.perf_counter()
        fn()
        if self.cuda:
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - tic
        peak = torch.cuda.max_memory_allocated(self.device) if self.cuda else None
        return Measurement(seconds, peak, before)


def alternate(
    runners: Mapping[str, Callable[[], Any]],
    repeats: int,
    warmup: int,
    measure: Callable[[Callable[[], Any]], Measurement],
) -> tuple[dict[str, list[Measurement]], dict[str, str]]:
    """Round robin: ``warmup`` untimed rounds, then ``repeats`` timed ones; every round calls each runner once,
    in the order given (ours, theirs, ours, theirs, ...), so slow drifts (clocks, heat, other load) hit both
    alike. A runner that raises is dropped from later rounds; returns (measurements of the timed rounds,
    one-line errors) by runner name."""
    times: dict[str, list[Measurement]] = {name: [] for name in runners}
    errors: dict[str, str] = {}
    for round_index in range(warmup + repeats):
        for name, fn in runners.items():
            if name in errors:
                continue
            try:
                m = measure(fn)
            except (Exception, SystemExit) as e:  # one side failing leaves the other's numbers
                errors[name] = one_line(e)
                log.warning("%s: %s", name, errors[name])
                free_memory()
                continue
            if round_index >= warmup:
                times[name].append(m)
    return times, errors


def summarize(measurements: Sequence[Measurement], images: int, weights_bytes: Optional[int] = None) -> dict:
    """Median time of the calls, images/s, and the peak memory (max over the calls; "own" = ``weights_bytes`` +
    the growth above what was allocated before the call)."""
    seconds = [m.seconds for m in measurements]
    median = statistics.median(seconds)
    out = {"seconds": [round(s, 4) for s in seconds], "median_s": median, "images_per_s": images / median}
    peaks = [m for m in measurements if m.peak_bytes is not None]
    if peaks:
        out["peak_bytes"] = max(m.peak_bytes for m in peaks)
        if weights_bytes is not None:
            out["peak_own_bytes"] = weights_bytes + max(m.peak_bytes - m.before_bytes for m in peaks)
    return out


def tensor_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


@contextlib.contextmanager
def strict_fp32():
    """TF32 off for matrix products and convolutions (the sanity comparison wants plain fp32 on both sides)."""
    matmul, conv = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, conv


# ------------------------------------------------------------------------------------------------ weights
@dataclass(frozen=True)
class Weights:
    ckpt: Path
    config: Path
    source: str
    seconds: float


def prepare_weights(s: CheckSettings, work: Path) -> Weights:
    """The checkpoint every section loads: --ckpt_path, or random weights written as a CompVis checkpoint."""
    if s.ckpt_path is not None:
        return Weights(s.ckpt_path, s.config_path, f"checkpoint {s.ckpt_path}", 0.0)
    from sepce.tiny import write_tiny_checkpoint

    tic = time.perf_counter()
    ckpt = write_tiny_checkpoint(work / "weights", s.config_path, seed=s.seed, overwrite=True)
    return Weights(ckpt, ckpt.parent / "config.yaml", "random (sepce.tiny generator)", time.perf_counter() - tic)


# ------------------------------------------------------------------------------------------------ gen
def load_pipeline(folder: Path, dtype: torch.dtype, device: torch.device):
    """diffusers' pipeline from our export, weights in ``dtype``, with the CompVis DDIM schedule (leading
    spacing, steps_offset 1, no clipping, from the exported scheduler config)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    with warnings.catch_warnings():  # newer diffusers also take `dtype`; `torch_dtype` works in every version
        warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
        pipe = StableDiffusionPipeline.from_pretrained(folder, torch_dtype=dtype, local_files_only=True)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def sanity(model, pipe, s: CheckSettings) -> dict:
    """Our DDIM image and diffusers' from the same start latents, fp32 without TF32: max |Δ| of [0, 1] pixels."""
    from sepce.generation import ImageSampler, SamplingSettings, case_noise

    z = s.sizes
    sampler = ImageSampler(model, SamplingSettings("ddim", z.sanity_steps, s.guidance_scale, z.sanity_size), s.device)
    noise = case_noise(s.seed, 1, sampler.latent_shape)
    with strict_fp32(), torch.no_grad():
        latents = sampler.sample_latents(PROMPTS[:1], noise)
        ours = ((model.decode_first_stage(latents) + 1) / 2).clamp(0, 1).float().cpu()
        theirs = (
            pipe(
                PROMPTS[0],
                num_inference_steps=z.sanity_steps,
                guidance_scale=s.guidance_scale,
                latents=noise.to(s.device),
                height=z.sanity_size,
                width=z.sanity_size,
                output_type="pt",
            )
            .images.float()
            .cpu()
        )
    diff = float((ours - theirs).abs().max())
    finite = bool(torch.isfinite(ours).all() and torch.isfinite(theirs).all())
    return {
        "image_size": z.sanity_size,
        "steps": z.sanity_steps,
        "max_abs_diff": diff if finite else None,
        "tolerance": s.sanity_tol,
        "image_std": float(ours.std()) if finite else None,
        "finite": finite,
        "ok": finite and diff <= s.sanity_tol,
    }


def time_precision(model, folder: Optional[Path], folder_error: Optional[str], precision: str, s: CheckSettings):
    """Alternating timing of ours and diffusers' pipeline in ``precision`` (see the module docstring)."""
    from sepce.generation import ImageSampler, SamplingSettings, case_noise
    from sepce.modeling import networks_to

    dtype = PRECISIONS[precision]
    z = s.sizes
    settings = SamplingSettings("ddim", z.steps, s.guidance_scale, z.image_size)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(z.batch_size)]
    noise = case_noise(s.seed, z.batch_size, ImageSampler(model, settings, s.device).latent_shape)
    out: dict[str, Any] = {"batch_size": z.batch_size, "steps": z.steps, "image_size": z.image_size}

    if dtype != torch.float32:  # what generate-images runs: 16-bit weights, native (a copy; ``model`` stays)
        model = networks_to(copy.deepcopy(model), dtype)

    def ours():  # a new sampler per call: the prompts are encoded every call, as diffusers does
        return ImageSampler(model, settings, s.device, dtype)(prompts, noise)

    runners: dict[str, Callable[[], Any]] = {"ours": ours}
    if native_norm_applies(dtype, s.device):  # the A/B of GroupNorm32.cuda_16bit_native, in the same rounds
        runners["ours native norm"] = functools.partial(with_native_norm, ours)
    pipe, theirs_error = None, folder_error
    if folder is not None:
        try:
            pipe = load_pipeline(folder, dtype, s.device)
        except Exception as e:  # ours is still timed
            theirs_error = one_line(e)
    if pipe is not None:
        latents = noise.to(s.device, dtype)

        def theirs():
            return pipe(
                prompts,
                num_inference_steps=z.steps,
                guidance_scale=s.guidance_scale,
                latents=latents,
                height=z.image_size,
                width=z.image_size,
                output_type="np",
            ).images

        runners["diffusers"] = theirs
    weights = {"ours": tensor_bytes(model), "diffusers": None}
    if pipe is not None:
        weights["diffusers"] = sum(tensor_bytes(m) for m in (pipe.unet, pipe.vae, pipe.text_encoder))
    times, errors = alternate(runners, z.repeats, z.warmup, Stopwatch(s.device))
    our_image = functools.cache(ours)  # after the timing: one untimed image of ours for every comparison
    if theirs_error:
        errors["diffusers"] = theirs_error
    for name in ("ours", "diffusers"):
        if name in errors:
            out[name] = {"status": "error", "error": errors[name]}
        else:
            out[name] = {
                "status": "ok",
                "weights_bytes": weights[name],
                **summarize(times[name], z.batch_size, weights[name]),
            }
    if out["ours"]["status"] == out["diffusers"]["status"] == "ok":
        out["ratio_ours_over_diffusers"] = out["ours"]["images_per_s"] / out["diffusers"]["images_per_s"]
        import numpy as np

        with torch.no_grad():  # the same latents and prompts in this precision: how far the two images are apart
            mine, other = np.asarray(our_image(), np.float32) / 255.0, np.asarray(runners["diffusers"](), np.float32)
        finite = bool(np.isfinite(other).all())
        out["agreement"] = {
            "mean_abs_diff": float(np.abs(mine - other).mean()) if finite else None,
            "max_abs_diff": float(np.abs(mine - other).max()) if finite else None,
            "finite": finite,
        }
    if "ours native norm" in runners:
        out["native_norm"] = native_norm_entry(times, errors, out, z.batch_size, weights["ours"], ours, our_image)
    if out["ours"]["status"] != "ok":
        raise RuntimeError(f"our sampler failed: {out['ours']['error']}")
    return out


def native_norm_applies(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether ``GroupNorm32.cuda_16bit_native`` changes anything: 16-bit weights on CUDA."""
    return dtype in (torch.float16, torch.bfloat16) and torch.device(device).type == "cuda"


def with_native_norm(fn: Callable[[], Any]) -> Any:
    """``fn()`` with the UNet's GroupNorm32 on the native 16-bit kernel (ldm.modules.diffusionmodules.util)."""
    from ldm.modules.diffusionmodules.util import GroupNorm32

    GroupNorm32.cuda_16bit_native = True
    try:
        return fn()
    finally:
        GroupNorm32.cuda_16bit_native = False


def native_norm_entry(times, errors, out, images: int, weights_bytes: Optional[int], ours, our_image) -> dict:
    """The native-GroupNorm run: its timing, its speed over ours (same rounds), and how far its images are from
    ours (``our_image()``, the same latents and prompts; 0-255 pixels)."""
    if "ours native norm" in errors:
        return {"status": "error", "error": errors["ours native norm"]}
    entry: dict[str, Any] = {"status": "ok", **summarize(times["ours native norm"], images, weights_bytes)}
    if out["ours"]["status"] == "ok":
        import numpy as np

        entry["ratio_over_ours"] = entry["images_per_s"] / out["ours"]["images_per_s"]
        with torch.no_grad():
            mine, native = np.asarray(our_image(), np.int16), np.asarray(with_native_norm(ours), np.int16)
        entry["pixels_differing"] = float((mine != native).mean())
        entry["max_abs_diff_levels"] = int(np.abs(mine - native).max())
    return entry


def section_gen(s: CheckSettings, w: Weights, work: Path) -> dict:
    from ldm.checkpoint import load_config, read_checked_state_dict

    from sepce.convert import export_pipeline
    from sepce.modeling import load_resolved, resolve_model

    result: dict[str, Any] = {}
    folder, folder_error = work / "diffusers-pipeline", None
    tic = time.perf_counter()
    try:  # our exporter, as `convertModels.py --pipeline` runs it (fp32 weights); before our model loads (memory)
        export_pipeline(read_checked_state_dict(w.config, w.ckpt), load_config(w.config), folder, overwrite=True)
        result["export_s"] = time.perf_counter() - tic
    except Exception as e:  # ours is still timed
        folder, folder_error = None, f"export: {one_line(e)}"
        result["export_error"] = folder_error
    free_memory()
    tic = time.perf_counter()
    model = load_resolved(resolve_model("SD-v1-4", w.ckpt, w.config, work), s.device)
    result["load_s"] = time.perf_counter() - tic

    def check():
        if folder is None:
            raise RuntimeError(folder_error)
        return sanity(model, load_pipeline(folder, torch.float32, s.device), s)

    result["sanity"] = attempt(check)
    result["timings"] = {}
    for precision in s.precisions:
        try:
            parse_precision(precision, s.device)
        except ValueError as e:
            result["timings"][precision] = skipped(str(e))
            continue
        log.info("gen: timing %s", precision)
        result["timings"][precision] = attempt(time_precision, model, folder, folder_error, precision, s)
    return result


# ------------------------------------------------------------------------------------------------ train
def write_training_images(folder: Path, concepts: Sequence[str], size: int, seed: int, count: int = 2) -> Path:
    """``count`` random RGB PNGs of ``size`` px per concept under ``folder/<concept>/``."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in concepts:
        (folder / c).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / c / f"{i}.png")
    return folder


def iteration_seconds(losses_csv: Path) -> list[float]:
    """The ``seconds`` column of a run's losses.csv (one row per iteration)."""
    with open(losses_csv, newline="") as f:
        return [float(row["seconds"]) for row in csv.DictReader(f)]


@dataclass(frozen=True)
class TrainCase:
    name: str
    script: str
    flags: tuple[str, ...]
    precision: str
    devices: Optional[str]  # None: skipped
    skip_reason: str = ""


def train_cases(s: CheckSettings) -> list[TrainCase]:
    one = str(s.device.index or 0) if s.device.type == "cuda" else str(s.device)
    n_gpus = torch.cuda.device_count() if s.device.type == "cuda" else 0
    two = "0,1" if n_gpus >= 2 else None
    why = f"the released two-copy layout needs two GPUs; {n_gpus} visible" + ("" if n_gpus else f" ({s.device})")
    cie = ("--prompt", CIE_CONCEPT, f"--threshold={NEVER_STOP}")
    sepce = ("--prompts", *SEPCE_CONCEPTS, f"--thresholds={NEVER_STOP}")
    return [
        TrainCase("CiE, 1 device, fp32", "train-scripts/CiE.py", cie, "fp32", one),
        TrainCase("CiE, 1 device, bf16 autocast", "train-scripts/CiE.py", cie, "bf16", one),
        TrainCase(
            f"SepCE, {len(SEPCE_CONCEPTS)} concepts, 1 device, fp32", "train-scripts/SepCE.py", sepce, "fp32", one
        ),
        TrainCase("CiE, 2 devices (0,1), fp32", "train-scripts/CiE.py", cie, "fp32", two, why),
    ]


def train_case(case: TrainCase, s: CheckSettings, w: Weights, data: Path, out: Path) -> dict:
    """One training script run in-process; seconds/iteration from its losses.csv, peak GPU memory per device."""
    z = s.sizes
    script = import_script(REPO / case.script, "gpu_check_")
    argv = [
        *case.flags,
        "--iterations", str(z.train_warmup + z.train_iterations),
        "--devices", case.devices,
        "--precision", case.precision,
        "--ckpt_path", str(w.ckpt),
        "--config_path", str(w.config),
        "--data_dir", str(data),
        "--image_size", str(z.train_image_size),
        "--output_dir", str(out),
        "--overwrite",
        "--quiet",
    ]  # fmt: skip
    args = script.parse_args(argv)
    gpus = cuda_devices(s.device)
    for i in gpus:
        torch.cuda.synchronize(i)
        torch.cuda.reset_peak_memory_stats(i)
    tic = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        summary = script.main(args)
    for i in gpus:
        torch.cuda.synchronize(i)
    wall = time.perf_counter() - tic
    if not summary.get("ok", False):
        raise RuntimeError(f"training stopped early: {summary.get('stop_reason')}")
    seconds = iteration_seconds(out / "losses.csv")
    timed = seconds[z.train_warmup :] or seconds
    median = statistics.median(timed)
    peaks = {f"cuda:{i}": torch.cuda.max_memory_allocated(i) for i in gpus}
    return {
        "script": case.script,
        "argv": argv,
        "iterations": summary["iterations"],
        "reference": summary.get("reference"),
        "iteration_seconds": seconds,
        "median_s_per_iteration": median,
        "iterations_per_s": 1 / median,
        "wall_s": wall,
        "peak_bytes": {k: v for k, v in peaks.items() if v > 0} or None,
        "cpu_peak_rss_bytes": summary.get("cpu_peak_rss_bytes"),
    }


def section_train(s: CheckSettings, w: Weights, work: Path) -> dict:
    data = write_training_images(work / "train-data", [CIE_CONCEPT, *SEPCE_CONCEPTS], s.sizes.train_image_size, s.seed)
    result: dict[str, Any] = {"cases": {}}
    for case in train_cases(s):
        if case.devices is None:
            result["cases"][case.name] = skipped(case.skip_reason)
            continue
        log.info("train: %s", case.name)
        out = work / "train-runs" / re.sub(r"[^A-Za-z0-9]+", "-", case.name).strip("-")
        result["cases"][case.name] = attempt(train_case, case, s, w, data, out)
    return result


# ------------------------------------------------------------------------------------------------ torchrun
def rank_counts(output: str) -> dict[int, int]:
    """Images each rank reports written (generate-images.py's summary lines, ``... (rank r/n)`` under torchrun)."""
    counts: dict[int, int] = {}
    for m in RANK_LINE.finditer(output):
        rank = int(m.group(2)) if m.group(2) is not None else 0
        counts[rank] = counts.get(rank, 0) + int(m.group(1))
    return counts


def found_images(folder: Path) -> Counter:
    """How often each PNG file name occurs in ``folder`` and its class sub-folders."""
    return Counter(p.name for p in Path(folder).rglob("*.png"))


def check_shards(folder: Path, expected: Sequence[str], reported: Mapping[int, int], shares: Mapping[int, int]) -> dict:
    """Every ``expected`` image exists exactly once in ``folder`` and nothing else; each rank reported writing
    its share (``shares``: rank → images of its shard) and the reports add up to the images expected (a rank
    that generated another's rows would write it twice: same file, counted twice here)."""
    found = found_images(folder)
    missing = sorted(n for n in expected if n not in found)
    duplicated = sorted(n for n, k in found.items() if k > 1)
    unexpected = sorted(n for n in found if n not in set(expected))
    split_ok = dict(reported) == dict(shares) and sum(reported.values()) == len(expected)
    return {
        "expected_images": len(expected),
        "found_images": sum(found.values()),
        "missing": missing,
        "duplicated": duplicated,
        "unexpected": unexpected,
        "per_rank_written": {str(k): v for k, v in sorted(reported.items())},
        "per_rank_expected": {str(k): v for k, v in sorted(shares.items())},
        "split_ok": split_ok,
        "ok": split_ok and not (missing or duplicated or unexpected),
    }


def compare_images(a: Path, b: Path, names: Sequence[str]) -> dict:
    """Pixel comparison of the images ``names`` in folders ``a`` and ``b`` (uint8 levels)."""
    import numpy as np
    from PIL import Image

    worst, differing = 0, []
    for name in names:
        x = np.asarray(Image.open(Path(a) / name).convert("RGB"), dtype=np.int16)
        y = np.asarray(Image.open(Path(b) / name).convert("RGB"), dtype=np.int16)
        diff = int(np.abs(x - y).max()) if x.shape == y.shape else 255
        worst = max(worst, diff)
        if diff:
            differing.append(name)
    return {"compared": len(names), "max_abs_diff_levels": worst, "differing": differing, "equal": not differing}


def write_prompt_csv(path: Path, n: int, seed: int) -> list:
    from sepce.prompt_csv import PromptRow

    rows = [PromptRow(i, PROMPTS[i % len(PROMPTS)], seed + 1000 + i) for i in range(n)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["case_number", "prompt", "evaluation_seed"])
        writer.writerows([(r.case_number, r.prompt, r.evaluation_seed) for r in rows])
    return rows


def generate(label: str, cmd: list[str], s: CheckSettings) -> tuple[float, subprocess.CompletedProcess]:
    """Run one generation command; its wall time and output (one-line error on a non-zero exit)."""
    tic = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env(s.threads), timeout=s.torchrun_timeout)
    wall = time.perf_counter() - tic
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"{label} exited with status {proc.returncode}: {tail}")
    return wall, proc


def section_torchrun(s: CheckSettings, w: Weights, work: Path) -> dict:
    from sepce.prompt_csv import shard_rows

    n, z, num_samples = s.nproc, s.sizes, 1
    folder = work / "torchrun"
    rows = write_prompt_csv(folder / "prompts.csv", 2 * n, s.seed)
    script = str(REPO / "eval-scripts" / "generate-images.py")
    common = [
        "--model_name", "SD-v1-4",
        "--ckpt_path", str(w.ckpt),
        "--config_path", str(w.config),
        "--prompts_path", str(folder / "prompts.csv"),
        "--save_path", str(folder),
        "--num_samples", str(num_samples),
        "--sampler", "ddim",
        "--ddim_steps", str(z.torchrun_steps),
        "--image_size", str(z.torchrun_image_size),
        "--batch_size", "1",  # the same computation per image in both runs
        "--overwrite",
        "--quiet",
    ]  # fmt: skip
    device = "cuda" if s.device.type == "cuda" else str(s.device)  # cuda: cuda:LOCAL_RANK in each process
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}"]
    log.info("torchrun: %d process(es), %d rows", n, len(rows))
    multi_s, proc = generate(
        "torchrun generate-images.py", [*launcher, script, *common, "--output_name", "multi", "--device", device], s
    )
    single_s, _ = generate(
        "generate-images.py", [sys.executable, script, *common, "--output_name", "single", "--device", str(s.device)], s
    )
    names = [f"{r.case_number}_{k}.png" for r in rows for k in range(num_samples)]
    shares = {rank: len(shard_rows(rows, rank, n)) * num_samples for rank in range(n)}
    shards = check_shards(folder / "multi", names, rank_counts(proc.stdout), shares)
    same = compare_images(folder / "single", folder / "multi", [x for x in names if x not in shards["missing"]])
    return {
        "processes": n,
        "rows": len(rows),
        "num_samples": num_samples,
        "steps": z.torchrun_steps,
        "image_size": z.torchrun_image_size,
        "device": device,
        "torchrun_wall_s": multi_s,
        "single_process_wall_s": single_s,
        "shards": shards,
        "versus_single_process": same,
        "ok": shards["ok"] and same["equal"],
    }


# ------------------------------------------------------------------------------------------------ report
def gib(value: Optional[int]) -> str:
    return "-" if value is None else f"{value / GIB:.2f}"


def table_rows(report: Mapping[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """(section, case, result, peak memory [GiB], note) rows of the printed table, from the report."""
    rows: list[tuple[str, str, str, str, str]] = []
    for name in SECTIONS:
        sec = report["sections"].get(name, skipped("not run"))
        if _status_row(rows, name, "(section)", sec):
            continue
        try:
            rows += _section_rows(name, sec, report["settings"])
        except (KeyError, TypeError, ValueError, AttributeError) as e:  # the JSON holds everything anyway
            rows.append((name, "(report)", "ERROR", "-", f"cannot tabulate this section: {one_line(e)}"))
    return rows


def _status_row(rows: list, section: str, case: str, entry: Mapping[str, Any]) -> bool:
    """Append a row for a skipped or failed entry and return True; False (nothing appended) for an ok one."""
    if entry.get("status") == "skipped":
        rows.append((section, case, "skipped", "-", entry["reason"]))
    elif entry.get("status") == "error":
        rows.append((section, case, "ERROR", "-", entry["error"]))
    else:
        return False
    return True


def _section_rows(name: str, sec: Mapping[str, Any], settings: Mapping[str, Any]) -> list:
    rows: list[tuple[str, str, str, str, str]] = []
    if name == "gen":
        sane, case = sec["sanity"], "fp32 vs diffusers, same latents"
        if not _status_row(rows, name, case, sane):
            diff = "non-finite" if sane["max_abs_diff"] is None else f"max|d| {sane['max_abs_diff']:.2e}"
            std = "-" if sane["image_std"] is None else f"{sane['image_std']:.3f}"
            verdict = "ok" if sane["ok"] else "FAILED"
            note = f"{verdict} (tol {sane['tolerance']:g}); {sane['image_size']} px, {sane['steps']} steps, std {std}"
            rows.append((name, case, diff, "-", note))
        for precision, entry in sec["timings"].items():
            if _status_row(rows, name, precision, entry):
                continue
            for side in ("ours", "diffusers"):
                e, label = entry[side], f"{precision} {side}"
                if _status_row(rows, name, label, e):
                    continue
                note = (
                    f"{e['median_s']:.2f} s/batch of {entry['batch_size']}, median of {len(e['seconds'])}; "
                    f"{entry['image_size']} px, {entry['steps']} steps"
                )
                rows.append((name, label, f"{e['images_per_s']:.3f} img/s", gib(e.get("peak_own_bytes")), note))
            if "ratio_ours_over_diffusers" in entry:
                ratio = entry["ratio_ours_over_diffusers"]
                note = f"images/s ours / images/s diffusers (> 1: ours faster; time ratio {1 / ratio:.2f})"
                agree = entry.get("agreement") or {}
                if agree.get("finite"):
                    note += f"; same latents: mean |d| {agree['mean_abs_diff']:.4f}, max {agree['max_abs_diff']:.3f}"
                rows.append((name, f"{precision} ours/diffusers", f"{ratio:.2f}x", "-", note))
            native = entry.get("native_norm")
            if native is not None and not _status_row(rows, name, f"{precision} native GroupNorm", native):
                note = "images/s with GroupNorm32.cuda_16bit_native / ours, same rounds"
                if "pixels_differing" in native:
                    note += (
                        f"; {100 * native['pixels_differing']:.2f} % of pixels differ, "
                        f"max {native['max_abs_diff_levels']} levels"
                    )
                ratio = native.get("ratio_over_ours")
                value = "-" if ratio is None else f"{ratio:.3f}x"
                rows.append((name, f"{precision} native GroupNorm", value, gib(native.get("peak_own_bytes")), note))
    elif name == "train":
        for case, entry in sec["cases"].items():
            if _status_row(rows, name, case, entry):
                continue
            peak = max(entry["peak_bytes"].values()) if entry["peak_bytes"] else None
            timed = max(len(entry["iteration_seconds"]) - settings["sizes"]["train_warmup"], 1)
            note = f"median of {timed} after warm-up; reference: {entry['reference']}; run wall {entry['wall_s']:.1f} s"
            rows.append((name, case, f"{entry['median_s_per_iteration']:.3f} s/it", gib(peak), note))
    elif name == "torchrun":
        sh, same = sec["shards"], sec["versus_single_process"]
        written = "+".join(map(str, sh["per_rank_written"].values())) or "?"
        note = (
            f"{'ok' if sec['ok'] else 'FAILED'}: per rank {written} (expected "
            f"{'+'.join(map(str, sh['per_rank_expected'].values()))}), {len(sh['missing'])} missing, "
            f"{len(sh['duplicated'])} duplicated, {len(sh['unexpected'])} unexpected; "
            f"{'equal to' if same['equal'] else 'DIFFERENT from'} 1 process "
            f"({sec['single_process_wall_s']:.1f} s, max|d| {same['max_abs_diff_levels']})"
        )
        rows.append(
            (
                name,
                f"{sec['processes']} process(es), {sec['rows']} rows",
                f"{sec['torchrun_wall_s']:.1f} s wall",
                "-",
                note,
            )
        )
    return rows


def format_table(rows: Sequence[Sequence[str]]) -> str:
    header = ("section", "case", "result", "peak GiB", "note")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header) - 1)]
    lines = []
    for r in [header, *rows]:
        cells = [str(c).ljust(widths[i]) if i < len(widths) else str(c) for i, c in enumerate(r)]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "-" * max(len(line) for line in lines))
    return "\n".join(lines)


def title(report: Mapping[str, Any]) -> str:
    env = report["environment"]
    where = ", ".join(env["gpus"]) if report["settings"]["device"].startswith("cuda") else "CPU"
    cuda = f", CUDA {env['cuda']}" if env["cuda"] else ""
    return (
        f"GPU check{' --tiny' if report['settings']['tiny'] else ''} on {where} (torch {env['torch']}{cuda}, "
        f"diffusers {env['diffusers']}); "
        f"{Path(report['model']['config']).name}, {report['model']['weights']}; {report['wall_s']:.0f} s"
    )


def failures(report: Mapping[str, Any]) -> list[str]:
    """Names of the failed parts (errors and failed checks; skips are not failures)."""
    bad = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, Mapping):
            if node.get("status") == "error" or node.get("ok") is False:
                bad.append(path)
                return
            for k, v in node.items():
                walk(v, f"{path}.{k}" if path else str(k))

    walk(report["sections"], "")
    return bad


def _clean(obj: Any) -> Any:
    """JSON-safe: non-finite floats become None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


# ------------------------------------------------------------------------------------------------ main
def main(args: argparse.Namespace) -> dict:
    from sepce.io import write_json

    s = settings_from_args(args)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if s.threads:
        torch.set_num_threads(s.threads)
    started = time.perf_counter()
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "environment": environment(s.device),
        "settings": s.as_json(),
        "model": {"config": str(s.config_path), "weights": "-"},
        "sections": {name: skipped("not in --sections") for name in SECTIONS},
        "wall_s": 0.0,
    }

    def save() -> None:
        report["wall_s"] = time.perf_counter() - started
        write_json(s.output, _clean(report))

    with contextlib.ExitStack() as stack:
        if s.work_dir is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gpu-check-")))
        else:
            work = s.work_dir
            work.mkdir(parents=True, exist_ok=True)
        log.info("preparing weights (%s)", s.config_path.name)
        setup = attempt(lambda: {"weights": prepare_weights(s, work)})
        weights = setup.pop("weights", None)
        report["model"] = {
            "config": str(s.config_path),
            "weights": weights.source if weights else "-",
            "checkpoint": str(weights.ckpt) if weights else None,
            "prepare_s": weights.seconds if weights else None,
        }
        if weights is None:
            report["model"].update(error=setup["error"], traceback=setup["traceback"])
        save()
        runners = {"gen": section_gen, "train": section_train, "torchrun": section_torchrun}
        for name in s.sections:
            if weights is None:
                report["sections"][name] = {"status": "error", "error": f"setup failed: {setup['error']}"}
                continue
            log.info("section %s", name)
            report["sections"][name] = attempt(runners[name], s, weights, work)
            save()
        save()
    print(title(report))
    print(format_table(table_rows(report)))
    print(f"JSON: {s.output}")
    bad = failures(report)
    if bad:
        print(f"gpu_check.py: failed: {'; '.join(bad)} (see {s.output})", file=sys.stderr)
        raise SystemExit(EXIT_CHECK_FAILED)
    return report


if __name__ == "__main__":
    run(parse_args, main)
