"""Training views of uint8 image batches: pure functions run inside the data iterator's collate_fn.

Owns the protocol's augmentation (docs/protocol.md §Evaluation protocol): RandomResizedCrop + horizontal flip +
normalisation. The validation views (resize + center crop + normalisation) are `orchestrator.image_views`, which
the data pipeline makes them with. A training view depends only on (seed, epoch, sample key): each sample draws
its crop and flip from ``np.random.default_rng([seed, epoch, key])``, never from batch position or order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torchvision.transforms.v2.functional as F
from torchvision.transforms import InterpolationMode

from orchestrator.image_views import check_stats, to_float_nchw

CROP_TRIES = 10  # torchvision RandomResizedCrop.get_params
# Uniform draws per sample: CROP_TRIES areas, CROP_TRIES log-ratios, crop top, crop left, flip coin.
DRAWS_PER_SAMPLE = 2 * CROP_TRIES + 3


def sample_uniforms(keys: np.ndarray, *, epoch: int, seed: int) -> np.ndarray:
    """[N, DRAWS_PER_SAMPLE] uniforms in [0, 1), row k drawn from default_rng([seed, epoch, keys[k]])."""
    keys = np.asarray(keys, dtype=np.int64)
    if keys.ndim != 1 or (keys.size and keys.min() < 0) or seed < 0 or epoch < 0:
        raise ValueError("keys must be a 1-D array of non-negative ints; seed and epoch non-negative")
    uniforms = np.empty((keys.size, DRAWS_PER_SAMPLE))
    for row, key in enumerate(keys.tolist()):
        uniforms[row] = np.random.default_rng([seed, epoch, key]).random(DRAWS_PER_SAMPLE)
    return uniforms


def crop_params(
    uniforms: np.ndarray,
    *,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
) -> np.ndarray:
    """[N, 4] int (top, left, crop_h, crop_w): torchvision's RandomResizedCrop.get_params, vectorised.

    Ten tries of (area fraction ~ U(scale), log aspect ~ U(log ratio)); the first crop that fits
    wins, else the central crop clamped to the ratio range. Rounding is half-to-even like ``round``.
    """
    tries = slice(0, CROP_TRIES)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    target_area = height * width * (scale[0] + (scale[1] - scale[0]) * uniforms[:, tries])
    aspect = np.exp(log_lo + (log_hi - log_lo) * uniforms[:, CROP_TRIES : 2 * CROP_TRIES])
    crop_w = np.round(np.sqrt(target_area * aspect)).astype(np.int64)
    crop_h = np.round(np.sqrt(target_area / aspect)).astype(np.int64)
    fits = (crop_w > 0) & (crop_w <= width) & (crop_h > 0) & (crop_h <= height)
    first = fits.argmax(axis=1)
    rows = np.arange(len(uniforms))
    h, w = crop_h[rows, first], crop_w[rows, first]
    top = np.floor(uniforms[:, 2 * CROP_TRIES] * (height - h + 1)).astype(np.int64)
    left = np.floor(uniforms[:, 2 * CROP_TRIES + 1] * (width - w + 1)).astype(np.int64)
    params = np.stack([top, left, h, w], axis=1)
    params[~fits.any(axis=1)] = _central_crop(height, width, ratio)
    return params


def _central_crop(height: int, width: int, ratio: tuple[float, float]) -> tuple[int, int, int, int]:
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def train_views(
    images: np.ndarray,
    keys: np.ndarray,
    *,
    epoch: int,
    seed: int,
    size: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip: float = 0.5,
    mean: Sequence[float],
    std: Sequence[float],
) -> torch.Tensor:
    """Float32 NCHW training views: RandomResizedCrop(size) + flip(p=hflip) + normalise.

    ``images`` uint8 NHWC (or NHW); ``keys`` stable per-sample ids (non-negative int64). Sample k's
    view depends only on (seed, epoch, keys[k]).
    """
    pixels = to_float_nchw(images)
    count, channels, height, width = pixels.shape
    check_stats(mean, std, channels)
    if len(keys) != count:
        raise ValueError(f"{count} images but {len(keys)} keys")
    uniforms = sample_uniforms(keys, epoch=epoch, seed=seed)
    params = crop_params(uniforms, height=height, width=width, scale=scale, ratio=ratio).tolist()
    views = torch.empty((count, channels, size, size), dtype=torch.float32)
    for index, (top, left, crop_h, crop_w) in enumerate(params):
        views[index] = F.resized_crop(
            pixels[index], top, left, crop_h, crop_w, [size, size],
            interpolation=InterpolationMode.BILINEAR, antialias=True,
        )  # fmt: skip
    flip = torch.from_numpy(uniforms[:, -1] < hflip)
    views[flip] = F.hflip(views[flip])
    return F.normalize(views, list(mean), list(std), inplace=True)
