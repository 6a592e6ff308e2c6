"""Bad input gets one clear error naming the problem and the fix (no traceback): exit code 2 for a
config, 3 for data (`orchestrator.errors`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from data_fixtures import grey_image_folder
from tests_paths import HARD, run_cli


def test_unknown_config_key(capsys, base_args):
    code, text = run_cli(capsys, "run", *base_args, "--set", "optim.weight_decy=0.1")
    assert code == 2 and "unknown config key 'optim.weight_decy'" in text and "optim.weight_decay" in text


def test_ipc_larger_than_a_class(capsys, base_args):
    code, text = run_cli(capsys, "run", *base_args, "--ipc", "7000")
    assert code == 3 and "IPC 7000" in text and "6000" in text and "lower --ipc" in text


def test_ipc_larger_than_a_class_names_the_class_folder(capsys, base_args, tmp_path):
    digits = grey_image_folder(tmp_path / "digits", {"digit_0": 3, "digit_1": 3, "digit_2": 1})
    code, text = run_cli(capsys, "run", *base_args, "--set", f"data.train={digits}", "--set", f"data.val={digits}",
                         "--set", "data.val_split=train", "--method", "random", "--ipc", "2")
    assert code == 3 and "IPC 2 is larger than class 2 ('digit_2'), which has 1 images" in text, text


def test_missing_dataset_folder(capsys, base_args, tmp_path):
    code, text = run_cli(capsys, "run", *base_args, "--set", f"data.train={tmp_path / 'nowhere'}",
                         "--method", "first", "--ipc", "1")
    assert code == 3 and "nowhere" in text


def test_corrupt_image(capsys, base_args, tmp_path):
    train = grey_image_folder(tmp_path / "train", {name: 2 for name in "abcdefghij"})
    (train / "c" / "1.png").write_bytes(b"not a png at all")
    code, text = run_cli(capsys, "run", *base_args, "--set", f"data.train={train}", "--method", "first",
                         "--ipc", "1")
    assert code == 3 and "c/1.png" in text


def test_wrong_folder_layout(capsys, base_args, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for index in range(3):
        Image.new("L", (28, 28)).save(flat / f"{index}.png")
    code, text = run_cli(capsys, "run", *base_args, "--set", f"data.train={flat}", "--method", "first",
                         "--ipc", "1")
    assert code == 3 and "sub-folder" in text.replace("subfolder", "sub-folder")


def test_class_set_does_not_match_validation(capsys, base_args, tmp_path):
    train = grey_image_folder(tmp_path / "train", {"a": 2, "b": 2, "c": 2})
    val = grey_image_folder(tmp_path / "val", {"a": 2, "b": 2})
    code, text = run_cli(capsys, "run", *base_args, "--set", f"data.train={train}", "--set", f"data.val={val}",
                         "--set", "data.val_split=train", "--method", "first", "--ipc", "1")
    assert code == 3 and "'c'" in text and "data.classes" in text


def test_hub_key_without_network(capsys, base_args):
    code, text = run_cli(capsys, "run", *base_args, "--set",
                         "data.source_template=he-yang/2025-rethinkdc-imagenet-{method}-ipc-{ipc}", "--ipc", "10")
    assert code == 3 and "he-yang/2025-rethinkdc-imagenet-random-ipc-10" in text and "save_to_disk" in text


@pytest.fixture
def small_train_root(tmp_path, data_root) -> Path:
    """Fashion-MNIST with its first 100 training images per class (real images, the same validation
    split): a teacher epoch in seconds, whatever else the machine runs."""
    import json

    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    name = "fashion-mnist-28-L"
    source, target = data_root / name, tmp_path / "small" / name
    target.mkdir(parents=True)
    train = pq.read_table(source / "train.parquet")
    keep = sorted(i for label in range(10)
                  for i in pc.indices_nonzero(pc.equal(train["class_id"], label)).to_pylist()[:100])
    pq.write_table(train.take(keep), target / "train.parquet")
    (target / "test.parquet").symlink_to((source / "test.parquet").resolve())
    info = json.loads((source / "dataset_info.json").read_text())
    info["num_rows"]["train"] = len(keep)
    (target / "dataset_info.json").write_text(json.dumps(info))
    return target.parent


def test_run_trains_the_missing_teacher_first_as_a_sweep_does(capsys, base_args, tmp_path, small_train_root):
    code, text = run_cli(capsys, "run", *base_args, "--label-mode", "soft", "--ipc", "1",
                         "--set", f"data.root={small_train_root}",
                         "--set", "teacher.epochs=1", "--set", "teacher.model=convnet3_w32")
    assert code == 0, text
    assert "training the teacher (score run 0) on the full training set first" in text and "top-1 final" in text
    assert list((tmp_path / "out" / "teachers").glob("*/convnet3_w32.pt"))  # registered for the next soft cell


def test_more_workers_than_images_is_refused_before_training(capsys, tmp_path):
    code, text = run_cli(capsys, "run", "--config", HARD, "--ipc", "1", "--workers", "4", "--set",
                         "train.grad_accum=4", "--output-dir", str(tmp_path))
    assert code == 2 and "train.workers x train.grad_accum = 16" in text
