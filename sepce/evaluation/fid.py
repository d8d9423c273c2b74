"""Fréchet Inception Distance per class between the original model's and an edited model's images.

FID (Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium",
NeurIPS 2017, Eq. 6): with feature means mu_1, mu_2 and covariances S_1, S_2 of the two image sets,

    FID = ||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1^{1/2} S_2 S_1^{1/2})^{1/2}).

:func:`frechet_distance` evaluates it in float64 with symmetric eigendecompositions only: S_1^{1/2} from the
eigenpairs of S_1 (negative round-off eigenvalues clipped to 0), then the trace of the square root of the
symmetric PSD matrix S_1^{1/2} S_2 S_1^{1/2} as the sum of the square roots of its eigenvalues. This equals
Tr((S_1 S_2)^{1/2}) of the usual formula without the complex round-off of a general ``sqrtm``; no SciPy
needed.

:func:`fid_from_features` takes a shortcut when a set has fewer samples than feature dimensions (250 images
per class vs 2048 Inception features): with centred, scaled samples A = (X_1 - mu_1)/sqrt(N_1 - 1) and
B = (X_2 - mu_2)/sqrt(N_2 - 1), S_1 = A^T A and S_2 = B^T B, the non-zero eigenvalues of S_1 S_2 are the squared
singular values of A B^T, so Tr((S_1 S_2)^{1/2}) = ||A B^T||_* (nuclear norm) and Tr(S_i) = ||A||_F^2, ||B||_F^2.
Exact, and an N_1 x N_2 SVD instead of two D x D eigendecompositions.

Features come from any callable ``images (B, 3, H, W) in [0, 1] -> features (B, D)``
(:data:`FeatureExtractor`), so a small network can stand in (the tiny-world benchmark does). The default,
:func:`inception_extractor`, is torchvision's Inception-v3 2048-d pool features (input resized to 299 px,
ImageNet weights from torchvision's cache or ``--fid_weights``). Its numbers are NOT those of the
``pytorch-fid`` reference implementation (which uses the TF-ported FID Inception weights and resizing);
compare FIDs only when made with the same feature network. With 250 images per class and 2048-d features the
covariances are rank-deficient and FID is biased upwards; it still ranks models measured on the same seeds.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torchvision
from tqdm import tqdm

from .loading import iterate_images
from .weights import INCEPTION_V3, load_state_dict, resolve_weights

FeatureExtractor = Callable[[torch.Tensor], torch.Tensor]
INCEPTION_IMAGE_SIZE = 299
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (eigenvalues clipped at 0)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (the FID formula above), float64."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = (
        np.atleast_2d(np.asarray(sigma1, np.float64)),
        np.atleast_2d(np.asarray(sigma2, np.float64)),
    )
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shape mismatch: means {mu1.shape}, {mu2.shape}; covariances {sigma1.shape}, {sigma2.shape}")
    root1 = _sqrt_psd(sigma1)
    middle = root1 @ sigma2 @ root1
    cross = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0.0, None)).sum()
    value = float(((mu1 - mu2) ** 2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2.0 * cross)
    return max(value, 0.0)


def feature_statistics(features: np.ndarray | torch.Tensor) -> tuple:
    """Mean and unbiased covariance ``(D,), (D, D)`` of features ``(N, D)``; needs N >= 2."""
    features = _as_array(features)
    return features.mean(0), np.cov(features, rowvar=False).reshape(features.shape[1], features.shape[1])


def _as_array(features: np.ndarray | torch.Tensor) -> np.ndarray:
    array = np.asarray(features.detach().cpu() if isinstance(features, torch.Tensor) else features, np.float64)
    if array.ndim != 2 or array.shape[0] < 2:
        raise ValueError(f"FID needs at least 2 feature vectors, got array of shape {array.shape}")
    return array


def fid_from_features(features1: np.ndarray | torch.Tensor, features2: np.ndarray | torch.Tensor) -> float:
    """FID between two feature sets ``(N1, D)`` and ``(N2, D)`` (sample-space shortcut when N < D)."""
    x1, x2 = _as_array(features1), _as_array(features2)
    if x1.shape[1] != x2.shape[1]:
        raise ValueError(f"feature sizes differ: {x1.shape[1]} vs {x2.shape[1]}")
    if min(len(x1), len(x2)) >= x1.shape[1]:
        return frechet_distance(*feature_statistics(x1), *feature_statistics(x2))
    mu1, mu2 = x1.mean(0), x2.mean(0)
    a = (x1 - mu1) / math.sqrt(len(x1) - 1)  # S_1 = a^T a
    b = (x2 - mu2) / math.sqrt(len(x2) - 1)  # S_2 = b^T b
    cross = np.linalg.svd(a @ b.T, compute_uv=False).sum()  # Tr((S_1 S_2)^{1/2})
    value = float(((mu1 - mu2) ** 2).sum() + (a**2).sum() + (b**2).sum() - 2.0 * cross)
    return max(value, 0.0)


class InceptionFeatures(torch.nn.Module):
    """torchvision Inception-v3 pool features: images (B, 3, H, W) in [0, 1] resized to ``size`` -> (B, 2048)."""

    def __init__(self, net: torch.nn.Module, size: int = INCEPTION_IMAGE_SIZE):
        super().__init__()
        self.net = net
        self.size = size
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-2:] != (self.size, self.size):
            images = torch.nn.functional.interpolate(
                images,
                size=(self.size, self.size),
                mode="bilinear",
                align_corners=False,
            )
        return self.net((images - self.mean) / self.std)  # (B, 2048): fc is Identity


def inception_extractor(
    pretrained: bool = True, weights: Optional[str | Path] = None, size: int = INCEPTION_IMAGE_SIZE
) -> InceptionFeatures:
    """The default FID feature network; ``pretrained=False`` gives random weights (tests only).

    Images are resized to ``size`` (Inception's 299 by default; at least 75) before the network.
    """
    if size < 75:
        raise ValueError(f"Inception-v3 needs images of at least 75 px, not {size}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # random weights (tests) are the same network on every run
        net = torchvision.models.inception_v3(
            weights=None, aux_logits=True, transform_input=True, init_weights=not pretrained
        )
    if pretrained:
        net.load_state_dict(load_state_dict(resolve_weights(INCEPTION_V3, weights, "--fid_weights")))
    net.fc = torch.nn.Identity()
    net.AuxLogits = None
    net.aux_logits = False
    return InceptionFeatures(net, size).eval()


@torch.no_grad()
def extract_features(
    extractor: FeatureExtractor,
    paths: Sequence[Path],
    image_size: int,
    batch_size: int,
    device: torch.device,
    desc: str = "features",
) -> torch.Tensor:
    """Features ``(N, D)`` of image files (Resize+CenterCrop ``image_size``, [0, 1]) through ``extractor``."""
    if isinstance(extractor, torch.nn.Module):
        extractor = extractor.to(device).eval()
    chunks: List[torch.Tensor] = []
    for images in tqdm(
        iterate_images(paths, image_size, batch_size), desc=desc, total=math.ceil(len(paths) / batch_size)
    ):
        chunks.append(extractor(images.to(device)).flatten(1).double().cpu())
    return torch.cat(chunks) if chunks else torch.empty(0, 0, dtype=torch.float64)


def fid_per_class(
    original: Dict[int, Sequence[Path]],
    edited: Dict[int, Sequence[Path]],
    extractor: FeatureExtractor,
    device: torch.device,
    image_size: int = INCEPTION_IMAGE_SIZE,
    batch_size: int = 50,
) -> Dict[int, dict]:
    """FID of each class present in both sets, plus key ``-1`` for all images together.

    Returns ``{class: {"fid": value, "original": n1, "edited": n2}}``; ``fid`` is NaN when a side has < 2
    images.
    """
    results: Dict[int, dict] = {}
    all_left, all_right = [], []
    for class_index in sorted(set(original) & set(edited)):
        left = extract_features(
            extractor, original[class_index], image_size, batch_size, device, f"FID {class_index} a"
        )
        right = extract_features(extractor, edited[class_index], image_size, batch_size, device, f"FID {class_index} b")
        all_left.append(left)
        all_right.append(right)
        value = fid_from_features(left, right) if len(left) >= 2 and len(right) >= 2 else math.nan
        results[class_index] = {"fid": value, "original": len(left), "edited": len(right)}
    left = torch.cat(all_left) if all_left else torch.empty(0, 0)
    right = torch.cat(all_right) if all_right else torch.empty(0, 0)
    overall = fid_from_features(left, right) if len(left) >= 2 and len(right) >= 2 else math.nan
    results[-1] = {"fid": overall, "original": len(left), "edited": len(right)}
    return results
