"""Mixup / CutMix for both label modes, built on timm's Mixup.

Hard labels: images and one-hot targets are mixed together (timm returns the mixed targets).
Soft labels: only the images are mixed; the teacher then labels the mixed images themselves.
"""

from __future__ import annotations

import torch
from timm.data import Mixup

ALPHAS = {"none": (0.0, 0.0), "mixup": (1.0, 0.0), "cutmix": (0.0, 1.0), "both": (1.0, 1.0)}


def build_mixup(mix_type: str, *, mixup_alpha: float, cutmix_alpha: float, prob: float,
                switch_prob: float, num_classes: int) -> Mixup | None:
    """A timm Mixup for the configured type, or None when mixing is off."""
    use_mixup, use_cutmix = ALPHAS[mix_type]
    if not (use_mixup or use_cutmix) or prob <= 0:
        return None
    return Mixup(mixup_alpha=mixup_alpha * use_mixup, cutmix_alpha=cutmix_alpha * use_cutmix,
                 prob=prob, switch_prob=switch_prob, mode="batch", label_smoothing=0.0,
                 num_classes=num_classes)


def mix_batch(mixup: Mixup | None, images: torch.Tensor, labels: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix a batch; returns (images, targets) where targets are class ids or mixed one-hots.

    timm mixes a batch with its flipped self and needs an even size: an odd last sample is
    dropped from this step (documented, deterministic).
    """
    if mixup is None or len(images) < 2:
        return images, labels
    if len(images) % 2:
        images, labels = images[:-1], labels[:-1]
    return mixup(images, labels)
