"""Concept-irrelevant Erasure (CiE): erase one concept by decorrelating the cross-attention's concept
representation from the original's (docs/method.md, "CiE").

    python train-scripts/CiE.py --threshold 0 --lr 1e-6 --reg_beta 3e-5 --prompt 'Van Gogh' --devices '0,1'

Trains every UNet ``attn2`` tensor with Adam on loss = mean(r(θ) ⊙ r(θ_orig)) + reg_beta · Σ_j Σ|θ_j − θ_j^orig| / J,
r(m) = ε(m, x_t, t, emb(prompt)) − ε(m, x_t, t, emb("")), one image of ``<data_dir>/<prompt>/`` per iteration;
stops once the momentum of the direction term (m_i = 0.9 m_{i−1} + 0.1 d_i) falls below ``--threshold`` after
iteration 10, or at ``--iterations``. Writes ``<output_dir>/erasure.safetensors`` (the changed attn2 tensors),
``args.json``, ``losses.csv``, ``summary.json``, ``loss.png`` and, with ``--save_full``, a full CompVis checkpoint
``CiE-<prompt>.ckpt`` (or ``.safetensors``). The default run folder is ``models/CiE-<prompt>`` in the repository.
"""

from __future__ import annotations

import argparse
import math
from typing import Optional, Sequence

from sepce.cli import run
from sepce.losses import MomentumStop, cie_objective
from sepce.training import TrainingSession, TrainStep, finished_message, select_parameters, training_parser


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = training_parser(__doc__, lr=1e-6, iterations=1000)
    p.add_argument(
        "--threshold",
        type=float,
        default=0.0,
        help="stop once the momentum of the direction term is below this (after iteration 10)",
    )
    p.add_argument("--reg_beta", type=float, default=3e-5, help="weight of the L1 drift regulariser")
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> dict:
    if not math.isfinite(args.threshold):
        raise ValueError(f"--threshold {args.threshold!r}: expected a finite number")
    if not (math.isfinite(args.reg_beta) and args.reg_beta >= 0):
        raise ValueError(f"--reg_beta {args.reg_beta!r}: expected a finite number >= 0")
    session = TrainingSession.from_args(args, "CiE", [args.prompt])
    model = session.load_model()
    params = select_parameters(model, "attn2")
    reference = session.frozen_reference(model, params)
    cond = model.get_learned_conditioning([args.prompt, ""]).detach()  # 2 77 D: concept, blank
    session.start_run()
    stopper = MomentumStop(args.threshold, args.iterations)

    def step(i: int) -> TrainStep:
        _, t = session.timesteps()
        x = session.noisy(session.latent(args.prompt), t)  # 1 4 h w
        loss, d, reg = cie_objective(model, reference, x, t, cond, params, reference.originals, args.reg_beta)
        stop = stopper.update(d.item())
        return TrainStep(loss, {"direction": d.item(), "reg": reg.item(), "momentum": stopper.momentum}, stop)

    result = session.fit(params, step, desc=f"CiE {args.prompt}")
    concept = {"iterations": result.iterations, "stop_reason": result.stop_reason, "final_momentum": stopper.momentum}
    summary = session.finish(
        result,
        session.tensor_record(params),
        reference=reference.kind,
        concepts={args.prompt: concept},
        settings={"prompt": args.prompt, "threshold": args.threshold, "reg_beta": args.reg_beta},
    )
    print(finished_message(summary))
    return summary


if __name__ == "__main__":
    run(parse_args, main)
