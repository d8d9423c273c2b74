"""Ablating Concepts (AC; Kumari et al. 2023, "Ablating Concepts in Text-to-Image Diffusion Models", Eq. 4,
model-based; docs/method.md, "The authors' variants of FMN and Ablating Concepts" and "The original FMN and Ablating
Concepts"): its losses, variants and training.

Two variants (:data:`ABLATING_VARIANTS`, :mod:`sepce.methods.variants`):

- the authors' variant: the concept prompt's prediction is pulled to the frozen original's prediction for the
  anchor prompt, plus a term that keeps the anchor prompt's own prediction in place (:func:`ablating_loss`);
- the original: on images of the ANCHOR prompt, the concept prompt's prediction is pulled to the trained model's
  own, detached prediction for the anchor prompt (:func:`model_based_ablation_loss`), plus the ordinary
  noise-prediction loss on anchor images (:func:`prior_preservation_loss`).

:class:`AblationSettings` holds the method's own settings, :func:`run_ablation` the run
(``train-scripts/Abconcept.py`` is its flags and this one call).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from sepce.data_generation import data_folder_name
from sepce.methods.common import DriftLog
from sepce.methods.variants import VariantDefaults, VariantSettings, VariantStep, train_variant
from sepce.modeling import prompts_embeddings
from sepce.training import ImageFolder, TrainingSession, TrainingSettings, TrainStep

#: The method's name in run folders and records (``models/Abconcept-VanGogh``), as the released script's.
METHOD = "Abconcept"
#: The released (authors' variant) prompts: Ablating Concepts maps ``<prompt> painting`` onto the anchor
#: ``painting``; the original variant uses the same template and anchor by default.
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


def anchor_images(data_dir: Path, anchor_text: str, image_size: int) -> tuple[str, ImageFolder]:
    """The anchor prompt's image folder (generate-data.py's folder name for it) and its images, checked before
    any model loads (one-line error when missing or empty)."""
    try:
        name = data_folder_name(anchor_text)
    except ValueError:
        raise ValueError(
            f"--anchor_prompt {anchor_text!r} cannot name an image folder under --data_dir (no '/', no leading '.')"
        ) from None
    folder = Path(data_dir) / name
    if not folder.is_dir():
        raise FileNotFoundError(
            f"anchor image folder {folder} does not exist: the original Ablating Concepts trains on images of the "
            f"anchor prompt {anchor_text!r} (eval-scripts/generate-data.py --prompt {anchor_text!r} --save_path "
            f"{data_dir})"
        )
    return name, ImageFolder(folder, image_size)


@dataclass(frozen=True)
class AblationSettings(VariantSettings):
    """Ablating Concepts' own settings (:class:`~sepce.methods.variants.VariantSettings`): the concept prompt's
    template and the anchor prompt; the authors' variant's ``anchor_weight``; the original's ``ablation_weight``
    and ``prior_weight``."""

    concept_template: str = ABLATING_CONCEPT_TEMPLATE
    anchor_prompt: str = ABLATING_ANCHOR_PROMPT
    anchor_weight: float = ABLATING_ANCHOR_WEIGHT
    ablation_weight: float = ABLATING_ABLATION_WEIGHT
    prior_weight: float = ABLATING_PRIOR_WEIGHT

    def check_own(self) -> None:
        if self.variant == "authors" and not (math.isfinite(self.anchor_weight) and self.anchor_weight >= 0):
            raise ValueError(f"--anchor_weight {self.anchor_weight!r}: expected a finite number >= 0")
        if self.variant == "original":
            check_ablating_weights(self.ablation_weight, self.prior_weight)

    @property
    def spec(self) -> VariantDefaults:
        return ABLATING_VARIANTS[self.variant]


def train_authors(session: TrainingSession, settings: AblationSettings) -> dict:
    """The authors' variant (docs/method.md, "The authors' variants of FMN and Ablating Concepts")."""
    concept_text = settings.concept_prompt

    def setup(model: torch.nn.Module, params: dict) -> VariantStep:
        reference = session.frozen_reference(model, params)
        drift = DriftLog(params, reference.originals)
        conds = prompts_embeddings(model, [concept_text, settings.anchor_prompt])  # 2 77 D: concept, anchor

        def step(i: int) -> TrainStep:
            _, t = session.timesteps()
            x = session.noisy(session.latent(settings.prompt), t)
            e_n = reference(x, t, conds[1:])
            e_pn, e_p0 = model.apply_model(x.expand(2, -1, -1, -1), t.expand(2), conds).chunk(2)
            loss, concept_term, anchor_term = ablating_loss(e_pn, e_p0, e_n, settings.anchor_weight)
            values = {"concept_mse": concept_term.item(), "anchor_mse": anchor_term.item(), "l1_drift": drift()}
            return TrainStep(loss, values)

        recorded = settings.spec.run_settings(
            settings.variant,
            settings.prompt,
            settings.concept_template,
            anchor_prompt=settings.anchor_prompt,
            anchor_weight=settings.anchor_weight,
        )
        return VariantStep(
            step, f"{METHOD} {settings.prompt}", reference.kind, recorded, {"concept_prompt": concept_text}
        )

    return train_variant(session, settings.spec, setup)


def train_original(session: TrainingSession, settings: AblationSettings, folder_name: str) -> dict:
    """The original Ablating Concepts, model-based (docs/method.md, "The original FMN and Ablating Concepts"),
    trained on the anchor prompt's images (the session's image folder ``folder_name``)."""
    concept_text, anchor_text = settings.concept_prompt, settings.anchor_prompt

    def setup(model: torch.nn.Module, params: dict) -> VariantStep:
        drift = DriftLog(params)
        concept_cond, anchor_cond = prompts_embeddings(model, [concept_text]), prompts_embeddings(model, [anchor_text])

        def step(i: int) -> TrainStep:
            z = session.latent(folder_name)
            _, t = session.timesteps()
            ablation = ablating_original_loss(model, session.noisy(z, t), t, concept_cond, anchor_cond)
            loss = settings.ablation_weight * ablation
            values = {"ablation_mse": ablation.item()}
            if settings.prior_weight > 0:
                _, t_prior = session.timesteps()
                prior = prior_preservation_loss(model, z, t_prior, anchor_cond, session.device_generator)
                loss = loss + settings.prior_weight * prior
                values["prior_mse"] = prior.item()
            values["l1_drift"] = drift()
            return TrainStep(loss, values)

        recorded = settings.spec.run_settings(
            settings.variant,
            settings.prompt,
            settings.concept_template,
            len(params),
            anchor_prompt=anchor_text,
            anchor_folder=folder_name,
            ablation_weight=settings.ablation_weight,
            prior_weight=settings.prior_weight,
        )
        return VariantStep(
            step,
            f"{METHOD} (original) {settings.prompt}",
            "none (the target is the trained model's own prediction for the anchor prompt, detached)",
            recorded,
            {"concept_prompt": concept_text, "anchor_folder": folder_name},
        )

    return train_variant(session, settings.spec, setup)


def run_ablation(common: TrainingSettings, settings: AblationSettings) -> dict:
    """Check the image folder (the concept's, or the anchor prompt's for the original variant) and the output
    folder (``models/Abconcept-<prompt>``, ``...-original`` for the original variant) before a model loads, then
    train the variant."""
    if settings.variant == "authors":
        return train_authors(TrainingSession(common, METHOD, [settings.prompt]), settings)
    folder_name, folder = anchor_images(common.data_dir, settings.anchor_prompt, common.image_size)
    session = TrainingSession(  # the training images are the anchor prompt's
        common, METHOD, [settings.prompt], images=False, suffix="original", image_folders={folder_name: folder}
    )
    return train_original(session, settings, folder_name)
