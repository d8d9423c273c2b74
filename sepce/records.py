"""Erasure records: what an erasure changed, saved small, and composed onto the base checkpoint at load time.

One ``erasure.safetensors`` per run (format ``sepce-erasure/1``), metadata as JSON in the safetensors header:

* **Replaced tensors** (CiE, ESD, FMN, Ablating Concepts): tensors stored under their CompVis state-dict keys
  (``model.diffusion_model....attn2.to_k.weight``); applying the record copies them into the model.
* **Separable increments** (SepCE): per concept c a basis ``basis.<c>`` (n_c × D, the basic solution set S_c)
  and per edited layer l a coefficient matrix ``coef.<c>.<layer key>`` (d_out × n_c). Erasing a subset E sets
  W_l = W_l^orig + Σ_{c∈E} A_{c,l} (β S_c) (paper Eq. 9–10); restoring c = leaving it out of E.

Every record names the base checkpoint it was made from (path and SHA-256, cached beside the file), and applying
a record to a different base is refused.

Every record is sealed when written: the safetensors metadata ``sepce_digest`` holds the SHA-256 of the header
JSON and of each tensor (its dtype, shape and bytes). :func:`load_record` — the one way records are read
(``--model_name``, ``compose_erasure.py``, ``convertModels.py --record``, the attack, the world benchmark,
``SepCE.py --add_to``) — recomputes them and refuses a record whose header or any tensor differs, names what
differs (one line, :class:`RecordIntegrityError`), and refuses NaN/inf in any tensor; a record written before
seals existed (no ``sepce_digest``) still loads, with a one-line warning.

Full checkpoints (:func:`write_full_checkpoint`) carry the erased values in the UNet AND in its EMA copy
(``model_ema.*``, which SD's ``sd-v1-4-full-ema.ckpt`` holds and which CompVis with ``use_ema: True``, diffusers'
converter with ``extract_ema=True`` and ``use_ema_weights`` read), so no reader of the file gets the original
weights back.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence, Union

import torch
from ldm.checkpoint import (
    EMA_PREFIX,
    TEXT_MODEL_PREFIX,
    TEXT_PREFIX,
    IntegrityError,
    _torch_load,
    check_finite,
    normalize_keys,
)

from sepce.io import atomic_path, save_torch, sha256_file

log = logging.getLogger(__name__)

FORMAT = "sepce-erasure/1"
RECORD_NAME = "erasure.safetensors"
HEADER_KEY = "sepce"  # safetensors metadata key of the record's header (JSON)
DIGEST_KEY = "sepce_digest"  # ... and of its seal: SHA-256 of the header text and of every tensor
PathLike = Union[str, "os.PathLike[str]"]


class RecordError(ValueError):
    """An erasure record that cannot be used as asked."""


class RecordIntegrityError(RecordError, IntegrityError):
    """A record whose content does not match its seal, or holds NaN/inf (scripts exit with "check failed")."""


def tensor_digest(t: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes (row-major, as safetensors stores them)."""
    t = t.detach().to("cpu").contiguous()
    h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


def content_digest(header_text: str, tensors: Mapping[str, torch.Tensor]) -> dict:
    """The seal of a record: SHA-256 of its header JSON text and of each tensor (:func:`tensor_digest`)."""
    return {
        "algorithm": "sha256",
        "header": hashlib.sha256(header_text.encode()).hexdigest(),
        "tensors": {k: tensor_digest(v) for k, v in sorted(tensors.items())},
    }


def check_seal(path: Path, header_text: str, tensors: Mapping[str, torch.Tensor], seal_text: Optional[str]) -> None:
    """Compare a record's content with its seal (:func:`content_digest`); one-line :class:`RecordIntegrityError`
    naming what differs. No seal (a record written before seals existed): a one-line warning."""
    if seal_text is None:
        log.warning("%s has no content digest (written before records were sealed); loading it unverified", path)
        return
    try:
        seal = json.loads(seal_text)
        recorded = dict(seal["tensors"])
        header = seal["header"]
    except (ValueError, KeyError, TypeError):
        raise RecordIntegrityError(
            f"{path}: its content digest ({DIGEST_KEY}) is unreadable; the file is damaged"
        ) from None
    actual = content_digest(header_text, tensors)
    missing = sorted(set(recorded) - set(tensors))
    extra = sorted(set(tensors) - set(recorded))
    changed = sorted(k for k in recorded if k in tensors and recorded[k] != actual["tensors"][k])
    if header != actual["header"]:
        raise RecordIntegrityError(f"{path}: its metadata differs from the digest written with it; the file is damaged")
    for names, what in ((changed, "differ"), (missing, "are missing"), (extra, "were not written with it")):
        if names:
            raise RecordIntegrityError(
                f"{path}: {len(names)} tensor(s) {what} from the digest written with the record "
                f"(first {names[0]!r}); the file is damaged or was edited"
            )


def file_digest(path: PathLike, chunk: int = 1 << 24) -> str:
    """SHA-256 of a file; cached in ``<file>.sha256`` (keyed by size and mtime) when the folder is writable."""
    path = Path(path)
    st = path.stat()
    cache = path.with_name(path.name + ".sha256")
    key = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if cache.is_file():
        try:
            cached = json.loads(cache.read_text())
            if {k: cached.get(k) for k in key} == key:
                return cached["sha256"]
        except (ValueError, KeyError):
            pass
    digest = sha256_file(path, chunk)
    try:
        cache.write_text(json.dumps({**key, "sha256": digest}))
    except OSError:
        pass
    return digest


def base_info(ckpt_path: PathLike, config_path: Optional[PathLike] = None) -> dict:
    """Identity of a base checkpoint for a record's metadata."""
    info = {"path": str(ckpt_path), "sha256": file_digest(ckpt_path)}
    if config_path is not None:
        info["config"] = str(config_path)
    return info


@dataclass
class ErasureRecord:
    """An erasure loaded from (or about to be written to) ``erasure.safetensors``."""

    method: str
    concepts: list[str]
    base: dict
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    bases: dict[str, torch.Tensor] = field(default_factory=dict)
    coefs: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    beta: float = 1.0
    meta: dict = field(default_factory=dict)
    path: Optional[Path] = None

    @property
    def separable(self) -> bool:
        return bool(self.coefs)

    @property
    def changed_keys(self) -> set[str]:
        """The state-dict keys of every tensor the record changes (replaced tensors and increment layers)."""
        return set(self.tensors) | {k for layers in self.coefs.values() for k in layers}

    def increments(self, concepts: Optional[Iterable[str]] = None) -> dict[str, torch.Tensor]:
        """Σ_{c ∈ concepts} A_{c,l} (β S_c) per layer key l (all concepts when None)."""
        chosen = self.check_concepts(concepts)
        out: dict[str, torch.Tensor] = {}
        for c in chosen:
            basis = self.bases[c].float() * self.beta
            for layer, coef in self.coefs[c].items():
                delta = coef.float() @ basis  # d_out x D
                out[layer] = out[layer] + delta if layer in out else delta
        return out

    def check_concepts(self, concepts: Optional[Iterable[str]]) -> list[str]:
        if concepts is None:
            return list(self.concepts)
        chosen = list(concepts)
        unknown = [c for c in chosen if c not in self.concepts]
        if unknown:
            raise RecordError(f"concept(s) {unknown} are not in this record; it holds {self.concepts}")
        if not self.separable and sorted(chosen) != sorted(self.concepts):
            raise RecordError(f"{self.method} record erases {self.concepts} jointly; a subset needs a SepCE record")
        return chosen


def check_concept_name(name: str, flag: str) -> str:
    """A concept name as erasure records store it: the tensor names ``basis.<c>`` / ``coef.<c>.<layer>`` use ``.``
    as separator, so ``'.'`` in a name is refused (one-line ``RecordError`` naming ``flag``). Scripts call it on
    their flags before any model loads; :func:`save_record` checks again."""
    if "." in name:
        raise RecordError(f"{flag} {name!r} contains '.', which erasure records do not allow in concept names")
    return name


def save_record(path: PathLike, record: ErasureRecord, overwrite: bool = False) -> Path:
    """Write ``record`` atomically as safetensors with JSON metadata and its seal (:func:`content_digest`);
    NaN/inf in any tensor is refused (:class:`~ldm.checkpoint.IntegrityError`) before anything is written."""
    from safetensors.torch import save_file

    for c in record.concepts:
        check_concept_name(c, "concept name")

    tensors = {f"tensor.{k}": v for k, v in record.tensors.items()}
    tensors.update({f"basis.{c}": b for c, b in record.bases.items()})
    for c, layers in record.coefs.items():
        tensors.update({f"coef.{c}.{layer}": a for layer, a in layers.items()})
    header = {
        "format": FORMAT,
        "method": record.method,
        "concepts": record.concepts,
        "base": record.base,
        "beta": record.beta,
        "meta": record.meta,
    }
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    check_finite(tensors, f"erasure record {path}")
    header_text = json.dumps(header, default=str)
    seal = json.dumps(content_digest(header_text, tensors))
    with atomic_path(path, overwrite=overwrite) as tmp:
        save_file(tensors, str(tmp), metadata={HEADER_KEY: header_text, DIGEST_KEY: seal})
    return Path(path)


def find_record(path: PathLike) -> Path:
    """``path`` itself if it is a record file, else ``path/erasure.safetensors``."""
    path = Path(path)
    candidate = path / RECORD_NAME if path.is_dir() else path
    if not candidate.is_file():
        raise RecordError(f"no erasure record at {candidate}")
    return candidate


def load_record(path: PathLike) -> ErasureRecord:
    """Read and verify an erasure record (a file or a run folder holding one): its seal (:func:`check_seal`), then
    every tensor finite; all failures are one line (:class:`RecordError`, :class:`RecordIntegrityError`)."""
    from safetensors import safe_open

    path = find_record(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - unreadable file → one line
        raise RecordIntegrityError(
            f"cannot read erasure record {path}: {str(e)[:200]} (truncated or damaged?)"
        ) from None
    raw = metadata.get(HEADER_KEY)
    if raw is None:
        raise RecordError(f"{path} is a safetensors file but not a SepCE erasure record (no 'sepce' metadata)")
    check_seal(path, raw, tensors, metadata.get(DIGEST_KEY))
    try:
        header = json.loads(raw)
    except ValueError:
        raise RecordIntegrityError(f"{path}: its metadata is not valid JSON; the file is damaged") from None
    check_finite(tensors, f"erasure record {path}")
    if header.get("format") != FORMAT:
        raise RecordError(f"{path}: record format {header.get('format')!r}, expected {FORMAT!r}")
    rec = ErasureRecord(
        method=header["method"],
        concepts=list(header["concepts"]),
        base=header["base"],
        beta=float(header.get("beta", 1.0)),
        meta=header.get("meta", {}),
        path=path,
    )
    for k, v in tensors.items():
        kind, rest = k.split(".", 1)
        if kind == "tensor":
            rec.tensors[rest] = v
        elif kind == "basis":
            rec.bases[rest] = v
        elif kind == "coef":
            concept, layer = rest.split(".", 1)
            rec.coefs.setdefault(concept, {})[layer] = v
    return rec


def check_base(record: ErasureRecord, ckpt_path: PathLike) -> None:
    """Refuse a record made for another base checkpoint (compared by SHA-256)."""
    digest = file_digest(ckpt_path)
    if record.base.get("sha256") != digest:
        raise RecordError(
            f"{record.path or 'record'} was made for base checkpoint {record.base.get('path')} "
            f"(sha256 {str(record.base.get('sha256'))[:12]}…), not {ckpt_path} "
            f"(sha256 {digest[:12]}…)"
        )


def changed_tensors(
    record: ErasureRecord, base: Mapping[str, torch.Tensor], erase: Optional[Sequence[str]] = None
) -> dict[str, torch.Tensor]:
    """New values of every tensor the record changes, given the base tensors (state-dict keys)."""
    if record.separable:
        return {
            k: (base[k].float() + d.to(base[k].device)).to(base[k].dtype) for k, d in record.increments(erase).items()
        }
    record.check_concepts(erase)
    return dict(record.tensors)


def match_concepts(record: ErasureRecord, names: Sequence[str], flag: str = "--erase") -> list[str]:
    """``flag``'s names → the record's concept names (exact, else ignoring case and spaces: ``vangogh`` finds
    ``Van Gogh``); a subset of a non-separable record is refused."""

    def key(name: str) -> str:
        return name.replace(" ", "").lower()

    by_key = {key(c): c for c in record.concepts}
    chosen: list[str] = []
    for name in names:
        concept = name if name in record.concepts else by_key.get(key(name))
        if concept is None:
            raise RecordError(
                f"{flag} {name!r} is not a concept of {record.path or 'the record'}; it holds {record.concepts}"
            )
        if concept not in chosen:
            chosen.append(concept)
    record.check_concepts(chosen)
    return chosen


def erased_tensors(
    state_dict: Mapping[str, torch.Tensor], record: ErasureRecord, erase: Optional[Sequence[str]] = None
) -> dict[str, torch.Tensor]:
    """The erased values (in the base's dtypes) of every tensor the record changes, given ``state_dict`` (CompVis
    keys, the record's base): all its concepts, or the subset ``erase``. A tensor the base lacks or whose shape
    differs is a one-line ``RecordError``."""
    keys = record.changed_keys
    missing = sorted(k for k in keys if k not in state_dict)
    if missing:
        raise RecordError(
            f"the base state dict has no tensor {missing[0]!r} that {record.path or 'the record'} changes"
        )
    changed = changed_tensors(record, {k: state_dict[k] for k in keys}, erase)
    for k, v in changed.items():
        if tuple(v.shape) != tuple(state_dict[k].shape):
            raise RecordError(f"record tensor {k!r} has shape {list(v.shape)}, the base {list(state_dict[k].shape)}")
    return {k: v.to(state_dict[k].dtype) for k, v in changed.items()}


def erased_state_dict(
    state_dict: Mapping[str, torch.Tensor], record: ErasureRecord, erase: Optional[Sequence[str]] = None
) -> dict[str, torch.Tensor]:
    """``state_dict`` (CompVis keys, the record's base) with the record's erasure applied (all its concepts, or
    the subset ``erase``; :func:`erased_tensors`); the other tensors are shared, not copied."""
    return {**state_dict, **erased_tensors(state_dict, record, erase)}


@torch.no_grad()
def apply_record(
    model: torch.nn.Module,
    record: ErasureRecord,
    erase: Optional[Sequence[str]] = None,
    base: Optional[Mapping[str, torch.Tensor]] = None,
) -> dict[str, torch.Tensor]:
    """Write the erased weights into ``model`` in place; returns the original values of the changed tensors
    (pass them back as ``base`` to switch subsets, or to :func:`restore` to undo)."""
    params = dict(model.named_parameters())
    originals = dict(base) if base is not None else {}
    keys = record.changed_keys
    missing = sorted(k for k in keys if k not in params)
    if missing:
        raise RecordError(f"record changes {missing[0]!r}, which this model does not have")
    for k in keys:
        originals.setdefault(k, params[k].detach().clone())
    for k, v in changed_tensors(record, originals, erase).items():
        params[k].copy_(v.to(params[k].dtype))
    return originals


@torch.no_grad()
def restore(model: torch.nn.Module, originals: Mapping[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    for k, v in originals.items():
        params[k].copy_(v)


def save_safetensors(path: PathLike, tensors: Mapping[str, torch.Tensor], overwrite: bool = False) -> Path:
    """Atomically write a flat state dict as safetensors (``format: pt`` metadata, as transformers requires);
    tensors sharing memory are copied (safetensors refuses shared storage)."""
    from safetensors.torch import save_file

    unique, seen = {}, set()
    for k, v in tensors.items():
        ptr = v.untyped_storage().data_ptr() if v.numel() else -1
        unique[k] = v.detach().clone().contiguous() if ptr in seen else v.detach().contiguous()
        seen.add(ptr)
    with atomic_path(path, overwrite=overwrite) as tmp:
        save_file(unique, str(tmp), metadata={"format": "pt"})
    return Path(path)


def ema_key(key: str) -> str:
    """The EMA shadow of a UNet tensor, named as CompVis' LitEma names it (the ``model.`` wrapper's parameter name
    with its dots removed): ``model.diffusion_model.out.2.weight`` → ``model_ema.diffusion_modelout2weight``."""
    if not key.startswith("model."):
        raise ValueError(f"{key!r} is not a UNet tensor (model.*); only those have EMA copies")
    return EMA_PREFIX + key[len("model.") :].replace(".", "")


def write_full_checkpoint(
    base_ckpt: PathLike, out_path: PathLike, changed: Mapping[str, torch.Tensor], overwrite: bool = False
) -> Path:
    """A CompVis checkpoint equal to ``base_ckpt`` (all its keys, dtypes and layout) with ``changed`` tensors
    replaced — loadable by the original tools.

    When the base holds EMA weights (``model_ema.*``), the EMA copy of every changed UNet tensor gets the same
    erased value, so loading with or without EMA gives the erased model. ``out_path`` ending in
    ``.safetensors`` gives a flat safetensors state dict (CompVis keys), anything else a torch ``.ckpt``
    (``{"state_dict": ..., "global_step": ...}``)."""
    base_ckpt, out_path = Path(base_ckpt), Path(out_path)
    if out_path.exists() and not overwrite:
        raise FileExistsError(f"{out_path} already exists; refusing to overwrite it (pass --overwrite)")
    if base_ckpt.suffix == ".safetensors":
        from safetensors.torch import load_file

        obj = load_file(str(base_ckpt))
    else:
        obj = _torch_load(base_ckpt)
    sd = obj.get("state_dict", obj)
    layout = {normalize_keys({k: None}).popitem()[0]: k for k in sd}
    has_ema = any(k.startswith(EMA_PREFIX) for k in sd)
    targets: dict[str, list[str]] = {}
    for key in changed:
        original_key = layout.get(key) or layout.get(key.replace(TEXT_PREFIX, TEXT_MODEL_PREFIX, 1))
        if original_key is None:
            raise RecordError(f"{base_ckpt} has no tensor {key!r} to replace")
        targets[key] = [original_key]
        if has_ema and key.startswith("model."):
            if ema_key(key) not in sd:
                raise RecordError(
                    f"{base_ckpt} holds EMA weights but no {ema_key(key)!r} for {key!r}; refusing to write a "
                    "checkpoint whose EMA copy would contradict the erasure"
                )
            targets[key].append(ema_key(key))
    for key, value in changed.items():
        for k in targets[key]:
            sd[k] = value.detach().to("cpu", sd[k].dtype).contiguous()
    if out_path.suffix == ".safetensors":
        return save_safetensors(out_path, sd, overwrite=overwrite)
    out = {"state_dict": sd}
    if sd is not obj and isinstance(obj.get("global_step"), int):
        out["global_step"] = obj["global_step"]
    return save_torch(out_path, out, overwrite=overwrite)
