"""Train the style classifier of the evaluation protocol (seed README step 2).

    python train-scripts/artist-cls-train.py --device 'cuda:0'

Images come from class folders ``--train_dir/<index>`` and ``--eval_dir/<index>`` (indices of
``data/classes.csv``; default ``./data/train`` and ``./data/eval``). With both folders present the first
trains and the second evaluates; with only one, each class of it is split ``--train_fraction`` / rest with
``--seed``. ResNet18 with ImageNet weights (torchvision's cache, or ``--backbone_weights``), new K-way FC
layer, only the FC trained: SGD momentum 0.9, weight decay 5e-4, one triangular LR cycle 0 -> --lr -> 0, batch
30, 20 epochs, Resize+CenterCrop --image_size (512) without normalisation; the epoch with the best eval
accuracy is saved (see sepce/evaluation/classifier.py). Writes the checkpoint, ``<name>.history.csv`` and
``<name>.json``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from sepce.classes import DEFAULT_CLASS_MAP, load_class_map
from sepce.evaluation.classifier import (
    TrainConfig,
    build_resnet18,
    classifier_checkpoint,
    compute_features,
    train_fc,
    training_sets,
)
from sepce.evaluation.common import default_device, resolve_device, run_script
from sepce.evaluation.results import write_csv
from sepce.io import save_torch, write_json

DEFAULT_CHECKPOINT = Path("models/artist-classifier/resnet18.pt")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--train_dir", type=Path, default=Path("data/train"), help="training class folders 0..K-1")
    parser.add_argument("--eval_dir", type=Path, default=Path("data/eval"), help="evaluation class folders 0..K-1")
    parser.add_argument(
        "--train_fraction",
        type=float,
        default=0.7,
        help="share of each class used for training when only one of the two folders exists",
    )
    parser.add_argument("--classes", type=Path, default=DEFAULT_CLASS_MAP, help="class map CSV (index,name,prompt)")
    parser.add_argument("--output", type=Path, default=DEFAULT_CHECKPOINT, help="classifier checkpoint to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint")
    parser.add_argument("--epochs", type=int, default=20, help="training epochs")
    parser.add_argument("--batch_size", type=int, default=30, help="training batch size (also feature extraction)")
    parser.add_argument("--lr", type=float, default=0.01, help="peak learning rate of the triangular cycle")
    parser.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    parser.add_argument("--weight_decay", type=float, default=5e-4, help="SGD weight decay")
    parser.add_argument("--image_size", type=int, default=512, help="Resize+CenterCrop size for training and testing")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split, FC initialisation and shuffling")
    parser.add_argument("--device", default=default_device(), help="torch device, e.g. cuda:0 or cpu")
    parser.add_argument("--num_workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument(
        "--backbone_weights",
        type=Path,
        default=None,
        help="ResNet18 ImageNet state dict; None: torchvision's cache file resnet18-f37072fd.pth",
    )
    parser.add_argument(
        "--no_pretrained",
        action="store_true",
        help="random backbone instead of ImageNet weights (tests only)",
    )
    args = parser.parse_args(argv)
    for name in ("epochs", "batch_size", "image_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} {getattr(args, name)} must be >= 1")
    if not 0.0 < args.train_fraction < 1.0:
        parser.error(f"--train_fraction {args.train_fraction} must lie strictly between 0 and 1")
    return args


def main(args: argparse.Namespace) -> Path:
    start = time.time()
    classes = load_class_map(args.classes)
    output = Path(args.output)
    if output.exists() and not args.overwrite:
        raise FileExistsError(f"classifier checkpoint {output} already exists; pass --overwrite to replace it")
    train, held_out, source = training_sets(args.train_dir, args.eval_dir, classes, args.train_fraction, args.seed)
    device = resolve_device(args.device)

    torch.manual_seed(args.seed)
    model = build_resnet18(len(classes), pretrained=not args.no_pretrained, backbone_weights=args.backbone_weights)
    print(f"data: {source}; {len(train)} training and {len(held_out)} eval images, {len(classes)} classes")
    features = {}
    for split, items in (("train", train), ("eval", held_out)):
        paths = [p for p, _ in items]
        features[split] = compute_features(
            model, paths, args.image_size, args.batch_size, device, args.num_workers, desc=f"{split} features"
        )
    config = TrainConfig(args.epochs, args.batch_size, args.lr, args.momentum, args.weight_decay, args.seed)
    best_state, history = train_fc(
        model.fc,
        features["train"],
        torch.tensor([label for _, label in train]),
        features["eval"],
        torch.tensor([label for _, label in held_out]),
        config,
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
    run_script(parse_args, main)
