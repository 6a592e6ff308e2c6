"""`python -m orchestrator bench`: speed and memory figures of the pieces a cell is made of.

Speed and memory targets live here, never in timed tests. Each benchmark is one function
`(BenchContext) -> {figure name: Figure(value, unit)}` registered by name in BENCHMARKS:

    augment          train_views (the per-sample seeded augmentation) on Fashion-MNIST, 1 thread
    pipeline         Ray Data: read_parquet + decode (train_dataset) + one epoch of train_batches
    train_step       student forward + backward + AdamW step, per model and torch thread count
    dynamics_memory  DynamicsWriter peak traced memory for E epochs (flat in E) and bytes on disk
    cell             one real tiny cell through run_cell: the orchestration overhead

Results are printed as a table and written as JSON together with the machine facts. Nothing is
logged to MLflow (the `cell` benchmark's MLflow store lives in a temporary directory).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
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
TRAIN_STEP_MODELS = ("convnet3", "convnet3_w32", "resnet18_small")
TRAIN_STEP_THREADS = (1, 2)


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
    ray_started: bool = field(default=False, init=False)

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
    from orchestrator.methods import build_training_set, load_train_source

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


def bench_train_step(ctx: BenchContext, *, models: tuple[str, ...] = TRAIN_STEP_MODELS,
                     threads: tuple[int, ...] = TRAIN_STEP_THREADS, batch: int = 128,
                     min_seconds: float | None = None) -> dict[str, Figure]:
    """Student forward + backward + AdamW step images/s at 28x28, per model and thread count."""
    import torch

    from trainers.models import create_student
    from trainers.optim import build_optimizer

    config = protocol_config()
    budget = min_seconds if min_seconds is not None else (0.5 if ctx.quick else 3.0)
    size = config.model.input_size
    figures: dict[str, Figure] = {}
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, config.in_chans, size, size, generator=generator)
    labels = torch.randint(0, 10, (batch,), generator=generator)
    for name in models:
        for count in threads:
            torch.manual_seed(0)
            model = create_student(name, num_classes=10, in_chans=config.in_chans, img_size=size)
            model.train()
            optimizer = build_optimizer(model, name=config.optim.name, lr=config.optim.lr,
                                        weight_decay=config.optim.weight_decay)

            def step() -> None:
                optimizer.zero_grad(set_to_none=True)
                loss = torch.nn.functional.cross_entropy(model(images), labels)
                loss.backward()
                optimizer.step()

            with torch_threads(count):
                step()  # warm-up: allocator, optimizer state
                steps, started = 0, time.perf_counter()
                while steps < 2 or time.perf_counter() - started < budget:
                    step()
                    steps += 1
                seconds = time.perf_counter() - started
            figures[f"{name}_t{count}_images_per_s"] = Figure(rate(steps * batch, seconds), "images/s")
            figures[f"{name}_t{count}_ms_per_step"] = Figure(1e3 * seconds / steps, "ms")
        figures[f"{name}_params"] = Figure(sum(p.numel() for p in model.parameters()) / 1e6, "M")
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


def bench_cell(ctx: BenchContext) -> dict[str, Figure]:
    """One real tiny cell (random IPC 10, 3 epochs, fmnist-hard) through run_cell, in a temp dir."""
    from orchestrator.cell import run_cell
    from orchestrator.data.prepare import prepare_fashion_mnist

    ipc, epochs = (2, 1) if ctx.quick else (10, 3)
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
        "cell_images_per_s": Figure(rate(images, wall), "images/s"),
    }


BENCHMARKS: dict[str, BenchFn] = {
    "augment": bench_augment,
    "pipeline": bench_pipeline,
    "train_step": bench_train_step,
    "dynamics_memory": bench_dynamics_memory,
    "cell": bench_cell,
}


# --------------------------------------------------------------------------- running and output


def select(names: list[str] | None) -> list[str]:
    """Benchmark names to run, in registry order; unknown names are an error that lists the known ones."""
    if not names:
        return list(BENCHMARKS)
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        from orchestrator.errors import ConfigError

        raise ConfigError(f"unknown benchmark(s) {unknown}: choose from {list(BENCHMARKS)}")
    return [name for name in BENCHMARKS if name in names]


def machine_facts() -> dict:
    import torch

    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        affinity = os.cpu_count()
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
    parser = subparsers.add_parser("bench", help="speed and memory benchmarks (augment, pipeline, "
                                                  "train_step, dynamics_memory, cell)")
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


def cmd_bench(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # every benchmark reads local files only
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    names = select(args.only)
    ctx = BenchContext(quick=args.quick, output_dir=Path(args.output_dir), address=args.address)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    machine = machine_facts()
    results = run_benchmarks(names, ctx)
    report = {"timestamp": stamp, "quick": args.quick, "machine": machine, "results": results}
    path = Path(args.json) if args.json else Path(args.output_dir) / "bench" / f"bench-{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    print(render_table(results))
    print(f"machine: {machine['cpus_usable']} CPUs usable, {machine['device']}, torch {machine['torch']}, "
          f"load {machine.get('loadavg_1m', float('nan')):.2f}")
    print(f"results written to {path}")
    return 1 if any(r.get("error") for r in results.values()) else 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (`python -m orchestrator.bench`), same options as the CLI verb."""
    parser = argparse.ArgumentParser(prog="python -m orchestrator bench", description=__doc__.splitlines()[0])
    configure_parser(parser)
    parser.set_defaults(func=cmd_bench)
    from orchestrator.cli import run_parsed

    return run_parsed(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
