"""The workspace's local Ray, with real Ray processes: it listens on 127.0.0.1 only and runs no dashboard
unless asked; a program waiting for CPUs that another program holds says so on one line and gives up on
one `error:` line; what a killed starter leaves running is stopped by the next program of the workspace.

Two Rays serve the module. A "holder" program starts the workspace's local Ray through the project's code
(1 CPU, in its own TMPDIR, so the record and Ray's session folders are the test's own) and holds its CPU
with an actor; the last test SIGKILLs it, and the next program starts the second Ray (with the dashboard).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import ray  # noqa: F401  (Ray ships psutil)
import psutil

from orchestrator.leftovers import process_name, session_processes
from orchestrator.sweep import needs_dashboard
from orchestrator.sweep_config import load_sweep
from tests_paths import HARD, REPO

HOLDER = """
import sys, ray
from orchestrator.runtime import init_ray
init_ray(num_cpus=1)

@ray.remote(num_cpus=1)
class Holder:
    def ready(self):
        return True

holder = Holder.remote()
ray.get(holder.ready.remote())
print("holding 1 CPU", flush=True)
sys.stdin.read()
"""
NEXT_PROGRAM = """
import sys, ray
from orchestrator.runtime import init_ray
init_ray(num_cpus=1)
print("a task says", ray.get(ray.remote(lambda: "hello").remote()), flush=True)
sys.stdin.read()
"""


def program_env(tmp: Path, **settings: str) -> dict:
    """A program of this workspace, with its own temp folder (the record, Ray's sessions) and no Ray settings."""
    env = dict(os.environ, TMPDIR=str(tmp), PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               ORCHESTRATOR_HOME=str(tmp / "home"))
    for name in ("RAY_ADDRESS", "ORCHESTRATOR_VERBOSE", "ORCHESTRATOR_DASHBOARD", "ORCHESTRATOR_RAY_WAIT_S",
                 "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"):
        env.pop(name, None)
    return {**env, **settings}


def start_program(code: str, env: dict, ready: str) -> tuple[subprocess.Popen, list[str]]:
    """`python -c code` from the checkout, once it printed a line starting with `ready` (and its lines so far)."""
    program = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, text=True, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output: list[str] = []
    while not output or not output[-1].startswith(ready):
        line = program.stdout.readline()
        assert line, "\n".join(output)
        output.append(line.strip())
    return program, output


def ray_session(output: list[str]) -> str:
    """The session folder of the Ray a program started, from its `Ray's logs: <session>/logs` line."""
    return str(Path(re.search(r"Ray's logs: (\S+)", "\n".join(output)).group(1)).parent)


@pytest.fixture(scope="module")
def workspace_ray():
    tmp = Path(tempfile.mkdtemp(prefix="rl-", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    holder, output = start_program(HOLDER, program_env(tmp), "holding 1 CPU")
    (record_file,) = tmp.glob("orchestrator-ray-*.json")  # the holder's own (its ORCHESTRATOR_HOME)
    record = json.loads(record_file.read_text())
    try:
        yield SimpleNamespace(tmp=tmp, holder=holder, record=record, session=ray_session(output),
                              tree=psutil.Process(holder.pid).children(recursive=True))
    finally:
        if holder.poll() is None:
            holder.stdin.close()  # it stops its Ray at exit
            holder.wait(timeout=60)
        for session in (tmp / "ray").glob("session_2*"):
            for process in session_processes(str(session)):  # whatever a failed test left
                process.kill()
        shutil.rmtree(tmp, ignore_errors=True)


def listening(processes: list) -> list[tuple[str, str, int]]:
    """(process name, address, port) of every listening TCP socket of these processes."""
    found = []
    for process in processes:
        try:
            found += [(process_name(process), c.laddr.ip.removeprefix("::ffff:"), c.laddr.port)
                      for c in process.net_connections("tcp") if c.status == psutil.CONN_LISTEN]
        except psutil.Error:
            continue
    return found


def running(processes: list) -> list:
    return [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def test_only_a_sweep_with_asha_asks_for_the_dashboard():
    assert needs_dashboard(load_sweep(REPO / "configs/sweeps/asha-lr-cutmix.yaml"))
    assert not needs_dashboard(load_sweep(REPO / "configs/sweeps/quickstart.yaml"))


def test_local_ray_listens_on_127_0_0_1_only_and_runs_no_dashboard(workspace_ray):
    """Every listening socket of the holder's Ray (its process tree: GCS, raylet, agents, monitors, workers)
    is on 127.0.0.1; no dashboard UI (Ray's head process keeps only its usage-stats module and a metrics
    port, on 127.0.0.1 too)."""
    sockets = listening([psutil.Process(workspace_ray.holder.pid), *workspace_ray.tree])
    names = {name for name, _, _ in sockets}
    assert {"gcs_server", "raylet", "ray::DashboardAgent", "ray::RuntimeEnvAgent"} <= names, sockets
    assert {address for _, address, _ in sockets} == {"127.0.0.1"}, sockets
    assert workspace_ray.record["dashboard"] is None
    assert 8265 not in {port for _, _, port in sockets}, sockets  # the dashboard UI's port
    heads = [p for p in [psutil.Process(workspace_ray.holder.pid), *workspace_ray.tree]
             if p.is_running() and process_name(p) == "dashboard.py"]
    assert all("--modules-to-load=UsageStatsHead" in p.cmdline() for p in heads)  # no UI modules
    assert workspace_ray.record["address"].startswith("127.0.0.1:")


def test_processes_of_a_session_are_found_by_its_exact_folder(workspace_ray):
    session = workspace_ray.record["session_dir"]
    assert session == workspace_ray.session
    found = {p.pid for p in session_processes(session)}
    assert {p.pid for p in running(workspace_ray.tree)} <= found
    assert workspace_ray.holder.pid not in found  # the program itself is not one of its Ray's processes
    assert session_processes(session[:-1]) == []  # a folder that only starts like it is another Ray's


def test_a_run_waiting_for_a_busy_local_ray_says_so_then_gives_up_in_one_error_line(workspace_ray, tmp_path,
                                                                                     data_root):
    """`run --workers 1` joins the holder's Ray, whose only CPU is held: one line while it waits, then
    (ORCHESTRATOR_RAY_WAIT_S) one `error:` line with the fix, exit code 8, no traceback or Ray stack."""
    args = ["run", "--config", HARD, "--workers", "1", "--ipc", "2", "--epochs", "1", "--output-dir",
            str(tmp_path / "out"), "--set", f"data.root={data_root}", "--set", "train.batch_size=8",
            "--set", "train.threads=1"]
    done = subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=REPO, text=True, capture_output=True,
                          env=program_env(workspace_ray.tmp, ORCHESTRATOR_RAY_WAIT_S="15"), timeout=150)
    pid = workspace_ray.holder.pid
    where = rf"1 CPU \(0 of 1 CPUs free\) on the local Ray of pid {pid} \(-c import sys, ray .*\)"
    waiting = [line for line in done.stdout.splitlines() if line.startswith("waiting for")]
    assert done.returncode == 8, done.stdout + done.stderr
    assert waiting and re.fullmatch(rf"waiting for {where}, held by 1 other program: waited 1\d s", waiting[0])
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, done.stderr
    assert re.fullmatch(rf"error: gave up after waiting 1\d s for {where}, held by 1 other program: wait until "
                        r"they finish .*, run from another checkout .*, or pass --address .*", errors[0])
    assert "Traceback" not in done.stdout + done.stderr and "SIGTERM" not in done.stdout + done.stderr


def test_the_next_program_stops_what_a_killed_starter_left_and_starts_its_own_ray(workspace_ray):
    """SIGKILL the holder: its agents outlive it, listening. The next program of the workspace stops exactly
    them (one line) and starts a Ray of its own, which runs a task; asked for the dashboard
    (ORCHESTRATOR_DASHBOARD=1), it binds it to 127.0.0.1 like every other port. It stops that Ray at exit."""
    holder = workspace_ray.holder
    holder.kill()
    holder.wait()
    time.sleep(3)
    left = running(workspace_ray.tree)
    assert left, "nothing outlived the killed program: nothing to show"
    env = program_env(workspace_ray.tmp, ORCHESTRATOR_DASHBOARD="1")
    program, output = start_program(NEXT_PROGRAM, env, "a task says")
    try:
        assert output[-1] == "a task says hello"
        stopped = [line for line in output if line.startswith("the local Ray of pid")]
        assert len(stopped) == 1 and re.fullmatch(
            rf"the local Ray of pid {holder.pid} outlived its program: stopped its \d+ processes \(.*ray::.*\); "
            r"starting a new one", stopped[0]), output
        assert running(left) == []
        session = ray_session(output)
        assert session != workspace_ray.session
        deadline, sockets = time.time() + 60, []
        while not [s for s in sockets if s[0] == "dashboard.py"] and time.time() < deadline:
            time.sleep(2)
            sockets = listening([psutil.Process(program.pid), *psutil.Process(program.pid).children(recursive=True)])
        assert [s for s in sockets if s[0] == "dashboard.py"], sockets
        assert {address for _, address, _ in sockets} == {"127.0.0.1"}, sockets
    finally:
        program.stdin.close()
        program.wait(timeout=60)
    deadline = time.time() + 30
    while session_processes(session) and time.time() < deadline:  # its own Ray, stopped at its exit
        time.sleep(1)
    assert session_processes(session) == []
