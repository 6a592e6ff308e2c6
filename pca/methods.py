"""Pruning rules and PCA as benchmark methods (docs/protocol.md §Selection, §PCA).

``PRUNE_METHODS`` holds ``forgetting``, ``el2n``, ``aum``, ``ccs`` and ``pca``; the registry
``orchestrator.methods.METHODS`` includes it. Each method reads the per-sample
scores of the full training set, computed from the training dynamics the score runs record under
``orchestrator.teachers.dynamics_dirs(config)``, and keeps exactly IPC images per class:

- forgetting, el2n, aum: the hardest samples (``prune.reverse``: the easiest);
- ccs: coverage-centric selection over ``prune.ccs_score`` (``prune.ccs_scope``), seeded with ``config.seed``;
- pca: see ``pca.pipeline`` (easiest samples of ``prune.pca_rule``, tiled grid x grid).

Scores combine the ``prune.score_runs`` runs of the teacher recipe (``orchestrator.teachers``).
Every run's dynamics are verified against their manifest (epochs, sha256 per file) before any
score is computed (``pca.pruning``, shared with PCA's Prune step). Scores are cached under
``scores/<dynamics key>/`` as ``scores-<hash of the score parameters>.parquet``; the file records the
manifests it was computed from in its parquet metadata and is recomputed when they change.
"""

from __future__ import annotations

import datasets
import numpy as np
import pandas as pd

from orchestrator.config import Config
from orchestrator.data.select import arrow_column, class_id_array, fingerprint
from orchestrator.errors import DataError
from orchestrator.method_spec import MethodSpec, source_spec, with_index
from orchestrator.teachers import dynamics_dirs, dynamics_key
from pca.pipeline import check_pca_config, pca_selection, pca_subset
from pca.pruning import Selection, index_keys, prune_selection, score_column, score_options
from pca.select import easy_first

PRUNING_RULES = ("forgetting", "el2n", "aum", "ccs")


# ---------------------------------------------------------------- selection


def selection_for(config: Config, dataset: datasets.Dataset) -> Selection:
    """The Selection of the configured method (a pruning rule or pca)."""
    if config.data.method == "pca":
        return pca_selection(config, dataset)
    return prune_selection(config, dataset)


def _rule_method(rule: str):
    def method(config: Config, dataset: datasets.Dataset) -> datasets.Dataset:
        return prune_selection(config, dataset, rule).subset

    method.__name__ = f"method_{rule}"
    method.__doc__ = f"Exactly IPC images per class by {rule} scores (hardest first; prune.reverse: easiest)."
    return method


def method_pca(config: Config, dataset: datasets.Dataset) -> datasets.Dataset:
    """PCA: easiest samples by prune.pca_rule, tiled prune.pca_grid^2 per stored image."""
    return pca_subset(config, dataset)


# ---------------------------------------------------------------- manifest


def _rows_of(dataset: datasets.Dataset, keys: np.ndarray) -> np.ndarray:
    """Row positions in `dataset` of the given `index` keys."""
    all_keys = index_keys(dataset)
    if np.array_equal(all_keys, np.arange(all_keys.size)):
        return np.asarray(keys, dtype=np.int64)
    order = np.argsort(all_keys, kind="stable")
    rows = order[np.clip(np.searchsorted(all_keys[order], keys), 0, max(order.size - 1, 0))]
    missing = np.asarray(keys)[all_keys[rows] != keys] if rows.size else np.asarray(keys)
    if missing.size:
        raise DataError(f"sample indices {missing[:5].tolist()} are not in the training set: "
                        f"pass the full training set the subset was chosen from")
    return rows


def subset_manifest(config: Config, indices, scores: pd.DataFrame | None, *,
                    dataset: datasets.Dataset | None = None, subset: datasets.Dataset | None = None,
                    tiles: list[list[int]] | None = None, classes: list[str] | None = None) -> dict:
    """A JSON-ready description of a pruned (or PCA) subset of the full training set.

    indices: `index` keys of the chosen source samples in selection order; scores: the full-set
    score frame. dataset: the full training set (loaded from the config when None); subset: the
    stored set (rebuilt when None), whose fingerprint the manifest records.
    """
    from orchestrator.method_spec import load_train_source

    if dataset is None:
        source = load_train_source(_full_config(config))
        dataset, classes = source.dataset, classes or source.classes
    dataset = with_index(dataset)
    keys = np.asarray(indices, dtype=np.int64)
    rule = config.data.method
    if subset is None:
        subset = selection_for(config, dataset).subset if rule == "pca" else dataset.select(
            _rows_of(dataset, keys).tolist())
    rows = dataset.select(_rows_of(dataset, keys).tolist())
    prune = config.prune
    is_pca = rule == "pca"
    parameters: dict = {**score_options(config), "score_runs": prune.score_runs}
    if rule == "ccs":
        parameters.update(mis_ratio=prune.mis_ratio, strata=prune.strata, ccs_score=prune.ccs_score,
                          ccs_scope=prune.ccs_scope)
    if is_pca:
        parameters.update(pca_grid=prune.pca_grid, pca_rule=prune.pca_rule)
    column = score_column(prune.pca_rule if is_pca else rule, config)
    score_values = None
    if scores is not None and column is not None:
        score_values = [float(v) for v in scores[column].to_numpy(dtype=np.float64)[keys]]
    sample_ids = arrow_column(rows, "sample_id").to_pylist()
    id_of = dict(zip(keys.tolist(), sample_ids))
    manifest = {
        "kind": "rethinkdc-subset",
        "version": 1,
        "source": {"spec": source_spec(_full_config(config)), "split": config.data.train_split,
                   "image_size": config.data.image_size, "mode": config.data.mode,
                   "classes": classes, "num_samples": len(dataset)},
        "rule": rule,
        "ipc": config.data.ipc,
        "reverse": easy_first(prune.pca_rule) if is_pca else prune.reverse,
        "seed": config.seed,
        "parameters": parameters,
        "pca_grid": prune.pca_grid if is_pca else None,
        "dynamics_key": dynamics_key(config),
        "dynamics": [str(d) for d in dynamics_dirs(config)],
        "num_images": len(subset),
        "source_ids": sample_ids,
        "source_indices": keys.tolist(),
        "class_ids": class_id_array(rows).tolist(),
        "scores": {"column": column, "values": score_values},
        "fingerprint": fingerprint(subset),
    }
    if tiles is not None:
        manifest["tiles"] = [[id_of[int(k)] for k in members] for members in tiles]
    return manifest


def _full_config(config: Config) -> Config:
    """The config whose training source is the full training set (what the dynamics cover)."""
    from orchestrator.config import replace

    if config.data.method == "full":
        return config
    return replace(config, {"data.method": "full", "data.ipc": None})


def pca_tiles(config: Config) -> int:
    """The tiles the loop's crops stay inside: none without the Augment step (pca_views "whole")."""
    return 1 if config.prune.pca_views == "whole" else config.prune.pca_grid


def check_pca(config: Config) -> None:
    check_pca_config(config)


# What pca/ contributes to the registry (orchestrator.methods.METHODS).
PRUNE_METHODS = {
    **{rule: MethodSpec(_rule_method(rule), needs_dynamics=True, reversible=True) for rule in PRUNING_RULES},
    "pca": MethodSpec(method_pca, needs_dynamics=True, tile_grid=pca_tiles, check=check_pca),
}
