"""The `predict` benchmark: a sweep's wall time on this machine, from this run's `cell` and `eval`
figures and the sweep's own cell expansion (orchestrator.sweep_config)."""

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


def cell_seconds(config, *, num_classes: int, overhead_s: float, images_per_s: float, eval_s: float) -> float:
    """Predicted wall time of one cell: the measured fixed overhead (which holds one evaluation),
    its epochs at the measured training images/s, and its other evaluations."""
    train_s = config.schedule.epochs * views_per_epoch(config, num_classes) / images_per_s
    return overhead_s + train_s + (evaluations(config) - 1) * eval_s


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
    figures: dict[str, Figure] = {}
    for sweep in ctx.sweeps:
        prefix = "" if len(ctx.sweeps) == 1 else f"{Path(sweep).stem}."
        figures.update({prefix + k: v for k, v in predict_one_sweep(ctx, Path(sweep)).items()})
    return figures


def predict_one_sweep(ctx: BenchContext, sweep: Path) -> dict[str, Figure]:
    from orchestrator.sweep_config import load_sweep

    cells = load_sweep(sweep).cells
    seconds = predict_sweep_seconds(cells, num_classes=10, overhead_s=ctx.figures["cell.overhead_s"].value,
                                    images_per_s=ctx.figures["cell.train_images_per_s"].value,
                                    eval_s=ctx.figures["eval.seconds_10k"].value)
    print(f"[bench] predicted {sweep.stem}: {len(cells)} cells, {seconds / 3600:,.1f} h on this machine",
          flush=True)
    return {"cells": Figure(len(cells), "cells"), "sweep_s": Figure(seconds, "s"),
            "sweep_h": Figure(seconds / 3600, "h"), "mean_cell_s": Figure(seconds / len(cells), "s")}

