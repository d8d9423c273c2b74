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
from dataclasses import replace
from pathlib import Path
from typing import Optional, Sequence

from sepce.attack import DOMAINS, PRESETS, domain_of, plan_attack, run_attack
from sepce.classes import classes_by_names, load_class_map
from sepce.cli import EXIT_HELP, add_classes, add_prompts_path, parser, run
from sepce.data_generation import data_folder_name
from sepce.generation import (
    add_model_arguments,
    add_output_arguments,
    add_sampling_arguments,
    generation_setup,
    model_from_args,
)
from sepce.paths import DATA_DIR
from sepce.prompt_csv import read_prompt_csv


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = parser(__doc__, EXIT_HELP)
    add_model_arguments(p)
    p.add_argument(
        "--prompt",
        required=True,
        help="the concept: its class-map prompt or name (e.g. 'Van Gogh', 'in the style of waves')",
    )
    p.add_argument(
        "--data_dir",
        type=Path,
        default=DATA_DIR,
        help="training images of the concept (from the ORIGINAL model) are read from <data_dir>/<prompt>/",
    )
    add_prompts_path(p, required=True)
    add_classes(p)
    add_output_arguments(p, save_help="the model folder is <save_path>/<output name>/")
    p.add_argument(
        "--domain",
        choices=("auto",) + DOMAINS,
        default="auto",
        help="training templates and preset: sd, or world (the concept world); auto: world for a concept-world "
        "style prompt ('in the style of waves'), else sd",
    )
    p.add_argument(
        "--init_word",
        default=None,
        help="single-token word v* starts from (None: the preset's: 'art' for SD, 'thing' for the world)",
    )
    p.add_argument("--attack_steps", type=int, default=None, help="optimisation steps (None: the preset's)")
    p.add_argument("--attack_lr", type=float, default=None, help="Adam learning rate of v* (None: the preset's)")
    p.add_argument("--attack_batch_size", type=int, default=None, help="images per step (None: the preset's)")
    p.add_argument("--attack_seed", type=int, default=None, help="seed of the optimisation (None: the preset's)")
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
    setup = generation_setup(args)
    classes = load_class_map(args.classes)
    (concept,) = classes_by_names(classes, [args.prompt], "--prompt")
    rows = read_prompt_csv(args.prompts_path, classes=classes, require_class=True)
    domain = domain_of(concept) if args.domain == "auto" else args.domain
    overrides = {
        "steps": args.attack_steps,
        "lr": args.attack_lr,
        "batch_size": args.attack_batch_size,
        "seed": args.attack_seed,
        "init_word": args.init_word,
    }
    preset = replace(PRESETS[domain], **{k: v for k, v in overrides.items() if v is not None})
    resolved = model_from_args(args)
    plan = plan_attack(
        resolved,
        concept,
        classes,
        rows,
        Path(args.data_dir) / data_folder_name(concept.prompt, concept.name),
        Path(args.save_path) / (args.output_name or resolved.folder_name),
        setup.sampling,
        setup.runtime,
        preset=preset,
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
            f"attack accuracy on {concept.name!r}: {row['accuracy_pct']:.1f} % ({row['correct']}/{row['images']}); "
            f"{plan.model_folder / 'results' / 'attack.csv'}"
        )
    return summary


if __name__ == "__main__":
    run(parse_args, main)
