"""The `cell` benchmark: one real tiny cell through run_cell, and the same epochs as a bare loop in
this process (the reference of the cell's training images/s: ratios.ray_vs_bare_loop)."""

from __future__ import annotations

import tempfile
import time

from orchestrator.bench.context import (BenchContext, Figure, all_cpus, env_without, protocol_config, rate,
                                        torch_threads)
from orchestrator.bench.training import loop_training, train


def bare_loop_images_per_s(config, arrays: dict) -> float:
    """The cell's training epochs as a bare loop in this process: the same decoded images, batches and
    augmentation (MemoryBatches), student, optimizer, threads, speed switches and step (the loop's own,
    bench.training) without Ray, the driver or evaluation."""
    from trainers.batches import MemoryBatches, augment_settings

    training = loop_training(config)
    sizes = {"batch_size": config.train.batch_size, "world": 1, "rank": 0, "accum": config.train.grad_accum}
    memory = MemoryBatches(arrays, grid=1, tile_views="image", augment=augment_settings(training.config))
    seen, started = 0, time.perf_counter()
    with torch_threads(config.train.threads or all_cpus()):
        for epoch in range(config.schedule.epochs):
            steps, _ = memory.steps(epoch, **sizes)
            seen += train(training, steps, epoch)
    return rate(seen, time.perf_counter() - started)


def cell_training_arrays(config) -> dict:
    """The decoded training set of a cell that has run (its split is cached under data.root), as
    the cell holds it (orchestrator.data.pipeline.training_arrays)."""
    from orchestrator.data.pipeline import training_arrays
    from orchestrator.method_spec import load_train_source
    from orchestrator.methods import build_training_set

    split = build_training_set(config, load_train_source(config))
    return training_arrays(split.path, mode=config.data.mode, num_rows=split.num_rows,
                           image_size=config.data.image_size)


def bench_cell(ctx: BenchContext) -> dict[str, Figure]:
    """One real tiny cell (random IPC 10, fmnist-hard, 3 epochs; --quick 2) through run_cell in a temp
    dir, then the same epochs as a bare loop (the reference of the cell's training images/s)."""
    from orchestrator.cell import run_cell
    from orchestrator.data.prepare import prepare_fashion_mnist

    ipc, epochs = (10, 2) if ctx.quick else (10, 3)
    prepare_fashion_mnist(ctx.data_root, image_size=28, mode="L")  # shared cache, outside the timing
    started = time.perf_counter()
    ctx.ensure_ray()
    ray_seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory(prefix="bench-cell-") as tmp, env_without("MLFLOW_TRACKING_URI"):
        config = protocol_config({"output_dir": tmp, "data.root": str(ctx.data_root), "data.ipc": ipc,
                                  "schedule.epochs": epochs, "experiment": "bench"})
        started = time.perf_counter()
        result = run_cell(config, force=True)
        wall = time.perf_counter() - started
        bare = bare_loop_images_per_s(config, cell_training_arrays(config))
    summary = result.summary
    train_s = float(summary["train_seconds"])
    images = ipc * 10 * epochs
    return {
        "images_trained": Figure(images, "images"),
        "ray_init_s": Figure(ray_seconds, "s"),
        "run_cell_s": Figure(wall, "s"),
        "fit_s": Figure(float(summary["wall_seconds"]), "s"),
        "train_s": Figure(train_s, "s"),
        "overhead_s": Figure(wall - train_s, "s"),
        # run_cell minus trainer.fit: data prep, train/val decode + materialize, MLflow bookkeeping
        "outside_fit_s": Figure(wall - float(summary["wall_seconds"]), "s"),
        # trainer.fit minus training epochs: Ray Train start-up, evaluation, checkpoints, reports
        "fit_minus_train_s": Figure(float(summary["wall_seconds"]) - train_s, "s"),
        "overhead_share": Figure(100 * (wall - train_s) / wall, "%"),
        "train_images_per_s": Figure(float(summary["images_per_s"]), "images/s"),
        "bare_loop_images_per_s": Figure(bare, "images/s"),
        "cell_images_per_s": Figure(rate(images, wall), "images/s"),
    }

