"""The data of the common training step (docs/method.md, "The common training step"): one training image per
iteration from :class:`ImageFolder` (Resize+CenterCrop, [-1, 1]), its latent ``z`` = posterior sample ×
scale_factor (:func:`encode_latents`), the timestep draw ``t_enc ~ U{0..S-1}``, DDPM
``t ~ U[round(t_enc/S·T), round((t_enc+1)/S·T))`` (:func:`sample_timesteps`) and ``x_t = q_sample(z, t)``
(:func:`q_sample`, Ho et al. 2020, Eq. 4).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Union

import torch

log = logging.getLogger(__package__)  # one logger for the whole training harness: "sepce.training"

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


class ImageFolder:
    """The training images of one concept: every readable image in ``folder``, one drawn per iteration.

    Construction validates the folder (missing, empty, or no readable image → one-line error) without touching
    a model; unreadable files are skipped and counted (``skipped``)."""

    def __init__(self, folder: Union[str, Path], image_size: int = 512):
        from PIL import Image

        self.folder = Path(folder)
        self.image_size = image_size
        if not self.folder.is_dir():
            raise FileNotFoundError(
                f"image folder {self.folder} does not exist: expected images the original model "
                f"generated for this prompt (eval-scripts/generate-data.py) in <data_dir>/<prompt>/"
            )
        candidates = sorted(p for p in self.folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not candidates:
            raise ValueError(f"image folder {self.folder} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
        self.files: list[Path] = []
        self.skipped: list[Path] = []
        for p in candidates:
            try:
                with Image.open(p) as im:
                    im.verify()
                self.files.append(p)
            except Exception:  # noqa: BLE001 - any decoder error means "unreadable"
                self.skipped.append(p)
        if self.skipped:
            log.warning(
                "%s: skipped %d unreadable image(s) of %d (first: %s)",
                self.folder,
                len(self.skipped),
                len(candidates),
                self.skipped[0].name,
            )
        if not self.files:
            raise ValueError(f"image folder {self.folder}: none of its {len(candidates)} image file(s) is readable")
        from torchvision import transforms

        self.transform = transforms.Compose(
            [transforms.Resize(image_size), transforms.CenterCrop(image_size), transforms.ToTensor()]
        )

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> torch.Tensor:
        """Image ``index`` as a 1×3×S×S tensor in [-1, 1]."""
        from PIL import Image

        with Image.open(self.files[index]) as im:
            x = self.transform(im.convert("RGB"))
        return (2.0 * x - 1.0).unsqueeze(0)

    def sample(self, generator: torch.Generator) -> torch.Tensor:
        """A uniformly drawn image; files that fail to decode now are dropped (and counted) and another is drawn."""
        while self.files:
            index = int(torch.randint(len(self.files), (1,), generator=generator))
            try:
                return self.load(index)
            except Exception:  # noqa: BLE001
                bad = self.files.pop(index)
                self.skipped.append(bad)
                log.warning("skipping unreadable image %s", bad)
        raise ValueError(f"image folder {self.folder}: no readable image is left")


# -- the diffusion step --------------------------------------------------------------------------------------
def sample_timesteps(ddim_steps: int, generator: torch.Generator, num_timesteps: int = 1000) -> tuple[int, int]:
    """``(t_enc, t)``: t_enc ~ U{0..S-1}, then the DDPM step t ~ U[round(t_enc/S·T), round((t_enc+1)/S·T)) — the
    released scripts' draw, uniform over 0..T-1 overall (docs/method.md, common step 3)."""
    t_enc = int(torch.randint(ddim_steps, (1,), generator=generator))
    lo = round(t_enc / ddim_steps * num_timesteps)
    hi = round((t_enc + 1) / ddim_steps * num_timesteps)
    return t_enc, int(torch.randint(lo, hi, (1,), generator=generator))


@torch.no_grad()
def encode_latents(model: torch.nn.Module, images: torch.Tensor, generator: Optional[torch.Generator] = None):
    """``get_first_stage_encoding(encode_first_stage(x))``: a posterior sample × scale_factor, without gradients."""
    first = next(model.first_stage_model.parameters())
    posterior = model.encode_first_stage(images.to(first.device, first.dtype))
    return model.get_first_stage_encoding(posterior, generator=generator).detach()


def q_sample(model: torch.nn.Module, z: torch.Tensor, t: torch.Tensor, generator: Optional[torch.Generator] = None):
    """x_t = √ᾱ_t z + √(1−ᾱ_t) ε with fresh ε (Ho et al. 2020, Eq. 4)."""
    noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
    return model.q_sample(z, t.to(z.device), noise=noise)
