"""The ImageNet protocol's locally computed rows (full, PCA) run from an ImageNet-format train folder.

configs/hard.yaml reads published sets from the hub for the methods listed in `data.hub_methods`
and computes `full` and `pca` from `data.train`, a folder with one sub-folder per class (JPEGs of
any size). Here that layout is built small (4 classes, 32 px storage) and nothing reaches the hub
(HF_HUB_OFFLINE: a hub read would fail at once).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from orchestrator.cell import run_cell
from orchestrator.config import load_config
from orchestrator.method_spec import from_template, source_spec
from tests_paths import REPO

WNIDS = ["n01440764", "n01443537", "n01484850", "n01491361"]
pytestmark = pytest.mark.slow


def write_imagenet_folder(root: Path, per_class: int, seed: int) -> Path:
    """root/<wnid>/<wnid>_<i>.JPEG, RGB images of varied sizes whose colour depends on the class."""
    rng = np.random.default_rng(seed)
    for class_id, wnid in enumerate(WNIDS):
        (root / wnid).mkdir(parents=True)
        for i in range(per_class):
            height, width = rng.integers(30, 60, size=2)
            pixels = rng.integers(0, 80, size=(height, width, 3)) + np.array([60 * class_id, 0, 200 - 60 * class_id])
            buffer = io.BytesIO()
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(buffer, format="JPEG")
            (root / wnid / f"{wnid}_{i}.JPEG").write_bytes(buffer.getvalue())
    return root


@pytest.fixture
def imagenet_config(tmp_path):
    train = write_imagenet_folder(tmp_path / "imagenet" / "train", per_class=10, seed=0)
    val = write_imagenet_folder(tmp_path / "imagenet" / "val", per_class=3, seed=1)

    def make(**overrides):
        settings = {"output_dir": str(tmp_path / "out"), "data.train": str(train), "data.val": str(val),
                    "data.image_size": 32, "model.name": "convnet3", "model.input_size": 32,
                    "eval.resize": 36, "eval.crop": 32, "eval.batch_size": 16, "schedule.epochs": 1,
                    "train.batch_size": 8, "train.workers": 1, "train.cpus_per_worker": 0.5,
                    "train.use_gpu": False, "train.checkpoint_every": 1, "train.threads": 1,
                    "teacher.model": "convnet3_w32", "teacher.epochs": 1, "teacher.batch_size": 16}
        settings.update(overrides)
        return load_config(REPO / "configs" / "hard.yaml", settings)

    return make


def test_hub_methods_read_the_template_and_local_methods_the_train_folder(imagenet_config):
    config = imagenet_config(**{"data.method": "el2n", "data.ipc": 10})
    assert from_template(config) and source_spec(config) == "he-yang/2025-rethinkdc-imagenet-el2n-ipc-10"
    for method in ("pca", "full"):
        local = imagenet_config(**{"data.method": method})
        assert not from_template(local) and source_spec(local) == local.data.train


def test_full_and_pca_cells_run_from_a_local_imagenet_train_folder(ray_cluster, imagenet_config):
    from orchestrator.teacher_job import ensure_prerequisites

    full = run_cell(imagenet_config(**{"data.method": "full", "data.ipc": None}))
    assert full.summary["top1_final"] is not None

    pca = imagenet_config(**{"data.method": "pca", "data.ipc": 2})
    ensure_prerequisites(pca)  # a teacher run on the train folder records the dynamics PCA prunes with
    result = run_cell(pca)
    from mlflow import MlflowClient

    from orchestrator.tracking import tracking_uri

    metrics = MlflowClient(tracking_uri(pca)).get_run(result.run_id).data.metrics
    assert metrics["data/num_images"] == 2 * len(WNIDS)  # IPC stored images, 4 whole images each
    assert metrics["train/samples_seen"] == 2 * len(WNIDS)  # default: one view per stored image
