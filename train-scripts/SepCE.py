"""Separable Concept Erasure (SepCE): erase several concepts with separable increments, so that any subset can be
erased or restored later (docs/method.md, "SepCE").

    python train-scripts/SepCE.py --lr 1e-2 --scale_factor 1e-4 --reg_beta 3e-5 --devices '0,1'

Each concept c gets ΔW_{c,l} = A_{c,l} (β S_c) on every attn2 to_k/to_v (A zero-initialised, S_c the null-space
basis of the token embeddings of "", the other concepts and ``--preserve`` prompts; see sepce/increments.py).
All concepts train together (shared timestep, one image of ``<data_dir>/<concept>/`` each per iteration) on
Σ_c flag_c (w_c d_c + reg_beta Σ_l mean|A_{c,l}|) / Σ_c flag_c, d_c = mean(r_c(θ+ΣΔW) ⊙ r_c(θ_orig)), w_c
balancing each concept to the first one; concept c stops (flag 0, coefficients snapshotted) once the momentum of
d_c is below its threshold after iteration 10, or at ``--iter_break``. ``--sequential`` trains the concepts one at a
time instead (less memory), and ``--add_to RUN`` trains new concepts into a copy of an existing SepCE run.

Writes ``erasure.safetensors`` (bases + coefficients + metadata), ``args.json``, ``losses.csv``, ``summary.json``,
``loss.png``; ``--save_full`` also writes a full CompVis checkpoint for every non-empty subset of the concepts
(the released script's 7 files for 3 concepts; ``--save_full safetensors`` for .safetensors files). The training
itself is ``sepce/methods/sepce.py``. ``train-scripts/compose_erasure.py`` composes any subset later.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

from sepce.cli import run
from sepce.methods.sepce import RELEASED_CONCEPTS, RELEASED_THRESHOLDS, SEPCE_DEFAULTS, SepCESettings, run_sepce
from sepce.training import finished_message, settings_from_args, training_parser


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = training_parser(__doc__, lr=SEPCE_DEFAULTS["lr"], iterations=SEPCE_DEFAULTS["iterations"], prompt=False)
    p.add_argument(
        "--prompts",
        nargs="+",
        default=list(RELEASED_CONCEPTS),
        help="concepts to erase (images in <data_dir>/<prompt>/); names may not contain '.'",
    )
    p.add_argument(
        "--thresholds",
        nargs="+",
        type=float,
        default=None,
        help="momentum threshold per concept (one value = all); default: the released "
        f"{list(RELEASED_THRESHOLDS)} for the released concepts, else 0",
    )
    p.add_argument(
        "--scale_factor",
        type=float,
        default=SEPCE_DEFAULTS["scale_factor"],
        help="beta, the scale of the basis in dW = A(beta S)",
    )
    p.add_argument(
        "--reg_beta", type=float, default=SEPCE_DEFAULTS["reg_beta"], help="weight of the coefficient L1 regulariser"
    )
    p.add_argument(
        "--preserve",
        nargs="*",
        default=[],
        help="prompts whose outputs must stay exact under every increment (e.g. a watermark prompt)",
    )
    p.add_argument(
        "--rank_rtol",
        type=float,
        default=None,
        help="relative singular-value tolerance of the null space (default: sigma_max*max(M,D)*eps64)",
    )
    p.add_argument(
        "--sequential",
        action="store_true",
        help="train the concepts one at a time (fresh Adam each, only its increment active)",
    )
    p.add_argument(
        "--add_to",
        type=Path,
        default=None,
        help="existing SepCE run (or record) to extend with --prompts, trained one at a time into a "
        "new run folder; earlier concepts are copied unchanged",
    )
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> dict:
    settings = SepCESettings(
        concepts=tuple(args.prompts),
        thresholds=None if args.thresholds is None else tuple(args.thresholds),
        scale_factor=args.scale_factor,
        reg_beta=args.reg_beta,
        preserve=tuple(args.preserve),
        rank_rtol=args.rank_rtol,
        sequential=args.sequential,
        add_to=args.add_to,
    )
    summary = run_sepce(settings_from_args(args), settings)
    print(finished_message(summary))
    return summary


if __name__ == "__main__":
    run(parse_args, main)
