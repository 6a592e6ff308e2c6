"""Sweep definitions: a YAML naming protocols, axes and an optional search -> the grid of cells.

    name: quickstart
    protocols: {hard: ../fmnist-hard.yaml, soft: ../fmnist-soft.yaml}   # or `protocol: file`
    set: {schedule.epochs: 20}                    # overrides for every cell
    axes: {method: [random, el2n], ipc: [10, 50], label_mode: [hard], model: [convnet3], seed: [0, 1]}
    search:                                        # optional: tune hyperparameters inside each cell
      algorithm: grid | random | optuna
      num_samples: 4
      metric: val/top1
      mode: max
      space: {optim.lr: {loguniform: [1.0e-4, 1.0e-2]}, mix.cutmix_alpha: {choice: [0.5, 1.0]}}
      scheduler: {type: asha, grace_period: 2, reduction_factor: 2}
    resources: {max_concurrent: 1}
"""

from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.config import (Config, anchor_paths, apply_overrides, cell_name, config_from_dict, read_yaml,
                                 read_yaml_file, unknown_key_message)
from orchestrator.errors import ConfigError
from trainers.metric_names import VAL_TOP1

AXES = {"method": "data.method", "ipc": "data.ipc", "label_mode": "label_mode", "model": "model.name",
        "seed": "seed"}
TOP_KEYS = {"name", "experiment", "protocol", "protocols", "set", "axes", "exclude", "search", "resources",
            "output_dir"}
SEARCH_KEYS = {"algorithm", "num_samples", "metric", "mode", "space", "scheduler"}
RESOURCE_KEYS = {"max_concurrent", "trial_cpus"}
SPACE_KINDS = {"choice", "grid", "uniform", "loguniform", "randint"}


@dataclass(frozen=True)
class Search:
    algorithm: str = "grid"
    num_samples: int = 1
    metric: str = VAL_TOP1  # the epoch metric Tune (and ASHA) compare trials by
    mode: str = "max"
    space: dict = field(default_factory=dict)
    scheduler: dict | None = None


@dataclass(frozen=True)
class Sweep:
    name: str
    experiment: str
    cells: list[Config]
    search: Search | None
    max_concurrent: int
    trial_cpus: float
    source: dict


def load_sweep(path: str | Path, overrides: dict[str, Any] | None = None) -> Sweep:
    path = Path(path)
    raw = read_sweep_yaml(path)
    for key in raw:
        if key not in TOP_KEYS:
            raise ConfigError(unknown_key_message(str(key), sorted(TOP_KEYS)) + f" (in sweep {path})")
    protocols = protocol_files(raw, path)
    common = dict(raw.get("set") or {})
    if raw.get("output_dir"):
        common["output_dir"] = raw["output_dir"]
    common.update(overrides or {})
    name = raw.get("name") or path.stem
    common.setdefault("experiment", raw.get("experiment") or name)
    cells = expand_cells(protocols, raw.get("axes") or {}, common, raw.get("exclude") or [])
    check_cells(cells)
    resources = raw.get("resources") or {}
    for key in resources:
        if key not in RESOURCE_KEYS:
            raise ConfigError(unknown_key_message(f"resources.{key}", [f"resources.{k}" for k in RESOURCE_KEYS]))
    return Sweep(name=name, experiment=common["experiment"], cells=cells,
                 search=parse_search(raw.get("search")), max_concurrent=int(resources.get("max_concurrent", 1)),
                 trial_cpus=float(resources.get("trial_cpus", 0.01)), source=raw)


def check_cells(cells: list[Config]) -> None:
    """Every cell's method exists and takes its settings, before the first cell trains (and in `--dry-run`);
    normalisation notes."""
    from orchestrator.data.sources import normalisation_warning
    from orchestrator.methods import method_for

    for config in cells:
        try:
            method_for(config).check(config)
        except ConfigError as exc:
            raise ConfigError(f"cell {cell_name(config)}: {exc}") from exc
    for warning in dict.fromkeys(filter(None, map(normalisation_warning, cells))):
        print(warning, file=sys.stderr, flush=True)


def read_sweep_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"sweep file {path} does not exist: pass one from configs/sweeps/")
    raw = read_yaml_file(path, "sweep file") or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"sweep file {path} must be a mapping")
    return raw


def protocol_files(raw: dict, path: Path) -> dict[str, Path]:
    """label mode -> protocol file; a single `protocol:` serves every label mode."""
    if "protocols" in raw:
        return {mode: path.parent / file for mode, file in raw["protocols"].items()}
    if "protocol" in raw:
        return {"*": path.parent / raw["protocol"]}
    raise ConfigError(f"sweep {path} names no protocol: add `protocol: ../fmnist-hard.yaml` "
                      f"or `protocols: {{hard: ..., soft: ...}}`")


def expand_cells(protocols: dict[str, Path], axes: dict | list[dict], common: dict,
                 exclude: list[dict] | None = None) -> list[Config]:
    """The grid (axes in the order of AXES), as validated Configs.

    `axes` may be a list of grids (their union: e.g. methods published at different IPCs), each
    with its own `set:` of overrides on top of the sweep's (e.g. prune.reverse for one rule only);
    `exclude` drops combinations matching every key of one entry (e.g. {method: pca, label_mode: soft}).
    """
    grids = axes if isinstance(axes, list) else [axes]
    trees = {mode: read_yaml(file) for mode, file in protocols.items()}
    cells, seen = [], set()
    for grid in grids:
        for chosen in grid_points(grid):
            if any(all(chosen.get(k) == v for k, v in rule.items()) for rule in exclude or []):
                continue
            tree = pick_protocol(trees, chosen.get("label_mode"))
            overrides = {**common, **(grid.get("set") or {}), **{AXES[axis]: value for axis, value in chosen.items()}}
            config = anchor_paths(config_from_dict(apply_overrides(tree, overrides)))
            if cell_name(config) not in seen:
                seen.add(cell_name(config))
                cells.append(config)
    return cells


def grid_points(grid: dict) -> list[dict]:
    for axis in grid:
        if axis not in AXES and axis != "set":
            raise ConfigError(unknown_key_message(f"axes.{axis}", [f"axes.{a}" for a in [*AXES, "set"]]))
    names = [axis for axis in AXES if axis in grid]
    return [dict(zip(names, combo)) for combo in itertools.product(*(as_list(grid[a]) for a in names))]


def pick_protocol(trees: dict[str, dict], label_mode: str | None) -> dict:
    if "*" in trees:
        return trees["*"]
    if label_mode is None:
        if len(trees) == 1:
            return next(iter(trees.values()))
        raise ConfigError("sweep has several protocols: add a label_mode axis to choose between them")
    if label_mode not in trees:
        raise ConfigError(f"sweep has no protocol for label mode '{label_mode}': add it under protocols:")
    return trees[label_mode]


def as_list(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def parse_search(raw: dict | None) -> Search | None:
    if not raw:
        return None
    for key in raw:
        if key not in SEARCH_KEYS:
            raise ConfigError(unknown_key_message(f"search.{key}", [f"search.{k}" for k in SEARCH_KEYS]))
    search = Search(**raw)
    if search.algorithm not in {"grid", "random", "optuna"}:
        raise ConfigError(f"search.algorithm '{search.algorithm}': choose grid, random or optuna")
    for key, spec in search.space.items():
        if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in SPACE_KINDS:
            raise ConfigError(f"search.space.{key} must be one of {sorted(SPACE_KINDS)}, e.g. "
                              f"{{loguniform: [1.0e-4, 1.0e-2]}}; got {spec!r}")
    if search.scheduler and search.scheduler.get("type", "asha") != "asha":
        raise ConfigError("search.scheduler.type: only asha is supported")
    return search


def trial_resources(cell: Config, driver_cpus: float, gpu: bool) -> dict[str, float]:
    """What one Tune trial reserves. An in-process cell (train.workers = 0, Ray Train local mode)
    trains inside its trial, which then holds the cell's CPUs (and a GPU); a worker-group cell's
    trial is only a driver, its Ray Train workers reserve their own resources."""
    if cell.train.workers > 0:
        return {"CPU": driver_cpus}
    return {"CPU": max(cell.train.cpus_per_worker, driver_cpus), **({"GPU": 1} if gpu else {})}


def placement(config: Config) -> str:
    if config.train.workers == 0:
        return f"in-process x{config.train.cpus_per_worker:g} CPU"
    return f"workers={config.train.workers}x{config.train.cpus_per_worker:g} CPU"


def describe(sweep: Sweep) -> str:
    """The `--dry-run` listing: every cell and what the sweep needs."""
    lines = [f"sweep {sweep.name}: {len(sweep.cells)} cells -> MLflow experiment '{sweep.experiment}'"]
    for config in sweep.cells:
        gpu = "GPU" if config.train.use_gpu else "CPU"
        variant = f"  variant={config.variant}" if config.variant else ""
        lines.append(f"  {cell_name(config):55s} protocol={config.name:14s} epochs={config.schedule.epochs} "
                     f"{placement(config)} ({gpu}){variant}")
    if sweep.search:
        lines.append(f"  search: {sweep.search.algorithm} x {sweep.search.num_samples} per cell over "
                     f"{sorted(sweep.search.space)}; scheduler={sweep.search.scheduler}")
    first = sweep.cells[0] if sweep.cells else None
    if first is not None:
        per_cell = max(first.train.workers, 1) * first.train.cpus_per_worker
        driver = f" (+{sweep.trial_cpus:g} per trial driver)" if first.train.workers > 0 else ""
        lines.append(f"  resources: {per_cell:g} CPU per cell{driver}, up to {sweep.max_concurrent} cells at once")
    return "\n".join(lines)
