"""Loading models for the scripts: path validation, the CompVis loader, and what ``--model_name`` means.

Every script goes through :func:`load_model`, so a missing or wrong file fails with one line before any weights
are read.

Model resolution (:func:`resolve_model`, no weights are read)
------------------------------------------------------------
``--model_name`` is one of

* ``SD-v1-4`` or ``original`` (any case): the base checkpoint ``--ckpt_path`` with ``--config_path``;
* a run folder name under ``--models_dir`` (default ``models/``; the training scripts name their runs with
  :func:`sepce.paths.run_name`, ``CiE-VanGogh``, and :func:`find_run` also accepts ``CiE-Van Gogh``), or a path
  to a run folder, holding ``erasure.safetensors`` (a :mod:`sepce.records` erasure record, applied onto
  ``--ckpt_path`` after checking the record's base-checkpoint SHA-256) or else exactly one full checkpoint
  (``.ckpt``/``.safetensors``/``.pt``);
* a path to a record file or to a full CompVis checkpoint;
* a path to a diffusers-format UNet state dict (``diffusers-*.pt``/``.safetensors`` as ESD's diffusers scripts
  and UCE publish; found by its keys), loaded into the base checkpoint's model after checking it has the base
  UNet's architecture (:func:`sepce.convert.check_diffusers_unet_file`).

A SepCE record applies the increments of every concept it holds unless ``erase`` names a subset (Eq. 9–10 of
the paper: θ = θ_orig + Σ_{c∈subset} ΔW_c; a concept left out is restored). Unknown names fail with one line
listing what exists under ``models/``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Union

import torch
from ldm.checkpoint import load_config, load_model_from_config

from sepce import convert
from sepce.paths import DEFAULT_CKPT, DEFAULT_CONFIG, MODELS_DIR, run_name
from sepce.records import RECORD_NAME, ErasureRecord, apply_record, check_base, file_digest, load_record, match_concepts

log = logging.getLogger(__name__)

ORIGINAL_NAMES = ("SD-v1-4", "original")
WEIGHT_SUFFIXES = (".ckpt", ".safetensors", ".pt", ".pth")


def check_model_files(config_path: Union[str, Path], ckpt_path: Union[str, Path]) -> None:
    """Fail fast, before anything heavy, when the config or checkpoint is missing."""
    if not Path(config_path).is_file():
        raise FileNotFoundError(f"config {config_path} does not exist (--config_path)")
    if not Path(ckpt_path).is_file():
        hint = (
            " — download sd-v1-4-full-ema.ckpt into models/ldm/ (see README), or run the tiny model with "
            "--ckpt_path models/tiny/model.ckpt --config_path configs/tiny/v1-tiny.yaml"
        )
        raise FileNotFoundError(f"checkpoint {ckpt_path} does not exist (--ckpt_path){hint}")


def load_model(
    config_path: Union[str, Path],
    ckpt_path: Union[str, Path],
    device: Union[str, torch.device] = "cpu",
    dtype: Optional[torch.dtype] = None,
    use_ema_weights: bool = False,
) -> torch.nn.Module:
    """The CompVis model of ``config_path`` with ``ckpt_path`` loaded, in eval mode, gradients off."""
    check_model_files(config_path, ckpt_path)
    config = load_config(config_path)
    model = load_model_from_config(config, ckpt_path, device=device, dtype=dtype, use_ema_weights=use_ema_weights)
    for p in model.parameters():
        p.requires_grad_(False)
    log.info("loaded %s (%s) on %s", ckpt_path, config_path, device)
    return model


#: The three networks of a LatentDiffusion model (UNet wrapper, autoencoder, text encoder), by attribute.
NETWORKS = ("model", "first_stage_model", "cond_stage_model")


def networks_to(model, dtype: torch.dtype):
    """Cast the parameters of the three networks of ``model`` to ``dtype`` in place and return it (16-bit
    generation on a GPU: :class:`sepce.generation.ImageSampler` then runs them natively in 16 bit, as diffusers does;
    half the weight memory of float32 weights under autocast, and no per-call casts). The diffusion schedule buffers
    of ``model`` itself (``alphas_cumprod`` ...) stay float32: the sampler arithmetic reads them."""
    for name in NETWORKS:
        getattr(model, name).to(dtype)
    return model


def unet_of(model: torch.nn.Module) -> torch.nn.Module:
    """The UNet (``model.model.diffusion_model``)."""
    return model.model.diffusion_model


def attn2_modules(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Cross-attention modules by their full state-dict prefix (``model.diffusion_model....attn2``)."""
    return {name: m for name, m in model.named_modules() if name.endswith("attn2")}


def prompts_embeddings(model: torch.nn.Module, prompts: Sequence[str]) -> torch.Tensor:
    """``get_learned_conditioning`` without gradients."""
    with torch.no_grad():
        return model.get_learned_conditioning(list(prompts))


def tokenizer_from_config(config_path: Union[str, Path]):
    """The CLIP tokenizer of a model config's text encoder, built without loading any weights (to check prompts
    and words before the model loads)."""
    from ldm.modules.encoders.modules import BUILTIN_VIT_L14, resolve_text_encoder

    cond = load_config(config_path).model.params.cond_stage_config
    if not str(cond.target).endswith("FrozenCLIPEmbedder"):
        raise ValueError(
            f"{config_path}: expected a FrozenCLIPEmbedder text encoder (a CLIP tokenizer), not {cond.target}"
        )
    params = dict(cond.get("params") or {})
    text_config = params.get("text_config")
    _, tokenizer, _ = resolve_text_encoder(
        params.get("version", BUILTIN_VIT_L14[0]),
        int(params.get("max_length", 77)),
        dict(text_config) if text_config is not None else None,
    )
    return tokenizer


# ------------------------------------------------------------------------------------------ model resolution
@dataclass
class ResolvedModel:
    """What ``--model_name`` means, decided before any weights are read."""

    name: str
    kind: str  # "original" | "record" | "checkpoint" | "diffusers-unet"
    ckpt_path: Path  # the weights file to load (the base checkpoint for records and diffusers UNets)
    config_path: Path
    folder_name: str  # default output folder name under --save_path
    record: Optional[ErasureRecord] = None
    erase: Optional[List[str]] = None  # concepts whose erasure is applied (records only)
    unet_path: Optional[Path] = None  # diffusers-format UNet replacing the base's (kind "diffusers-unet")

    def describe(self) -> dict:
        """JSON-able identity of the weights the images come from (stored in ``generation.json``)."""
        ckpt = Path(self.ckpt_path)
        # the base is named by file name and size (it may move); a fine-tuned checkpoint by its location,
        # an erasure record by its content
        info = {"kind": self.kind, "checkpoint": ckpt.name, "checkpoint_bytes": ckpt.stat().st_size}
        if self.kind == "checkpoint":
            info["checkpoint"] = str(ckpt.resolve())
        if self.record is not None:
            info.update(
                method=self.record.method,
                record_sha256=file_digest(self.record.path),
                erase=list(self.erase or []),
            )
        if self.unet_path is not None:
            info.update(unet_file=str(Path(self.unet_path).resolve()), unet_sha256=file_digest(self.unet_path))
        return info


def _is_record_file(path: Path) -> bool:
    """Whether ``path`` is a safetensors file with SepCE erasure metadata (reads the header only); a file named
    ``erasure.safetensors`` always counts, so a damaged one reaches :func:`load_record`'s checks."""
    if path.suffix != ".safetensors":
        return False
    if path.name == RECORD_NAME:
        return True
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return "sepce" in (f.metadata() or {})
    except Exception:  # noqa: BLE001 - not a readable safetensors file: let the loader report it
        return False


def available_models(models_dir: Path = MODELS_DIR) -> List[str]:
    """Names accepted by :func:`resolve_model`: the original plus the usable run folders under ``models_dir``."""
    names = list(ORIGINAL_NAMES)
    models_dir = Path(models_dir)
    if models_dir.is_dir():
        for sub in sorted(p for p in models_dir.iterdir() if p.is_dir()):
            if (sub / RECORD_NAME).is_file() or _weight_files(sub):
                names.append(sub.name)
    return names


def find_run(models_dir: Path, name: str) -> Optional[Path]:
    """The run folder under ``models_dir`` that ``name`` stands for: ``models_dir/name`` itself, else the folder
    that :func:`sepce.paths.run_name` names for ``name`` read as ``<method>-<concept>[+<concept>...]``, ignoring
    case (``CiE-Van Gogh`` and ``cie-vangogh`` find ``CiE-VanGogh``, the folder ``CiE.py --prompt 'Van Gogh'``
    writes). None when there is no such folder."""
    if (models_dir / name).exists():
        return models_dir / name
    method, sep, concepts = name.partition("-")
    if not sep or not method or not models_dir.is_dir():
        return None
    wanted = run_name(method, concepts.split("+")).lower()
    matches = [p for p in models_dir.iterdir() if p.is_dir() and p.name.lower() == wanted]
    return matches[0] if len(matches) == 1 else None


def _weight_files(folder: Path) -> List[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix in WEIGHT_SUFFIXES and p.name != RECORD_NAME and not p.name.startswith(".")
    )


def resolve_model(
    model_name: str,
    ckpt_path: Path = DEFAULT_CKPT,
    config_path: Path = DEFAULT_CONFIG,
    models_dir: Path = MODELS_DIR,
    erase: Optional[Sequence[str]] = None,
) -> ResolvedModel:
    """Decide which weights ``model_name`` stands for (see the module docstring). Raises ``ValueError`` /
    ``FileNotFoundError`` with one line; reads only file headers, erasure records and the base digest."""
    ckpt_path, config_path, models_dir = Path(ckpt_path), Path(config_path), Path(models_dir)
    name = str(model_name).strip()
    if not name:
        raise ValueError("--model_name is empty; expected SD-v1-4, a run folder under models/ or a checkpoint path")
    if not config_path.is_file():
        raise FileNotFoundError(f"config {config_path} does not exist (--config_path)")

    if name.lower() in {n.lower() for n in ORIGINAL_NAMES}:
        target = None
    else:
        as_path = Path(name)
        looks_like_path = os.sep in name or "/" in name or as_path.suffix in WEIGHT_SUFFIXES
        run = None if looks_like_path else find_run(models_dir, name)
        target = as_path if run is None else run
        if not target.exists():
            raise ValueError(
                f"unknown model {name!r}: not one of {list(ORIGINAL_NAMES)}, not a run folder under {models_dir} "
                f"(training runs are named <method>-<Concept>[+<Concept>...], e.g. {run_name('CiE', ['Van Gogh'])}) "
                f"and not a file; available: {', '.join(available_models(models_dir))}"
            )
    folder_name = name if target is None else (target.stem if target.is_file() else target.resolve().name)

    record_path = weights = None
    if target is not None and target.is_dir():
        if (target / RECORD_NAME).is_file():
            record_path = target / RECORD_NAME
        else:
            files = _weight_files(target)
            if len(files) != 1:
                found = ", ".join(p.name for p in files) or "nothing usable"
                raise ValueError(
                    f"run folder {target} holds no {RECORD_NAME} and {len(files)} full checkpoints "
                    f"({found}); pass the checkpoint file itself as --model_name"
                )
            weights = files[0]
    elif target is not None:
        if _is_record_file(target):
            record_path = target
        elif target.suffix not in WEIGHT_SUFFIXES:
            raise ValueError(
                f"--model_name {name!r} is a file but neither an erasure record nor a checkpoint "
                f"({', '.join(WEIGHT_SUFFIXES)})"
            )
        else:
            weights = target

    if weights is not None and convert.is_diffusers_unet_file(weights):
        if erase:
            raise ValueError(f"--erase {list(erase)} needs a SepCE erasure record, but {name!r} is a diffusers UNet")
        if not ckpt_path.is_file():
            raise FileNotFoundError(f"base checkpoint {ckpt_path} for the diffusers UNet {weights} does not exist")
        convert.check_diffusers_unet_file(weights, config_path)
        return ResolvedModel(name, "diffusers-unet", ckpt_path, config_path, folder_name, unet_path=weights)
    if record_path is None:
        if erase:
            what = "the original model" if target is None else f"a full checkpoint ({weights})"
            raise ValueError(f"--erase {list(erase)} needs a SepCE erasure record, but {name!r} is {what}")
        path = ckpt_path if weights is None else weights
        if not path.is_file():
            raise FileNotFoundError(
                f"checkpoint {path} does not exist (--ckpt_path); download "
                "sd-v1-4-full-ema.ckpt into models/ldm/ or use the tiny model "
                "(python -m sepce.tiny; --ckpt_path models/tiny/model.ckpt "
                "--config_path configs/tiny/v1-tiny.yaml)"
            )
        return ResolvedModel(name, "original" if target is None else "checkpoint", path, config_path, folder_name)

    record = load_record(record_path)
    chosen = match_concepts(record, erase) if erase else list(record.concepts)
    if not ckpt_path.is_file():
        raise FileNotFoundError(
            f"base checkpoint {ckpt_path} of erasure record {record_path} does not exist "
            f"(--ckpt_path; the record was made from {record.base.get('path')})"
        )
    check_base(record, ckpt_path)
    return ResolvedModel(name, "record", ckpt_path, config_path, folder_name, record, chosen)


def load_resolved(resolved: ResolvedModel, device: torch.device):
    """Load the model of ``resolved`` (float32, eval mode, no gradients) on ``device``.

    Erasure records are applied on the CPU (where their tensors live) before the model moves to ``device``.
    For 16-bit generation the caller casts the networks afterwards (:func:`networks_to`).
    """
    on_cpu_first = resolved.record is not None or resolved.unet_path is not None
    model = load_model(resolved.config_path, resolved.ckpt_path, "cpu" if on_cpu_first else device)
    if resolved.unet_path is not None:
        convert.load_diffusers_unet_into(model, resolved.unet_path, resolved.config_path)
    if on_cpu_first:
        if resolved.record is not None:
            apply_record(model, resolved.record, erase=resolved.erase)
        model.to(device)
    log.info(
        "model %s (%s%s)",
        resolved.name,
        resolved.kind,
        f", erase {resolved.erase}" if resolved.record is not None else "",
    )
    return model
