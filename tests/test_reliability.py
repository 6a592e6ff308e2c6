"""Places that cannot be written and inputs that could pass unnoticed: one clear error or note."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from data_fixtures import grey_image_folder
from orchestrator.config import load_config
from orchestrator.data.sources import normalisation_warning
from orchestrator.errors import ConfigError
from orchestrator.tracking import default_uri, ensure_experiment
from tests_paths import HARD, REPO, run_cli


def test_output_dir_that_is_a_file(capsys, base_args, tmp_path):
    occupied = tmp_path / "occupied"
    occupied.write_text("not a folder")
    code, text = run_cli(capsys, "run", *base_args, "--output-dir", str(occupied))
    assert code == 2 and f"output dir {occupied} is a file" in text


def read_only(folder: Path, command: list[str]) -> list[str]:
    """`command` seeing `folder` read-only: a private read-only bind mount as root, else mode 555."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return command
    return ["unshare", "-m", "sh", "-c", 'mount --bind -o ro "$0" "$0" && exec "$@"', str(folder), *command]


def test_read_only_output_dir_fails_at_once_naming_it(tmp_path, data_root):
    locked = tmp_path / "locked"
    locked.mkdir()
    command = [sys.executable, "-m", "orchestrator", "run", "--config", HARD, "--output-dir", str(locked),
               "--set", f"data.root={data_root}", "--epochs", "1"]
    done = subprocess.run(read_only(locked, command), cwd=REPO, capture_output=True, text=True, timeout=90)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert f"output dir {locked} cannot be written" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("text", ["", "# only a comment\n\n# and another\n"])
def test_empty_config_is_refused(capsys, tmp_path, text):
    empty = tmp_path / "empty.yaml"
    empty.write_text(text)
    with pytest.raises(ConfigError, match="is empty"):
        load_config(empty)
    code, printed = run_cli(capsys, "run", "--config", str(empty), "--output-dir", str(tmp_path / "out"))
    assert code == 2 and f"config file {empty} is empty" in printed
    assert not (tmp_path / "out").exists()  # nothing trained, nothing recorded


def test_val_folder_without_the_split_names_data_val_split(capsys, base_args, tmp_path):
    val = grey_image_folder(tmp_path / "val" / "train", {str(i): 2 for i in range(10)}).parent
    code, text = run_cli(capsys, "run", *base_args, "--set", f"data.val={val}")
    assert code == 3 and "no split folder 'test'" in text and "data.val_split" in text  # a DataError


def test_new_dataset_with_fashion_mnist_normalisation_is_pointed_out(capsys, base_args, tmp_path):
    train = grey_image_folder(tmp_path / "train", {"a": 2, "b": 2, "c": 2})
    code, text = run_cli(capsys, "run", *base_args, "--set", f"data.train={train}", "--method", "first",
                         "--ipc", "1")
    assert code == 3  # a DataError: its classes do not match Fashion-MNIST's validation set; the note came first
    assert f"data.train {train} is normalised with Fashion-MNIST's mean" in text and "data.std" in text
    assert normalisation_warning(load_config(HARD)) is None
    assert normalisation_warning(load_config(HARD, {"data.train": str(train), "data.mean": [0.5],
                                                    "data.std": [0.25]})) is None


def test_report_without_output_dir_finds_where_the_experiment_was_written(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("ORCHESTRATOR_HOME", str(tmp_path / "home"))
    far = tmp_path / "elsewhere" / "out"
    ensure_experiment(default_uri(far), "far-sweep", far)
    monkeypatch.chdir(tmp_path)
    code, text = run_cli(capsys, "report", "--experiment", "far-sweep", "--no-log")
    assert code == 2 and "'far-sweep' has no FINISHED runs" in text  # found it: nothing finished there yet
    code, text = run_cli(capsys, "report", "--experiment", "nowhere", "--no-log")
    assert code == 2 and f"'nowhere' not found in {tmp_path / 'outputs'}" in text and "--output-dir" in text


def test_a_resumed_run_whose_dynamics_changed_is_refused(tmp_path):
    """MLflow refuses a param logged again with another value; the cell says which keys and how to go on."""
    from orchestrator import tracking
    from orchestrator.config import replace
    from orchestrator.teachers import record_artifact_keys

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = load_config(HARD, {"output_dir": str(tmp_path)})
    run_id = tracking.create_run(uri, ensure_experiment(uri, "keys", tmp_path), run_name="cell", tags={"role": "cell"})
    record_artifact_keys(uri, run_id, config, None, True)
    record_artifact_keys(uri, run_id, config, None, True)  # the same keys: a resume goes on
    changed = replace(config, {"teacher.epochs": config.teacher.epochs + 1})
    with pytest.raises(ConfigError, match="other teacher/dynamics keys .* rerun the cell with --force"):
        record_artifact_keys(uri, run_id, changed, None, True)
