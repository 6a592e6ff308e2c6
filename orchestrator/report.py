"""Reports over the benchmark's MLflow runs: paper tables, storage/time, label robustness, plots.

Every benchmark cell is one MLflow run (tag ``role=cell``). This module reads the FINISHED cell runs
of one experiment into a flat :class:`pandas.DataFrame` (:func:`load_cell_runs`) and turns it into

- paper-style tables (:func:`paper_table`, numeric twin :func:`paper_table_numeric`): methods x IPC,
  "mean ± std" over seeds, the best mean of each IPC column in bold;
- a storage/time table (:func:`storage_table`);
- DD-Ranking's label-robustness numbers IOR, HLR and LRS (:func:`label_robust`);
- a top-1 vs IPC plot (:func:`plot_top1_vs_ipc`);
- ``report.md`` + CSVs + PNG on disk (:func:`write_report`), or text for a terminal
  (:func:`render_terminal`), and the files logged back to MLflow (:func:`log_report`).

:func:`run_report` chains them for the CLI.

Conventions (stated once, used everywhere):

- Accuracies are in **percent**. :func:`load_cell_runs` converts runs that logged fractions
  (see its ``acc_unit`` argument); DataFrames built by hand must already be in percent.
- "mean ± std" is over seeds: the mean and the *sample* standard deviation (``ddof=1``, the
  unbiased variance estimator usual in papers' "± std over N runs"). With a single seed there is no
  std: the cell shows the mean and ``(n=1)``. (DD-Ranking itself reports ``np.std``, i.e. ddof=0.)
- A group is one ``(protocol, label_mode, model)``. Method ``random`` is the IOR reference and is
  listed first; method ``full`` (the whole training set) is the HLR reference: it is kept out of the
  methods x IPC grid (it has no meaningful IPC) and shown under the table instead.
- Only MLflow's public client API is used, always with an explicit tracking URI
  (:class:`mlflow.MlflowClient`); nothing here touches ``mlflow.set_tracking_uri`` /
  ``mlflow.set_experiment`` global state.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from orchestrator.errors import OrchestratorError

log = logging.getLogger(__name__)

__all__ = [
    "CELL_COLUMNS",
    "load_cell_runs",
    "iter_groups",
    "paper_table",
    "paper_table_numeric",
    "label_robust",
    "lrs_from",
    "storage_table",
    "plot_top1_vs_ipc",
    "render_terminal",
    "write_report",
    "log_report",
    "run_report",
    "human_bytes",
    "human_seconds",
]

# --------------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------------

RANDOM = "random"  # IOR reference method
FULL = "full"  # HLR reference method (whole training set)
HARD, SOFT = "hard", "soft"
GROUP_KEYS = ("protocol", "label_mode", "model")

#: normalised column -> MLflow metric key written by the tracking code
METRIC_KEYS: dict[str, str] = {
    "top1_final": "val/top1_final",
    "top1_best": "val/top1_best",
    "top5_final": "val/top5_final",
    "top5_best": "val/top5_best",
    "train_s": "time/train_s",
    "images_per_s": "throughput/images_per_s",
    "image_bytes": "storage/image_bytes",
    "soft_label_bytes": "storage/soft_label_bytes",
    "optimizer_steps": "train/optimizer_steps",
}
ACCURACY_COLUMNS = ("top1_final", "top1_best", "top5_final", "top5_best")
METRIC_LABELS = {
    "top1_final": "top-1 (final epoch)",
    "top1_best": "top-1 (best epoch)",
    "top5_final": "top-5 (final epoch)",
    "top5_best": "top-5 (best epoch)",
}

#: columns of :func:`load_cell_runs`, in order
CELL_COLUMNS = (
    "method", "ipc", "label_mode", "model", "seed", "protocol",
    "top1_final", "top1_best", "top5_final", "top5_best",
    "train_s", "images_per_s", "image_bytes", "soft_label_bytes", "optimizer_steps",
    "run_id", "fingerprint", "parent_run_id", "end_time", "teacher_key", "dynamics_key",
)
#: params naming the cached artifacts a cell used (orchestrator.teachers): seeds are averaged only when equal
ARTIFACT_KEYS = ("teacher_key", "dynamics_key")

_DASH = "—"
_PM = "±"


# --------------------------------------------------------------------------------------------------
# MLflow access
# --------------------------------------------------------------------------------------------------


def _resolve_tracking_uri(tracking_uri: str, *, must_exist: bool = True) -> str:
    """Return a usable tracking URI; a bare ``*.db`` path becomes ``sqlite:////abs/path``.

    For SQLite, a database file that does not exist is an error (opening it would silently create
    an empty store, and the report would then say "unknown experiment" for the wrong reason).
    """
    uri = str(tracking_uri).strip()
    if "://" not in uri and not uri.startswith("sqlite:"):
        p = Path(uri).expanduser()
        if p.suffix in {".db", ".sqlite", ".sqlite3"}:
            uri = f"sqlite:///{p.resolve()}"  # resolve() is absolute -> 4 slashes
        else:
            return uri  # a file-store directory or another scheme MLflow understands
    if uri.startswith("sqlite:///") and must_exist:
        db = uri[len("sqlite:///"):].split("?", 1)[0]
        if db and db != ":memory:":
            path = Path(db)
            if not path.is_file():
                raise OrchestratorError(
                    f"no MLflow database at {path.resolve()} (tracking URI {tracking_uri!r}); "
                    "pass the URI the runs were logged to, e.g. sqlite:////abs/path/mlflow.db"
                )
    return uri


def _client(tracking_uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=_resolve_tracking_uri(tracking_uri))


def _get_experiment(client, experiment: str):
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = sorted(e.name for e in _all_experiments(client))
        listed = ", ".join(repr(n) for n in names) if names else "(none)"
        raise OrchestratorError(
            f"MLflow experiment {experiment!r} not found at {client.tracking_uri}; "
            f"existing experiments: {listed}"
        )
    return exp


def _all_experiments(client) -> list:
    out, token = [], None
    while True:
        page = client.search_experiments(max_results=1000, page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out


def _to_int(value) -> int | None:
    if value is None:
        return None
    try:
        f = float(str(value).strip())
    except ValueError:
        return None
    if not math.isfinite(f) or f != int(f):
        return None
    return int(f)


def _label_mode_from_protocol(protocol: str | None) -> str | None:
    if not protocol:
        return None
    m = re.search(r"[-_](hard|soft)$", protocol)
    return m.group(1) if m else None


def protocol_family(protocol: str) -> str:
    """The protocol without its label-mode suffix: ``fmnist-hard`` and ``fmnist-soft`` -> ``fmnist``.

    HLR compares a soft-label cell with the *hard-label* run of the same method, which is logged
    under the sibling protocol; this is how the two are matched.
    """
    return re.sub(r"[-_](hard|soft)$", "", str(protocol))


def _empty_cells() -> pd.DataFrame:
    df = pd.DataFrame({c: pd.Series(dtype="float64") for c in CELL_COLUMNS})
    for c in ("method", "label_mode", "model", "protocol", "run_id", "fingerprint", "parent_run_id", *ARTIFACT_KEYS):
        df[c] = df[c].astype(object)
    df["ipc"] = df["ipc"].astype("Int64")
    df["seed"] = df["seed"].astype("Int64")
    return df


def load_cell_runs(
    tracking_uri: str,
    experiment: str,
    *,
    acc_unit: Literal["auto", "percent", "fraction"] = "auto",
) -> pd.DataFrame:
    """FINISHED ``role=cell`` runs of ``experiment`` as one row per run.

    Columns (see :data:`CELL_COLUMNS`): ``method, ipc, label_mode, model, seed, protocol,
    top1_final, top1_best, top5_final, top5_best, train_s, images_per_s, image_bytes,
    soft_label_bytes, run_id, fingerprint, parent_run_id, end_time``. ``ipc`` and ``seed`` are
    integers (pandas ``Int64``; missing for a ``full`` run logged without an IPC). A missing metric
    is NaN. Nested runs (children of a sweep run) are included; sweep/teacher/trial/report runs,
    runs not FINISHED and deleted runs are not.

    Reruns of the same cell (same protocol, label mode, model, method, IPC and seed) are collapsed
    to the one that ended last, so a retried cell does not count twice as two seeds.

    ``acc_unit``: accuracies are reported in percent. ``"auto"`` treats the logged accuracies as
    fractions (and multiplies by 100) only when every top-1/top-5 value is <= 1; say ``"percent"``
    or ``"fraction"`` to skip the guess.

    Raises :class:`OrchestratorError` for an unknown experiment (listing those that exist) or a
    SQLite URI whose file does not exist.
    """
    from mlflow.entities import ViewType

    client = _client(tracking_uri)
    exp = _get_experiment(client, experiment)

    runs, token = [], None
    while True:
        page = client.search_runs(
            [exp.experiment_id],
            filter_string="tags.role = 'cell' and attributes.status = 'FINISHED'",
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=1000,
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            break

    rows = []
    for run in runs:
        info, data = run.info, run.data
        # belt and braces: the filter above already did this
        if data.tags.get("role") != "cell" or info.status != "FINISHED":
            continue
        params, tags, metrics = data.params, data.tags, data.metrics
        protocol = tags.get("protocol") or params.get("protocol")
        label_mode = params.get("label_mode") or _label_mode_from_protocol(protocol)
        row = {
            "method": params.get("method"),
            "ipc": _to_int(params.get("ipc")),
            "label_mode": label_mode,
            "model": params.get("model"),
            "seed": _to_int(params.get("seed")),
            "protocol": protocol,
            "run_id": info.run_id,
            "fingerprint": tags.get("fingerprint"),
            "parent_run_id": tags.get("mlflow.parentRunId"),
            "end_time": info.end_time,
            **{key: params.get(key) for key in ARTIFACT_KEYS},
        }
        for col, key in METRIC_KEYS.items():
            row[col] = float(metrics[key]) if key in metrics else np.nan
        rows.append(row)

    if not rows:
        return _empty_cells()

    df = pd.DataFrame(rows)
    for c in CELL_COLUMNS:
        if c not in df.columns:
            df[c] = np.nan
    df = df[list(CELL_COLUMNS)]
    df["ipc"] = df["ipc"].astype("Int64")
    df["seed"] = df["seed"].astype("Int64")
    for c in METRIC_KEYS:
        df[c] = df[c].astype("float64")

    df = _dedupe_reruns(df)
    df = _to_percent(df, acc_unit)
    return df.sort_values(["protocol", "label_mode", "model", "method", "ipc", "seed"],
                          na_position="last", kind="mergesort").reset_index(drop=True)


def _dedupe_reruns(df: pd.DataFrame) -> pd.DataFrame:
    key = ["protocol", "label_mode", "model", "method", "ipc", "seed"]
    has_seed = df["seed"].notna()
    seeded = df[has_seed].sort_values("end_time", kind="mergesort", na_position="first")
    dup = seeded.duplicated(key, keep="last")
    if dup.any():
        log.warning("ignoring %d superseded rerun(s) of the same cell: %s",
                    int(dup.sum()), ", ".join(seeded.loc[dup, "run_id"]))
    return pd.concat([seeded[~dup], df[~has_seed]]).sort_index()


def _to_percent(df: pd.DataFrame, acc_unit: str) -> pd.DataFrame:
    if acc_unit not in ("auto", "percent", "fraction"):
        raise OrchestratorError(f"acc_unit must be 'auto', 'percent' or 'fraction', not {acc_unit!r}")
    vals = df[list(ACCURACY_COLUMNS)].to_numpy(dtype=float)
    finite = vals[np.isfinite(vals)]
    fraction = acc_unit == "fraction" or (acc_unit == "auto" and finite.size > 0
                                          and float(finite.max()) <= 1.0)
    if fraction:
        df = df.copy()
        for c in ACCURACY_COLUMNS:
            df[c] = df[c] * 100.0
        log.info("accuracies were logged as fractions; converted to percent")
    return df


# --------------------------------------------------------------------------------------------------
# Grouping and ordering
# --------------------------------------------------------------------------------------------------


def method_order(methods: Iterable[str]) -> list[str]:
    """``random`` first, then the others alphabetically (case-insensitive), ``full`` last."""
    ms = sorted({str(m) for m in methods if m is not None and not _isna(m)},
                key=lambda m: (m == FULL, m != RANDOM, m.lower(), m))
    return ms


def _isna(x) -> bool:
    try:
        return bool(pd.isna(x))
    except (TypeError, ValueError):
        return False


def iter_groups(df: pd.DataFrame) -> Iterator[tuple[tuple[str, str, str], pd.DataFrame]]:
    """Yield ``((protocol, label_mode, model), rows)`` for each group, sorted by key."""
    if df.empty:
        return
    keyed = df.assign(**{k: df[k].astype(object).where(df[k].notna(), "?") for k in GROUP_KEYS})
    for key, sub in keyed.groupby(list(GROUP_KEYS), sort=True, dropna=False):
        yield tuple(str(k) for k in key), df.loc[sub.index]


def check_artifact_keys(df: pd.DataFrame) -> None:
    """Refuse to average seeds of one cell (protocol, label mode, model, method, IPC) that used
    different teachers or training dynamics: an OrchestratorError names the runs and the key."""
    cell = ["protocol", "label_mode", "model", "method", "ipc"]
    for key in (k for k in ARTIFACT_KEYS if k in df.columns):
        values = df[key].astype(object).where(df[key].notna(), "(none)")
        keyed = df[cell].astype(object).where(df[cell].notna(), "?").assign(_value=values)
        for group, sub in keyed.groupby(cell, sort=True):
            if sub["_value"].nunique() > 1:
                runs = "; ".join(f"run {df.at[i, 'run_id']} (seed {df.at[i, 'seed']}): {v}"
                                 for i, v in sub["_value"].items())
                raise OrchestratorError(
                    f"cannot average {dict(zip(cell, group))}: its runs used different {key}s ({runs}). "
                    f"Rerun the odd runs with the same teacher/dynamics (`--force`), or delete them")


def _one_group(df: pd.DataFrame, what: str) -> tuple[str, str, str] | None:
    groups = [k for k, _ in iter_groups(df)]
    if len(groups) > 1:
        shown = "; ".join("/".join(g) for g in groups)
        raise OrchestratorError(
            f"{what} takes the rows of one (protocol, label_mode, model) group, got "
            f"{len(groups)}: {shown}. Split them with orchestrator.report.iter_groups(df)."
        )
    return groups[0] if groups else None


def _check_metric(df: pd.DataFrame, metric: str) -> None:
    if metric not in df.columns:
        raise OrchestratorError(
            f"unknown metric {metric!r}; choose one of {', '.join(ACCURACY_COLUMNS)}"
        )


def _seed_stats(values: pd.Series) -> tuple[float, float, int]:
    """mean, sample std (ddof=1; NaN for one value) and count of the finite values."""
    v = values.to_numpy(dtype=float)
    v = v[np.isfinite(v)]
    n = int(v.size)
    if n == 0:
        return math.nan, math.nan, 0
    mean = float(np.mean(v))
    std = float(np.std(v, ddof=1)) if n > 1 else math.nan
    return mean, std, n


def _fmt_mean_std(mean: float, std: float, n: int, decimals: int = 1) -> str:
    if n == 0 or not math.isfinite(mean):
        return _DASH
    if n == 1:
        return f"{mean:.{decimals}f} (n=1)"
    return f"{mean:.{decimals}f} {_PM} {std:.{decimals}f}"


# --------------------------------------------------------------------------------------------------
# Paper table
# --------------------------------------------------------------------------------------------------


def paper_table_numeric(df: pd.DataFrame, *, metric: str = "top1_final") -> pd.DataFrame:
    """Long-format numbers behind :func:`paper_table`, for one group (and its CSV).

    Columns: ``protocol, label_mode, model, metric, method, ipc, mean, std, n, best``; one row per
    (method, IPC) that has runs, plus the ``full`` reference (``ipc`` missing, ``best`` False).
    ``std`` is the sample std over seeds (ddof=1), NaN when ``n == 1``. ``best`` marks the highest
    mean of its IPC column among the non-``full`` methods (ties all marked).
    """
    _check_metric(df, metric)
    group = _one_group(df, "paper_table")
    cols = ["protocol", "label_mode", "model", "metric", "method", "ipc", "mean", "std", "n", "best"]
    if group is None:
        return pd.DataFrame(columns=cols)
    protocol, label_mode, model = group
    order = method_order(df["method"])
    rows = []
    grid = df[(df["method"] != FULL) & df["ipc"].notna()]
    for (method, ipc), sub in grid.groupby(["method", "ipc"], sort=False):
        mean, std, n = _seed_stats(sub[metric])
        rows.append(dict(method=method, ipc=int(ipc), mean=mean, std=std, n=n))
    full = df[df["method"] == FULL]
    if not full.empty:
        mean, std, n = _seed_stats(full[metric])
        rows.append(dict(method=FULL, ipc=pd.NA, mean=mean, std=std, n=n))
    out = pd.DataFrame(rows, columns=["method", "ipc", "mean", "std", "n"])
    out["ipc"] = out["ipc"].astype("Int64")
    out["best"] = False
    is_grid = (out["method"] != FULL) & out["ipc"].notna() & out["mean"].notna()
    if is_grid.any():
        col_max = out[is_grid].groupby("ipc")["mean"].transform("max")
        out.loc[col_max.index, "best"] = np.isclose(out.loc[col_max.index, "mean"], col_max,
                                                    rtol=0.0, atol=1e-9)
    out["_order"] = out["method"].map({m: i for i, m in enumerate(order)})
    out = out.sort_values(["_order", "ipc"], na_position="last", kind="mergesort")
    out = out.drop(columns="_order").reset_index(drop=True)
    out.insert(0, "metric", metric)
    out.insert(0, "model", model)
    out.insert(0, "label_mode", label_mode)
    out.insert(0, "protocol", protocol)
    return out[cols]


def paper_table(df: pd.DataFrame, *, metric: str = "top1_final", decimals: int = 1) -> pd.DataFrame:
    """Methods x IPC table of ``"mean ± std"`` strings for one (protocol, label_mode, model) group.

    Rows are methods (``random`` first, then alphabetical; the ``full`` reference is not a row),
    columns the IPCs ascending. A cell is ``"mean ± std"`` over seeds with ``decimals`` decimals
    (std with ddof=1), ``"mean (n=1)"`` for a single seed, ``"—"`` where nothing ran. The best mean
    of each column is wrapped in ``**…**`` (markdown bold), ties included.
    """
    num = paper_table_numeric(df, metric=metric)
    num = num[num["method"] != FULL]
    if num.empty:
        return pd.DataFrame(index=pd.Index([], name="method"))
    ipcs = sorted(int(i) for i in num["ipc"].dropna().unique())
    methods = [m for m in method_order(num["method"]) if m != FULL]
    table = pd.DataFrame(_DASH, index=pd.Index(methods, name="method"),
                         columns=pd.Index(ipcs, name="ipc"), dtype=object)
    for r in num.itertuples(index=False):
        text = _fmt_mean_std(r.mean, r.std, r.n, decimals)
        if r.best:
            text = f"**{text}**"
        table.loc[r.method, int(r.ipc)] = text
    return table


def _full_reference_line(df: pd.DataFrame, metric: str, decimals: int = 1) -> str | None:
    full = df[df["method"] == FULL]
    if full.empty:
        return None
    mean, std, n = _seed_stats(full[metric])
    if n == 0:
        return None
    text = _fmt_mean_std(mean, std, n, decimals)
    if n > 1:
        text += f" (n={n})"
    return f"Whole training set (`full`): {text}"


# --------------------------------------------------------------------------------------------------
# Label robustness (DD-Ranking)
# --------------------------------------------------------------------------------------------------


def lrs_from(ior: float, hlr: float, *, w: float = 0.5) -> float:
    """DD-Ranking's label-robust score from IOR and HLR given in percentage points.

    Definition (DD-Ranking docs, ``doc/introduction.md`` "Label-Robust Score (LRS)",
    https://nus-hpc-ai-lab.github.io/DD-Ranking/ ; paper arXiv:2505.13300; same formula in
    ``ddranking/metrics/hard_label.py`` / ``soft_label.py`` ``compute_metrics(..., lrs_lambda=0.5)``)::

        alpha = w * IOR - (1 - w) * HLR,   w in [0, 1] (0.5 on their leaderboard)
        LRS   = 100% * (exp(alpha) - exp(-1)) / (e - exp(-1))

    The normalisation maps alpha in [-1, 1] to [0, 100] %, so IOR and HLR enter as *fractions*
    (accuracy differences in [-1, 1]); this function takes percentage points and divides by 100.
    Returns LRS in percent (NaN if either input is NaN).
    """
    if not (0.0 <= w <= 1.0):
        raise OrchestratorError(f"LRS weight w must be in [0, 1], not {w}")
    if ior is None or hlr is None or not (math.isfinite(ior) and math.isfinite(hlr)):
        return math.nan
    alpha = w * (ior / 100.0) - (1.0 - w) * (hlr / 100.0)
    return 100.0 * (math.exp(alpha) - math.exp(-1.0)) / (math.e - math.exp(-1.0))


def label_robust(df: pd.DataFrame, *, metric: str = "top1_final", w: float = 0.5) -> pd.DataFrame:
    """IOR, HLR and the label-robust score (LRS) per method, IPC and label mode, where computable.

    Following DD-Ranking (https://github.com/NUS-HPC-AI-Lab/DD-Ranking, README "Benchmark" and
    ``doc/introduction.md``; arXiv:2505.13300):

    - ``IOR = Acc(method, mode) − Acc(random, mode)`` — improvement over random, same protocol,
      label mode, model and IPC ("syn-any" minus "rdm-any").
    - ``HLR = Acc(full, hard) − Acc(method, hard)`` — hard-label recovery ("real-hard" minus
      "syn-hard"); lower is better. The hard-label cells of a soft-label protocol are found under
      the sibling protocol (:func:`protocol_family`: ``x-soft`` ↔ ``x-hard``), same model and IPC.
      ``full`` runs are pooled over whatever IPC they were logged with.
    - ``LRS = 100·(e^α − e^−1)/(e − e^−1)`` with ``α = w·IOR − (1−w)·HLR`` (accuracy differences as
      fractions), ``w = 0.5`` by default as on DD-Ranking's leaderboard. See :func:`lrs_from`.

    Differences from DD-Ranking, stated plainly: DD-Ranking computes HLR/IOR/LRS per evaluation
    round and averages the rounds; here the seeds of the method and of its references are
    independent runs, so the scores are computed from the *mean* accuracies over seeds (LRS is
    convex in α, so this can differ slightly from averaging per-round LRS). DD-Ranking uses the best
    top-1 over late epochs and tunes the learning rate per run; pass ``metric="top1_best"`` to use
    best-epoch accuracy (the default is final-epoch top-1, like the paper tables).

    Rows: one per (protocol, label_mode, model, method, ipc) for methods other than ``random`` and
    ``full`` where IOR or HLR is available. Columns: ``protocol, label_mode, model, method, ipc, n,
    acc, random_acc, IOR, method_hard_acc, full_hard_acc, HLR, LRS`` (percent / percentage points).
    """
    _check_metric(df, metric)
    cols = ["protocol", "label_mode", "model", "method", "ipc", "n", "acc", "random_acc", "IOR",
            "method_hard_acc", "full_hard_acc", "HLR", "LRS"]
    if df.empty:
        return pd.DataFrame(columns=cols)
    d = df[df[metric].notna()].copy()
    d["family"] = d["protocol"].map(protocol_family)

    def means(frame: pd.DataFrame, keys: list[str]) -> dict:
        out = {}
        for k, sub in frame.groupby(keys, sort=False, dropna=False):
            out[k] = _seed_stats(sub[metric])
        return out

    grid = d[(d["method"] != FULL) & d["ipc"].notna()]
    cell_keys = ["protocol", "label_mode", "model", "method", "ipc"]
    cells = means(grid, cell_keys)
    randoms = means(grid[grid["method"] == RANDOM], ["protocol", "label_mode", "model", "ipc"])
    hard = grid[grid["label_mode"] == HARD]
    hard_cells = means(hard, ["family", "model", "method", "ipc"])
    full_hard = means(d[(d["method"] == FULL) & (d["label_mode"] == HARD)], ["family", "model"])

    rows = []
    for (protocol, label_mode, model, method, ipc), (acc, _std, n) in cells.items():
        if method == RANDOM:
            continue
        fam = protocol_family(protocol)
        r = randoms.get((protocol, label_mode, model, ipc))
        random_acc = r[0] if r else math.nan
        mh = hard_cells.get((fam, model, method, ipc))
        method_hard = mh[0] if mh else math.nan
        fh = full_hard.get((fam, model))
        full_acc = fh[0] if fh else math.nan
        ior = acc - random_acc
        hlr = full_acc - method_hard
        if not (math.isfinite(ior) or math.isfinite(hlr)):
            continue
        rows.append(dict(protocol=protocol, label_mode=label_mode, model=model, method=method,
                         ipc=int(ipc), n=n, acc=acc, random_acc=random_acc, IOR=ior,
                         method_hard_acc=method_hard, full_hard_acc=full_acc, HLR=hlr,
                         LRS=lrs_from(ior, hlr, w=w)))
    out = pd.DataFrame(rows, columns=cols)
    if out.empty:
        return out
    order = {m: i for i, m in enumerate(method_order(out["method"]))}
    out = out.assign(_o=out["method"].map(order))
    out = out.sort_values(["protocol", "label_mode", "model", "_o", "ipc"], kind="mergesort")
    return out.drop(columns="_o").reset_index(drop=True)


# --------------------------------------------------------------------------------------------------
# Storage / time
# --------------------------------------------------------------------------------------------------


def human_bytes(n: float) -> str:
    """``1536 -> '1.5 KiB'`` (IEC units); NaN -> ``'—'``."""
    if n is None or _isna(n) or not math.isfinite(float(n)):
        return _DASH
    n = float(n)
    if abs(n) < 1024:
        return f"{n:.0f} B"
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        n /= 1024.0
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}"
    return f"{n:.1f} PiB"  # pragma: no cover


def human_seconds(s: float) -> str:
    """``42 -> '42.0 s'``, ``600 -> '10.0 min'``, ``7200 -> '2.00 h'``; NaN -> ``'—'``."""
    if s is None or _isna(s) or not math.isfinite(float(s)):
        return _DASH
    s = float(s)
    if s < 120:
        return f"{s:.1f} s"
    if s < 2 * 3600:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.2f} h"


def storage_table(df: pd.DataFrame, *, human: bool = True) -> pd.DataFrame:
    """Storage and cost per (protocol, label_mode, model, method, ipc).

    Columns: the keys, ``n`` (runs), ``image_bytes``, ``soft_label_bytes``, ``total_bytes`` (means
    over seeds), ``train_s`` (mean training time), ``images_per_s`` (mean throughput) and
    ``optimizer_steps`` (mean total steps: rows that train more steps at one IPC show it). With
    ``human=True`` (default) bytes and times are strings in human units (KiB/MiB/GiB, s/min/h);
    with ``human=False`` they are numbers. ``full`` rows have no IPC.
    """
    keys = ["protocol", "label_mode", "model", "method", "ipc"]
    cols = keys + ["n", "image_bytes", "soft_label_bytes", "total_bytes", "train_s", "images_per_s",
                   "optimizer_steps"]
    if df.empty:
        return pd.DataFrame(columns=cols)
    rows = []
    for k, sub in df.groupby(keys, sort=False, dropna=False):
        img = float(sub["image_bytes"].mean())
        soft = float(sub["soft_label_bytes"].mean())
        soft_or_zero = 0.0 if math.isnan(soft) else soft
        rows.append(dict(zip(keys, k), n=len(sub), image_bytes=img, soft_label_bytes=soft,
                         total_bytes=img + soft_or_zero if math.isfinite(img) else math.nan,
                         train_s=float(sub["train_s"].mean()),
                         images_per_s=float(sub["images_per_s"].mean()),
                         optimizer_steps=float(sub["optimizer_steps"].mean())))
    out = pd.DataFrame(rows, columns=cols)
    out["ipc"] = out["ipc"].astype("Int64")
    order = {m: i for i, m in enumerate(method_order(out["method"]))}
    out = (out.assign(_o=out["method"].map(order))
              .sort_values(["protocol", "label_mode", "model", "_o", "ipc"], na_position="last",
                           kind="mergesort")
              .drop(columns="_o").reset_index(drop=True))
    if human:
        for c in ("image_bytes", "soft_label_bytes", "total_bytes"):
            out[c] = out[c].map(human_bytes).astype(object)
        out["train_s"] = out["train_s"].map(human_seconds).astype(object)
        for c in ("images_per_s", "optimizer_steps"):
            out[c] = out[c].map(lambda v: _DASH if _isna(v) else f"{v:,.0f}").astype(object)
    return out


# --------------------------------------------------------------------------------------------------
# Plot
# --------------------------------------------------------------------------------------------------


def plot_top1_vs_ipc(df: pd.DataFrame, path: Path, *, metric: str = "top1_final") -> Path:
    """PNG of accuracy vs IPC: one panel per (protocol, label_mode, model), one line per method.

    Points are the mean over seeds with the sample std (ddof=1) as error bars; the x axis is
    logarithmic when the IPCs span more than 10x; ``full`` is drawn as a dashed horizontal line.
    Uses matplotlib's Agg canvas directly (no pyplot, no global backend switch).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    _check_metric(df, metric)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    groups = list(iter_groups(df))
    n = max(1, len(groups))
    ncols = min(3, n)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(5.0 * ncols, 3.8 * nrows), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    label = METRIC_LABELS.get(metric, metric)
    # one colour per method across all panels
    palette = [f"C{i}" for i in range(10)]
    colours = {m: palette[i % len(palette)]
               for i, m in enumerate(x for x in method_order(df["method"]) if x != FULL)}
    if not groups:
        ax = axes[0][0]
        ax.text(0.5, 0.5, "no finished cell runs", ha="center", va="center")
        ax.set_axis_off()
    for i, ((protocol, label_mode, model), sub) in enumerate(groups):
        ax = axes[i // ncols][i % ncols]
        num = paper_table_numeric(sub, metric=metric)
        grid = num[num["method"] != FULL]
        ipcs = sorted(int(v) for v in grid["ipc"].dropna().unique())
        for method in method_order(grid["method"]):
            m = grid[grid["method"] == method].sort_values("ipc")
            ax.errorbar(m["ipc"].astype(float), m["mean"], yerr=m["std"].fillna(0.0),
                        marker="o", capsize=3, label=method, color=colours.get(method),
                        linewidth=2.0 if method == RANDOM else 1.5,
                        linestyle=":" if method == RANDOM else "-")
        full = num[num["method"] == FULL]
        if not full.empty and math.isfinite(full["mean"].iloc[0]):
            ax.axhline(full["mean"].iloc[0], color="black", linestyle="--", linewidth=1,
                       label="full")
        if ipcs and max(ipcs) / max(min(ipcs), 1) > 10:
            ax.set_xscale("log")
        if ipcs:
            ax.set_xticks(ipcs)
            ax.set_xticklabels([str(v) for v in ipcs])
            ax.minorticks_off()
        ax.set_title(f"{protocol} · {label_mode} · {model}", fontsize=10)
        ax.set_xlabel("images per class (IPC)")
        ax.set_ylabel(f"{label} (%)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    for j in range(len(groups), nrows * ncols):
        if groups:
            axes[j // ncols][j % ncols].set_axis_off()
    fig.savefig(path, format="png")
    return path


# --------------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------------


def _md_escape(value) -> str:
    if value is None or _isna(value):
        return _DASH
    return str(value).replace("|", r"\|").replace("\n", " ")


def _md_table(df: pd.DataFrame, *, index: bool = True) -> str:
    """A GitHub-flavoured markdown table (no dependency on ``tabulate``)."""
    frame = df.reset_index() if index else df
    header = [_md_escape(c) for c in frame.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(_md_escape(v) for v in row) + " |")
    return "\n".join(lines)


def _fmt_num(v, decimals: int = 1, signed: bool = False) -> str:
    if v is None or _isna(v) or not math.isfinite(float(v)):
        return _DASH
    return f"{float(v):+.{decimals}f}" if signed else f"{float(v):.{decimals}f}"


def _label_robust_display(lr: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame({
        "protocol": lr["protocol"], "labels": lr["label_mode"], "model": lr["model"],
        "method": lr["method"], "IPC": lr["ipc"].astype(int).astype(str),
        "acc": lr["acc"].map(_fmt_num), "random": lr["random_acc"].map(_fmt_num),
        "IOR ↑": lr["IOR"].map(lambda v: _fmt_num(v, signed=True)),
        "hard acc": lr["method_hard_acc"].map(_fmt_num),
        "full hard": lr["full_hard_acc"].map(_fmt_num),
        "HLR ↓": lr["HLR"].map(lambda v: _fmt_num(v, signed=True)),
        "LRS ↑": lr["LRS"].map(lambda v: _fmt_num(v, 2)),
    })
    return out


def _group_slug(key: tuple[str, str, str]) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", "_".join(key)).strip("-") or "group"


def _render_markdown(df: pd.DataFrame, *, title: str, metric: str,
                     image: str | None = None) -> str:
    label = METRIC_LABELS.get(metric, metric)
    parts = [f"# {title}", ""]
    n_runs = len(df)
    if n_runs == 0:
        parts += ["No FINISHED `role=cell` runs.", ""]
        return "\n".join(parts)
    parts += [
        f"{n_runs} finished cell run(s). Tables show {label} in %, mean {_PM} sample std "
        "(ddof=1) over seeds; a single seed shows the mean and `(n=1)`. "
        "**Bold**: best mean of the IPC column.",
        "",
    ]
    for key, sub in iter_groups(df):
        protocol, label_mode, model = key
        parts += [f"## {protocol} · {label_mode} labels · {model}", ""]
        table = paper_table(sub, metric=metric)
        if table.empty:
            parts += ["(no cells with an IPC)", ""]
        else:
            table = table.rename(columns=lambda c: f"IPC {c}")
            parts += [f"### {label}", "", _md_table(table), ""]
        full_line = _full_reference_line(sub, metric)
        if full_line:
            parts += [full_line, ""]
        st = storage_table(sub).drop(columns=["protocol", "label_mode", "model"])
        st["ipc"] = st["ipc"].map(lambda v: "all" if _isna(v) else str(int(v))).astype(object)
        st = st.rename(columns={"image_bytes": "images", "soft_label_bytes": "soft labels",
                                "total_bytes": "total", "train_s": "train time (mean)",
                                "images_per_s": "images/s"})
        parts += ["### Storage and training time", "", _md_table(st, index=False), ""]
    lr = label_robust(df, metric=metric)
    parts += ["## Label robustness (DD-Ranking)", ""]
    if lr.empty:
        parts += ["Not available: needs `random` cells (IOR) or hard-label cells plus a `full` "
                  "hard-label run (HLR).", ""]
    else:
        parts += [
            "IOR = Acc(method) − Acc(random), same protocol, labels, model and IPC; "
            "HLR = Acc(full, hard) − Acc(method, hard); "
            "LRS = 100·(e^α − e^−1)/(e − e^−1), α = ½·IOR − ½·HLR (as fractions). "
            "Definitions from DD-Ranking (arXiv:2505.13300, "
            "https://github.com/NUS-HPC-AI-Lab/DD-Ranking), computed here on mean accuracies "
            "over seeds.",
            "",
            _md_table(_label_robust_display(lr), index=False),
            "",
        ]
    if image:
        parts += ["## Accuracy vs IPC", "", f"![{label} vs IPC]({image})", ""]
    return "\n".join(parts)


def render_terminal(df: pd.DataFrame, *, metric: str = "top1_final",
                    title: str = "Benchmark report") -> str:
    """The report's markdown tables as plain text, for printing."""
    return _render_markdown(df, title=title, metric=metric)


# --------------------------------------------------------------------------------------------------
# Files, MLflow logging, entry point
# --------------------------------------------------------------------------------------------------


def write_report(df: pd.DataFrame, out_dir: Path, *, metric: str = "top1_final",
                 title: str = "Benchmark report") -> dict[str, Path]:
    """Write ``report.md``, ``table_<group>.csv`` per group, ``top1_vs_ipc.png`` (and
    ``label_robust.csv`` / ``storage.csv`` when they have rows) into ``out_dir``.

    Returns ``{file name: path}``. Each ``table_<group>.csv`` is :func:`paper_table_numeric` (long
    format: method, ipc, mean, std, n, best), ``<group>`` being ``protocol_labelmode_model``.
    """
    _check_metric(df, metric)
    check_artifact_keys(df)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}

    png = plot_top1_vs_ipc(df, out_dir / "top1_vs_ipc.png", metric=metric)
    for key, sub in iter_groups(df):
        name = f"table_{_group_slug(key)}.csv"
        paper_table_numeric(sub, metric=metric).to_csv(out_dir / name, index=False)
        paths[name] = out_dir / name
    lr = label_robust(df, metric=metric)
    if not lr.empty:
        lr.to_csv(out_dir / "label_robust.csv", index=False)
        paths["label_robust.csv"] = out_dir / "label_robust.csv"
    st = storage_table(df, human=False)
    if not st.empty:
        st.to_csv(out_dir / "storage.csv", index=False)
        paths["storage.csv"] = out_dir / "storage.csv"

    md = _render_markdown(df, title=title, metric=metric, image=png.name)
    (out_dir / "report.md").write_text(md, encoding="utf-8")
    paths["report.md"] = out_dir / "report.md"
    paths[png.name] = png
    return paths


def log_report(tracking_uri: str, experiment: str, paths: Mapping[str, Path] | Iterable[Path],
               parent_run_id: str | None = None) -> str:
    """Log the report files as artifacts under ``report/``; returns the run id used.

    With ``parent_run_id`` the files go to that run (which must exist); otherwise a new run named
    ``report`` tagged ``role=report`` is created in ``experiment`` and marked FINISHED.
    """
    from mlflow.exceptions import MlflowException

    files = list(paths.values()) if isinstance(paths, Mapping) else list(paths)
    missing = [str(p) for p in files if not Path(p).is_file()]
    if missing:
        raise OrchestratorError(f"report files not found: {', '.join(missing)}")
    client = _client(tracking_uri)
    exp = _get_experiment(client, experiment)
    created = False
    if parent_run_id:
        try:
            run = client.get_run(parent_run_id)
        except MlflowException as e:
            raise OrchestratorError(
                f"run {parent_run_id!r} not found at {client.tracking_uri}: cannot attach the "
                "report to it"
            ) from e
        if run.info.experiment_id != exp.experiment_id:
            raise OrchestratorError(
                f"run {parent_run_id!r} belongs to experiment id {run.info.experiment_id}, "
                f"not {experiment!r} (id {exp.experiment_id})"
            )
        run_id = parent_run_id
    else:
        run = client.create_run(exp.experiment_id, run_name="report",
                                tags={"role": "report"})
        run_id, created = run.info.run_id, True
    try:
        for p in files:
            client.log_artifact(run_id, str(p), artifact_path="report")
    except Exception:
        if created:
            client.set_terminated(run_id, status="FAILED")
        raise
    if created:
        client.set_terminated(run_id, status="FINISHED")
    return run_id


def run_report(tracking_uri: str, experiment: str, out_dir: Path, log: bool = True, *,
               parent_run_id: str | None = None, metric: str = "top1_final") -> dict[str, Path]:
    """Load the experiment's finished cells, write the report into ``out_dir``, optionally log it.

    Raises :class:`OrchestratorError` when the experiment is unknown or has no finished cell runs.
    """
    df = load_cell_runs(tracking_uri, experiment)
    if df.empty:
        raise OrchestratorError(
            f"experiment {experiment!r} has no FINISHED runs tagged role=cell yet: nothing to report"
        )
    paths = write_report(df, Path(out_dir), metric=metric,
                         title=f"Benchmark report: {experiment}")
    if log:
        log_report(tracking_uri, experiment, paths, parent_run_id)
    return paths
