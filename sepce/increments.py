"""Separable increments and basic solution sets of SepCE (Zhao et al., Sec. 3.3, Eq. 9–10; docs/method.md "SepCE").

For concept c and each cross-attention layer l, the key/value projections become
W_l + Σ_{c active} ΔW_{c,l},   ΔW_{c,l} = A_{c,l} (β S_c),
with A_{c,l} ∈ R^{d_out×n_c} learnable (zero-initialised) and S_c ∈ R^{n_c×D} the concept's *basic solution set*:
an orthonormal basis of the null space of E_c, the stacked token embeddings (77 rows per prompt) of "", of every
OTHER concept and of any prompt that must stay exact (``--preserve``). Hence ΔW_{c,l} e = 0 for every such
embedding e: adding or removing concept c's increment leaves the UNet's output for "" and for the other concepts'
prompts unchanged, so erasures and restorations of any subset compose.

Rank tolerance (:func:`rank_tolerance`): the SVD runs in float64 and singular values ≤ σ_max · max(M, D) · ε_64
(NumPy's ``matrix_rank`` default, ε_64 = 2.2e-16) count as zero. With this tolerance only exact linear
dependencies count — e.g. the first token (BOS) embedding, identical for every prompt — which is what the released
code's exact symbolic null space computed (SD v1.4: n = 768 − 77 = 691 for E = emb("") alone, 768 − 229 = 539
with two other concepts). A looser ``rtol`` (relative to σ_max) gives a smaller basis that is also orthogonal to
the near-null directions. n_c = 0 (the embeddings span the whole context space) is an error: there is nothing
separable to train.

Increments are applied on the fly through ``CrossAttention.kv_delta`` (ΔW e computed as A (β (S e)), applied to
every batch element); the base weights are never modified. :meth:`SeparableIncrements.deltas` gives the merged
ΔW for writing plain weights (:mod:`sepce.records` does the same from a saved record).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Mapping, Optional, Sequence

import torch

from sepce import records
from sepce.modeling import attn2_modules

EPS64 = torch.finfo(torch.float64).eps


def rank_tolerance(sigma_max: float, shape: Sequence[int], rtol: Optional[float] = None) -> float:
    """Singular values at or below this are zero: ``rtol·σ_max`` if given, else σ_max · max(M, D) · ε_float64."""
    if rtol is not None:
        return float(rtol) * float(sigma_max)
    return float(sigma_max) * max(shape) * EPS64


@dataclass
class SolutionSet:
    """Basic solution set S_c of one concept: ``basis`` (n_c × D, orthonormal rows, float64) of null(E_c)."""

    basis: torch.Tensor
    rank: int
    tol: float
    excluded: list[str] = field(default_factory=list)
    smallest_kept: float = float("nan")  # smallest singular value counted in the rank
    largest_dropped: float = 0.0  # largest singular value treated as zero (0 when none is)

    @property
    def n(self) -> int:
        return int(self.basis.shape[0])

    @property
    def dim(self) -> int:
        return int(self.basis.shape[1])

    def info(self) -> dict:
        return {
            "n": self.n,
            "dim": self.dim,
            "rank": self.rank,
            "tol": self.tol,
            "excluded": self.excluded,
            "smallest_kept_singular_value": self.smallest_kept,
            "largest_dropped_singular_value": self.largest_dropped,
        }


def null_space_basis(E: torch.Tensor, rtol: Optional[float] = None) -> SolutionSet:
    """Orthonormal basis of {v : E v = 0} for E (M × D) from a float64 SVD (see :func:`rank_tolerance`)."""
    if E.ndim != 2:
        raise ValueError(f"null_space_basis expects a matrix, got shape {tuple(E.shape)}")
    E = E.detach().to("cpu", torch.float64)
    _, s, vh = torch.linalg.svd(E, full_matrices=True)  # vh: D x D
    sigma_max = float(s[0]) if s.numel() else 0.0
    tol = rank_tolerance(sigma_max, E.shape, rtol)
    rank = int((s > tol).sum())
    kept = s[:rank]
    dropped = s[rank:]
    return SolutionSet(
        basis=vh[rank:].contiguous(),
        rank=rank,
        tol=tol,
        smallest_kept=float(kept[-1]) if rank else float("nan"),
        largest_dropped=float(dropped[0]) if dropped.numel() else 0.0,
    )


def basic_solution_sets(
    concepts: Mapping[str, torch.Tensor],
    fixed: Mapping[str, torch.Tensor],
    which: Optional[Iterable[str]] = None,
    rtol: Optional[float] = None,
) -> dict[str, SolutionSet]:
    """S_c for each concept in ``which`` (default all): null space of the stacked token embeddings of ``fixed``
    (the blank prompt "" and any ``--preserve`` prompts) and of every OTHER concept in ``concepts``.
    Embeddings are (77 × D) or (1 × 77 × D). Raises ``ValueError`` when a basis is empty (n_c = 0)."""

    def rows(e: torch.Tensor) -> torch.Tensor:
        return e.reshape(-1, e.shape[-1])

    out: dict[str, SolutionSet] = {}
    for c in list(concepts) if which is None else list(which):
        excluded = {**fixed, **{o: e for o, e in concepts.items() if o != c}}
        E = torch.cat([rows(e) for e in excluded.values()])
        sol = null_space_basis(E, rtol)
        sol.excluded = list(excluded)
        if sol.n == 0:
            raise ValueError(
                f"concept {c!r}: empty basic solution set (n_c = 0): the {E.shape[0]} token embeddings of "
                f"{len(excluded)} excluded prompt(s) span all {E.shape[1]} context dimensions; erase fewer concepts "
                f"at once, drop --preserve prompts, or use a model with a wider text context"
            )
        out[c] = sol
    return out


class SeparableIncrements:
    """Per-concept increments ΔW_{c,l} = A_{c,l} (β S_c) on every ``attn2.to_k``/``to_v`` of ``model``, applied
    through ``CrossAttention.kv_delta`` while the concepts are active (:meth:`activate`, :meth:`using`).

    Coefficients are keyed by the full state-dict key of the weight they edit
    (``model.diffusion_model....attn2.to_k.weight``), as in :mod:`sepce.records`."""

    def __init__(self, model: torch.nn.Module, beta: float):
        self.modules = attn2_modules(model)
        if not self.modules:
            raise ValueError("the model has no cross-attention (attn2) layers")
        self.beta = float(beta)
        first = next(iter(self.modules.values()))
        self.device = first.to_k.weight.device
        self.context_dim = first.to_k.in_features
        self.bases: dict[str, torch.Tensor] = {}
        self.coefs: dict[str, dict[str, torch.Tensor]] = {}
        self._active: tuple[str, ...] = ()

    # -- concepts ------------------------------------------------------------------------------------
    def layer_keys(self) -> list[str]:
        return [f"{p}.{w}.weight" for p in self.modules for w in ("to_k", "to_v")]

    def _out_dim(self, key: str) -> int:
        prefix, proj, _ = key.rsplit(".", 2)
        return getattr(self.modules[prefix], proj).out_features

    @property
    def concepts(self) -> list[str]:
        return list(self.bases)

    def add(
        self,
        concept: str,
        basis: torch.Tensor,
        coefs: Optional[Mapping[str, torch.Tensor]] = None,
        trainable: bool = True,
    ) -> dict[str, torch.Tensor]:
        """Register ``concept`` with basis S_c (n_c × D); coefficients zero unless given. Returns them."""
        if concept in self.bases:
            raise ValueError(f"concept {concept!r} already has an increment")
        if basis.ndim != 2 or basis.shape[1] != self.context_dim:
            raise ValueError(f"basis of {concept!r} has shape {tuple(basis.shape)}; expected n x {self.context_dim}")
        n = basis.shape[0]
        self.bases[concept] = basis.detach().to(self.device, torch.float32).contiguous()
        layers: dict[str, torch.Tensor] = {}
        for key in self.layer_keys():
            shape = (self._out_dim(key), n)
            if coefs is not None:
                if key not in coefs or tuple(coefs[key].shape) != shape:
                    raise ValueError(f"coefficients of {concept!r} lack {key} of shape {shape}")
                a = coefs[key].detach().to(self.device, torch.float32).clone()
            else:
                a = torch.zeros(shape, device=self.device)
            layers[key] = a.requires_grad_(trainable)
        self.coefs[concept] = layers
        return layers

    def parameters(self, concepts: Optional[Iterable[str]] = None) -> list[torch.Tensor]:
        return [a for c in (self.concepts if concepts is None else concepts) for a in self.coefs[c].values()]

    @torch.no_grad()
    def snapshot(self, concept: str) -> dict[str, torch.Tensor]:
        """A copy of the concept's current coefficients."""
        return {k: a.detach().clone() for k, a in self.coefs[concept].items()}

    # -- activation ----------------------------------------------------------------------------------
    @property
    def active(self) -> tuple[str, ...]:
        return self._active

    def activate(self, concepts: Iterable[str]) -> None:
        """Apply exactly ``concepts``' increments from now on (none → ``kv_delta`` removed: bit-exact base)."""
        chosen = tuple(concepts)
        unknown = [c for c in chosen if c not in self.bases]
        if unknown:
            raise ValueError(f"unknown concept(s) {unknown}; increments exist for {self.concepts}")
        self._active = chosen
        for prefix, m in self.modules.items():
            m.kv_delta = self._hook(prefix) if chosen else None

    @contextlib.contextmanager
    def using(self, concepts: Iterable[str]) -> Iterator[None]:
        previous = self._active
        self.activate(concepts)
        try:
            yield
        finally:
            self.activate(previous)

    def disabled(self) -> contextlib.AbstractContextManager:
        """No increment applied inside the block (the original model)."""
        return self.using(())

    def close(self) -> None:
        self.activate(())

    def _hook(self, prefix: str):
        kk, vk = f"{prefix}.to_k.weight", f"{prefix}.to_v.weight"

        def kv_delta(context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            dk = dv = None
            for c in self._active:
                proj = torch.matmul(context, self.bases[c].t().to(context.dtype)) * self.beta  # B M n_c
                a_k, a_v = self.coefs[c][kk], self.coefs[c][vk]
                k_c = torch.matmul(proj, a_k.t().to(proj.dtype))  # B M d_out
                v_c = torch.matmul(proj, a_v.t().to(proj.dtype))
                dk = k_c if dk is None else dk + k_c
                dv = v_c if dv is None else dv + v_c
            return dk, dv

        return kv_delta

    # -- merged weights and records ------------------------------------------------------------------
    @torch.no_grad()
    def deltas(
        self, concepts: Optional[Iterable[str]] = None, coefs: Optional[Mapping[str, Mapping[str, torch.Tensor]]] = None
    ) -> dict[str, torch.Tensor]:
        """Σ_{c ∈ concepts} A_{c,l} (β S_c) per weight key (float32); ``coefs`` overrides (e.g. snapshots)."""
        out: dict[str, torch.Tensor] = {}
        for c in self.concepts if concepts is None else concepts:
            basis = self.bases[c] * self.beta
            for k, a in (coefs or {}).get(c, self.coefs[c]).items():
                d = a.detach().float() @ basis
                out[k] = out[k] + d if k in out else d
        return out

    @torch.no_grad()
    def leakage(
        self, concept: str, embeddings: Mapping[str, torch.Tensor], coefs: Optional[Mapping[str, torch.Tensor]] = None
    ) -> float:
        """max over layers of ‖ΔW_{c,l} Eᵀ‖_max / ‖W_l Eᵀ‖_max for the stacked ``embeddings`` (should be round-off
        for the prompts excluded from S_c)."""
        E = torch.cat([e.reshape(-1, e.shape[-1]) for e in embeddings.values()]).to(self.device, torch.float32)
        basis = self.bases[concept] * self.beta
        worst = 0.0
        for k, a in (coefs or self.coefs[concept]).items():
            prefix, proj, _ = k.rsplit(".", 2)
            w = getattr(self.modules[prefix], proj).weight.float()
            delta = (E @ basis.t()) @ a.detach().float().t()
            worst = max(worst, float(delta.abs().max() / (E @ w.t()).abs().max().clamp_min(1e-30)))
        return worst

    def to_record(
        self,
        base: dict,
        concepts: Optional[Sequence[str]] = None,
        coefs: Optional[Mapping[str, Mapping[str, torch.Tensor]]] = None,
        meta: Optional[dict] = None,
        method: str = "SepCE",
    ) -> records.ErasureRecord:
        """An erasure record (bases + coefficients; ``coefs`` overrides the current ones per concept)."""
        chosen = self.concepts if concepts is None else list(concepts)
        coefs = coefs or {}
        return records.ErasureRecord(
            method=method,
            concepts=chosen,
            base=base,
            bases={c: self.bases[c].detach().cpu() for c in chosen},
            coefs={c: {k: a.detach().float().cpu() for k, a in coefs.get(c, self.coefs[c]).items()} for c in chosen},
            beta=self.beta,
            meta=dict(meta or {}),
        )

    @classmethod
    def from_record(
        cls, model: torch.nn.Module, record: records.ErasureRecord, trainable: bool = False
    ) -> SeparableIncrements:
        if not record.separable:
            raise records.RecordError(f"{record.path or 'record'} ({record.method}) holds no separable increments")
        inc = cls(model, record.beta)
        for c in record.concepts:
            inc.add(c, record.bases[c], record.coefs[c], trainable=trainable)
        return inc
