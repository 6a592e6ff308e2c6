"""Real-file builders for the data-layer tests: idx gz files, PNG/JPEG folders, small datasets."""

from __future__ import annotations

import gzip
import io
import struct
from pathlib import Path

import datasets
import numpy as np
from PIL import Image

from orchestrator.data.select import BENCHMARK_FEATURES


def write_idx_gz(path: Path, array: np.ndarray) -> Path:
    """Write a uint8 array as a gzipped idx file (MNIST format)."""
    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.tobytes())
    return path


def write_fake_fashion_mnist(raw_dir: Path, n_train: int = 6, n_test: int = 3,
                            seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A tiny Fashion-MNIST raw folder; returns {split: (images, labels)}."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx_gz(raw_dir / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx_gz(raw_dir / f"{prefix}-labels-idx1-ubyte.gz", labels)
        out[split] = (images, labels.astype(np.int64))
    return out


def image_bytes(value: int, fmt: str = "PNG", size: int = 8, mode: str = "RGB") -> bytes:
    """Encoded bytes of a small solid image whose colour encodes `value`."""
    colour = (value % 256, (value * 7) % 256, (value * 13) % 256) if mode == "RGB" else value % 256
    buffer = io.BytesIO()
    Image.new(mode, (size, size), colour).save(buffer, format=fmt)
    return buffer.getvalue()


def make_image_folder(root: Path, counts: dict[str, int], fmt: str = "PNG") -> Path:
    """root/<class>/img_<i>.<ext> with real encoded images."""
    ext = {"PNG": "png", "JPEG": "JPEG"}[fmt]
    for c, (name, count) in enumerate(sorted(counts.items())):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            (folder / f"img_{i}.{ext}").write_bytes(image_bytes(c * 50 + i, fmt))
    return root


def grey_image_folder(root: Path, counts: dict[str, int], size: int = 28) -> Path:
    """root/<class>/<i>.png: `counts[class]` grey `size` x `size` PNGs per class, Fashion-MNIST-like."""
    for name, count in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            Image.new("L", (size, size), color=index * 20).save(root / name / f"{index}.png")
    return root


def benchmark_dataset(class_ids: list[int], prefix: str = "train") -> datasets.Dataset:
    """An in-memory dataset in the benchmark schema; image bytes are tiny real PNGs."""
    return datasets.Dataset.from_dict(
        {
            "image": [{"bytes": image_bytes(i, size=2), "path": None} for i in range(len(class_ids))],
            "class_id": [int(c) for c in class_ids],
            "sample_id": [f"{prefix}/{i}" for i in range(len(class_ids))],
        },
        features=BENCHMARK_FEATURES,
    )


def fake_bytes_dataset(class_ids: list[int]) -> datasets.Dataset:
    """Benchmark-schema dataset with placeholder bytes (selection never decodes images)."""
    return datasets.Dataset.from_dict(
        {
            "image": [{"bytes": f"img{i}".encode(), "path": None} for i in range(len(class_ids))],
            "class_id": [int(c) for c in class_ids],
            "sample_id": [f"s/{i}" for i in range(len(class_ids))],
        },
        features=BENCHMARK_FEATURES,
    )
