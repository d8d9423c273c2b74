"""Forget-Me-Not attention re-steering (FMN; Zhang et al. 2023, "Forget-Me-Not: Learning to Forget in Text-to-Image
Diffusion Models", Sec. 3.1; docs/method.md, "The authors' variants of FMN and Ablating Concepts" and "The original
FMN and Ablating Concepts"): its losses, variants and training.

Two variants (:data:`FMN_VARIANTS`, :mod:`sepce.methods.variants`):

- the authors' variant (the released SepCE scripts, the paper's table): in every cross-attention layer (``attn2``)
  the scaled attention logits q·kᵀ/√d with the concept context minus those with the concept-free context (same
  queries) are driven to zero (:func:`fmn_loss`);
- the original: the POST-softmax attention probabilities of every attn2 layer at the token positions of the
  concept's words (:func:`concept_token_positions`) are driven to zero through their L2 norm
  (:func:`fmn_attention_loss`).

Queries and keys are captured through ``CrossAttention.attention_hook`` only while :class:`AttentionCapture` is
active, so ordinary forwards pay nothing. :class:`FMNSettings` holds the method's own settings, :func:`run_fmn`
the run (``train-scripts/FMN.py`` is its flags and this one call).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping, Sequence

import torch

from sepce.methods.common import DriftLog
from sepce.methods.variants import VariantDefaults, VariantSettings, VariantStep, train_variant
from sepce.modeling import attn2_modules, prompts_embeddings, tokenizer_from_config
from sepce.training import TrainingSession, TrainingSettings, TrainStep

METHOD = "FMN"
#: The released (authors' variant) prompts: FMN compares ``a painting of <prompt>`` with ``a painting of``; the
#: original variant uses the same concept template by default.
FMN_CONCEPT_TEMPLATE = "a painting of {}"
FMN_NEUTRAL_PROMPT = "a painting of"
TEXTUAL_INVERSION = "not implemented (the original's optional pre-stage; the concept is named by its words)"

#: FMN's variants. The original (SHI-Labs/Forget-Me-Not ``src/train_attn.py`` with ``configs/attn.yaml``): AdamW
#: with diffusers' defaults (weight decay 0.01), lr 2e-6, 35 steps of batch 1, the whole UNet; its gradient clip
#: only acts with ``only_optimize_ca`` (with the whole UNet it is handed the parameter generator the optimiser has
#: already consumed, so it clips nothing) — :func:`fmn_original_defaults`.
FMN_VARIANTS = {
    "authors": VariantDefaults(
        "FMN (authors' variant)", 1e-5, 10, source="the released SepCE FMN.py (seed command --lr 1e-5 --iter_break 10)"
    ),
    "original": VariantDefaults(
        "FMN (original)",
        2e-6,
        35,
        optimizer="AdamW",
        weight_decay=0.01,
        parameters="unet",
        zero_grad=True,
        source="Zhang et al. 2023; SHI-Labs/Forget-Me-Not src/train_attn.py, configs/attn.yaml",
    ),
}


def fmn_original_defaults(only_cross_attention: bool = False) -> VariantDefaults:
    """The original FMN's settings: the whole UNet, or with ``only_cross_attention`` every attn2 tensor, whose
    gradient norm the original then clips to 1 (``max_grad_norm``, diffusers' default)."""
    spec = FMN_VARIANTS["original"]
    return replace(spec, parameters="attn2", max_grad_norm=1.0) if only_cross_attention else spec


@dataclass
class CapturedAttention:
    """What one cross-attention layer saw in a captured forward."""

    name: str
    module: torch.nn.Module
    q: torch.Tensor  # B heads N d
    k: torch.Tensor  # B heads M d


class AttentionCapture:
    """Context manager recording every given CrossAttention layer's per-head queries and keys.

    Installs ``attention_hook`` on entry and removes it on exit. The hook only keeps references — it runs no
    tensor operations — so gradient checkpointing recomputes a block exactly as it ran, and the logits are
    formed afterwards, outside any checkpointed region. Layers that already carry a hook are refused.
    """

    def __init__(self, modules: Mapping[str, torch.nn.Module]):
        self.modules = dict(modules)
        self.records: list[CapturedAttention] = []
        self._names = {id(m): n for n, m in self.modules.items()}

    def _hook(self, module: torch.nn.Module, q: torch.Tensor, k: torch.Tensor, context: torch.Tensor) -> None:
        self.records.append(CapturedAttention(self._names[id(module)], module, q, k))

    def __enter__(self) -> AttentionCapture:
        busy = [n for n, m in self.modules.items() if m.attention_hook is not None]
        if busy:
            raise RuntimeError(f"attention layer {busy[0]} already has an attention_hook")
        for m in self.modules.values():
            m.attention_hook = self._hook
        return self

    def __exit__(self, *exc) -> None:
        for m in self.modules.values():
            m.attention_hook = None


def attention_keys(module: torch.nn.Module, context: torch.Tensor) -> torch.Tensor:
    """Per-head keys (B, heads, M, d) of a CrossAttention layer for ``context``, as its forward forms them
    (``to_k`` plus any ``kv_delta`` increment)."""
    k = module.to_k(context)
    if module.kv_delta is not None:
        k = k + module.kv_delta(context)[0]
    return module.split_heads(k)


def logit_difference(record: CapturedAttention, context2: torch.Tensor) -> torch.Tensor:
    """q·k_cᵀ/√d − q·k_c2ᵀ/√d for one captured layer: the same queries against the keys of the captured
    context and of ``context2`` (B, heads, N, M)."""
    k2 = attention_keys(record.module, context2.to(record.k.device, record.k.dtype))
    if k2.shape[0] != record.k.shape[0]:
        k2 = k2.expand(record.k.shape[0], *k2.shape[1:])
    return (record.q @ (record.k - k2).transpose(-1, -2)) * record.module.scale


def fmn_loss(
    model: torch.nn.Module,
    x_t: torch.Tensor,
    t: torch.Tensor,
    context: torch.Tensor,
    context2: torch.Tensor,
    attn_modules: Mapping[str, torch.nn.Module],
) -> torch.Tensor:
    """Forget-Me-Not attention re-steering, authors' variant: Σ over ``attn_modules`` (every attn2 layer) of
    MSE(q·k_cᵀ/√d − q·k_c2ᵀ/√d, 0), the queries coming from the forward of ``model`` at (x_t, t) with the
    concept context ``context`` (``a painting of <prompt>``) and ``context2`` = ``a painting of``."""
    with AttentionCapture(attn_modules) as capture:
        model.apply_model(x_t, t, context)
    if len(capture.records) != len(attn_modules):
        raise RuntimeError(f"captured {len(capture.records)} attention calls for {len(attn_modules)} layers")
    return sum(logit_difference(r, context2).pow(2).mean() for r in capture.records)


def concept_token_positions(tokenizer, prompt: str, concept: str, use_pooler: bool = False) -> list[int]:
    """Forget-Me-Not's concept positions in the text encoder's sequence for ``prompt`` (start token, word tokens,
    end token, end-token padding — as ``tokenizer(prompt)`` gives it): every run of the concept's own tokens
    (``tokenizer.encode(concept)``, no start/end tokens) found there, as the original's dataset marks them. With
    ``use_pooler`` every end-of-text position too: the end token and, since SD's tokenizer pads with it, the
    padding after it (the original compares ids with the ``<|endoftext|>`` id in the same way).

    ``prompt`` "a painting of Van Gogh" and ``concept`` "Van Gogh" → [4, 5] (0 is the start token). A concept
    that does not appear as whole words (a template such as ``{}s`` merges its last word with the ``s``) or lies beyond
    the context is a one-line ``ValueError``."""
    ids = tokenizer([prompt])[0].tolist()
    concept_ids = tokenizer.encode(concept)
    n = len(concept_ids)
    positions: set[int] = set()
    if n:
        for i in range(len(ids) - n + 1):
            if ids[i : i + n] == concept_ids:
                positions.update(range(i, i + n))
    if not positions:
        raise ValueError(
            f"--prompt {concept!r} ({n} CLIP tokens) does not occur as whole words within the first "
            f"{len(ids) - 2} tokens of the concept prompt {prompt!r}; expected a --concept_template that keeps {{}} a "
            f"separate word, such as 'a painting of {{}}'"
        )
    if use_pooler:
        positions.update(i for i, tok in enumerate(ids) if tok == tokenizer.eos_token_id)
    return sorted(positions)


def attention_probabilities(record: CapturedAttention) -> torch.Tensor:
    """softmax(q·kᵀ/√d) over the keys of one captured layer (B, heads, N, M), in float32: the post-softmax
    attention the layer's ``scaled_dot_product_attention`` applied (SD's cross-attention has no mask)."""
    logits = (record.q @ record.k.transpose(-1, -2)) * record.module.scale  # B heads N M
    return logits.float().softmax(dim=-1)


def concept_attention_loss(
    probabilities: Sequence[torch.Tensor], positions: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The original Forget-Me-Not loss: the L2 norm of every layer's attention probabilities at the key
    positions ``positions`` (all batch elements, heads and queries), concatenated — the original's
    ``torch.cat(attn_probs).norm()``. Returns (loss, the mean of those probabilities, detached)."""
    if not positions:
        raise ValueError("no concept positions: expected at least one token position of the concept")
    index = torch.as_tensor(list(positions), dtype=torch.long, device=probabilities[0].device)
    picked = torch.cat([p.index_select(-1, index).reshape(-1) for p in probabilities])
    return picked.norm(), picked.detach().mean()


def fmn_attention_loss(
    model: torch.nn.Module,
    x_t: torch.Tensor,
    t: torch.Tensor,
    context: torch.Tensor,
    positions: Sequence[int],
    attn_modules: Mapping[str, torch.nn.Module],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Original Forget-Me-Not attention re-steering (Zhang et al. 2023, Sec. 3.1; docs/method.md, "The original
    FMN and Ablating Concepts"): the forward of ``model`` at (x_t, t) with the concept prompt's ``context``; in
    every layer of ``attn_modules`` (every attn2) the post-softmax attention probabilities at the concept's
    token ``positions`` (:func:`concept_token_positions`), for every head and query; loss = their L2 norm
    (:func:`concept_attention_loss`). Returns (loss, mean concept attention)."""
    with AttentionCapture(attn_modules) as capture:
        model.apply_model(x_t, t, context)
    if len(capture.records) != len(attn_modules):
        raise RuntimeError(f"captured {len(capture.records)} attention calls for {len(attn_modules)} layers")
    return concept_attention_loss([attention_probabilities(r) for r in capture.records], positions)


@dataclass(frozen=True)
class FMNSettings(VariantSettings):
    """FMN's own settings (:class:`~sepce.methods.variants.VariantSettings`): the concept prompt's template, the
    authors' variant's concept-free ``neutral_prompt``; the original's ``use_pooler`` and ``only_cross_attention``."""

    concept_template: str = FMN_CONCEPT_TEMPLATE
    neutral_prompt: str = FMN_NEUTRAL_PROMPT
    use_pooler: bool = False
    only_cross_attention: bool = False

    @property
    def spec(self) -> VariantDefaults:
        """The variant's defaults (the original's depend on ``only_cross_attention``)."""
        if self.variant == "original":
            return fmn_original_defaults(self.only_cross_attention)
        return FMN_VARIANTS[self.variant]


def train_authors(session: TrainingSession, settings: FMNSettings) -> dict:
    """The authors' variant (docs/method.md, "The authors' variants of FMN and Ablating Concepts")."""
    concept_text = settings.concept_prompt

    def setup(model: torch.nn.Module, params: dict) -> VariantStep:
        drift = DriftLog(params)
        layers = attn2_modules(model)
        context, context2 = (
            prompts_embeddings(model, [concept_text]),
            prompts_embeddings(model, [settings.neutral_prompt]),
        )

        def step(i: int) -> TrainStep:
            _, t = session.timesteps()
            x = session.noisy(session.latent(settings.prompt), t)
            loss = fmn_loss(model, x, t, context, context2, layers)
            return TrainStep(loss, {"l1_drift": drift()})

        recorded = settings.spec.run_settings(
            settings.variant,
            settings.prompt,
            settings.concept_template,
            neutral_prompt=settings.neutral_prompt,
            attention_layers=len(layers),
        )
        return VariantStep(
            step,
            f"{METHOD} {settings.prompt}",
            "none (FMN compares two contexts of the trained model)",
            recorded,
            {"concept_prompt": concept_text},
        )

    return train_variant(session, settings.spec, setup)


def train_original(session: TrainingSession, settings: FMNSettings) -> dict:
    """The original Forget-Me-Not (docs/method.md, "The original FMN and Ablating Concepts")."""
    spec, concept_text = settings.spec, settings.concept_prompt
    tokenizer = tokenizer_from_config(session.settings.config_path)  # positions are checked before the model loads
    positions = concept_token_positions(tokenizer, concept_text, settings.prompt, settings.use_pooler)
    ids = tokenizer([concept_text])[0].tolist()

    def setup(model: torch.nn.Module, params: dict) -> VariantStep:
        drift = DriftLog(params)
        layers = attn2_modules(model)
        context = prompts_embeddings(model, [concept_text])

        def step(i: int) -> TrainStep:
            _, t = session.timesteps()
            x = session.noisy(session.latent(settings.prompt), t)
            loss, mean_attention = fmn_attention_loss(model, x, t, context, positions, layers)
            return TrainStep(loss, {"concept_attention": mean_attention.item(), "l1_drift": drift()})

        recorded = spec.run_settings(
            settings.variant,
            settings.prompt,
            settings.concept_template,
            len(params),
            concept_positions=positions,
            concept_tokens=[tokenizer.decode([ids[i]]) for i in positions],
            use_pooler=settings.use_pooler,
            only_cross_attention=settings.only_cross_attention,
            attention_layers=len(layers),
            textual_inversion=TEXTUAL_INVERSION,
        )
        return VariantStep(
            step,
            f"{METHOD} (original) {settings.prompt}",
            "none (the loss reads the trained model's own attention)",
            recorded,
            {"concept_prompt": concept_text, "concept_positions": positions},
        )

    return train_variant(session, spec, setup)


def run_fmn(common: TrainingSettings, settings: FMNSettings) -> dict:
    """Check the image folder and the output folder (``models/FMN-<prompt>``, ``...-original`` for the original
    variant) before a model loads, then train the variant."""
    original = settings.variant == "original"
    session = TrainingSession(common, METHOD, [settings.prompt], suffix="original" if original else None)
    return (train_original if original else train_authors)(session, settings)
