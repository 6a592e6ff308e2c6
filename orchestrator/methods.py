"""Method registry: a method name -> the compressed training set it produces, in the benchmark schema.

A method is one function `(config, source dataset) -> datasets.Dataset` in a `MethodSpec` (what it
needs and what its set holds), and one entry in METHODS. The registry
imports the methods defined in `pca/` and `orchestrator.distill_job`; they import only
`orchestrator.method_spec`, never this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import pyarrow.compute as pc

from orchestrator.config import Config
from orchestrator.data.select import (ClassTooSmall, arrow_column, class_id_array, fingerprint, select_per_class,
                                      write_parquet)
from orchestrator.data.sources import Source, check_images
from orchestrator.distill_job import DISTILL_METHODS, to_dataset
from orchestrator.errors import ConfigError, did_you_mean
from orchestrator.method_spec import MethodSpec, from_template, require_ipc, with_index
from pca.methods import PRUNE_METHODS


def method_full(config: Config, dataset: datasets.Dataset) -> datasets.Dataset:
    """The whole training set (the teacher's and the HLR reference's input)."""
    return dataset


def method_random(config: Config, dataset: datasets.Dataset) -> datasets.Dataset:
    """Seeded uniform choice of exactly IPC images per class."""
    return select_per_class(dataset, require_ipc(config), how="random", seed=config.seed)


def method_first(config: Config, dataset: datasets.Dataset) -> datasets.Dataset:
    """The first IPC images of each class, in source order (distilled or downloaded sets)."""
    return select_per_class(dataset, require_ipc(config), how="first")


def method_noise(config: Config, dataset: datasets.Dataset) -> datasets.Dataset:
    """IPC images per class of seeded Gaussian noise with the data's mean and std (no image content):
    with soft labels, what a teacher's outputs teach without any real image (the study's "pure noise")."""
    ipc, size, channels = require_ipc(config), config.data.image_size, config.in_chans
    classes = np.unique(class_id_array(dataset))
    rng = np.random.default_rng([config.seed, 7])
    mean = np.resize(np.asarray(config.data.mean, dtype=np.float64), channels)[:, None, None]
    std = np.resize(np.asarray(config.data.std, dtype=np.float64), channels)[:, None, None]
    pixels = rng.normal(mean, std, size=(classes.size * ipc, channels, size, size))
    images = np.clip(np.rint(pixels * 255), 0, 255).astype(np.uint8)
    return to_dataset(images, np.repeat(classes, ipc), "noise", config.data.mode)


# The one table of methods: made here, pruning rules and PCA (pca/), distillation (distill_job).
METHODS: dict[str, MethodSpec] = {
    "full": MethodSpec(method_full), "random": MethodSpec(method_random),
    "first": MethodSpec(method_first), "noise": MethodSpec(method_noise),
    **PRUNE_METHODS, **DISTILL_METHODS,
}


def method_for(config: Config) -> MethodSpec:
    """Template sources (hub sets per method and IPC) take the first IPC per class; else the registry."""
    name = config.data.method
    if from_template(config):
        return METHODS["first"]
    if name not in METHODS:
        raise ConfigError(f"unknown method '{name}': {did_you_mean(name, METHODS)}"
                          f"registered methods are {sorted(METHODS)}; "
                          f"for a downloaded set set data.source_template or data.train and method=first")
    return METHODS[name]


def needs_dynamics(config: Config) -> bool:
    """Whether the cell's set is chosen by scores from training dynamics (template sets never are)."""
    return not from_template(config) and method_for(config).needs_dynamics


def tile_grid(config: Config) -> int:
    """The side of the tile grid of each stored image of the cell's set (PCA: prune.pca_grid; else 1)."""
    return method_for(config).tile_grid(config)


def generation_cost(config: Config) -> dict[str, float]:
    """What making the cell's set cost, as metrics (distilled sets: seconds and images; others: none)."""
    return {} if from_template(config) else method_for(config).generation_cost(config)


def soft_label_ratio(config: Config) -> float:
    """The fraction of the soft-label pool the cell keeps: 1 for hard cells and published (template) sets,
    else what its method says (LPLD: distill.label_keep_ratio)."""
    if config.label_mode != "soft" or from_template(config):
        return 1.0
    return method_for(config).soft_label_ratio(config)


def soft_label_bytes(config: Config, num_views: int, num_classes: int) -> int:
    """What storing the cell's soft labels offline would cost (fp16): a teacher output per view per epoch,
    or, for a pruned pool, per view of its kept batches."""
    if config.label_mode != "soft":
        return 0
    ratio = soft_label_ratio(config)
    if ratio >= 1:
        return config.schedule.epochs * num_views * num_classes * 2
    from trainers.batches import label_pool_views

    min_size = max(1, config.train.workers) * config.train.grad_accum
    views = label_pool_views(num_views, batch_size=config.train.batch_size, min_size=min_size,
                             epochs=config.schedule.epochs, ratio=ratio)
    return views * num_classes * 2


def method_label(config: Config) -> str:
    """The method as tables show it: easy-first (reversed) pruning rules are their own method, and a
    sweep grid's `variant` (an ablation's setting) follows the method: "pca (prune only)"."""
    method = config.data.method
    reversed_rule = config.prune.reverse and method in METHODS and METHODS[method].reversible
    label = f"{method}-easy" if reversed_rule else method
    return f"{label} ({config.variant})" if config.variant else label


@dataclass(frozen=True)
class PreparedSet:
    """A split written in the benchmark schema, ready for Ray Data."""

    path: Path
    num_rows: int
    fingerprint: str
    image_bytes: int


def image_bytes(dataset: datasets.Dataset) -> int:
    """Stored size of the set's encoded images (selections applied)."""
    column = arrow_column(dataset, "image").combine_chunks()
    return int(pc.sum(pc.binary_length(column.field("bytes"))).as_py() or 0)


def materialize(dataset: datasets.Dataset, directory: Path, name: str, check: bool) -> PreparedSet:
    """Write a split once per fingerprint (a cache shared by every cell that uses the same images)."""
    digest = fingerprint(dataset)
    path = directory / f"{name}-{digest}" / "data.parquet"
    if not path.exists():
        if check:
            check_images(dataset)
        write_parquet(dataset, path, keep_index=True)
    return PreparedSet(path, len(dataset), digest, image_bytes(dataset))


def build_training_set(config: Config, source: Source) -> PreparedSet:
    try:
        subset = method_for(config)(config, with_index(source.dataset))
    except ClassTooSmall as exc:  # the method saw class ids; the source knows their names
        raise exc.named(source.classes) from exc
    ipc = "all" if config.data.ipc is None else config.data.ipc
    return materialize(subset, config.data_root / "sets", f"{config.data.method}-ipc{ipc}",
                       config.data.check_images and not source.prepared_here)  # decoding 60k images: ~5 s


def build_val_set(config: Config, source: Source) -> PreparedSet:
    return materialize(source.dataset, config.data_root / "sets", f"val-{config.data.val_split}", False)
