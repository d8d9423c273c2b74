"""CompVis-compatible PLMS sampler.

Liu et al. 2022, "Pseudo Numerical Methods for Diffusion Models on Manifolds" (PNDM/PLMS).

``PLMSSampler(model).sample(...)`` keeps the CompVis entry point and return value; the arithmetic is
:func:`ldm.models.diffusion.sampling.plms_sample`. PLMS is deterministic: ``eta`` must be 0.
"""

from __future__ import annotations

from typing import Any

from ldm.models.diffusion.ddim import _CompVisSampler
from ldm.models.diffusion.sampling import plms_sample


class PLMSSampler(_CompVisSampler):
    """CompVis ``PLMSSampler``: ``make_schedule`` and ``sample`` (signature of ``DDIMSampler.sample``)."""

    name = "PLMS"

    def make_schedule(
        self,
        ddim_num_steps: int,
        ddim_discretize: str = "uniform",
        ddim_eta: float = 0.0,
        verbose: bool = True,
    ) -> None:
        """As ``DDIMSampler.make_schedule``; raises ``ValueError`` for ``ddim_eta != 0`` (as CompVis)."""
        if ddim_eta != 0:
            raise ValueError(f"ddim_eta={ddim_eta!r}: ddim_eta must be 0 for PLMS")
        super().make_schedule(ddim_num_steps, ddim_discretize=ddim_discretize, ddim_eta=ddim_eta, verbose=verbose)

    def _run(
        self,
        model_fn: Any,
        x: Any,
        cond: Any,
        start_step: int,
        stop_after: Any,
        callback: Any,
        progress: bool,
    ):
        return plms_sample(
            model_fn,
            x,
            cond,
            self.model.alphas_cumprod,
            self._num_steps,
            start_step=start_step,
            stop_after=stop_after,
            callback=callback,
            progress=progress,
            compvis_rng=True,
        )


__all__ = ["PLMSSampler"]
