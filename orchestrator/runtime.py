"""Ray runtime: connect to a cluster (RAY_ADDRESS / --address) or start a local one; pick devices."""

from __future__ import annotations

import os

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
            ray.init(address="local", num_cpus=num_cpus, runtime_env=env,
                     object_store_memory=LOCAL_OBJECT_STORE_BYTES, log_to_driver=True)
    context = DataContext.get_current()
    context.execution_options.preserve_order = True  # same seed => same batches
    context.enable_progress_bars = False


def use_gpu(setting: bool | None) -> bool:
    """None means: use CUDA (and NCCL) when the cluster has GPUs, else CPU and gloo."""
    if setting is not None:
        return setting
    import ray

    return ray.cluster_resources().get("GPU", 0) > 0
