"""Preparing registered datasets from raw files into the benchmark's parquet layout.

Owns: reading the Fashion-MNIST idx files shipped by the Debian package dataset-fashion-mnist,
writing `<out_root>/fashion-mnist-<size>-<mode>/{train,test}.parquet` plus `dataset_info.json`
atomically, and the registry that turns a dataset name into a prepared directory.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import datasets
import numpy as np
from PIL import Image

from orchestrator.data.images import png_bytes
from orchestrator.data.select import BENCHMARK_FEATURES, write_parquet
from orchestrator.errors import ConfigError, DataError

FASHION_MNIST_RAW = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_MNIST_INSTALL_FIX = "install it with `apt-get install dataset-fashion-mnist`"
SUPPORTED_MODES = ("L", "RGB")
DATASET_INFO_FILE = "dataset_info.json"
_IDX_UBYTE = 0x08


def read_idx(path: Path) -> np.ndarray:
    """Read a gzipped idx file of unsigned bytes (the MNIST format) into an array."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"raw file {path} is missing: {FASHION_MNIST_INSTALL_FIX} "
            f"or pass raw_dir pointing at the folder holding it"
        )
    try:
        with gzip.open(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as exc:
        raise DataError(
            f"raw file {path} cannot be read as gzip ({exc}): reinstall dataset-fashion-mnist"
        ) from exc
    return _parse_idx(raw, path)


def _parse_idx(raw: bytes, path: Path) -> np.ndarray:
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != _IDX_UBYTE:
        raise DataError(
            f"raw file {path} is not an unsigned-byte idx file (bad magic number): "
            f"reinstall dataset-fashion-mnist"
        )
    ndim = raw[3]
    header_end = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(raw[4:header_end], dtype=">u4"))
    expected = int(np.prod(shape)) if shape else 0
    data = np.frombuffer(raw, dtype=np.uint8, offset=header_end)
    if len(shape) != ndim or data.size != expected:
        raise DataError(
            f"raw file {path} is truncated: header says {shape}, found {data.size} values: "
            f"reinstall dataset-fashion-mnist"
        )
    return data.reshape(shape)


def load_fashion_mnist_split(raw_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) uint8 and labels (N,) int64 of one raw split."""
    image_file, label_file = FASHION_MNIST_FILES[split]
    images = read_idx(Path(raw_dir) / image_file)
    labels = read_idx(Path(raw_dir) / label_file).astype(np.int64)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(
            f"raw files {image_file} ({images.shape}) and {label_file} ({labels.shape}) in "
            f"{raw_dir} do not match: reinstall dataset-fashion-mnist"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= len(FASHION_MNIST_CLASSES)):
        raise DataError(
            f"raw file {label_file} in {raw_dir} has labels outside 0..9: "
            f"reinstall dataset-fashion-mnist"
        )
    return images, labels


def encode_png(pixels: np.ndarray, image_size: int, mode: str) -> bytes:
    """PNG bytes of one grey image, resized (bicubic) and converted to `mode`."""
    image = Image.fromarray(pixels, mode="L")
    if image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.Resampling.BICUBIC)
    if mode != "L":
        image = image.convert(mode)
    return png_bytes(image, compress_level=1)


def fashion_mnist_dir_name(image_size: int, mode: str) -> str:
    return f"fashion-mnist-{image_size}-{mode}"


def _check_prepare_args(image_size: int, mode: str) -> None:
    if mode not in SUPPORTED_MODES:
        raise ConfigError(f"image mode '{mode}' is not supported: use one of {list(SUPPORTED_MODES)}")
    if not isinstance(image_size, int) or image_size < 1:
        raise ConfigError(f"image_size must be a positive integer, got {image_size!r}: fix data.image_size")


def read_dataset_info(dataset_dir: Path) -> dict | None:
    """The dataset_info.json of a prepared directory, or None when absent or unreadable."""
    try:
        return json.loads((Path(dataset_dir) / DATASET_INFO_FILE).read_text())
    except (OSError, ValueError):
        return None


def is_complete(dataset_dir: Path, image_size: int, mode: str) -> bool:
    """True when a prepared directory holds every split and matches the requested size and mode."""
    info = read_dataset_info(dataset_dir)
    if not isinstance(info, dict):
        return False
    if info.get("image_size") != image_size or info.get("mode") != mode:
        return False
    splits = info.get("num_rows", {})
    return set(splits) == set(FASHION_MNIST_FILES) and all(
        (Path(dataset_dir) / f"{split}.parquet").is_file() for split in splits
    )


def _split_dataset(images: np.ndarray, labels: np.ndarray, split: str, image_size: int, mode: str) -> datasets.Dataset:
    columns = {
        "image": [{"bytes": encode_png(img, image_size, mode), "path": None} for img in images],
        "class_id": labels.tolist(),
        "sample_id": [f"{split}/{i}" for i in range(len(labels))],
    }
    return datasets.Dataset.from_dict(columns, features=BENCHMARK_FEATURES)


def _write_fashion_mnist(tmp_dir: Path, raw_dir: Path, image_size: int, mode: str) -> None:
    num_rows: dict[str, int] = {}
    for split in FASHION_MNIST_FILES:
        images, labels = load_fashion_mnist_split(raw_dir, split)
        write_parquet(_split_dataset(images, labels, split, image_size, mode), tmp_dir / f"{split}.parquet")
        num_rows[split] = len(labels)
    info = {
        "name": "fashion-mnist",
        "classes": FASHION_MNIST_CLASSES,
        "image_size": image_size,
        "mode": mode,
        "num_rows": num_rows,
        "source": str(raw_dir),
    }
    (tmp_dir / DATASET_INFO_FILE).write_text(json.dumps(info, indent=2))


def _publish(tmp_dir: Path, target: Path, is_ready: Callable[[Path], bool]) -> None:
    """Move a finished temp dir into place; an older or partial target is replaced."""
    trash = None
    if target.exists():
        trash = target.with_name(f".{target.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        os.rename(target, trash)
    try:
        os.rename(tmp_dir, target)
    except OSError:
        if not is_ready(target):  # another process published a complete copy meanwhile: keep it
            raise
        shutil.rmtree(tmp_dir, ignore_errors=True)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


def prepare_fashion_mnist(
    out_root: Path,
    *,
    image_size: int = 28,
    mode: str = "L",
    raw_dir: Path = FASHION_MNIST_RAW,
    overwrite: bool = False,
) -> Path:
    """Write Fashion-MNIST as `out_root/fashion-mnist-{size}-{mode}/` and return that directory.

    Idempotent: a complete existing directory is returned as is unless `overwrite`.
    """
    _check_prepare_args(image_size, mode)
    out_root = Path(out_root)
    target = out_root / fashion_mnist_dir_name(image_size, mode)
    if not overwrite and is_complete(target, image_size, mode):
        return target
    out_root.mkdir(parents=True, exist_ok=True)
    tmp_dir = out_root / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp_dir.mkdir()
    try:
        _write_fashion_mnist(tmp_dir, Path(raw_dir), image_size, mode)
        _publish(tmp_dir, target, lambda d: is_complete(d, image_size, mode))
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return target


@dataclass(frozen=True)
class RegisteredDataset:
    """A dataset known by name: how to prepare it, its class names and its splits."""

    prepare: Callable[..., Path]
    classes: tuple[str, ...]
    splits: tuple[str, ...]


REGISTERED: dict[str, RegisteredDataset] = {
    "fashion-mnist": RegisteredDataset(
        prepare=prepare_fashion_mnist,
        classes=tuple(FASHION_MNIST_CLASSES),
        splits=tuple(FASHION_MNIST_FILES),
    ),
}


def resolve_registered(name: str, data_root: Path, image_size: int, mode: str) -> Path | None:
    """The prepared directory of a registered dataset (prepared on demand), or None if unknown."""
    entry = REGISTERED.get(name)
    if entry is None:
        return None
    return entry.prepare(Path(data_root), image_size=image_size, mode=mode)
