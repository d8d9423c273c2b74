"""KL-regularised autoencoder, the first stage of latent diffusion (CompVis ``ldm.models.autoencoder``).

A plain ``nn.Module`` (no Lightning): ``encode`` → DiagonalGaussianDistribution, ``decode`` → image.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import torch
import torch.nn as nn

from ldm.checkpoint import load_weights
from ldm.modules.diffusionmodules.model import Decoder, Encoder
from ldm.modules.distributions.distributions import DiagonalGaussianDistribution
from ldm.util import instantiate_from_config


class AutoencoderKL(nn.Module):
    """``ckpt_path``/``ignore_keys`` load weights at construction through :func:`ldm.checkpoint.load_weights`
    (strict; the training loss' ``loss.*`` tensors in the file are skipped when this module has none)."""

    def __init__(
        self,
        ddconfig: Mapping[str, Any],
        lossconfig: Optional[Mapping[str, Any]],
        embed_dim: int,
        ckpt_path: Optional[str] = None,
        ignore_keys=(),
        image_key: str = "image",
        colorize_nlabels: Optional[int] = None,
        monitor: Optional[str] = None,
    ):
        super().__init__()
        if not ddconfig.get("double_z", True):
            raise ValueError("AutoencoderKL needs ddconfig.double_z: true (mean and log-variance)")
        self.image_key = image_key
        self.encoder = Encoder(**ddconfig)
        self.decoder = Decoder(**ddconfig)
        # The training loss (LPIPS + discriminator) is not part of inference checkpoints; SD configs name
        # torch.nn.Identity here, which has no parameters.
        self.loss = instantiate_from_config(lossconfig) if lossconfig else nn.Identity()
        self.quant_conv = nn.Conv2d(2 * ddconfig["z_channels"], 2 * embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, ddconfig["z_channels"], 1)
        self.embed_dim = embed_dim
        self.monitor = monitor
        if ckpt_path is not None:
            # Autoencoder training checkpoints also hold the loss' weights (LPIPS, discriminator): skipped unless the
            # lossconfig built a loss module that has them.
            skip = ("loss.",) if not self.loss.state_dict() else ()
            load_weights(self, ckpt_path, (*ignore_keys, *skip))

    def encode(self, x: torch.Tensor) -> DiagonalGaussianDistribution:
        moments = self.quant_conv(self.encoder(x))  # B 2*embed_dim h w
        return DiagonalGaussianDistribution(moments)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z))  # B 3 H W

    def forward(self, x: torch.Tensor, sample_posterior: bool = True):
        posterior = self.encode(x)
        z = posterior.sample() if sample_posterior else posterior.mode()
        return self.decode(z), posterior
