"""Tests for orchestrator.data.sources on real files: image folders, save_to_disk, parquet, registry, hub."""

from __future__ import annotations

from pathlib import Path

import datasets
import huggingface_hub.constants
import pytest
from PIL import Image

from orchestrator.data.prepare import FASHION_MNIST_CLASSES
from orchestrator.data.select import write_parquet
from orchestrator.data.sources import Source, check_class_sets, check_images, load_source
from orchestrator.errors import DataError
from data_fixtures import benchmark_dataset, image_bytes, make_image_folder

CLASSES3 = ["cat", "dog", "zebra"]


def _hf_style_dataset(labels: list[int], names: list[str] | None = CLASSES3) -> datasets.Dataset:
    """A dataset shaped like a hub one: `image` + `label` (ClassLabel), no sample_id."""
    label = datasets.ClassLabel(names=names) if names else datasets.Value("int64")
    features = datasets.Features({"image": datasets.Image(), "label": label})
    images = [{"bytes": image_bytes(i), "path": None} for i in range(len(labels))]
    return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)


def _load(spec, split="train", **kwargs) -> Source:
    kwargs.setdefault("data_root", Path("/nonexistent-data-root"))
    return load_source(str(spec), split, **kwargs)


# ---------------------------------------------------------------- registered


def test_registered_fashion_mnist(full_data_root: Path) -> None:
    train = _load("fashion-mnist", data_root=full_data_root)
    test = _load("fashion-mnist", "test", data_root=full_data_root)
    assert (len(train.dataset), len(test.dataset)) == (60000, 10000)
    assert train.classes == FASHION_MNIST_CLASSES and train.num_classes == 10
    assert train.dataset.column_names == ["image", "class_id", "sample_id"]
    row = test.dataset[0]
    assert row["sample_id"] == "test/0" and row["image"].size == (28, 28)
    assert check_class_sets(train, test) == FASHION_MNIST_CLASSES


def test_registered_bad_split_and_class_names(data_root: Path) -> None:
    with pytest.raises(DataError, match=r"no split 'val'.*\['train', 'test'\]"):
        _load("fashion-mnist", "val", data_root=data_root)
    wrong = list(FASHION_MNIST_CLASSES)
    wrong[3] = "Gown"
    with pytest.raises(DataError, match=r"3: 'Dress' vs 'Gown'.*remove data.classes"):
        _load("fashion-mnist", "test", data_root=data_root, classes=wrong)


# ---------------------------------------------------------------- image folders


def test_image_folder_sorted_classes_keeps_bytes(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "val", {"zebra": 2, "cat": 3, "dog": 1}, fmt="JPEG")
    (root / "cat" / "notes.txt").write_text("not an image")  # ignored
    src = _load(root)
    assert src.classes == CLASSES3 and src.num_classes == 3
    assert src.dataset["class_id"][:] == [0, 0, 0, 1, 2, 2]
    ids = src.dataset["sample_id"][:]
    assert ids == ["cat/img_0.JPEG", "cat/img_1.JPEG", "cat/img_2.JPEG", "dog/img_0.JPEG",
                   "zebra/img_0.JPEG", "zebra/img_1.JPEG"]
    stored = src.dataset.with_format("arrow")["image"].to_pylist()
    assert [c["bytes"] for c in stored] == [(root / i).read_bytes() for i in ids]
    assert src.dataset[0]["image"].format == "JPEG"


def test_image_folder_explicit_class_order(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "val", {"cat": 1, "dog": 1, "zebra": 1})
    src = _load(root, classes=["zebra", "cat", "dog"])
    assert src.classes == ["zebra", "cat", "dog"]
    pairs = sorted(zip(src.dataset["sample_id"][:], src.dataset["class_id"][:]))
    assert pairs == [("cat/img_0.png", 1), ("dog/img_0.png", 2), ("zebra/img_0.png", 0)]


def test_image_folder_class_list_mismatch(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "val", {"cat": 1, "dog": 1, "zebra": 1})
    with pytest.raises(DataError, match=r"folders not in the list: \[zebra\].*no folder: \[lion\]"):
        _load(root, classes=["cat", "dog", "lion"])


def test_image_folder_split_layout(tmp_path: Path) -> None:
    make_image_folder(tmp_path / "ds" / "train", {"cat": 2, "dog": 2})
    make_image_folder(tmp_path / "ds" / "val", {"cat": 1, "dog": 1})
    assert len(_load(tmp_path / "ds", "val").dataset) == 2
    with pytest.raises(DataError, match=r"no split folder 'test'.*\['train', 'val'\]"):
        _load(tmp_path / "ds", "test")


def test_image_folder_corrupt_images_listed(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "val", {"cat": 2, "dog": 2})
    (root / "dog" / "img_1.png").write_bytes(b"definitely not a png")
    (root / "cat" / "empty.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"2 of 5 images .* cannot be opened: cat/empty.png.*dog/img_1.png.*Fix"):
        _load(root)


def test_image_folder_flat_layout_explained(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    root.mkdir()
    for i in range(3):
        (root / f"ILSVRC2012_val_{i:08d}.JPEG").write_bytes(image_bytes(i, "JPEG"))
    with pytest.raises(DataError, match=r"3 image files directly .*one sub-folder per class"):
        _load(root)


def test_image_folder_empty_class(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "val", {"cat": 1, "dog": 1})
    (root / "zebra").mkdir()
    with pytest.raises(DataError, match=r"1 class folders .* hold no images \(zebra"):
        _load(root)


def test_missing_path_and_non_parquet_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such dataset folder"):
        _load(tmp_path / "nowhere")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="not parquet"):
        _load(tmp_path / "x.csv")


# ---------------------------------------------------------------- save_to_disk and parquet


def test_save_to_disk_dataset_dict_normalised(tmp_path: Path) -> None:
    dd = datasets.DatasetDict({"train": _hf_style_dataset([0, 1, 2, 1]), "validation": _hf_style_dataset([2, 0])})
    dd.save_to_disk(str(tmp_path / "saved"))
    src = _load(tmp_path / "saved", "validation")
    assert src.classes == CLASSES3
    assert src.dataset.column_names == ["image", "class_id", "sample_id"]
    assert src.dataset.features["class_id"] == datasets.Value("int64")
    assert src.dataset["class_id"][:] == [2, 0]
    assert src.dataset["sample_id"][:] == ["validation/0", "validation/1"]
    with pytest.raises(DataError, match=r"no split 'test' \(available splits: \['train', 'validation'\]\)"):
        _load(tmp_path / "saved", "test")


def test_save_to_disk_single_dataset(tmp_path: Path) -> None:
    benchmark_dataset([0, 1, 1]).save_to_disk(str(tmp_path / "one"))
    src = _load(tmp_path / "one", classes=["a", "b"])
    assert src.classes == ["a", "b"] and src.dataset["sample_id"][:] == ["train/0", "train/1", "train/2"]


def test_parquet_file_written_by_project(tmp_path: Path) -> None:
    ds = benchmark_dataset([0, 0, 1, 1]).select([3, 1])
    path = write_parquet(ds, tmp_path / "subset.parquet")
    src = _load(path)
    assert src.classes is None and src.num_classes == 2
    assert src.dataset["sample_id"][:] == ["train/3", "train/1"]
    assert src.dataset[0]["image"].size == (2, 2)


@pytest.mark.parametrize("layout", ["{split}.parquet", "{split}-00000.parquet", "data/{split}-00000-of-00001.parquet"])
def test_parquet_dir_layouts(tmp_path: Path, layout: str) -> None:
    folder = tmp_path / "pq"
    for split, labels in (("train", [0, 1, 2, 0]), ("test", [1, 2, 0])):
        path = folder / layout.format(split=split)
        path.parent.mkdir(parents=True, exist_ok=True)
        _hf_style_dataset(labels).to_parquet(str(path))  # HF's own writer, as on the hub
    src = _load(folder, "test")
    assert src.dataset["class_id"][:] == [1, 2, 0]
    assert src.classes == CLASSES3
    with pytest.raises(DataError, match=r"no parquet files for split 'val'.*\['test', 'train'\]"):
        _load(folder, "val")


def test_prepared_dir_is_a_parquet_source_with_names(full_data_root: Path) -> None:
    src = _load(full_data_root / "fashion-mnist-28-L", "test")
    assert src.classes == FASHION_MNIST_CLASSES and len(src.dataset) == 10000


def test_missing_columns_and_bad_labels(tmp_path: Path) -> None:
    no_label = datasets.Dataset.from_dict({"image": [{"bytes": image_bytes(0), "path": None}]},
                                          features=datasets.Features({"image": datasets.Image()}))
    no_label.to_parquet(str(tmp_path / "nolabel.parquet"))
    with pytest.raises(DataError, match="no label column"):
        _load(tmp_path / "nolabel.parquet")
    datasets.Dataset.from_dict({"pixels": [1], "label": [0]}).to_parquet(str(tmp_path / "noimg.parquet"))
    with pytest.raises(DataError, match="no image column"):
        _load(tmp_path / "noimg.parquet")
    unlabelled = _hf_style_dataset([0, 1, 1], names=None)
    unlabelled = unlabelled.map(lambda row: {"label": -1})
    unlabelled.to_parquet(str(tmp_path / "unlabelled.parquet"))
    with pytest.raises(DataError, match="3 rows with a negative class id"):
        _load(tmp_path / "unlabelled.parquet")


def test_class_ids_beyond_given_names(tmp_path: Path) -> None:
    write_parquet(benchmark_dataset([0, 1, 2]), tmp_path / "x.parquet")
    with pytest.raises(DataError, match="class id 2 but only 2 class names"):
        _load(tmp_path / "x.parquet", classes=["a", "b"])


# ---------------------------------------------------------------- hub


def test_hub_key_offline_is_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    # the libraries read those variables at import time: set their flags too
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    key = "he-yang/2025-rethinkdc-imagenet-random-ipc-10"
    with pytest.raises(DataError) as info:
        _load(key)
    message = str(info.value)
    assert message.startswith(f"cannot load hub dataset '{key}':")
    assert "The hub is unreachable (offline?)" in message
    assert f"datasets.load_dataset('{key}').save_to_disk(DIR)" in message


# ---------------------------------------------------------------- checks


def test_check_images_lists_corrupt_sample_ids(tmp_path: Path) -> None:
    ds = benchmark_dataset([0, 1, 0, 1])
    table = ds.with_format("arrow")[:]
    cells = table.column("image").to_pylist()
    cells[3] = {"bytes": image_bytes(3)[:20], "path": None}  # truncated PNG
    broken = datasets.Dataset.from_dict(
        {"image": cells, "class_id": [0, 1, 0, 1], "sample_id": ds["sample_id"][:]}, features=ds.features
    )
    check_images(ds)
    check_images(broken, limit=3)
    with pytest.raises(DataError, match=r"1 of 4 images cannot be decoded: train/3"):
        check_images(broken)


def _source(labels: list[int], classes: list[str] | None, spec: str) -> Source:
    return Source(dataset=benchmark_dataset(labels), classes=classes, spec=spec, split="x")


def test_check_class_sets_match_and_mismatch() -> None:
    train = _source([0, 1, 2, 2], CLASSES3, "train-set")
    assert check_class_sets(train, _source([2, 1, 0], None, "val-set")) == CLASSES3
    with pytest.raises(DataError) as info:
        check_class_sets(train, _source([0, 1, 3], None, "val-set"))
    message = str(info.value)
    assert "1 training classes have no validation images [2 ('zebra')]" in message
    assert "1 validation classes are not in training [3]" in message
    assert "data.classes" in message
    with pytest.raises(DataError, match=r"class names differ.*1: 'dog' vs 'wolf'"):
        check_class_sets(train, _source([0, 1, 2], ["cat", "wolf", "zebra"], "val-set"))


def test_image_folder_val_matches_parquet_train(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "val", {"cat": 1, "dog": 1, "zebra": 1})
    write_parquet(benchmark_dataset([0, 1, 2, 2]), tmp_path / "train.parquet")
    train = _load(tmp_path / "train.parquet")
    val = _load(root)
    assert check_class_sets(train, val) == CLASSES3
    Image.open(root / "cat" / "img_0.png").verify()
