"""Ray Data side of a cell: parquet (benchmark schema) -> decoded / transformed Ray Datasets.

Training images are decoded once (uint8 HWC); a set small enough is held as numpy arrays that the
cell hands to every worker, a larger one streams as a Ray Dataset. The per-epoch shuffle and
augmentation run in the worker (`trainers.batches`). Validation images are decoded and transformed
once; a validation set that fits in memory is cached on disk beside its parquet file, so later
cells load it instead of decoding it again.

Where decoding runs: a set of at most DRIVER_DECODE_PIXELS pixels (images x side^2) decodes in the
calling process (Fashion-MNIST's 60,000 training images: 7 s here, against 20 s through Ray Data
tasks); a larger one (ImageNet-scale images) decodes in parallel Ray Data tasks across the cluster.
"""

from __future__ import annotations

import hashlib
from functools import partial
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from orchestrator.data.images import decode_cell
from orchestrator.files import atomic_path

MATERIALIZE_LIMIT_BYTES = 2 * 1024**3  # decoded size under which a dataset is kept in memory
# Fractional CPUs for Ray Data tasks: decoding never waits for a whole free core while trials and
# Train workers (or a placement group ASHA left behind) hold fractions of a small machine.
DATA_TASK_CPUS = 0.25
DRIVER_DECODE_PIXELS = 64_000_000  # sets up to this many pixels decode in-process, larger ones in Ray Data tasks


def decodes_in_process(num_rows: int, side: int) -> bool:
    return num_rows * side * side <= DRIVER_DECODE_PIXELS


def as_hwc(image: Image.Image) -> np.ndarray:
    array = np.array(image, dtype=np.uint8)  # a writable copy: torch.from_numpy warns on PIL's read-only view
    return array[:, :, None] if array.ndim == 2 else array


def decode_images(cells: Sequence, mode: str, size: int) -> np.ndarray:
    """HF image cells -> uint8 [N, size, size, C]; images not at the storage size are resized."""
    images = (decode_cell(cell, mode) for cell in cells)
    return np.stack([as_hwc(im if im.size == (size, size) else im.resize((size, size), Image.BICUBIC))
                     for im in images])


def decode_train_batch(batch: dict, mode: str, size: int) -> dict:
    return {"image": decode_images(batch["image"], mode, size),
            "label": np.asarray(batch["class_id"], dtype=np.int64),
            "key": np.asarray(batch["index"], dtype=np.int64)}


def decode_val_batch(batch: dict, mode: str, resize: int, crop: int, mean, std) -> dict:
    from orchestrator.image_views import eval_views

    views = [eval_views(as_hwc(decode_cell(cell, mode))[None], resize=resize, crop=crop, mean=mean, std=std)
             for cell in batch["image"]]
    return {"image": np.concatenate([v.numpy() for v in views]), "label": np.asarray(batch["class_id"], dtype=np.int64)}


def read_split(path: Path):
    import ray.data

    return ray.data.read_parquet(str(path), num_cpus=DATA_TASK_CPUS).select_columns(split_columns(path))


def split_columns(path: Path) -> list[str]:
    """The benchmark columns a split's parquet file(s) hold: image, class_id and, if present, index."""
    import pyarrow.parquet as pq

    files = sorted(Path(path).glob("*.parquet")) if Path(path).is_dir() else [Path(path)]
    return ["image", "class_id", "index"] if "index" in pq.read_schema(files[0]).names else ["image", "class_id"]


def train_dataset(path: Path, *, mode: str, num_rows: int, image_size: int, batch_rows: int = 256):
    """Decoded training set (image uint8 HWC, label, key); materialised when it fits in memory."""
    dataset = read_split(path).map_batches(partial(decode_train_batch, mode=mode, size=image_size),
                                           batch_size=batch_rows, batch_format="numpy", num_cpus=DATA_TASK_CPUS)
    return dataset.materialize() if fits_in_memory(num_rows, image_size=image_size, mode=mode) else dataset


def val_dataset(path: Path, *, mode: str, num_rows: int, resize: int, crop: int, mean, std,
                batch_rows: int = 256):
    """Validation set, decoded and transformed once (resize, center crop, normalise)."""
    fn = partial(decode_val_batch, mode=mode, resize=resize, crop=crop, mean=tuple(mean), std=tuple(std))
    dataset = read_split(path).map_batches(fn, batch_size=batch_rows, batch_format="numpy", num_cpus=DATA_TASK_CPUS)
    small = fits_in_memory(num_rows, image_size=crop, mode=mode, bytes_per_value=4)
    return dataset.materialize() if small else dataset


def fits_in_memory(num_rows: int, *, image_size: int, mode: str, bytes_per_value: int = 1) -> bool:
    """True when a decoded split (uint8, or float32 with bytes_per_value=4) is small enough to hold whole."""
    channels = 1 if mode == "L" else 3
    return num_rows * image_size * image_size * channels * bytes_per_value <= MATERIALIZE_LIMIT_BYTES


def train_decodes_here(num_rows: int, *, image_size: int, mode: str) -> bool:
    """The training split is held whole and decoded in this process (training_arrays), not by Ray Data."""
    return fits_in_memory(num_rows, image_size=image_size, mode=mode) and decodes_in_process(num_rows, image_size)


def val_decodes_here(num_rows: int, *, resize: int, crop: int, mode: str) -> bool:
    """The validation views are held whole and decoded in this process (validation_arrays)."""
    return (fits_in_memory(num_rows, image_size=crop, mode=mode, bytes_per_value=4)
            and decodes_in_process(num_rows, resize))


def collect_arrays(dataset, columns: Sequence[str]) -> dict[str, np.ndarray]:
    """A decoded split as numpy arrays, one per column, in the dataset's (preserved) order."""
    parts = list(dataset.iter_batches(batch_size=4096, batch_format="numpy"))
    return {name: np.concatenate([part[name] for part in parts]) for name in columns}


def decoded_arrays(dataset) -> dict[str, np.ndarray]:
    """A decoded training Ray Dataset as numpy arrays {"image", "label", "key"}, rows sorted by key."""
    return sorted_by_key(collect_arrays(dataset, ("image", "label", "key")))


def sorted_by_key(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rows in key order: every rank then draws its part of one uniform shuffle of the whole set."""
    order = np.argsort(arrays["key"], kind="stable")
    return {name: np.ascontiguousarray(value[order]) for name, value in arrays.items()}


def read_columns(path: Path) -> dict[str, list]:
    """The benchmark columns of a split's parquet file(s), read in this process."""
    import pyarrow.parquet as pq

    columns = split_columns(path)
    table = pq.read_table(str(path), columns=columns)
    return {name: table.column(name).to_pylist() for name in columns}


def training_arrays(path: Path, *, mode: str, num_rows: int, image_size: int) -> dict[str, np.ndarray] | None:
    """The decoded training set held whole {"image", "label", "key"}, or None when it must stream.

    Small compressed sets go to the workers once, through the object store (docs/protocol.md
    §Batch and shuffle); only a set too large to hold streams from Ray Data shards.
    """
    if train_decodes_here(num_rows, image_size=image_size, mode=mode):
        columns = read_columns(path)
        columns.setdefault("index", list(range(num_rows)))
        return sorted_by_key(decode_train_batch(columns, mode=mode, size=image_size))
    if not fits_in_memory(num_rows, image_size=image_size, mode=mode):
        return None
    return decoded_arrays(train_dataset(path, mode=mode, num_rows=num_rows, image_size=image_size))


def validation_arrays(path: Path, *, mode: str, num_rows: int, resize: int, crop: int, mean, std
                      ) -> dict[str, np.ndarray] | None:
    """The transformed validation set {"image" float32 NCHW, "label"}, or None when it must stream.

    Cached beside the split's parquet file (whose folder is named by the set's fingerprint) under
    a name of the transform, so only the first cell of a machine pays for decoding it.
    """
    if not fits_in_memory(num_rows, image_size=crop, mode=mode, bytes_per_value=4):
        return None
    transform = f"{mode}-{resize}-{crop}-{tuple(mean)}-{tuple(std)}"
    cache = Path(path).parent / f"views-{hashlib.sha256(transform.encode()).hexdigest()[:12]}.npz"
    if cache.exists():
        with np.load(cache) as stored:
            return {"image": stored["image"], "label": stored["label"]}
    if not val_decodes_here(num_rows, resize=resize, crop=crop, mode=mode):
        dataset = val_dataset(path, mode=mode, num_rows=num_rows, resize=resize, crop=crop, mean=mean, std=std)
        arrays = collect_arrays(dataset, ("image", "label"))
    else:
        arrays = decode_val_batch(read_columns(path), mode=mode, resize=resize, crop=crop, mean=mean, std=std)
    write_npz(cache, arrays)
    return arrays


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with atomic_path(path) as tmp:
        np.savez(tmp, **arrays)
