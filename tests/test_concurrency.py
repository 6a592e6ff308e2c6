"""Several processes on one output folder: the store is created once, each cell trained once, one Ray."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.locks import cell_lock
from tests_paths import HARD, REPO, cell_runs, child_env


def run_command(out: Path, data_root: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "orchestrator", "run", "--config", HARD, "--output-dir", str(out),
            "--set", f"data.root={data_root}", "--set", "experiment=together", *args]


def test_runs_started_together_on_a_new_output_folder_share_its_store(tmp_path, data_root):
    """They create the MLflow store at once; each gets to its own cell (which then stops on its IPC)."""
    children = [subprocess.Popen(run_command(tmp_path / "out", data_root, "--ipc", "7000", "--seed", str(seed)),
                                 cwd=REPO, env=child_env(tmp_path), stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True) for seed in range(3)]
    outputs = [child.communicate(timeout=300)[0] for child in children]
    for child, output in zip(children, outputs):
        assert child.returncode == 3 and "IPC 7000" in output and "Traceback" not in output, output[-2500:]


def test_a_held_cell_makes_another_process_wait_and_name_the_holder(tmp_path):
    script = ("import sys; from orchestrator.locks import cell_lock\n"
              "with cell_lock(sys.argv[1], 'cell-a'):\n    print('got it', flush=True)\n")
    with cell_lock(tmp_path, "cell-a"):
        waiter = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], cwd=REPO, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(6)
        assert waiter.poll() is None  # still waiting while the lock is held here
    stdout, stderr = waiter.communicate(timeout=60)
    # the waiting notice goes to stdout: from a sweep trial, only that reaches the console
    lines = stdout.strip().splitlines()
    assert waiter.returncode == 0 and lines[-1] == "got it", stderr
    assert f"cell cell-a is held by pid {os.getpid()} on host" in lines[0]


@pytest.mark.slow
def test_cells_from_separate_processes_land_complete_and_once(tmp_path, data_root):
    """2 cells (and one of them twice) launched at once as separate `run`s on one output folder; each
    trains in a Ray Train worker (a one-process cell on a small set needs no Ray), so they share one Ray.
    Three processes are the least that prove it all: two cells landing once each, a duplicate that
    waits and skips, and later programs joining the first one's Ray (5 processes timed out on a loaded
    2-core machine)."""
    out, epochs = tmp_path / "out", 2
    common = run_command(out, data_root, "--ipc", "2", "--epochs", str(epochs), "--batch-size", "8",
                         "--workers", "1", "--set", "train.cpus_per_worker=0.25", "--set", "train.threads=1")
    seeds = [0, 1, 0]
    children = [subprocess.Popen(common + ["--seed", str(seed)], cwd=REPO, env=child_env(tmp_path),
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for seed in seeds]
    outputs = [child.communicate(timeout=900)[0] for child in children]
    assert [child.returncode for child in children] == [0] * len(seeds), [o[-2500:] for o in outputs]
    client, runs = cell_runs(out, "together")
    assert sorted(r.data.params["seed"] for r in runs) == ["0", "1"]  # each cell once
    assert {r.info.status for r in runs} == {"FINISHED"}
    for run in runs:  # every epoch logged once
        assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == list(range(epochs))
    text = "\n".join(outputs)
    assert "already finished" in text  # the duplicate waited for the first, then found it done
    assert "joining the local Ray started by pid" in text  # one Ray instance, not one per process
