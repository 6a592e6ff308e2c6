"""The worker's epoch plan (docs/protocol.md §Batch and shuffle): global batch, exact epochs, uniform shuffle."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trainers.batches import (Augment, MemoryBatches, epoch_plan, global_batches, loss_weights,
                              rank_micro_batches, view_index)

AUGMENT = Augment(seed=3, size=8, scale=(0.5, 1.0), ratio=(0.75, 4 / 3), hflip=0.5, mean=(0.5,), std=(0.5,))


def class_ordered_set(classes: int = 10, ipc: int = 50, size: int = 8) -> dict:
    """A compressed set stored class by class (as selection writes it), keys in storage order."""
    labels = np.repeat(np.arange(classes), ipc)
    images = ((np.arange(len(labels))[:, None, None, None] % 251).astype(np.uint8)
              * np.ones((1, size, size, 1), np.uint8))
    return {"image": images, "label": labels, "key": np.arange(len(labels)) * 7 + 1}


def rank_steps(arrays, *, world: int, epoch: int = 0, batch_size: int = 128, accum: int = 1, grid: int = 1,
               tile_views: str = "image"):
    memory = MemoryBatches(arrays, grid=grid, tile_views=tile_views, augment=AUGMENT)
    per_rank, counts = [], None
    for rank in range(world):
        steps, counts = memory.steps(epoch, batch_size=batch_size, world=world, rank=rank, accum=accum)
        per_rank.append(list(steps))
    return per_rank, counts


@pytest.mark.parametrize("world", [1, 2, 3])
def test_global_batch_is_the_same_at_any_worker_count(world):
    per_rank, counts = rank_steps(class_ordered_set(), world=world)
    assert counts.steps == math.ceil(500 / 128) and counts.samples == 500
    assert {len(steps) for steps in per_rank} == {counts.steps}  # every rank steps together
    for step in range(counts.steps):
        global_size = sum(len(micro.label) for steps in per_rank for micro in steps[step])
        assert global_size == (128 if step < 3 else 500 - 3 * 128)
        sizes = [len(steps[step][0].label) for steps in per_rank]
        assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("world,accum", [(1, 1), (2, 1), (2, 2), (3, 2)])
def test_every_view_is_used_exactly_once_per_epoch_across_ranks(world, accum):
    arrays = class_ordered_set()
    per_rank, _ = rank_steps(arrays, world=world, accum=accum)
    keys = np.concatenate([micro.key.numpy() for steps in per_rank for step in steps for micro in step])
    assert sorted(keys.tolist()) == sorted(arrays["key"].tolist())


def test_epoch_order_depends_on_seed_and_epoch_only():
    first = [b.tolist() for b in epoch_plan(500, seed=1, epoch=4, batch_size=128, world=1, accum=1)]
    assert first == [b.tolist() for b in epoch_plan(500, seed=1, epoch=4, batch_size=128, world=1, accum=1)]
    assert first != [b.tolist() for b in epoch_plan(500, seed=1, epoch=5, batch_size=128, world=1, accum=1)]
    assert first != [b.tolist() for b in epoch_plan(500, seed=2, epoch=4, batch_size=128, world=1, accum=1)]
    # Two workers cut the very same global batches that one worker trains on.
    one = rank_steps(class_ordered_set(), world=1)[0][0]
    two = rank_steps(class_ordered_set(), world=2)[0]
    for step, micro in enumerate(one):
        joined = np.concatenate([steps[step][0].key.numpy() for steps in two])
        assert joined.tolist() == micro[0].key.tolist()


def expected_distinct_classes(classes: int, per_class: int, draws: int) -> float:
    """E[#classes] in `draws` samples without replacement from `classes` x `per_class` items."""
    total = classes * per_class
    missing_one = math.comb(total - per_class, draws) / math.comb(total, draws)
    return classes * (1 - missing_one)


def test_class_mix_per_rank_batch_matches_a_uniform_shuffle():
    """IPC 50 x 10 classes stored class by class, 2 workers, global batch 128 (64 per rank).

    A uniform shuffle gives 9.99 distinct classes per 64-image batch; a per-worker split of the
    class-ordered set would give each rank about half of the classes.
    """
    per_rank, _ = rank_steps(class_ordered_set(), world=2, epoch=1)
    expected = expected_distinct_classes(10, 50, 64)
    for steps in per_rank:
        full = [len(np.unique(step[0].label.numpy())) for step in steps if len(step[0].label) == 64]
        assert len(full) >= 3
        assert np.mean(full) >= expected - 0.35, (full, expected)


def test_a_tiny_last_batch_joins_the_one_before():
    batches = global_batches(np.arange(130), batch_size=128, min_size=4)
    assert [len(b) for b in batches] == [130]
    assert [len(b) for b in global_batches(np.arange(140), batch_size=128, min_size=4)] == [128, 12]
    with pytest.raises(ValueError, match="train.workers"):
        global_batches(np.arange(3), batch_size=128, min_size=4)


def test_loss_weights_make_the_ddp_mean_the_global_mean():
    batch = np.arange(13)
    world = 2
    per_sample = np.random.default_rng(0).random(13)
    ddp_mean = 0.0
    for rank in range(world):
        micro = rank_micro_batches(batch, world=world, rank=rank, accum=2)
        weights = loss_weights(micro, global_size=len(batch), world=world)
        ddp_mean += sum(w * per_sample[m].mean() for m, w in zip(micro, weights)) / world
    assert ddp_mean == pytest.approx(per_sample.mean())


def test_pca_tile_views_per_image_or_per_tile():
    keys = np.array([5, 9, 11])
    position, tile, view_keys = view_index(keys, tiles=4, mode="tile", seed=0, epoch=0)
    assert len(position) == 12
    assert sorted(view_keys.tolist()) == sorted((keys[:, None] * 4 + np.arange(4)).ravel().tolist())
    position, tile, view_keys = view_index(keys, tiles=4, mode="image", seed=0, epoch=0)
    assert position.tolist() == [0, 1, 2] and set(tile.tolist()) <= {0, 1, 2, 3}
    drawn = {tuple(view_index(keys, tiles=4, mode="image", seed=0, epoch=e)[1].tolist()) for e in range(8)}
    assert len(drawn) > 1  # a fresh tile each epoch
    arrays = class_ordered_set(classes=2, ipc=8, size=16)
    _, per_tile = rank_steps(arrays, world=1, batch_size=8, grid=2, tile_views="tile")
    _, per_image = rank_steps(arrays, world=1, batch_size=8, grid=2, tile_views="image")
    assert (per_tile.samples, per_tile.steps) == (64, 8) and (per_image.samples, per_image.steps) == (16, 2)


def test_views_are_tile_crops_of_the_requested_size():
    arrays = class_ordered_set(classes=2, ipc=4, size=16)
    per_rank, _ = rank_steps(arrays, world=1, batch_size=4, grid=2, tile_views="tile")
    micro = per_rank[0][0][0]
    assert micro.image.shape == (4, 1, 8, 8) and micro.image.dtype == torch.float32
