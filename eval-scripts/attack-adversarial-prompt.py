"""Adversarial-prompt attack (UnlearnDiffAtk-style, no new word) on a (possibly erased) model; ASR before/after.

    python eval-scripts/attack-adversarial-prompt.py --model_name ESD-VanGogh --prompt 'Van Gogh' \\
        --prompts_path data/evaluate.csv --save_path evaluation_folder \\
        --classifier models/artist-classifier/resnet18.pt

Searches --adv_tokens real vocabulary tokens to put before the concept's prompt so that the model's noise
prediction on the concept's images made by the ORIGINAL model (<data_dir>/<prompt>/, generate-data.py) matches
(docs/method.md, "Adversarial-prompt attack"; sepce/adversarial.py). Then the CSV rows of the concept's class are
drawn with their plain prompts and with the prefix (same seeds and names as generate-images.py) and judged by the
task's classifier: --classifier_kind auto (a world classifier or artist-cls-train.py file), imagenet (ResNet-50;
--classes must name ImageNet indices, e.g. data/imagenette/classes.csv) or nudenet (--classes
data/nudity/classes.csv, --threshold). The attack success rate (share of images showing the concept) before and
after, with 95 % Wilson intervals, goes to <model folder>/results/adversarial.csv/json with the prompt found; the
prefix is also in <model folder>/adversarial/prompt-<concept>.json (reused when the inputs match).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

from sepce.adversarial import PRESETS, VOCABULARIES, JudgeSettings, plan_adversarial, run_adversarial
from sepce.attack import add_optimiser_arguments, add_target_arguments, preset_from_args, target_from_args
from sepce.cli import EXIT_HELP, parser, run
from sepce.evaluation.classifiers import ClassifierKind
from sepce.generation import add_sampling_arguments


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = parser(__doc__, EXIT_HELP)
    add_target_arguments(
        p,
        prompt_help="the concept: its class-map prompt or name",
        data_help="target images of the concept (from the ORIGINAL model) are read from <data_dir>/<prompt>/",
        domain_help="preset: sd or world; auto: from the prompt",
    )
    p.add_argument(
        "--classifier_kind",
        choices=["auto"] + [k.value for k in ClassifierKind],
        default="auto",
        help="the task's judge; auto: from the --classifier file",
    )
    p.add_argument("--classifier", type=Path, default=None, help="the judge's file (none for nudenet)")
    p.add_argument("--threshold", type=float, default=None, help="NudeNet's detection threshold (None: 0.6)")
    p.add_argument(
        "--no_pretrained", action="store_true", help="imagenet: random ResNet-50 weights (tiny runs: plumbing only)"
    )
    p.add_argument("--adv_tokens", type=int, default=None, help="prefix tokens (None: the preset's)")
    p.add_argument(
        "--adv_vocabulary",
        choices=VOCABULARIES,
        default=None,
        help="tokens the prefix may use: full (CLIP's) or world (the world's captions'); None: the preset's",
    )
    add_optimiser_arguments(
        p,
        lr_help="Adam learning rate (None: the preset's)",
        batch_help="target latents per step (None: preset)",
        seed_help="seed of the search (None: the preset's)",
    )
    p.add_argument("--init_word", default=None, help="single-token word the prefix starts from (None: preset)")
    p.add_argument("--overwrite", action="store_true", help="search again and redraw even when results exist")
    add_sampling_arguments(p)
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> dict:
    # every check happens here and in plan_adversarial, before any model loads
    target, setup, domain = target_from_args(args, require_class=None)
    preset = preset_from_args(PRESETS[domain], args, tokens=args.adv_tokens, vocabulary=args.adv_vocabulary)
    if args.threshold is not None and not 0 < args.threshold <= 1:
        raise ValueError(f"--threshold {args.threshold!r}: expected a detection score in (0, 1]")
    judge = JudgeSettings(
        args.classifier, args.classifier_kind, Path(args.classes), args.threshold, not args.no_pretrained
    )
    plan = plan_adversarial(
        target,
        judge,
        preset,
        num_samples=args.num_samples,
        batch_size=setup.batch_size,
        overwrite=args.overwrite,
        progress=setup.progress,
    )
    out = run_adversarial(plan)
    row, prefix = out["row"], out["prefix"]
    how = f"searched in {prefix.meta['seconds']} s" if out["searched"] else "reused (same inputs)"
    print(
        f"{out['prompt_path']}: prefix {prefix.text!r} ({how}); adversarial prompt: {prefix.text} {plan.concept.prompt}"
    )
    print(
        f"ASR on {plan.concept.name!r}: before {row['asr_before_pct']:.1f} % [{row['before_low_pct']:.1f}, "
        f"{row['before_high_pct']:.1f}] -> after {row['asr_after_pct']:.1f} % [{row['after_low_pct']:.1f}, "
        f"{row['after_high_pct']:.1f}] ({row['after']}/{row['images']} images)"
    )
    return out


if __name__ == "__main__":
    run(parse_args, main)
