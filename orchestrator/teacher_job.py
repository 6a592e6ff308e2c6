"""`orchestrator teacher`: train the teacher and the score runs on the full training set.

Score run r trains the teacher recipe with seed teacher.seed + r and records per-sample training
dynamics (the pruning rules' input); run 0 is also registered as the teacher of soft cells. Each
run's dynamics are sealed with a manifest (epochs, rows, sha256 per file) once the run finishes.
Everything is stored under its artifact key (`orchestrator.teachers`), so a teacher or dynamics
trained with other settings is never reused (docs/protocol.md §Teachers and caches).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from orchestrator import tracking
from orchestrator.cell import CellResult, prepare_data, run_cell
from orchestrator.config import Config
from orchestrator.errors import CheckpointError, ConfigError, DataError
from orchestrator.methods import method_for, needs_dynamics
from orchestrator.teachers import artifact_key, artifact_recipe, dynamics_dir, resolve_teacher, teacher_path, \
    teacher_training_config
from trainers.dynamics import verify_manifest, write_manifest


def train_teacher(config: Config, *, force: bool = False) -> Path:
    """Train (or find) every score run, register run 0 as the teacher; return the teacher file."""
    for run in range(config.prune.score_runs):
        train_score_run(config, run, force=force)
    return teacher_path(config)


def train_score_run(config: Config, run: int, *, force: bool = False, parent_run_id: str | None = None) -> None:
    """Score run `run`: train it (or find it finished), seal its dynamics, register run 0 as the teacher.

    A finished run whose dynamics are gone or damaged is trained again from scratch. parent_run_id:
    the sweep that needed it (its MLflow run is nested there).
    """
    run_config = teacher_training_config(config, run)
    out = dynamics_dir(config, run)
    if force:
        shutil.rmtree(out, ignore_errors=True)
    result = run_cell(run_config, force=force, role="teacher" if run == 0 else "score_run", dynamics_dir=out,
                      parent_run_id=parent_run_id)
    if result.skipped and not dynamics_ready(config, run):
        print(f"score run {run}: finished, but its dynamics at {out} are incomplete; training it again", flush=True)
        return train_score_run(config, run, force=True, parent_run_id=parent_run_id)
    data = prepare_data(run_config)
    if not result.skipped:
        write_manifest(out, epochs=config.teacher.epochs, num_samples=data.train.num_rows,
                       key=artifact_key(config, run))
    if run == 0:
        register_teacher(config, result, data)


def register_teacher(config: Config, result: CellResult, data) -> Path:
    """Save run 0's weights as the teacher file (tensors + JSON-able meta holding its key and recipe)."""
    from trainers.loop import STATE_FILE
    from trainers.models import load_weights_only

    if result.checkpoint_dir is None:
        raise RuntimeError(f"teacher cell {result.name} has no checkpoint to register; rerun with --force")
    state = load_weights_only(result.checkpoint_dir / STATE_FILE, what="the teacher run's checkpoint",
                              fix="rerun `python -m orchestrator teacher --force` to train the teacher again")
    path = teacher_path(config)
    model_kwargs = {"num_classes": data.num_classes, "in_chans": config.in_chans,
                    "img_size": config.model.input_size}
    save_teacher_state(path, config.teacher.model, model_kwargs, state["model"],
                       {"top1": result.summary["top1_final"], "run_id": result.run_id,
                        "fingerprint": result.fingerprint, "classes": data.classes,
                        "teacher_key": artifact_key(config, 0), "recipe": artifact_recipe(config, 0)})
    tracking.set_tags(tracking.tracking_uri(config), result.run_id, {"teacher_path": str(path)})
    return path


def save_teacher_state(path: Path, model_name: str, model_kwargs: dict, state_dict: dict, meta: dict) -> None:
    from trainers.models import create_student, save_teacher

    model = create_student(model_name, **model_kwargs)
    model.load_state_dict(state_dict)
    save_teacher(model, path, meta)


def dynamics_ready(config: Config, run: int) -> bool:
    try:
        verify_manifest(dynamics_dir(config, run), epochs=config.teacher.epochs, key=artifact_key(config, run))
    except DataError:
        return False
    return True


def teacher_ready(config: Config) -> bool:
    try:
        resolve_teacher(config)
    except (ConfigError, CheckpointError):  # missing, of other settings, damaged or not ours: train it again
        return False
    return True


def missing_runs(config: Config) -> list[int]:
    """The score runs a cell of `config` needs and that are missing or damaged."""
    runs = range(config.prune.score_runs) if needs_dynamics(config) else range(0)
    missing = [run for run in runs if not dynamics_ready(config, run)]
    wants_teacher = config.label_mode == "soft" and config.teacher.source == "auto"
    if wants_teacher and 0 not in missing and not teacher_ready(config):
        missing.insert(0, 0)
    return missing


def prerequisite_paths(config: Config) -> list[Path]:
    """Where what `ensure_prerequisites` trains for a cell lies: the score runs' dynamics folders (a
    pruning method), the teacher file (soft labels), its method's teachers' files (distillation)."""
    paths = [dynamics_dir(config, run) for run in range(config.prune.score_runs)] if needs_dynamics(config) else []
    if config.label_mode == "soft" and config.teacher.source == "auto":
        paths.append(teacher_path(config))
    return paths + [teacher_path(teacher) for teacher in method_for(config).teachers(config)]


def ensure_prerequisites(config: Config, parent_run_id: str | None = None) -> None:
    """Train the teacher and score runs a soft cell or a pruning method needs, when missing, and
    the extra teachers the cell's method makes its set with (a distillation teacher); their runs are
    nested under `parent_run_id` (a sweep's run) when given."""
    for run in missing_runs(config):
        what = "the teacher (score run 0)" if run == 0 else f"score run {run}"
        print(f"training {what} on the full training set first ({dynamics_dir(config, run)})", flush=True)
        train_score_run(config, run, parent_run_id=parent_run_id)
    for teacher_config in method_for(config).teachers(config):
        if not teacher_ready(teacher_config):
            print(f"training the teacher {teacher_config.teacher.model} its set is made with first", flush=True)
            train_score_run(teacher_config, 0, parent_run_id=parent_run_id)
