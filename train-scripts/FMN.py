"""Forget-Me-Not attention re-steering (FMN; Zhang et al. 2023, "Forget-Me-Not: Learning to Forget in
Text-to-Image Diffusion Models", Sec. 3.1; docs/method.md, "The authors' variants of FMN and Ablating Concepts" and
"The original FMN and Ablating Concepts").

    python train-scripts/FMN.py --lr 1e-5 --iter_break 10 --prompt 'Van Gogh' --devices '0,1'
    python train-scripts/FMN.py --variant original --prompt 'Van Gogh'

Both variants train on one image of ``<data_dir>/<prompt>/`` per iteration (common timestep draw, x_t) with the
concept prompt c = ``--concept_template`` filled with ``--prompt`` ("a painting of <prompt>").

--variant authors (default; "FMN (authors' variant)", the form the paper's table measured): Adam on every UNet
``attn2`` tensor, loss = Σ over the cross-attention layers of MSE(q·k_cᵀ/√d − q·k_c2ᵀ/√d, 0), c2 = emb(
``--neutral_prompt``: "a painting of"), the queries q from the UNet forward at x_t with c.

--variant original ("FMN (original)", SHI-Labs/Forget-Me-Not ``src/train_attn.py``, ``configs/attn.yaml``): in every
attn2 layer the post-softmax attention probabilities at the token positions of the concept's words in c (found by
tokenizing; ``--use_pooler`` adds the end-of-text token and its padding copies), for every head and query; loss =
the L2 norm of all of them. AdamW (weight decay 0.01), lr 2e-6, 35 iterations, gradients zeroed every step, the
whole UNet trained (``--only_cross_attention``: attn2 only, gradient norm clipped to 1 as the original does then).
The original's optional textual-inversion pre-stage is NOT implemented: the concept is named by its words.

For concepts that are not painters, set the prompts, e.g. ``--prompt 'in the style of waves' --concept_template
'{}' --neutral_prompt 'in the style of'``. FMN needs no frozen original: with two ``--devices`` only the first is
used. Writes ``<output_dir>/erasure.safetensors`` (the trained tensors), ``args.json``, ``losses.csv`` (with the L1
drift of the weights, logged only), ``summary.json``, ``loss.png`` and, with ``--save_full``, a full CompVis
checkpoint ``FMN-<prompt>.ckpt`` (or ``.safetensors``). The original variant's default run folder and checkpoint
carry the suffix ``-original`` (``models/FMN-VanGogh-original``).
"""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

from sepce.baseline_losses import (
    FMN_CONCEPT_TEMPLATE,
    FMN_NEUTRAL_PROMPT,
    FMN_VARIANTS,
    VARIANTS,
    check_concept_names,
    check_template,
    concept_token_positions,
    fill_template,
    fmn_attention_loss,
    fmn_loss,
    fmn_original_defaults,
    peek_variant,
    variant_help,
)
from sepce.cli import run
from sepce.losses import DriftLog
from sepce.modeling import attn2_modules, prompts_embeddings, tokenizer_from_config
from sepce.training import TrainingSession, TrainStep, finished_message, select_parameters, training_parser

TEXTUAL_INVERSION = "not implemented (the original's optional pre-stage; the concept is named by its words)"


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    variant = peek_variant(argv)
    spec = FMN_VARIANTS[variant]
    p = training_parser(__doc__, lr=spec.lr, iterations=spec.iterations, zero_grad_flag=not spec.zero_grad)
    p.add_argument(
        "--concept_template",
        default=FMN_CONCEPT_TEMPLATE,
        help="concept prompt c: this text with {} replaced by --prompt",
    )
    if variant == "authors":
        p.add_argument(
            "--neutral_prompt",
            default=FMN_NEUTRAL_PROMPT,
            help="concept-free context c2 of the authors' variant, whose attention logits c is steered to",
        )
    else:
        p.add_argument(
            "--use_pooler",
            action="store_true",
            help="also drive to zero the attention to the end-of-text token and its padding copies (the "
            "original's use_pooler)",
        )
        p.add_argument(
            "--only_cross_attention",
            action="store_true",
            help="train every attn2 tensor instead of the whole UNet, the gradient norm clipped to 1 (the "
            "original's only_optimize_ca)",
        )
    p.add_argument(
        "--variant",
        choices=VARIANTS,
        default="authors",
        help=variant_help(
            FMN_VARIANTS,
            {
                "authors": ", --neutral_prompt",
                "original": ", --use_pooler, --only_cross_attention; its textual-inversion pre-stage is not "
                "implemented",
            },
        ),
    )
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> dict:
    check_concept_names([args.prompt])
    check_template(args.concept_template)
    return train_original(args) if args.variant == "original" else train_authors(args)


def train_authors(args: argparse.Namespace) -> dict:
    """The authors' variant (docs/method.md, "The authors' variants of FMN and Ablating Concepts")."""
    session = TrainingSession.from_args(args, "FMN", [args.prompt])
    model = session.load_model()
    params = select_parameters(model, "attn2")
    drift = DriftLog(params)
    layers = attn2_modules(model)
    concept_text = fill_template(args.concept_template, args.prompt)
    context, context2 = prompts_embeddings(model, [concept_text]), prompts_embeddings(model, [args.neutral_prompt])
    session.start_run({"concept_prompt": concept_text})

    def step(i: int) -> TrainStep:
        _, t = session.timesteps()
        x = session.noisy(session.latent(args.prompt), t)
        loss = fmn_loss(model, x, t, context, context2, layers)
        return TrainStep(loss, {"l1_drift": drift()})

    spec = FMN_VARIANTS["authors"]
    result = session.fit(
        params, step, f"FMN {args.prompt}", **spec.trainer_options(params.values(), session.settings.lr)
    )
    summary = session.finish(
        result,
        session.tensor_record(params),
        reference="none (FMN compares two contexts of the trained model)",
        settings=spec.run_settings(
            args.variant,
            args.prompt,
            args.concept_template,
            neutral_prompt=args.neutral_prompt,
            attention_layers=len(layers),
        ),
    )
    print(finished_message(summary))
    return summary


def train_original(args: argparse.Namespace) -> dict:
    """The original Forget-Me-Not (docs/method.md, "The original FMN and Ablating Concepts")."""
    spec = fmn_original_defaults(args.only_cross_attention)
    session = TrainingSession.from_args(args, "FMN", [args.prompt], suffix="original")
    concept_text = fill_template(args.concept_template, args.prompt)
    tokenizer = tokenizer_from_config(session.settings.config_path)  # positions are checked before the model loads
    positions = concept_token_positions(tokenizer, concept_text, args.prompt, args.use_pooler)
    ids = tokenizer([concept_text])[0].tolist()
    model = session.load_model()
    params = select_parameters(model, spec.parameter_rule)
    drift = DriftLog(params)
    layers = attn2_modules(model)
    context = prompts_embeddings(model, [concept_text])
    session.start_run({"concept_prompt": concept_text, "concept_positions": positions})

    def step(i: int) -> TrainStep:
        _, t = session.timesteps()
        x = session.noisy(session.latent(args.prompt), t)
        loss, mean_attention = fmn_attention_loss(model, x, t, context, positions, layers)
        return TrainStep(loss, {"concept_attention": mean_attention.item(), "l1_drift": drift()})

    options = spec.trainer_options(params.values(), session.settings.lr)
    result = session.fit(params, step, f"FMN (original) {args.prompt}", **options)
    summary = session.finish(
        result,
        session.tensor_record(params),
        reference="none (the loss reads the trained model's own attention)",
        settings=spec.run_settings(
            args.variant,
            args.prompt,
            args.concept_template,
            len(params),
            concept_positions=positions,
            concept_tokens=[tokenizer.decode([ids[i]]) for i in positions],
            use_pooler=args.use_pooler,
            only_cross_attention=args.only_cross_attention,
            attention_layers=len(layers),
            textual_inversion=TEXTUAL_INVERSION,
        ),
    )
    print(finished_message(summary))
    return summary


if __name__ == "__main__":
    run(parse_args, main)
