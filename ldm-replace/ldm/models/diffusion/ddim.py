"""CompVis-compatible DDIM sampler (Song et al. 2021, "Denoising Diffusion Implicit Models", Eq. 12).

``DDIMSampler(model).sample(...)`` keeps the CompVis entry point and return value; the arithmetic lives in
:mod:`ldm.models.diffusion.sampling` (this module only adapts arguments, callbacks and logging). The model
needs ``apply_model(x, t, cond)``, ``alphas_cumprod`` and ``num_timesteps``.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from ldm.models.diffusion.sampling import ModelFn, StepCallback, cfg, ddim_sample, ddim_schedule

logger = logging.getLogger(__name__)

# CompVis keyword arguments this stack does not implement, with the value that makes each a no-op.
_NOOP_VALUES = {
    "normals_sequence": None,
    "quantize_x0": False,
    "mask": None,
    "x0": None,
    "temperature": 1.0,
    "noise_dropout": 0.0,
    "score_corrector": None,
    "corrector_kwargs": None,
    "dynamic_threshold": None,
}
# Keywords of modified CompVis samplers (ESD's "till_T"/"t_start") whose meaning differs between forks.
_FORK_KEYWORDS = ("till_T", "t_start")


def model_device(model: Any) -> torch.device:
    """The device of a model: its first parameter or buffer, else its ``alphas_cumprod``, else the CPU."""
    for attr in ("parameters", "buffers"):
        tensors = getattr(model, attr, None)
        if callable(tensors):
            for tensor in tensors():
                return tensor.device
    alphas_cumprod = getattr(model, "alphas_cumprod", None)
    if isinstance(alphas_cumprod, torch.Tensor):
        return alphas_cumprod.device
    return torch.device("cpu")


def _batch_size_of(conditioning: Any) -> Optional[int]:
    while isinstance(conditioning, dict):
        conditioning = conditioning[next(iter(conditioning))]
    while isinstance(conditioning, (list, tuple)):
        conditioning = conditioning[0]
    return conditioning.shape[0] if isinstance(conditioning, torch.Tensor) else None


class _CompVisSampler:
    """The CompVis ``make_schedule``/``sample`` plumbing shared by :class:`DDIMSampler` and ``PLMSSampler``: a
    subclass names the sampling function of :mod:`ldm.models.diffusion.sampling` it runs (``sample_fn``), whether
    only ``eta = 0`` is allowed (``deterministic``) and the function's own keywords (:meth:`_sample_options`)."""

    name = "DDIM"
    sample_fn: Callable[..., torch.Tensor] = staticmethod(ddim_sample)
    deterministic = False

    def __init__(self, model: Any, schedule: str = "linear", **kwargs: Any) -> None:
        self.model = model
        self.ddpm_num_timesteps = model.num_timesteps
        self.schedule = schedule
        self._num_steps: Optional[int] = None
        self._eta = 0.0

    def make_schedule(
        self,
        ddim_num_steps: int,
        ddim_discretize: str = "uniform",
        ddim_eta: float = 0.0,
        verbose: bool = True,
    ) -> None:
        """Compute ``ddim_timesteps`` (numpy int), ``ddim_alphas``, ``ddim_alphas_prev`` (numpy float64, as
        CompVis), ``ddim_sigmas`` and ``ddim_sqrt_one_minus_alphas`` (tensors on the model's device)."""
        if self.deterministic and ddim_eta != 0:
            raise ValueError(f"ddim_eta={ddim_eta!r}: ddim_eta must be 0 for {self.name}")
        if ddim_discretize != "uniform":
            raise NotImplementedError(f"ddim_discretize={ddim_discretize!r}: only 'uniform' is implemented")
        alphas_cumprod = self.model.alphas_cumprod
        if alphas_cumprod.shape[0] != self.ddpm_num_timesteps:
            raise ValueError(
                f"alphas_cumprod has {alphas_cumprod.shape[0]} entries, expected one per timestep "
                f"({self.ddpm_num_timesteps})"
            )
        sched = ddim_schedule(alphas_cumprod, ddim_num_steps, ddim_eta)
        device = model_device(self.model)
        self.ddim_timesteps = sched.timesteps
        self.ddim_alphas = sched.alphas.to(device)
        self.ddim_alphas_prev = sched.alphas_prev.double().numpy()
        self.ddim_sigmas = sched.sigmas.to(device)
        self.ddim_sqrt_one_minus_alphas = sched.sqrt_one_minus_alphas.to(device)
        self._num_steps, self._eta = ddim_num_steps, float(ddim_eta)
        if verbose:
            logger.info("Selected timesteps for %s sampler: %s", self.name, self.ddim_timesteps)

    def _sample_options(self) -> Dict[str, Any]:
        return {}

    def _run(
        self,
        model_fn: ModelFn,
        x: torch.Tensor,
        cond: Any,
        start_step: int,
        stop_after: Optional[int],
        callback: StepCallback,
        progress: bool,
    ) -> torch.Tensor:
        """``sample_fn`` over the steps ``start_step <= i < stop_after`` of the schedule ``make_schedule`` set,
        drawing random numbers as CompVis does."""
        return self.sample_fn(
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
            **self._sample_options(),
        )

    @torch.no_grad()
    def sample(
        self,
        S: int,
        batch_size: int,
        shape: Tuple[int, int, int],
        conditioning: Any = None,
        callback: Optional[Callable[[int], Any]] = None,
        normals_sequence: Any = None,
        img_callback: Optional[Callable[[torch.Tensor, int], Any]] = None,
        quantize_x0: bool = False,
        eta: float = 0.0,
        mask: Optional[torch.Tensor] = None,
        x0: Optional[torch.Tensor] = None,
        temperature: float = 1.0,
        noise_dropout: float = 0.0,
        score_corrector: Any = None,
        corrector_kwargs: Optional[dict] = None,
        verbose: bool = True,
        x_T: Optional[torch.Tensor] = None,
        log_every_t: int = 100,
        unconditional_guidance_scale: float = 1.0,
        unconditional_conditioning: Any = None,
        *,
        start_step: int = 0,
        stop_after: Optional[int] = None,
        **ignored_compvis_kwargs: Any,
    ) -> Tuple[torch.Tensor, Dict[str, List[torch.Tensor]]]:
        """Sample ``batch_size`` latents of ``shape`` (C, H, W) in S steps -> ``(samples, intermediates)``.

        As CompVis: x_T ~ N(0, I) on the model's device when not given; classifier-free guidance when
        ``unconditional_conditioning`` is given and the scale is not 1; ``callback(i)`` and
        ``img_callback(pred_x0, i)`` after every step; ``intermediates = {"x_inter": [...], "pred_x0":
        [...]}`` starting with x_T and then every step whose CompVis index (n - 1 - i) is a multiple of
        ``log_every_t`` or is the first one. ``verbose`` shows a progress bar and logs the schedule.

        Extension: ``start_step``/``stop_after`` run only steps ``start_step <= i < stop_after`` (see
        :mod:`ldm.models.diffusion.sampling`); ESD's "sample until t_enc" is ``stop_after=t_enc``.
        Features CompVis offers but this stack does not (masks, quantisation, temperature, noise dropout,
        score correctors, thresholding) raise ``NotImplementedError`` unless left at their no-op values; other
        unknown keywords are ignored with a warning (CompVis ignores them silently).
        """
        given = {
            "normals_sequence": normals_sequence,
            "quantize_x0": quantize_x0,
            "mask": mask,
            "x0": x0,
            "temperature": temperature,
            "noise_dropout": noise_dropout,
            "score_corrector": score_corrector,
            "corrector_kwargs": corrector_kwargs,
            "dynamic_threshold": ignored_compvis_kwargs.pop("dynamic_threshold", None),
        }
        for key, value in given.items():
            noop = _NOOP_VALUES[key]
            if (value is not None) if noop is None else (value != noop):
                raise NotImplementedError(f"{key}={value!r}: not supported by this sampler (only {noop!r})")
        for key in _FORK_KEYWORDS:
            if ignored_compvis_kwargs.get(key) is not None:
                raise TypeError(f"{key}={ignored_compvis_kwargs[key]!r}: use start_step=/stop_after= instead")
        if ignored_compvis_kwargs:
            logger.warning("%s sampler ignores keyword arguments %s", self.name, sorted(ignored_compvis_kwargs))
        cond_batch = _batch_size_of(conditioning)
        if cond_batch is not None and cond_batch != batch_size:
            logger.warning("Got %d conditionings but batch-size is %d", cond_batch, batch_size)

        self.make_schedule(ddim_num_steps=S, ddim_eta=eta, verbose=verbose)
        size = (batch_size, *shape)
        if verbose:
            logger.info("Data shape for %s sampling is %s, eta %s", self.name, size, eta)
        img = torch.randn(size, device=model_device(self.model)) if x_T is None else x_T

        n = len(self.ddim_timesteps)
        intermediates: Dict[str, List[torch.Tensor]] = {"x_inter": [img], "pred_x0": [img]}

        def on_step(info: Dict[str, Any]) -> None:
            if callback is not None:
                callback(info["i"])
            if img_callback is not None:
                img_callback(info["pred_x0"], info["i"])
            if info["index"] % log_every_t == 0 or info["index"] == n - 1:
                intermediates["x_inter"].append(info["x"])
                intermediates["pred_x0"].append(info["pred_x0"])

        model_fn = cfg(self.model.apply_model, unconditional_conditioning, unconditional_guidance_scale)
        samples = self._run(model_fn, img, conditioning, start_step, stop_after, on_step, verbose)
        return samples, intermediates


class DDIMSampler(_CompVisSampler):
    """CompVis ``DDIMSampler``: ``make_schedule``, ``sample``, ``stochastic_encode``/``decode`` (img2img)."""

    name = "DDIM"

    def _sample_options(self) -> Dict[str, Any]:
        return {"eta": self._eta}

    def _require_schedule(self) -> int:
        if self._num_steps is None:
            raise RuntimeError("call make_schedule(ddim_num_steps, ddim_eta) first")
        return len(self.ddim_timesteps)

    @torch.no_grad()
    def stochastic_encode(
        self,
        x0: torch.Tensor,
        t: torch.Tensor,
        use_original_steps: bool = False,
        noise: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """q(x_t | x_0) = sqrt(a) x0 + sqrt(1 - a) noise, with ``t`` (B,) indexing the DDIM alphas (CompVis
        img2img) or, with ``use_original_steps``, the DDPM alphas."""
        if use_original_steps:
            alphas = self.model.alphas_cumprod.to(x0.device, torch.float32)
        else:
            self._require_schedule()
            alphas = self.ddim_alphas.to(x0.device)
        if noise is None:
            noise = torch.randn_like(x0)
        index = t.to(x0.device, torch.long)
        view = (-1,) + (1,) * (x0.ndim - 1)
        sqrt_a = alphas.sqrt().gather(-1, index).reshape(view)
        sqrt_one_minus_a = (1.0 - alphas).sqrt().gather(-1, index).reshape(view)
        return sqrt_a * x0 + sqrt_one_minus_a * noise

    @torch.no_grad()
    def decode(
        self,
        x_latent: torch.Tensor,
        cond: Any,
        t_start: int,
        unconditional_guidance_scale: float = 1.0,
        unconditional_conditioning: Any = None,
        use_original_steps: bool = False,
        callback: Optional[Callable[[int], Any]] = None,
    ) -> torch.Tensor:
        """Run the last ``t_start`` steps of the ``make_schedule`` schedule from ``x_latent`` (img2img)."""
        if use_original_steps:
            raise NotImplementedError("use_original_steps=True: only DDIM steps are supported")
        n = self._require_schedule()
        if not 0 <= t_start <= n:
            raise ValueError(f"t_start={t_start!r}: expected 0 <= t_start <= {n}")
        model_fn = cfg(self.model.apply_model, unconditional_conditioning, unconditional_guidance_scale)
        on_step = None if callback is None else (lambda info: callback(info["i"] - (n - t_start)))
        return self._run(model_fn, x_latent, cond, n - t_start, None, on_step, True)


__all__ = ["DDIMSampler", "model_device"]
