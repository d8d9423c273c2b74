"""Per-class LPIPS and FID between the original model's and an edited model's images (seed README).

    python eval-scripts/lpips_eval.py --original_path './evaluation_folder/default' \\
        --edited_path './evaluation_folder/eval' --prompts_path './data/evaluate.csv'

Pairs files with the same name (``<case_number>_<k>.png``) in the two folders, whether flat or sorted into
class folders, and groups them by the prompt CSV's ``class`` column. LPIPS: AlexNet trunk, v0.1 calibration,
64 px, [-1, 1] (mean and std per class). FID: pytorch-fid's FID Inception (2048-d pool3 features, its resize to
299 px and scaling) on the paired images of each class read as pytorch-fid reads them, so the statistics equal
pytorch-fid's (see sepce/evaluation/fid.py). Unpaired files are
skipped with a counted warning. Results go to ``<edited_path>/results/lpips.csv|json`` and ``fid.csv|json``;
unchanged inputs reuse them, changed inputs need ``--overwrite``. Weights come from the torch hub cache or
``--backbone_weights`` (AlexNet, ImageNet) / ``--fid_weights`` (pytorch-fid's pt_inception-2015-12-05-6726825d.pth);
nothing is downloaded.
"""

from __future__ import annotations

import argparse
import functools
import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from sepce.classes import load_class_map
from sepce.cli import EXIT_HELP, BatchSettings, add_batch_args, add_classes, add_prompts_path, parser, positive_int, run
from sepce.evaluation.common import file_signature
from sepce.evaluation.compare import CompareSettings, compare_folders
from sepce.evaluation.fid import (
    FID_INCEPTION_NETWORK,
    INCEPTION_IMAGE_SIZE,
    MIN_INCEPTION_IMAGE_SIZE,
    inception_extractor,
)
from sepce.evaluation.images import pair_images
from sepce.evaluation.lpips_metric import LPIPS_IMAGE_SIZE, build_lpips
from sepce.evaluation.weights import ALEXNET, FID_INCEPTION, MissingWeightsError, resolve_weights
from sepce.paths import EVALUATE_CSV, EVALUATION_DIR
from sepce.prompt_csv import case_classes, read_prompt_csv

log = logging.getLogger("lpips_eval")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = parser(__doc__, EXIT_HELP)
    p.add_argument(
        "--original_path",
        type=Path,
        default=EVALUATION_DIR / "default",
        help="images of the original model",
    )
    p.add_argument(
        "--edited_path",
        type=Path,
        default=EVALUATION_DIR / "eval",
        help="images of the edited (erased) model; results are written to its results/ folder",
    )
    add_prompts_path(p, default=EVALUATE_CSV)
    add_classes(p)
    p.add_argument(
        "--metrics", nargs="+", choices=["lpips", "fid"], default=["lpips", "fid"], help="metrics to compute"
    )
    add_batch_args(p, batch_size=50, workers=False)
    p.add_argument("--lpips_size", type=positive_int, default=LPIPS_IMAGE_SIZE, help="LPIPS image size (paper: 64)")
    p.add_argument(
        "--fid_size",
        type=int,
        default=INCEPTION_IMAGE_SIZE,
        help="image size fed to Inception for FID (299 as pytorch-fid; other sizes, >= 75, only for tests)",
    )
    p.add_argument(
        "--backbone_weights",
        type=Path,
        default=None,
        help="AlexNet ImageNet state dict for LPIPS; None: torchvision's cache file alexnet-owt-7be5be79.pth",
    )
    p.add_argument(
        "--fid_weights",
        type=Path,
        default=None,
        help="pytorch-fid FID Inception state dict; None: the torch hub cache file pt_inception-2015-12-05-*.pth",
    )
    p.add_argument(
        "--no_pretrained",
        action="store_true",
        help="random AlexNet/Inception weights instead of ImageNet ones (tests only)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace results made from other inputs")
    args = p.parse_args(argv)
    if args.fid_size < MIN_INCEPTION_IMAGE_SIZE:
        p.error(f"--fid_size {args.fid_size} must be >= {MIN_INCEPTION_IMAGE_SIZE} (Inception-v3's smallest input)")
    return args


def main(args: argparse.Namespace) -> Dict[str, List[dict]]:
    batches = BatchSettings.from_args(args)
    classes = load_class_map(args.classes)
    case_to_class = case_classes(read_prompt_csv(args.prompts_path, classes, require_class=True))
    report = pair_images(args.original_path, args.edited_path, case_to_class)
    for line in report.warnings():
        log.warning(line)

    settings = {"pretrained": not args.no_pretrained}
    lpips_weights = fid_weights = None
    if not args.no_pretrained:  # find every weights file before any network is built
        if "lpips" in args.metrics:
            lpips_weights = resolve_weights(ALEXNET, args.backbone_weights, "--backbone_weights")
            settings["lpips_backbone"] = file_signature([lpips_weights])[0]
        if "fid" in args.metrics:
            try:
                fid_weights = resolve_weights(FID_INCEPTION, args.fid_weights, "--fid_weights")
            except MissingWeightsError as error:
                raise MissingWeightsError(f"{error}; or skip FID with --metrics lpips") from None
            settings["fid_network"] = file_signature([fid_weights])[0]
    if "fid" in args.metrics:
        settings["fid_size"] = args.fid_size
    compare = CompareSettings(
        metrics=tuple(args.metrics),
        lpips_factory=functools.partial(build_lpips, not args.no_pretrained, lpips_weights),
        fid_factory=functools.partial(inception_extractor, not args.no_pretrained, fid_weights, args.fid_size),
        fid_network=FID_INCEPTION_NETWORK,
        info=settings,
        batch_size=batches.batch_size,
        lpips_image_size=args.lpips_size,
        overwrite=args.overwrite,
        progress=batches.progress,
    )
    results = compare_folders(
        args.original_path, args.edited_path, case_to_class, classes, batches.device, compare, pairs=report
    )
    print(f"{args.edited_path} vs {args.original_path}: {report.num_pairs} image pairs")
    lpips_by_name = {row["name"]: row for row in results.get("lpips", [])}
    fid_by_name = {row["name"]: row for row in results.get("fid", [])}
    print(f"  {'class':<20s} {'pairs':>6s} {'LPIPS':>8s} {'±':>7s} {'FID':>9s}")
    for name in [c.name for c in classes] + ["overall"]:
        lp, fd = lpips_by_name.get(name, {}), fid_by_name.get(name, {})
        pairs = lp.get("pairs", fd.get("original", ""))
        print(
            f"  {name:<20s} {pairs!s:>6s} {_fmt(lp.get('lpips'), 4):>8s} {_fmt(lp.get('lpips_std'), 4):>7s} "
            f"{_fmt(fd.get('fid'), 2):>9s}"
        )
    return results


def _fmt(value, digits: int) -> str:
    return "–" if value is None or value != value else f"{value:.{digits}f}"


if __name__ == "__main__":
    run(parse_args, main)
