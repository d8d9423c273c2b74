"""DDPM and LatentDiffusion (CompVis ``ldm.models.diffusion.ddpm``) as plain ``nn.Module``s.

Only what inference, fine-tuning and concept erasure need: the CompVis schedule buffers, ``q_sample``
(Ho et al. 2020, Eq. 4), ``apply_model`` (ε_θ), ``p_losses`` (the simple loss, Eq. 14 of Ho et al. / Eq. 2 of
Rombach et al. 2022), first-stage encode/decode with ``scale_factor``, text conditioning. Training loops live in
the scripts, not here (no Lightning).
"""

from __future__ import annotations

from functools import partial
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from ldm.checkpoint import load_weights
from ldm.modules.diffusionmodules.util import SCHEDULE_BUFFERS, extract_into_tensor, make_beta_schedule
from ldm.modules.distributions.distributions import DiagonalGaussianDistribution
from ldm.modules.ema import LitEma
from ldm.util import default, instantiate_from_config


class DiffusionWrapper(nn.Module):
    """Holds the UNet as ``diffusion_model`` (checkpoint prefix ``model.diffusion_model.``)."""

    def __init__(self, diff_model_config: Mapping[str, Any], conditioning_key: Optional[str]):
        super().__init__()
        if conditioning_key not in (None, "crossattn"):
            raise ValueError(f"conditioning_key {conditioning_key!r} is not supported; SD v1 uses 'crossattn'")
        self.diffusion_model = instantiate_from_config(diff_model_config)
        self.conditioning_key = conditioning_key

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        c_concat: Optional[list] = None,
        c_crossattn: Optional[list] = None,
    ) -> torch.Tensor:
        if self.conditioning_key is None:
            return self.diffusion_model(x, t)
        return self.diffusion_model(x, t, context=torch.cat(c_crossattn, 1))


class DDPM(nn.Module):
    """Denoising diffusion in pixel/latent space with the CompVis noise schedule and ε-parameterisation.

    ``ckpt_path`` (CompVis ``init_from_ckpt``) loads weights at construction through the one strict loader,
    :func:`ldm.checkpoint.load_weights`: a file that does not match the model fails with a one-line error instead of
    loading partially. ``ignore_keys`` are key prefixes skipped on both sides (those tensors keep their initial
    values); with ``load_only_unet`` the file holds ``self.model``'s keys (``diffusion_model.*``). SD configs load
    weights through :func:`ldm.checkpoint.load_model_from_config` instead and leave ``ckpt_path`` unset.
    """

    def __init__(
        self,
        unet_config: Mapping[str, Any],
        timesteps: int = 1000,
        beta_schedule: str = "linear",
        loss_type: str = "l2",
        ckpt_path: Optional[str] = None,
        ignore_keys: Sequence[str] = (),
        load_only_unet: bool = False,
        monitor: str = "val/loss",
        use_ema: bool = True,
        first_stage_key: str = "image",
        image_size: int = 256,
        channels: int = 3,
        log_every_t: int = 100,
        clip_denoised: bool = True,
        linear_start: float = 1e-4,
        linear_end: float = 2e-2,
        cosine_s: float = 8e-3,
        given_betas=None,
        original_elbo_weight: float = 0.0,
        v_posterior: float = 0.0,
        l_simple_weight: float = 1.0,
        conditioning_key: Optional[str] = None,
        parameterization: str = "eps",
        scheduler_config: Optional[Mapping[str, Any]] = None,
        use_positional_encodings: bool = False,
        learn_logvar: bool = False,
        logvar_init: float = 0.0,
    ):
        super().__init__()
        if parameterization != "eps":
            raise ValueError(f"parameterization {parameterization!r} is not supported; SD v1 predicts 'eps'")
        if loss_type not in ("l1", "l2"):
            raise ValueError(f"loss_type {loss_type!r} is not supported; expected 'l1' or 'l2'")
        self.parameterization = parameterization
        self.cond_stage_model = None
        self.clip_denoised = clip_denoised
        self.log_every_t = log_every_t
        self.first_stage_key = first_stage_key
        self.image_size = image_size
        self.channels = channels
        self.model = DiffusionWrapper(unet_config, conditioning_key)
        self.use_ema = use_ema
        if use_ema:
            self.model_ema = LitEma(self.model)
        self.scheduler_config = scheduler_config
        self.v_posterior = v_posterior
        self.original_elbo_weight = original_elbo_weight
        self.l_simple_weight = l_simple_weight
        self.monitor = monitor
        self.loss_type = loss_type
        self.register_schedule(
            given_betas=given_betas,
            beta_schedule=beta_schedule,
            timesteps=timesteps,
            linear_start=linear_start,
            linear_end=linear_end,
            cosine_s=cosine_s,
        )
        self.learn_logvar = learn_logvar
        logvar = torch.full((self.num_timesteps,), fill_value=logvar_init, device="cpu")
        if learn_logvar:
            self.logvar = nn.Parameter(logvar)
        else:
            self.register_buffer("logvar", logvar, persistent=False)
        if ckpt_path is not None:
            load_weights(self.model if load_only_unet else self, ckpt_path, ignore_keys)

    def register_schedule(
        self,
        given_betas=None,
        beta_schedule: str = "linear",
        timesteps: int = 1000,
        linear_start: float = 1e-4,
        linear_end: float = 2e-2,
        cosine_s: float = 8e-3,
    ) -> None:
        """The forward-process buffers (Ho et al. 2020 Eq. 4, 6–7), computed in float64 and stored in float32."""
        if given_betas is not None:
            betas = np.asarray(given_betas, dtype=np.float64)
        else:
            betas = make_beta_schedule(beta_schedule, timesteps, linear_start, linear_end, cosine_s)
        alphas = 1.0 - betas
        alphas_cumprod = np.cumprod(alphas, axis=0)
        alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
        self.num_timesteps = int(betas.shape[0])
        self.linear_start, self.linear_end = linear_start, linear_end
        posterior_variance = (1 - self.v_posterior) * betas * (1.0 - alphas_cumprod_prev) / (
            1.0 - alphas_cumprod
        ) + self.v_posterior * betas
        values = {
            "betas": betas,
            "alphas_cumprod": alphas_cumprod,
            "alphas_cumprod_prev": alphas_cumprod_prev,
            "sqrt_alphas_cumprod": np.sqrt(alphas_cumprod),
            "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - alphas_cumprod),
            "log_one_minus_alphas_cumprod": np.log(1.0 - alphas_cumprod),
            "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / alphas_cumprod),
            "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / alphas_cumprod - 1),
            "posterior_variance": posterior_variance,
            "posterior_log_variance_clipped": np.log(np.maximum(posterior_variance, 1e-20)),
            "posterior_mean_coef1": betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod),
            "posterior_mean_coef2": (1.0 - alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - alphas_cumprod),
        }
        # Explicitly on the CPU: derived from the config, so real even when the model is built on "meta".
        to_torch = partial(torch.tensor, dtype=torch.float32, device="cpu")
        for name in SCHEDULE_BUFFERS:
            self.register_buffer(name, to_torch(values[name]))
        with np.errstate(divide="ignore"):  # posterior_variance[0] == 0; entry 0 is replaced below
            lvlb = betas**2 / (2 * posterior_variance * alphas * (1 - alphas_cumprod))
        lvlb[0] = lvlb[1]
        self.register_buffer("lvlb_weights", to_torch(lvlb), persistent=False)

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε (Ho et al. 2020, Eq. 4)."""
        noise = default(noise, lambda: torch.randn_like(x_start))
        return (
            extract_into_tensor(self.sqrt_alphas_cumprod, t, x_start.shape) * x_start
            + extract_into_tensor(self.sqrt_one_minus_alphas_cumprod, t, x_start.shape) * noise
        )

    def predict_start_from_noise(self, x_t: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return (
            extract_into_tensor(self.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t
            - extract_into_tensor(self.sqrt_recipm1_alphas_cumprod, t, x_t.shape) * noise
        )

    def get_loss(self, pred: torch.Tensor, target: torch.Tensor, mean: bool = True) -> torch.Tensor:
        if self.loss_type == "l1":
            loss = (target - pred).abs()
        else:
            loss = torch.nn.functional.mse_loss(target, pred, reduction="none")
        return loss.mean() if mean else loss

    @property
    def device(self) -> torch.device:
        return self.betas.device


class LatentDiffusion(DDPM):
    """Latent diffusion (Rombach et al. 2022): DDPM on ``scale_factor``·z of a KL autoencoder, conditioned on text
    through cross-attention. ``first_stage_model`` and ``cond_stage_model`` are frozen. ``ckpt_path`` and
    ``ignore_keys`` act as in :class:`DDPM`, once the autoencoder and text encoder exist."""

    def __init__(
        self,
        first_stage_config: Mapping[str, Any],
        cond_stage_config: Mapping[str, Any],
        num_timesteps_cond: Optional[int] = None,
        cond_stage_key: str = "image",
        cond_stage_trainable: bool = False,
        concat_mode: bool = True,
        cond_stage_forward=None,
        conditioning_key: Optional[str] = None,
        scale_factor: float = 1.0,
        scale_by_std: bool = False,
        *args,
        **kwargs,
    ):
        self.num_timesteps_cond = default(num_timesteps_cond, 1)
        self.scale_by_std = scale_by_std
        if self.num_timesteps_cond > 1:
            raise ValueError("num_timesteps_cond > 1 (shortened conditioning schedules) is not supported")
        if conditioning_key is None:
            conditioning_key = "concat" if concat_mode else "crossattn"
        ckpt_path = kwargs.pop("ckpt_path", None)  # loaded below, once every submodule exists
        ignore_keys = kwargs.pop("ignore_keys", ())
        super().__init__(*args, conditioning_key=conditioning_key, **kwargs)
        self.concat_mode = concat_mode
        self.cond_stage_trainable = cond_stage_trainable
        self.cond_stage_key = cond_stage_key
        self.num_downs = len(first_stage_config["params"]["ddconfig"]["ch_mult"]) - 1
        if scale_by_std:
            self.register_buffer("scale_factor", torch.tensor(scale_factor))
        else:
            self.scale_factor = scale_factor
        self.first_stage_model = instantiate_from_config(first_stage_config)
        self.first_stage_model.eval()
        for p in self.first_stage_model.parameters():
            p.requires_grad = False
        self.cond_stage_model = instantiate_from_config(cond_stage_config)
        if not cond_stage_trainable:
            self.cond_stage_model.eval()
            for p in self.cond_stage_model.parameters():
                p.requires_grad = False
        self.cond_stage_forward = cond_stage_forward
        if ckpt_path is not None:
            load_weights(self, ckpt_path, ignore_keys)

    def train(self, mode: bool = True) -> LatentDiffusion:
        """Train mode for the UNet only; the autoencoder and (frozen) text encoder stay in eval mode."""
        super().train(mode)
        self.first_stage_model.eval()
        if not self.cond_stage_trainable:
            self.cond_stage_model.eval()
        return self

    def get_learned_conditioning(self, c: Sequence[str] | str) -> torch.Tensor:
        """Text → context (B, 77, D)."""
        if self.cond_stage_forward is not None:
            return getattr(self.cond_stage_model, self.cond_stage_forward)(c)
        encode = getattr(self.cond_stage_model, "encode", None)
        out = encode(c) if callable(encode) else self.cond_stage_model(c)
        return out.mode() if isinstance(out, DiagonalGaussianDistribution) else out

    def encode_first_stage(self, x: torch.Tensor) -> DiagonalGaussianDistribution:
        """Image in [-1, 1] (B, 3, H, W) → posterior over latents."""
        return self.first_stage_model.encode(x)

    def get_first_stage_encoding(self, encoder_posterior, generator: Optional[torch.Generator] = None):
        """Posterior sample (or tensor) × scale_factor."""
        if isinstance(encoder_posterior, DiagonalGaussianDistribution):
            z = encoder_posterior.sample(generator=generator)
        elif isinstance(encoder_posterior, torch.Tensor):
            z = encoder_posterior
        else:
            raise TypeError(f"encoder_posterior of type {type(encoder_posterior).__name__} not implemented")
        return self.scale_factor * z

    def decode_first_stage(
        self, z: torch.Tensor, predict_cids: bool = False, force_not_quantize: bool = False
    ) -> torch.Tensor:
        """Latent × 1/scale_factor → image in ≈[-1, 1]."""
        return self.first_stage_model.decode(z / self.scale_factor)

    def apply_model(self, x_noisy: torch.Tensor, t: torch.Tensor, cond, return_ids: bool = False) -> torch.Tensor:
        """ε_θ(x_t, t, c); ``cond`` is a context tensor, a list of them, or a CompVis ``{'c_crossattn': [...]}``."""
        if not isinstance(cond, dict):
            if not isinstance(cond, list):
                cond = [cond]
            key = "c_concat" if self.model.conditioning_key == "concat" else "c_crossattn"
            cond = {key: cond}
        return self.model(x_noisy, t, **cond)

    def p_losses(self, x_start: torch.Tensor, cond, t: torch.Tensor, noise: Optional[torch.Tensor] = None):
        """Simple ε-matching loss ‖ε − ε_θ(x_t, t, c)‖² (+ optional VLB term); returns (loss, log dict)."""
        noise = default(noise, lambda: torch.randn_like(x_start))
        x_noisy = self.q_sample(x_start=x_start, t=t, noise=noise)
        model_output = self.apply_model(x_noisy, t, cond)
        prefix = "train" if self.training else "val"
        loss_simple = self.get_loss(model_output, noise, mean=False).mean([1, 2, 3])
        logvar_t = self.logvar.to(x_start.device)[t]
        loss = (loss_simple / torch.exp(logvar_t) + logvar_t).mean() * self.l_simple_weight
        loss_vlb = (self.lvlb_weights[t] * self.get_loss(model_output, noise, mean=False).mean([1, 2, 3])).mean()
        loss = loss + self.original_elbo_weight * loss_vlb
        log = {
            f"{prefix}/loss_simple": loss_simple.mean().detach(),
            f"{prefix}/loss_vlb": loss_vlb.detach(),
            f"{prefix}/loss": loss.detach(),
        }
        return loss, log
