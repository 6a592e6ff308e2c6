"""Tables over cell rows: the paper table (methods x IPC, mean ± std over seeds) and the storage/time
table, built with ``groupby(...).agg`` and ``pivot``.

"mean ± std" is over seeds: the mean and the *sample* standard deviation (pandas' default
``ddof=1``, the unbiased estimator usual in papers' "± std over N runs"). With a single seed there
is no std: the cell shows the mean and ``(n=1)``. Method ``random`` is listed first; ``full`` (the
whole training set) has no meaningful IPC, so it is kept out of the grid and shown under it.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from orchestrator.report.runs import CELL_KEYS, DASH, FULL, check_metric, method_order, one_group

PM = "±"
NUMERIC_COLUMNS = ["protocol", "label_mode", "model", "metric", "method", "ipc", "mean", "std", "n", "best"]
STORAGE_MEANS = ["image_bytes", "soft_label_bytes", "train_s", "images_per_s", "optimizer_steps"]
#: distillation cost, shown beside storage when any run logged it (``distill/*`` metrics)
GENERATION_MEANS = ["generation_s", "generation_images"]


def seed_stats(df: pd.DataFrame, keys: list[str], metric: str) -> pd.DataFrame:
    """``keys`` + ``mean``, ``std`` (ddof=1, NaN for one value) and ``n`` (non-missing values)."""
    return (df.groupby(keys, sort=False, dropna=False)[metric]
              .agg(mean="mean", std="std", n="count").reset_index())


def fmt_mean_std(mean: float, std: float, n: int, decimals: int = 1) -> str:
    if n == 0 or not math.isfinite(mean):
        return DASH
    if n == 1:
        return f"{mean:.{decimals}f} (n=1)"
    return f"{mean:.{decimals}f} {PM} {std:.{decimals}f}"


def in_method_order(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Rows sorted by ``keys``, then methods in :func:`method_order`, then IPC (missing last)."""
    order = {m: i for i, m in enumerate(method_order(df["method"]))}
    return (df.assign(_o=df["method"].map(order))
              .sort_values([*keys, "_o", "ipc"], na_position="last", kind="mergesort")
              .drop(columns="_o").reset_index(drop=True))


# ---------------------------------------------------------------------------------- paper table


def paper_table_numeric(df: pd.DataFrame, *, metric: str = "top1_final") -> pd.DataFrame:
    """Long-format numbers behind :func:`paper_table`, for one group (and its CSV).

    Columns: ``protocol, label_mode, model, metric, method, ipc, mean, std, n, best``; one row per
    (method, IPC) that has runs, plus the ``full`` reference (``ipc`` missing, ``best`` False).
    ``std`` is the sample std over seeds (ddof=1), NaN when ``n == 1``. ``best`` marks the highest
    mean of its IPC column among the non-``full`` methods (ties all marked).
    """
    check_metric(df, metric)
    group = one_group(df, "paper_table")
    if group is None:
        return pd.DataFrame(columns=NUMERIC_COLUMNS)
    grid = seed_stats(df[(df["method"] != FULL) & df["ipc"].notna()], ["method", "ipc"], metric)
    full = df[df["method"] == FULL]
    if not full.empty:
        grid = pd.concat([grid, seed_stats(full.assign(ipc=pd.NA), ["method", "ipc"], metric)],
                         ignore_index=True)
    out = grid.astype({"ipc": "Int64", "mean": "float64", "std": "float64", "n": "int64"})
    col_max = out[(out["method"] != FULL) & out["mean"].notna()].groupby("ipc")["mean"].transform("max")
    out["best"] = False
    out.loc[col_max.index, "best"] = np.isclose(out.loc[col_max.index, "mean"], col_max, rtol=0.0, atol=1e-9)
    protocol, label_mode, model = group
    out = out.assign(protocol=protocol, label_mode=label_mode, model=model, metric=metric)
    return in_method_order(out, [])[NUMERIC_COLUMNS]


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
    text = [fmt_mean_std(r.mean, r.std, r.n, decimals) for r in num.itertuples(index=False)]
    text = [f"**{t}**" if best else t for t, best in zip(text, num["best"])]
    ipcs = sorted(int(i) for i in num["ipc"].unique())
    table = num.assign(text=text, ipc=num["ipc"].astype(int)).pivot(index="method", columns="ipc", values="text")
    table = table.reindex(index=pd.Index(method_order(num["method"]), name="method"),
                          columns=pd.Index(ipcs, name="ipc"))
    return table.fillna(DASH).astype(object)


def full_reference_line(df: pd.DataFrame, metric: str, decimals: int = 1) -> str | None:
    """``Whole training set (`full`): mean ± std (n=N)``, or None without ``full`` runs."""
    values = df.loc[df["method"] == FULL, metric]
    n = int(values.count())
    if n == 0:
        return None
    text = fmt_mean_std(float(values.mean()), float(values.std()), n, decimals)
    return f"Whole training set (`full`): {text}" + (f" (n={n})" if n > 1 else "")


# ------------------------------------------------------------------------------- storage / time


def human_bytes(n: float) -> str:
    """``1536 -> '1.5 KiB'`` (IEC units); NaN -> ``'—'``."""
    if n is None or pd.isna(n) or not math.isfinite(float(n)):
        return DASH
    n = float(n)
    if abs(n) < 1024:
        return f"{n:.0f} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024.0
        if abs(n) < 1024:
            return f"{n:.1f} {unit}"
    return f"{n / 1024.0:.1f} PiB"


def human_seconds(s: float) -> str:
    """``42 -> '42.0 s'``, ``600 -> '10.0 min'``, ``7200 -> '2.00 h'``; NaN -> ``'—'``."""
    if s is None or pd.isna(s) or not math.isfinite(float(s)):
        return DASH
    s = float(s)
    if s < 120:
        return f"{s:.1f} s"
    if s < 2 * 3600:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.2f} h"


def _count(v) -> str:
    return DASH if pd.isna(v) else f"{v:,.0f}"


def generation_columns(df: pd.DataFrame) -> list[str]:
    """The ``distill/*`` cost columns some run of ``df`` logged (none for pruning-only reports)."""
    return [c for c in GENERATION_MEANS if c in df.columns and df[c].notna().any()]


def storage_table(df: pd.DataFrame, *, human: bool = True) -> pd.DataFrame:
    """Storage and cost per (protocol, label_mode, model, method, ipc).

    Columns: the keys, ``n`` (runs), ``image_bytes``, ``soft_label_bytes``, ``total_bytes`` (means
    over seeds), ``train_s`` (mean training time), ``images_per_s`` (mean throughput),
    ``optimizer_steps`` (mean total steps: rows that train more steps at one IPC show it), then
    ``generation_s`` / ``generation_images`` (mean distillation time and images made) when some run
    logged them. With ``human=True`` (default) bytes and times are strings in human units
    (KiB/MiB/GiB, s/min/h); with ``human=False`` they are numbers. ``full`` rows have no IPC.
    """
    keys = list(CELL_KEYS)
    means = STORAGE_MEANS + generation_columns(df)
    cols = keys + ["n", "image_bytes", "soft_label_bytes", "total_bytes", *means[2:]]
    if df.empty:
        return pd.DataFrame(columns=cols)
    out = (df.groupby(keys, sort=False, dropna=False)
             .agg(n=("method", "size"), **{c: (c, "mean") for c in means}).reset_index())
    out["total_bytes"] = out["image_bytes"] + out["soft_label_bytes"].fillna(0.0)
    out = in_method_order(out.astype({"ipc": "Int64"}), keys[:3])[cols]
    if human:
        for c in ("image_bytes", "soft_label_bytes", "total_bytes"):
            out[c] = out[c].map(human_bytes).astype(object)
        for c in ("train_s", "generation_s"):
            if c in out:
                out[c] = out[c].map(human_seconds).astype(object)
        for c in ("images_per_s", "optimizer_steps", "generation_images"):
            if c in out:
                out[c] = out[c].map(_count).astype(object)
    return out
