"""The console: a sweep's table of cell states with ETA, Ray's logs kept off the console, one line per epoch."""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from orchestrator.progress import CellState, SweepProgress, render, tune_callback
from orchestrator.runtime import forward_worker_output, worker_lines_to
from tests_paths import REPO

RAY_INTERNALS = ("Execution plan", "Starting execution", "execution finished", "Reporting training result",
                 "Requesting resources", "PreemptionWatcher", "Failed to kill actor", "pid=")


def test_table_counts_cells_and_predicts_eta_from_trained_cells():
    cells = {"a": CellState("done", 0.0, 100.0), "b": CellState("skipped", 0.0, 1.0),
             "c": CellState("running", 150.0), "d": CellState("failed", 10.0, 20.0)}
    header, *rows = render("grid", 6, cells, now=200.0, started=0.0, slots=2)
    # 2 pending at the mean 100 s plus 50 s left of c, two at a time: 125 s; the skipped b is no evidence.
    assert header == "sweep grid: 2/6 done (1 already), 1 running, 1 failed, 2 pending  elapsed 3:20  ETA 2:05"
    assert rows == ["  running  c  0:50", "  failed   d"]


def test_eta_is_unknown_until_a_cell_has_trained():
    header, *_ = render("grid", 3, {"a": CellState("skipped", 0.0, 1.0)}, now=4000.0, started=0.0, slots=1)
    assert header.endswith("elapsed 1:06:40  ETA ?")


def test_progress_line_prints_small_soft_label_losses_readably():
    """A KD loss of ~1e-5 printed as 0.0000 every epoch looked like a broken cell."""
    from trainers.loop import History, progress_line

    def loss_shown(loss: float) -> str:
        line = progress_line("cell", 0, 3, {"train/loss": loss, "train/images_per_s": 50.0}, History())
        return line.split("loss ", 1)[1].split()[0]

    assert loss_shown(1.234e-5) == "1.234e-05"
    assert loss_shown(2.3671) == "2.3671" and loss_shown(0.0) == "0.0000"
    assert loss_shown(5.79e20) == "5.790e+20" and loss_shown(float("nan")) == "nan"


def test_off_a_terminal_one_line_per_finished_cell_and_a_status_line_a_minute():
    clock = [0.0]
    stream = io.StringIO()
    progress = SweepProgress("grid", 3, 1, stream=stream, now=lambda: clock[0])
    clock[0] = 10.0
    progress.start("a")
    progress.tick()  # the first status line
    progress.line("[a] epoch 1/2  loss 1.0000  12 img/s  ETA 0:05")  # an epoch line: not printed
    clock[0] = 40.0
    progress.tick()  # within a minute of the last: nothing
    progress.line("[a] top-1 final 70.00  best 70.00  MLflow: ...")  # the worker's result line
    progress.finish("a")
    progress.start("b")
    progress.fail("b")
    clock[0] = 75.0
    progress.tick()
    lines = stream.getvalue().splitlines()
    assert lines == ["sweep grid: 0/3 done, 1 running, 0 failed, 2 pending  elapsed 0:10  ETA ?",
                     "[a] top-1 final 70.00  best 70.00  MLflow: ...",
                     "failed: b",
                     "sweep grid: 1/3 done, 0 running, 1 failed, 1 pending  elapsed 1:15  ETA 0:30"]
    assert "\x1b" not in stream.getvalue()  # CI logs stay plain text


def test_verbose_prints_epoch_lines_off_a_terminal():
    stream = io.StringIO()
    progress = SweepProgress("grid", 1, 1, stream=stream, verbose=True, now=lambda: 1.0)
    progress.start("a")
    progress.line("[a] epoch 1/2  loss 1.0000  12 img/s  ETA 0:05")
    assert stream.getvalue().splitlines() == ["[a] epoch 1/2  loss 1.0000  12 img/s  ETA 0:05"]


def test_live_table_shows_each_running_cell_from_its_epoch_lines():
    stream = io.StringIO()
    clock = [5.0]
    progress = SweepProgress("grid", 2, 1, stream=stream, live=True, now=lambda: clock[0])
    progress.start("cell-a")
    clock[0] = 9.0
    progress.line("[cell-a] epoch 3/40  loss 1.2346  top1 50.00  best 50.00  812 img/s  ETA 0:37")
    progress.line("[cell-a] top-1 final 70.00")
    progress.close()
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", stream.getvalue())  # the screen's text without ANSI codes
    assert "sweep grid: 0/2 done, 1 running, 0 failed, 1 pending" in shown
    row = next(line for line in shown.splitlines() if "cell-a" in line and "3/40" in line)
    assert re.search(r"3/40\s.*1\.2346\s.*812\s.*0:37\s.*0:04", row), row
    assert "[cell-a] top-1 final 70.00" in shown  # other worker lines print above the table
    assert "\x1b[" in stream.getvalue()  # redrawn in place


def test_tune_callback_survives_the_tuner_pickling_its_settings():
    from ray import cloudpickle

    progress = SweepProgress("grid", 1, 1, stream=io.StringIO())
    callback = tune_callback(progress, lambda config: config["cell"])
    assert cloudpickle.loads(cloudpickle.dumps(callback)) is not None  # the table (a lock, a stream) stays here


def test_only_workers_stdout_reaches_the_console_without_ray_prefix():
    seen: list[str] = []
    with worker_lines_to(seen.append):
        forward_worker_output({"is_err": True, "pid": 7, "lines": ["INFO streaming_executor.py -- Execution plan"]})
        forward_worker_output({"is_err": False, "pid": "gcs_server", "lines": ["Failed to kill actor"]})
        forward_worker_output({"is_err": False, "pid": 7, "actor_name": "RayTrainWorker",
                               "lines": ["[cell] epoch 1/2", "[cell] epoch 2/2"]})
    assert seen == ["[cell] epoch 1/2", "[cell] epoch 2/2"]


def console_handlers(*names: str) -> list[logging.StreamHandler]:
    return [h for name in names for h in logging.getLogger(name).handlers if type(h).__name__ == "PlainRayHandler"]


def test_init_ray_quiet_keeps_ray_logs_off_the_console(ray_cluster):
    from ray._private.worker import global_worker_stdstream_dispatcher

    from orchestrator.runtime import init_ray, keep_driver_logs_in_session

    init_ray(verbose=False)
    assert [handler for _, handler in global_worker_stdstream_dispatcher.handlers] == [forward_worker_output]
    logs = keep_driver_logs_in_session()
    console = io.StringIO()
    handlers = console_handlers("ray", "ray.data")
    streams = [handler.stream for handler in handlers]  # Ray's handlers keep the stderr of their import
    for handler in handlers:  # (assigned, not setStream: that flushes the old stream, which may be closed)
        handler.stream = console
    try:
        logging.getLogger("ray.data").info("a Ray Data notice")
        logging.getLogger("ray").warning("a Ray notice")
        logging.getLogger("ray").error("a Ray error")
        logging.getLogger("ray.tune.tune_controller").error("a failed trial's notice")  # the sweep reports it
    finally:
        for handler, stream in zip(handlers, streams):
            handler.stream = stream
    assert len(handlers) == 2
    assert "notice" not in console.getvalue() and "a Ray error" in console.getvalue()
    kept = (logs / f"orchestrator-driver-{os.getpid()}.log").read_text()
    assert "a Ray notice" in kept and "a failed trial's notice" in kept
    assert os.environ["RAY_AIR_NEW_OUTPUT"] == "0"  # Tune's own output honours RunConfig(verbose=0)


def test_init_ray_in_a_worker_leaves_its_logs_alone(ray_cluster):
    """A Tune trial calls init_ray too: its Ray logs must still reach its own stderr file."""

    @ray_cluster.remote
    def filtered_in_worker() -> bool:
        import logging

        from orchestrator.runtime import ConsoleFilter, init_ray

        init_ray(verbose=False)
        handlers = logging.getLogger("ray").handlers + logging.getLogger("ray.data").handlers
        return any(isinstance(f, ConsoleFilter) for h in handlers for f in h.filters)

    assert ray_cluster.get(filtered_in_worker.remote()) is False


@pytest.mark.slow
def test_cell_console_is_one_line_per_epoch(ray_cluster, tmp_path, data_root):
    """A 2-epoch cell in a new program joining the tests' Ray (a Ray Train worker's, or local mode's, lines)."""
    started = time.time()
    args = ["run", "--config", str(REPO / "configs/fmnist-hard.yaml"), "--output-dir", str(tmp_path / "out"),
            "--ipc", "2", "--epochs", "2", "--set", f"data.root={data_root}", "--set", "train.batch_size=8",
            "--set", "train.cpus_per_worker=0.5", "--set", "train.threads=1",
            "--address", ray_cluster.get_runtime_context().gcs_address]
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", RAY_AUTH_MODE="token")
    env.pop("ORCHESTRATOR_VERBOSE", None)
    done = subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=REPO, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
    console = done.stdout
    assert done.returncode == 0, console
    assert [m.group(1) for m in re.finditer(r"\] epoch (\d+)/2\b", console)] == ["1", "2"], console
    assert not [word for word in RAY_INTERNALS if word in console], console
    assert "not writable" not in console
    logs = Path(re.search(r"Ray's logs: (\S+)", console).group(1))
    written = [p for p in logs.glob("*") if p.is_file() and p.stat().st_mtime >= started]
    assert [p for p in written if p.name.startswith("orchestrator-driver-")], "the driver's Ray records are kept"
    assert not [p for p in written if "not writable" in p.read_text(errors="replace")]


def test_a_laptop_cell_on_a_small_set_starts_no_ray(tmp_path, data_root):
    """`run` of a one-process cell whose sets decode in this process trains in Ray Train's local mode
    without starting a Ray cluster (no `Ray's logs` line, no Ray session folder); it still tracks the run."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="norays-", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    args = ["run", "--config", str(REPO / "configs/fmnist-hard.yaml"), "--output-dir", str(tmp_path / "out"),
            "--ipc", "2", "--epochs", "2", "--set", f"data.root={data_root}", "--set", "train.batch_size=8",
            "--set", "train.threads=1"]
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TMPDIR=str(ray_tmp))
    for name in ("RAY_ADDRESS", "ORCHESTRATOR_VERBOSE"):
        env.pop(name, None)
    done = subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=REPO, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
    console = done.stdout
    assert done.returncode == 0, console
    assert re.search(r"top-1 final [0-9.]+", console) and "MLflow: sqlite:" in console, console
    assert "Ray's logs" not in console and "Started a local Ray instance" not in console, console
    assert not (ray_tmp / "ray").exists(), sorted(p.name for p in ray_tmp.iterdir())
    shutil.rmtree(ray_tmp)
