"""The deterministic validation views of uint8 images, and the uint8 -> float tensor steps every view shares.

Owns `eval_views` (docs/protocol.md §Evaluation protocol: shorter side -> resize, center crop,
normalise). The data pipeline (`orchestrator.data.pipeline`) makes and caches the validation views
with it; the training views (`trainers.augment`) share its conversion and checks. Both sides import
this module and neither imports the other.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torchvision.transforms.v2.functional as F
from torchvision.transforms import InterpolationMode


def to_uint8_nhwc(images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """A contiguous uint8 NHWC array from uint8 NHWC or NHW (grayscale) images."""
    array = np.asarray(images)
    if array.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {array.dtype}")
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4 or array.shape[-1] not in (1, 3):
        raise ValueError(f"images must be NHWC with 1 or 3 channels (or NHW), got shape {array.shape}")
    return np.ascontiguousarray(array)


def to_float_nchw(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> float32 NCHW in [0, 1]."""
    return torch.from_numpy(to_uint8_nhwc(images)).permute(0, 3, 1, 2).float().div_(255.0)


def check_stats(mean: Sequence[float], std: Sequence[float], channels: int) -> None:
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"mean/std have {len(mean)}/{len(std)} values for {channels}-channel images")


def eval_views(
    images: np.ndarray,
    *,
    resize: int,
    crop: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> torch.Tensor:
    """Float32 NCHW validation views: shorter side -> ``resize`` (skipped if equal), center crop, normalise."""
    if crop > resize:
        raise ValueError(f"center crop {crop} is larger than the resized image {resize}")
    pixels = to_float_nchw(images)
    check_stats(mean, std, pixels.shape[1])
    if min(pixels.shape[-2:]) != resize:
        pixels = F.resize(pixels, [resize], interpolation=InterpolationMode.BILINEAR, antialias=True)
    pixels = F.center_crop(pixels, [crop, crop]).contiguous()
    return F.normalize(pixels, list(mean), list(std), inplace=True)
