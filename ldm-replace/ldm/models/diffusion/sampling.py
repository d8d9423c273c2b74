"""Samplers for epsilon-prediction diffusion models, as small functions over a model callable.

A *model callable* is ``model_fn(x, t, cond) -> eps``: ``x`` is the current latent (B, C, H, W), ``t`` a
tensor of shape (B,) holding DDPM timesteps (``torch.long`` for DDIM/PLMS, ``torch.float32`` for K-LMS, whose
timesteps are fractional) and ``cond`` whatever the model takes as conditioning.
``LatentDiffusion.apply_model`` is one. Classifier-free guidance is a wrapper around such a callable
(:func:`cfg`), so every sampler works with and without it (the k-diffusion style).

Samplers:

- :func:`ddim_sample` -- DDIM, Song et al. 2021, "Denoising Diffusion Implicit Models", Eq. 12, with the
  CompVis ``DDIMSampler`` arithmetic (uniform timestep discretisation,
  ``alphas_prev[0] = alphas_cumprod[0]``).
- :func:`plms_sample` -- pseudo linear multistep, Liu et al. 2022, "Pseudo Numerical Methods for Diffusion
  Models on Manifolds", as the CompVis ``PLMSSampler`` implements it (pseudo improved Euler first step, then
  2nd/3rd/4th order Adams-Bashforth combinations of the model's epsilons, each plugged into the DDIM update).
- :func:`klms_sample` -- linear multistep in sigma space (Karras et al. 2022, "Elucidating the Design Space of
  Diffusion-Based Generative Models"; k-diffusion's ``sample_lms``), step for step what diffusers'
  ``LMSDiscreteScheduler`` does with its default "linspace" timestep spacing and order 4. This is the sampler
  of the paper's evaluation protocol (100 steps, guidance 7.5).
- :func:`dpmpp_2m_sample` -- DPM-Solver++(2M), Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of
  Diffusion Probabilistic Models", Algorithm 2 (multistep, second order, data prediction), step for step what
  diffusers' ``DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2)`` does with its defaults
  ("linspace" spacing, ``final_sigmas_type="zero"``, ``lower_order_final=True``, midpoint solver type).

Every sampler takes ``start_step``/``stop_after`` so a caller can run only part of the schedule: steps are
numbered ``0..n-1`` from the noisiest, and a call runs steps ``start_step <= i < stop_after``. ESD samples
from x_T "until t" with ``stop_after=t_enc``; img2img starts mid-schedule with ``start_step``. Multistep
samplers (PLMS, K-LMS) restart their history at ``start_step``.

The functions do not switch off autograd; wrap calls in ``torch.no_grad()`` when no gradient is wanted (the
CompVis-style classes in ``ddim.py``/``plms.py`` do).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from tqdm.auto import tqdm

ModelFn = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]
StepCallback = Callable[[Dict[str, Any]], None]

__all__ = [
    "DDIMSchedule",
    "DPMSchedule",
    "KLMSSchedule",
    "cfg",
    "ddim_sample",
    "ddim_schedule",
    "ddim_step",
    "ddim_timesteps",
    "dpm_schedule",
    "dpmpp_2m_sample",
    "klms_init_noise_sigma",
    "klms_initial_latent",
    "klms_sample",
    "klms_schedule",
    "lms_coefficients",
    "make_alphas_cumprod",
    "plms_sample",
]


# ------------------------------------------------------------------------------------------------ schedules
def make_alphas_cumprod(
    num_timesteps: int = 1000,
    linear_start: float = 0.00085,
    linear_end: float = 0.012,
    style: str = "compvis",
) -> torch.Tensor:
    """Cumulative products alpha_bar_t of Stable Diffusion's "linear" (diffusers: "scaled_linear") beta
    schedule.

    betas = linspace(sqrt(linear_start), sqrt(linear_end), T)**2, alpha_bar_t = prod_{s<=t} (1 - beta_s).
    ``style="compvis"`` computes it in float64 and casts to float32, as ``LatentDiffusion.register_schedule``
    does; ``style="diffusers"`` computes it in float32 torch, as diffusers' schedulers do. The two differ by
    round-off (a few 1e-7 relative). Returns a float32 tensor of shape (T,).
    """
    if style == "compvis":
        betas = np.linspace(linear_start**0.5, linear_end**0.5, num_timesteps, dtype=np.float64) ** 2
        return torch.from_numpy(np.cumprod(1.0 - betas, axis=0)).to(torch.float32)
    if style == "diffusers":
        betas = torch.linspace(linear_start**0.5, linear_end**0.5, num_timesteps, dtype=torch.float32) ** 2
        return torch.cumprod(1.0 - betas, dim=0)
    raise ValueError(f"style={style!r}: expected 'compvis' or 'diffusers'")


def ddim_timesteps(num_steps: int, num_ddpm: int = 1000) -> np.ndarray:
    """CompVis "uniform" DDIM discretisation: ``range(0, T, T // S) + 1`` (ascending int64 DDPM timesteps).

    As in CompVis, when S does not divide T the result can hold more than S steps (S=30 gives 31 steps,
    T // S = 33); every sampler here uses ``len(ddim_timesteps(...))`` as its step count. When T // S divides
    T - 1 the last timestep is T, out of range (T = 1000: S = 3, 9, 27, 36, 37, 101-111, 251-333 and every
    S > 500; CompVis fails there with an IndexError): those S are refused, naming the nearest usable ones.
    """
    if not isinstance(num_steps, (int, np.integer)) or not 1 <= num_steps <= num_ddpm:
        raise ValueError(f"num_steps={num_steps!r}: expected an integer in [1, {num_ddpm // 2}] for T={num_ddpm}")
    stride = num_ddpm // num_steps
    timesteps = np.arange(0, num_ddpm, stride, dtype=np.int64) + 1
    if timesteps[-1] >= num_ddpm:
        usable = [s for s in range(1, num_ddpm // 2 + 1) if (num_ddpm - 1) % (num_ddpm // s)]
        nearest = [max(s for s in usable if s < num_steps)] + [s for s in usable if s > num_steps][:1]
        raise ValueError(
            f"num_steps={num_steps}: the uniform DDIM timesteps range(0, {num_ddpm}, {stride}) + 1 end at "
            f"{timesteps[-1]}, outside the T={num_ddpm} DDPM steps; use e.g. {' or '.join(map(str, nearest))}"
        )
    return timesteps


@dataclass(frozen=True)
class DDIMSchedule:
    """Per-step DDIM quantities, indexed like CompVis (index 0 = the LEAST noisy step)."""

    timesteps: np.ndarray  # (n,) int64 DDPM timesteps, ascending
    alphas: torch.Tensor  # (n,) float32 alpha_bar at timesteps
    alphas_prev: torch.Tensor  # (n,) float32 alpha_bar of the next-less-noisy step ([a[0]] + a[ts[:-1]])
    sigmas: torch.Tensor  # (n,) float32 eta * sqrt((1-a_prev)/(1-a) * (1-a/a_prev))
    sqrt_one_minus_alphas: torch.Tensor  # (n,) float32

    def __len__(self) -> int:
        return int(self.timesteps.shape[0])


def ddim_schedule(alphas_cumprod: torch.Tensor, num_steps: int, eta: float = 0.0) -> DDIMSchedule:
    """DDIM sampling parameters (Song et al. 2021, Eq. 16 for sigma), as CompVis
    ``make_ddim_sampling_parameters``.

    sigma_t = eta * sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)) is evaluated in float64 from the
    float32 alphas and then rounded to float32, like CompVis (where numpy promotes it to float64).
    """
    if eta < 0:
        raise ValueError(f"eta={eta!r}: expected a non-negative number")
    a = alphas_cumprod.detach().to("cpu", torch.float32)
    ts = ddim_timesteps(num_steps, int(a.shape[0]))
    alphas = a[ts]
    alphas_prev = torch.cat([a[:1], a[ts[:-1]]])
    a64, p64 = alphas.double(), alphas_prev.double()
    sigmas = (eta * torch.sqrt((1 - p64) / (1 - a64) * (1 - a64 / p64))).to(torch.float32)
    return DDIMSchedule(ts, alphas, alphas_prev, sigmas, torch.sqrt(1.0 - alphas))


@dataclass(frozen=True)
class KLMSSchedule:
    """K-LMS discretisation (diffusers ``LMSDiscreteScheduler``, "linspace" spacing), noisiest first."""

    timesteps: np.ndarray  # (n,) float32, linspace(0, T-1, n) reversed
    sigmas: np.ndarray  # (n+1,) float32, sigma(t) = sqrt((1-a)/a) linearly interpolated in t, then 0

    def __len__(self) -> int:
        return int(self.timesteps.shape[0])


def _train_sigmas(alphas_cumprod: torch.Tensor) -> np.ndarray:
    """sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t) at every DDPM timestep (float32, as diffusers)."""
    a = alphas_cumprod.detach().to("cpu", torch.float32)
    return (((1 - a) / a) ** 0.5).numpy()


def klms_schedule(alphas_cumprod: torch.Tensor, num_steps: int) -> KLMSSchedule:
    """Timesteps and sigmas of the K-LMS sampler, exactly as ``LMSDiscreteScheduler.set_timesteps``."""
    if not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
        raise ValueError(f"num_steps={num_steps!r}: expected a positive integer")
    train_sigmas = _train_sigmas(alphas_cumprod)
    n_train = train_sigmas.shape[0]
    timesteps = np.linspace(0, n_train - 1, num_steps, dtype=np.float32)[::-1].copy()
    sigmas = np.interp(timesteps, np.arange(n_train), train_sigmas)
    sigmas = np.concatenate([sigmas, [0.0]]).astype(np.float32)
    return KLMSSchedule(timesteps, sigmas)


def klms_init_noise_sigma(alphas_cumprod: torch.Tensor) -> float:
    """Standard deviation of the K-LMS initial latent: sigma_max = sigma_{T-1} (diffusers'
    ``init_noise_sigma``)."""
    return float(np.float32(_train_sigmas(alphas_cumprod)[-1]))


def klms_initial_latent(noise: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """The K-LMS start latent ``noise * init_noise_sigma`` (what diffusers' pipelines feed the first step)."""
    return noise * klms_init_noise_sigma(alphas_cumprod)


def lms_coefficients(sigmas: np.ndarray, i: int, order: int) -> List[float]:
    """Linear multistep coefficients for the step sigma_i -> sigma_{i+1}.

    Coefficient j is the integral from sigma_i to sigma_{i+1} of the Lagrange basis polynomial that is 1 at
    sigma_{i-j} and 0 at the other nodes sigma_{i-k}, k < order, k != j (k-diffusion's
    ``linear_multistep_coeff``). Computed exactly with numpy polynomials in float64 (diffusers integrates it
    numerically with scipy).
    """
    if order < 1 or i - order + 1 < 0:
        raise ValueError(f"order={order} needs {order} earlier sigmas, but step i={i} has only {i + 1}")
    nodes = [float(sigmas[i - k]) for k in range(order)]
    coeffs = []
    for j in range(order):
        basis = np.polynomial.Polynomial([1.0])
        for k in range(order):
            if k != j:
                basis = basis * np.polynomial.Polynomial([-nodes[k], 1.0]) / (nodes[j] - nodes[k])
        antiderivative = basis.integ()
        coeffs.append(float(antiderivative(float(sigmas[i + 1])) - antiderivative(float(sigmas[i]))))
    return coeffs


@dataclass(frozen=True)
class DPMSchedule:
    """DPM-Solver discretisation (diffusers' "linspace" spacing), noisiest first: step i goes from
    ``sigmas[i]`` to ``sigmas[i + 1]``; the last sigma is 0 (the step onto the data prediction)."""

    timesteps: np.ndarray  # (n,) int64, round(linspace(0, T-1, n+1))[::-1][:-1]
    sigmas: np.ndarray  # (n+1,) float32 sigma = sqrt((1-a)/a) at the timesteps (interpolated), then 0

    def __len__(self) -> int:
        return int(self.timesteps.shape[0])


def dpm_schedule(alphas_cumprod: torch.Tensor, num_steps: int) -> DPMSchedule:
    """Timesteps and sigmas of :func:`dpmpp_2m_sample`: integer timesteps ``round(linspace(0, T-1, S+1))``
    without the last (0), noisiest first, so the first step starts at t = T-1 from unit-variance noise."""
    n_train = int(alphas_cumprod.shape[0])
    if not isinstance(num_steps, (int, np.integer)) or not 1 <= num_steps <= n_train // 2:
        raise ValueError(f"num_steps={num_steps!r}: expected an integer in 1..{n_train // 2}")
    timesteps = np.linspace(0, n_train - 1, num_steps + 1).round()[::-1][:-1].astype(np.int64)
    sigmas = np.interp(timesteps, np.arange(n_train), _train_sigmas(alphas_cumprod))
    return DPMSchedule(timesteps, np.concatenate([sigmas, [0.0]]).astype(np.float32))


# ------------------------------------------------------------------------------------------------ guidance
def _cat_cond(uncond: Any, cond: Any) -> Any:
    """Concatenate unconditional and conditional conditioning along the batch (tensors, dicts, lists)."""
    if isinstance(cond, dict):
        return {k: _cat_cond(uncond[k], cond[k]) for k in cond}
    if isinstance(cond, (list, tuple)):
        return [_cat_cond(u, c) for u, c in zip(uncond, cond)]
    if uncond.shape[0] == 1 and cond.shape[0] > 1:
        uncond = uncond.expand(cond.shape[0], *uncond.shape[1:])
    if uncond.shape != cond.shape:
        raise ValueError(
            f"unconditional conditioning shape {tuple(uncond.shape)} does not match conditioning "
            f"shape {tuple(cond.shape)} (a batch of 1 is broadcast)"
        )
    return torch.cat([uncond, cond])


def cfg(model_fn: ModelFn, uncond: Any, scale: float) -> ModelFn:
    """Classifier-free guidance (Ho & Salimans 2022): eps = e_u + scale * (e_c - e_u).

    The returned callable evaluates the unconditional and the conditional branch in ONE batched forward
    (``cat([x, x])``, ``cat([t, t])``, ``cat([uncond, cond])``, unconditional half first, as CompVis and
    diffusers). With ``scale == 1`` or ``uncond is None`` it is ``model_fn`` itself (no unconditional half is
    computed).
    """
    if uncond is None or scale == 1.0:
        return model_fn

    def guided(x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        e_u, e_c = model_fn(torch.cat([x, x]), torch.cat([t, t]), _cat_cond(uncond, cond)).chunk(2)
        return e_u + scale * (e_c - e_u)

    return guided


# --------------------------------------------------------------------------------------------------- helpers
def _step_range(start_step: int, stop_after: Optional[int], n: int) -> range:
    stop = n if stop_after is None else stop_after
    if not 0 <= start_step <= stop <= n:
        raise ValueError(
            f"start_step={start_step}, stop_after={stop_after}: expected 0 <= start_step <= stop_after <= {n}"
        )
    return range(start_step, stop)


def _randn_like(x: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    """Standard normal noise shaped like x. Without a generator: the global RNG of x's device in the default
    dtype (CompVis ``noise_like``); with one: drawn on the generator's device in x's dtype (diffusers)."""
    if generator is None:
        return torch.randn(x.shape, device=x.device)
    return torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype).to(x.device)


def _coef(value: Any, x: torch.Tensor) -> torch.Tensor:
    """A float32 coefficient broadcastable against x, as CompVis' ``torch.full((b, 1, 1, 1), value)``."""
    return torch.full((x.shape[0],) + (1,) * (x.ndim - 1), float(value), dtype=torch.float32, device=x.device)


def ddim_step(
    x: torch.Tensor,
    eps: torch.Tensor,
    a_t: Any,
    a_prev: Any,
    sigma_t: Any = 0.0,
    noise: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """One DDIM update (Song et al. 2021, Eq. 12); returns ``(x_prev, pred_x0)``.

    pred_x0 = (x - sqrt(1 - a_t) eps) / sqrt(a_t);
    x_prev = sqrt(a_prev) pred_x0 + sqrt(1 - a_prev - sigma_t^2) eps + sigma_t * noise.
    ``a_t``, ``a_prev``, ``sigma_t`` are scalars (float32 values); arithmetic in float32 as CompVis.
    """
    a_t, a_prev, sigma_t = _coef(a_t, x), _coef(a_prev, x), _coef(sigma_t, x)
    pred_x0 = (x - (1.0 - a_t).sqrt() * eps) / a_t.sqrt()
    dir_xt = (1.0 - a_prev - sigma_t**2).sqrt() * eps
    x_prev = a_prev.sqrt() * pred_x0 + dir_xt
    if noise is not None:
        x_prev = x_prev + sigma_t * noise
    return x_prev, pred_x0


def _timestep(x: torch.Tensor, value: Any, dtype: torch.dtype) -> torch.Tensor:
    return torch.full((x.shape[0],), value, dtype=dtype, device=x.device)


# ------------------------------------------------------------------------------------------------ samplers
def ddim_sample(
    model_fn: ModelFn,
    x: torch.Tensor,
    cond: Any,
    alphas_cumprod: torch.Tensor,
    num_steps: int,
    *,
    eta: float = 0.0,
    generator: Optional[torch.Generator] = None,
    start_step: int = 0,
    stop_after: Optional[int] = None,
    callback: Optional[StepCallback] = None,
    progress: bool = False,
    compvis_rng: bool = False,
) -> torch.Tensor:
    """DDIM sampling (Song et al. 2021, Eq. 12) with the CompVis ``DDIMSampler`` arithmetic.

    Args:
        model_fn: ``(x, t, cond) -> eps``; ``t`` is a long tensor (B,) of DDPM timesteps. Wrap with
            :func:`cfg` for classifier-free guidance.
        x: the latent before step ``start_step`` (x_T when starting from pure noise), (B, C, H, W).
        cond: passed to ``model_fn`` unchanged.
        alphas_cumprod: (T,) alpha_bar of the model's DDPM schedule.
        num_steps: DDIM steps S (CompVis "uniform" discretisation, see :func:`ddim_timesteps`).
        eta: 0 = deterministic DDIM, 1 = DDPM-like ancestral noise.
        generator: source of the eta > 0 noise (default: the global RNG of x's device, like CompVis).
        start_step, stop_after: run steps ``start_step <= i < stop_after`` (i = 0 is the noisiest step); the
            default runs the whole schedule.
        callback: called after every step with ``{"i", "index", "t", "x", "pred_x0"}`` (``index`` is the
            CompVis index ``n - 1 - i``).
        progress: show a tqdm bar.
        compvis_rng: draw (and multiply by sigma = 0) the per-step noise even when eta == 0, consuming the RNG
            exactly as CompVis does, so that later random draws match a CompVis run.

    Returns:
        The latent after the last step run (for a full run: the sample at alpha_bar = alphas_cumprod[0]).
    """
    sched = ddim_schedule(alphas_cumprod, num_steps, eta)
    n = len(sched)
    for i in tqdm(_step_range(start_step, stop_after, n), desc="DDIM", disable=not progress, leave=False):
        index = n - 1 - i
        t = _timestep(x, int(sched.timesteps[index]), torch.long)
        eps = model_fn(x, t, cond)
        sigma = sched.sigmas[index]
        noise = _randn_like(x, generator) if (float(sigma) > 0 or compvis_rng) else None
        x, pred_x0 = ddim_step(x, eps, sched.alphas[index], sched.alphas_prev[index], sigma, noise)
        if callback is not None:
            callback({"i": i, "index": index, "t": int(sched.timesteps[index]), "x": x, "pred_x0": pred_x0})
    return x


def _plms_update(
    x: torch.Tensor, e: torch.Tensor, a_t: Any, a_prev: Any, compvis_rng: bool
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The DDIM update PLMS applies (eta = 0); CompVis draws (and zeroes) noise on each one."""
    noise = _randn_like(x, None) if compvis_rng else None
    return ddim_step(x, e, a_t, a_prev, 0.0, noise)


def plms_sample(
    model_fn: ModelFn,
    x: torch.Tensor,
    cond: Any,
    alphas_cumprod: torch.Tensor,
    num_steps: int,
    *,
    start_step: int = 0,
    stop_after: Optional[int] = None,
    callback: Optional[StepCallback] = None,
    progress: bool = False,
    compvis_rng: bool = False,
) -> torch.Tensor:
    """PLMS sampling (Liu et al. 2022, "Pseudo Numerical Methods for Diffusion Models on Manifolds").

    The CompVis ``PLMSSampler`` arithmetic (eta = 0): with e_t the model's epsilon at the current step and
    old_eps the raw epsilons of up to three previous steps, the DDIM update (:func:`ddim_step`) is
    applied with
      - 1st step: e' = (e_t + e(x_euler, t_next)) / 2 where x_euler is the DDIM step with e_t (pseudo improved
        Euler; a second model call),
      - then Adams-Bashforth: e' = (3 e_t - e_{-1}) / 2, (23 e_t - 16 e_{-1} + 5 e_{-2}) / 12,
        (55 e_t - 59 e_{-1} + 37 e_{-2} - 9 e_{-3}) / 24.
    Arguments as :func:`ddim_sample`; the history restarts at ``start_step``.
    """
    sched = ddim_schedule(alphas_cumprod, num_steps, 0.0)
    n = len(sched)
    old_eps: List[torch.Tensor] = []
    for i in tqdm(_step_range(start_step, stop_after, n), desc="PLMS", disable=not progress, leave=False):
        index = n - 1 - i
        t = _timestep(x, int(sched.timesteps[index]), torch.long)
        a_t, a_prev = sched.alphas[index], sched.alphas_prev[index]
        e_t = model_fn(x, t, cond)
        if not old_eps:
            x_euler, _ = _plms_update(x, e_t, a_t, a_prev, compvis_rng)
            t_next = _timestep(x, int(sched.timesteps[max(index - 1, 0)]), torch.long)
            e_prime = (e_t + model_fn(x_euler, t_next, cond)) / 2
        elif len(old_eps) == 1:
            e_prime = (3 * e_t - old_eps[-1]) / 2
        elif len(old_eps) == 2:
            e_prime = (23 * e_t - 16 * old_eps[-1] + 5 * old_eps[-2]) / 12
        else:
            e_prime = (55 * e_t - 59 * old_eps[-1] + 37 * old_eps[-2] - 9 * old_eps[-3]) / 24
        x, pred_x0 = _plms_update(x, e_prime, a_t, a_prev, compvis_rng)
        old_eps.append(e_t)
        if len(old_eps) >= 4:
            old_eps.pop(0)
        if callback is not None:
            callback({"i": i, "index": index, "t": int(sched.timesteps[index]), "x": x, "pred_x0": pred_x0})
    return x


def klms_sample(
    model_fn: ModelFn,
    x: torch.Tensor,
    cond: Any,
    alphas_cumprod: torch.Tensor,
    num_steps: int,
    *,
    order: int = 4,
    start_step: int = 0,
    stop_after: Optional[int] = None,
    callback: Optional[StepCallback] = None,
    progress: bool = False,
) -> torch.Tensor:
    """K-LMS sampling: linear multistep on the probability-flow ODE dx/dsigma = (x - D(x)) / sigma.

    Karras et al. 2022 (EDM, sigma parameterisation) / k-diffusion ``sample_lms``; step for step what
    diffusers' ``LMSDiscreteScheduler(beta_schedule="scaled_linear")`` does with ``order=4`` and "linspace"
    spacing: timesteps = linspace(0, T-1, S) reversed, sigma interpolated linearly in t, the model sees
    x / sqrt(sigma^2 + 1) at the fractional timestep t (float32 tensor (B,)), D(x) = x - sigma * eps, and
    x_{i+1} = x_i + sum_j c_j d_{i-j} with the :func:`lms_coefficients` c_j.

    ``x`` must already be scaled: start from :func:`klms_initial_latent` (noise * sigma_max). A full run ends
    at sigma = 0 and returns the denoised latent. Other arguments as :func:`ddim_sample`; the callback dict
    holds ``{"i", "t", "sigma", "x", "pred_x0"}``.
    """
    if order < 1:
        raise ValueError(f"order={order!r}: expected a positive integer")
    sched = klms_schedule(alphas_cumprod, num_steps)
    derivatives: List[torch.Tensor] = []
    for i in tqdm(_step_range(start_step, stop_after, len(sched)), desc="K-LMS", disable=not progress, leave=False):
        sigma = torch.tensor(sched.sigmas[i], dtype=torch.float32, device=x.device)  # 0-dim, as in diffusers
        t = _timestep(x, float(sched.timesteps[i]), torch.float32)
        eps = model_fn(x / ((sigma**2 + 1) ** 0.5), t, cond)
        denoised = x - sigma * eps
        derivatives.append((x - denoised) / sigma)
        if len(derivatives) > order:
            derivatives.pop(0)
        coeffs = lms_coefficients(sched.sigmas, i, len(derivatives))
        x = x + sum(c * d for c, d in zip(coeffs, reversed(derivatives)))
        if callback is not None:
            callback({"i": i, "t": float(sched.timesteps[i]), "sigma": float(sigma), "x": x, "pred_x0": denoised})
    return x


def _alpha_sigma_lambda(sigma: float) -> Tuple[float, float, float]:
    """The VP quantities of a k-diffusion sigma: alpha_t = 1 / sqrt(sigma^2 + 1), sigma_t = sigma alpha_t and the
    half log-SNR lambda_t = log(alpha_t / sigma_t) (DPM-Solver's time variable; +inf at sigma = 0)."""
    alpha = 1.0 / float(np.sqrt(sigma * sigma + 1.0))
    sigma_t = sigma * alpha
    return alpha, sigma_t, (float(np.log(alpha) - np.log(sigma_t)) if sigma > 0 else float("inf"))


def dpmpp_2m_sample(
    model_fn: ModelFn,
    x: torch.Tensor,
    cond: Any,
    alphas_cumprod: torch.Tensor,
    num_steps: int,
    *,
    start_step: int = 0,
    stop_after: Optional[int] = None,
    callback: Optional[StepCallback] = None,
    progress: bool = False,
) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): multistep second-order solver of the diffusion ODE in
    data prediction, one model evaluation per step.

    With x0_i = (x_i - sigma_i eps_i) / alpha_i (VP alpha, sigma of :func:`_alpha_sigma_lambda`), lambda the half
    log-SNR and h = lambda_{i+1} - lambda_i, step i is
      x_{i+1} = (sigma_{i+1} / sigma_i) x_i - alpha_{i+1} (e^{-h} - 1) D_i,
    with D_i = x0_i on the first step and on the last one (onto sigma = 0, which returns x0), otherwise
    D_i = x0_i + (x0_i - x0_{i-1}) / (2 r), r = h_{i-1} / h (the midpoint form of the 2nd-order correction).
    ``x`` is the unit-variance start noise at t = T-1 (as DDIM's x_T: no scaling). The model sees integer
    timesteps (long tensor (B,)). Other arguments as :func:`ddim_sample`; the history restarts at ``start_step``;
    the callback dict holds ``{"i", "t", "sigma", "x", "pred_x0"}``.
    """
    sched = dpm_schedule(alphas_cumprod, num_steps)
    n = len(sched)
    previous: Optional[Tuple[torch.Tensor, float]] = None  # (x0 of the last step, its h)
    for i in tqdm(_step_range(start_step, stop_after, n), desc="DPM++2M", disable=not progress, leave=False):
        alpha_s, sigma_s, lambda_s = _alpha_sigma_lambda(float(sched.sigmas[i]))
        alpha_t, sigma_t, lambda_t = _alpha_sigma_lambda(float(sched.sigmas[i + 1]))
        t = int(sched.timesteps[i])
        eps = model_fn(x, _timestep(x, t, torch.long), cond)
        x0 = (x - sigma_s * eps) / alpha_s
        h = lambda_t - lambda_s
        if sigma_t == 0.0:  # the last step (first order): e^{-h} = 0, sigma_t / sigma_s = 0, alpha_t = 1
            x = x0
        else:
            d = x0 if previous is None else x0 + (x0 - previous[0]) * (h / (2.0 * previous[1]))
            x = (sigma_t / sigma_s) * x + (alpha_t * -float(np.expm1(-h))) * d
        previous = (x0, h)
        if callback is not None:
            callback({"i": i, "t": t, "sigma": float(sched.sigmas[i]), "x": x, "pred_x0": x0})
    return x
