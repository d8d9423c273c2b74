"""Erased Stable Diffusion (ESD; Gandikota et al. 2023, "Erasing Concepts from Diffusion Models", Eq. 2/3;
docs/method.md, "ESD"): its parameter selection, sampling, loss and training.

The trained model's concept-conditioned noise prediction is steered to the negatively guided prediction of the
frozen original, ε*(z_t, c) = ε(z_t) − η (ε(z_t, c) − ε(z_t)) (:func:`esd_target`, :func:`esd_loss`), at latents
z_t the trained model itself samples with DDIM "till t" (:func:`esd_sample_till_t`, :func:`esd_sampling_steps`).
Gradients are zeroed every step (as ESD does); no training images are needed. :class:`ESDSettings` holds the
method's own settings, :func:`train_esd` the run (``train-scripts/Esd.py`` is its flags and :func:`run_esd`).

Which UNet parameters ESD trains, per ``--train_method`` (Sec. 4 and the released ESD training script), as rules
over the UNet's own parameter names (``model.model.diffusion_model.named_parameters()``, e.g.
``input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight``):

=============  =================================================================================
``xattn``      cross-attention only (``attn2`` in the name) — ESD-x, the paper's choice for styles
``noxattn``    everything except cross-attention, the time embedding (``time_embed``) and the output
               head (names starting ``out.``) — ESD-u
``selfattn``   self-attention only (``attn1``)
``full``       every UNet parameter
``notime``     everything except the time embedding and the output head
``xlayer``     cross-attention of ``output_blocks.6.`` and ``output_blocks.8.`` only
``selflayer``  self-attention of ``input_blocks.4.`` and ``input_blocks.7.`` only
=============  =================================================================================
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import torch
import torch.nn.functional as F
from ldm.models.diffusion.sampling import cfg, ddim_sample, ddim_timesteps

from sepce.methods.common import check_concept_names
from sepce.modeling import prompts_embeddings
from sepce.training import UNET_PREFIX, TrainingSession, TrainingSettings, TrainStep, select_parameters

METHOD = "ESD"
#: ESD's defaults (the released command: ``--train_method xattn --iterations 1000``, lr 1e-5, guidance 3 and 1).
ESD_DEFAULTS = {
    "lr": 1e-5,
    "iterations": 1000,
    "train_method": "xattn",
    "start_guidance": 3.0,
    "negative_guidance": 1.0,
    "sampling": "till_t",
}
#: How ESD samples its latent z before scoring it at t (:func:`esd_sampling_steps`).
ESD_SAMPLING = ("till_t", "authors_all_steps")
#: The most DDIM steps ESD samples with.
MAX_DDIM_STEPS = 500


def _excluded_head_or_time(name: str) -> bool:
    return name.startswith("out.") or "time_embed" in name


def _in_blocks(name: str, blocks: tuple[str, ...]) -> bool:
    return any(b in name for b in blocks)


ESD_TRAIN_METHODS: dict[str, Callable[[str], bool]] = {
    "xattn": lambda n: "attn2" in n,
    "noxattn": lambda n: not (_excluded_head_or_time(n) or "attn2" in n),
    "selfattn": lambda n: "attn1" in n,
    "full": lambda n: True,
    "notime": lambda n: not _excluded_head_or_time(n),
    "xlayer": lambda n: "attn2" in n and _in_blocks(n, ("output_blocks.6.", "output_blocks.8.")),
    "selflayer": lambda n: "attn1" in n and _in_blocks(n, ("input_blocks.4.", "input_blocks.7.")),
}

#: Train methods that select a small part of the UNet (attention only).
SMALL_TRAIN_METHODS = ("xattn", "selfattn", "xlayer", "selflayer")


def check_train_method(train_method: str) -> str:
    if train_method not in ESD_TRAIN_METHODS:
        raise ValueError(
            f"--train_method {train_method!r} is not an ESD train method; expected one of "
            f"{', '.join(ESD_TRAIN_METHODS)}"
        )
    return train_method


def esd_unet_names(unet_names: Iterable[str], train_method: str) -> list[str]:
    """The UNet-relative names (as ``diffusion_model.named_parameters()`` yields them) ESD trains."""
    rule = ESD_TRAIN_METHODS[check_train_method(train_method)]
    return [n for n in unet_names if rule(n)]


def esd_parameter_keys(model_names: Iterable[str], train_method: str) -> list[str]:
    """The full state-dict keys (``model.diffusion_model.<unet name>``) of a LatentDiffusion's parameters that
    ESD trains; names outside the UNet are never selected."""
    rule = ESD_TRAIN_METHODS[check_train_method(train_method)]
    return [n for n in model_names if n.startswith(UNET_PREFIX) and rule(n[len(UNET_PREFIX) :])]


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


@dataclass(frozen=True)
class ESDSettings:
    """ESD's own settings, validated on construction (one-line ``ValueError`` naming the flag): ``prompt`` (one
    concept, or several split at ``separator``: the script's ``--seperator``), the trained parameters
    ``train_method`` (:data:`ESD_TRAIN_METHODS`), the guidance of the sampling (``start_guidance``) and of the
    target (``negative_guidance``, η), and how z is sampled (``sampling``, :data:`ESD_SAMPLING`)."""

    prompt: str
    train_method: str = ESD_DEFAULTS["train_method"]
    start_guidance: float = ESD_DEFAULTS["start_guidance"]
    negative_guidance: float = ESD_DEFAULTS["negative_guidance"]
    sampling: str = ESD_DEFAULTS["sampling"]
    separator: Optional[str] = None

    def __post_init__(self) -> None:
        for name in ("start_guidance", "negative_guidance"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"--{name} {getattr(self, name)!r}: expected a finite number")
        check_train_method(self.train_method)
        if self.sampling not in ESD_SAMPLING:
            raise ValueError(f"--sampling {self.sampling!r}: expected one of {', '.join(ESD_SAMPLING)}")
        check_concept_names(self.concepts)

    @property
    def concepts(self) -> list[str]:
        """The concepts ``prompt`` names (:func:`split_concepts`)."""
        return split_concepts(self.prompt, self.separator)


def check_ddim_steps(ddim_steps: int) -> int:
    """ESD samples its latents with DDIM: at most :data:`MAX_DDIM_STEPS` steps."""
    if not 1 <= ddim_steps <= MAX_DDIM_STEPS:
        raise ValueError(
            f"--ddim_steps {ddim_steps!r}: ESD samples with DDIM, expected an integer in 1..{MAX_DDIM_STEPS}"
        )
    return ddim_steps


def train_esd(session: TrainingSession, settings: ESDSettings) -> dict:
    """One ESD run: each iteration draws a concept, t_enc and t, samples z "till t" with the model being trained,
    and steps on :func:`esd_loss` against the frozen original; then the run's end
    (:meth:`~sepce.training.TrainingSession.finish`). Returns the summary."""
    concepts = settings.concepts
    ddim_steps, image_size = session.settings.ddim_steps, session.settings.image_size
    model = session.load_model()
    params = select_parameters(model, ESD_TRAIN_METHODS[settings.train_method])
    reference = session.frozen_reference(model, params)
    uncond = prompts_embeddings(model, [""])  # 1 77 D
    conds = {c: prompts_embeddings(model, [c]) for c in concepts}  # each 1 77 D
    latent_shape = (1, model.channels, image_size // 8, image_size // 8)
    run_folder = session.start_run({"concepts": concepts, "trained_tensors": len(params)})

    def step(i: int) -> TrainStep:
        concept = concepts[int(torch.randint(len(concepts), (1,), generator=session.generator))]
        t_enc, t = session.timesteps()
        start_code = torch.randn(latent_shape, generator=session.generator).to(session.device)
        z = esd_sample_till_t(
            model, start_code, conds[concept], uncond, t_enc, ddim_steps, settings.start_guidance, settings.sampling
        )
        e_0, e_p = reference(z.expand(2, -1, -1, -1), t.expand(2), torch.cat([uncond, conds[concept]])).chunk(2)
        e_n = model.apply_model(z, t, conds[concept])
        loss = esd_loss(e_n, e_0, e_p, settings.negative_guidance)
        steps = esd_sampling_steps(t_enc, ddim_steps, settings.sampling, model.num_timesteps)
        return TrainStep(loss, {"concept": concept, "t_enc": t_enc, "t": int(t), "ddim_steps_run": steps})

    # The rollback copy of the trained tensors is skipped for the methods that train most of the UNet.
    result = session.fit(
        params,
        step,
        desc=f"{METHOD}-{settings.train_method} {settings.prompt}",
        zero_grad=True,
        keep_last_good=settings.train_method in SMALL_TRAIN_METHODS,
    )
    draws = {c: sum(r.get("concept") == c for r in run_folder.rows[: result.iterations]) for c in concepts}
    return session.finish(
        result,
        session.tensor_record(params),
        reference=reference.kind,
        concepts={
            c: {"iterations": result.iterations, "stop_reason": result.stop_reason, "draws": draws[c]} for c in concepts
        },
        settings={
            "prompt": settings.prompt,
            "train_method": settings.train_method,
            "sampling": settings.sampling,
            "start_guidance": settings.start_guidance,
            "negative_guidance": settings.negative_guidance,
            "trained_tensors": len(params),
        },
        stop_reason=result.stop_reason,
    )


def run_esd(common: TrainingSettings, settings: ESDSettings) -> dict:
    """Check the DDIM steps and the output folder (``models/ESD-<prompt>-<train method>`` by default) before a
    model loads, then :func:`train_esd`."""
    check_ddim_steps(common.ddim_steps)
    session = TrainingSession(common, METHOD, settings.concepts, images=False, suffix=settings.train_method)
    return train_esd(session, settings)
