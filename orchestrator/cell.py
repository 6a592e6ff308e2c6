"""Run one benchmark cell: compressed set -> Ray Data -> Ray Train -> evaluation -> MLflow run.

`run_cell` is the one function that `run`, every Tune trial, the teacher and the tests call. A cell
is identified by its name (method, IPC, label mode, model, seed and a hash of every setting that can
change the result); a finished cell is not trained again, an unfinished one resumes from its last
Ray Train checkpoint and keeps its MLflow run.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from orchestrator import tracking
from orchestrator.config import Config, cell_name
from orchestrator.data.pipeline import (train_dataset, train_decodes_here, training_arrays, val_dataset,
                                         val_decodes_here, validation_arrays)
from orchestrator.data.select import preview_rows
from orchestrator.data.sources import check_class_sets
from orchestrator.errors import ConfigError, OrchestratorError, disk_full_cause, disk_full_error, original_error
from orchestrator.locks import one_process_per_cell
from orchestrator.provenance import COMMIT_TAG, code_commit
from orchestrator.method_spec import load_train_source, load_val_source
from orchestrator.methods import (PreparedSet, build_training_set, build_val_set, generation_cost, method_label,
                                  needs_dynamics, soft_label_bytes, soft_label_ratio, tile_grid)
from orchestrator.runtime import init_ray, use_gpu
from orchestrator.teachers import record_artifact_keys, resolve_teacher
from orchestrator.waiting import controller_failure_limit, say_what_it_waits_for
from trainers import metric_names as names
from trainers.loop_inputs import LoopInputs
from trainers.reporting import latest_checkpoint


@dataclass
class CellResult:
    name: str
    run_id: str
    summary: dict
    fingerprint: str
    checkpoint_dir: Path | None = None
    skipped: bool = False


@dataclass(frozen=True)
class CellData:
    train: PreparedSet
    val: PreparedSet
    classes: list[str] | None
    num_classes: int


def prepare_data(config: Config) -> CellData:
    """Load sources, check the class sets, and write the compressed and validation splits."""
    train_source, val_source = load_train_source(config), load_val_source(config)
    classes = check_class_sets(train_source, val_source)
    num_classes = len(classes) if classes else max(train_source.num_classes, val_source.num_classes)
    return CellData(build_training_set(config, train_source), build_val_set(config, val_source),
                    classes, num_classes)


@one_process_per_cell
def run_cell(config: Config, *, parent_run_id: str | None = None, force: bool = False,
             role: str = "cell", dynamics_dir: Path | None = None, tune_report: bool = False) -> CellResult:
    name = cell_name(config)
    uri = tracking.tracking_uri(config)
    experiment_id = tracking.ensure_experiment(uri, config.experiment_name, config.out)
    previous = tracking.find_run(uri, experiment_id, cell=name, role=role)
    storage = config.out / "ray_results"
    if previous is None and not force:  # the same cell finished in another experiment: its run, copied
        previous = copy_finished_elsewhere(uri, experiment_id, name, role, parent_run_id)
    if previous is not None and previous.info.status == "FINISHED" and not force:  # its set is not built again
        print(f"[{name}] already finished: MLflow run {previous.info.run_id}", flush=True)
        return CellResult(name, previous.info.run_id, finished_summary(previous),
                          previous.data.tags.get("fingerprint", ""), latest_checkpoint(storage / name), skipped=True)
    data = prepare_data(config)
    check_batch_split(config, data.train.num_rows)
    teacher = resolve_teacher(config) if config.label_mode == "soft" else None  # checked before any run starts
    if previous is None or previous.info.status == "FINISHED" or force:
        shutil.rmtree(storage / name, ignore_errors=True)  # a forced rerun starts from scratch
        if previous is not None and previous.info.status == "RUNNING":  # left by a killed attempt
            tracking.terminate(uri, previous.info.run_id, "KILLED")
        run_id = tracking.start_run(uri, experiment_id, config, cell=name, method_label=method_label(config),
                                    role=role, parent_run_id=parent_run_id,
                                    tags={"fingerprint": data.train.fingerprint})
        tracking.log_training_set(uri, run_id, name=set_name(config), fingerprint=data.train.fingerprint,
                                  source=str(data.train.path), images=data.train.num_rows,
                                  image_bytes=data.train.image_bytes)
    else:
        run_id = previous.info.run_id
        print(f"[{name}] resuming MLflow run {run_id}", flush=True)
    tracking.set_tags(uri, run_id, {"fingerprint": data.train.fingerprint, "status_note": "training",
                                    COMMIT_TAG: code_commit()})
    record_artifact_keys(uri, run_id, config, teacher, needs_dynamics(config))  # teacher_key / dynamics_key params
    try:
        summary, checkpoint_dir = fit(config, data, name, storage, uri, run_id, teacher, dynamics_dir,
                                      tune_report)
    except BaseException as exc:
        full = disk_full_cause(exc)
        mark_failed(uri, run_id, disk_full=full is not None)
        if full is None:
            raise
        raise disk_full_error(full, config.out) from exc
    finish(config, data, uri, run_id, summary)
    print(f"[{name}] top-1 final {summary['top1_final']:.2f}  best {summary['top1_best']:.2f}  "
          f"MLflow: {tracking.run_url(uri, experiment_id, run_id)}", flush=True)
    return CellResult(name, run_id, summary, data.train.fingerprint, checkpoint_dir)


def fit(config: Config, data: CellData, name: str, storage: Path, uri: str, run_id: str,
        teacher: str | None, dynamics_dir: Path | None, tune_report: bool = False) -> tuple[dict, Path]:
    """Build the TorchTrainer (same name + storage path => resume) and run it."""
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from trainers.loop import train_loop_per_worker

    in_process = config.train.workers == 0  # Ray Train local mode: the loop runs here (trainers/reporting.py)
    if not (in_process and held_in_process(config, data)) or os.environ.get("RAY_ADDRESS"):
        init_ray()  # joined when an address is given; started only for workers or sets Ray Data decodes
    train_arrays, val_arrays, datasets = cell_inputs(config, data)
    gpu = use_gpu(config.train.use_gpu)
    resources = {"CPU": config.train.cpus_per_worker, **({"GPU": 1} if gpu else {})}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=LoopInputs(
            config, data.num_classes, teacher=teacher, mlflow_uri=uri, run_id=run_id, cell=name,
            dynamics_dir=str(dynamics_dir) if dynamics_dir else None,
            train_arrays=hand_over(train_arrays, in_process), val_arrays=hand_over(val_arrays, in_process),
            local_run_dir=str(storage / name) if in_process else None,
            local_datasets=datasets if in_process else None, tune_report=tune_report, use_gpu=gpu,
            tile_grid=tile_grid(config), speed_dir=str(config.data_root / "speed"),
            label_ratio=soft_label_ratio(config)).to_loop_config(),
        scaling_config=ScalingConfig(num_workers=config.train.workers, use_gpu=gpu,
                                     resources_per_worker=None if in_process else resources),
        run_config=RunConfig(name=name, storage_path=str(storage),
                             checkpoint_config=CheckpointConfig(num_to_keep=config.train.keep_checkpoints),
                             # controller failures: its workers' resources not granted in time (waiting.py)
                             failure_config=FailureConfig(max_failures=0,
                                                          controller_failure_limit=controller_failure_limit()),
                             callbacks=tune_callbacks() if tune_report and not in_process else None),
        datasets=None if in_process else datasets or None,
        dataset_config=DataConfig(datasets_to_split=["train"] if "train" in datasets else []),
    )
    started = time.perf_counter()
    try:
        with nullcontext() if in_process else say_what_it_waits_for():  # workers may wait for CPUs others hold
            result = trainer.fit()
    except Exception as exc:
        cause = raised_by_the_loop(exc)
        if cause is exc:
            raise
        raise cause from exc
    summary, checkpoint_dir = final_summary(result, storage / name, in_process)
    # A resumed cell's wall time also counts its earlier attempts (up to the checkpoint it resumed from).
    summary["wall_seconds"] = time.perf_counter() - started + summary.get("prior_wall_seconds", 0.0)
    return summary, checkpoint_dir


def copy_finished_elsewhere(uri: str, experiment_id: str, name: str, role: str, parent_run_id: str | None):
    """This cell's finished run from another experiment of the store, copied into this one; None if none."""
    from orchestrator.archive import copy_run

    found = tracking.find_finished_anywhere(uri, cell=name, role=role)
    if found is None:
        return None
    print(f"[{name}] finished in experiment {found.info.experiment_id}: its run is copied, not trained again",
          flush=True)
    return tracking.get_run(uri, copy_run(uri, found, experiment_id, parent_run_id))


def raised_by_the_loop(error: Exception) -> Exception:
    """The project error the training loop raised (TrainingDiverged, CheckpointError, ...) out of Ray
    Train's wrappers (a worker group's WorkerGroupError), so it reaches the CLI as one line; any other
    error as it came."""
    cause = original_error(error)
    return cause if isinstance(cause, OrchestratorError) else error


def mark_failed(uri: str, run_id: str, *, disk_full: bool) -> None:
    """End the cell's MLflow run FAILED. When the disk is full the store may refuse that too: the full
    disk is the error to report then (the run stays RUNNING until the cell is rerun)."""
    if not disk_full:
        tracking.terminate(uri, run_id, "FAILED")
        return
    store_log = logging.getLogger("mlflow.store.db.utils")  # logs each failed write with a traceback
    level = store_log.level
    store_log.setLevel(logging.CRITICAL)
    try:
        tracking.terminate(uri, run_id, "FAILED")
    except Exception:  # noqa: BLE001 - the disk error is raised by the caller
        pass
    finally:
        store_log.setLevel(level)


def hand_over(arrays: dict | None, in_process: bool):
    """Decoded arrays for the loop: as they are to a loop in this process, via the object store to workers."""
    import ray

    return ray.put(arrays) if arrays is not None and not in_process else arrays


def final_summary(result, run_dir: Path, in_process: bool) -> tuple[dict, Path]:
    """The summary stored with the run's last checkpoint (Ray Train's, or the in-process loop's own)."""
    from trainers.loop import SUMMARY_FILE

    if in_process:
        directory = latest_checkpoint(run_dir)
    elif result.checkpoint is not None:
        with result.checkpoint.as_directory() as path:
            directory = Path(path)
    else:
        directory = None
    if directory is None:
        raise RuntimeError(f"cell {run_dir.name} finished without a checkpoint; see the Ray logs in {run_dir}")
    return json.loads((directory / SUMMARY_FILE).read_text()), directory


def held_in_process(config: Config, data: CellData) -> bool:
    """Both splits decode in this process and fit in memory: a one-process cell then needs no Ray
    cluster (Ray Train's local mode runs without one), and a laptop run skips starting one (~5-9 s)."""
    return (train_decodes_here(data.train.num_rows, image_size=config.data.image_size, mode=config.data.mode)
            and val_decodes_here(data.val.num_rows, resize=config.eval.resize, crop=config.eval.crop,
                                 mode=config.data.mode))


def cell_inputs(config: Config, data: CellData) -> tuple[dict | None, dict | None, dict]:
    """(train arrays, validation arrays, Ray Datasets): what fits in memory is handed to the workers
    decoded (the validation views from their on-disk cache); only what does not streams by Ray Data."""
    train_arrays = training_arrays(data.train.path, mode=config.data.mode, num_rows=data.train.num_rows,
                                   image_size=config.data.image_size)
    val_arrays = validation_arrays(data.val.path, mode=config.data.mode, num_rows=data.val.num_rows,
                                   resize=config.eval.resize, crop=config.eval.crop, mean=config.data.mean,
                                   std=config.data.std)
    datasets = {}
    if train_arrays is None:
        datasets["train"] = train_dataset(data.train.path, mode=config.data.mode, num_rows=data.train.num_rows,
                                          image_size=config.data.image_size)
    if val_arrays is None:
        datasets["val"] = val_dataset(data.val.path, mode=config.data.mode, num_rows=data.val.num_rows,
                                      resize=config.eval.resize, crop=config.eval.crop, mean=config.data.mean,
                                      std=config.data.std)
    return train_arrays, val_arrays, datasets


def check_batch_split(config: Config, num_rows: int) -> None:
    """Every worker and micro-batch needs a view each step (docs/protocol.md §Batch and shuffle)."""
    needed = max(1, config.train.workers) * config.train.grad_accum
    if num_rows < needed:
        raise ConfigError(f"the training set has {num_rows} images, fewer than train.workers x train.grad_accum "
                          f"= {needed}: use fewer workers or less accumulation")


def tune_callbacks() -> list:
    """Inside a Tune trial: forward every epoch's report to Tune (ASHA needs them)."""
    from ray.tune.integration.ray_train import TuneReportCallback

    return [TuneReportCallback()]


def finish(config: Config, data: CellData, uri: str, run_id: str, summary: dict) -> None:
    """Final metrics, storage and generation figures, artifacts (resolved YAML, per-class accuracy)."""
    soft_bytes = soft_label_bytes(config, data.train.num_rows, data.num_classes)
    tracking.log_metrics(uri, run_id, {
        names.VAL_TOP1_FINAL: summary["top1_final"], names.VAL_TOP5_FINAL: summary["top5_final"],
        names.VAL_TOP1_BEST: summary["top1_best"], names.VAL_TOP5_BEST: summary["top5_best"],
        names.VAL_BEST_EPOCH: summary["best_epoch"], names.TIME_TRAIN_S: summary["train_seconds"],
        names.TIME_WALL_S: summary["wall_seconds"], names.THROUGHPUT_IMAGES_PER_S: summary["images_per_s"],
        names.STORAGE_IMAGE_BYTES: data.train.image_bytes, names.STORAGE_SOFT_LABEL_BYTES: soft_bytes,
        names.DATA_NUM_IMAGES: data.train.num_rows, **generation_cost(config)}, step=summary["epochs_done"])
    tracking.log_config_artifact(uri, run_id, config)
    tracking.log_text_artifacts(uri, run_id, {"per_class_accuracy.csv": per_class_csv(data, summary),
                                              "summary.json": json.dumps(summary, indent=2)})
    tracking.log_table_artifact(uri, run_id, tracking.PREVIEW_ARTIFACT, preview_rows(data.train.path))
    tracking.set_tags(uri, run_id, {"status_note": "finished", **resolved_speed_tags(summary)})
    tracking.terminate(uri, run_id, "FINISHED")


def set_name(config: Config) -> str:
    """The training set as the runs table's Dataset column names it: method-IPC (e.g. pca (prune only)-ipc10)."""
    return f"{method_label(config)}-ipc{'all' if config.data.ipc is None else config.data.ipc}"


def resolved_speed_tags(summary: dict) -> dict[str, str]:
    """The precision, layout and compilation the loop resolved ("auto" settings), as `resolved.*` tags."""
    return {f"resolved.{name}": str(value) for name, value in (summary.get("speed") or {}).items()}


def per_class_csv(data: CellData, summary: dict) -> str:
    names = data.classes or [str(i) for i in range(data.num_classes)]
    rows = ["class_id,class_name,top1_final,top1_best"]
    final, best = summary.get("per_class_final") or [], summary.get("per_class_best") or []
    for index, name in enumerate(names):
        f = final[index] if index < len(final) else ""
        b = best[index] if index < len(best) else ""
        rows.append(f'{index},"{name}",{f},{b}')
    return "\n".join(rows) + "\n"


def finished_summary(run) -> dict:
    metrics = run.data.metrics
    return {"top1_final": metrics.get(names.VAL_TOP1_FINAL), "top1_best": metrics.get(names.VAL_TOP1_BEST),
            "top5_final": metrics.get(names.VAL_TOP5_FINAL), "top5_best": metrics.get(names.VAL_TOP5_BEST),
            "train_seconds": metrics.get(names.TIME_TRAIN_S),
            "images_per_s": metrics.get(names.THROUGHPUT_IMAGES_PER_S)}
