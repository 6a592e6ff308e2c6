"""Tests for orchestrator.data.prepare on synthetic idx files and the real Fashion-MNIST files."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from orchestrator.data.prepare import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_RAW,
    prepare_fashion_mnist,
    read_idx,
    resolve_registered,
)
from orchestrator.errors import ConfigError, DataError
from data_fixtures import write_fake_fashion_mnist, write_idx_gz


def _decode(cell: dict) -> Image.Image:
    return Image.open(io.BytesIO(cell["bytes"]))


@pytest.fixture
def fake_raw(tmp_path: Path) -> tuple[Path, dict]:
    raw = tmp_path / "raw"
    return raw, write_fake_fashion_mnist(raw)


def test_prepare_synthetic_writes_schema_and_info(tmp_path: Path, fake_raw) -> None:
    raw, expected = fake_raw
    out = prepare_fashion_mnist(tmp_path / "data", raw_dir=raw)
    assert out == tmp_path / "data" / "fashion-mnist-28-L"
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["fashion-mnist-28-L"]
    info = json.loads((out / "dataset_info.json").read_text())
    assert info["name"] == "fashion-mnist"
    assert info["classes"] == FASHION_MNIST_CLASSES
    assert (info["image_size"], info["mode"], info["num_rows"]) == (28, "L", {"train": 6, "test": 3})
    for split, (images, labels) in expected.items():
        table = pq.read_table(out / f"{split}.parquet")
        assert table.column_names == ["image", "class_id", "sample_id"]
        assert table.column("class_id").to_pylist() == labels.tolist()
        assert table.column("sample_id").to_pylist() == [f"{split}/{i}" for i in range(len(labels))]
        for cell, pixels in zip(table.column("image").to_pylist(), images):
            image = _decode(cell)
            assert image.format == "PNG" and image.mode == "L"
            np.testing.assert_array_equal(np.asarray(image), pixels)


def test_prepare_resize_and_rgb(tmp_path: Path, fake_raw) -> None:
    raw, _ = fake_raw
    out = prepare_fashion_mnist(tmp_path, image_size=32, mode="RGB", raw_dir=raw)
    assert out.name == "fashion-mnist-32-RGB"
    cell = pq.read_table(out / "train.parquet").column("image")[0].as_py()
    image = _decode(cell)
    assert image.size == (32, 32) and image.mode == "RGB"


def test_prepare_is_idempotent_and_overwrite_rewrites(tmp_path: Path, fake_raw) -> None:
    raw, _ = fake_raw
    out = prepare_fashion_mnist(tmp_path, raw_dir=raw)
    info_path = out / "dataset_info.json"
    info = json.loads(info_path.read_text())
    info["marker"] = "kept"
    info_path.write_text(json.dumps(info))
    assert prepare_fashion_mnist(tmp_path, raw_dir=raw) == out
    assert json.loads(info_path.read_text())["marker"] == "kept"
    assert prepare_fashion_mnist(tmp_path, raw_dir=raw, overwrite=True) == out
    assert "marker" not in json.loads(info_path.read_text())
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "raw") == ["fashion-mnist-28-L"]


def test_prepare_repairs_incomplete_dir(tmp_path: Path, fake_raw) -> None:
    raw, _ = fake_raw
    out = prepare_fashion_mnist(tmp_path, raw_dir=raw)
    (out / "test.parquet").unlink()
    assert prepare_fashion_mnist(tmp_path, raw_dir=raw) == out
    assert pq.read_table(out / "test.parquet").num_rows == 3


def test_missing_raw_file_names_file_and_fix(tmp_path: Path, fake_raw) -> None:
    raw, _ = fake_raw
    (raw / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz.*apt-get install dataset-fashion-mnist"):
        prepare_fashion_mnist(tmp_path / "data", raw_dir=raw)
    assert list((tmp_path / "data").iterdir()) == []  # no half dataset, no temp dir left


def test_truncated_idx_is_a_data_error(tmp_path: Path) -> None:
    path = write_idx_gz(tmp_path / "x.gz", np.zeros((2, 3), dtype=np.uint8))
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-2]))
    with pytest.raises(DataError, match="truncated"):
        read_idx(path)


def test_bad_mode_is_a_config_error(tmp_path: Path, fake_raw) -> None:
    raw, _ = fake_raw
    with pytest.raises(ConfigError, match="'CMYK'.*'L'"):
        prepare_fashion_mnist(tmp_path, mode="CMYK", raw_dir=raw)


def test_resolve_unknown_name_is_none(tmp_path: Path) -> None:
    assert resolve_registered("not-a-dataset", tmp_path, 28, "L") is None


@pytest.mark.skipif(not FASHION_MNIST_RAW.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_via_registry(full_data_root: Path) -> None:
    """Uses the session's real prepared copy (conftest's full_data_root): the registry must reuse it."""
    out = resolve_registered("fashion-mnist", full_data_root, 28, "L")
    assert out == full_data_root / "fashion-mnist-28-L"
    info = json.loads((out / "dataset_info.json").read_text())
    assert info["num_rows"] == {"train": 60000, "test": 10000}
    raw_images = read_idx(FASHION_MNIST_RAW / "t10k-images-idx3-ubyte.gz")
    raw_labels = read_idx(FASHION_MNIST_RAW / "t10k-labels-idx1-ubyte.gz")
    train = pq.read_table(out / "train.parquet", columns=["class_id"])
    test = pq.read_table(out / "test.parquet")
    assert train.num_rows == 60000 and test.num_rows == 10000
    assert sorted(set(train.column("class_id").to_pylist())) == list(range(10))
    assert test.column("class_id").to_pylist() == raw_labels.astype(int).tolist()
    for row in (0, 1, 4321, 9999):
        image = _decode(test.column("image")[row].as_py())
        assert image.size == (28, 28) and image.mode == "L"
        np.testing.assert_array_equal(np.asarray(image), raw_images[row])
    assert test.column("sample_id")[9999].as_py() == "test/9999"
