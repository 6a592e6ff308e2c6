"""Shared fixtures: one real local Ray cluster per test session, real Fashion-MNIST, tiny configs."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from tests_paths import HARD, REPO

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.pop("MLFLOW_TRACKING_URI", None)
# Where `report` remembers the output folder of each experiment, and what keys the local Ray record: the
# test session's own, so its programs never join (or stop) a local Ray the user's programs started here.
os.environ["ORCHESTRATOR_HOME"] = os.path.join(tempfile.mkdtemp(prefix="orchestrator-home-"))


@pytest.fixture(scope="session")
def ray_cluster():
    """A real local Ray, started once (address="local" ignores a stale /tmp/ray cluster file), listening
    on 127.0.0.1 only, as a program's local Ray does; with the dashboard (on 127.0.0.1): the ASHA tests need it.

    4 logical CPUs on a 2-core machine: headroom for the placement groups that ASHA-stopped trials
    can leave behind until Ray's cleaner removes them (it cannot when several Ray instances run).
    """
    import ray

    from orchestrator.runtime import init_ray, local_ray_options

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=4, object_store_memory=400 * 1024**2, log_to_driver=True,
                 runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}},
                 **local_ray_options(dashboard=True))
    init_ray()
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def full_data_root(tmp_path_factory) -> Path:
    """Fashion-MNIST prepared once per session from the Debian package's files (60,000 / 10,000)."""
    from orchestrator.data.prepare import prepare_fashion_mnist

    root = tmp_path_factory.mktemp("data")
    prepare_fashion_mnist(root, image_size=28, mode="L")
    return root


VAL_PER_CLASS = 100


@pytest.fixture(scope="session")
def data_root(tmp_path_factory, full_data_root) -> Path:
    """The same real training images, validated on the first 100 test images of each class.

    Cells in tests evaluate after most epochs; 1,000 real test images instead of 10,000 keep what the
    tests check (the loop, tracking, resume, the protocol at any worker count) and cut the suite's
    evaluation time tenfold. Tests about the dataset itself use `full_data_root`.
    """
    import json

    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("data-val1k")
    name = "fashion-mnist-28-L"
    source, target = full_data_root / name, root / name
    target.mkdir()
    (target / "train.parquet").symlink_to(source / "train.parquet")
    test = pq.read_table(source / "test.parquet")
    keep = sorted(i for label in range(10)
                  for i in pc.indices_nonzero(pc.equal(test["class_id"], label)).to_pylist()[:VAL_PER_CLASS])
    pq.write_table(test.take(keep), target / "test.parquet")
    info = json.loads((source / "dataset_info.json").read_text())
    info["num_rows"]["test"] = len(keep)
    (target / "dataset_info.json").write_text(json.dumps(info))
    return root


@pytest.fixture
def tiny_config(tmp_path, data_root):
    """A fast Fashion-MNIST cell: 2 images per class, 2 epochs, local output dir."""
    from orchestrator.config import load_config

    def make(protocol: str = "fmnist-hard", **overrides):
        base = {"output_dir": str(tmp_path / "out"), "data.root": str(data_root), "data.ipc": 2,
                "schedule.epochs": 2, "train.batch_size": 8, "eval.every": 1, "train.checkpoint_every": 1,
                "train.cpus_per_worker": 0.5}
        base.update(overrides)
        return load_config(REPO / "configs" / f"{protocol}.yaml", base)

    return make


@pytest.fixture
def base_args(tmp_path, data_root):
    """`run` arguments of a 1-epoch hard-label cell writing under tmp_path: each test adds what it checks."""
    return ["--config", HARD, "--output-dir", str(tmp_path / "out"), "--set", f"data.root={data_root}",
            "--epochs", "1"]
