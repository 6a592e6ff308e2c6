"""What a killed program's local Ray leaves running, found precisely and stopped.

The program that starts the workspace's local Ray records its session folder (`runtime.local_ray_file`).
When that program is killed (SIGKILL), Ray's GCS and raylet stop with it, but processes they started can
keep running and listening for minutes: the dashboard agent and the runtime-env agent (seen), workers.
The next program of the workspace that finds the record with its starter gone stops exactly the processes
of that session: those naming its folder on their command line (gcs_server, raylet, dashboard, monitors),
those with a file open in it (agents and workers, whose command line Ray rewrites to `ray::...`, keep the
raylet's log files open), and their children. Another Ray (another checkout's sweep) has another session
folder and is never touched.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

STOP_WAIT_S = 5.0  # after SIGTERM, before SIGKILL


def stop_left_behind(record: Path) -> None:
    """Stop the processes of the Ray that `record` names (its starter is gone), then drop the record."""
    try:
        left = json.loads(record.read_text())
    except (OSError, ValueError):
        return
    session = left.get("session_dir") if isinstance(left, dict) else None
    processes = session_processes(session) if session else []
    if processes:
        names = sorted({process_name(p) for p in processes})
        stop(processes)
        print(f"the local Ray of pid {left.get('pid')} outlived its program: stopped its {len(processes)} "
              f"processes ({', '.join(names)}); starting a new one", flush=True)
    record.unlink(missing_ok=True)


def session_processes(session: str) -> list:
    """The running processes of the Ray whose session folder is `session`, never this program or its parents."""
    import ray  # noqa: F401  (Ray ships psutil: ray/thirdparty_files)
    import psutil

    mine = {os.getpid(), *(parent.pid for parent in psutil.Process().parents())}
    found = {}
    for process in psutil.process_iter(["cmdline"]):
        try:
            if process.pid not in mine and in_session(process, session):
                found[process.pid] = process
                found.update({child.pid: child for child in process.children(recursive=True)})
        except psutil.Error:  # gone meanwhile, or another user's
            continue
    return [process for pid, process in found.items() if pid not in mine]


def in_session(process, session: str) -> bool:
    """Whether the process names the session folder on its command line or, being one of Ray's
    (`ray::...`, `ray-dashboard-...`), has a file open in it."""
    folder = session.rstrip("/") + "/"
    args = process.info["cmdline"] or []
    if any(folder in arg + "/" for arg in args):
        return True
    if not (args and args[0].startswith(("ray::", "ray-dashboard-"))):
        return False
    return any(open_file.path.startswith(folder) for open_file in process.open_files())


def process_name(process) -> str:
    """`ray::DashboardAgent`, `raylet`, `dashboard.py`: what a Ray process is, for the one line."""
    import psutil

    try:
        args = process.cmdline()
        if args and args[0].startswith("ray"):
            return args[0].split()[0]
        scripts = [Path(arg).name for arg in args if arg.endswith(".py")]
        return scripts[0] if scripts else process.name()
    except psutil.Error:
        return "gone"


def stop(processes: list) -> None:
    """SIGTERM, then SIGKILL what still runs after STOP_WAIT_S."""
    import psutil

    for process in processes:
        try:
            process.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(processes, timeout=STOP_WAIT_S)
    for process in alive:
        try:
            process.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=STOP_WAIT_S)
