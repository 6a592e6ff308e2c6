"""Method registry: a method name -> the compressed training set it produces, in the benchmark schema.

A method is one function `(config, source dataset) -> datasets.Dataset` and one line in METHODS.
Every set carries an `index` column: the row's position in the source set, a stable sample key
(augmentation seeds, training dynamics and pruning scores all refer to it).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import datasets
import numpy as np

from orchestrator.config import Config

import pyarrow as pa
import pyarrow.parquet as pq

import pyarrow.compute as pc

from orchestrator.data.select import arrow_column, fingerprint, select_per_class, to_benchmark_table
from orchestrator.data.sources import Source, check_images, load_source
from orchestrator.distill_job import DISTILL_METHODS
from orchestrator.errors import ConfigError
from orchestrator.files import atomic_path

MethodFn = Callable[[Config, datasets.Dataset], datasets.Dataset]


def method_full(config: Config, dataset: datasets.Dataset) -> datasets.Dataset:
    """The whole training set (the teacher's and the HLR reference's input)."""
    return dataset


def method_random(config: Config, dataset: datasets.Dataset) -> datasets.Dataset:
    """Seeded uniform choice of exactly IPC images per class."""
    return select_per_class(dataset, require_ipc(config), how="random", seed=config.seed)


def method_first(config: Config, dataset: datasets.Dataset) -> datasets.Dataset:
    """The first IPC images of each class, in source order (distilled or downloaded sets)."""
    return select_per_class(dataset, require_ipc(config), how="first")


METHODS: dict[str, MethodFn] = {"full": method_full, "random": method_random, "first": method_first}
METHODS.update(DISTILL_METHODS)  # sre2l, cda, rded: generated here (docs/protocol.md §Distillation)


def register_method(name: str, fn: MethodFn) -> None:
    METHODS[name] = fn


def require_ipc(config: Config) -> int:
    if config.data.ipc is None:
        raise ConfigError(f"method '{config.data.method}' needs an IPC: pass --ipc N (or method full)")
    return config.data.ipc


def from_template(config: Config) -> bool:
    """True when the cell's set is a published one (data.source_template) rather than made here.

    `data.hub_methods` lists the methods the template provides; the others (full, PCA, ...) are
    computed from the local training set `data.train` (e.g. an ImageNet train folder).
    """
    template, hub = config.data.source_template, config.data.hub_methods
    if not template:
        return False
    return config.data.method in hub if hub is not None else config.data.method != "full"


def method_fn(config: Config) -> MethodFn:
    """Template sources (hub sets per method and IPC) take the first IPC per class; else the registry."""
    name = config.data.method
    if from_template(config):
        return method_first
    _load_plugins()
    if name not in METHODS:
        close = difflib.get_close_matches(name, list(METHODS), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ConfigError(f"unknown method '{name}': {hint}registered methods are {sorted(METHODS)}; "
                          f"for a downloaded set set data.source_template or data.train and method=first")
    return METHODS[name]


def _load_plugins() -> None:
    """Methods defined in pca/ register themselves on import (pruning rules, PCA)."""
    try:
        import pca.methods  # noqa: F401
    except ImportError:
        pass


def source_spec(config: Config) -> str:
    if from_template(config):
        return config.data.source_template.format(method=config.data.method, ipc=config.data.ipc)
    return config.data.train


def load_train_source(config: Config) -> Source:
    return load_source(source_spec(config), config.data.train_split, data_root=config.data_root,
                       image_size=config.data.image_size, mode=config.data.mode, classes=config.data.classes)


def load_val_source(config: Config) -> Source:
    return load_source(config.data.val, config.data.val_split, data_root=config.data_root,
                       image_size=config.data.image_size, mode=config.data.mode, classes=config.data.classes)


def with_index(dataset: datasets.Dataset) -> datasets.Dataset:
    if "index" in dataset.column_names:
        return dataset
    return dataset.add_column("index", np.arange(len(dataset), dtype=np.int64))


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
        write_indexed_parquet(dataset, path)
    return PreparedSet(path, len(dataset), digest, image_bytes(dataset))


def write_indexed_parquet(dataset: datasets.Dataset, path: Path) -> None:
    """The benchmark schema plus the stable `index` key, written atomically."""
    table = to_benchmark_table(dataset)
    if "index" in dataset.column_names:
        table = table.append_column("index", pa.array(dataset["index"], pa.int64()))
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def build_training_set(config: Config, source: Source) -> PreparedSet:
    subset = method_fn(config)(config, with_index(source.dataset))
    ipc = "all" if config.data.ipc is None else config.data.ipc
    return materialize(subset, config.data_root / "sets", f"{config.data.method}-ipc{ipc}",
                       config.data.check_images)


def build_val_set(config: Config, source: Source) -> PreparedSet:
    return materialize(source.dataset, config.data_root / "sets", f"val-{config.data.val_split}", False)
