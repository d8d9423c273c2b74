"""Losses of the baseline erasure methods the paper compares against: ESD, Forget-Me-Not, Ablating Concepts.

* **ESD** (Gandikota et al. 2023, "Erasing Concepts from Diffusion Models", Eq. 2/3): the trained model's
  concept-conditioned noise prediction is steered to the negatively guided prediction of the frozen original,
  ε*(z_t, c) = ε(z_t) − η (ε(z_t, c) − ε(z_t)), at latents z_t the trained model itself samples with DDIM
  "till t" (:func:`esd_sample_till_t`, :func:`esd_sampling_steps`).
* **Forget-Me-Not attention re-steering** (Zhang et al. 2023, Sec. 3.1), two variants (docs/method.md, "The
  authors' variants of FMN and Ablating Concepts" and "The original FMN and Ablating Concepts"):

  - the authors' variant (the released SepCE scripts, the paper's table): in every cross-attention layer
    (``attn2``) the scaled attention logits q·kᵀ/√d with the concept context minus those with the concept-free
    context (same queries) are driven to zero (:func:`fmn_loss`);
  - the original: the POST-softmax attention probabilities of every attn2 layer at the token positions of the
    concept's words (:func:`concept_token_positions`) are driven to zero through their L2 norm
    (:func:`fmn_attention_loss`).

  Queries and keys are captured through ``CrossAttention.attention_hook`` only while :class:`AttentionCapture` is
  active, so ordinary forwards pay nothing.
* **Ablating Concepts** (Kumari et al. 2023, "Ablating Concepts in Text-to-Image Diffusion Models", Eq. 4,
  model-based), two variants:

  - the authors' variant: the concept prompt's prediction is pulled to the frozen original's prediction for the
    anchor prompt, plus a term that keeps the anchor prompt's own prediction in place (:func:`ablating_loss`);
  - the original: on images of the ANCHOR prompt, the concept prompt's prediction is pulled to the trained
    model's own, detached prediction for the anchor prompt (:func:`model_based_ablation_loss`), plus the
    ordinary noise-prediction loss on anchor images (:func:`prior_preservation_loss`).

:data:`FMN_VARIANTS` and :data:`ABLATING_VARIANTS` hold each variant's label, optimiser, learning rate, iterations
and trained parameters (:class:`VariantDefaults`). The exact computations the project reproduces are in
``docs/method.md`` (sections ESD, FMN, Ablating Concepts).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import asdict, dataclass, replace
from typing import Iterable, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from ldm.models.diffusion.sampling import cfg, ddim_sample, ddim_timesteps

from sepce import records

#: The released (authors' variant) prompts: FMN compares ``a painting of <prompt>`` with ``a painting of``,
#: Ablating Concepts maps ``<prompt> painting`` onto the anchor ``painting``. The original variants use the same
#: concept templates and anchor by default.
FMN_CONCEPT_TEMPLATE = "a painting of {}"
FMN_NEUTRAL_PROMPT = "a painting of"
ABLATING_CONCEPT_TEMPLATE = "{} painting"
ABLATING_ANCHOR_PROMPT = "painting"
ABLATING_ANCHOR_WEIGHT = 10.0
#: Weights of the original Ablating Concepts' two terms, as its released CompVis code combines them with
#: ``--regularization``: ``loss = 0.2 * loss_train + loss_train2`` (compvis/src/model.py ``training_step``), where
#: ``train`` holds the anchor images with the anchor caption (the plain noise-prediction loss) and ``train2``
#: carries ``caption_target`` (the model-based ablation loss; compvis/train.py assigns it to ``train2`` whenever
#: ``--regularization`` fills ``caption2``).
ABLATING_ABLATION_WEIGHT = 1.0
ABLATING_PRIOR_WEIGHT = 0.2
#: Variants of FMN and Ablating Concepts: "authors" is the released SepCE scripts' form, which the paper's table
#: measured (the default); "original" is the method as its authors published it.
VARIANTS = ("authors", "original")
#: How ESD samples its latent z before scoring it at t (:func:`esd_sampling_steps`).
ESD_SAMPLING = ("till_t", "authors_all_steps")
#: Trained-parameter rules a variant may name: :data:`sepce.training.PARAMETER_RULES` keys, or the whole UNet.
PARAMETER_DESCRIPTIONS = {
    "attn2": "every attn2 tensor (q, k, v, out)",
    "attn2_kv": "attn2 to_k/to_v only",
    "unet": "the whole UNet",
}
OPTIMIZERS = {"Adam": torch.optim.Adam, "AdamW": torch.optim.AdamW}


# ------------------------------------------------------------------------------------------------ variants
@dataclass(frozen=True)
class VariantDefaults:
    """What one variant of FMN or Ablating Concepts trains, and how, unless flags say otherwise.

    ``parameters`` is a key of :data:`PARAMETER_DESCRIPTIONS`; ``zero_grad`` True means the method zeroes its
    gradients every step (False: they accumulate, as in the released SepCE scripts, unless ``--zero_grad``);
    ``max_grad_norm`` clips the gradient norm before each step (None: no clipping); ``source`` names where the
    values come from."""

    label: str
    lr: float
    iterations: int
    optimizer: str = "Adam"
    weight_decay: float = 0.0
    parameters: str = "attn2"
    zero_grad: bool = False
    max_grad_norm: Optional[float] = None
    source: str = ""

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer {self.optimizer!r}: expected one of {', '.join(OPTIMIZERS)}")
        if self.parameters not in PARAMETER_DESCRIPTIONS:
            raise ValueError(f"parameters {self.parameters!r}: expected one of {', '.join(PARAMETER_DESCRIPTIONS)}")

    @property
    def parameter_rule(self):
        """The rule for :func:`sepce.training.select_parameters`: a rule name, or a callable for the whole UNet."""
        return whole_unet if self.parameters == "unet" else self.parameters

    def describe(self) -> str:
        """One line for ``--help``: optimiser, learning rate, iterations, trained tensors, gradient handling."""
        opt = self.optimizer + (f" (weight decay {self.weight_decay:g})" if self.weight_decay else "")
        grads = "gradients zeroed every step" if self.zero_grad else "gradients accumulated unless --zero_grad"
        clip = f", gradient norm clipped to {self.max_grad_norm:g}" if self.max_grad_norm is not None else ""
        return (
            f"{opt}, lr {self.lr:g}, {self.iterations} iterations, {PARAMETER_DESCRIPTIONS[self.parameters]} "
            f"trained, {grads}{clip}"
        )

    def as_dict(self) -> dict:
        return asdict(self)

    def trainer_options(self, params: Iterable[torch.Tensor], lr: float) -> dict:
        """Keywords of :meth:`sepce.training.TrainingSession.fit` for this variant: its optimiser
        (:meth:`optimizer_for`) and, when the variant zeroes its gradients every step, ``zero_grad`` (else the
        run's ``--zero_grad`` decides)."""
        return {"optimizer": self.optimizer_for(params, lr), "zero_grad": True if self.zero_grad else None}

    def run_settings(
        self,
        variant: str,
        prompt: str,
        concept_template: str,
        trained_tensors: Optional[int] = None,
        **extra,
    ) -> dict:
        """The settings an FMN or Ablating Concepts run records (summary and record metadata): the concept, the
        variant and its label, the template and the concept prompt built from it (:func:`fill_template`); given
        ``trained_tensors`` (the original variants) also what was trained and how (parameter rule, optimiser,
        weight decay, gradient clipping and zeroing, and these defaults); then ``extra``."""
        out = {
            "prompt": prompt,
            "variant": variant,
            "label": self.label,
            "concept_template": concept_template,
            "concept_prompt": fill_template(concept_template, prompt),
        }
        if trained_tensors is not None:
            out.update(
                trained_parameters=self.parameters,
                trained_tensors=trained_tensors,
                optimizer=self.optimizer,
                weight_decay=self.weight_decay,
                max_grad_norm=self.max_grad_norm,
                zero_grad=self.zero_grad,
                variant_defaults=self.as_dict(),
            )
        return {**out, **extra}

    def optimizer_for(self, params: Iterable[torch.Tensor], lr: float) -> torch.optim.Optimizer:
        """The variant's optimiser over ``params`` at learning rate ``lr`` (torch's default betas and eps, as both
        originals use), clipping the gradient norm before every step when ``max_grad_norm`` is set."""
        params = list(params)
        kwargs = {"weight_decay": self.weight_decay} if self.optimizer == "AdamW" else {}
        optimizer = OPTIMIZERS[self.optimizer](params, lr=lr, **kwargs)
        if self.max_grad_norm is not None:
            max_norm = self.max_grad_norm

            def clip(*_) -> None:
                torch.nn.utils.clip_grad_norm_(params, max_norm)

            optimizer.register_step_pre_hook(clip)
        return optimizer


def whole_unet(name: str) -> bool:
    """Parameter rule of the original Forget-Me-Not: every UNet parameter."""
    return True


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
#: Ablating Concepts' variants. The original (nupurkmr9/concept-ablation, CompVis code, style ablation):
#: ``CustomDiffusion.configure_optimizers`` uses ``torch.optim.AdamW(params, lr)`` (weight decay 0.01, torch's
#: default) over the attn2 to_k/to_v weights (``freeze_model: crossattn-kv``); configs/finetune_style.yaml sets
#: ``base_learning_rate: 2.0e-06`` and ``max_steps: 110`` (the README says 100). compvis/train.py multiplies the
#: base rate by GPUs × batch (8 images per step in the README's command); here a step uses one image per term, at
#: the per-image base rate.
ABLATING_VARIANTS = {
    "authors": VariantDefaults(
        "AC (authors' variant)",
        1e-5,
        50,
        source="the released SepCE Abconcept.py (seed command --lr 1e-5 --iter_break 50)",
    ),
    "original": VariantDefaults(
        "AC (original)",
        2e-6,
        110,
        optimizer="AdamW",
        weight_decay=0.01,
        parameters="attn2_kv",
        zero_grad=True,
        source=(
            "Kumari et al. 2023; nupurkmr9/concept-ablation compvis/src/model.py, compvis/configs/finetune_style.yaml"
        ),
    ),
}


def fmn_original_defaults(only_cross_attention: bool = False) -> VariantDefaults:
    """The original FMN's settings: the whole UNet, or with ``only_cross_attention`` every attn2 tensor, whose
    gradient norm the original then clips to 1 (``max_grad_norm``, diffusers' default)."""
    spec = FMN_VARIANTS["original"]
    return replace(spec, parameters="attn2", max_grad_norm=1.0) if only_cross_attention else spec


def variant_help(variants: Mapping[str, VariantDefaults], extra: Mapping[str, str]) -> str:
    """The ``--variant`` help: each variant's label, defaults and own flags (``extra``)."""
    parts = [f"{name}: {spec.label}, {spec.describe()}{extra.get(name, '')}" for name, spec in variants.items()]
    return (
        "; ".join(parts) + ". --lr and --iterations default to the chosen variant's values; "
        "--variant original --help lists the original's flags"
    )


def peek_variant(argv: Optional[Sequence[str]]) -> str:
    """The ``--variant`` among ``argv`` (default ``authors``), read before the full parser is built, so that the
    parser can take the variant's defaults and flags. A bad value is argparse's usual error."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--variant", choices=VARIANTS, default="authors")
    return pre.parse_known_args(argv)[0].variant


# ------------------------------------------------------------------------------------------------------- ESD
def split_concepts(prompt: str, separator: Optional[str]) -> list[str]:
    """ESD's ``--seperator``: ``'Van Gogh, Picasso'`` with ``','`` → ``['Van Gogh', 'Picasso']`` (stripped);
    without a separator the whole prompt is one concept. Empty pieces are an error."""
    words = [w.strip() for w in prompt.split(separator)] if separator else [prompt.strip()]
    if not all(words):
        raise ValueError(
            f"--prompt {prompt!r} split by --seperator {separator!r} gives an empty concept; "
            "expected non-empty concept names"
        )
    return words


def check_concept_names(concepts: list[str]) -> list[str]:
    """``--prompt``'s concepts, non-empty and as erasure records accept them (:func:`sepce.records.check_concept_name`):
    checked before any model is loaded instead of failing at the save after training."""
    for c in concepts:
        if not c.strip():
            raise ValueError("--prompt is empty; expected a concept name such as 'Van Gogh'")
        records.check_concept_name(c, "--prompt")
    return concepts


def esd_sampling_steps(t_enc: int, ddim_steps: int, sampling: str = "till_t", num_timesteps: int = 1000) -> int:
    """How many DDIM steps ESD runs from x_T for the drawn ``t_enc`` (docs/method.md, "ESD").

    ``till_t`` (default) is ESD's own sampler: the CompVis step index counts down from n−1 (n = number of DDIM
    timesteps, S = ``ddim_steps`` when S divides T) and the loop stops right after the step with index t_enc−1
    (``if index + 1 == till_T: break``) — n+1−t_enc steps for t_enc ≥ 1, all n steps for t_enc = 0 — so the
    latent's noise level follows the DDPM t ∈ [t_enc·T/S, (t_enc+1)·T/S) it is scored at (it ends at DDIM timestep
    ``ddim_timesteps[t_enc−2]``, two grid points below t's bucket, for t_enc ≥ 2).

    ``authors_all_steps`` reproduces the paper's ESD row: the authors' Esd.py passed ``till_T`` to a sampler that
    ignored it, so every iteration sampled all n steps and scored the clean latent at a random t."""
    if sampling not in ESD_SAMPLING:
        raise ValueError(f"--sampling {sampling!r}: expected one of {', '.join(ESD_SAMPLING)}")
    n = len(ddim_timesteps(ddim_steps, num_timesteps))
    if not 0 <= t_enc < n:
        raise ValueError(f"t_enc {t_enc!r}: expected an integer in 0..{n - 1}")
    if sampling == "authors_all_steps" or t_enc == 0:
        return n
    return n + 1 - t_enc


def esd_sample_till_t(
    model: torch.nn.Module,
    start_code: torch.Tensor,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    t_enc: int,
    ddim_steps: int,
    start_guidance: float,
    sampling: str = "till_t",
) -> torch.Tensor:
    """ESD's z_t: DDIM (eta 0, Song et al. 2021 Eq. 12) from ``start_code`` = x_T with the model being trained,
    classifier-free guidance ``start_guidance`` between ``cond`` (the concept) and ``uncond`` (``""``), for the
    :func:`esd_sampling_steps` of ``t_enc`` under ``sampling``. No gradients."""
    steps = esd_sampling_steps(int(t_enc), ddim_steps, sampling, int(model.alphas_cumprod.shape[0]))
    with torch.no_grad():
        model_fn = cfg(model.apply_model, uncond, start_guidance)
        return ddim_sample(model_fn, start_code, cond, model.alphas_cumprod, ddim_steps, eta=0.0, stop_after=steps)


def esd_target(e_0: torch.Tensor, e_p: torch.Tensor, negative_guidance: float) -> torch.Tensor:
    """ESD's target ε(z_t) − η (ε(z_t, c) − ε(z_t)) from the frozen original's predictions (Eq. 3)."""
    return e_0 - negative_guidance * (e_p - e_0)


def esd_loss(e_n: torch.Tensor, e_0: torch.Tensor, e_p: torch.Tensor, negative_guidance: float) -> torch.Tensor:
    """MSE between the trained model's ε(z_t, c) and :func:`esd_target` (targets detached)."""
    target = esd_target(e_0.detach(), e_p.detach(), negative_guidance).to(e_n.device, e_n.dtype)
    return F.mse_loss(e_n, target)


# ------------------------------------------------------------------------------------------------------- FMN
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


def check_template(template: str, flag: str = "--concept_template") -> str:
    """A concept-prompt template holds exactly one ``{}`` (where the concept goes) and no other format field."""
    import string

    try:
        fields = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise ValueError(f"{flag} {template!r}: {e}; expected text with exactly one {{}}") from None
    if fields != [("", "", None)]:
        raise ValueError(
            f"{flag} {template!r}: expected exactly one {{}} (where the concept goes), e.g. 'a painting of {{}}'"
        )
    return template


def fill_template(concept_template: str, prompt: str) -> str:
    """The concept prompt of FMN and Ablating Concepts: ``concept_template`` (checked, :func:`check_template`)
    with ``prompt`` in its ``{}`` — the released scripts' ``a painting of <prompt>`` (FMN, with the concept-free
    context ``a painting of``) and ``<prompt> painting`` (Ablating Concepts, anchor ``painting``)."""
    return check_template(concept_template).format(prompt)


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


# ----------------------------------------------------------------------------------------- Ablating Concepts
def ablating_loss(
    e_pn: torch.Tensor, e_p0: torch.Tensor, e_n: torch.Tensor, anchor_weight: float = ABLATING_ANCHOR_WEIGHT
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MSE(e_pn, e_n) + w·MSE(e_p0, e_n): e_pn, e_p0 the trained model's predictions for the concept and the
    anchor prompt, e_n the frozen original's for the anchor (detached). Returns (loss, concept term, anchor
    term without the weight)."""
    e_n = e_n.detach().to(e_pn.device, e_pn.dtype)
    concept_term = F.mse_loss(e_pn, e_n)
    anchor_term = F.mse_loss(e_p0, e_n)
    return concept_term + anchor_weight * anchor_term, concept_term, anchor_term


def check_ablating_weights(ablation_weight: float, prior_weight: float) -> None:
    """The original Ablating Concepts' term weights: both finite and >= 0, the ablation weight > 0 (one-line
    ``ValueError`` naming the flag)."""
    for flag, value in (("--ablation_weight", ablation_weight), ("--prior_weight", prior_weight)):
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{flag} {value!r}: expected a finite number >= 0")
    if ablation_weight == 0:
        raise ValueError("--ablation_weight 0.0: expected a number > 0 (with 0 nothing would be erased)")


def model_based_ablation_loss(e_concept: torch.Tensor, e_anchor: torch.Tensor) -> torch.Tensor:
    """MSE(ε(model, x_t, t, emb(concept)), stopgrad(ε(model, x_t, t, emb(anchor)))): the original Ablating
    Concepts' model-based loss (Kumari et al. 2023, Eq. 4 with the pretrained model replaced by the model being
    trained, ``p_losses(..., c_target)`` of its CompVis code: ``target = model_output_target.detach()``). The
    anchor prediction is detached, so only the concept branch carries gradient."""
    return F.mse_loss(e_concept, e_anchor.detach().to(e_concept.device, e_concept.dtype))


def ablating_original_loss(
    model: torch.nn.Module, x_t: torch.Tensor, t: torch.Tensor, concept_cond: torch.Tensor, anchor_cond: torch.Tensor
) -> torch.Tensor:
    """:func:`model_based_ablation_loss` at x_t of an ANCHOR image: the trained model's prediction for the concept
    prompt against its own prediction for the anchor prompt, the latter computed without gradients."""
    e_concept = model.apply_model(x_t, t, concept_cond)
    with torch.no_grad():
        e_anchor = model.apply_model(x_t, t, anchor_cond)
    return model_based_ablation_loss(e_concept, e_anchor)


def prior_preservation_loss(
    model: torch.nn.Module,
    z: torch.Tensor,
    t: torch.Tensor,
    cond: torch.Tensor,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """The original Ablating Concepts' regularisation: the ordinary noise-prediction loss
    ‖ε − ε_θ(x_t, t, c)‖² (Ho et al. 2020, Eq. 14; ``LatentDiffusion.p_losses``) on an anchor image's latent ``z``
    with the anchor prompt's ``cond``, x_t = q_sample(z, t, ε) with fresh ε drawn from ``generator``."""
    noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
    loss, _ = model.p_losses(z, cond, t.to(z.device).expand(z.shape[0]), noise=noise)
    return loss
