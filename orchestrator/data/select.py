"""Class-balanced subsets, dataset fingerprints and atomic parquet writes.

Owns: picking exactly IPC rows per class (without decoding images), the fingerprint that
identifies the exact image list of a split, and writing a split in the benchmark schema
(`image`, `class_id`, `sample_id`).
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from orchestrator.errors import ConfigError, DataError
from orchestrator.files import atomic_path

SCHEMA_COLUMNS = ("image", "class_id", "sample_id")
BENCHMARK_FEATURES = datasets.Features(
    {
        "image": datasets.Image(),
        "class_id": datasets.Value("int64"),
        "sample_id": datasets.Value("string"),
    }
)
# A set whose stored images are new (PCA's tiles, distilled images) numbers them itself: `index` is its key.
INDEXED_FEATURES = datasets.Features({**BENCHMARK_FEATURES, "index": datasets.Value("int64")})
SELECTION_RULES = ("first", "random")
_TARGET_ROW_GROUP_BYTES = 32 * 1024 * 1024


def arrow_column(ds: datasets.Dataset, name: str) -> pa.ChunkedArray:
    """One column as arrow, in the dataset's row order (selections applied), never decoded."""
    if name not in ds.column_names:
        raise DataError(
            f"the dataset has no column '{name}' (columns: {ds.column_names}): "
            f"load it through orchestrator.data.sources.load_source, which normalises the schema"
        )
    return ds.with_format("arrow")[name]


def class_id_array(ds: datasets.Dataset) -> np.ndarray:
    """The `class_id` column as an int64 numpy array."""
    return arrow_column(ds, "class_id").to_numpy().astype(np.int64, copy=False)


def per_class_indices(class_ids: np.ndarray) -> dict[int, np.ndarray]:
    """Map each class id present to the ascending row positions holding it."""
    class_ids = np.asarray(class_ids, dtype=np.int64)
    order = np.argsort(class_ids, kind="stable")
    sorted_ids = class_ids[order]
    classes, starts = np.unique(sorted_ids, return_index=True)
    groups = np.split(order, starts[1:])
    return {int(c): g.astype(np.int64) for c, g in zip(classes, groups)}


def _describe_class(class_id: int, class_names: list[str] | None) -> str:
    if class_names is not None and 0 <= class_id < len(class_names):
        return f"class {class_id} ('{class_names[class_id]}')"
    return f"class {class_id}"


class ClassTooSmall(DataError):
    """IPC is larger than a class. A method sees only the dataset (class ids); the caller that knows
    the class names (folder names) words the message with them: `exc.named(source.classes)`."""

    def __init__(self, ipc: int, class_id: int, size: int, source: str, count: int,
                 class_names: list[str] | None = None):
        self.facts = (ipc, class_id, size, source, count)
        self.class_names = class_names
        super().__init__(
            f"IPC {ipc} is larger than {_describe_class(class_id, class_names)}, which has {size} "
            f"images in {source} ({count} classes are too small): lower --ipc to at most {size}")

    def __reduce__(self):  # crosses process boundaries (a sweep trial) with its message
        return ClassTooSmall, (*self.facts, self.class_names)

    def named(self, class_names: list[str] | None) -> "ClassTooSmall":
        return ClassTooSmall(*self.facts, class_names) if class_names else self


def _check_selection_args(ipc: int, how: str) -> None:
    if how not in SELECTION_RULES:
        raise ConfigError(f"unknown selection rule '{how}': use one of {list(SELECTION_RULES)}")
    if not isinstance(ipc, (int, np.integer)) or ipc < 1:
        raise DataError(f"IPC must be a whole number >= 1, got {ipc!r}: set --ipc to 1 or more")


def _groups_for_classes(
    groups: dict[int, np.ndarray],
    num_classes: int | None,
    class_names: list[str] | None,
    source: str,
) -> dict[int, np.ndarray]:
    """Check the class ids against num_classes and return a group for every expected class."""
    if num_classes is None:
        return groups
    outside = sorted(c for c in groups if c < 0 or c >= num_classes)
    if outside:
        raise DataError(
            f"{source} has class ids {outside[:10]} outside 0..{num_classes - 1}: "
            f"pass the full class list (data.classes) or fix the labels"
        )
    empty = [c for c in range(num_classes) if c not in groups]
    if empty:
        named = ", ".join(_describe_class(c, class_names) for c in empty[:10])
        raise DataError(
            f"{source} has no images for {len(empty)} of {num_classes} classes ({named}): "
            f"add images for them or restrict data.classes to the classes present"
        )
    return {c: groups[c] for c in range(num_classes)}


def _pick(rows: np.ndarray, ipc: int, how: str, rng: np.random.Generator) -> np.ndarray:
    if how == "first":
        return rows[:ipc]
    return np.sort(rng.choice(rows, size=ipc, replace=False))


def select_per_class(
    ds: datasets.Dataset,
    ipc: int,
    *,
    how: str = "first",
    seed: int = 0,
    num_classes: int | None = None,
    class_names: list[str] | None = None,
    source: str = "the dataset",
) -> datasets.Dataset:
    """Exactly `ipc` rows per class, ordered by (class_id, original position).

    how="first" keeps each class's first rows in dataset order; how="random" draws them with
    numpy.random.default_rng(seed), classes visited in ascending id. `class_names` and `source`
    only make error messages clearer.
    """
    _check_selection_args(ipc, how)
    groups = per_class_indices(class_id_array(ds))
    if not groups and num_classes is None:
        raise DataError(f"{source} has no rows: point the data source at a non-empty split")
    groups = _groups_for_classes(groups, num_classes, class_names, source)
    too_small = [(c, len(rows)) for c, rows in groups.items() if len(rows) < ipc]
    if too_small:
        cls, size = min(too_small, key=lambda item: item[1])
        raise ClassTooSmall(ipc, cls, size, source, len(too_small), class_names)
    rng = np.random.default_rng(seed)
    picked = [_pick(groups[c], ipc, how, rng) for c in sorted(groups)]
    indices = np.concatenate(picked) if picked else np.zeros(0, dtype=np.int64)
    return ds.select(indices.tolist())


def _image_bytes_digest(cell: dict | None) -> bytes:
    """sha256 of an image cell's bytes (reading the file when only a path is stored)."""
    if cell is None:
        return b"\x00" * 32
    data = cell.get("bytes")
    if data is None and cell.get("path"):
        try:
            data = Path(cell["path"]).read_bytes()
        except OSError as exc:
            raise DataError(
                f"image file {cell['path']} cannot be read ({exc}): "
                f"restore the file or reload the source so the bytes are embedded"
            ) from exc
    return hashlib.sha256(data or b"").digest()


def fingerprint(ds: datasets.Dataset) -> str:
    """16 hex chars of sha256 over (sample_id, class_id, sha256(image bytes)) in row order."""
    outer = hashlib.sha256()
    sample_ids = arrow_column(ds, "sample_id").to_pylist()
    class_ids = class_id_array(ds)
    images = arrow_column(ds, "image")
    row = 0
    for chunk in images.chunks:
        for cell in chunk.to_pylist():
            sid = (sample_ids[row] or "").encode("utf-8")
            outer.update(struct.pack("<q", len(sid)))
            outer.update(sid)
            outer.update(struct.pack("<q", int(class_ids[row])))
            outer.update(_image_bytes_digest(cell))
            row += 1
    outer.update(struct.pack("<q", row))
    return outer.hexdigest()[:16]


def to_benchmark_table(ds: datasets.Dataset) -> pa.Table:
    """The dataset's rows (selections applied) as an arrow table in the benchmark schema."""
    missing = [c for c in SCHEMA_COLUMNS if c not in ds.column_names]
    if missing:
        raise DataError(
            f"cannot write a benchmark split: columns {missing} are missing "
            f"(columns: {ds.column_names}): load it through load_source first"
        )
    table = ds.select_columns(list(SCHEMA_COLUMNS)).with_format("arrow")[:]
    return table.cast(BENCHMARK_FEATURES.arrow_schema)


def _row_group_size(table: pa.Table) -> int:
    if table.num_rows == 0:
        return 1
    bytes_per_row = max(1, table.nbytes // table.num_rows)
    return int(min(10_000, max(64, _TARGET_ROW_GROUP_BYTES // bytes_per_row)))


def write_parquet(ds: datasets.Dataset, path: Path, *, keep_index: bool = False) -> Path:
    """Write `ds` in the benchmark schema (with keep_index, plus its stable `index` key where it has
    one) to `path` atomically (temp file + rename)."""
    table = to_benchmark_table(ds)
    if keep_index and "index" in ds.column_names:
        table = table.append_column("index", arrow_column(ds, "index").cast(pa.int64()))
    with atomic_path(Path(path)) as tmp:
        pq.write_table(table, tmp, row_group_size=_row_group_size(table))
    return Path(path)


def preview_rows(path: Path, *, per_class: int = 4, max_classes: int = 10) -> pa.Table:
    """The first `per_class` rows (`image`, `class_id`) of each class id below `max_classes` of a set.

    What the report's image grid shows of a cell's set. Streams the parquet file batch by batch and
    stops once every wanted class is full, so an ImageNet-scale set is never read whole.
    """
    kept, counts = [], {}
    for batch in pq.ParquetFile(path).iter_batches(columns=["image", "class_id"], batch_size=1024):
        labels = batch.column("class_id").to_numpy(zero_copy_only=False)
        take = []
        for row, label in enumerate(labels.tolist()):
            if label < max_classes and counts.get(label, 0) < per_class:
                counts[label] = counts.get(label, 0) + 1
                take.append(row)
        if take:
            kept.append(pa.Table.from_batches([batch]).take(take))
        if len(counts) == max_classes and min(counts.values()) == per_class:
            break
    schema = pq.read_schema(path)
    return pa.concat_tables(kept) if kept else schema.empty_table().select(["image", "class_id"])
