"""The one checkpoint loader: CompVis ``.ckpt`` (``{"state_dict": ...}`` or a bare state dict) and
``.safetensors``, validated strictly against the config's model before any weights are materialised.

Keys that may differ from the model's without error (the whole list):

* ``cond_stage_model.transformer.text_model.*`` — the layout of released SD v1 files (older ``transformers``);
  read as ``cond_stage_model.transformer.*``.
* ``...embeddings.position_ids`` — a constant buffer some files carry; ignored.
* ``model_ema.*`` — EMA shadow weights; ignored when the config has ``use_ema: false`` (as v1-inference.yaml does).
* the DDPM schedule buffers (``betas``, ``alphas_cumprod``, ...) may be absent — they are recomputed from the config.

Anything else missing, unexpected or of the wrong shape raises :class:`CheckpointMismatchError` with one line
naming the first offending keys and, where recognisable, what the file is (SD 2.x, SDXL, a LoRA, diffusers).
A NaN or inf in any tensor raises :class:`IntegrityError` naming the tensor, before a model is built from it.
:func:`load_model_from_config` builds a model and loads a file; :func:`load_weights` loads into a built one (a
config's ``ckpt_path:``) through the same check.

``.ckpt`` files are read with ``torch.load(weights_only=True)``: nothing in them is imported or run. Classes that
old Lightning runs pickled beside the weights (the released SD v1 files hold some) become inert stubs; that needs
torch >= 2.4 (``add_safe_globals``; 2.6 adds the helpers used when present). Older torch reads plain state dicts
and ``.safetensors`` and refuses such files with one line.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import pickletools
import zipfile
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence, Union

import torch
from omegaconf import DictConfig, OmegaConf

from ldm.modules.diffusionmodules.util import SCHEDULE_BUFFERS
from ldm.util import instantiate_from_config

PathLike = Union[str, "os.PathLike[str]"]

TEXT_MODEL_PREFIX = "cond_stage_model.transformer.text_model."
TEXT_PREFIX = "cond_stage_model.transformer."
IGNORED_SUFFIXES = ("embeddings.position_ids",)
EMA_PREFIX = "model_ema."


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used (missing, unreadable, or of another model)."""


class CheckpointMismatchError(CheckpointError):
    """The checkpoint's keys or shapes do not match the model the config describes."""


class IntegrityError(CheckpointError):
    """A file whose content fails a check: a non-finite tensor, a digest that does not match what was recorded
    when it was written (raised here for checkpoints; :mod:`sepce` raises it for erasure records and image
    folders, and its scripts exit with their "check failed" status)."""


def check_finite(tensors: Mapping[str, torch.Tensor], source: str) -> None:
    """Refuse NaN or ±inf in any floating-point tensor of ``tensors`` with one line naming the first such tensor
    (and how many values are bad).

    Cheap: one sum per tensor (float32 accumulation), which is finite exactly when every value is (IEEE: NaN and
    inf propagate, inf - inf is NaN) unless the sum overflows — only then is ``isfinite`` evaluated elementwise,
    so a large but finite tensor is never refused. Seven to ten times faster than ``isfinite(t).all()`` (which
    allocates a mask) on SD v1's 4 GB state dict (``bench/bench_finite_check.py``; README)."""
    for name, t in tensors.items():
        if not t.is_floating_point() or t.is_meta or not t.numel():
            continue
        total = t.sum(dtype=torch.float64 if t.dtype == torch.float64 else torch.float32)
        if bool(torch.isfinite(total)) or bool(torch.isfinite(t).all()):
            continue
        bad = int((~torch.isfinite(t)).sum())
        raise IntegrityError(
            f"{source}: tensor {name!r} holds {bad} non-finite value(s) (NaN or inf) of {t.numel()}; refusing it"
        )


class _Ignored:
    """Stand-in for classes pickled alongside the weights (e.g. Lightning callbacks); never executed."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state


#: The first torch with ``torch.serialization.add_safe_globals``: older ones cannot skip pickled training metadata.
MIN_TORCH_FOR_PICKLED_METADATA = "2.4"


def pickled_globals(path: PathLike) -> list[str]:
    """``module.name`` of every global that the pickle of a ``torch.save`` zip file refers to, read with
    :mod:`pickletools` (nothing is imported or called): the stand-in for
    ``torch.serialization.get_unsafe_globals_in_checkpoint``, which torch < 2.6 lacks. Protocols 2 and 3 name
    globals with the ``GLOBAL`` opcode only (``weights_only`` loads read no other protocol); [] for other files."""
    if not zipfile.is_zipfile(path):
        return []
    with zipfile.ZipFile(path) as archive:
        name = next((n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl")), None)
        if name is None:
            return []
        data = archive.read(name)
    names = (arg.replace(" ", ".") for op, arg, _ in pickletools.genops(data) if op.name == "GLOBAL")
    return list(dict.fromkeys(names))


def _unsafe_globals(path: Path) -> list[str]:
    """The globals of ``path`` that a ``weights_only`` load refuses."""
    getter = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    if getter is not None:  # torch >= 2.6
        return list(getter(path))
    allowed = getattr(torch._weights_only_unpickler, "_get_allowed_globals", dict)()
    return [name for name in pickled_globals(path) if name not in allowed]


def _stub(full_name: str) -> type:
    """An inert class that a ``weights_only`` load accepts for ``full_name`` (torch matches on ``__module__`` and
    ``__name__``/``__qualname__``)."""
    module, _, name = full_name.rpartition(".")
    return type(name, (_Ignored,), {"__module__": module, "__qualname__": name})


@contextlib.contextmanager
def _allowing(stubs: list[type]) -> Iterator[None]:
    """Allow ``stubs`` in ``weights_only`` loads inside the block: ``safe_globals`` (torch >= 2.5) or, on 2.4, the
    same done by hand with ``add_safe_globals``. Callers check :func:`_can_allow` first."""
    serialization = torch.serialization
    if hasattr(serialization, "safe_globals"):
        with serialization.safe_globals(stubs):
            yield
        return
    previous = list(serialization.get_safe_globals())
    serialization.add_safe_globals(stubs)
    try:
        yield
    finally:
        serialization.clear_safe_globals()
        serialization.add_safe_globals(previous)


def _can_allow() -> bool:
    return hasattr(torch.serialization, "safe_globals") or hasattr(torch.serialization, "add_safe_globals")


def _torch_load(path: Path) -> Any:
    """``torch.load`` with ``weights_only=True``; classes of training metadata pickled in old Lightning
    checkpoints (the released SD v1 files hold some) are replaced by inert stubs instead of being imported. That
    needs torch >= 2.4 (:data:`MIN_TORCH_FOR_PICKLED_METADATA`); older torch gets a one-line error for such files
    and loads plain state dicts as usual."""
    try:
        mmap = zipfile.is_zipfile(path)
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except pickle.UnpicklingError:
            unsafe = _unsafe_globals(path)
            if not unsafe:
                raise
            if not _can_allow():
                raise CheckpointError(
                    f"checkpoint {path} pickles non-tensor objects ({', '.join(unsafe[:3])}) that torch "
                    f"{torch.__version__} cannot skip without running them; use torch>={MIN_TORCH_FOR_PICKLED_METADATA}"
                    f", or save its state dict as .safetensors with a newer torch"
                ) from None
            with _allowing([_stub(name) for name in unsafe]):
                return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except CheckpointError:
        raise
    except (RuntimeError, pickle.UnpicklingError, EOFError, OSError, ValueError, AttributeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"cannot read checkpoint {path}: {first[:200]} (is the file complete and a "
            f"PyTorch .ckpt/.pt or .safetensors file?)"
        ) from None


def read_state_dict(path: PathLike) -> dict[str, torch.Tensor]:
    """Read the state dict of a ``.ckpt``/``.pt``/``.pth``/``.bin`` or ``.safetensors`` file, with the released
    text-encoder layout normalised (see module docstring). Errors are :class:`CheckpointError`; a NaN or inf in
    any tensor is an :class:`IntegrityError` naming it (:func:`check_finite`)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            sd = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"cannot read safetensors checkpoint {path}: {str(e)[:200]}") from None
    else:
        obj = _torch_load(path)
        sd = obj.get("state_dict", obj) if isinstance(obj, Mapping) else obj
        if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise CheckpointError(
                f"checkpoint {path} holds no state dict (expected {{'state_dict': {{name: "
                f"tensor}}}} or {{name: tensor}}, got {type(sd).__name__})"
            )
    check_finite(sd, f"checkpoint {path}")
    return normalize_keys(sd)


# Kept for callers written against CompVis helpers.
load_state_dict = read_state_dict


def normalize_keys(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map ``cond_stage_model.transformer.text_model.X`` to ``cond_stage_model.transformer.X``."""
    return {
        (TEXT_PREFIX + k[len(TEXT_MODEL_PREFIX) :] if k.startswith(TEXT_MODEL_PREFIX) else k): v for k, v in sd.items()
    }


def denormalize_keys(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The released layout (``...transformer.text_model.X``) that older CompVis/transformers code expects."""
    return {(TEXT_MODEL_PREFIX + k[len(TEXT_PREFIX) :] if k.startswith(TEXT_PREFIX) else k): v for k, v in sd.items()}


def identify(keys) -> Optional[str]:
    """A guess at what kind of file a set of keys comes from, for error messages."""
    keys = list(keys)
    if any("lora" in k.lower() for k in keys[:2000]):
        return "a LoRA/adapter file, not a full model"
    if any(k.startswith("conditioner.embedders") for k in keys):
        return "an SDXL checkpoint"
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        return "an SD 2.x checkpoint (OpenCLIP text encoder)"
    if any(k.startswith(("down_blocks.", "unet.down_blocks.", "mid_block.")) for k in keys):
        return "a diffusers-format model (convert it to a CompVis checkpoint first)"
    return None


def describe_mismatch(
    expected: Mapping[str, Sequence[int]],
    found: Mapping[str, Sequence[int]],
    missing: Sequence[str],
    unexpected: Sequence[str],
    examples: int = 3,
) -> str:
    """How the key → shape map ``found`` differs from ``expected``, in one line: the keys of both whose shapes
    differ (the first one shown), then ``missing`` and ``unexpected`` keys (the caller decides which keys count;
    ``examples`` of each are named). Empty when nothing differs."""
    wrong = [k for k in expected if k in found and tuple(found[k]) != tuple(expected[k])]
    parts = []
    if wrong:
        k = wrong[0]
        parts.append(
            f"{len(wrong)} shape mismatch(es), first {k}: file {list(found[k])} vs expected {list(expected[k])}"
        )
    if missing:
        parts.append(f"{len(missing)} missing key(s), e.g. {', '.join(missing[:examples])}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s), e.g. {', '.join(unexpected[:examples])}")
    return "; ".join(parts)


def check_state_dict(
    expected: Mapping[str, torch.Size],
    sd: Mapping[str, torch.Tensor],
    source: str,
    config_name: str = "the config",
) -> None:
    """Raise :class:`CheckpointMismatchError` unless ``sd`` matches ``expected`` up to the ignorable keys."""
    uses_ema = any(k.startswith(EMA_PREFIX) for k in expected)
    missing = [k for k in expected if k not in sd and k not in SCHEDULE_BUFFERS]
    unexpected = [
        k
        for k in sd
        if k not in expected and not k.endswith(IGNORED_SUFFIXES) and not (k.startswith(EMA_PREFIX) and not uses_ema)
    ]
    problems = describe_mismatch(expected, {k: v.shape for k, v in sd.items()}, missing, unexpected)
    if not problems:
        return
    kind = identify(sd.keys())
    what = f" — it looks like {kind}" if kind else ""
    raise CheckpointMismatchError(f"{source} does not match {config_name}{what}: {problems}")


def load_config(path: PathLike) -> DictConfig:
    """Read a CompVis YAML config; a text-encoder ``version`` naming a folder beside the config is made absolute."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"config {path} does not exist (expected a CompVis YAML such as configs/stable-diffusion/v1-inference.yaml)"
        )
    try:
        config = OmegaConf.load(path)
    except Exception as e:  # noqa: BLE001 - YAML errors of any kind become one line
        raise ValueError(f"cannot parse config {path}: {str(e).splitlines()[0]}") from None
    if "model" not in config or "target" not in config.model:
        raise ValueError(f"config {path} has no model.target (expected a CompVis model config)")
    cond = OmegaConf.select(config, "model.params.cond_stage_config.params")
    version = cond.get("version") if cond is not None else None
    if isinstance(version, str) and (path.parent / version).is_dir():
        cond.version = str((path.parent / version).resolve())
    return config


def build_model(config: DictConfig | Mapping, device: Union[str, torch.device] = "meta") -> torch.nn.Module:
    """Instantiate ``config.model`` (on the meta device by default: shapes only, no memory)."""
    model_cfg = config.model if "model" in config else config
    with torch.device(device):
        return instantiate_from_config(model_cfg)


def expected_shapes(model: torch.nn.Module) -> dict[str, torch.Size]:
    return {k: v.shape for k, v in model.state_dict().items()}


def read_checked_state_dict(config: DictConfig | PathLike, ckpt: PathLike) -> dict[str, torch.Tensor]:
    """The checkpoint's state dict, validated against the model of ``config`` (built on the meta device)."""
    if not isinstance(config, (DictConfig, Mapping)):
        config = load_config(config)
    sd = read_state_dict(ckpt)
    check_state_dict(expected_shapes(build_model(config, "meta")), sd, str(ckpt))
    return sd


def load_model_from_config(
    config: DictConfig | PathLike,
    ckpt: PathLike,
    device: Union[str, torch.device] = "cpu",
    dtype: Optional[torch.dtype] = None,
    use_ema_weights: bool = False,
) -> torch.nn.Module:
    """Build the model of ``config`` and load ``ckpt`` into it; returns it in eval mode on ``device``.

    Weights are validated before anything is allocated (the model is built on the meta device and the
    checkpoint's tensors are assigned to it), so a wrong file fails fast and the peak memory is one copy of the
    weights. ``dtype`` (default float32) is the dtype of the UNet, autoencoder and text encoder (schedule buffers
    stay float32);
    ``use_ema_weights`` copies the EMA weights into the UNet (the file must hold ``model_ema.*``).
    """
    if not isinstance(config, (DictConfig, Mapping)):
        config = load_config(config)
    model = build_model(config, "meta")
    expected = expected_shapes(model)
    sd = read_state_dict(ckpt)
    check_state_dict(expected, sd, str(ckpt))
    ema = {k[len(EMA_PREFIX) :]: v for k, v in sd.items() if k.startswith(EMA_PREFIX)}
    if use_ema_weights and not ema:
        raise CheckpointError(f"{ckpt} holds no EMA weights (model_ema.*) but use_ema_weights was requested")
    wanted = {k: (v.float() if k in SCHEDULE_BUFFERS else v) for k, v in sd.items() if k in expected}
    model.load_state_dict(wanted, strict=False, assign=True)
    _check_materialized(model)
    if use_ema_weights:
        with torch.no_grad():
            for name, p in model.model.named_parameters():
                p.copy_(ema[name.replace(".", "")])
    # Like CompVis (which copies into float32 parameters), a float16 file gives a float32 model unless asked.
    cast_model(model, dtype or torch.float32)
    model.to(device)
    model.eval()
    return model


def load_weights(model: torch.nn.Module, ckpt: PathLike, ignore_keys: Sequence[str] = ()) -> torch.nn.Module:
    """Load ``ckpt`` into the already-built ``model`` after the same strict check as :func:`load_model_from_config`
    (this is where a config's ``ckpt_path:`` goes: ``DDPM``, ``LatentDiffusion``, ``AutoencoderKL``).

    ``ignore_keys`` are key prefixes dropped from the file AND from the model's expected keys (CompVis
    ``init_from_ckpt`` semantics: those tensors keep their initial values). Each tensor takes the dtype of the
    model's own; a model built on the meta device gets the file's tensors assigned instead of copied into.
    """
    prefixes = tuple(ignore_keys)
    current = model.state_dict()
    expected = {k: v.shape for k, v in current.items() if not k.startswith(prefixes)}
    sd = {k: v for k, v in read_state_dict(ckpt).items() if not k.startswith(prefixes)}
    check_state_dict(expected, sd, str(ckpt), f"{type(model).__name__} (ckpt_path)")
    wanted = {k: v.to(current[k].dtype) for k, v in sd.items() if k in expected}
    model.load_state_dict(wanted, strict=False, assign=any(t.is_meta for t in current.values()))
    return model


def _check_materialized(model: torch.nn.Module) -> None:
    """Every tensor must now be real: derived buffers (schedule, position ids) are built on the CPU even under
    the meta device, the rest came from the file."""
    leftover = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftover:
        raise CheckpointMismatchError(f"checkpoint left {len(leftover)} tensor(s) unset, e.g. {leftover[:3]}")


def cast_model(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Cast UNet, autoencoder and text encoder to ``dtype``; the diffusion schedule stays float32."""
    for name in ("model", "first_stage_model", "cond_stage_model"):
        sub = getattr(model, name, None)
        if sub is not None:
            sub.to(dtype)
    return model
