"""MLflow as the comparison screen: what a finished sweep leaves in the store, and what the UI
shows of it in a real browser (headless Chromium; `python -m orchestrator ui` as a user starts it).

One small real sweep (two hard-label random cells and one EL2N cell, whose training dynamics need a
score run: a 1-epoch teacher run on the 60,000 training images, nested under the sweep's run).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from orchestrator.store_retry import retrying_client
from orchestrator.sweep import run_sweep
from orchestrator.sweep_config import load_sweep
from orchestrator.tracking import COMPARISON_VIEW
from tests_paths import REPO, answers_http, child_env, free_port

SCREENSHOT = REPO / "docs" / "img" / "mlflow-runs.png"


@pytest.fixture(scope="module")
def finished_sweep(ray_cluster, tmp_path_factory, data_root):
    out = tmp_path_factory.mktemp("screen") / "out"
    body = {"name": "screen", "protocol": str(REPO / "configs/fmnist-hard.yaml"),
            "set": {"schedule.epochs": 2, "eval.every": 2, "train.batch_size": 8, "train.threads": 1,
                    "train.checkpoint_every": 1, "data.root": str(data_root), "output_dir": str(out),
                    "teacher.epochs": 1, "prune.score_runs": 1, "prune.el2n_epochs": 1},
            "axes": [{"method": ["random"], "ipc": [2], "seed": [0, 1]},
                     {"method": ["el2n"], "ipc": [2], "seed": [0], "set": {"prune.reverse": True}}]}
    path = out.parent / "screen.yaml"
    path.write_text(yaml.safe_dump(body))
    results = run_sweep(load_sweep(path))
    assert all(r.get("top1_final") is not None for r in results), results
    client = retrying_client(f"sqlite:///{out / 'mlflow.db'}")
    return out, client, client.get_experiment_by_name("screen")


def runs_of(client, experiment, role: str):
    return client.search_runs([experiment.experiment_id], filter_string=f"tags.role = '{role}'")


def test_the_store_opens_on_model_training_runs_with_their_sets(finished_sweep):
    out, client, experiment = finished_sweep
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    view = json.loads(experiment.tags[f"mlflow.sharedViewState.{COMPARISON_VIEW}"])
    assert view["selectedColumns"][:2] == ["attributes.`Dataset`", "metrics.`val/top1_final`"]
    cells = runs_of(client, experiment, "cell")
    assert len(cells) == 3
    for run in cells:
        (dataset_input,) = run.inputs.dataset_inputs
        dataset = dataset_input.dataset
        assert dataset.name == f"{run.data.params['method']}-ipc2"
        assert dataset.digest == run.data.tags["fingerprint"][:36]
        assert json.loads(dataset.profile) == {"num_images": 20, "image_bytes": run.data.metrics["storage/image_bytes"]}
    (sweep_run,) = runs_of(client, experiment, "sweep")
    (teacher,) = runs_of(client, experiment, "teacher")
    assert teacher.data.tags["mlflow.parentRunId"] == sweep_run.info.run_id  # nested under the sweep that needed it
    assert teacher.data.params["method"] == "full"


def test_report_tables_land_on_the_sweep_run_as_mlflow_tables(finished_sweep, tmp_path):
    out, client, experiment = finished_sweep
    done = subprocess.run([sys.executable, "-m", "orchestrator", "report", "--experiment", "screen", "--output-dir",
                           str(out), "--out", str(tmp_path / "rep")], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env=child_env(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    (sweep_run,) = runs_of(client, experiment, "sweep")
    logged = {a.path for a in client.list_artifacts(sweep_run.info.run_id, "report")}
    table = next(p for p in logged if p.startswith("report/table_") and p.endswith(".json"))
    local = client.download_artifacts(sweep_run.info.run_id, table, str(tmp_path))
    content = json.loads(Path(local).read_text())
    assert "random" in json.dumps(content) and "mean" in content["columns"]


def test_the_ui_in_a_browser_lists_every_cell_with_its_top1_and_dataset(finished_sweep, tmp_path):
    from browser import CHROMIUM, dump_dom, screenshot

    assert CHROMIUM, "chromium is missing: scripts/test.sh installs Debian's chromium"
    out, client, experiment = finished_sweep
    port = free_port()
    env = child_env(tmp_path, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")  # fewer processes to start here
    ui = subprocess.Popen([sys.executable, "-m", "orchestrator", "ui", "--port", str(port), "--workers", "1",
                           "--output-dir", str(out)], cwd=REPO, env=env, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while not answers_http(port):
            assert ui.poll() is None and time.monotonic() < deadline
            time.sleep(1)
        url = f"http://127.0.0.1:{port}/#/experiments/{experiment.experiment_id}/runs?viewStateShareKey={COMPARISON_VIEW}"
        dom = dump_dom(url)
        for run in runs_of(client, experiment, "cell"):
            assert run.info.run_name in dom, run.info.run_name
            assert f"{run.data.metrics['val/top1_final']:g}"[:4] in dom  # its final top-1, a shown column
        assert "random-ipc2" in dom and "el2n-easy-ipc2" in dom  # the Dataset column
        assert "GenAI" not in dom.split("Training runs")[-1][:200]  # opened on the training runs
        shot = screenshot(url, tmp_path / "runs.png")
        if os.environ.get("ORCHESTRATOR_SCREENSHOTS"):  # refresh the README's picture
            shutil.copy(shot, SCREENSHOT)
    finally:
        ui.send_signal(signal.SIGTERM)
        try:
            ui.wait(timeout=30)
        except subprocess.TimeoutExpired:
            ui.kill()
        printed = ui.stdout.read()
    assert f"viewStateShareKey={COMPARISON_VIEW}" in printed  # `ui` prints the comparison's link
