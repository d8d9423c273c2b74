"""Concept-inversion attack on a (possibly erased) model: learn a new word for the concept, draw with it, measure.

    python eval-scripts/attack-inversion.py --model_name CiE-VanGogh --prompt 'Van Gogh' \\
        --prompts_path data/evaluate.csv --save_path evaluation_folder --output_name cie \\
        --classifier models/artist-classifier/resnet18.pt

Textual inversion against the erasure (docs/method.md, "Concept-inversion attack"; Pham et al., ICLR 2024): one
new token embedding v*, initialised from --init_word, is trained with the ordinary noise-prediction loss on the
concept's training images (made by the ORIGINAL model: <data_dir>/<prompt>/, generate-data.py) while the model
stays frozen. Then, for every row of --prompts_path whose class is the concept's, images are drawn with v* in
place of the concept's words (``in the style of <v*>``), with the same seeds and file names as
generate-images.py (<case>_<k>.png), so they pair with the model's own-prompt images.

Writes, under <save_path>/<output name>/ (the model's folder of generate-images.py):
  attack/embedding-<concept>.safetensors  v*, its loss history and how it was learned (reused when the inputs
                                         match; one per concept, so several concepts can be attacked per model)
  attack/<case>_<k>.png                  the attack images (and attack/generation.json, the sampling settings)
  results/attack.csv, .json              with --classifier: the accuracy on every attack image of the folder,
                                         per class (make-table.py: ATK), with each image's prediction

--model_name is what generate-images.py takes: SD-v1-4/original, a run folder under --models_dir, a SepCE
record with --erase, a checkpoint or an imported diffusers UNet. Steps, learning rate, batch size, seed and the
init word come from one preset per domain (sd, or the concept world), the same for every method; the --attack_*
flags override it (recorded). --image_size is the size of the generated images and of the training images
(resized and centre-cropped): 512 for SD v1.4, 64 for the world. --classifier takes the world classifier
(.safetensors) or the artist ResNet18 (artist-cls-train.py). The attack on the original model is the ceiling.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

from sepce.attack import (
    PRESETS,
    add_optimiser_arguments,
    add_target_arguments,
    plan_attack,
    preset_from_args,
    run_attack,
    target_from_args,
)
from sepce.cli import EXIT_HELP, parser, run
from sepce.generation import add_sampling_arguments


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = parser(__doc__, EXIT_HELP)
    add_target_arguments(
        p,
        prompt_help="the concept: its class-map prompt or name (e.g. 'Van Gogh', 'in the style of waves')",
        data_help="training images of the concept (from the ORIGINAL model) are read from <data_dir>/<prompt>/",
        domain_help="training templates and preset: sd, or world (the concept world); auto: world for a "
        "concept-world style prompt ('in the style of waves'), else sd",
    )
    p.add_argument(
        "--init_word",
        default=None,
        help="single-token word v* starts from (None: the preset's: 'art' for SD, 'thing' for the world)",
    )
    add_optimiser_arguments(
        p,
        lr_help="Adam learning rate of v* (None: the preset's)",
        batch_help="images per step (None: the preset's)",
        seed_help="seed of the optimisation (None: the preset's)",
    )
    p.add_argument(
        "--classifier",
        type=Path,
        default=None,
        help="classify the attack images: a world classifier (.safetensors) or an artist-cls-train.py checkpoint; "
        "None: generate only",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="learn v* again and regenerate the attack images and results even when they exist",
    )
    add_sampling_arguments(p)
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> dict:
    # every check happens here and in plan_attack, before any model loads
    target, setup, domain = target_from_args(args, require_class=True)
    plan = plan_attack(
        target,
        preset=preset_from_args(PRESETS[domain], args),
        domain=domain,
        num_samples=args.num_samples,
        batch_size=setup.batch_size,
        classifier=args.classifier,
        overwrite=args.overwrite,
        progress=setup.progress,
    )
    summary = run_attack(plan)
    loss = summary.get("loss") or {}
    how = f"learned in {summary['seconds']} s" if summary.get("trained") else "reused (same inputs)"
    print(
        f"{summary['embedding']}: {how}; loss {loss.get('mean_first_tenth', float('nan')):.4g} -> "
        f"{loss.get('mean_last_tenth', float('nan')):.4g} (means of the first and last tenth of the steps)"
    )
    if summary.get("ok") is False:
        return summary
    print(
        f"{summary['folder']}: wrote {summary.get('written', 0)} attack image(s), {summary['skipped']} already existed"
    )
    if "accuracy" in summary:
        row = summary["accuracy"]
        print(
            f"attack accuracy on {plan.concept.name!r}: {row['accuracy_pct']:.1f} % "
            f"({row['correct']}/{row['images']}); "
            f"{plan.model_folder / 'results' / 'attack.csv'}"
        )
    return summary


if __name__ == "__main__":
    run(parse_args, main)
