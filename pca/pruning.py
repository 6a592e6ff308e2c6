"""Pruning by scores (docs/protocol.md §Pruning scores, §Selection): what every pruning method and PCA's
Prune step share.

Owns the per-sample score frame of the full training set (verified against the dynamics' manifests,
cached under ``scores/<dynamics key>/``), the rows a rule keeps (``select_rows``) and the ``Selection``
a method returns (the set, the chosen source keys, the scores). ``pca.pipeline`` (PCA) and
``pca.methods`` (the methods and their manifests) both import it; it imports neither.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from orchestrator.config import Config
from orchestrator.data.select import arrow_column, class_id_array
from orchestrator.errors import DataError
from orchestrator.files import atomic_path
from orchestrator.method_spec import require_ipc, with_index
from orchestrator.teachers import artifact_key, dynamics_dirs, dynamics_key
from pca.scores import SCORE_COLUMNS, compute_scores
from pca.select import RULES, select
from trainers.dynamics import RERECORD_HINT, verify_manifest

EL2N_REDUCE = "mean"
SCORES_VERSION = 2
_DYNAMICS_KEY = b"rethinkdc.dynamics"


@dataclass(frozen=True)
class Selection:
    """A method's output plus what the manifest needs."""

    subset: datasets.Dataset  # the set in the benchmark schema, with its `index` column
    indices: np.ndarray  # `index` keys of the chosen source samples, in selection order
    scores: pd.DataFrame  # scores of the full training set (compute_scores' frame)
    tiles: list[list[int]] | None = None  # pca: `index` keys of each stored image's tiles


# ---------------------------------------------------------------- scores (cached)


def verified_dynamics(config: Config) -> list[dict]:
    """The manifest of every score run, each verified (epochs, key, sha256 of every epoch file)."""
    manifests = []
    for run, dyn_dir in enumerate(dynamics_dirs(config)):
        if not dyn_dir.is_dir():
            raise DataError(f"no training dynamics at {dyn_dir} (score run {run} of {config.prune.score_runs}; "
                            f"pruning scores are computed from them): {RERECORD_HINT}; sweeps do this automatically")
        manifests.append(verify_manifest(dyn_dir, epochs=config.teacher.epochs, key=artifact_key(config, run)))
    return manifests


def score_options(config: Config) -> dict:
    """The parameters of pca.scores.compute_scores that the config sets."""
    return {"el2n_epochs": config.prune.el2n_epochs, "el2n_reduce": EL2N_REDUCE,
            "aum_margin": config.prune.aum_margin}


def scores_cache_path(config: Config, num_samples: int) -> Path:
    params = {"num_samples": int(num_samples), **score_options(config), "version": SCORES_VERSION}
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    return config.out / "scores" / dynamics_key(config) / f"scores-{digest}.parquet"


def _read_cache(path: Path, signature: str, num_samples: int) -> pd.DataFrame | None:
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException):
        return None
    meta = table.schema.metadata or {}
    if meta.get(_DYNAMICS_KEY) != signature.encode():
        return None
    frame = table.to_pandas()
    if len(frame) != num_samples or any(c not in frame.columns for c in SCORE_COLUMNS):
        return None
    frame.index = pd.RangeIndex(num_samples, name="index")
    return frame


def _write_cache(path: Path, frame: pd.DataFrame, signature: str) -> None:
    table = pa.Table.from_pandas(frame.reset_index(drop=True), preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), _DYNAMICS_KEY: signature.encode()})
    try:
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)
    except OSError:  # a read-only output folder: the scores are still returned, just not cached
        pass


def load_scores(config: Config, num_samples: int) -> pd.DataFrame:
    """Scores of the full training set (indexed 0..num_samples-1), from the cache or the verified dynamics."""
    manifests = verified_dynamics(config)
    signature = json.dumps(manifests, sort_keys=True)
    path = scores_cache_path(config, num_samples)
    cached = _read_cache(path, signature, num_samples) if path.is_file() else None
    if cached is not None:
        return cached
    epochs = list(range(config.teacher.epochs))
    frame = compute_scores(dynamics_dirs(config), num_samples, epochs=epochs, **score_options(config))
    _write_cache(path, frame, signature)
    return frame


# ---------------------------------------------------------------- selection


def index_keys(dataset: datasets.Dataset) -> np.ndarray:
    return arrow_column(dataset, "index").to_numpy().astype(np.int64, copy=False)


def score_column(rule: str, config: Config) -> str | None:
    """The score column a rule ranks by (ccs: its base rule's)."""
    spec = RULES[config.prune.ccs_score] if rule == "ccs" else RULES.get(rule)
    return spec.score_column if spec is not None else None


def select_rows(config: Config, dataset: datasets.Dataset, *, rule: str, ipc: int,
                reverse: bool) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """(row positions chosen in `dataset`, the dataset's `index` keys, full-set scores).

    Positions are ordered by class, then by rank (hardest first, or easiest with reverse).
    """
    keys = index_keys(dataset)
    if keys.size == 0:
        raise DataError("the training set is empty: point data.train at a non-empty split")
    frame = load_scores(config, int(keys.max()) + 1)
    rows = frame.iloc[keys].reset_index(drop=True)
    prune = config.prune
    positions = select(rule, labels=class_id_array(dataset), scores=rows, ipc=ipc, reverse=reverse,
                       seed=config.seed, mis_ratio=prune.mis_ratio, strata=prune.strata,
                       ccs_score=prune.ccs_score, ccs_scope=prune.ccs_scope)
    return positions, keys, frame


def prune_selection(config: Config, dataset: datasets.Dataset, rule: str | None = None) -> Selection:
    """Exactly IPC per class by a pruning rule (config.data.method unless given)."""
    rule = rule or config.data.method
    dataset = with_index(dataset)
    positions, keys, frame = select_rows(config, dataset, rule=rule, ipc=require_ipc(config),
                                         reverse=config.prune.reverse)
    return Selection(dataset.select(positions.tolist()), keys[positions], frame)
