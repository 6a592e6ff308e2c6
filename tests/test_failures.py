"""Failures end as one `error:` line naming the problem and the fix, with the exit code of their kind
(`orchestrator.errors`) and no traceback unless `--verbose`; `ui` stops with the server it started.

Each test runs the real CLI in a child process (real Ray Train local mode, real MLflow store) and reads
what a user would see: its exit code and its console.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from tests_paths import HARD, REPO, answers_http, cell_runs, child_env, free_port
from trainers.loop import STATE_FILE

TINY_CELL = ["--ipc", "2", "--epochs", "1", "--batch-size", "8"]
RAN = "this ran while loading a checkpoint"


def cli(tmp_path: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=REPO, env=child_env(tmp_path),
                          capture_output=True, text=True, timeout=timeout)


def the_error_line(done: subprocess.CompletedProcess, code: int) -> str:
    """The run's one `error:` line, after checking its exit code and that no traceback was printed."""
    printed = done.stdout + done.stderr
    assert done.returncode == code, printed[-3000:]
    assert "Traceback" not in printed, printed[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, printed[-3000:]
    return errors[0]


# ---------------------------------------------------------------- YAML files


@pytest.mark.parametrize("body, line, expected", [
    ("name: bad\naxes: {method: [random, el2n\nset: {}\n", 3, "is not valid YAML at line 3"),
    ("name: bad\nprotocol: !!python/object/apply:os.system ['touch {marker}']\n", 2,
     "the tag !!python/object/apply:os.system is not allowed"),
])
def test_a_broken_or_tagged_yaml_file_is_one_line_naming_file_and_line(tmp_path, body, line, expected):
    marker = tmp_path / "executed"
    path = tmp_path / "bad.yaml"
    path.write_text(body.replace("{marker}", str(marker)))
    sweep = the_error_line(cli(tmp_path, "sweep", "--config", str(path)), 2)
    assert sweep.startswith(f"error: sweep file {path}") and expected in sweep and f"line {line}" in sweep
    assert "Fix:" in sweep and not marker.exists()
    protocol = the_error_line(cli(tmp_path, "run", "--config", str(path)), 2)  # the same reader
    assert protocol.startswith(f"error: config file {path}") and expected in protocol
    verbose = cli(tmp_path, "sweep", "--config", str(path), "--verbose")
    assert verbose.returncode == 2 and "Traceback" in verbose.stderr
    assert verbose.stderr.strip().splitlines()[-1] == sweep  # the traceback, then the same line


# ---------------------------------------------------------------- a diverged cell


def diverging(tmp_path: Path, data_root: Path) -> list[str]:
    return ["--output-dir", str(tmp_path / "out"), "--set", f"data.root={data_root}", "--set", "optim.name=sgd",
            "--set", "optim.lr=1e30"]


def test_a_diverged_run_is_one_line_and_exit_5(tmp_path, data_root):
    done = cli(tmp_path, "run", "--config", HARD, *diverging(tmp_path, data_root), *TINY_CELL, "--epochs", "2")
    line = the_error_line(done, 5)
    assert re.match(r"error: cell \S+ diverged: training loss is (nan|inf) at epoch \d\. Fix: lower optim.lr", line)
    _, [run] = cell_runs(tmp_path / "out")
    assert run.info.status == "FAILED" and run.data.tags["failure"].startswith("diverged")


def test_a_diverged_cell_in_a_sweep_is_one_line_naming_it(tmp_path, data_root):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({
        "name": "diverges", "protocol": HARD,
        "set": {"output_dir": str(tmp_path / "out"), "data.root": str(data_root), "schedule.epochs": 2,
                "train.batch_size": 8, "train.threads": 1, "train.cpus_per_worker": 0.5, "optim.name": "sgd",
                "optim.lr": 1e30},
        "axes": {"method": ["random"], "ipc": [2], "seed": [0]}}))
    done = cli(tmp_path, "sweep", "--config", str(path))
    printed = done.stdout + done.stderr
    assert done.returncode == 1 and "Traceback" not in printed, printed[-3000:]
    failed = [line for line in done.stderr.splitlines() if line.startswith("failed cell:")]
    assert len(failed) == 1, printed[-3000:]
    # the error's own message, not an exception class name or the last line of a traceback
    assert re.match(r"failed cell: (\S+): cell \1 diverged: "
                    r"training loss is (nan|inf) at epoch \d\. Fix: lower optim.lr",
                    failed[0]), failed[0]


# ---------------------------------------------------------------- a checkpoint that is not ours


class Exploit:
    def __reduce__(self):
        return (print, (RAN,))


def test_a_checkpoint_replaced_by_a_pickled_object_is_refused_in_one_line_with_the_safe_fix(tmp_path, data_root):
    out = tmp_path / "out"
    args = ["run", "--config", HARD, "--output-dir", str(out), "--set", f"data.root={data_root}", *TINY_CELL]
    assert cli(tmp_path, *args).returncode == 0
    client, [run] = cell_runs(out)
    client.update_run(run.info.run_id, status="RUNNING")  # as a killed attempt leaves it: the next run resumes
    [checkpoint] = sorted((out / "ray_results").glob("*/checkpoint_*"))
    state = torch.load(checkpoint / STATE_FILE, weights_only=True)
    state["history"]["evil"] = Exploit()
    torch.save(state, checkpoint / STATE_FILE)

    refused = cli(tmp_path, *args)
    line = the_error_line(refused, 6)
    assert f"checkpoint {checkpoint / STATE_FILE} is unreadable" in line and "pickled Python objects" in line
    assert f"delete that checkpoint folder {checkpoint} or rerun with --force" in line
    assert "weights_only" not in refused.stdout + refused.stderr and RAN not in refused.stdout

    forced = cli(tmp_path, *args, "--force")  # the fix the line gives: the cell starts again
    assert forced.returncode == 0 and RAN not in forced.stdout, forced.stderr[-3000:]
    _, runs = cell_runs(out)
    assert sorted(r.info.status for r in runs) == ["FAILED", "FINISHED"]


# ---------------------------------------------------------------- a full disk


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_a_full_disk_is_one_line_naming_the_output_folder(tmp_path, data_root):
    """A 2 MB tmpfs takes the MLflow store but not the first checkpoint (~3.6 MB)."""
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    command = [sys.executable, "-m", "orchestrator", "run", "--config", HARD, "--output-dir", str(tiny),
               "--set", f"data.root={data_root}", *TINY_CELL]
    private_tmpfs = ["unshare", "-m", "sh", "-c", 'mount -t tmpfs -o size=2m tmpfs "$0" && exec "$@"', str(tiny)]
    done = subprocess.run(private_tmpfs + command, cwd=REPO, env=child_env(tmp_path), capture_output=True,
                          text=True, timeout=300)
    line = the_error_line(done, 7)
    assert line.startswith(f"error: the disk is full in {tiny}") and "pass another --output-dir" in line


# ---------------------------------------------------------------- ui


def process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state) of every process."""
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        table[int(stat.parent.name)] = (int(fields[1]), fields[0])
    return table


def descendants(pid: int) -> set[int]:
    table, found, frontier = process_table(), set(), {pid}
    while frontier:
        frontier = {child for child, (parent, _) in table.items() if parent in frontier} - found
        found |= frontier
    return found


def running(pids: set[int]) -> set[int]:
    table = process_table()
    return {pid for pid in pids if pid in table and table[pid][1] != "Z"}


def test_ui_stops_with_its_server_when_its_pid_is_terminated(tmp_path):
    """mlflow ui serves from child processes; SIGTERM to `orchestrator ui` must stop them all."""
    port = free_port()
    env = child_env(tmp_path, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")  # fewer processes to start here
    ui = subprocess.Popen([sys.executable, "-m", "orchestrator", "ui", "--port", str(port), "--workers", "1",
                           "--output-dir", str(tmp_path / "out")], cwd=REPO, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    server: set[int] = set()
    try:
        deadline = time.monotonic() + 240
        while not answers_http(port):
            assert ui.poll() is None and time.monotonic() < deadline, ui.communicate(timeout=30)[0][-3000:]
            time.sleep(1)
        server = descendants(ui.pid)
        assert server  # the server runs in the ui's child processes
        ui.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        assert ui.wait(timeout=20) == 128 + signal.SIGTERM
        while (running(server) or answers_http(port)) and time.monotonic() - stopped < 20:
            time.sleep(0.5)
        assert running(server) == set() and not answers_http(port)
    finally:
        for pid in running(server) | ({ui.pid} if ui.poll() is None else set()):
            os.kill(pid, signal.SIGKILL)  # only what this test started
