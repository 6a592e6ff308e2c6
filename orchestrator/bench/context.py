"""What every benchmark shares: the Figure it reports, the BenchContext it gets, and small helpers
(the fmnist-hard protocol config, torch thread counts, Fashion-MNIST training images, rates)."""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

REPO = Path(__file__).resolve().parents[2]
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



def all_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1



SLOW_FACTOR = 4.0  # a variant whose first timed step is this much slower than fp32's is not timed further
