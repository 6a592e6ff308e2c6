"""The report's picture of the sets themselves: a few images per class of each method's set, read
from the ``set_preview.parquet`` artifact every cell logs (orchestrator/cell.py), drawn as one PNG
grid per IPC (:func:`orchestrator.report.plots.image_grid`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from orchestrator.data.images import decode_cell
from orchestrator.report.plots import image_grid
from orchestrator.report.runs import HARD, client, method_order
from orchestrator.tracking import PREVIEW_ARTIFACT

log = logging.getLogger(__name__)

PER_CLASS = 4


def decode_preview(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images NHW or NHWC, class ids) of a preview file."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    images = [np.asarray(decode_cell(cell)) for cell in table.column("image").to_pylist()]
    return np.stack(images), table.column("class_id").to_numpy(zero_copy_only=False)


def preview_runs(df: pd.DataFrame, ipc: int) -> dict[str, str]:
    """{method: run id} at one IPC: each method's lowest seed, its hard-label cell first (same set)."""
    rows = df[df["ipc"] == ipc].assign(soft=lambda d: d["label_mode"] != HARD)
    rows = rows.sort_values(["soft", "seed"], kind="mergesort").drop_duplicates("method")
    picked = dict(zip(rows["method"], rows["run_id"]))
    return {method: picked[method] for method in method_order(picked)}


def load_previews(tracking_uri: str, runs: dict[str, str], tmp: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Download and decode each run's preview; runs logged before previews existed are skipped."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per tiny file otherwise
    mlflow_client, sets = client(tracking_uri), {}
    for method, run_id in runs.items():
        try:
            local = mlflow_client.download_artifacts(run_id, PREVIEW_ARTIFACT, str(tmp))
        except Exception as error:  # an older run without the artifact: the grid just lacks it
            log.info("no %s for %s (run %s): %s", PREVIEW_ARTIFACT, method, run_id, error)
            continue
        sets[method] = decode_preview(Path(local))
    return sets


def write_set_grids(tracking_uri: str, df: pd.DataFrame, out_dir: Path) -> dict[str, Path]:
    """``sets_ipc<N>.png`` for each IPC with previews: rows are classes, a panel per method."""
    import tempfile

    paths = {}
    for ipc in sorted(int(v) for v in df["ipc"].dropna().unique()):
        with tempfile.TemporaryDirectory() as tmp:
            sets = load_previews(tracking_uri, preview_runs(df, ipc), Path(tmp))
        if sets:
            name = f"sets_ipc{ipc}.png"
            paths[name] = image_grid(sets, min(PER_CLASS, ipc), out_dir / name)
    return paths
