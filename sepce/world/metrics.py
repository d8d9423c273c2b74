"""One model's world-benchmark metrics as a pipeline step (``world-benchmark.py`` plans one per model, run beside
the other models' generation): style accuracy, CRA predictions, quality against renders and, for an erased
model, feature distance and FID against the original, stored in the folder's ``results/``
(:class:`sepce.world.benchmark.Metrics`). The final metrics step reads them back.

    python -m sepce.world.metrics --work_dir outputs/world-benchmark-short --folder CiE-waves-seed0
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

from sepce.cli import EXIT_HELP, add_quiet, parser, run, show_progress
from sepce.world.benchmark import Metrics, benchmark_layout
from sepce.world.concept_classifier import SHIPPED_CLASSIFIER
from sepce.world.model import SHIPPED_CKPT, SHIPPED_CONFIG


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = parser(__doc__, EXIT_HELP)
    p.add_argument("--work_dir", type=Path, required=True, help="the benchmark's output root")
    p.add_argument("--folder", required=True, help="the model's images folder under <work_dir>/images/")
    p.add_argument("--original", action="store_true", help="the folder is the original model's")
    p.add_argument("--ckpt_path", type=Path, default=SHIPPED_CKPT, help="the world model (original)")
    p.add_argument("--config_path", type=Path, default=SHIPPED_CONFIG, help="its config")
    p.add_argument("--classifier", type=Path, default=SHIPPED_CLASSIFIER, help="the world classifier")
    add_quiet(p)
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> dict:
    lay = benchmark_layout(args.work_dir, args.ckpt_path, args.config_path, args.classifier)
    for path, what in ((lay.eval_dir / args.folder, "--folder"), (lay.classifier, "--classifier")):
        if not path.exists():
            raise FileNotFoundError(f"{what} {path} does not exist")
    return Metrics(lay, show_progress(args.quiet)).of(args.folder, args.original)


if __name__ == "__main__":
    run(parse_args, main)
