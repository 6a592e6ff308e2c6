"""The reference's own command line (`rethinkdc`, docs/rethinkdc-cli.md): its options, and one cell run from them.

The cell runs on a tiny ImageNet-layout folder (3 classes, 32 px, ConvNet-3, 1 epoch, in this
process: `train.workers: 0`), so it takes seconds and needs no Ray cluster.
"""

from __future__ import annotations

import argparse
import tomllib

import pytest
from mlflow import MlflowClient

from data_fixtures import make_image_folder
from tests_paths import REPO, run_cli

from orchestrator.rethinkdc_cli import REFERENCE_DEFAULTS, config_from_reference, get_args_parser

TINY = ["--set", "data.image_size=32", "--set", "model.input_size=32", "--set", "eval.resize=36",
        "--set", "eval.crop=32", "--set", "eval.batch_size=8", "--set", "train.checkpoint_every=1",
        "--set", "train.threads=1"]
REFERENCE_OPTIONS = ["--soft", "--hard", "--yaml", "--batch-size", "--gradient-accumulation-steps", "-j", "--workers",
                     "--val-dir", "--output-dir", "--hf-cache-dir", "--mode", "--cos", "--adamw-lr",
                     "--adamw-weight-decay", "--sgd-setting", "--hard-label", "--start-epoch", "--epochs", "--model",
                     "--teacher-model", "-T", "--temperature", "--mix-type", "--mixup", "--cutmix", "--ipc",
                     "--wandb-project", "--wandb-api-key"]


@pytest.fixture
def folders(tmp_path):
    classes = {"n01": 4, "n02": 4, "n03": 4}
    train = make_image_folder(tmp_path / "train", classes)
    val = make_image_folder(tmp_path / "val", {name: 2 for name in classes})
    return train, val


def parse(*argv: str) -> argparse.Namespace:
    return get_args_parser().parse_args(list(argv))


def test_console_script_is_the_rethinkdc_command():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, function = scripts["rethinkdc"].partition(":")
    from importlib import import_module

    from orchestrator import rethinkdc_cli

    assert getattr(import_module(module), function) is rethinkdc_cli.main


def test_help_lists_every_reference_option(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # one line per option: no wrapped defaults
    with pytest.raises(SystemExit) as exited:
        get_args_parser().parse_args(["--help"])
    text = capsys.readouterr().out
    assert exited.value.code == 0
    assert [option for option in REFERENCE_OPTIONS if option not in text] == []
    assert "train_dir" in text and "(default: 1024)" in text and "(default: Temperature)" in text


def test_a_missing_train_dir_is_one_error_line_with_the_fix(capsys, tmp_path):
    code, out = run_cli(capsys, "rethinkdc", str(tmp_path / "nowhere"), "--hard", "--val-dir", str(tmp_path))
    assert code == 3 and out.count("\n") == 1
    assert out.startswith(f"error: TRAIN_DIR {tmp_path / 'nowhere'} does not exist") and "sub-folder per class" in out
    code, out = run_cli(capsys, "rethinkdc", "--hard")
    assert code == 2 and out.startswith("error: no TRAIN_DIR given") and out.count("\n") == 1


def test_values_resolve_as_in_the_reference_defaults_then_yaml_then_given_options(tmp_path, folders):
    train, val = folders
    hard = config_from_reference(parse(str(train), "--hard", "--val-dir", str(val)))
    assert (hard.label_mode, hard.train.batch_size, hard.schedule.epochs, hard.data.ipc) == ("hard", 128, 300, 50)
    assert (hard.data.method, hard.mix.type, hard.optim.lr, hard.output_dir) == ("first", "none", 0.001, "./save/1024")
    soft = config_from_reference(parse(str(train), "--soft", "--val-dir", str(val), "-T", "4",
                                       "--teacher-weights", "w.pth"))
    assert ((soft.label_mode, soft.mix.type, soft.teacher.temperature, soft.teacher.source)
            == ("soft", "cutmix", 4.0, "w.pth"))
    own = tmp_path / "own.yaml"
    own.write_text("batch_size: 64\ncos: true\nhard_label: true\nsgd_setting: true\n")
    custom = config_from_reference(parse(str(train), "--yaml", str(own), "--val-dir", str(val), "--batch-size", "32",
                                         "--gradient-accumulation-steps", "2"))
    assert (custom.train.batch_size, custom.train.grad_accum) == (64, 2)  # the reference's batch x accumulation
    assert ((custom.optim.name, custom.optim.lr, custom.teacher.temperature)
            == ("sgd", 0.1, REFERENCE_DEFAULTS["temperature"]))


def test_a_cell_runs_from_the_reference_options_and_mlflow_records_them(capsys, tmp_path, folders, monkeypatch):
    train, val = folders
    monkeypatch.setenv("IMAGENET_VAL_DIR", str(val))
    out_dir = tmp_path / "out"
    code, out = run_cli(capsys, "rethinkdc", str(train), "--hard", "--model", "convnet3", "--epochs", "1",
                        "--ipc", "3", "--batch-size", "4", "--gradient-accumulation-steps", "2", "--adamw-lr", "0.002",
                        "--output-dir", str(out_dir), "--wandb-project", "x", *TINY)
    assert code == 0, out
    assert out.count("wandb is not used") == 1 and f"sqlite:///{out_dir}" in out
    client = MlflowClient(f"sqlite:///{out_dir / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("imagenet-hard").experiment_id])[0]
    params, metrics = run.data.params, run.data.metrics
    assert run.info.status == "FINISHED"
    assert {key: params[key] for key in ("optim.lr", "train.batch_size", "train.grad_accum", "schedule.epochs",
                                         "data.ipc", "label_mode", "model.name", "data.train", "data.val")} == {
        "optim.lr": "0.002", "train.batch_size": "8", "train.grad_accum": "2", "schedule.epochs": "1",
        "data.ipc": "3", "label_mode": "hard", "model.name": "convnet3", "data.train": str(train), "data.val": str(val)}
    assert metrics["data/num_images"] == 9
