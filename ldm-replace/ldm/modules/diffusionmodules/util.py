"""Building blocks shared by the UNet and DDPM: schedules, timestep embeddings, layer factories, checkpointing."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

#: The forward-process buffers ``DDPM.register_schedule`` derives from the config (Ho et al. 2020, Eq. 4, 6-7).
#: Checkpoints carry them, but they are recomputed, so the loader lets them be absent and exports may drop them.
SCHEDULE_BUFFERS = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)


def make_beta_schedule(
    schedule: str,
    n_timestep: int,
    linear_start: float = 1e-4,
    linear_end: float = 2e-2,
    cosine_s: float = 8e-3,
) -> np.ndarray:
    """DDPM beta schedules in float64; SD v1 uses ``linear``: betas = linspace(√start, √end, T)²."""
    if schedule == "linear":
        betas = torch.linspace(linear_start**0.5, linear_end**0.5, n_timestep, dtype=torch.float64, device="cpu") ** 2
    elif schedule == "cosine":
        steps = torch.arange(n_timestep + 1, dtype=torch.float64, device="cpu") / n_timestep + cosine_s
        alphas = torch.cos(steps / (1 + cosine_s) * math.pi / 2).pow(2)
        alphas = alphas / alphas[0]
        betas = (1 - alphas[1:] / alphas[:-1]).clamp(0, 0.999)
    elif schedule == "sqrt_linear":
        betas = torch.linspace(linear_start, linear_end, n_timestep, dtype=torch.float64, device="cpu")
    elif schedule == "sqrt":
        betas = torch.linspace(linear_start, linear_end, n_timestep, dtype=torch.float64, device="cpu") ** 0.5
    else:
        raise ValueError(f"unknown beta schedule {schedule!r}; expected linear, cosine, sqrt_linear or sqrt")
    return betas.numpy()


def extract_into_tensor(a: torch.Tensor, t: torch.Tensor, x_shape) -> torch.Tensor:
    """Gather ``a[t]`` and reshape to broadcast over a batch of shape ``x_shape``."""
    out = a.gather(-1, t.to(a.device).long())
    return out.reshape(t.shape[0], *((1,) * (len(x_shape) - 1)))


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
    """Sinusoidal timestep embedding [cos | sin] (DDPM / Transformer positional encoding); ``timesteps`` may be
    fractional. Returns (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps[:, None].float() * freqs[None]  # B x half
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


def zero_module(module: nn.Module) -> nn.Module:
    """Zero the parameters of ``module`` and return it."""
    for p in module.parameters():
        p.detach().zero_()
    return module


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 whatever the input and parameter dtypes (as CompVis does; its parameters may
    be 16-bit when the whole UNet is, for 16-bit generation).

    ``cuda_16bit_native`` (off; an experiment of bench/gpu_check.py): a 16-bit input on CUDA with weights of its
    dtype, outside autocast, goes to the native kernel, which also accumulates in float32 and rounds once, without
    float32 copies of the activations (a candidate cause of the fp16 gap to diffusers, docs/gpu/)."""

    cuda_16bit_native = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            self.cuda_16bit_native
            and x.is_cuda
            and x.dtype in (torch.float16, torch.bfloat16)
            and self.weight is not None
            and self.weight.dtype == x.dtype
            and not torch.is_autocast_enabled()
        ):
            return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        w, b = (None if p is None else p.float() for p in (self.weight, self.bias))
        return F.group_norm(x.float(), self.num_groups, w, b, self.eps).type(x.dtype)


def normalization(channels: int) -> nn.Module:
    return GroupNorm32(32, channels)


def conv_nd(dims: int, *args, **kwargs) -> nn.Module:
    return {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims](*args, **kwargs)


def avg_pool_nd(dims: int, *args, **kwargs) -> nn.Module:
    return {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}[dims](*args, **kwargs)


def linear(*args, **kwargs) -> nn.Linear:
    return nn.Linear(*args, **kwargs)


def checkpoint(func, inputs, flag: bool):
    """Gradient checkpointing (recompute ``func(*inputs)`` in backward) when ``flag`` and grads are on.

    Uses ``torch.utils.checkpoint`` without re-entrance, so gradients reach every parameter the function uses,
    including ones attached at run time (separable increments) — unlike CompVis' own CheckpointFunction.
    """
    if flag and torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(func, *inputs, use_reentrant=False)
    return func(*inputs)
