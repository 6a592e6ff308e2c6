"""Teachers and training dynamics are keyed by everything that made them, and never reused silently.

Cache keys are recorded per cell and the report refuses mixed keys; a damaged teacher file fails in
the driver before training, with the fix. The end-to-end test trains a real
1-epoch teacher on a 100-image slice of Fashion-MNIST on a real local Ray cluster.
"""

from __future__ import annotations

import hashlib
import shutil
import time

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from orchestrator.cell import run_cell
from orchestrator.config import replace
from orchestrator.data.select import write_parquet
from orchestrator.data.sources import load_source
from orchestrator.errors import CheckpointError, ConfigError, DataError, OrchestratorError
from orchestrator.report import check_artifact_keys, load_cell_runs
from orchestrator.teacher_job import missing_runs, train_teacher
from orchestrator.teachers import artifact_key, dynamics_dir, dynamics_key, resolve_teacher, teacher_key, \
    teacher_path, teacher_training_config
from orchestrator.tracking import tracking_uri
from pca.pruning import load_scores
from trainers.dynamics import verify_manifest
from trainers.models import create_student, save_teacher, teacher_meta


@pytest.fixture
def small_set(tmp_path, data_root):
    """Fashion-MNIST's first 100 training and 50 test images as parquet files: a fast 'full set'."""
    paths = {}
    for split, rows in (("train", 100), ("test", 50)):
        source = load_source("fashion-mnist", split, data_root=data_root)
        paths[split] = write_parquet(source.dataset.select(range(rows)), tmp_path / "small" / f"{split}.parquet")
    return paths


@pytest.fixture
def cache_config(tiny_config, small_set):
    def make(**overrides):
        base = {"data.train": str(small_set["train"]), "data.val": str(small_set["test"]), "data.val_split": "train",
                "teacher.model": "convnet3_w32", "teacher.epochs": 1, "teacher.batch_size": 32,
                "prune.score_runs": 1, "prune.el2n_epochs": 1, "schedule.epochs": 1, "data.ipc": 2}
        base.update(overrides)
        return tiny_config("fmnist-soft", **base)

    return make


def test_key_covers_the_recipe_the_seed_and_the_training_set(cache_config, tmp_path, data_root):
    config = cache_config()
    key = teacher_key(config)
    for override in ({"teacher.epochs": 2}, {"teacher.batch_size": 64}, {"teacher.crop_scale": [0.5, 1.0]},
                     {"teacher.model": "convnet3"}, {"teacher.seed": 1}, {"optim.lr": 0.01},
                     {"optim.name": "sgd"}, {"schedule.warmup_epochs": 1}, {"model.input_size": 24}):
        assert teacher_key(replace(config, override)) != key, override
    # what the teacher never sees: the cell's seed, student, label mode, epochs, mix, prune settings
    for override in ({"seed": 3}, {"model.name": "resnet18_small"}, {"label_mode": "hard"},
                     {"schedule.epochs": 300}, {"mix.type": "none"}, {"prune.el2n_epochs": 5},
                     {"teacher.temperature": 4.0}, {"data.ipc": 50}, {"data.method": "el2n"}):
        assert teacher_key(replace(config, override)) == key, override
    # the same images under another name share the key; other images do not
    copy = tmp_path / "copy.parquet"
    shutil.copy(config.data.train, copy)
    assert teacher_key(replace(config, {"data.train": str(copy)})) == key
    other = load_source("fashion-mnist", "train", data_root=data_root).dataset.select(range(100, 200))
    assert teacher_key(replace(config, {"data.train": str(write_parquet(other, tmp_path / "o.parquet"))})) != key
    # each score run has its own seed, hence its own key; the dynamics key names them all
    runs = replace(config, {"prune.score_runs": 3})
    assert len({artifact_key(runs, run) for run in range(3)}) == 3
    assert dynamics_key(runs) != dynamics_key(config)
    assert teacher_path(config).parent.name == key and dynamics_dir(config).name == key


def _fake_teacher(path, meta):
    model = create_student("convnet3_w32", num_classes=10, in_chans=1, img_size=28)
    return save_teacher(model, path, meta)


def test_the_teacher_trains_on_every_core_whatever_the_cells_use(cache_config):
    """A sweep of one-thread cells (two at a time) must not leave its teacher on one core."""
    config = cache_config(**{"train.threads": 1})
    assert teacher_training_config(config).train.threads == 0  # 0: every CPU the process has
    assert teacher_key(config) == teacher_key(cache_config())  # and threads never change its key


def test_a_teacher_file_of_other_settings_or_damaged_fails_in_the_driver(cache_config):
    config = cache_config()
    with pytest.raises(ConfigError, match="none is registered .* teacher --force"):
        resolve_teacher(config)
    other = replace(config, {"teacher.epochs": 2})
    _fake_teacher(teacher_path(config), {"teacher_key": teacher_key(other)})  # copied in from other settings
    with pytest.raises(ConfigError, match="trained with other settings"):
        resolve_teacher(config)
    _fake_teacher(teacher_path(config), {"teacher_key": teacher_key(config)})
    assert resolve_teacher(config) == str(teacher_path(config))
    data = teacher_path(config).read_bytes()
    teacher_path(config).write_bytes(data[: len(data) // 2])  # cut in half
    started = time.perf_counter()
    with pytest.raises(CheckpointError, match=f"{teacher_path(config)} is unreadable.*teacher --force"):
        resolve_teacher(config)
    assert time.perf_counter() - started < 5
    with pytest.raises(ConfigError, match="plain JSON values"):
        _fake_teacher(teacher_path(config), {"bad": object()})


def test_report_refuses_to_average_seeds_with_different_teachers() -> None:
    row = {"protocol": "fmnist-soft", "label_mode": "soft", "model": "convnet3", "method": "random", "ipc": 10,
           "dynamics_key": None}
    df = pd.DataFrame([{**row, "seed": 0, "run_id": "r0", "teacher_key": "convnet3_w32-e3-s0-aaa"},
                       {**row, "seed": 1, "run_id": "r1", "teacher_key": "convnet3_w32-e8-s0-bbb"},
                       {**row, "ipc": 50, "seed": 0, "run_id": "r2", "teacher_key": "convnet3_w32-e8-s0-bbb"}])
    with pytest.raises(OrchestratorError, match=r"different teacher_keys \(run r0 \(seed 0\): convnet3_w32-e3"):
        check_artifact_keys(df)
    check_artifact_keys(df.iloc[1:])  # one key per cell: fine


@pytest.mark.slow
def test_a_teacher_of_other_settings_is_never_picked_up(ray_cluster, cache_config, tmp_path):
    config = cache_config()
    path = train_teacher(config)
    assert path == teacher_path(config) and teacher_meta(path)["teacher_key"] == teacher_key(config)
    assert teacher_meta(path)["recipe"]["schedule.epochs"] == 1
    manifest = verify_manifest(dynamics_dir(config), epochs=1, key=teacher_key(config))
    assert manifest["num_samples"] == 100
    pruning = replace(config, {"label_mode": "hard", "data.method": "el2n"})
    assert missing_runs(config) == [] and missing_runs(pruning) == []
    assert load_scores(pruning, 100)["el2n"].notna().all()

    # another epoch count (say the quick-start's teacher against the protocols'): not found
    longer = replace(config, {"teacher.epochs": 2})
    with pytest.raises(ConfigError, match="none is registered"):
        resolve_teacher(longer)
    longer_pruning = replace(pruning, {"teacher.epochs": 2})
    assert missing_runs(longer) == [0] and missing_runs(longer_pruning) == [0]
    with pytest.raises(DataError, match="no training dynamics"):
        load_scores(longer_pruning, 100)

    # the same settings find it, and every cell records the keys it used
    soft = run_cell(config)
    params = MlflowClient(tracking_uri(config)).get_run(soft.run_id).data
    assert params.params["teacher_key"] == teacher_key(config) and "dynamics_key" not in params.params
    assert params.tags["teacher_path"] == str(path)
    assert params.tags["teacher_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    hard = run_cell(pruning)
    params = MlflowClient(tracking_uri(config)).get_run(hard.run_id).data.params
    assert params["dynamics_key"] == dynamics_key(pruning) and "teacher_key" not in params
    cells = load_cell_runs(tracking_uri(config), config.experiment_name).set_index("run_id")
    assert cells.at[soft.run_id, "teacher_key"] == teacher_key(config)
    assert np.all(cells["dynamics_key"].isna() == (cells["method"] != "el2n"))

    archived_teacher_and_dynamics_spare_a_new_store_their_training(replace(config, {"data.method": "el2n"}),
                                                                   tmp_path)

    # a teacher file cut in half: refused in the driver, before any training, with the fix
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="unreadable.*teacher --force"):
        run_cell(replace(config, {"seed": 1}))
    assert missing_runs(config) == [0]


def archived_teacher_and_dynamics_spare_a_new_store_their_training(config, tmp_path) -> None:
    """`archive export-artifacts` / `import-artifacts` on a store holding a trained teacher and score run."""
    from orchestrator.artifact_archive import export_artifacts, import_artifacts
    from orchestrator.teacher_job import prerequisite_paths

    archive = tmp_path / "artifacts"
    copied = export_artifacts(config.out, archive, prerequisite_paths(config))  # soft el2n: teacher and dynamics
    assert {path.parts[0] for path in copied} == {"teachers", "dynamics"} and copied[-1].name == "manifest.json"
    assert export_artifacts(config.out, archive, prerequisite_paths(config)) == []  # nothing changed since
    fresh = replace(config, {"output_dir": str(tmp_path / "fresh")})
    assert missing_runs(fresh) == [0]
    assert sorted(import_artifacts(archive, fresh.out)) == sorted(copied)
    assert missing_runs(fresh) == []  # a sweep there trains neither the teacher nor the score run
    assert teacher_path(fresh).read_bytes() == teacher_path(config).read_bytes()
    teacher_path(fresh).write_bytes(b"trained here")  # a store's own teacher is never replaced
    assert import_artifacts(archive, fresh.out) == [] and teacher_path(fresh).read_bytes() == b"trained here"
