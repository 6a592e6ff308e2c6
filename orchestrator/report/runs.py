"""Loading: the FINISHED cell runs of one experiment as one DataFrame row per run, and the names,
metric keys and units every other report module relies on.

Runs come from :func:`mlflow.search_runs` (``output_format="pandas"``); this module renames its
``params.*`` / ``tags.*`` / ``metrics.*`` columns into :data:`CELL_COLUMNS`, collapses reruns of one
cell and groups the rows. Values are taken in the unit they were logged in (:data:`METRICS`);
nothing is rescaled.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from orchestrator.errors import OrchestratorError
from trainers import metric_names as names

log = logging.getLogger(__name__)

RANDOM = "random"  # IOR reference method
FULL = "full"  # HLR reference method (whole training set)
HARD, SOFT = "hard", "soft"
GROUP_KEYS = ("protocol", "label_mode", "model")
CELL_KEYS = ("protocol", "label_mode", "model", "method", "ipc")
DASH = "—"

#: column -> (MLflow metric key, named in trainers/metric_names.py; unit as logged). The one place units
#: live: top-1/top-5 are percent (trainers/evaluate.py ``Accuracy.summarize`` returns 100·hits/total;
#: orchestrator/cell.py ``finish`` logs them unchanged). ``distill/*`` are logged by distillation
#: methods, when they run.
METRICS: dict[str, tuple[str, str]] = {
    "top1_final": (names.VAL_TOP1_FINAL, "%"),
    "top1_best": (names.VAL_TOP1_BEST, "%"),
    "top5_final": (names.VAL_TOP5_FINAL, "%"),
    "top5_best": (names.VAL_TOP5_BEST, "%"),
    "train_s": (names.TIME_TRAIN_S, "s"),
    "images_per_s": (names.THROUGHPUT_IMAGES_PER_S, "images/s"),
    "image_bytes": (names.STORAGE_IMAGE_BYTES, "B"),
    "soft_label_bytes": (names.STORAGE_SOFT_LABEL_BYTES, "B"),
    "optimizer_steps": (names.TRAIN_OPTIMIZER_STEPS, "steps"),
    "generation_s": (names.DISTILL_GENERATION_S, "s"),
    "generation_images": (names.DISTILL_GENERATION_IMAGES, "images"),
}
METRIC_KEYS = {column: key for column, (key, _unit) in METRICS.items()}
METRIC_UNITS = {column: unit for column, (_key, unit) in METRICS.items()}
ACCURACY_COLUMNS = ("top1_final", "top1_best", "top5_final", "top5_best")
METRIC_LABELS = {
    "top1_final": "top-1 (final epoch)",
    "top1_best": "top-1 (best epoch)",
    "top5_final": "top-5 (final epoch)",
    "top5_best": "top-5 (best epoch)",
}
#: params naming the cached artifacts a cell used (orchestrator.teachers): seeds are averaged only when equal
ARTIFACT_KEYS = ("teacher_key", "dynamics_key")
#: how a cell computed: "train <precision> eval <precision>" from the loop's resolved tags (`auto`
#: settings), or the config's params for runs from before those tags; seeds are averaged only when equal
PRECISION = "precision"
#: columns of :func:`load_cell_runs`, in order
CELL_COLUMNS = (
    "method", "ipc", "label_mode", "model", "seed", "protocol", *METRICS,
    "run_id", "fingerprint", "parent_run_id", "start_time", "end_time", *ARTIFACT_KEYS, PRECISION,
    "commit", "device",
)
TIMES = ("start_time", "end_time")  # run info, as datetimes
#: CELL_COLUMNS that come from run params, tags or run info (the rest are METRICS)
_SOURCES = {"method": "params.method", "ipc": "params.ipc", "label_mode": "params.label_mode",
            "model": "params.model", "seed": "params.seed", "fingerprint": "tags.fingerprint",
            "parent_run_id": "tags.mlflow.parentRunId", "run_id": "run_id", "start_time": "start_time",
            "end_time": "end_time", "commit": "tags.code.commit", "device": "tags.resolved.device",
            **{key: f"params.{key}" for key in ARTIFACT_KEYS}}


# --------------------------------------------------------------------------------------- MLflow


def resolve_tracking_uri(tracking_uri: str, *, must_exist: bool = True) -> str:
    """Return a usable tracking URI; a bare ``*.db`` path becomes ``sqlite:////abs/path``.

    For SQLite, a database file that does not exist is an error (opening it would silently create
    an empty store, and the report would then say "unknown experiment" for the wrong reason).
    """
    uri = str(tracking_uri).strip()
    if "://" not in uri and not uri.startswith("sqlite:"):
        p = Path(uri).expanduser()
        if p.suffix not in {".db", ".sqlite", ".sqlite3"}:
            return uri  # a file-store directory or another scheme MLflow understands
        uri = f"sqlite:///{p.resolve()}"  # resolve() is absolute -> 4 slashes
    db = uri[len("sqlite:///"):].split("?", 1)[0] if uri.startswith("sqlite:///") else ""
    if must_exist and db and db != ":memory:" and not Path(db).is_file():
        raise OrchestratorError(
            f"no MLflow database at {Path(db).resolve()} (tracking URI {tracking_uri!r}); "
            "pass the URI the runs were logged to, e.g. sqlite:////abs/path/mlflow.db")
    return uri


def client(tracking_uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=resolve_tracking_uri(tracking_uri))


def get_experiment(mlflow_client, experiment: str):
    """The experiment named ``experiment``; an OrchestratorError lists the existing ones."""
    exp = mlflow_client.get_experiment_by_name(experiment)
    if exp is None:
        names = sorted(e.name for e in mlflow_client.search_experiments())
        listed = ", ".join(repr(n) for n in names) if names else "(none)"
        raise OrchestratorError(f"MLflow experiment {experiment!r} not found at "
                                f"{mlflow_client.tracking_uri}; existing experiments: {listed}")
    return exp


@contextmanager
def _global_tracking_uri(uri: str):
    """``mlflow.search_runs`` reads MLflow's global tracking URI: point it at ``uri`` for the call,
    then put back the URI and ``MLFLOW_TRACKING_URI`` as they were."""
    import mlflow

    env = os.environ.get("MLFLOW_TRACKING_URI")
    previous = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)
        if env is not None:
            os.environ["MLFLOW_TRACKING_URI"] = env


def search_cell_runs(tracking_uri: str, experiment: str) -> pd.DataFrame:
    """``mlflow.search_runs`` of the FINISHED, active ``role=cell`` runs, as MLflow names the columns."""
    import mlflow
    from mlflow.entities import ViewType

    exp = get_experiment(client(tracking_uri), experiment)
    with _global_tracking_uri(resolve_tracking_uri(tracking_uri)):
        return mlflow.search_runs(
            experiment_ids=[exp.experiment_id], output_format="pandas", run_view_type=ViewType.ACTIVE_ONLY,
            filter_string="tags.role = 'cell' and attributes.status = 'FINISHED'")


# -------------------------------------------------------------------------------------- loading


def _column(runs: pd.DataFrame, name: str) -> pd.Series:
    return runs[name] if name in runs.columns else pd.Series(None, index=runs.index, dtype=object)


def _integers(values: pd.Series) -> pd.Series:
    """Params are strings: ``"10"`` -> 10; missing or not a whole number -> <NA>."""
    numbers = pd.to_numeric(values, errors="coerce")
    whole = numbers.where(np.isfinite(numbers) & (numbers == numbers.round()))
    return whole.astype("Int64")


def cells_from_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """:func:`mlflow.search_runs` columns -> :data:`CELL_COLUMNS` (one row per run, units as logged)."""
    out = pd.DataFrame({column: _column(runs, source) for column, source in _SOURCES.items()},
                       index=runs.index).astype({c: object for c in _SOURCES if c not in TIMES})
    protocol = _column(runs, "tags.protocol").fillna(_column(runs, "params.protocol"))
    out["protocol"] = protocol.astype(object)
    out["label_mode"] = out["label_mode"].fillna(protocol.str.extract(r"[-_](hard|soft)$")[0])
    out["ipc"], out["seed"] = _integers(out["ipc"]), _integers(out["seed"])
    out[PRECISION] = _precision(runs)
    for column, key in METRIC_KEYS.items():
        out[column] = pd.to_numeric(_column(runs, f"metrics.{key}"), errors="coerce").astype("float64")
    return out[list(CELL_COLUMNS)]


def _precision(runs: pd.DataFrame) -> pd.Series:
    train = _column(runs, "tags.resolved.precision").fillna(_column(runs, "params.train.precision"))
    evaluation = _column(runs, "tags.resolved.eval_precision").fillna(_column(runs, "params.eval.precision"))
    return ("train " + train.fillna("fp32").astype(str)
            + " eval " + evaluation.fillna("fp32").astype(str)).astype(object)


def load_cell_runs(tracking_uri: str, experiment: str) -> pd.DataFrame:
    """FINISHED ``role=cell`` runs of ``experiment`` as one row per run (:data:`CELL_COLUMNS`).

    ``ipc`` and ``seed`` are pandas ``Int64`` (missing for a ``full`` run logged without an IPC); a
    missing metric is NaN; every metric is in the unit it was logged in (:data:`METRIC_UNITS`).
    Nested runs (children of a sweep run) are included; sweep/teacher/trial/report runs, runs not
    FINISHED and deleted runs are not. Reruns of the same cell (same protocol, label mode, model,
    method, IPC and seed) are collapsed to the one that ended last, so a retried cell does not count
    twice as two seeds.

    Raises :class:`OrchestratorError` for an unknown experiment (listing those that exist) or a
    SQLite URI whose file does not exist.
    """
    cells = _dedupe_reruns(cells_from_runs(search_cell_runs(tracking_uri, experiment)))
    return cells.sort_values(["protocol", "label_mode", "model", "method", "ipc", "seed"],
                             na_position="last", kind="mergesort").reset_index(drop=True)


def _dedupe_reruns(df: pd.DataFrame) -> pd.DataFrame:
    key = [*CELL_KEYS, "seed"]
    has_seed = df["seed"].notna()
    seeded = df[has_seed].sort_values("end_time", kind="mergesort", na_position="first")
    dup = seeded.duplicated(key, keep="last")
    if dup.any():
        log.warning("ignoring %d superseded rerun(s) of the same cell: %s",
                    int(dup.sum()), ", ".join(seeded.loc[dup, "run_id"]))
    return pd.concat([seeded[~dup], df[~has_seed]]).sort_index()


# ------------------------------------------------------------------------------------- grouping


def method_order(methods: Iterable[str]) -> list[str]:
    """``random`` first, then the others alphabetically (case-insensitive), ``full`` last."""
    names = {str(m) for m in pd.Series(list(methods), dtype=object).dropna()}
    return sorted(names, key=lambda m: (m == FULL, m != RANDOM, m.lower(), m))


def _keyed(df: pd.DataFrame, keys: Iterable[str]) -> pd.DataFrame:
    """``df[keys]`` with missing values spelled ``"?"``, so groupby keeps those rows."""
    keys = list(keys)
    return df[keys].astype(object).where(df[keys].notna(), "?")


def iter_groups(df: pd.DataFrame) -> Iterator[tuple[tuple[str, str, str], pd.DataFrame]]:
    """Yield ``((protocol, label_mode, model), rows)`` for each group, sorted by key."""
    for key, sub in _keyed(df, GROUP_KEYS).groupby(list(GROUP_KEYS), sort=True):
        yield tuple(str(k) for k in key), df.loc[sub.index]


def check_artifact_keys(df: pd.DataFrame) -> None:
    """Refuse to average seeds of one cell (protocol, label mode, model, method, IPC) that used
    different teachers or training dynamics: an OrchestratorError names the runs and the key."""
    cell = list(CELL_KEYS)
    for key in (k for k in (*ARTIFACT_KEYS, PRECISION) if k in df.columns):
        keyed = _keyed(df, cell).assign(_value=df[key].astype(object).where(df[key].notna(), "(none)"))
        for group, sub in keyed.groupby(cell, sort=True):
            if sub["_value"].nunique() > 1:
                runs = "; ".join(f"run {df.at[i, 'run_id']} (seed {df.at[i, 'seed']}): {v}"
                                 for i, v in sub["_value"].items())
                raise OrchestratorError(
                    f"cannot average {dict(zip(cell, group))}: its runs used different {key}s ({runs}). "
                    f"Rerun the odd runs with the same teacher/dynamics (`--force`), or delete them")


def one_group(df: pd.DataFrame, what: str) -> tuple[str, str, str] | None:
    """The single (protocol, label_mode, model) of ``df`` (None when empty); several is an error."""
    groups = [k for k, _ in iter_groups(df)]
    if len(groups) > 1:
        shown = "; ".join("/".join(g) for g in groups)
        raise OrchestratorError(
            f"{what} takes the rows of one (protocol, label_mode, model) group, got "
            f"{len(groups)}: {shown}. Split them with orchestrator.report.iter_groups(df).")
    return groups[0] if groups else None


def check_metric(df: pd.DataFrame, metric: str) -> None:
    if metric not in df.columns:
        raise OrchestratorError(f"unknown metric {metric!r}; choose one of {', '.join(ACCURACY_COLUMNS)}")
