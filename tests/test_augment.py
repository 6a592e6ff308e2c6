"""trainers.augment: deterministic per-sample train views and eval views."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms import RandomResizedCrop

from orchestrator.image_views import eval_views, to_uint8_nhwc
from trainers.augment import crop_params, train_views

MEAN, STD = [0.5], [0.25]


def _images(count: int = 8, size: int = 12, channels: int = 1) -> np.ndarray:
    rng = np.random.default_rng(123)
    return rng.integers(0, 256, (count, size, size, channels), dtype=np.uint8)


def _views(images: np.ndarray, keys: np.ndarray, epoch: int = 0, seed: int = 7, size: int = 12) -> torch.Tensor:
    return train_views(images, keys, epoch=epoch, seed=seed, size=size, mean=MEAN, std=STD)


def test_shape_dtype_and_normalisation() -> None:
    images = _images(channels=3)
    views = train_views(images, np.arange(8), epoch=0, seed=0, size=10, mean=[0.5] * 3, std=[0.5] * 3)
    assert views.shape == (8, 3, 10, 10) and views.dtype == torch.float32
    assert views.min() >= -1.0 - 1e-6 and views.max() <= 1.0 + 1e-6


def test_full_crop_without_flip_is_just_normalisation() -> None:
    images = _images()
    views = train_views(images, np.arange(8), epoch=0, seed=0, size=12, scale=(1.0, 1.0), ratio=(1.0, 1.0),
                        hflip=0.0, mean=MEAN, std=STD)  # fmt: skip
    expected = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25
    torch.testing.assert_close(views, expected)


def test_always_flip() -> None:
    images = _images()
    views = train_views(images, np.arange(8), epoch=0, seed=0, size=12, scale=(1.0, 1.0), ratio=(1.0, 1.0),
                        hflip=1.0, mean=[0.0], std=[1.0])  # fmt: skip
    expected = torch.from_numpy(images).permute(0, 3, 1, 2).float().flip(-1) / 255
    torch.testing.assert_close(views, expected)


def test_deterministic_for_same_seed_epoch_key() -> None:
    images, keys = _images(), np.arange(100, 108)
    torch.testing.assert_close(_views(images, keys), _views(images, keys))


def test_differs_across_epochs_seeds_and_keys() -> None:
    images, keys = _images(), np.arange(8)
    base = _views(images, keys)
    assert not torch.allclose(base, _views(images, keys, epoch=1))
    assert not torch.allclose(base, _views(images, keys, seed=8))
    same_image = np.repeat(images[:1], 8, axis=0)
    per_key = _views(same_image, keys)
    assert not torch.allclose(per_key[0], per_key[1])


def test_independent_of_batch_order_and_composition() -> None:
    images, keys = _images(), np.arange(50, 58)
    whole = _views(images, keys)
    order = np.random.default_rng(0).permutation(8)
    permuted = _views(images[order], keys[order])
    torch.testing.assert_close(permuted, whole[order])
    torch.testing.assert_close(_views(images[3:5], keys[3:5]), whole[3:5])


def test_crop_params_fit_and_fallback() -> None:
    uniforms = np.random.default_rng(0).random((500, 23))
    params = crop_params(uniforms, height=28, width=20, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3))
    top, left, height, width = params.T
    assert (height >= 1).all() and (width >= 1).all()
    assert (top + height <= 28).all() and (left + width <= 20).all() and (top >= 0).all() and (left >= 0).all()
    # Areas far above the image never fit: torchvision's central-crop fallback, clamped to the ratio range.
    fallback = crop_params(uniforms[:3], height=28, width=20, scale=(5.0, 6.0), ratio=(3 / 4, 4 / 3))
    reference = RandomResizedCrop.get_params(torch.zeros(1, 28, 20), scale=[5.0, 6.0], ratio=[3 / 4, 4 / 3])
    assert fallback.tolist() == [list(reference)] * 3


def test_rejects_mismatched_inputs() -> None:
    with pytest.raises(ValueError, match="keys"):
        _views(_images(), np.arange(3))
    with pytest.raises(ValueError, match="mean"):
        train_views(_images(), np.arange(8), epoch=0, seed=0, size=8, mean=[0.5] * 3, std=[0.5] * 3)
    with pytest.raises(ValueError, match="non-negative"):
        _views(_images(), np.arange(-1, 7))


def test_eval_views_center_crop_geometry() -> None:
    image = np.arange(36, dtype=np.uint8).reshape(1, 6, 6)
    views = eval_views(image, resize=6, crop=4, mean=[0.0], std=[1.0])
    assert views.shape == (1, 1, 4, 4)
    expected = torch.from_numpy(image[:, 1:5, 1:5].astype(np.float32) / 255)[:, None]
    torch.testing.assert_close(views, expected)


def test_eval_views_resizes_shorter_side_then_crops() -> None:
    images = np.full((2, 8, 12, 3), 51, dtype=np.uint8)
    views = eval_views(images, resize=4, crop=4, mean=[0.1] * 3, std=[0.2] * 3)
    assert views.shape == (2, 3, 4, 4)
    torch.testing.assert_close(views, torch.full_like(views, (0.2 - 0.1) / 0.2))


def test_to_uint8_nhwc() -> None:
    assert to_uint8_nhwc(np.zeros((2, 5, 5), dtype=np.uint8)).shape == (2, 5, 5, 1)
    with pytest.raises(ValueError, match="uint8"):
        to_uint8_nhwc(np.zeros((2, 5, 5, 1), dtype=np.float32))


def test_crop_params_distribution_matches_torchvision() -> None:
    torch.manual_seed(0)
    samples = 3000
    ours = crop_params(np.random.default_rng(1).random((samples, 23)), height=28, width=20,
                       scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3))  # fmt: skip
    image = torch.zeros(1, 28, 20)
    theirs = np.array([RandomResizedCrop.get_params(image, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(samples)])
    np.testing.assert_allclose(ours.mean(axis=0), theirs.mean(axis=0), atol=0.6)
    np.testing.assert_allclose(ours.std(axis=0), theirs.std(axis=0), atol=0.6)
