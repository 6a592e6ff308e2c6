"""`python -m orchestrator bench`: speed and memory figures of the pieces a cell is made of.

Speed and memory targets live here, never in timed tests. Each benchmark is one function
`(BenchContext) -> {figure name: Figure(value, unit)}` registered by name in BENCHMARKS:

    augment          train_views (the per-sample seeded augmentation) on Fashion-MNIST, 1 thread
    pipeline         Ray Data: read_parquet + decode (train_dataset) + one epoch of train_batches
    train_step       ConvNet-3's bare step (batch 128, 28 px, all CPUs) per StepVariant (fp32 eager,
                     in chunks of 32, channels_last, torch.compile, bf16 autocast); the fastest is the reference
    eval             the 10,000 test images through trainers.evaluate.evaluate, inference mode, all
                     CPUs, fp32 vs bf16: images/s and top-1 difference on a briefly trained model;
                     the reference: the same fp32 pass NCHW throughout at batch 1000
    dynamics_memory  DynamicsWriter peak traced memory for E epochs (flat in E) and bytes on disk
    cell             one real tiny cell through run_cell (the orchestration overhead), then the
                     same epochs as a bare PyTorch loop (the reference of its images/s)
    predict          wall time of configs/sweeps/fashion-mnist-benchmark.yaml on this machine from
                     this run's cell and eval figures (needs both in the same run)

Results are printed as a table, then every ratio of RATIOS as "figure / its reference" (both
measured in this run), and written as JSON:
    {"timestamp", "quick", "machine": {...}, "results": {benchmark: {"seconds", "figures", "error"?}},
     "figures": {"<benchmark>.<figure>": {"value", "unit"}, ..., "ratios.<name>": {"value", "unit"}}}
"figures" is flat: its keys are dotted names at its top level, e.g. "cell.overhead_s",
"eval.images_per_s", "ratios.cell_step_vs_fastest", "ratios.ray_vs_bare_loop".
Nothing is logged to MLflow (the `cell` benchmark's MLflow store lives in a temporary directory).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import tracemalloc
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PROTOCOL = REPO / "configs" / "fmnist-hard.yaml"
FASHION_MNIST_PER_CLASS = 6_000  # training images per class: what a `full` cell trains on each epoch
BENCHMARK_SWEEP = REPO / "configs" / "sweeps" / "fashion-mnist-benchmark.yaml"


@dataclass(frozen=True)
class Figure:
    value: float
    unit: str


@dataclass
class BenchContext:
    """What every benchmark may use: the size switch, where data lives, the Ray address."""

    quick: bool = False
    output_dir: Path = Path("outputs")
    address: str | None = None
    peer_python: str | None = None  # DD-Ranking's interpreter (its own venv) for the `peer` benchmark
    sweeps: tuple[Path, ...] = (BENCHMARK_SWEEP,)  # what `predict` sizes
    ray_started: bool = field(default=False, init=False)
    figures: dict[str, Figure] = field(default_factory=dict, init=False)  # "<benchmark>.<figure>" so far

    @property
    def data_root(self) -> Path:
        return Path(self.output_dir).expanduser().resolve() / "data"

    def ensure_ray(self) -> None:
        """Start (or connect to) Ray once per bench run; `close()` stops only what it started."""
        import ray

        from orchestrator.runtime import init_ray

        if not ray.is_initialized():
            init_ray(self.address)
            self.ray_started = True
        else:
            init_ray(self.address)  # only applies the DataContext settings

    def close(self) -> None:
        if self.ray_started:
            import ray

            ray.shutdown()
            self.ray_started = False


BenchFn = Callable[[BenchContext], dict[str, Figure]]


# --------------------------------------------------------------------------- helpers


def protocol_config(overrides: dict | None = None):
    from orchestrator.config import load_config

    return load_config(PROTOCOL, overrides or {})


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def env_without(*names: str) -> Iterator[None]:
    saved = {name: os.environ.pop(name) for name in names if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def fashion_mnist_train(count: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `count` raw Fashion-MNIST training images (uint8 NHW) and labels."""
    from orchestrator.data.prepare import FASHION_MNIST_RAW, load_fashion_mnist_split

    images, labels = load_fashion_mnist_split(FASHION_MNIST_RAW, "train")
    return np.array(images[:count]), labels[:count]  # a writable copy (the idx buffer is read-only)


def rate(count: float, seconds: float) -> float:
    return count / max(seconds, 1e-12)


# --------------------------------------------------------------------------- benchmarks


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


@dataclass(frozen=True)
class StepVariant:
    """One way to run the training step (trainers/precision.py's switches; `chunk`: train.chunk)."""

    name: str
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    chunk: int = 0


STEP_VARIANTS = (StepVariant("fp32"), StepVariant("fp32_chunk32", chunk=32), StepVariant("fp32_cl", channels_last=True),
                 StepVariant("fp32_compile", compile=True), StepVariant("bf16", "bf16"),
                 StepVariant("bf16_cl", "bf16", channels_last=True),
                 StepVariant("bf16_cl_compile", "bf16", channels_last=True, compile=True))
SLOW_FACTOR = 4.0  # a variant whose first timed step is this much slower than fp32's is not timed further
PLAIN_EVAL_BATCH = 1000  # the plain evaluation's batch (the fmnist protocols evaluate in batches of 32)


def step_variants(quick: bool, device: str = "cpu") -> tuple[StepVariant, ...]:
    """All variants, less (in --quick) compiled ones (minutes of compiling on 2 cores) and bf16 ones
    where the device has no native bf16 (emulated kernels run at a few % of fp32)."""
    from trainers.precision import native_bf16

    if not quick:
        return STEP_VARIANTS
    return tuple(v for v in STEP_VARIANTS if not v.compile and (v.precision == "fp32" or native_bf16(device)))


def all_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def time_steps(step: Callable[[], None], *, budget: float, cutoff: float | None) -> tuple[float, int, bool]:
    """(seconds, steps, cut) after one untimed warm-up step (compiling, allocator, optimizer state);
    stops after the first timed step when that step took longer than `cutoff` seconds."""
    step()
    steps, started = 0, time.perf_counter()
    while steps < 2 or time.perf_counter() - started < budget:
        step()
        steps += 1
        if steps == 1 and cutoff is not None and time.perf_counter() - started > cutoff:
            return time.perf_counter() - started, steps, True
    return time.perf_counter() - started, steps, False


def bare_backward(model, images, labels, *, precision: str, chunk: int, weight: float = 1.0) -> None:
    """Cross-entropy's gradient of one batch, `chunk` images at a time (0: the whole batch)."""
    import torch

    from trainers.batches import chunk_slices
    from trainers.precision import autocast

    for part, share in chunk_slices(len(labels), chunk):
        with autocast("cpu", precision):
            loss = torch.nn.functional.cross_entropy(model(images[part]), labels[part])
        (loss * (weight * share)).backward()


def variant_step(variant: StepVariant, config, *, model: str, images, labels) -> tuple[Callable[[], None], int]:
    """(one training step of a fresh student run the variant's way, the student's parameter count)."""
    import torch

    from trainers.models import create_student
    from trainers.optim import build_optimizer
    from trainers.precision import prepare_model, to_device_batch

    torch.manual_seed(0)
    net = create_student(model, num_classes=10, in_chans=config.in_chans, img_size=config.model.input_size)
    optimizer = build_optimizer(net.train(), name=config.optim.name, lr=config.optim.lr,
                                weight_decay=config.optim.weight_decay)
    net = prepare_model(net, channels_last=variant.channels_last, compile=variant.compile)
    batch_images = to_device_batch(images, "cpu", variant.channels_last)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        bare_backward(net, batch_images, labels, precision=variant.precision, chunk=variant.chunk)
        optimizer.step()

    return step, sum(p.numel() for p in net.parameters())


def bench_train_step(ctx: BenchContext, *, model: str = "convnet3", threads: int | None = None,
                     batch: int = 128, variants: tuple[StepVariant, ...] | None = None,
                     min_seconds: float | None = None) -> dict[str, Figure]:
    """The bare step (forward + backward + AdamW) per StepVariant at 28x28 on all CPUs; the fastest
    variant that ran is the reference of every other (`<variant>_vs_fastest`) and of the cell's step.

    The first variant is the baseline: a later one whose first timed step is SLOW_FACTOR x slower
    is reported from that step; a compiled variant runs only where its eager twin was not that slow.
    """
    import torch

    config = protocol_config()
    budget = min_seconds if min_seconds is not None else (0.5 if ctx.quick else 3.0)
    threads = threads or all_cpus()
    size = config.model.input_size
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, config.in_chans, size, size, generator=generator)
    labels = torch.randint(0, 10, (batch,), generator=generator)
    figures: dict[str, Figure] = {"threads": Figure(threads, "threads")}
    rates: dict[str, float] = {}
    slow: set[str] = set()
    baseline_step: float | None = None
    for variant in variants or step_variants(ctx.quick):
        if variant.compile and variant.name.removesuffix("_compile") in slow:
            continue
        step, params = variant_step(variant, config, model=model, images=images, labels=labels)
        with torch_threads(threads):
            started = time.perf_counter()
            cutoff = None if baseline_step is None else SLOW_FACTOR * baseline_step
            seconds, steps, cut = time_steps(step, budget=budget, cutoff=cutoff)
        if variant.compile:
            figures[f"{variant.name}_warm_up_s"] = Figure(time.perf_counter() - started - seconds, "s")
        baseline_step = baseline_step or seconds / steps
        slow.update([variant.name] if cut else [])
        rates[variant.name] = rate(steps * batch, seconds)
        figures[f"{variant.name}_images_per_s"] = Figure(rates[variant.name], "images/s")
    fastest = max(rates, key=rates.get)
    print(f"[bench] fastest bare step: {fastest} {rates[fastest]:,.0f} images/s at {threads} threads"
          + (f"; cut after one step: {sorted(slow)}" if slow else ""), flush=True)
    figures["fastest_images_per_s"] = Figure(rates[fastest], "images/s")
    figures.update({f"{name}_vs_fastest": Figure(value / rates[fastest], "x") for name, value in rates.items()})
    figures["params"] = Figure(params / 1e6, "M")
    return figures


def eval_pass(model, images, labels, *, precision: str, batch: int, limit_s: float | None = None,
              cpu_layout: bool = True) -> tuple[dict, float]:
    """trainers.evaluate.evaluate over the first images in inference mode: (summary, seconds); with
    `limit_s` it stops after the batch that crosses it."""
    from trainers.evaluate import evaluate

    started = time.perf_counter()

    def batches():
        for start in range(0, len(labels), batch):
            yield images[start:start + batch], labels[start:start + batch]
            if limit_s is not None and time.perf_counter() - started > limit_s:
                return

    summary = evaluate(model, batches(), num_classes=10, device="cpu", precision=precision, cpu_layout=cpu_layout)
    return summary, time.perf_counter() - started


def plain_eval_rate(model, images, labels, *, batch: int = PLAIN_EVAL_BATCH) -> float:
    """fp32 images/s of the plain evaluation: NCHW throughout (evaluate's cpu_layout off) in batches
    of 1000: the reference of ratios.eval_vs_plain."""
    seconds = eval_pass(model, images, labels, precision="fp32", batch=batch, cpu_layout=False)[1]
    return rate(len(labels), seconds)


def briefly_trained_convnet(config, steps: int):
    """ConvNet-3 after `steps` AdamW steps (batch 128) on Fashion-MNIST training images: a model
    whose top-1 (~70 %) can move when the precision changes."""
    import torch

    from trainers.augment import eval_views
    from trainers.models import create_student
    from trainers.optim import build_optimizer

    pixels, labels = fashion_mnist_train(128 * steps)
    views = eval_views(pixels, resize=28, crop=28, mean=config.data.mean, std=config.data.std)
    targets = torch.from_numpy(labels)
    torch.manual_seed(0)
    model = create_student(config.model.name, num_classes=10, in_chans=config.in_chans, img_size=28).train()
    optimizer = build_optimizer(model, name=config.optim.name, lr=config.optim.lr,
                                weight_decay=config.optim.weight_decay)
    for start in range(0, len(targets), 128):
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(views[start:start + 128]), targets[start:start + 128]).backward()
        optimizer.step()
    return model.eval()


TOP1_TOLERANCE_PT = 0.1  # a precision serves evaluation only if its top-1 is within this of fp32's


def bench_eval(ctx: BenchContext, *, images: int | None = None, train_steps: int | None = None,
               precisions: tuple[str, ...] | None = None, batch: int | None = None) -> dict[str, Figure]:
    """Evaluation of the Fashion-MNIST test images (trainers.evaluate.evaluate, inference mode, all
    CPUs) per precision, on a briefly trained ConvNet-3 (--quick: the first 2,000 images, 5 steps):
    images/s, top-1, and each precision's top-1 minus fp32's on the same images. `images_per_s` is
    the fastest precision within 0.1 pt of fp32.

    A precision SLOW_FACTOR x slower than fp32 on its first batch is measured on that batch only
    (bf16 on a CPU without native bf16); its top-1 difference is then over those images. --quick
    skips bf16 where it is not native. Batches of `batch` images (default: the protocol's
    eval.batch_size); `plain_images_per_s` is the NCHW, batch-1000 reference (plain_eval_rate).
    """
    import torch

    from orchestrator.data.prepare import FASHION_MNIST_RAW, load_fashion_mnist_split
    from trainers.augment import eval_views
    from trainers.precision import native_bf16

    if precisions is None:
        precisions = ("fp32", "bf16") if not ctx.quick or native_bf16("cpu") else ("fp32",)
    config = protocol_config()
    raw, labels = load_fashion_mnist_split(FASHION_MNIST_RAW, "test")
    images = images or (2_000 if ctx.quick else len(labels))
    views = eval_views(np.array(raw[:images]), resize=config.eval.resize, crop=config.eval.crop,
                       mean=config.data.mean, std=config.data.std)
    targets = torch.from_numpy(labels[:images])
    batch, threads = batch or config.eval.batch_size, all_cpus()
    with torch_threads(threads):
        model = briefly_trained_convnet(config, train_steps or (5 if ctx.quick else 40))
        eval_pass(model, views[:batch], targets[:batch], precision="fp32", batch=batch)  # warm-up
        reference, fp32_s = eval_pass(model, views, targets, precision="fp32", batch=batch)
        figures = {"images": Figure(len(targets), "images"), "threads": Figure(threads, "threads"),
                   "fp32_images_per_s": Figure(rate(len(targets), fp32_s), "images/s"),
                   "fp32_top1": Figure(reference["top1"], "%")}
        usable = {"fp32": rate(len(targets), fp32_s)}
        figures["plain_images_per_s"] = Figure(plain_eval_rate(model, views, targets), "images/s")
        for precision in (p for p in precisions if p != "fp32"):
            summary, seconds = eval_pass(model, views, targets, precision=precision, batch=batch,
                                         limit_s=SLOW_FACTOR * fp32_s * batch / len(targets))
            count = summary["count"]
            same = reference if count == len(targets) else eval_pass(
                model, views[:count], targets[:count], precision="fp32", batch=batch)[0]
            speed, diff = rate(count, seconds), summary["top1"] - same["top1"]
            figures[f"{precision}_images_per_s"] = Figure(speed, "images/s")
            figures[f"{precision}_top1"] = Figure(summary["top1"], "%")
            figures[f"{precision}_top1_minus_fp32"] = Figure(diff, "pt")
            figures[f"{precision}_images"] = Figure(count, "images")
            figures[f"{precision}_vs_fp32"] = Figure(speed / usable["fp32"], "x")
            if abs(diff) <= TOP1_TOLERANCE_PT:
                usable[precision] = speed
    best = max(usable, key=usable.get)
    figures["images_per_s"] = Figure(usable[best], "images/s")
    figures["seconds_10k"] = Figure(10_000 / usable[best], "s")
    print(f"[bench] evaluation: {best} is the fastest precision within {TOP1_TOLERANCE_PT} pt of fp32", flush=True)
    return figures


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


def step_settings(config) -> StepVariant:
    """The protocol's own step switches: train.precision / channels_last / compile / chunk."""
    train = config.train
    return StepVariant("protocol", train.precision, train.channels_last, train.compile, train.chunk)


def bare_loop_images_per_s(config, arrays: dict) -> float:
    """The cell's training epochs as a plain PyTorch loop in this process: the same decoded images,
    batches and augmentation (MemoryBatches), model, optimizer, threads and step switches."""
    import torch

    from trainers.batches import MemoryBatches, augment_settings
    from trainers.loop import exact_chunk, resolve_speed
    from trainers.models import create_student
    from trainers.optim import build_optimizer
    from trainers.precision import prepare_model, to_device_batch

    torch.manual_seed(config.seed)
    model = create_student(config.model.name, num_classes=10, in_chans=config.in_chans,
                           img_size=config.model.input_size).train()
    config, _ = resolve_speed(config, model, "cpu", 1, None)  # "auto" switches as the loop resolves them
    settings = step_settings(config)
    optimizer = build_optimizer(model, name=config.optim.name, lr=config.optim.lr,
                                weight_decay=config.optim.weight_decay, momentum=config.optim.momentum)
    model = prepare_model(model, channels_last=settings.channels_last, compile=settings.compile)
    chunk = exact_chunk(settings.chunk, model)
    memory = MemoryBatches(arrays, grid=1, tile_views="image", augment=augment_settings(config))
    seen, started = 0, time.perf_counter()
    with torch_threads(config.train.threads or all_cpus()):
        for epoch in range(config.schedule.epochs):
            steps, _ = memory.steps(epoch, batch_size=config.train.batch_size, world=1, rank=0, accum=1)
            for micro_batches in steps:
                optimizer.zero_grad(set_to_none=True)
                for micro in micro_batches:
                    images = to_device_batch(micro.image, "cpu", settings.channels_last)
                    bare_backward(model, images, micro.label, precision=settings.precision, chunk=chunk,
                                  weight=micro.weight)
                    seen += len(micro.label)
                optimizer.step()
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
    dir, then the same epochs as a bare PyTorch loop (the reference of the cell's training images/s)."""
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


# --------------------------------------------------------------------------- sweep prediction


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


# --------------------------------------------------------------------------- the DD-Ranking peer

PEER_SCRIPT = REPO / "scripts" / "ddranking_peer.py"
PEER_SETUP = ("python -m venv --system-site-packages /tmp/ddr && /tmp/ddr/bin/pip install ddranking==0.2.0, "
              "then pass --peer-python /tmp/ddr/bin/python")


def timed_run(command: list[str]) -> tuple[float, str]:
    """(wall seconds, stdout) of a command run to completion; its failure is an error with its tail."""
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} ... failed ({done.returncode}): {done.stderr[-800:]}")
    return time.perf_counter() - started, done.stdout


def bench_peer(ctx: BenchContext) -> dict[str, Figure]:
    """A whole fmnist-hard cell (random, IPC 10, seed 0: 300 epochs, --quick 20) as a user runs it
    (`python -m orchestrator run`, a fresh process), then DD-Ranking 0.2's hard-label evaluator on the
    same images for the same epochs (scripts/ddranking_peer.py in its own venv), one after the other."""
    if not ctx.peer_python:
        raise RuntimeError(f"the peer benchmark needs DD-Ranking's python: {PEER_SETUP}")
    from orchestrator.cell import prepare_data

    epochs = 20 if ctx.quick else 300
    with tempfile.TemporaryDirectory(prefix="bench-peer-") as tmp, env_without("MLFLOW_TRACKING_URI"):
        data = prepare_data(protocol_config({"output_dir": tmp, "data.root": str(ctx.data_root), "data.ipc": 10}))
        ours_s, output = timed_run([sys.executable, "-m", "orchestrator", "run", "--config", str(PROTOCOL),
                                    "--method", "random", "--ipc", "10", "--seed", "0", "--epochs", str(epochs),
                                    "--output-dir", tmp, "--set", f"data.root={ctx.data_root}"])
        top1 = float(re.search(r"top-1 final ([0-9.]+)", output).group(1))
        peer_s, line = timed_run([ctx.peer_python, str(PEER_SCRIPT), "--set", str(data.train.path),
                                  "--test", str(data.val.path),
                                  "--epochs", str(epochs)])
    peer = json.loads(line.strip().splitlines()[-1])
    return {"epochs": Figure(epochs, "epochs"), "cell_wall_s": Figure(ours_s, "s"),
            "cell_top1_final": Figure(top1, "%"), "ddranking_wall_s": Figure(peer_s, "s"),
            "ddranking_train_s": Figure(peer["wall_s"], "s"), "ddranking_top1_best": Figure(peer["top1_best"], "%")}


BENCHMARKS: dict[str, BenchFn] = {
    "augment": bench_augment,
    "pipeline": bench_pipeline,
    "train_step": bench_train_step,
    "eval": bench_eval,
    "dynamics_memory": bench_dynamics_memory,
    "cell": bench_cell,
    "predict": bench_predict,
    "peer": bench_peer,
}
ON_REQUEST = {"peer"}  # run only when named (--only) or when its tool is given (--peer-python)
# ratio name -> (figure, its reference figure), both measured in the same run
RATIOS = {
    "ratios.cell_step_vs_fastest": ("cell.train_images_per_s", "train_step.fastest_images_per_s"),
    "ratios.ray_vs_bare_loop": ("cell.train_images_per_s", "cell.bare_loop_images_per_s"),
    "ratios.eval_vs_fp32": ("eval.images_per_s", "eval.fp32_images_per_s"),
    "ratios.eval_vs_plain": ("eval.images_per_s", "eval.plain_images_per_s"),
    "ratios.cell_vs_ddranking": ("peer.cell_wall_s", "peer.ddranking_wall_s"),
}


# --------------------------------------------------------------------------- running and output


def select(names: list[str] | None, peer_python: str | None = None) -> list[str]:
    """Benchmark names to run, in registry order; unknown names are an error that lists the known ones.
    By default every benchmark but the peer comparison, which runs when its interpreter is given."""
    if not names:
        return [name for name in BENCHMARKS if name not in ON_REQUEST or peer_python]
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        from orchestrator.errors import ConfigError

        raise ConfigError(f"unknown benchmark(s) {unknown}: choose from {list(BENCHMARKS)}")
    return [name for name in BENCHMARKS if name in names]


def machine_facts() -> dict:
    import torch

    affinity = all_cpus()
    device = f"cuda ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "cpu"
    facts = {"cpu_count": os.cpu_count(), "cpus_usable": affinity, "torch": torch.__version__,
             "torch_threads": torch.get_num_threads(), "device": device, "numpy": np.__version__,
             "python": platform.python_version(), "platform": platform.platform(),
             "processor": platform.processor() or platform.machine()}
    try:
        facts["loadavg_1m"] = os.getloadavg()[0]  # the machine may be shared: context for the figures
    except OSError:  # pragma: no cover
        pass
    try:
        import ray

        facts["ray"] = ray.__version__
    except ImportError:  # pragma: no cover
        pass
    return facts


def run_benchmarks(names: list[str], ctx: BenchContext) -> dict:
    results: dict[str, dict] = {}
    try:
        for name in names:
            print(f"[bench] {name} ...", flush=True)
            started = time.perf_counter()
            try:
                figures = BENCHMARKS[name](ctx)
                ctx.figures.update({f"{name}.{key}": figure for key, figure in figures.items()})
                results[name] = {"seconds": time.perf_counter() - started,
                                 "figures": {key: {"value": float(fig.value), "unit": fig.unit}
                                             for key, fig in figures.items()}}
            except Exception as exc:  # one failing benchmark must not hide the others
                results[name] = {"seconds": time.perf_counter() - started,
                                 "error": f"{type(exc).__name__}: {exc}", "figures": {}}
                print(f"[bench] {name} failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
    finally:
        ctx.close()
    return results


def derive_ratios(figures: dict[str, Figure]) -> dict[str, Figure]:
    """The RATIOS whose two figures this run measured."""
    return {name: Figure(figures[value].value / figures[reference].value, "x")
            for name, (value, reference) in RATIOS.items() if value in figures and reference in figures}


def flat_figures(figures: dict[str, Figure]) -> dict[str, dict]:
    """The JSON "figures" mapping: every figure and ratio under its dotted name."""
    every = {**figures, **derive_ratios(figures)}
    return {key: {"value": float(fig.value), "unit": fig.unit} for key, fig in every.items()}


def render_ratios(figures: dict[str, Figure]) -> str:
    lines = []
    for name, ratio in derive_ratios(figures).items():
        value, reference = RATIOS[name]
        lines.append(f"{name:<30} {ratio.value:6.2f} x   = {value} {format_value(figures[value].value)} / "
                     f"{reference} {format_value(figures[reference].value)}")
    return "\n".join(lines)


def format_value(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    if value != 0 and (abs(value) >= 1e6 or abs(value) < 1e-2):
        return f"{value:.3g}"
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.2f}"


def render_table(results: dict) -> str:
    rows = [("benchmark", "figure", "value", "unit")]
    for name, result in results.items():
        if result.get("error"):
            rows.append((name, "ERROR", result["error"], ""))
        for key, fig in result["figures"].items():
            rows.append((name, key, format_value(fig["value"]), fig["unit"]))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:>{widths[2]}}  {d}" for a, b, c, d in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def add_bench_parser(subparsers) -> argparse.ArgumentParser:
    """Add the `bench` verb to the CLI's sub-parsers."""
    parser = subparsers.add_parser("bench", help=f"speed and memory benchmarks ({', '.join(BENCHMARKS)})")
    configure_parser(parser)
    parser.set_defaults(func=cmd_bench)
    return parser


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--only", nargs="+", metavar="NAME", choices=list(BENCHMARKS),
                        help=f"run only these benchmarks (default: all of {list(BENCHMARKS)})")
    parser.add_argument("--quick", action="store_true", help="small sizes (6,000 images, short timings)")
    parser.add_argument("--output-dir", default="outputs",
                        help="data cache (<dir>/data) and default JSON folder (<dir>/bench)")
    parser.add_argument("--json", help="JSON results path (default <output-dir>/bench/bench-<timestamp>.json)")
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
    parser.add_argument("--sweep", nargs="+", type=Path, default=[BENCHMARK_SWEEP], metavar="YAML",
                        help="the sweeps `predict` sizes (default: configs/sweeps/fashion-mnist-benchmark.yaml)")
    parser.add_argument("--peer-python", help="DD-Ranking 0.2's python for the `peer` benchmark (our cell vs its "
                                              "evaluator on the same images): " + PEER_SETUP.split(", then")[0])


def cmd_bench(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # every benchmark reads local files only
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    names = select(args.only, args.peer_python)
    ctx = BenchContext(quick=args.quick, output_dir=Path(args.output_dir), address=args.address,
                       peer_python=args.peer_python, sweeps=tuple(args.sweep))
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    machine = machine_facts()
    results = run_benchmarks(names, ctx)
    report = {"timestamp": stamp, "quick": args.quick, "machine": machine, "results": results,
              "figures": flat_figures(ctx.figures)}
    path = Path(args.json) if args.json else Path(args.output_dir) / "bench" / f"bench-{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    print(render_table(results))
    print(render_ratios(ctx.figures))
    print(f"machine: {machine['cpus_usable']} CPUs usable, {machine['device']}, torch {machine['torch']}, "
          f"load {machine.get('loadavg_1m', float('nan')):.2f}")
    print(f"results written to {path}")
    return 1 if any(r.get("error") for r in results.values()) else 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (`python -m orchestrator.bench`), same options as the CLI verb."""
    parser = argparse.ArgumentParser(prog="python -m orchestrator bench", description=__doc__.splitlines()[0])
    configure_parser(parser)
    parser.set_defaults(func=cmd_bench)
    from orchestrator.cli_args import run_parsed

    return run_parsed(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
