"""`orchestrator teacher`: train a teacher on the full training set and register it for soft cells.

The teacher run also records per-sample training dynamics (the pruning rules' input), so one run on
the full set serves both the soft-label cells and the pruning methods.
"""

from __future__ import annotations

from pathlib import Path

import torch

from orchestrator import tracking
from orchestrator.cell import prepare_data, run_cell
from orchestrator.config import Config
from orchestrator.teachers import dynamics_dir, teacher_path, teacher_training_config


def train_teacher(config: Config, *, force: bool = False) -> Path:
    from trainers.loop import STATE_FILE

    teacher_config = teacher_training_config(config)
    result = run_cell(teacher_config, force=force, role="teacher", dynamics_dir=dynamics_dir(config))
    if result.checkpoint_dir is None:
        raise RuntimeError(f"teacher cell {result.name} has no checkpoint to register; rerun with --force")
    state = torch.load(result.checkpoint_dir / STATE_FILE, map_location="cpu", weights_only=False)
    data = prepare_data(teacher_config)
    path = teacher_path(config)
    model_kwargs = {"num_classes": data.num_classes, "in_chans": config.in_chans,
                    "img_size": config.model.input_size}
    save_teacher_state(path, config.teacher.model, model_kwargs, state["model"],
                       {"top1": result.summary["top1_final"], "run_id": result.run_id,
                        "fingerprint": result.fingerprint, "classes": data.classes})
    tracking.set_tags(tracking.tracking_uri(config), result.run_id, {"teacher_path": str(path)})
    return path


def save_teacher_state(path: Path, model_name: str, model_kwargs: dict, state_dict: dict, meta: dict) -> None:
    from trainers.models import create_student, save_teacher

    model = create_student(model_name, **model_kwargs)
    model.load_state_dict(state_dict)
    save_teacher(model, path, meta)


def needs_dynamics(config: Config) -> bool:
    try:
        from pca.methods import needs_dynamics as method_needs_dynamics
    except ImportError:
        return False
    return method_needs_dynamics(config)


def ensure_prerequisites(config: Config) -> None:
    """Train the teacher (with dynamics) when a soft cell or a pruning method needs it and it is missing."""
    wants_teacher = config.label_mode == "soft" and config.teacher.source == "auto"
    missing_teacher = wants_teacher and not teacher_path(config).is_file()
    missing_dynamics = needs_dynamics(config) and not any(dynamics_dir(config).glob("rank-*/epoch-*.parquet"))
    if missing_teacher or missing_dynamics:
        print(f"training the teacher on the full training set first ({teacher_path(config)})", flush=True)
        train_teacher(config, force=missing_dynamics and not missing_teacher)
