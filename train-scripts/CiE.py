"""Concept-irrelevant Erasure (CiE): erase one concept by decorrelating the cross-attention's concept
representation from the original's (docs/method.md, "CiE").

    python train-scripts/CiE.py --threshold 0 --lr 1e-6 --reg_beta 3e-5 --prompt 'Van Gogh' --devices '0,1'

Trains every UNet ``attn2`` tensor with Adam on loss = mean(r(θ) ⊙ r(θ_orig)) + reg_beta · Σ_j Σ|θ_j − θ_j^orig| / J,
r(m) = ε(m, x_t, t, emb(prompt)) − ε(m, x_t, t, emb("")), one image of ``<data_dir>/<prompt>/`` per iteration;
stops once the momentum of the direction term (m_i = 0.9 m_{i−1} + 0.1 d_i) falls below ``--threshold`` after
iteration 10, or at ``--iterations``. Writes ``<output_dir>/erasure.safetensors`` (the changed attn2 tensors),
``args.json``, ``losses.csv``, ``summary.json``, ``loss.png`` and, with ``--save_full``, a full CompVis checkpoint
``CiE-<prompt>.ckpt`` (or ``.safetensors``). The default run folder is ``models/CiE-<prompt>`` in the repository.
The method itself is ``sepce/methods/cie.py``.
"""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

from sepce.cli import run
from sepce.methods.cie import CIE_DEFAULTS, CiESettings, run_cie
from sepce.training import finished_message, settings_from_args, training_parser


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = training_parser(__doc__, lr=CIE_DEFAULTS["lr"], iterations=CIE_DEFAULTS["iterations"])
    p.add_argument(
        "--threshold",
        type=float,
        default=CIE_DEFAULTS["threshold"],
        help="stop once the momentum of the direction term is below this (after iteration 10)",
    )
    p.add_argument(
        "--reg_beta", type=float, default=CIE_DEFAULTS["reg_beta"], help="weight of the L1 drift regulariser"
    )
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> dict:
    settings = CiESettings(prompt=args.prompt, threshold=args.threshold, reg_beta=args.reg_beta)
    summary = run_cie(settings_from_args(args), settings)
    print(finished_message(summary))
    return summary


if __name__ == "__main__":
    run(parse_args, main)
