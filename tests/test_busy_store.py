"""A busy MLflow store (another process holds its SQLite write lock) never kills a run.

Real SQLite stores locked by a real second process with `BEGIN EXCLUSIVE`; nothing of MLflow is mocked.
MLflow alone fails a call after its busy timeout (5 s when a process opens the store, 20 s a call);
each test fails without `store_retry`'s retries.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow.store.tracking.sqlalchemy_store  # noqa: F401  (loaded before any lock: calls meet it at once)
import pytest

from orchestrator import tracking
from orchestrator.config import load_config
from orchestrator.errors import StoreBusyError
from orchestrator.methods import method_label
from orchestrator.store_retry import WINDOW_ENV, retry_busy, retrying_client
from tests_paths import REPO
from trainers.loop import History, MetricLogger, build_training_state, save_state
from trainers.loop_inputs import LoopInputs

LOCKER = """
import sqlite3, sys, time
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
connection.execute("COMMIT")
"""


def lock_store(db: Path, seconds: float) -> subprocess.Popen:
    """Another process holding `BEGIN EXCLUSIVE` on `db` for `seconds` (returns once it holds it)."""
    locker = subprocess.Popen([sys.executable, "-c", LOCKER, str(db), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert locker.stdout.readline().strip() == "locked"
    return locker


def protocol(out: Path):
    return load_config(REPO / "configs" / "fmnist-hard.yaml", {"output_dir": str(out)})


def test_tracking_calls_wait_for_a_locked_store_and_go_on(tmp_path, capfd):
    db, config = tmp_path / "mlflow.db", protocol(tmp_path)
    uri = f"sqlite:///{db}"
    locker = lock_store(db, 10)
    started = time.monotonic()
    experiment_id = tracking.ensure_experiment(uri, "busy", tmp_path)
    run_id = tracking.start_run(uri, experiment_id, config, cell="busy-cell", method_label=method_label(config))
    waited = time.monotonic() - started
    tracking.log_metrics(uri, run_id, {"val/top1_final": 50.0})
    tracking.terminate(uri, run_id)
    locker.wait()

    assert waited >= 9
    run = retrying_client(uri).get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["val/top1_final"] == 50.0
    out, err = capfd.readouterr()
    assert out.count(f"MLflow store {db} is locked by another process: waiting up to 180 s") == 1, out
    assert "Traceback" not in out + err and "SQLAlchemy database error" not in out + err


def test_a_store_locked_past_the_window_is_one_clear_error(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv(WINDOW_ENV, "3")
    db = tmp_path / "mlflow.db"
    locker = lock_store(db, 60)
    try:
        started = time.monotonic()
        with pytest.raises(StoreBusyError) as error:
            tracking.ensure_experiment(f"sqlite:///{db}", "busy", tmp_path)
        assert time.monotonic() - started < 40
    finally:
        locker.kill()
    message = str(error.value)
    assert str(db) in message and "mlflow server" in message and WINDOW_ENV in message
    assert error.value.exit_code == 4
    _, err = capfd.readouterr()
    assert "Traceback" not in err and "SQLAlchemy database error" not in err


def test_only_busy_errors_are_retried():
    calls = []

    def locked_twice():
        calls.append(1)
        if len(calls) < 3:
            raise sqlite3.OperationalError("database is locked")
        return "done"

    assert retry_busy(locked_twice, store="s", what="test", window=30) == "done" and len(calls) == 3
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        retry_busy(lambda: (calls.append(1), sqlite3.connect(":memory:").execute("select * from t")),
                   store="s", what="test", window=30)
    assert len(calls) == 4  # not retried


def test_a_cell_started_on_a_locked_store_exits_with_one_line(tmp_path):
    """`run` on a store locked past the window: exit code 4 and one `error:` line, no traceback."""
    out = tmp_path / "out"
    out.mkdir()
    locker = lock_store(out / "mlflow.db", 120)
    try:
        env = dict(os.environ, **{WINDOW_ENV: "3"})
        done = subprocess.run([sys.executable, "-m", "orchestrator", "run", "--config", "configs/fmnist-hard.yaml",
                               "--ipc", "2", "--epochs", "2", "--output-dir", str(out)],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    finally:
        locker.kill()
    assert done.returncode == 4, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    (error,) = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert error.startswith(f"error: MLflow store {out / 'mlflow.db'} stayed locked by another process")


def test_a_flush_on_a_locked_store_keeps_the_epochs_and_training_goes_on(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = protocol(tmp_path)
    run_id = tracking.start_run(uri, tracking.ensure_experiment(uri, "busy", tmp_path), config,
                                cell="busy-cell", method_label=method_label(config))
    inputs = LoopInputs(config, num_classes=10, mlflow_uri=uri, run_id=run_id, cell="busy-cell")
    logger, history = MetricLogger(inputs, rank=0), History()
    metrics = {"train/loss": 1.0, "train/images_per_s": 10.0}
    for epoch in range(3):
        logger.log(epoch, metrics, history)
    locker = lock_store(tmp_path / "mlflow.db", 60)
    try:
        started = time.monotonic()
        logger.flush()
        assert time.monotonic() - started < 3  # no wait: the epochs stay pending
        rows = logger.unlogged()
    finally:
        locker.kill()
        locker.wait()
    assert sorted({row[3] for row in rows}) == [0, 1, 2]
    logger.log(3, metrics, history)
    logger.flush()
    client = retrying_client(uri)
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == [0, 1, 2, 3]

    # A restarted attempt given the checkpoint's rows logs only what is not logged yet.
    again = MetricLogger(inputs, rank=0)
    again.restore(rows + [["train/loss", 2.0, 0, 4]])
    again.flush(wait=True)
    assert sorted(m.step for m in client.get_metric_history(run_id, "train/loss")) == [0, 1, 2, 3, 4]


def test_held_back_epochs_ride_in_the_checkpoint(tmp_path):
    """A cell killed while its store is busy loses no epoch: the checkpoint holds the pending rows."""
    import torch

    config = protocol(tmp_path)
    state = build_training_state(LoopInputs(config, num_classes=10), torch.device("cpu"), None)
    rows = [["train/loss", 0.5, 1700000000000, 0], ["train/lr", 0.001, 1700000000000, 0]]
    state.history = History(epochs_done=1, unlogged_metrics=rows)
    save_state(tmp_path, state, final=False)
    restored = build_training_state(LoopInputs(config, num_classes=10), torch.device("cpu"), tmp_path)  # weights only
    assert restored.history.unlogged_metrics == rows


@pytest.mark.slow
def test_a_cell_survives_a_lock_taken_mid_training(tmp_path, data_root):
    """The headline: a store locked longer than MLflow's busy timeout while a cell trains (checkpoints
    every 2 epochs) delays its metrics, never the cell: checkpoints are still written while it is
    locked, and the run ends FINISHED with each epoch's train/loss logged once."""
    out, epochs = tmp_path / "out", 40
    args = ["run", "--config", "configs/fmnist-hard.yaml", "--method", "random", "--ipc", "2", "--epochs", str(epochs),
            "--output-dir", str(out), "--set", f"data.root={data_root}", "--set", "train.batch_size=8",
            "--set", f"eval.every={epochs}", "--set", "train.checkpoint_every=2", "--set", "train.threads=1"]
    lines: list[str] = []
    second_epoch = threading.Event()

    def read():
        for line in process.stdout:
            lines.append(line)
            if f"epoch 2/{epochs}" in line:
                second_epoch.set()

    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    process = subprocess.Popen([sys.executable, "-m", "orchestrator", *args], cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert second_epoch.wait(240), "".join(lines)
        connection = sqlite3.connect(out / "mlflow.db", isolation_level=None)
        connection.execute("BEGIN EXCLUSIVE")  # this test's process is the other writer
        time.sleep(25)  # longer than MLflow's own 20 s busy timeout
        written_while_locked = sorted(p.name for p in (out / "ray_results").glob("*/checkpoint_*"))
        connection.execute("COMMIT")
        connection.close()
        process.wait(timeout=300)
    finally:
        process.kill()
    reader.join(5)
    output = "".join(lines)
    assert process.returncode == 0, output
    assert "stay pending (and in the checkpoints); training goes on" in output
    assert "Traceback" not in output
    assert written_while_locked and written_while_locked[-1] > "checkpoint_epoch000002", written_while_locked

    client = retrying_client(f"sqlite:///{out / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("fmnist-hard").experiment_id])
    assert run.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss")) == list(range(epochs))
