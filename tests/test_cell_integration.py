"""End to end on a real local Ray cluster with real Fashion-MNIST images and a real MLflow store."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from orchestrator.cell import run_cell
from orchestrator.config import cell_name
from orchestrator.tracking import tracking_uri
from tests_paths import REPO

pytestmark = pytest.mark.slow


def mlflow_run(config, run_id):
    return MlflowClient(tracking_uri(config)).get_run(run_id)


def test_two_worker_cell_records_everything_in_mlflow(ray_cluster, tiny_config):
    config = tiny_config(**{"train.workers": 2, "train.threads": 1})
    result = run_cell(config)
    run = mlflow_run(config, result.run_id)
    client = MlflowClient(tracking_uri(config))

    assert run.info.status == "FINISHED"
    assert run.data.tags["fingerprint"] == result.fingerprint and run.data.tags["role"] == "cell"
    params = run.data.params
    assert (params["method"], params["ipc"], params["label_mode"], params["model"], params["seed"]) == \
        ("random", "2", "hard", "convnet3", "0")
    assert params["optim.lr"] == "0.001" and params["train.workers"] == "2"
    metrics = run.data.metrics
    for key in ("val/top1_final", "val/top1_best", "val/top5_final", "time/train_s",
                "throughput/images_per_s", "storage/image_bytes"):
        assert key in metrics, key
    assert 0 <= metrics["val/top1_final"] <= metrics["val/top1_best"] <= 100
    assert metrics["data/num_images"] == 20 and metrics["storage/soft_label_bytes"] == 0
    assert [m.step for m in client.get_metric_history(result.run_id, "train/loss")] == [0, 1]
    assert len(client.get_metric_history(result.run_id, "val/top1")) == 2

    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"config.yaml", "per_class_accuracy.csv", "summary.json"} <= artifacts
    per_class = client.download_artifacts(result.run_id, "per_class_accuracy.csv")
    rows = list(csv.DictReader(io.StringIO(Path(per_class).read_text())))
    assert len(rows) == 10 and rows[0]["class_name"] == "T-shirt/top"

    again = run_cell(config)  # finished cells are not trained again
    assert again.skipped and again.run_id == result.run_id


def test_same_seed_gives_same_subset_and_metrics(ray_cluster, tiny_config, tmp_path):
    first = run_cell(tiny_config(**{"output_dir": str(tmp_path / "a")}))
    second = run_cell(tiny_config(**{"output_dir": str(tmp_path / "b")}))
    other_seed = run_cell(tiny_config(**{"output_dir": str(tmp_path / "c"), "seed": 1, "schedule.epochs": 1}))
    assert first.fingerprint == second.fingerprint != other_seed.fingerprint
    assert first.summary["top1_final"] == second.summary["top1_final"]
    assert first.summary["per_class_final"] == second.summary["per_class_final"]


def run_cli(args: list[str], **kwargs) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    return subprocess.Popen([sys.executable, "-m", "orchestrator", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, **kwargs)


def test_killed_cell_resumes_from_checkpoint_with_same_metrics(ray_cluster, tiny_config, tmp_path, data_root):
    overrides = {"schedule.epochs": 5, "data.ipc": 5, "train.threads": 1, "eval.every": 5}  # evaluated once, at the end
    reference = run_cell(tiny_config(**{**overrides, "output_dir": str(tmp_path / "reference")}))

    out = tmp_path / "killed"
    config = tiny_config(**{**overrides, "output_dir": str(out)})
    args = ["run", "--config", str(REPO / "configs/fmnist-hard.yaml"), "--output-dir", str(out),
            "--ipc", "5", "--epochs", "5", "--set", f"data.root={data_root}", "--set", "train.batch_size=8",
            "--set", "eval.every=5", "--set", "train.checkpoint_every=1", "--set", "train.threads=1",
            "--set", "train.cpus_per_worker=0.5"]
    run_dir = out / "ray_results" / cell_name(config)
    process = run_cli(args)
    deadline = time.time() + 300
    # Kill once a second checkpoint exists: the first is then surely registered by Ray Train.
    while len(list(run_dir.glob("checkpoint_*"))) < 2 and time.time() < deadline and process.poll() is None:
        time.sleep(0.2)
    assert process.poll() is None, "the cell finished before it could be killed: " + process.stdout.read()
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert len(list(run_dir.glob("checkpoint_*"))) < 5

    resumed = run_cli(args)
    output, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, output
    assert "resuming from checkpoint after epoch" in output
    assert f"top-1 final {reference.summary['top1_final']:.2f}" in output
    runs = MlflowClient(tracking_uri(config)).search_runs(
        [MlflowClient(tracking_uri(config)).get_experiment_by_name("fmnist-hard").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # the same MLflow run was resumed
    # ... and it reads as one run: each epoch logged once, wall time counting the killed attempt too
    client = MlflowClient(tracking_uri(config))
    assert sorted(m.step for m in client.get_metric_history(runs[0].info.run_id, "train/loss")) == [0, 1, 2, 3, 4]
    summary = json.loads(Path(client.download_artifacts(runs[0].info.run_id, "summary.json")).read_text())
    assert summary["prior_wall_seconds"] > 0
    assert runs[0].data.metrics["time/wall_s"] > summary["prior_wall_seconds"] + summary["train_seconds"] / 5


def test_diverged_cell_is_failed_with_its_reason_not_finished(ray_cluster, tiny_config):
    config = tiny_config(**{"optim.name": "sgd", "optim.lr": 1e30})
    with pytest.raises(Exception, match="diverged"):
        run_cell(config)
    client = MlflowClient(tracking_uri(config))
    runs = client.search_runs([client.get_experiment_by_name("fmnist-hard").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FAILED"
    assert runs[0].data.tags["failure"].startswith("diverged: training loss")
