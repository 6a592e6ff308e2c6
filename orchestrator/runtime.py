"""Ray runtime: connect to a cluster (RAY_ADDRESS / --address) or use one local Ray; pick devices.

Without an address, programs of one workspace (checkout) share one local Ray instead of starting
one each; programs of another checkout, or with another ORCHESTRATOR_HOME (those a test suite starts),
start their own. The first program starts it and records its
address, pid and session folder (`local_ray_file`); later ones join it. The starter keeps it running at
exit until the programs that joined it are done (its Ray stops with it). When the starter was killed
(SIGKILL), Ray's agents outlive it; the next program of the workspace stops exactly that Ray's processes
(`leftovers`), says so on one line, and starts its own.

The local Ray listens on 127.0.0.1 only (`local_ray_options`): Ray's single-machine mode
(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, which keeps Ray from replacing 127.0.0.1 by the machine's address)
with the node address 127.0.0.1, so the GCS, raylet, workers, dashboard agent, runtime-env agent,
autoscaler monitor and their metrics ports bind loopback. A program joining a Ray at a loopback address
(`--address 127.0.0.1:PORT` too) uses the same mode. No dashboard runs unless something needs it: a sweep
whose search uses the ASHA scheduler (Ray Train's placement group cleaner, which frees the CPUs of the
trials ASHA stops, asks the dashboard's State API), or ORCHESTRATOR_DASHBOARD=1; it then binds 127.0.0.1
(port 8265 or the next free one). Without it Ray still runs its head process with only the usage-stats
module (a metrics port, no UI) and the dashboard agent (the raylet starts it; its HTTP port needs Ray's
token), both on 127.0.0.1. A program whose Ray Train workers wait for CPUs that other
programs hold says so every 30 s (`waiting`).

The console (unless `--verbose`, env ORCHESTRATOR_VERBOSE=1): of what Ray's workers write, only their
stdout (the training loop's progress lines, a cell's summary) reaches the driver's console; their
stderr (Ray's own loggers, C++ core logs, warnings) stays in the Ray session's log files, whose folder
is printed once. On the driver, Ray's loggers print errors only (its records go to
`<session>/logs/orchestrator-driver-<pid>.log`, Ray Data's to `logs/ray-data/`) and MLflow's warnings.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import logging.handlers
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from orchestrator.locks import file_lock
from orchestrator.provenance import COMMIT_ENV, code_commit

LOCAL_OBJECT_STORE_BYTES = 600 * 1024**2
# Reach every trial and worker, on every node: one tracking server, the same hub settings.
FORWARDED_ENV = ("MLFLOW_TRACKING_URI", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HOME")
VERBOSE_ENV = "ORCHESTRATOR_VERBOSE"
DASHBOARD_ENV = "ORCHESTRATOR_DASHBOARD"  # 1: the local Ray this program starts runs the dashboard
LOOPBACK = "127.0.0.1"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
# Ray's single-machine mode (its default on macOS/Windows), read when ray is imported: 0 keeps the node
# address 127.0.0.1 instead of replacing it with the machine's address.
SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
# The driver loggers whose console handlers Ray sets up: Ray's (start-up, Tune), Ray Data's and
# Ray Train's (Train's exists on the driver in local mode).
QUIET_RAY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune")
# Log batches from these Ray processes are never a cell's output.
RAY_SYSTEM_PIDS = ("autoscaler", "raylet", "gcs_server")


def set_console(verbose: bool) -> None:
    """The program's console mode (`--verbose`), seen by `init_ray`."""
    os.environ[VERBOSE_ENV] = "1" if verbose else "0"
    if not verbose:
        quiet_driver_console()


def console_verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "0") == "1"


def init_ray(address: str | None = None, num_cpus: int | None = None, *, verbose: bool | None = None,
             dashboard: bool = False) -> None:
    """Idempotent. With no address (argument or RAY_ADDRESS) the workspace's local Ray is joined or started.

    verbose (default: `--verbose`, i.e. ORCHESTRATOR_VERBOSE): False keeps Ray's logs off the console.
    dashboard: the local Ray this program starts runs the dashboard (on 127.0.0.1); ORCHESTRATOR_DASHBOARD=1
    asks for it too.
    """
    import ray
    from ray.data import DataContext

    quiet = not (console_verbose() if verbose is None else verbose)
    quiet = quiet and not in_ray_worker()  # a worker's console is its log files; the driver filters it
    if quiet:
        quiet_driver_console()
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS")
        env = {"env_vars": {key: os.environ[key] for key in FORWARDED_ENV if key in os.environ}}
        env["env_vars"].update(PYTHONUNBUFFERED="1", **{COMMIT_ENV: code_commit()})  # workers may lack .git
        if address:
            if on_loopback(address):
                loopback_only()
            ray.init(address=address, runtime_env=env, log_to_driver=True)
        else:
            join_or_start_local_ray(num_cpus, env, dashboard or os.environ.get(DASHBOARD_ENV) == "1")
        if quiet:
            print(f"Ray's logs: {keep_driver_logs_in_session()} (--verbose prints them here)", flush=True)
    if quiet:
        forward_worker_stdout_only()
    context = DataContext.get_current()
    context.execution_options.preserve_order = True  # same seed => same batches
    context.enable_progress_bars = False


# ---------------------------------------------------------------- a quiet console


def in_ray_worker() -> bool:
    """True in a Ray task or actor (a Tune trial, a Ray Train worker), False in the program that drives Ray."""
    import ray

    return ray.is_initialized() and ray._private.worker.global_worker.mode != ray.SCRIPT_MODE


# Where the workers' stdout lines go: the console, or a sweep's live table while it draws.
worker_line_sinks: list[Callable[[str], None]] = [lambda line: print(line, flush=True)]


@contextmanager
def worker_lines_to(sink: Callable[[str], None]) -> Iterator[None]:
    """Within the block, the workers' stdout lines (see `forward_worker_output`) go to `sink`."""
    worker_line_sinks.append(sink)
    try:
        yield
    finally:
        worker_line_sinks.remove(sink)


def forward_worker_output(batch: dict) -> None:
    """Print a worker's stdout lines without Ray's "(Actor pid=...)" prefix; drop its stderr."""
    if batch.get("is_err") or batch.get("pid") in RAY_SYSTEM_PIDS:
        return
    for line in batch.get("lines", []):
        worker_line_sinks[-1](line)


def forward_worker_stdout_only() -> None:
    """Replace Ray's forwarding of all worker output (`ray.init(log_to_driver=True)`) by `forward_worker_output`.

    Workers keep writing both streams to `<session>/logs/worker-*.out|err`; only the console changes.
    Filtering here, on the driver, covers every worker kind (Train controller and workers, Ray Data's
    coordinator and tasks, Tune trials) wherever the training loop runs.
    """
    from ray._private.worker import global_worker_stdstream_dispatcher as dispatcher

    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("ray_print_logs", forward_worker_output)


class ConsoleFilter(logging.Filter):
    """On a driver console handler: errors only (the records are kept in files, see `keep_driver_logs_in_session`).

    Not Tune's: a failed trial's traceback; the sweep reports the failed cell and where its logs are.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR and not record.name.startswith("ray.tune")


# Ray's driver records until Ray's session folder exists, then that folder's file (ray.init logs
# while it starts: the auth-token notice, "Started a local Ray instance").
driver_log = logging.handlers.MemoryHandler(capacity=10_000, flushLevel=logging.CRITICAL + 1)


def quiet_driver_console() -> None:
    """Idempotent: Ray's console handlers print errors only (Ray's records are kept), MLflow's warnings,
    Ray Tune nothing of its own."""
    for name in QUIET_RAY_LOGGERS:
        for handler in logging.getLogger(name).handlers:
            console = isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)
            if console and not any(isinstance(f, ConsoleFilter) for f in handler.filters):
                handler.addFilter(ConsoleFilter())
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is imported
    logging.getLogger("mlflow").setLevel(os.environ["MLFLOW_LOGGING_LEVEL"])  # when it already is
    # Tune's default output prints an experiment box and each trial's error whatever RunConfig(verbose=0)
    # says; its former output honours verbose=0 (the sweep shows its own table).
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    ray_logger = logging.getLogger("ray")
    if driver_log not in ray_logger.handlers:
        ray_logger.addHandler(driver_log)


def keep_driver_logs_in_session() -> Path:
    """Send the driver's Ray records (those kept so far, and later ones) to the session's log folder."""
    import ray

    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    target = logging.FileHandler(logs / f"orchestrator-driver-{os.getpid()}.log")
    target.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    if driver_log.target is not None:  # an earlier Ray of this program (tests start several)
        driver_log.target.close()
    driver_log.setTarget(target)
    driver_log.flush()
    driver_log.flushLevel = logging.DEBUG  # from now on each record is written at once
    return logs


def workspace() -> Path:
    """The checkout (or installed tree) this program runs from: programs share a local Ray only within it."""
    return Path(__file__).resolve().parents[1]


def local_ray_file() -> Path:
    """This workspace's record of the local Ray that an orchestrator program started: address, the starter's
    pid and start time, the Ray's session folder, its dashboard URL (or null). Keyed by user, workspace and
    ORCHESTRATOR_HOME, so a sweep in one checkout is never joined by another checkout's programs (a second
    worktree's sweep), nor by the programs a test suite starts in the same checkout (each test session and
    each child program of a test has its own ORCHESTRATOR_HOME): a test that kills its program's Ray never
    takes a user's program down with it."""
    key = f"{workspace()}\n{os.environ.get('ORCHESTRATOR_HOME', '')}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"orchestrator-ray-{os.getuid()}-{digest}.json"


def join_or_start_local_ray(num_cpus: int | None, env: dict, dashboard: bool) -> None:
    from orchestrator.leftovers import stop_left_behind

    record = local_ray_file()
    with file_lock(record.with_suffix(".lock"), "the local Ray record", quiet=True):
        running = live_local_ray(record)
        if running is not None:
            join_local_ray(running, env, dashboard)
            return
        stop_left_behind(record)  # the Ray of a starter that was killed, if its processes still run
        start_local_ray(record, num_cpus, env, dashboard)
    atexit.register(stop_local_ray, record)  # runs before Ray's own exit hook (registered earlier)


def local_ray_options(dashboard: bool) -> dict:
    """`ray.init` options of a local Ray that listens on 127.0.0.1 only (sets this program's mode)."""
    loopback_only()
    return {"_node_ip_address": LOOPBACK, "include_dashboard": dashboard, "dashboard_host": LOOPBACK}


def loopback_only() -> None:
    """Ray's single-machine mode in this program and the processes it starts: 127.0.0.1 stays the node address."""
    import ray._private.ray_constants as ray_constants

    os.environ[SINGLE_MACHINE_ENV] = "0"  # for the Ray processes started from here (they import ray anew)
    ray_constants.ENABLE_RAY_CLUSTER = False  # this program imported ray already


def on_loopback(address: str) -> bool:
    host = address.split("://")[-1].rsplit(":", 1)[0]
    return host in LOOPBACK_HOSTS


def start_local_ray(record: Path, num_cpus: int | None, env: dict, dashboard: bool) -> None:
    import ray

    context = ray.init(address="local", num_cpus=num_cpus, runtime_env=env, log_to_driver=True,
                       object_store_memory=LOCAL_OBJECT_STORE_BYTES, **local_ray_options(dashboard))
    node = ray._private.worker._global_node
    record.write_text(json.dumps({
        "address": ray.get_runtime_context().gcs_address, "pid": os.getpid(), "started": process_started(os.getpid()),
        "session_dir": node.get_session_dir_path(), "dashboard": context.dashboard_url or None,
        "auth_mode": os.environ.get("RAY_AUTH_MODE")}))


def join_local_ray(running: dict, env: dict, dashboard: bool) -> None:
    import ray

    print(f"joining the local Ray started by pid {running['pid']} ({running['address']})", flush=True)
    if dashboard and not running.get("dashboard"):
        print(f"note: the local Ray of pid {running['pid']} runs no dashboard: placement groups of trials that ASHA "
              "stops are freed only when it ends (start this sweep alone, or its first program with "
              f"{DASHBOARD_ENV}=1)", flush=True)
    if running.get("auth_mode") == "token":  # Ray turns it on for the local clusters it starts
        from ray._private.authentication.authentication_token_setup import _enable_token_auth

        _enable_token_auth()  # RAY_AUTH_MODE=token, seen by Ray's already-loaded config too
    if on_loopback(running["address"]):
        loopback_only()
    ray.init(address=running["address"], runtime_env=env, log_to_driver=True)


def live_local_ray(record: Path) -> dict | None:
    """The recorded local Ray when its starter still runs (the same process, not a reused pid), else None."""
    try:
        running = json.loads(record.read_text())
        os.kill(running["pid"], 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if running["pid"] == os.getpid():
        return None
    started, now_started = running.get("started"), process_started(running["pid"])
    same = started is None or (now_started is not None and abs(now_started - started) < 1)
    return running if same else None


def process_started(pid: int) -> float | None:
    """When process `pid` started (seconds since the epoch), or None when it is gone."""
    import ray  # noqa: F401  (Ray ships psutil: ray/thirdparty_files)
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def describe_ray() -> str:
    """Which Ray this program uses, for messages: the local Ray of pid N (and what N runs), or the Ray at ADDRESS."""
    import ray

    address = ray.get_runtime_context().gcs_address
    try:
        record = json.loads(local_ray_file().read_text())
    except (OSError, ValueError):
        record = {}
    if not isinstance(record, dict) or record.get("address") != address:
        return f"the Ray at {address}"
    if record.get("pid") == os.getpid():
        return "the local Ray this program started"
    return f"the local Ray of pid {record.get('pid')} ({program_of(record.get('pid'))})"


def program_of(pid: int) -> str:
    """What process `pid` runs, short: `orchestrator sweep --config q.yaml` for `python -m orchestrator sweep ...`."""
    import ray  # noqa: F401  (Ray ships psutil)
    import psutil

    try:
        args = psutil.Process(pid).cmdline()
    except (psutil.Error, TypeError, ValueError):
        return "gone"
    args = args[args.index("-m") + 1:] if "-m" in args else args[1:]
    text = " ".join(" ".join(args).split())  # one line, whatever `python -c` was given
    return text if len(text) <= 80 else text[:77] + "..."


def other_drivers() -> list[int]:
    """Pids of the other live programs connected to this Ray."""
    from ray._private.state import jobs

    return sorted({job["DriverPid"] for job in jobs() if not job["IsDead"] and job["DriverPid"] != os.getpid()})


def stop_local_ray(record: Path) -> None:
    """At exit of the program that started the local Ray: wait for those that joined it, then stop it."""
    import ray

    if not ray.is_initialized():
        return
    announced = False
    while True:
        with file_lock(record.with_suffix(".lock"), "the local Ray record", quiet=True):
            others = other_drivers()
            if not others:
                record.unlink(missing_ok=True)
                break
        if not announced:
            print(f"keeping the local Ray running for the programs that joined it (pids {others})",
                  file=sys.stderr, flush=True)
            announced = True
        time.sleep(2)
    ray.shutdown()


def use_gpu(setting: bool | None) -> bool:
    """None means: use CUDA (and NCCL) when the cluster has GPUs (this machine, when no Ray is
    running: a one-process cell), else CPU and gloo."""
    if setting is not None:
        return setting
    import ray

    if not ray.is_initialized():
        import torch

        return torch.cuda.is_available()
    return ray.cluster_resources().get("GPU", 0) > 0
