"""Speed switches chosen for the machine: `auto` precision, layout and compilation.

The selection logic is tested on this machine whatever its CPU: which CPUs count as native bf16
(from their flags), what `auto` resolves to here, that a calibration is measured once and then read
from its cache, that a cell logs what it resolved, that `auto` keys leave every existing cell hash
alone, and that `report` refuses to average seeds that ran at different precisions.
"""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import mlflow
import pytest
import torch
from mlflow.entities import Param, RunTag

from orchestrator.config import cell_name, load_config
from orchestrator.errors import ConfigError, OrchestratorError
from orchestrator.provenance import code_commit
from orchestrator.report import check_artifact_keys, load_cell_runs
from tests_paths import HARD
from trainers import precision
from trainers.models import create_student


@pytest.mark.parametrize("flags, native", [({"avx2", "fma"}, False), ({"avx512f", "avx512bw", "avx512_vnni"}, False),
                                            ({"avx512f", "avx512_bf16"}, True), ({"amx_tile", "amx_bf16"}, True)])
def test_native_bf16_means_amx_or_avx512_bf16(flags, native):
    assert precision.native_bf16_cpu(flags) is native


def test_auto_precision_is_bf16_only_where_this_cpu_computes_it_natively():
    expected = "bf16" if precision.native_bf16_cpu(precision.cpu_flags()) else "fp32"
    assert precision.resolve_precision("auto", "cpu") == expected
    assert precision.resolve_precision("fp32", "cpu") == "fp32" and precision.resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError):
        precision.resolve_precision("fp16", "cpu")


def test_auto_keys_are_accepted_and_leave_existing_cell_hashes_alone():
    plain = load_config(HARD, {"eval.every": 300, "train.threads": 1, "data.ipc": 10})
    assert cell_name(plain).endswith("-4d8bc66086")  # the results sweep's cell: unset "auto" keys keep its name
    auto = load_config(HARD, {"train.precision": "auto", "eval.precision": "auto", "train.channels_last": "auto",
                              "train.compile": "auto"})
    assert (auto.train.precision, auto.train.channels_last, auto.train.compile) == ("auto", "auto", "auto")
    assert load_config(HARD, {"train.compile": True}).train.compile is True
    assert cell_name(auto) != cell_name(load_config(HARD))
    with pytest.raises(ConfigError, match="train.compile"):
        load_config(HARD, {"train.compile": "fast"})


def test_calibration_is_measured_once_then_read_from_its_cache(tmp_path):
    torch.manual_seed(0)
    model = create_student("convnet3_w32", num_classes=10, in_chans=1, img_size=28)
    train = SimpleNamespace(precision="fp32", channels_last="auto", compile=False)
    evaluation = SimpleNamespace(precision="auto")
    shape = (16, 1, 28, 28)
    choice = precision.resolve_step(train, evaluation, model, "cpu", batch_shape=shape, cache_dir=tmp_path)
    assert choice.compile is False and choice.precision == "fp32"
    cache = json.loads((tmp_path / "calibration.json").read_text())
    (key, entry), = cache.items()
    assert set(entry["images_per_s"]) == {"channels_last=False compile=False", "channels_last=True compile=False"}
    assert all(v > 0 for v in entry["images_per_s"].values()) and entry["channels_last"] == choice.channels_last
    entry["channels_last"] = not choice.channels_last  # a cached answer is used as it stands, not re-measured
    (tmp_path / "calibration.json").write_text(json.dumps({key: entry}))
    again = precision.resolve_step(train, evaluation, model, "cpu", batch_shape=shape, cache_dir=tmp_path)
    assert again.channels_last is (not choice.channels_last)
    other = precision.resolve_step(train, evaluation, model, "cpu", batch_shape=(8, 1, 28, 28), cache_dir=tmp_path)
    assert len(json.loads((tmp_path / "calibration.json").read_text())) == 2 and other.compile is False


def test_a_cell_logs_what_auto_resolved_to(tiny_config, tmp_path):
    from orchestrator.cell import run_cell

    config = tiny_config(**{"train.precision": "auto", "eval.precision": "auto", "train.channels_last": "auto",
                            "train.workers": 0, "schedule.epochs": 1})
    run_cell(config)
    client = mlflow.MlflowClient(f"sqlite:///{config.out / 'mlflow.db'}")
    run, = client.search_runs([client.get_experiment_by_name(config.experiment_name).experiment_id],
                              filter_string="tags.role = 'cell'")
    expected = precision.resolve_precision("auto", "cpu")
    assert run.data.tags["resolved.precision"] == expected and run.data.tags["resolved.eval_precision"] == expected
    assert run.data.tags["resolved.channels_last"] in ("True", "False") and run.data.tags["resolved.compile"] == "False"
    assert (config.data_root / "speed" / "calibration.json").is_file()
    assert run.data.tags["resolved.device"] == precision.device_description("cpu")
    device = run.data.tags["resolved.device"]
    assert re.fullmatch(r"cpu: .+ \((AMX, |AVX-512\+BF16, |AVX-512, |AVX2, )?\d+ CPUs\)", device)
    assert run.data.tags["code.commit"] == code_commit() and re.fullmatch(r"[0-9a-f]{7,}(\+modified)?", code_commit())


def test_report_refuses_to_average_seeds_of_different_precisions(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("precisions", artifact_location=(tmp_path / "art").as_uri())
    for seed, (resolved, configured) in enumerate([("fp32", "auto"), ("bf16", "auto"), (None, "fp32")]):
        run = client.create_run(experiment, tags={"role": "cell", "protocol": "fmnist-hard"})
        params = {"method": "random", "ipc": "10", "label_mode": "hard", "model": "convnet3", "seed": str(seed),
                  "train.precision": configured, "eval.precision": "fp32"}
        tags = [RunTag("resolved.precision", resolved)] if resolved else []
        client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params.items()], tags=tags)
        client.log_metric(run.info.run_id, "val/top1_final", 70.0 + seed)
        client.set_terminated(run.info.run_id)
    df = load_cell_runs(uri, "precisions")
    assert sorted(df["precision"]) == ["train bf16 eval fp32", "train fp32 eval fp32", "train fp32 eval fp32"]
    with pytest.raises(OrchestratorError, match="different precisions"):
        check_artifact_keys(df)
    check_artifact_keys(df[df["precision"] == "train fp32 eval fp32"])  # a tag and an older run's param agree
