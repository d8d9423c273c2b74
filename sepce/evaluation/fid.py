"""Fréchet Inception Distance per class between the original model's and an edited model's images.

FID (Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium",
NeurIPS 2017, Eq. 6): with feature means mu_1, mu_2 and covariances S_1, S_2 of the two image sets,

    FID = ||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1^{1/2} S_2 S_1^{1/2})^{1/2}).

:func:`frechet_distance` evaluates it in float64 with symmetric eigendecompositions only. With the eigenpairs
S_1 = V L V^T, keep the r eigenvalues above round-off (``L.max() * D * eps``, NumPy's ``matrix_rank`` tolerance;
the others are 0 up to round-off) and set W = V_r L_r^{1/2} (D x r), so S_1^{1/2} = V_r L_r^{1/2} V_r^T. The
non-zero eigenvalues of the symmetric PSD matrix S_1^{1/2} S_2 S_1^{1/2} are those of the r x r matrix
W^T S_2 W (AB and BA share them), so the cross term is the sum of the square roots of the eigenvalues of
W^T S_2 W. This equals Tr((S_1 S_2)^{1/2}) of the usual formula without the complex round-off of a general
``sqrtm`` (no SciPy needed), and on rank-deficient covariances it adds no square roots of round-off.

:func:`fid_from_features` takes a shortcut when a set has fewer samples than feature dimensions (250 images
per class vs 2048 Inception features): with centred, scaled samples A = (X_1 - mu_1)/sqrt(N_1 - 1) and
B = (X_2 - mu_2)/sqrt(N_2 - 1), S_1 = A^T A and S_2 = B^T B, the non-zero eigenvalues of S_1 S_2 are the squared
singular values of A B^T, so Tr((S_1 S_2)^{1/2}) = ||A B^T||_* (nuclear norm) and Tr(S_i) = ||A||_F^2, ||B||_F^2.
Exact, and an N_1 x N_2 SVD instead of two D x D eigendecompositions.

Features come from any callable ``images (B, 3, H, W) in [0, 1] -> features (B, D)``
(:data:`FeatureExtractor`), so a small network can stand in (the tiny-world benchmark uses its classifier's
features, recorded as :data:`FID_WORLD_CLASSIFIER_NETWORK`). The default, :func:`inception_extractor`, is the
``pytorch-fid`` package's own ``InceptionV3`` (recorded as :data:`FID_INCEPTION_NETWORK`), as erasure papers
use it: the FID Inception blocks with the TensorFlow-ported weights ``pt_inception-2015-12-05-6726825d.pth``,
2048-d pool3 features, input resized bilinearly to 299 px and scaled to [-1, 1] by the network
(``resize_input``/``normalize_input``, as ``pytorch_fid.fid_score`` builds it), and images read as
``pytorch_fid.fid_score`` reads them: PIL, ``convert('RGB')``, ``ToTensor`` at the stored size
(:func:`load_stored_image`). The weights come from a local file or the torch hub cache, never from a download
(:mod:`sepce.evaluation.weights`). So the statistics equal those of ``pytorch_fid.fid_score`` on the same files;
the distance is computed as above instead of with SciPy's ``sqrtm`` (equal up to ``sqrtm``'s round-off on the
rank-deficient covariances). With 250 images per class and 2048-d features the covariances are
rank-deficient and FID is biased upwards; it still ranks models measured on the same seeds.
"""

from __future__ import annotations

import math
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence

import numpy as np
import pytorch_fid.inception as pytorch_fid_inception
import torch
import torchvision
from PIL import Image
from pytorch_fid.inception import InceptionV3
from torchvision.transforms import functional as TF
from tqdm import tqdm

from .loading import iterate_images
from .weights import FID_INCEPTION, load_state_dict, resolve_weights

FeatureExtractor = Callable[[torch.Tensor], torch.Tensor]
INCEPTION_IMAGE_SIZE = 299  # pytorch-fid's resize_input size
MIN_INCEPTION_IMAGE_SIZE = 75  # the smallest input the Inception-v3 stem and reductions accept
FID_DIMS = 2048  # pool3 features, pytorch-fid's default --dims
FID_INCEPTION_NETWORK = "FID (pytorch-fid Inception)"
FID_WORLD_CLASSIFIER_NETWORK = "FID (world classifier features)"


def _psd_factor(matrix: np.ndarray) -> np.ndarray:
    """W (D x r) with W W^T = ``matrix`` (symmetric PSD), from its r eigenpairs above round-off."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    keep = values > values.max(initial=0.0) * len(values) * np.finfo(np.float64).eps
    return vectors[:, keep] * np.sqrt(values[keep])


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (the FID formula above), float64."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = (
        np.atleast_2d(np.asarray(sigma1, np.float64)),
        np.atleast_2d(np.asarray(sigma2, np.float64)),
    )
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shape mismatch: means {mu1.shape}, {mu2.shape}; covariances {sigma1.shape}, {sigma2.shape}")
    factor = _psd_factor(sigma1)  # (D, r)
    middle = factor.T @ sigma2 @ factor  # (r, r): the non-zero spectrum of S_1^{1/2} S_2 S_1^{1/2}
    cross = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0.0, None)).sum() if middle.size else 0.0
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


_CONSTRUCTION_LOCK = threading.Lock()


@contextmanager
def _state_dict_instead_of_download(state_dict: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """Within the block, pytorch-fid gets ``state_dict`` where it would download its FID Inception weights.

    ``pytorch_fid.inception.fid_inception_v3`` builds the FID Inception, then calls the module-level
    ``load_state_dict_from_url(FID_WEIGHTS_URL)`` and loads the result strictly. Swapping that one name for the
    block (under a lock; restored afterwards) keeps pytorch-fid's own construction and loading and makes a
    download impossible.
    """
    if not hasattr(pytorch_fid_inception, "load_state_dict_from_url"):
        raise RuntimeError(
            "this pytorch-fid version no longer loads its weights through "
            "pytorch_fid.inception.load_state_dict_from_url; install pytorch-fid 0.3.x"
        )

    def provide(url: str, *args, **kwargs) -> Mapping[str, torch.Tensor]:
        if url != pytorch_fid_inception.FID_WEIGHTS_URL:
            raise RuntimeError(f"pytorch-fid asked for {url}; only its FID Inception weights are provided offline")
        return state_dict

    with _CONSTRUCTION_LOCK:
        original = pytorch_fid_inception.load_state_dict_from_url
        pytorch_fid_inception.load_state_dict_from_url = provide
        try:
            yield
        finally:
            pytorch_fid_inception.load_state_dict_from_url = original


def random_fid_inception_state(seed: int = 0) -> Dict[str, torch.Tensor]:
    """Seeded random weights with the FID Inception's keys and shapes (tests and ``--no_pretrained`` only).

    torchvision's Inception-v3 with 1008 classes and no auxiliary head has exactly the parameters of
    ``pytorch_fid.inception.fid_inception_v3`` (its FID blocks change only forward passes). Convolutions get
    He-normal weights (He et al., "Delving Deep into Rectifiers", ICCV 2015, fan-in, ReLU gain) so that, with
    batch norm at its initial identity statistics, the pool features stay of order 1 instead of vanishing
    (PyTorch's default init) or overflowing (torchvision's truncated normal).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = torchvision.models.inception_v3(weights=None, num_classes=1008, aux_logits=False, init_weights=False)
        for module in net.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    return net.state_dict()


class InceptionFeatures(torch.nn.Module):
    """pytorch-fid's ``InceptionV3`` pool3 features: images (B, 3, H, W) in [0, 1] -> (B, 2048).

    At ``size`` 299 the wrapped network resizes and normalises by itself exactly as in ``pytorch_fid.fid_score``;
    another ``size`` (tests only; the values are not comparable FIDs) resizes bilinearly to it first, the same
    way, with the network's own resize switched off.
    """

    def __init__(self, net: InceptionV3, size: int = INCEPTION_IMAGE_SIZE):
        super().__init__()
        self.net = net
        self.size = size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.size != INCEPTION_IMAGE_SIZE:
            images = torch.nn.functional.interpolate(
                images, size=(self.size, self.size), mode="bilinear", align_corners=False
            )
        return self.net(images)[0].flatten(1)  # (B, 2048, 1, 1) -> (B, 2048)


def inception_extractor(
    pretrained: bool = True, weights: Optional[str | Path] = None, size: int = INCEPTION_IMAGE_SIZE
) -> InceptionFeatures:
    """The default FID feature network: pytorch-fid's FID Inception, 2048-d pool3 features, built offline.

    ``weights``: the ``pt_inception-2015-12-05-*.pth`` file (None: the torch hub cache, see
    :data:`sepce.evaluation.weights.FID_INCEPTION`); ``pretrained=False`` gives seeded random weights
    (:func:`random_fid_inception_state`; tests only). ``size``: Inception's input size, 299 as in pytorch-fid;
    smaller sizes (at least 75) only make tests fast.
    """
    if size < MIN_INCEPTION_IMAGE_SIZE:
        raise ValueError(f"Inception-v3 needs images of at least {MIN_INCEPTION_IMAGE_SIZE} px, not {size}")
    if pretrained:
        path = resolve_weights(FID_INCEPTION, weights, "--fid_weights")
        state, source = load_state_dict(path), str(path)
    else:
        state, source = random_fid_inception_state(), "the random FID Inception state"
    try:
        with _state_dict_instead_of_download(state):
            net = InceptionV3(
                [InceptionV3.BLOCK_INDEX_BY_DIM[FID_DIMS]],
                resize_input=size == INCEPTION_IMAGE_SIZE,
                normalize_input=True,
            )
    except RuntimeError as error:
        if "state_dict" not in str(error):
            raise
        detail = " ".join(line.strip() for line in str(error).splitlines()[1:2])
        raise ValueError(f"{source} is not pytorch-fid's FID Inception state dict: {detail[:200]}") from None
    return InceptionFeatures(net, size).eval()


def load_stored_image(path: str | Path) -> torch.Tensor:
    """An image file as ``pytorch_fid.fid_score`` reads it (PIL, ``convert('RGB')``, ``ToTensor``): (3, H, W)."""
    with Image.open(path) as image:
        return TF.to_tensor(image.convert("RGB"))


def image_batches(paths: Sequence[Path], image_size: Optional[int], batch_size: int) -> Iterator[torch.Tensor]:
    """Batches ``(B, 3, H, W)`` in [0, 1] of the given files, in order.

    ``image_size`` None: at the stored size (:func:`load_stored_image`); a batch is split where the image size
    changes. Otherwise Resize+CenterCrop to ``image_size`` (:func:`sepce.evaluation.loading.iterate_images`).
    """
    if image_size is not None:
        yield from iterate_images(paths, image_size, batch_size)
        return
    for start in range(0, len(paths), batch_size):
        images = [load_stored_image(path) for path in paths[start : start + batch_size]]
        while images:
            same = next((i for i, image in enumerate(images) if image.shape != images[0].shape), len(images))
            yield torch.stack(images[:same])
            images = images[same:]


@torch.no_grad()
def extract_features(
    extractor: FeatureExtractor,
    paths: Sequence[Path],
    image_size: Optional[int],
    batch_size: int,
    device: torch.device,
    desc: str = "features",
    progress: bool = True,
) -> torch.Tensor:
    """Features ``(N, D)`` (float64) of image files through ``extractor``; images as :func:`image_batches`; a
    progress bar with ``progress``."""
    if isinstance(extractor, torch.nn.Module):
        extractor = extractor.to(device).eval()
    chunks: List[torch.Tensor] = []
    with tqdm(total=len(paths), desc=desc, unit="img", disable=not progress) as bar:
        for images in image_batches(paths, image_size, batch_size):
            chunks.append(extractor(images.to(device)).flatten(1).double().cpu())
            bar.update(len(images))
    return torch.cat(chunks) if chunks else torch.empty(0, 0, dtype=torch.float64)


def fid_per_class(
    original: Dict[int, Sequence[Path]],
    edited: Dict[int, Sequence[Path]],
    extractor: FeatureExtractor,
    device: torch.device,
    image_size: Optional[int] = None,
    batch_size: int = 50,
    progress: bool = True,
) -> Dict[int, dict]:
    """FID of each class present in both sets, plus key ``-1`` for all images together.

    ``image_size`` None reads images at their stored size, as pytorch-fid does (the Inception extractor resizes
    by itself); an int applies Resize+CenterCrop first (extractors that expect a fixed size). Returns
    ``{class: {"fid": value, "original": n1, "edited": n2}}``; ``fid`` is NaN when a side has < 2 images.
    ``progress``: a bar per class and side.
    """
    results: Dict[int, dict] = {}
    all_left, all_right = [], []
    for class_index in sorted(set(original) & set(edited)):
        left, right = (
            extract_features(
                extractor, paths[class_index], image_size, batch_size, device, f"FID {class_index} {side}", progress
            )
            for paths, side in ((original, "a"), (edited, "b"))
        )
        all_left.append(left)
        all_right.append(right)
        value = fid_from_features(left, right) if len(left) >= 2 and len(right) >= 2 else math.nan
        results[class_index] = {"fid": value, "original": len(left), "edited": len(right)}
    left = torch.cat(all_left) if all_left else torch.empty(0, 0)
    right = torch.cat(all_right) if all_right else torch.empty(0, 0)
    overall = fid_from_features(left, right) if len(left) >= 2 and len(right) >= 2 else math.nan
    results[-1] = {"fid": overall, "original": len(left), "edited": len(right)}
    return results
