"""Ablating Concepts (Kumari et al. 2023, "Ablating Concepts in Text-to-Image Diffusion Models", model-based, Eq. 4;
docs/method.md, "The authors' variants of FMN and Ablating Concepts" and "The original FMN and Ablating Concepts").

    python train-scripts/Abconcept.py --lr 1e-5 --iter_break 50 --prompt 'Van Gogh' --devices '0,1'
    python train-scripts/Abconcept.py --variant original --prompt 'Van Gogh'

The concept prompt is ``--concept_template`` filled with ``--prompt`` ("<prompt> painting"), the anchor prompt
``--anchor_prompt`` ("painting").

--variant authors (default; "AC (authors' variant)", the form the paper's table measured): Adam on every UNet
``attn2`` tensor, loss = MSE(e_pn, e_n) + 10 · MSE(e_p0, e_n), where at x_t (one image of ``<data_dir>/<prompt>/``
per iteration, common timestep draw) e_pn and e_p0 are the trained model's predictions for the concept and the
anchor prompt, and e_n is the frozen original's for the anchor.

--variant original ("AC (original)", nupurkmr9/concept-ablation ``compvis/src/model.py``,
``compvis/configs/finetune_style.yaml``): the training images are the ANCHOR prompt's, read from
``<data_dir>/<anchor_prompt>/`` (``<data_dir>/blank/`` for the empty anchor, as eval-scripts/generate-data.py names
that folder). On x_t of an anchor image, loss_abl = MSE(eps(model, x_t, t, emb(concept)), stopgrad(eps(model, x_t,
t, emb(anchor)))) — the target comes from the model being trained, detached; loss_prior = the ordinary
noise-prediction MSE on the same anchor image (its own timestep and noise) with the anchor prompt; loss =
``--ablation_weight`` · loss_abl + ``--prior_weight`` · loss_prior (1 and 0.2, as the released CompVis code weighs
them with --regularization; --prior_weight 0 is its default run without it). AdamW (weight decay 0.01, torch's
default, as the released code), lr 2e-6, 110 iterations (finetune_style.yaml's max_steps), gradients zeroed every
step, only the attn2 to_k/to_v weights trained; no frozen original is needed, so with two ``--devices`` only the
first is used.

For concepts that are not painters, set the prompts, e.g. ``--concept_template '{}' --anchor_prompt ''``. Writes
``<output_dir>/erasure.safetensors`` (the trained tensors), ``args.json``, ``losses.csv``, ``summary.json``,
``loss.png`` and, with ``--save_full``, a full CompVis checkpoint ``Abconcept-<prompt>.ckpt`` (or ``.safetensors``).
The original variant's default run folder and checkpoint carry the suffix ``-original``
(``models/Abconcept-VanGogh-original``).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Optional, Sequence

from sepce.baseline_losses import (
    ABLATING_ABLATION_WEIGHT,
    ABLATING_ANCHOR_PROMPT,
    ABLATING_ANCHOR_WEIGHT,
    ABLATING_CONCEPT_TEMPLATE,
    ABLATING_PRIOR_WEIGHT,
    ABLATING_VARIANTS,
    VARIANTS,
    ablating_loss,
    ablating_original_loss,
    check_ablating_weights,
    check_concept_names,
    check_template,
    fill_template,
    peek_variant,
    prior_preservation_loss,
    variant_help,
)
from sepce.cli import run
from sepce.data_generation import data_folder_name
from sepce.losses import DriftLog
from sepce.modeling import prompts_embeddings
from sepce.training import (
    ImageFolder,
    TrainingSession,
    TrainStep,
    finished_message,
    select_parameters,
    settings_from_args,
    training_parser,
)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    variant = peek_variant(argv)
    spec = ABLATING_VARIANTS[variant]
    p = training_parser(__doc__, lr=spec.lr, iterations=spec.iterations, zero_grad_flag=not spec.zero_grad)
    if variant == "authors":
        p.add_argument(
            "--anchor_weight",
            type=float,
            default=ABLATING_ANCHOR_WEIGHT,
            help="weight of the term MSE(e_p0, e_n) that keeps the anchor prompt's prediction",
        )
    else:
        p.add_argument(
            "--ablation_weight",
            type=float,
            default=ABLATING_ABLATION_WEIGHT,
            help="weight of loss_abl, the concept prompt's prediction pulled to the anchor prompt's (detached)",
        )
        p.add_argument(
            "--prior_weight",
            type=float,
            default=ABLATING_PRIOR_WEIGHT,
            help="weight of loss_prior, the plain noise-prediction loss on anchor images with the anchor prompt "
            "(0: no prior term, the released code without --regularization)",
        )
    p.add_argument(
        "--concept_template",
        default=ABLATING_CONCEPT_TEMPLATE,
        help="concept prompt: this text with {} replaced by --prompt",
    )
    p.add_argument(
        "--anchor_prompt",
        default=ABLATING_ANCHOR_PROMPT,
        help="anchor prompt: the concept prompt's prediction is pulled to the prediction for it (the original "
        "variant also trains on its images, <data_dir>/<anchor_prompt>/ or <data_dir>/blank/ for '')",
    )
    p.add_argument(
        "--variant",
        choices=VARIANTS,
        default="authors",
        help=variant_help(
            ABLATING_VARIANTS,
            {
                "authors": ", images of the concept prompt, --anchor_weight",
                "original": ", images of the anchor prompt, --ablation_weight, --prior_weight",
            },
        ),
    )
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> dict:
    if args.variant == "authors" and not (math.isfinite(args.anchor_weight) and args.anchor_weight >= 0):
        raise ValueError(f"--anchor_weight {args.anchor_weight!r}: expected a finite number >= 0")
    if args.variant == "original":
        check_ablating_weights(args.ablation_weight, args.prior_weight)
    check_concept_names([args.prompt])
    check_template(args.concept_template)
    return train_original(args) if args.variant == "original" else train_authors(args)


def train_authors(args: argparse.Namespace) -> dict:
    """The authors' variant (docs/method.md, "The authors' variants of FMN and Ablating Concepts")."""
    session = TrainingSession.from_args(args, "Abconcept", [args.prompt])
    model = session.load_model()
    params = select_parameters(model, "attn2")
    reference = session.frozen_reference(model, params)
    drift = DriftLog(params, reference.originals)
    concept_text = fill_template(args.concept_template, args.prompt)
    conds = prompts_embeddings(model, [concept_text, args.anchor_prompt])  # 2 77 D: concept, anchor
    session.start_run({"concept_prompt": concept_text})

    def step(i: int) -> TrainStep:
        _, t = session.timesteps()
        x = session.noisy(session.latent(args.prompt), t)
        e_n = reference(x, t, conds[1:])
        e_pn, e_p0 = model.apply_model(x.expand(2, -1, -1, -1), t.expand(2), conds).chunk(2)
        loss, concept_term, anchor_term = ablating_loss(e_pn, e_p0, e_n, args.anchor_weight)
        values = {"concept_mse": concept_term.item(), "anchor_mse": anchor_term.item(), "l1_drift": drift()}
        return TrainStep(loss, values)

    spec = ABLATING_VARIANTS["authors"]
    options = spec.trainer_options(params.values(), session.settings.lr)
    result = session.fit(params, step, f"Abconcept {args.prompt}", **options)
    summary = session.finish(
        result,
        session.tensor_record(params),
        reference=reference.kind,
        settings=spec.run_settings(
            args.variant,
            args.prompt,
            args.concept_template,
            anchor_prompt=args.anchor_prompt,
            anchor_weight=args.anchor_weight,
        ),
    )
    print(finished_message(summary))
    return summary


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


def train_original(args: argparse.Namespace) -> dict:
    """The original Ablating Concepts, model-based (docs/method.md, "The original FMN and Ablating Concepts")."""
    spec = ABLATING_VARIANTS["original"]
    settings = settings_from_args(args)
    concept_text, anchor_text = fill_template(args.concept_template, args.prompt), args.anchor_prompt
    folder_name, folder = anchor_images(settings.data_dir, anchor_text, settings.image_size)
    session = TrainingSession(  # the training images are the anchor prompt's
        settings, "Abconcept", [args.prompt], images=False, suffix="original", image_folders={folder_name: folder}
    )
    model = session.load_model()
    params = select_parameters(model, spec.parameter_rule)
    drift = DriftLog(params)
    concept_cond, anchor_cond = prompts_embeddings(model, [concept_text]), prompts_embeddings(model, [anchor_text])
    session.start_run({"concept_prompt": concept_text, "anchor_folder": folder_name})

    def step(i: int) -> TrainStep:
        z = session.latent(folder_name)
        _, t = session.timesteps()
        ablation = ablating_original_loss(model, session.noisy(z, t), t, concept_cond, anchor_cond)
        loss = args.ablation_weight * ablation
        values = {"ablation_mse": ablation.item()}
        if args.prior_weight > 0:
            _, t_prior = session.timesteps()
            prior = prior_preservation_loss(model, z, t_prior, anchor_cond, session.device_generator)
            loss = loss + args.prior_weight * prior
            values["prior_mse"] = prior.item()
        values["l1_drift"] = drift()
        return TrainStep(loss, values)

    result = session.fit(
        params, step, f"Abconcept (original) {args.prompt}", **spec.trainer_options(params.values(), settings.lr)
    )
    summary = session.finish(
        result,
        session.tensor_record(params),
        reference="none (the target is the trained model's own prediction for the anchor prompt, detached)",
        settings=spec.run_settings(
            args.variant,
            args.prompt,
            args.concept_template,
            len(params),
            anchor_prompt=anchor_text,
            anchor_folder=folder_name,
            ablation_weight=args.ablation_weight,
            prior_weight=args.prior_weight,
        ),
    )
    print(finished_message(summary))
    return summary


if __name__ == "__main__":
    run(parse_args, main)
