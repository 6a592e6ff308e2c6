"""Teacher registry: where `orchestrator teacher` saves a trained teacher and how soft cells find it."""

from __future__ import annotations

import re
from pathlib import Path

from orchestrator.config import Config, replace
from orchestrator.errors import ConfigError


def teacher_key(config: Config) -> str:
    """Teachers are registered per training source, storage size and colour mode."""
    source = re.sub(r"[^A-Za-z0-9_.-]+", "_", config.data.train.strip("/"))
    return f"{source}-{config.data.image_size}-{config.data.mode}"


def teacher_path(config: Config) -> Path:
    return config.out / "teachers" / teacher_key(config) / f"{config.teacher.model}.pt"


def resolve_teacher(config: Config) -> str:
    """The teacher spec a soft-label cell loads: a registered file, a given path, or timm:<name>."""
    source = config.teacher.source
    if source.startswith("timm:"):
        return source
    path = teacher_path(config) if source == "auto" else Path(source).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"soft labels need a teacher, and none is registered at {path}. Fix: train one with "
            f"`python -m orchestrator teacher --config <your protocol> ` (same data and output_dir), "
            f"or set teacher.source to a saved teacher file or timm:<pretrained name>")
    return str(path)


def teacher_training_config(config: Config) -> Config:
    """The cell that trains a teacher: the full training set, hard labels, the teacher architecture."""
    return replace(config, {"data.method": "full", "data.ipc": None, "label_mode": "hard",
                            "model.name": config.teacher.model, "schedule.epochs": config.teacher.epochs,
                            "train.batch_size": config.teacher.batch_size, "mix.type": "none",
                            "augment.scale": list(config.teacher.crop_scale),
                            "eval.every": 1, "train.checkpoint_every": 1, "teacher.source": "auto"})


def dynamics_dir(config: Config) -> Path:
    """Per-sample training dynamics recorded by the teacher run (one folder per training set)."""
    return config.out / "dynamics" / teacher_key(config)
