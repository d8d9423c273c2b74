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
(``models/Abconcept-VanGogh-original``). The method itself is ``sepce/methods/ablation.py``.
"""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

from sepce.cli import run
from sepce.methods.ablation import (
    ABLATING_ABLATION_WEIGHT,
    ABLATING_ANCHOR_PROMPT,
    ABLATING_ANCHOR_WEIGHT,
    ABLATING_CONCEPT_TEMPLATE,
    ABLATING_PRIOR_WEIGHT,
    ABLATING_VARIANTS,
    AblationSettings,
    run_ablation,
)
from sepce.methods.variants import VARIANTS, peek_variant, variant_help
from sepce.training import finished_message, settings_from_args, training_parser

#: The flags only one variant has (its parser adds them).
VARIANT_FLAGS = ("anchor_weight", "ablation_weight", "prior_weight")


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
    own = {name: getattr(args, name) for name in VARIANT_FLAGS if hasattr(args, name)}
    settings = AblationSettings(
        prompt=args.prompt,
        variant=args.variant,
        concept_template=args.concept_template,
        anchor_prompt=args.anchor_prompt,
        **own,
    )
    summary = run_ablation(settings_from_args(args), settings)
    print(finished_message(summary))
    return summary


if __name__ == "__main__":
    run(parse_args, main)
