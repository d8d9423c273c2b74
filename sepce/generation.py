"""Image generation shared by ``generate-images.py``, ``generate-data.py``, ``txt2img.py`` and the benchmark.

The weights come from :func:`sepce.modeling.resolve_model` (what ``--model_name`` means); the training-data
helpers of ``generate-data.py`` live in :mod:`sepce.data_generation`.

Seeds (same seed → same image)
------------------------------
Image ``k`` of a case with seed ``s`` starts from row ``k`` of
``torch.randn((num_samples, C, H/8, W/8), generator=torch.Generator("cpu").manual_seed(s))`` — exactly the
latents of the ESD repository's ``generate-images.py`` (which draws the whole batch of a case from
``torch.manual_seed(s)``); K-LMS multiplies them by the scheduler's ``init_noise_sigma`` (σ_max), DDIM, PLMS and
DPM-Solver++(2M) start from them as x_T. Row ``k`` does not depend on ``num_samples`` (CPU draws are
sequential), and every image's latent comes from its own case's generator, so the batch an image is sampled in
(``--batch_size``, resuming, ``torchrun`` sharding) does not change it. Sampling is deterministic after the initial
latent (DDIM with η = 0).

Sampling (:class:`ImageSampler`)
--------------------------------
K-LMS (the paper's evaluation protocol: 100 steps, guidance 7.5, 512 px), DDIM, PLMS or DPM-Solver++(2M) (fewer
steps for the same images; the concept world's protocol, docs/world-benchmark.md) from
:mod:`ldm.models.diffusion.sampling`; classifier-free guidance evaluates the unconditional and conditional
halves in one batched UNet forward (:func:`ldm.models.diffusion.sampling.cfg`). Latents and sampler arithmetic
stay float32; with ``fp16``/``bf16`` (GPU only) the networks' weights are cast to that type and run in it.
Decoded images are ``round(255 · clamp((x + 1) / 2, 0, 1))`` (as the ESD/diffusers scripts).

Output folders
--------------
Images are written atomically as ``<folder>/<case_number>_<k>.png`` with the prompt, seed and settings in PNG
text chunks; existing images are skipped (resumable), also after ``move_image.py`` sorted them into class folders
``<folder>/<index>/``. ``<folder>/generation.json`` records the settings
(model, sampler, steps, guidance, size, precision) and the SHA-256 of every image written (:mod:`sepce.folders`);
adding images to a folder made with other settings is refused unless ``overwrite`` (then the planned images are
regenerated).

No garbage written: a batch whose latents or decoded images hold NaN/inf, or in which an image is *collapsed*
(every one of its H × W × 3 uint8 values equal: a constant image, std 0 over all pixels — what a NaN or a
zeroed network turns into), stops the run with one line (:class:`ImageCheckError`, exit status 4) before any
image of that batch is written; the images of earlier batches stay valid and recorded, and rerunning after the
cause is fixed resumes after them.

Concurrency: several processes may generate into one folder at once (``torchrun`` ranks, or two runs started by
hand). Each batch is written under an exclusive lock on the folder (:func:`sepce.folders.folder_lock`): under it
the process re-reads ``generation.json``, stops if the folder's settings changed, skips images another process
wrote since it planned its jobs, writes its images atomically and records their digests. So every image is
written once and recorded with its digest; two runs over the same rows only duplicate sampling work.

Several processes (``torchrun --nproc_per_node N``): each takes the rows ``shard_rows(rows, rank, N)`` and, on
GPUs, the device ``cuda:<LOCAL_RANK>`` (when ``--device cuda`` has no index). Ranks never communicate, so a
resumed run with uneven leftovers never waits on a collective timeout.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from ldm.checkpoint import IntegrityError
from ldm.models.diffusion.sampling import (
    cfg,
    ddim_sample,
    ddim_timesteps,
    dpmpp_2m_sample,
    klms_initial_latent,
    klms_sample,
    plms_sample,
)
from tqdm.auto import tqdm

from sepce.cli import Runtime, add_device, add_precision, add_quiet, folder_name, positive_int, show_progress
from sepce.folders import IMAGES_KEY, SETTINGS_FILE, current_manifest, folder_lock, read_manifest, record_images
from sepce.io import atomic_write, sha256_file, write_json
from sepce.modeling import ResolvedModel, load_resolved, networks_to, resolve_model
from sepce.paths import DEFAULT_CKPT, DEFAULT_CONFIG, EVALUATION_DIR, MODELS_DIR
from sepce.prompt_csv import PromptRow, shard_rows

log = logging.getLogger(__name__)

SAMPLERS = ("klms", "ddim", "plms", "dpmpp_2m")
SEED_SCHEME = "image k of a case = row k of torch.randn((num_samples, C, H/8, W/8), Generator(cpu).manual_seed(seed))"


# ----------------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class SamplingSettings:
    """Sampler, steps, guidance and image size; the defaults are the paper's evaluation protocol.

    Checked when built (a script builds it once from its flags, before any model loads), so the code that receives
    one trusts it; the messages name the flags of :func:`add_sampling_arguments`."""

    sampler: str = "klms"
    steps: int = 100
    guidance_scale: float = 7.5
    image_size: int = 512

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ValueError(f"--sampler {self.sampler!r} is not supported; expected one of {list(SAMPLERS)}")
        limit = 1000 if self.sampler == "klms" else 500
        if not 1 <= self.steps <= limit:
            raise ValueError(f"--ddim_steps {self.steps} must lie in 1..{limit} for the {self.sampler} sampler")
        if self.sampler in ("ddim", "plms"):
            try:
                ddim_timesteps(self.steps)  # refuses step counts whose uniform DDIM grid reaches timestep 1000
            except ValueError as e:
                raise ValueError(
                    f"--ddim_steps {self.steps}: the CompVis uniform DDIM discretisation reaches timestep "
                    f"1000 (stride {1000 // self.steps} divides 999); {str(e).rpartition('; ')[2]}"
                ) from None
        if not np.isfinite(self.guidance_scale):
            raise ValueError(f"--guidance_scale {self.guidance_scale} must be a finite number")
        if self.image_size < 8 or self.image_size % 8:
            raise ValueError(f"--image_size {self.image_size} must be a positive multiple of 8")


# -------------------------------------------------------------------------------------------------- sampling
def case_noise(seed: int, num_samples: int, latent_shape: Tuple[int, int, int]) -> torch.Tensor:
    """The start noise of one case: ``randn((num_samples, *latent_shape))`` from a CPU generator seeded with
    ``seed`` (the ESD convention; see the module docstring). Row k is independent of ``num_samples``."""
    generator = torch.Generator("cpu").manual_seed(int(seed))
    return torch.randn((num_samples, *latent_shape), generator=generator)


class ImageCheckError(IntegrityError):
    """A batch whose latents or images are non-finite, or an image that collapsed (constant); nothing of the batch
    was written. ``rows``: the batch positions at fault."""

    def __init__(self, message: str, rows: Sequence[int] = ()):
        super().__init__(message)
        self.rows = list(rows)


def check_finite_rows(x: torch.Tensor, what: str) -> None:
    """Refuse a batch (B, ...) with NaN/inf in any row (:class:`ImageCheckError` naming the rows)."""
    bad = (~torch.isfinite(x)).flatten(1).any(1)
    if bool(bad.any()):
        raise ImageCheckError(f"the model produced non-finite {what} (NaN or inf)", bad.nonzero().flatten().tolist())


def collapsed_rows(images: np.ndarray) -> List[int]:
    """Positions of collapsed images in a uint8 batch (B, H, W, 3): every value of the image equal (max == min
    over all pixels and channels, i.e. std 0) — see the module docstring."""
    flat = images.reshape(len(images), -1)
    return np.flatnonzero(flat.max(1) == flat.min(1)).tolist()


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Decoded images in ≈[-1, 1] (B, 3, H, W) → uint8 (B, H, W, 3)."""
    x = ((images.float() + 1.0) / 2.0).clamp(0.0, 1.0)
    return (x * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


class ImageSampler:
    """Prompts + start noise → images, for one loaded LatentDiffusion model.

    ``dtype`` float16/bfloat16: with float32 weights the text encoder, UNet and decoder run under
    ``torch.autocast`` (matrix products and convolutions in 16-bit, normalisations in float32; CompVis'
    ``--precision autocast``); with weights already in ``dtype`` (:func:`sepce.modeling.networks_to`, what
    :func:`generate_rows` does) they run natively in ``dtype``, as diffusers' pipelines do, with no per-call casts.
    Either way the latents and the sampler arithmetic stay float32.
    """

    def __init__(self, model, settings: SamplingSettings, device: torch.device, dtype: torch.dtype = torch.float32):
        self.model, self.settings, self.device, self.dtype = model, settings, device, dtype
        factor = 2**model.num_downs
        self.latent_shape = (model.channels, settings.image_size // factor, settings.image_size // factor)
        self._embeddings: Dict[str, torch.Tensor] = {}
        weights = next(model.model.parameters()).dtype
        self.native = dtype != torch.float32 and weights == dtype  # 16-bit weights: no autocast
        self.net_dtype = dtype if self.native else torch.float32  # what the networks are fed

    def autocast(self):
        enabled = self.dtype != torch.float32 and not self.native
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=enabled)

    def embed(self, prompts: Sequence[str]) -> torch.Tensor:
        """Text conditioning (B, 77, D), cached per prompt (the text encoder runs once per distinct prompt)."""
        new = [p for p in dict.fromkeys(prompts) if p not in self._embeddings]
        if new:
            with torch.no_grad(), self.autocast():
                for p, e in zip(new, self.model.get_learned_conditioning(new)):
                    self._embeddings[p] = e
        return torch.stack([self._embeddings[p] for p in prompts])

    def model_fn(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """ε_θ (16-bit: native or under autocast), returned as float32 for the sampler arithmetic."""
        with self.autocast():
            return self.model.apply_model(x.to(self.net_dtype), t, cond.to(self.net_dtype)).float()

    @torch.no_grad()
    def sample_latents(self, prompts: Sequence[str], noise: torch.Tensor, progress: bool = False) -> torch.Tensor:
        """Run the sampler from ``noise`` (B, C, h, w) (standard normal) with classifier-free guidance."""
        s = self.settings
        cond = self.embed(prompts)
        uncond = self.embed([""]) if s.guidance_scale != 1.0 else None
        fn = cfg(self.model_fn, uncond, s.guidance_scale)
        x = noise.to(self.device, torch.float32)
        alphas = self.model.alphas_cumprod
        if s.sampler == "klms":
            return klms_sample(fn, klms_initial_latent(x, alphas), cond, alphas, s.steps, progress=progress)
        if s.sampler == "ddim":
            return ddim_sample(fn, x, cond, alphas, s.steps, progress=progress)
        if s.sampler == "dpmpp_2m":
            return dpmpp_2m_sample(fn, x, cond, alphas, s.steps, progress=progress)
        return plms_sample(fn, x, cond, alphas, s.steps, progress=progress)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        with self.autocast():
            decoded = self.model.decode_first_stage(latents.to(self.net_dtype))
        check_finite_rows(decoded, "decoded images")
        return to_uint8(decoded)

    def __call__(self, prompts: Sequence[str], noise: torch.Tensor, progress: bool = False) -> np.ndarray:
        """uint8 images (B, H, W, 3); non-finite latents or decoded images raise :class:`ImageCheckError`."""
        latents = self.sample_latents(prompts, noise, progress)
        check_finite_rows(latents, "latents")
        return self.decode(latents)


# --------------------------------------------------------------------------------------------------- jobs
@dataclass(frozen=True)
class ImageJob:
    """One image to make: image ``k`` of a case (prompt, seed) and where it goes."""

    case_number: int
    k: int
    prompt: str
    seed: int
    path: Path
    replace: bool = False  # the image was done when planned and is regenerated (overwrite)
    guidance: Optional[float] = None  # the row's own guidance scale; None: the sampling settings'


def image_name(case_number: int, k: int) -> str:
    return f"{case_number}_{k}.png"


def existing_images(folder: Path) -> Dict[str, Path]:
    """Image files of a model folder by name: loose ones and those already sorted into class folders
    ``<folder>/<index>/`` by ``move_image.py`` (so a sorted folder still counts as done)."""
    found: Dict[str, Path] = {}
    folder = Path(folder)
    if not folder.is_dir():
        return found
    places = [folder] + sorted(p for p in folder.iterdir() if p.is_dir() and p.name.isdigit())
    for place in places:
        for path in place.iterdir():
            if path.suffix == ".png" and path.is_file():
                found.setdefault(path.name, path)
    return found


def plan_jobs(
    rows: Iterable[PromptRow], num_samples: int, folder: Path, overwrite: bool = False
) -> Tuple[List[ImageJob], int]:
    """Jobs for the images of ``rows`` that do not exist yet; also the count skipped.

    An image counts as existing when ``<folder>/<case>_<k>.png`` or ``<folder>/<class>/<case>_<k>.png`` exists
    and ``generation.json`` records its digest (or the folder predates image digests); an image file it does not
    record (a run killed between writing the image and recording it) is regenerated where it is, and so is every
    image with ``overwrite``.
    """
    found = existing_images(folder)
    recorded = (read_manifest(folder) or {}).get(IMAGES_KEY)
    jobs, skipped = [], 0
    for row in rows:
        for k in range(num_samples):
            name = image_name(row.case_number, k)
            done = name in found and (recorded is None or name in recorded)
            if done and not overwrite:
                skipped += 1
            else:
                path = found.get(name, Path(folder) / name)
                job = ImageJob(row.case_number, k, row.prompt, row.evaluation_seed, path, done, row.guidance)
                jobs.append(job)
    return jobs, skipped


def save_png(path: Path, pixels: np.ndarray, text: Dict[str, str]) -> Path:
    """Atomically write an RGB uint8 array as PNG with ``text`` chunks."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in text.items():
        info.add_text(key, str(value))
    image = Image.fromarray(pixels, "RGB")
    return atomic_write(path, lambda p: image.save(p, format="PNG", pnginfo=info))


@dataclass(frozen=True)
class FolderLedger:
    """Where :func:`run_jobs` records what it writes: ``folder``'s ``generation.json``, which must still hold
    ``settings`` (:func:`folder_settings`) when each batch is written (see the module docstring)."""

    folder: Path
    settings: dict


def write_batch(
    batch: Sequence[ImageJob], images: np.ndarray, text: Dict[str, str], ledger: Optional[FolderLedger]
) -> int:
    """Save a checked batch atomically; with a ``ledger``, under the folder's lock, skipping images another process
    wrote since the jobs were planned and recording each written image's SHA-256 (an image written by a process
    killed before it recorded it counts as not written: :func:`plan_jobs` regenerates it). Returns the number
    written."""

    def save(job: ImageJob, pixels: np.ndarray) -> Path:
        meta = {"prompt": job.prompt, "seed": job.seed, "case_number": job.case_number, "sample": job.k}
        return save_png(job.path, pixels, {**meta, **text})

    if ledger is None:
        for job, pixels in zip(batch, images):
            save(job, pixels)
        return len(batch)
    with folder_lock(ledger.folder):
        manifest = current_manifest(ledger.folder, ledger.settings)
        recorded = manifest.get(IMAGES_KEY)
        digests = {}
        try:
            for job, pixels in zip(batch, images):
                made_meanwhile = job.path.exists() and (recorded is None or job.path.name in recorded)
                if made_meanwhile and not job.replace:
                    continue
                digests[job.path.name] = sha256_file(save(job, pixels))
        finally:  # also when interrupted (Ctrl-C): what was written is recorded; a kill leaves it unrecorded
            record_images(ledger.folder, manifest, digests)
    return len(digests)


def run_jobs(
    sampler: ImageSampler,
    jobs: Sequence[ImageJob],
    batch_size: int,
    num_samples: int,
    text: Optional[Dict[str, str]] = None,
    desc: str = "images",
    progress: bool = True,
    ledger: Optional[FolderLedger] = None,
) -> int:
    """Sample, check and save ``jobs`` in batches of ``batch_size`` (>= 1); returns the number of images written.

    Each job's start noise is row ``k`` of its case's :func:`case_noise` (drawn once per case), so batch
    composition never changes an image. A batch with non-finite latents or images, or a collapsed image, stops the
    run with one line (:class:`ImageCheckError`) before anything of it is written; ``ledger``: record the images
    in a folder's ``generation.json`` (:func:`write_batch`). With ``progress`` a bar counts the images; without,
    one line is logged when they are done (``<desc>: generated 200 images in 98 s``).
    """
    start_time = time.monotonic()
    noise: Dict[Tuple[int, int], torch.Tensor] = {}  # (case, seed) -> case_noise, for the current batch
    written = 0
    with tqdm(total=len(jobs), desc=desc, unit="img", disable=not progress) as bar:
        for start in range(0, len(jobs), batch_size):
            batch = jobs[start : start + batch_size]
            noise = {key: noise[key] for key in {(j.case_number, j.seed) for j in batch} if key in noise}
            for job in batch:
                key = (job.case_number, job.seed)
                if key not in noise:
                    noise[key] = case_noise(job.seed, max(num_samples, job.k + 1), sampler.latent_shape)
            rows = [noise[(job.case_number, job.seed)][job.k] for job in batch]
            try:
                images = sampler([job.prompt for job in batch], torch.stack(rows))
                collapsed = collapsed_rows(images)
                if collapsed:
                    raise ImageCheckError("the model produced collapsed (constant) images", collapsed)
            except ImageCheckError as error:
                names = [batch[i].path.name for i in error.rows]
                raise ImageCheckError(
                    f"{desc}: {error} for {len(names)} image(s) of the batch ({', '.join(names[:3])}"
                    f"{', ...' if len(names) > 3 else ''}); stopped before writing the batch; the {written} image(s) "
                    "written before stay valid and a rerun resumes after them once the model is fixed",
                    error.rows,
                ) from None
            written += write_batch(batch, images, text or {}, ledger)
            bar.update(len(batch))
    if not progress:
        log.info("%s: generated %d image(s) in %.0f s", desc, written, time.monotonic() - start_time)
    return written


# ------------------------------------------------------------------------------------------- distribution
@dataclass(frozen=True)
class Rank:
    """This process's place in a ``torchrun`` launch (rank 0 of 1 without one)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Rank:
        def read(name: str, default: int) -> int:
            value = os.environ.get(name, "")
            try:
                return int(value) if value.strip() else default
            except ValueError:
                raise ValueError(f"environment variable {name}={value!r} is not an integer") from None

        world = read("WORLD_SIZE", 1)
        rank = cls(read("RANK", 0), world, read("LOCAL_RANK", read("RANK", 0)))
        if world < 1 or not 0 <= rank.rank < world:
            raise ValueError(f"RANK={rank.rank} / WORLD_SIZE={world} from the environment are inconsistent")
        return rank


# ------------------------------------------------------------------------------------------ folder settings
def folder_settings(resolved: ResolvedModel, settings: SamplingSettings, precision: str) -> dict:
    """The settings that decide an image's pixels besides its prompt and seed."""
    return {
        "model": resolved.describe(),
        "sampler": settings.sampler,
        "steps": settings.steps,
        "guidance_scale": settings.guidance_scale,
        "image_size": settings.image_size,
        "precision": precision,
        "seeds": SEED_SCHEME,
    }


def check_folder_settings(folder: Path, settings: dict, overwrite: bool, extra: Optional[dict] = None) -> FolderLedger:
    """Refuse to add images to ``folder`` when its ``generation.json`` records other settings (unless
    ``overwrite``); write the settings file when missing or when overwriting (with an empty ``images`` record,
    unless the folder already holds images that no ``generation.json`` recorded: those stay unverified). Returns
    the :class:`FolderLedger` that :func:`run_jobs` records the new images in."""
    folder = Path(folder)
    with folder_lock(folder):
        manifest = read_manifest(folder)
        if manifest is not None:
            stored = manifest.get("settings")
            if stored == json.loads(json.dumps(settings)):
                return FolderLedger(folder, settings)
            if not overwrite:
                changed = _differences(stored or {}, settings)
                raise FileExistsError(
                    f"{folder} holds images made with other settings ({changed}); use another "
                    "--save_path or output name, or pass --overwrite to regenerate them"
                )
        unrecorded = manifest is None and existing_images(folder)
        if unrecorded:
            log.warning("%s: %d image(s) without generation.json; they stay unverified", folder, len(unrecorded))
        images = {} if unrecorded else {IMAGES_KEY: {}}
        write_json(folder / SETTINGS_FILE, {"settings": settings, **images, **(extra or {})})
    return FolderLedger(folder, settings)


def _differences(old: dict, new: dict, prefix: str = "") -> str:
    parts = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            inner = _differences(a, b, f"{prefix}{key}.")
            parts += [inner] if inner else []
        elif a != b:
            parts.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return "; ".join(parts)


def png_text(resolved: ResolvedModel, settings: SamplingSettings) -> Dict[str, str]:
    """Provenance written into every PNG (besides prompt, seed, case and sample index)."""
    text = {
        "model": resolved.name,
        "sampler": settings.sampler,
        "steps": str(settings.steps),
        "guidance_scale": str(settings.guidance_scale),
    }
    if resolved.erase is not None:
        text["erase"] = ", ".join(resolved.erase)
    return text


# --------------------------------------------------------------------------------------------- one call
@dataclass
class GenerationReport:
    """What :func:`generate_rows` did in this process (its shard of the rows)."""

    folder: Path
    rank: Rank
    planned: int = 0
    written: int = 0
    skipped: int = 0
    rows: List[PromptRow] = field(default_factory=list)

    def summary(self) -> str:
        """``<folder>: wrote N image(s), M already existed [(rank r/n)]``, the line the scripts print."""
        where = "" if self.rank.world_size == 1 else f" (rank {self.rank.rank}/{self.rank.world_size})"
        return f"{self.folder}: wrote {self.written} image(s), {self.skipped} already existed{where}"


@dataclass(frozen=True)
class GenerationSetup:
    """How a script generates, as the flags of :func:`add_sampling_arguments` say (built once, checked, by
    :func:`generation_setup`): the sampling settings, device and precision, this process's ``torchrun`` place,
    images per batch and whether progress bars show."""

    sampling: SamplingSettings
    runtime: Runtime
    rank: Rank = Rank()
    batch_size: int = 8
    progress: bool = True

    def sampler(self, model) -> ImageSampler:
        """An :class:`ImageSampler` of ``model`` (loaded on ``runtime.device``) with these settings."""
        return ImageSampler(model, self.sampling, self.runtime.device, self.runtime.dtype)

    def check_folder(
        self, folder: Path, resolved: ResolvedModel, overwrite: bool, extra: Optional[dict] = None
    ) -> FolderLedger:
        """:func:`check_folder_settings` of ``folder`` for images of ``resolved`` made with these settings."""
        settings = folder_settings(resolved, self.sampling, self.runtime.precision)
        return check_folder_settings(folder, settings, overwrite, extra)


def generation_setup(args: argparse.Namespace, sharded: bool = False) -> GenerationSetup:
    """The :class:`GenerationSetup` of a script's :func:`add_sampling_arguments` flags — the one place that reads
    them — checked (one-line ``ValueError``); ``sharded``: this process's rank of a ``torchrun`` launch
    (:meth:`Rank.from_env`), else a single process."""
    return GenerationSetup(
        SamplingSettings(args.sampler, args.ddim_steps, args.guidance_scale, args.image_size),
        Runtime.from_flags(args.device, args.precision),
        Rank.from_env() if sharded else Rank(),
        args.batch_size,
        show_progress(args.quiet),
    )


def generate_rows(
    rows: Sequence[PromptRow],
    resolved: ResolvedModel,
    folder: Path,
    setup: GenerationSetup,
    *,
    num_samples: int,
    from_case: int = 0,
    overwrite: bool = False,
) -> GenerationReport:
    """Generate ``num_samples`` images for each row with case number ≥ ``from_case`` (this process's ``torchrun``
    shard, ``setup.rank``) into ``folder``; the model is loaded only when an image is missing.

    The arguments were checked at the script boundary (flags, ``setup``) and ``folder`` was accepted by
    :func:`check_folder_settings`; nothing is validated again here.
    """
    folder, rank, runtime = Path(folder), setup.rank, setup.runtime
    mine = shard_rows([row for row in rows if row.case_number >= from_case], rank.rank, rank.world_size)
    jobs, skipped = plan_jobs(mine, num_samples, folder, overwrite=overwrite)
    report = GenerationReport(folder, rank, len(jobs), 0, skipped, mine)
    if not jobs:
        return report
    if runtime.device.type == "cuda" and runtime.device.index is not None:  # set_device refuses a bare "cuda"
        torch.cuda.set_device(runtime.device)
    model = load_resolved(resolved, runtime.device)
    if runtime.dtype != torch.float32:  # 16-bit weights, run natively: half the weight memory, no casts
        networks_to(model, runtime.dtype)
    desc = folder.name if rank.world_size == 1 else f"{folder.name} [rank {rank.rank}/{rank.world_size}]"
    ledger = FolderLedger(folder, folder_settings(resolved, setup.sampling, runtime.precision))
    for guidance, group in guidance_groups(jobs):
        sampling = setup.sampling if guidance is None else replace(setup.sampling, guidance_scale=guidance)
        sampler = ImageSampler(model, sampling, runtime.device, runtime.dtype)
        text = png_text(resolved, sampling)
        report.written += run_jobs(
            sampler, group, setup.batch_size, num_samples, text, desc, setup.progress, ledger
        )
    return report


def guidance_groups(jobs: Sequence[ImageJob]) -> List[Tuple[Optional[float], List[ImageJob]]]:
    """``jobs`` grouped by their own guidance scale (rows of a CSV with ``evaluation_guidance``; ``None``: the
    sampling settings'), in order of first appearance; a batch never mixes guidance scales."""
    groups: Dict[Optional[float], List[ImageJob]] = {}
    for job in jobs:
        groups.setdefault(job.guidance, []).append(job)
    return list(groups.items())


# ------------------------------------------------------------------------------------------------ argparse
def add_sampling_arguments(parser: argparse.ArgumentParser, steps: int = 100, image_size: int = 512) -> None:
    """The sampler flags every generation script shares (ESD's names: ``--ddim_steps`` counts any sampler), with
    ``--device``, ``--precision`` and ``--quiet`` of :mod:`sepce.cli`; :func:`generation_setup` reads them."""
    parser.add_argument(
        "--sampler",
        choices=SAMPLERS,
        default="klms",
        help="sampler: K-LMS (paper protocol), DDIM (eta 0), PLMS or DPM-Solver++(2M) (one UNet call per step)",
    )
    parser.add_argument(
        "--ddim_steps", "--steps", dest="ddim_steps", type=positive_int, default=steps, help="number of sampler steps"
    )
    parser.add_argument("--guidance_scale", type=float, default=7.5, help="classifier-free guidance scale")
    parser.add_argument("--image_size", type=positive_int, default=image_size, help="image height and width in pixels")
    parser.add_argument(
        "--batch_size",
        type=positive_int,
        default=8,
        help="images per sampler batch (each UNet forward sees 2x this with guidance)",
    )
    add_precision(
        parser,
        help="network precision; fp16/bf16 need a GPU: the networks in 16-bit (latents and sampler stay fp32)",
    )
    add_device(parser, help="torch device (cpu, cuda, cuda:N or N); under torchrun, 'cuda' means cuda:LOCAL_RANK")
    add_quiet(parser)


def add_output_arguments(parser: argparse.ArgumentParser, save_help: str) -> None:
    """``--save_path``, ``--output_name`` and ``--num_samples`` of the scripts that write a model's evaluation
    images (``<save_path>/<output name>/<case>_<k>.png``)."""
    parser.add_argument("--save_path", type=Path, default=EVALUATION_DIR, help=save_help)
    parser.add_argument(
        "--output_name",
        type=folder_name,
        default=None,
        help="folder name under --save_path (None: the model name, e.g. SD-v1-4)",
    )
    parser.add_argument("--num_samples", type=positive_int, default=10, help="images per CSV row")


def add_model_arguments(
    parser: argparse.ArgumentParser, erase: bool = True, model_name: Union[bool, str] = True
) -> None:
    """``--model_name`` (required; ``model_name`` a string: its default; False: left out), ``--ckpt_path``,
    ``--config_path``, ``--models_dir`` (and ``--erase``): the inputs of :func:`sepce.modeling.resolve_model`,
    which :func:`model_from_args` reads."""
    if model_name:
        parser.add_argument(
            "--model_name",
            required=model_name is True,
            default=None if model_name is True else model_name,
            help="SD-v1-4 (original), a run folder under --models_dir (e.g. CiE-VanGogh), or a checkpoint/record path",
        )
    parser.add_argument(
        "--ckpt_path",
        type=Path,
        default=DEFAULT_CKPT,
        help="base (original) CompVis checkpoint; erasure records are applied onto it",
    )
    parser.add_argument("--config_path", type=Path, default=DEFAULT_CONFIG, help="CompVis model config")
    parser.add_argument(
        "--models_dir", type=Path, default=MODELS_DIR, help="folder of training runs that --model_name names"
    )
    if erase:
        parser.add_argument(
            "--erase",
            nargs="+",
            default=None,
            metavar="CONCEPT",
            help="SepCE records: erase only these concepts (None: every concept of the record)",
        )


def model_from_args(args: argparse.Namespace, model_name: Optional[str] = None) -> ResolvedModel:
    """What the flags of :func:`add_model_arguments` name (:func:`sepce.modeling.resolve_model`; ``model_name``
    instead of ``--model_name``), decided before any weights are read."""
    name = model_name or args.model_name
    return resolve_model(name, args.ckpt_path, args.config_path, args.models_dir, getattr(args, "erase", None))


def file_slug(text: str) -> str:
    """A prompt as it appears in image file and evaluation folder names: lower case, runs of other characters
    as one ``-`` (``'Van Gogh'`` → ``'van-gogh'``; ``''`` → ``'blank'``) — ``txt2img.py``'s images,
    ``generate-data.py``'s class-folder links, ``reproduce.py``'s evaluation folders.

    Not the run-name form (:func:`sepce.paths.concept_slug`, ``'VanGogh'``), which names training runs and must
    match what the training scripts write: these names identify files that already exist on disk (class-folder
    links are matched by name when a run resumes, so renaming them would place every image twice), and a
    lower-case name cannot collide on a case-insensitive file system."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "blank"
