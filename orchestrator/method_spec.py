"""What a cell's config asks of its method: the source set it draws from and the IPC it must give.

Shared by the registry (`orchestrator.methods`) and the methods defined elsewhere (`pca/`,
`orchestrator.distill_job`), which import this module and never the registry. Every set carries
an `index` column: the row's position in the source set, a stable sample key (augmentation seeds,
training dynamics and pruning scores all refer to it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import datasets
import numpy as np

from orchestrator.config import Config
from orchestrator.data.sources import Source, load_source
from orchestrator.errors import ConfigError

MethodFn = Callable[[Config, datasets.Dataset], datasets.Dataset]


def one_tile(config: Config) -> int:
    return 1


def no_teachers(config: Config) -> list[Config]:
    return []


def no_generation_cost(config: Config) -> dict[str, float]:
    return {}


def accepts_any(config: Config) -> None:
    return None


def keeps_every_label(config: Config) -> float:
    return 1.0


@dataclass(frozen=True)
class MethodSpec:
    """A method: the function that makes its set, and what the rest of the system needs to know
    about that set. Called like its function: `spec(config, dataset)`.

    needs_dynamics: it reads pruning scores from the teacher runs' training dynamics;
    reversible: `prune.reverse` makes it a different (easy-first) method;
    tile_grid: each stored image is tile_grid x tile_grid source images (1: a plain image); the
        loop's crops stay inside one tile;
    teachers: the configs of extra teachers its sets are made with (a distillation teacher), trained
        by the driver before cells run (`teacher_job.ensure_prerequisites`), never by a sweep trial;
    generation_cost: metrics of what making the cell's (already made) set cost, logged with the cell
        (a distilled set: `distill/generation_s`, `distill/generation_images`);
    check: raises ConfigError for settings the method refuses, before any cell of a sweep trains;
    soft_label_ratio: the fraction of the soft-label pool its soft cells keep (LPLD's label pruning;
        1: every label), which the loop reuses and the storage column counts.
    """

    make: MethodFn
    needs_dynamics: bool = False
    reversible: bool = False
    tile_grid: Callable[[Config], int] = one_tile
    teachers: Callable[[Config], list[Config]] = no_teachers
    generation_cost: Callable[[Config], dict[str, float]] = no_generation_cost
    check: Callable[[Config], None] = accepts_any
    soft_label_ratio: Callable[[Config], float] = keeps_every_label

    def __call__(self, config: Config, dataset: datasets.Dataset) -> datasets.Dataset:
        return self.make(config, dataset)


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
