"""Tests for orchestrator.data.select: class-balanced selection, fingerprints, parquet writes."""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.data.select import (
    fingerprint,
    per_class_indices,
    select_per_class,
    write_parquet,
)
from orchestrator.data.sources import load_source
from orchestrator.errors import ConfigError, DataError
from data_fixtures import benchmark_dataset, fake_bytes_dataset, image_bytes

LABELS = [2, 0, 1, 0, 2, 1, 0, 2, 1, 0, 2, 1]  # 4 rows per class, interleaved


def _ids(ds: datasets.Dataset) -> list[str]:
    return ds["sample_id"][:]


def test_per_class_indices() -> None:
    groups = per_class_indices(np.array([3, 1, 3, 0, 1, 3]))
    assert sorted(groups) == [0, 1, 3]
    assert [groups[c].tolist() for c in (0, 1, 3)] == [[3], [1, 4], [0, 2, 5]]


def test_first_keeps_first_rows_ordered_by_class() -> None:
    picked = select_per_class(fake_bytes_dataset(LABELS), 2)
    assert picked["class_id"][:] == [0, 0, 1, 1, 2, 2]
    assert _ids(picked) == ["s/1", "s/3", "s/2", "s/5", "s/0", "s/4"]


def test_random_is_seeded_sorted_and_exact() -> None:
    ds = fake_bytes_dataset([c for c in range(5) for _ in range(40)])
    a = select_per_class(ds, 7, how="random", seed=3)
    b = select_per_class(ds, 7, how="random", seed=3)
    c = select_per_class(ds, 7, how="random", seed=4)
    assert _ids(a) == _ids(b) and _ids(a) != _ids(c)
    assert np.bincount(a["class_id"][:]).tolist() == [7] * 5
    positions = [int(s.split("/")[1]) for s in _ids(a)]
    assert positions == sorted(positions) and len(set(positions)) == 35
    assert _ids(a) != _ids(select_per_class(ds, 7, how="first"))


def test_selection_of_a_selection() -> None:
    ds = fake_bytes_dataset(LABELS).select([11, 10, 9, 8, 7, 6])  # indices mapping, reversed order
    picked = select_per_class(ds, 1)
    assert _ids(picked) == ["s/9", "s/11", "s/10"]


def test_ipc_too_large_names_class_size_and_fix() -> None:
    ds = fake_bytes_dataset([0] * 60 + [1] * 60 + [2] * 60 + [3] * 50)
    names = ["T-shirt/top", "Trouser", "Pullover", "Dress"]
    with pytest.raises(DataError) as info:
        select_per_class(ds, 60, class_names=names, source="fashion-mnist (train)")
    assert str(info.value).startswith(
        "IPC 60 is larger than class 3 ('Dress'), which has 50 images in fashion-mnist (train)"
    )
    assert "lower --ipc to at most 50" in str(info.value)


def test_bad_arguments() -> None:
    ds = fake_bytes_dataset(LABELS)
    with pytest.raises(DataError, match="IPC must be a whole number >= 1"):
        select_per_class(ds, 0)
    with pytest.raises(ConfigError, match="unknown selection rule 'best'"):
        select_per_class(ds, 1, how="best")
    with pytest.raises(DataError, match=r"no images for 2 of 5 classes \(class 3, class 4\)"):
        select_per_class(ds, 1, num_classes=5)
    with pytest.raises(DataError, match="outside 0..1"):
        select_per_class(ds, 1, num_classes=2)
    with pytest.raises(DataError, match="has no rows"):
        select_per_class(fake_bytes_dataset([]), 1)


@settings(max_examples=30, deadline=None)
@given(
    labels=st.lists(st.integers(0, 4), min_size=1, max_size=40),
    ipc=st.integers(1, 6),
    how=st.sampled_from(["first", "random"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_select_per_class_properties(labels: list[int], ipc: int, how: str, seed: int) -> None:
    ds = fake_bytes_dataset(labels)
    counts = np.bincount(labels)
    present = [c for c in range(len(counts)) if counts[c] > 0]
    if any(counts[c] < ipc for c in present):
        with pytest.raises(DataError, match="lower --ipc"):
            select_per_class(ds, ipc, how=how, seed=seed)
        return
    picked = select_per_class(ds, ipc, how=how, seed=seed)
    rows = [int(s.split("/")[1]) for s in _ids(picked)]
    assert len(picked) == ipc * len(present)
    assert len(set(rows)) == len(rows)
    assert [labels[r] for r in rows] == picked["class_id"][:]
    assert sorted(zip(picked["class_id"][:], rows)) == list(zip(picked["class_id"][:], rows))
    assert np.bincount(picked["class_id"][:]).tolist() == [ipc if c in present else 0 for c in range(len(counts))]
    assert _ids(select_per_class(ds, ipc, how=how, seed=seed)) == _ids(picked)
    if how == "first":
        assert rows == [r for c in present for r in [i for i, x in enumerate(labels) if x == c][:ipc]]


def _with(ds: datasets.Dataset, **changes) -> datasets.Dataset:
    columns = {
        "image": ds.with_format("arrow")["image"].to_pylist(),
        "class_id": ds["class_id"][:],
        "sample_id": ds["sample_id"][:],
    }
    for name, (row, value) in changes.items():
        columns[name][row] = value
    return datasets.Dataset.from_dict(columns, features=ds.features)


def test_fingerprint_properties() -> None:
    ds = benchmark_dataset([0, 1, 2, 0])
    fp = fingerprint(ds)
    assert len(fp) == 16 and int(fp, 16) >= 0
    assert fingerprint(benchmark_dataset([0, 1, 2, 0])) == fp
    changed_byte = bytearray(ds.with_format("arrow")["image"][1].as_py()["bytes"])
    changed_byte[-5] ^= 1
    variants = [
        _with(ds, image=(1, {"bytes": bytes(changed_byte), "path": None})),
        _with(ds, image=(1, {"bytes": image_bytes(99, size=2), "path": None})),
        _with(ds, sample_id=(2, "train/99")),
        _with(ds, class_id=(3, 1)),
        ds.select([1, 0, 2, 3]),
        ds.select([0, 1, 2]),
    ]
    prints = [fingerprint(v) for v in variants]
    assert fp not in prints and len(set(prints)) == len(prints)


def test_fingerprint_survives_parquet_roundtrip(tmp_path: Path) -> None:
    picked = select_per_class(benchmark_dataset(LABELS), 2, how="random", seed=1)
    path = write_parquet(picked, tmp_path / "sub" / "train.parquet")
    assert sorted(p.name for p in path.parent.iterdir()) == ["train.parquet"]  # no temp file left
    reloaded = load_source(str(path), data_root=tmp_path).dataset
    assert fingerprint(reloaded) == fingerprint(picked)
    table = pq.read_table(path)
    assert table.column_names == ["image", "class_id", "sample_id"]
    assert str(table.schema.field("class_id").type) == "int64"
    assert datasets.Features.from_arrow_schema(table.schema)["image"] == datasets.Image()


def test_write_parquet_replaces_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "x.parquet"
    write_parquet(benchmark_dataset([0, 1]), path)
    write_parquet(benchmark_dataset([1, 1, 0]), path)
    assert pq.read_table(path).column("class_id").to_pylist() == [1, 1, 0]
    with pytest.raises(DataError, match="columns \\['sample_id'\\] are missing"):
        write_parquet(benchmark_dataset([0]).remove_columns("sample_id"), path)
    assert pq.read_table(path).num_rows == 3


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="no fashion-mnist")
def test_real_fashion_mnist_selection_is_fast_and_stable(data_root: Path) -> None:
    train = load_source("fashion-mnist", data_root=data_root).dataset
    first = select_per_class(train, 10, num_classes=10)
    again = select_per_class(train, 10, num_classes=10)
    assert len(first) == 100 and fingerprint(first) == fingerprint(again)
    assert fingerprint(select_per_class(train, 10, how="random", seed=0, num_classes=10)) != fingerprint(first)


def test_preview_rows_are_the_first_images_of_each_class_read_in_batches(data_root):
    """The report's image grid reads a few rows per class of a real set without loading it whole."""
    from orchestrator.data.select import preview_rows

    path = data_root / "fashion-mnist-28-L" / "train.parquet"
    labels = pq.read_table(path, columns=["class_id"])["class_id"].to_numpy()
    table = preview_rows(path, per_class=3, max_classes=4)
    assert table.column_names == ["image", "class_id"]
    expected = sorted(int(np.flatnonzero(labels == c)[i]) for c in range(4) for i in range(3))
    assert table["class_id"].to_pylist() == labels[expected].tolist()
    full = pq.read_table(path, columns=["image"]).take(expected)["image"].to_pylist()
    assert table["image"].to_pylist() == full
