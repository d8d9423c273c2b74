"""Train the style classifier of the evaluation protocol (seed README step 2).

    python train-scripts/artist-cls-train.py --device 'cuda:0'

Images come from class folders ``--train_dir/<index>`` and ``--eval_dir/<index>`` (indices of
``data/classes.csv``; default ``./data/train`` and ``./data/eval``). With both folders present the first
trains and the second evaluates; with only one, each class of it is split ``--train_fraction`` / rest with
``--seed``. ResNet18 with ImageNet weights (torchvision's cache, or ``--backbone_weights``), new K-way FC
layer, only the FC trained: SGD momentum 0.9, weight decay 5e-4, one triangular LR cycle 0 -> --lr -> 0, batch
30, 20 epochs, Resize+CenterCrop --image_size (512) without normalisation; the epoch with the best eval
accuracy is saved (see sepce/evaluation/artist_classifier.py). Writes the checkpoint, ``<name>.history.csv`` and
``<name>.json``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from sepce.classes import load_class_map
from sepce.cli import EXIT_HELP, BatchSettings, add_batch_args, add_classes, parser, positive_int, run
from sepce.evaluation.artist_classifier import (
    TrainConfig,
    build_resnet18,
    classifier_checkpoint,
    compute_features,
    train_fc,
    training_sets,
)
from sepce.evaluation.results import write_csv
from sepce.io import save_torch, write_json
from sepce.paths import ARTIST_CLASSIFIER


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = parser(__doc__, EXIT_HELP)
    p.add_argument("--train_dir", type=Path, default=Path("data/train"), help="training class folders 0..K-1")
    p.add_argument("--eval_dir", type=Path, default=Path("data/eval"), help="evaluation class folders 0..K-1")
    p.add_argument(
        "--train_fraction",
        type=float,
        default=0.7,
        help="share of each class used for training when only one of the two folders exists",
    )
    add_classes(p)
    p.add_argument("--output", type=Path, default=ARTIST_CLASSIFIER, help="classifier checkpoint to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint")
    p.add_argument("--epochs", type=positive_int, default=20, help="training epochs")
    p.add_argument("--lr", type=float, default=0.01, help="peak learning rate of the triangular cycle")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    p.add_argument("--weight_decay", type=float, default=5e-4, help="SGD weight decay")
    p.add_argument(
        "--image_size", type=positive_int, default=512, help="Resize+CenterCrop size for training and testing"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the split, FC initialisation and shuffling")
    add_batch_args(p, batch_size=30, batch_help="training batch size (also feature extraction)")
    p.add_argument(
        "--backbone_weights",
        type=Path,
        default=None,
        help="ResNet18 ImageNet state dict; None: torchvision's cache file resnet18-f37072fd.pth",
    )
    p.add_argument(
        "--no_pretrained",
        action="store_true",
        help="random backbone instead of ImageNet weights (tests only)",
    )
    args = p.parse_args(argv)
    if not 0.0 < args.train_fraction < 1.0:
        p.error(f"--train_fraction {args.train_fraction} must lie strictly between 0 and 1")
    return args


def main(args: argparse.Namespace) -> Path:
    start = time.time()
    batches = BatchSettings.from_args(args)
    classes = load_class_map(args.classes)
    output = Path(args.output)
    if output.exists() and not args.overwrite:
        raise FileExistsError(f"classifier checkpoint {output} already exists; pass --overwrite to replace it")
    train, held_out, source = training_sets(args.train_dir, args.eval_dir, classes, args.train_fraction, args.seed)

    torch.manual_seed(args.seed)
    model = build_resnet18(len(classes), pretrained=not args.no_pretrained, backbone_weights=args.backbone_weights)
    print(f"data: {source}; {len(train)} training and {len(held_out)} eval images, {len(classes)} classes")
    features = {}
    for split, items in (("train", train), ("eval", held_out)):
        paths = [p for p, _ in items]
        features[split] = compute_features(
            model,
            paths,
            args.image_size,
            batches.batch_size,
            batches.device,
            num_workers=batches.num_workers,
            desc=f"{split} features",
            progress=batches.progress,
        )
    config = TrainConfig(args.epochs, args.batch_size, args.lr, args.momentum, args.weight_decay, args.seed)
    best_state, history = train_fc(
        model.fc,
        features["train"],
        torch.tensor([label for _, label in train]),
        features["eval"],
        torch.tensor([label for _, label in held_out]),
        config,
        batches.progress,
    )
    model.fc.load_state_dict(best_state)
    best = max(history, key=lambda h: (h["eval_accuracy_pct"], -h["epoch"]))
    meta = {
        "best_epoch": best["epoch"],
        "best_eval_accuracy_pct": best["eval_accuracy_pct"],
        "pretrained": not args.no_pretrained,
        "train_images": len(train),
        "eval_images": len(held_out),
        "data": source,
    }
    save_torch(output, classifier_checkpoint(model, classes, args.image_size, meta), overwrite=True)
    stem = output.with_suffix("")
    columns = ["epoch", "lr", "train_loss", "train_accuracy_pct", "eval_accuracy_pct"]
    write_csv(stem.with_name(stem.name + ".history.csv"), history, columns)
    write_json(
        stem.with_name(stem.name + ".json"),
        {"args": vars(args), **meta, "wall_time_s": time.time() - start, "history": history},
    )
    for h in history:
        print(
            f"epoch {h['epoch']:3d}  loss {h['train_loss']:.4f}  train {h['train_accuracy_pct']:.1f}%  "
            f"eval {h['eval_accuracy_pct']:.1f}%"
        )
    print(f"best eval accuracy {best['eval_accuracy_pct']:.2f}% at epoch {best['epoch']}; saved {output}")
    return output


if __name__ == "__main__":
    run(parse_args, main)
