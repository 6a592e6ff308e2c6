"""Ray runtime: connect to a cluster (RAY_ADDRESS / --address) or use one local Ray; pick devices.

Without an address, programs on one machine share one local Ray instead of starting one each (two
instances make Ray's placement-group cleaner fail with "Found multiple active Ray instances"). The
first program starts it and records its address (`local_ray_file`); later ones join it. The starter
keeps it running at exit until the programs that joined it are done (its Ray stops with it).
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from orchestrator.locks import file_lock

LOCAL_OBJECT_STORE_BYTES = 600 * 1024**2
# Reach every trial and worker, on every node: one tracking server, the same hub settings.
FORWARDED_ENV = ("MLFLOW_TRACKING_URI", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HOME")


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Idempotent. With no address (argument or RAY_ADDRESS) a local Ray is started by the program."""
    import ray
    from ray.data import DataContext

    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS")
        env = {"env_vars": {key: os.environ[key] for key in FORWARDED_ENV if key in os.environ}}
        env["env_vars"]["PYTHONUNBUFFERED"] = "1"
        if address:
            ray.init(address=address, runtime_env=env, log_to_driver=True)
        else:
            join_or_start_local_ray(num_cpus, env)
    context = DataContext.get_current()
    context.execution_options.preserve_order = True  # same seed => same batches
    context.enable_progress_bars = False


def local_ray_file() -> Path:
    """This user's record of the local Ray that an orchestrator program started: address and owner pid."""
    return Path(tempfile.gettempdir()) / f"orchestrator-ray-{os.getuid()}.json"


def join_or_start_local_ray(num_cpus: int | None, env: dict) -> None:
    import ray

    record = local_ray_file()
    with file_lock(record.with_suffix(".lock"), "the local Ray record", quiet=True):
        running = live_local_ray(record)
        if running is not None:
            print(f"joining the local Ray started by pid {running['pid']} ({running['address']})", flush=True)
            if running.get("auth_mode") == "token":  # Ray turns it on for the local clusters it starts
                from ray._private.authentication.authentication_token_setup import _enable_token_auth

                _enable_token_auth()  # RAY_AUTH_MODE=token, seen by Ray's already-loaded config too
            ray.init(address=running["address"], runtime_env=env, log_to_driver=True)
            return
        ray.init(address="local", num_cpus=num_cpus, runtime_env=env,
                 object_store_memory=LOCAL_OBJECT_STORE_BYTES, log_to_driver=True)
        record.write_text(json.dumps({"address": ray.get_runtime_context().gcs_address, "pid": os.getpid(),
                                      "auth_mode": os.environ.get("RAY_AUTH_MODE")}))
    atexit.register(stop_local_ray, record)  # runs before Ray's own exit hook (registered earlier)


def live_local_ray(record: Path) -> dict | None:
    """The recorded local Ray when its starter still runs, else None."""
    try:
        running = json.loads(record.read_text())
        os.kill(running["pid"], 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return running if running["pid"] != os.getpid() else None


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
    """None means: use CUDA (and NCCL) when the cluster has GPUs, else CPU and gloo."""
    if setting is not None:
        return setting
    import ray

    return ray.cluster_resources().get("GPU", 0) > 0
