"""What the driver hands a cell's training loop: `LoopInputs`, built only by `orchestrator/cell.py`.

It travels through Ray Train's `train_loop_config`, which holds plain values and Ray object refs:
`to_loop_config` lays the fields out as such a dict (the config as its plain dict) and
`from_loop_config` rebuilds the typed, validated inputs on the worker. It lives on the worker side
so that trainers/ never imports the driver.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from orchestrator.config import Config, config_from_dict, to_dict


@dataclass(frozen=True)
class LoopInputs:
    """The resolved config plus the facts the driver computed for one cell."""

    config: Config
    num_classes: int
    teacher: str | None = None  # the teacher file of a soft-label cell
    mlflow_uri: str | None = None  # where rank 0 logs the epochs (None: not logged)
    run_id: str | None = None
    cell: str = "cell"  # the cell's name, shown on progress lines
    dynamics_dir: str | None = None  # where to write per-sample training dynamics (None: not recorded)
    train_arrays: Any = None  # decoded training set: a dict in process, an object ref for workers; None streams
    val_arrays: Any = None  # decoded validation views, likewise
    local_run_dir: str | None = None  # set when the loop runs in the driver's process (Ray Train local mode)
    local_datasets: dict | None = None  # the driver's Ray Datasets for an in-process loop
    tune_report: bool = False  # inside a Tune trial: each epoch's report goes to Tune
    use_gpu: bool = False
    tile_grid: int = 1  # each stored image is tile_grid x tile_grid source images (the method says)
    speed_dir: str | None = None  # the calibration cache of "auto" speed settings
    label_ratio: float = 1.0  # the fraction of the soft-label pool a soft cell keeps

    def to_loop_config(self) -> dict:
        """The fields as Ray Train's `train_loop_config`: plain values, object refs and Ray Datasets."""
        plain = {f.name: getattr(self, f.name) for f in fields(self)}
        return {**plain, "config": to_dict(self.config)}

    @classmethod
    def from_loop_config(cls, loop_config: dict) -> LoopInputs:
        return cls(**{**loop_config, "config": config_from_dict(loop_config["config"])})
