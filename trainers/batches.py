"""One epoch of training batches inside a Ray Train worker (docs/protocol.md §Batch and shuffle).

Owns the sampling contract that makes a number mean one protocol at any worker count:
- `train.batch_size` is the GLOBAL batch: each optimizer step consumes `batch_size` views split
  across the ranks (per rank = global / world; an indivisible batch gives the first ranks one view
  more, and the loss weights below keep the step's gradient the mean over the global batch);
  `train.grad_accum` splits each rank's part into micro-batches, it never enlarges the batch.
- Every view of the training set is used exactly once per epoch across ranks: the whole set is
  permuted uniformly, seeded by (seed, epoch) only, and cut into global batches; a last batch too
  small to give every rank and micro-batch a view is merged into the one before it.
- A compressed set small enough to hold in memory arrives decoded (uint8 NHWC, sorted by key)
  from the object store; larger sets stream from a Ray Data shard (`stream_steps`).
- PCA's Augment input: a stored image holding grid x grid tiles gives either one view per tile
  ("tile") or one view of a tile drawn per (seed, epoch, image) ("image"); crops stay inside
  the tile so a view never mixes two combined images.
- A pruned soft-label pool (LPLD, ``label_ratio`` < 1): the labels a full run would store are its
  epochs x steps batches (views, mix and teacher outputs); only the first int(ratio x total) are
  kept, and each step of each epoch trains on one of them drawn uniformly, seeded by (seed, epoch).
  A kept batch is rebuilt exactly (its epoch's order and views, its mix reseeded per batch), so the
  teacher's outputs on it are the stored labels.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterator

import numpy as np
import torch

from trainers.augment import train_views

TILE_VIEW_MODES = ("image", "tile")


@dataclass(frozen=True)
class Augment:
    """What `train_views` needs besides the images: the protocol's crop, flip and normalisation."""

    seed: int
    size: int
    scale: tuple[float, float]
    ratio: tuple[float, float]
    hflip: float
    mean: tuple[float, ...]
    std: tuple[float, ...]


def augment_settings(config) -> Augment:
    """The training views a protocol config asks for (RandomResizedCrop, flip, normalisation)."""
    return Augment(seed=config.seed, size=config.model.input_size, scale=tuple(config.augment.scale),
                   ratio=tuple(config.augment.ratio), hflip=config.augment.hflip,
                   mean=tuple(config.data.mean), std=tuple(config.data.std))


@dataclass(frozen=True)
class MicroBatch:
    """Views for one forward/backward; `weight` scales its mean loss (see `loss_weights`)."""

    image: torch.Tensor
    label: torch.Tensor
    key: torch.Tensor
    weight: float
    mix_seed: int | None = None  # reseed the mix before this batch (a stored batch of a pruned label pool)


@dataclass(frozen=True)
class StepCounts:
    """Global figures of one epoch: optimizer steps and views seen across all ranks."""

    steps: int
    samples: int


# ------------------------------------------------------------------ the epoch plan (every rank alike)


def epoch_order(num_views: int, *, seed: int, epoch: int) -> np.ndarray:
    """A uniform permutation of all views, the same on every rank: seeded by (seed, epoch) only."""
    return np.random.default_rng([seed, epoch]).permutation(num_views)


def global_batches(order: np.ndarray, *, batch_size: int, min_size: int) -> list[np.ndarray]:
    """Cut the permutation into global batches; a last one under `min_size` joins the one before."""
    batches = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
    if len(batches) > 1 and len(batches[-1]) < min_size:
        tail = batches.pop()
        batches[-1] = np.concatenate([batches[-1], tail])
    if not batches or len(batches[-1]) < min_size:
        raise ValueError(f"the training set has {len(order)} views, fewer than train.workers x "
                         f"train.grad_accum = {min_size}: use fewer workers or less accumulation")
    return batches


def rank_micro_batches(batch: np.ndarray, *, world: int, rank: int, accum: int) -> list[np.ndarray]:
    """This rank's part of a global batch (contiguous, sizes differ by at most one), in micro-batches."""
    part = np.array_split(batch, world)[rank]
    return np.array_split(part, accum)


def chunk_slices(total: int, chunk: int) -> Iterator[tuple[slice, float]]:
    """(slice, share of `total`) of each run of `chunk` views of a micro-batch (0: the whole one):
    the chunks' mean losses weighted by their shares sum to the micro-batch's mean loss."""
    size = chunk or max(total, 1)
    for start in range(0, total, size):
        yield slice(start, start + size), (min(start + size, total) - start) / total


def loss_weights(micro: list[np.ndarray], *, global_size: int, world: int) -> list[float]:
    """Weights w so that DDP's mean over ranks of sum(w * mean loss) is the mean over the global batch."""
    return [len(m) * world / global_size for m in micro]


def epoch_plan(num_views: int, *, seed: int, epoch: int, batch_size: int, world: int,
               accum: int) -> list[np.ndarray]:
    order = epoch_order(num_views, seed=seed, epoch=epoch)
    return global_batches(order, batch_size=batch_size, min_size=world * accum)


# ------------------------------------------------------------------ a pruned soft-label pool (LPLD)


def label_pool_size(epochs: int, steps: int, ratio: float) -> int:
    """How many of the epochs x steps stored label batches a pool pruned to `ratio` keeps: the first
    int(ratio x total), at least one (LPLD ``train_FKD_label_pruning_batch.py``:
    ``pool[:int((1 - prune_ratio) * total_steps)]``)."""
    return max(1, int(ratio * epochs * steps + 1e-9))


def label_pool_views(num_views: int, *, batch_size: int, min_size: int, epochs: int, ratio: float) -> int:
    """Views whose soft labels a pruned pool stores: the sizes of its batches summed (ratio 1: every view
    of every epoch)."""
    sizes = [len(b) for b in global_batches(np.arange(num_views), batch_size=batch_size, min_size=min_size)]
    full, rest = divmod(label_pool_size(epochs, len(sizes), ratio), len(sizes))
    return full * num_views + sum(sizes[:rest])


def pooled_batches(*, seed: int, epoch: int, steps: int, pool: int) -> list[tuple[int, int]]:
    """The stored (epoch, step) batches epoch `epoch` trains on: one per step, drawn uniformly with
    replacement from the pool's `pool` batches, stored epoch by epoch (LPLD's random batch_to_epoch)."""
    draws = np.random.default_rng([seed, epoch, 7]).integers(0, pool, size=steps)
    return [divmod(int(draw), steps) for draw in draws.tolist()]


# ------------------------------------------------------------------ views of stored images


def tile_grid_boxes(grid: int, size: int) -> list[tuple[int, int, int, int]]:
    """(top, left, height, width) of the grid x grid tiles of a stored image; all cut to one size."""
    from pca.combine import tile_boxes

    boxes = tile_boxes(grid, size)
    height = min(h for _, _, h, _ in boxes)
    width = min(w for _, _, _, w in boxes)
    return [(top, left, height, width) for top, left, _, _ in boxes]


def split_tiles(images: np.ndarray, grid: int) -> np.ndarray:
    """uint8 [N, H, W, C] -> [N, grid * grid, h, w, C] (grid 1: one tile, the image itself)."""
    if grid == 1:
        return images[:, None]
    return np.stack([images[:, top:top + h, left:left + w]
                     for top, left, h, w in tile_grid_boxes(grid, images.shape[1])], axis=1)


def mix_bits(keys: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """A well-mixed uint64 per key for (seed, epoch): SplitMix64's finaliser, vectorised."""
    with np.errstate(over="ignore"):
        x = keys.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        x += np.uint64((seed * 1_000_003 + epoch) % 2**63) * np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(31)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(29)
    return x


def view_index(keys: np.ndarray, *, tiles: int, mode: str, seed: int, epoch: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image position, tile, view key) of every view of this epoch.

    "tile": each stored image gives `tiles` views; "image": one view per stored image, of a tile
    drawn from (seed, epoch, image key). View keys are image key * tiles + tile: a view's crop
    depends only on (seed, epoch, view key), whichever rank or batch it lands in.
    """
    if mode not in TILE_VIEW_MODES:
        raise ValueError(f"tile view mode {mode!r}: choose one of {TILE_VIEW_MODES}")
    keys = np.asarray(keys, dtype=np.int64)
    count = len(keys)
    if tiles == 1 or mode == "image":
        position = np.arange(count)
        tile = (mix_bits(keys, seed, epoch) % np.uint64(tiles)).astype(np.int64)
    else:
        position = np.repeat(np.arange(count), tiles)
        tile = np.tile(np.arange(tiles), count)
    return position, tile, keys[position] * tiles + tile


def micro_batch(tiles: np.ndarray, labels: np.ndarray, position: np.ndarray, tile: np.ndarray,
                view_keys: np.ndarray, epoch: int, augment: Augment, weight: float) -> MicroBatch:
    """Augmented views of the given (image position, tile) pairs with their labels and keys."""
    a = augment
    views = train_views(tiles[position, tile], view_keys, epoch=epoch, seed=a.seed, size=a.size, scale=a.scale,
                        ratio=a.ratio, hflip=a.hflip, mean=a.mean, std=a.std)
    return MicroBatch(views, torch.from_numpy(np.ascontiguousarray(labels[position])),
                      torch.from_numpy(np.ascontiguousarray(view_keys)), weight)


class MemoryBatches:
    """Epochs over a decoded in-memory set: {"image", "label", "key"} arrays sorted by key."""

    def __init__(self, arrays: dict, *, grid: int, tile_views: str, augment: Augment, label_ratio: float = 1.0,
                 epochs: int = 1):
        self.tiles = split_tiles(np.asarray(arrays["image"]), grid)
        self.labels = np.asarray(arrays["label"], dtype=np.int64)
        self.keys = np.asarray(arrays["key"], dtype=np.int64)
        self.tile_views = tile_views
        self.augment = augment
        self.label_ratio, self.epochs = label_ratio, epochs

    def view_index(self, epoch: int):
        return view_index(self.keys, tiles=self.tiles.shape[1], mode=self.tile_views,
                          seed=self.augment.seed, epoch=epoch)

    def steps(self, epoch: int, *, batch_size: int, world: int, rank: int, accum: int
              ) -> tuple[Iterator[list[MicroBatch]], StepCounts]:
        """This rank's optimizer steps of `epoch` (each a list of micro-batches) and the global counts."""
        layouts = {}  # stored epoch -> (view index, plan): one epoch's, or those a pruned label pool reuses

        def layout(stored_epoch: int):
            if stored_epoch not in layouts:
                position, tile, view_keys = self.view_index(stored_epoch)
                layouts[stored_epoch] = (position, tile, view_keys, epoch_plan(
                    len(position), seed=self.augment.seed, epoch=stored_epoch, batch_size=batch_size, world=world,
                    accum=accum))
            return layouts[stored_epoch]

        picks = self.picks(epoch, len(layout(epoch)[3]))
        counts = StepCounts(steps=len(picks), samples=int(sum(len(layout(e)[3][s]) for e, s in picks)))

        def generate() -> Iterator[list[MicroBatch]]:
            for stored_epoch, step in picks:
                position, tile, view_keys, plan = layout(stored_epoch)
                micro = rank_micro_batches(plan[step], world=world, rank=rank, accum=accum)
                weights = loss_weights(micro, global_size=len(plan[step]), world=world)
                mix_seed = self.mix_seed(stored_epoch, step, rank)
                yield [replace(micro_batch(self.tiles, self.labels, position[m], tile[m], view_keys[m], stored_epoch,
                                           self.augment, w), mix_seed=mix_seed) for m, w in zip(micro, weights)]

        return generate(), counts

    def picks(self, epoch: int, steps: int) -> list[tuple[int, int]]:
        """The (stored epoch, step) batches of `epoch`: its own, or draws from a pruned label pool."""
        if self.label_ratio >= 1:
            return [(epoch, step) for step in range(steps)]
        pool = label_pool_size(self.epochs, steps, self.label_ratio)
        return pooled_batches(seed=self.augment.seed, epoch=epoch, steps=steps, pool=pool)

    def mix_seed(self, stored_epoch: int, step: int, rank: int) -> int | None:
        if self.label_ratio >= 1:
            return None  # the loop's per-epoch seeding
        return int(np.random.default_rng([self.augment.seed, stored_epoch, step, rank]).integers(2**32))


# ------------------------------------------------------------------ sets too large for memory


def stream_steps(shard, epoch: int, *, batch_size: int, world: int, accum: int, grid: int, tile_views: str,
                 augment: Augment, shuffle_buffer: int) -> Iterator[list[MicroBatch]]:
    """Optimizer steps from a Ray Data shard (sets over the in-memory limit, e.g. full ImageNet).

    Each rank reads batch_size / world stored images per step from its equal split of the data;
    order is Ray Data's block order with a local shuffle buffer seeded by (seed, epoch), which is
    close to, not exactly, a uniform shuffle (docs/protocol.md §Deviations).
    """
    a = augment
    rows = max(1, batch_size // (world * (grid * grid if tile_views == "tile" else 1)))
    batches = shard.iter_batches(batch_size=rows, batch_format="numpy", local_shuffle_buffer_size=shuffle_buffer,
                                 local_shuffle_seed=a.seed * 100_003 + epoch, drop_last=False)
    for batch in batches:
        tiles = split_tiles(batch["image"], grid)
        labels = np.asarray(batch["label"], dtype=np.int64)
        position, tile, view_keys = view_index(np.asarray(batch["key"]), tiles=tiles.shape[1], mode=tile_views,
                                               seed=a.seed, epoch=epoch)
        micro = [m for m in np.array_split(np.arange(len(position)), accum) if len(m)]
        yield [micro_batch(tiles, labels, position[m], tile[m], view_keys[m], epoch, a, len(m) / len(position))
               for m in micro]
