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
carry the suffix ``-original`` (``models/FMN-VanGogh-original``). The method itself is ``sepce/methods/fmn.py``.
"""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

from sepce.cli import run
from sepce.methods.fmn import FMN_CONCEPT_TEMPLATE, FMN_NEUTRAL_PROMPT, FMN_VARIANTS, FMNSettings, run_fmn
from sepce.methods.variants import VARIANTS, peek_variant, variant_help
from sepce.training import finished_message, settings_from_args, training_parser

#: The flags only one variant has (its parser adds them).
VARIANT_FLAGS = ("neutral_prompt", "use_pooler", "only_cross_attention")


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
    own = {name: getattr(args, name) for name in VARIANT_FLAGS if hasattr(args, name)}
    settings = FMNSettings(prompt=args.prompt, variant=args.variant, concept_template=args.concept_template, **own)
    summary = run_fmn(settings_from_args(args), settings)
    print(finished_message(summary))
    return summary


if __name__ == "__main__":
    run(parse_args, main)
