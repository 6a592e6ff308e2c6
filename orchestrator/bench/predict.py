"""The `predict` benchmark: a sweep's wall time on this machine, from this run's `cell` and `eval`
figures, the sweep's own cell expansion (orchestrator.sweep_config), and each other student's cost
against the `cell` benchmark's at the sweep's threads and batch size."""

from __future__ import annotations

import math
from pathlib import Path

from orchestrator.bench.context import FASHION_MNIST_PER_CLASS, BenchContext, Figure


def views_per_epoch(config, num_classes: int) -> int:
    """Training views of one epoch: IPC x classes stored images (the full set: Fashion-MNIST's 6,000 per
    class), x grid^2 for PCA's per-tile views."""
    from orchestrator.methods import tile_grid

    tiles = tile_grid(config) ** 2 if config.prune.pca_views == "tile" else 1
    per_class = FASHION_MNIST_PER_CLASS if config.data.ipc is None else config.data.ipc
    return per_class * num_classes * tiles


def evaluations(config) -> int:
    """Evaluations of a cell: every eval.every epochs and after the last."""
    return math.ceil(config.schedule.epochs / config.eval.every)


def cell_seconds(config, *, num_classes: int, overhead_s: float, images_per_s: float, eval_s: float,
                 student_cost: dict[str, float] | None = None) -> float:
    """Predicted wall time of one cell: the measured fixed overhead (which holds one evaluation),
    its epochs at the measured training images/s, and its other evaluations; training and evaluation
    scaled by the cell's student's cost factor (`student_cost`, 1 for the `cell` benchmark's student
    and any student not in it)."""
    cost = (student_cost or {}).get(config.model.name, 1.0)
    train_s = config.schedule.epochs * views_per_epoch(config, num_classes) / images_per_s
    return overhead_s + cost * (train_s + (evaluations(config) - 1) * eval_s)


def predict_sweep_seconds(cells: list, **per_cell) -> float:
    return sum(cell_seconds(config, **per_cell) for config in cells)


def bench_predict(ctx: BenchContext) -> dict[str, Figure]:
    """Predicted wall time of each sweep of `--sweep` (its own cell expansion, orchestrator.sweep_config)
    from this run's `cell` and `eval` figures; teachers and pruning scores, trained once per sweep, and
    the soft-label cells' teacher forward passes are not in it. One sweep's figures are named plainly,
    several by the sweep's file stem."""
    needed = ("cell.overhead_s", "cell.train_images_per_s", "eval.seconds_10k")
    missing = [key for key in needed if key not in ctx.figures]
    if missing:
        raise RuntimeError(f"predict needs {missing} from the same run: run it with `--only eval cell predict`")
    from orchestrator.sweep_config import load_sweep

    sweeps = {Path(sweep): load_sweep(Path(sweep)).cells for sweep in ctx.sweeps}
    costs = student_cost_factors(ctx, [config for cells in sweeps.values() for config in cells])
    figures: dict[str, Figure] = {f"student_cost.{name}": Figure(cost, "x") for name, cost in costs.items()}
    for sweep, cells in sweeps.items():
        prefix = "" if len(sweeps) == 1 else f"{sweep.stem}."
        figures.update({prefix + k: v for k, v in predict_one_sweep(ctx, sweep, cells, costs).items()})
    return figures


def student_cost_factors(ctx: BenchContext, cells: list, epochs: int = 3) -> dict[str, float]:
    """Each student's training cost per image against the `cell` benchmark's student (the protocol's,
    1 by definition), at the threads and batch size of the student's first cell: the same bare loop
    (bench.cell) on the same random IPC-10 images, `epochs` epochs for each of the two students, the
    reference's images/s over the student's."""
    from orchestrator.bench.context import protocol_config
    from orchestrator.data.prepare import prepare_fashion_mnist

    reference = protocol_config().model.name
    first_cells = {}
    for config in cells:
        first_cells.setdefault(config.model.name, config)
    first_cells.pop(reference, None)
    if first_cells:
        prepare_fashion_mnist(ctx.data_root, image_size=28, mode="L")  # the shared cache bench_cell uses
    return {name: measured_cost(ctx, name, reference, cell, epochs) for name, cell in first_cells.items()}


def measured_cost(ctx: BenchContext, student: str, reference: str, cell, epochs: int) -> float:
    from orchestrator.bench.cell import bare_loop_images_per_s, cell_training_arrays
    from orchestrator.bench.context import protocol_config

    overrides = {"data.root": str(ctx.data_root), "data.ipc": 10, "schedule.epochs": epochs,
                 "train.threads": cell.train.threads, "train.batch_size": cell.train.batch_size}
    rates = []
    for name in (reference, student):
        config = protocol_config({**overrides, "model.name": name})
        rates.append(bare_loop_images_per_s(config, cell_training_arrays(config)))
    return rates[0] / rates[1]


def predict_one_sweep(ctx: BenchContext, sweep: Path, cells: list, costs: dict[str, float]) -> dict[str, Figure]:
    seconds = predict_sweep_seconds(cells, num_classes=10, overhead_s=ctx.figures["cell.overhead_s"].value,
                                    images_per_s=ctx.figures["cell.train_images_per_s"].value,
                                    eval_s=ctx.figures["eval.seconds_10k"].value, student_cost=costs)
    print(f"[bench] predicted {sweep.stem}: {len(cells)} cells, {seconds / 3600:,.1f} h on this machine",
          flush=True)
    return {"cells": Figure(len(cells), "cells"), "sweep_s": Figure(seconds, "s"),
            "sweep_h": Figure(seconds / 3600, "h"), "mean_cell_s": Figure(seconds / len(cells), "s")}

