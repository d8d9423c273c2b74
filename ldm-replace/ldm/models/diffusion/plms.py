"""CompVis-compatible PLMS sampler.

Liu et al. 2022, "Pseudo Numerical Methods for Diffusion Models on Manifolds" (PNDM/PLMS).

``PLMSSampler(model).sample(...)`` keeps the CompVis entry point and return value; the arithmetic is
:func:`ldm.models.diffusion.sampling.plms_sample`. PLMS is deterministic: ``eta`` must be 0.
"""

from __future__ import annotations

from ldm.models.diffusion.ddim import _CompVisSampler
from ldm.models.diffusion.sampling import plms_sample


class PLMSSampler(_CompVisSampler):
    """CompVis ``PLMSSampler``: ``make_schedule`` (``ddim_eta != 0`` raises ``ValueError``, as CompVis) and
    ``sample`` (signature of ``DDIMSampler.sample``)."""

    name = "PLMS"
    sample_fn = staticmethod(plms_sample)
    deterministic = True


__all__ = ["PLMSSampler"]
