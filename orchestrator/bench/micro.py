"""Micro-benchmarks of the data side: `augment` (train_views), `pipeline` (Ray Data read, decode and
one epoch of batches) and `dynamics_memory` (DynamicsWriter's memory and bytes on disk)."""

from __future__ import annotations

import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from orchestrator.bench.context import BenchContext, Figure, fashion_mnist_train, protocol_config, rate, torch_threads


def bench_augment(ctx: BenchContext, *, images: int | None = None, batch: int = 256) -> dict[str, Figure]:
    """train_views images/s on Fashion-MNIST 28x28 in batches of 256, one torch thread."""
    from trainers.augment import sample_uniforms, train_views

    config = protocol_config()
    count = images or (6_000 if ctx.quick else 60_000)
    pixels, _ = fashion_mnist_train(count)
    keys = np.arange(len(pixels), dtype=np.int64)
    kwargs = dict(epoch=0, seed=config.seed, size=config.model.input_size, scale=config.augment.scale,
                  ratio=config.augment.ratio, hflip=config.augment.hflip, mean=config.data.mean,
                  std=config.data.std)
    with torch_threads(1):
        train_views(pixels[:batch], keys[:batch], **kwargs)  # warm-up (imports, first-call costs)
        started = time.perf_counter()
        for start in range(0, len(pixels), batch):
            train_views(pixels[start:start + batch], keys[start:start + batch], **kwargs)
        seconds = time.perf_counter() - started
        started = time.perf_counter()
        sample_uniforms(keys, epoch=0, seed=config.seed)
        rng_seconds = time.perf_counter() - started
    return {
        "images": Figure(len(pixels), "images"),
        "seconds": Figure(seconds, "s"),
        "images_per_s": Figure(rate(len(pixels), seconds), "images/s"),
        "us_per_image": Figure(1e6 * seconds / len(pixels), "us"),
        "rng_share": Figure(100 * rng_seconds / seconds, "%"),
    }


def training_split(ctx: BenchContext):
    """The training split exactly as a cell writes it (benchmark schema + index), cached on disk."""
    from orchestrator.method_spec import load_train_source
    from orchestrator.methods import build_training_set

    overrides = {"output_dir": str(ctx.output_dir), "data.root": str(ctx.data_root),
                 "data.check_images": False}
    if ctx.quick:
        overrides.update({"data.method": "random", "data.ipc": 600})  # 6,000 images
    else:
        overrides.update({"data.method": "full", "data.ipc": None})  # the 60,000 images
    config = protocol_config(overrides)
    return config, build_training_set(config, load_train_source(config))


def bench_pipeline(ctx: BenchContext) -> dict[str, Figure]:
    """Ray Data end to end: read_parquet + decode (materialized) + one epoch of a worker's batches."""
    from orchestrator.data.pipeline import decoded_arrays, train_dataset
    from trainers.batches import MemoryBatches, augment_settings

    started = time.perf_counter()
    config, split = training_split(ctx)
    setup_seconds = time.perf_counter() - started
    started = time.perf_counter()
    ctx.ensure_ray()
    ray_seconds = time.perf_counter() - started

    started = time.perf_counter()
    arrays = decoded_arrays(train_dataset(split.path, mode=config.data.mode, num_rows=split.num_rows,
                                          image_size=config.data.image_size))
    decode_seconds = time.perf_counter() - started
    started = time.perf_counter()
    augment = augment_settings(config)
    steps, _ = MemoryBatches(arrays, grid=1, tile_views="image", augment=augment).steps(
        0, batch_size=config.train.batch_size, world=1, rank=0, accum=1)
    seen = batches = 0
    for step in steps:
        seen += sum(len(micro.label) for micro in step)
        batches += 1
    iterate_seconds = time.perf_counter() - started
    if seen != split.num_rows:
        raise RuntimeError(f"pipeline yielded {seen} images, the split has {split.num_rows}")
    total = decode_seconds + iterate_seconds
    return {
        "images": Figure(seen, "images"),
        "batches": Figure(batches, "batches"),
        "prepare_s": Figure(setup_seconds, "s"),
        "ray_init_s": Figure(ray_seconds, "s"),
        "decode_s": Figure(decode_seconds, "s"),
        "decode_images_per_s": Figure(rate(seen, decode_seconds), "images/s"),
        "epoch_s": Figure(iterate_seconds, "s"),
        "epoch_images_per_s": Figure(rate(seen, iterate_seconds), "images/s"),
        "end_to_end_images_per_s": Figure(rate(seen, total), "images/s"),
    }



def write_dynamics(out_dir: Path, logits: np.ndarray, labels: np.ndarray, epochs: int,
                   batch: int) -> None:
    from trainers.dynamics import DynamicsWriter

    index = np.arange(len(labels), dtype=np.int64)
    with DynamicsWriter(out_dir, 0) as writer:
        for epoch in range(epochs):
            for start in range(0, len(labels), batch):
                stop = start + batch
                writer.add(epoch, index[start:stop], logits[start:stop], labels[start:stop])
            writer.end_epoch()


def bench_dynamics_memory(ctx: BenchContext, *, samples: int | None = None,
                          epoch_counts: tuple[int, ...] | None = None, classes: int = 10,
                          batch: int = 128) -> dict[str, Figure]:
    """DynamicsWriter: peak traced memory for E epochs of `samples` x `classes` logits, bytes on disk.

    tracemalloc sees Python objects and numpy buffers (the writer's row buffer: Arrow wraps the numpy
    columns without copying), not Arrow's or torch's own allocators. The logits exist before tracing
    starts, so the peak is the writer's own memory; it should not grow with E.
    """
    from trainers.dynamics import epoch_file

    samples = samples or (6_000 if ctx.quick else 60_000)
    epoch_counts = epoch_counts or ((2, 4) if ctx.quick else (2, 10, 30))
    with tempfile.TemporaryDirectory(prefix="bench-dynamics-") as tmp:  # warm-up: codecs, kernels
        write_dynamics(Path(tmp), np.zeros((batch, classes), np.float32), np.zeros(batch, np.int64), 1, batch)
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((samples, classes), dtype=np.float32)
    labels = rng.integers(0, classes, samples).astype(np.int64)
    figures: dict[str, Figure] = {"samples": Figure(samples, "samples")}
    peaks, disk = [], []
    for epochs in epoch_counts:
        with tempfile.TemporaryDirectory(prefix="bench-dynamics-") as tmp:
            tracemalloc.start()
            started = time.perf_counter()
            try:
                write_dynamics(Path(tmp), logits, labels, epochs, batch)
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            seconds = time.perf_counter() - started
            sizes = [epoch_file(Path(tmp), 0, epoch).stat().st_size for epoch in range(epochs)]
        peaks.append(peak)
        disk.append(sum(sizes) / epochs)
        figures[f"peak_traced_E{epochs}"] = Figure(peak / 2**20, "MiB")
        figures[f"write_rows_per_s_E{epochs}"] = Figure(rate(samples * epochs, seconds), "rows/s (traced)")
    figures["peak_ratio_maxE_over_minE"] = Figure(peaks[-1] / max(peaks[0], 1), "x")
    figures["disk_bytes_per_epoch"] = Figure(float(np.mean(disk)), "bytes")
    figures["disk_bytes_per_sample_epoch"] = Figure(float(np.mean(disk)) / samples, "bytes")
    return figures

