"""DD-Ranking's label-robustness numbers: IOR, HLR and the label-robust score LRS.

Definitions from DD-Ranking (https://github.com/NUS-HPC-AI-Lab/DD-Ranking, README "Benchmark" and
``doc/introduction.md``; arXiv:2505.13300), computed on mean accuracies over seeds.
"""

from __future__ import annotations

import math
import re

import pandas as pd

from orchestrator.errors import OrchestratorError
from orchestrator.report.runs import CELL_KEYS, FULL, HARD, RANDOM, check_metric
from orchestrator.report.tables import in_method_order, seed_stats

LABEL_ROBUST_COLUMNS = ["protocol", "label_mode", "model", "method", "ipc", "n", "acc", "random_acc", "IOR",
                        "method_hard_acc", "full_hard_acc", "HLR", "LRS"]


def protocol_family(protocol: str) -> str:
    """The protocol without its label-mode suffix: ``fmnist-hard`` and ``fmnist-soft`` -> ``fmnist``.

    HLR compares a soft-label cell with the *hard-label* run of the same method, which is logged
    under the sibling protocol; this is how the two are matched.
    """
    return re.sub(r"[-_](hard|soft)$", "", str(protocol))


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


def _means(df: pd.DataFrame, keys: list[str], metric: str, name: str) -> pd.DataFrame:
    return seed_stats(df, keys, metric)[[*keys, "mean"]].rename(columns={"mean": name})


def label_robust(df: pd.DataFrame, *, metric: str = "top1_final", w: float = 0.5) -> pd.DataFrame:
    """IOR, HLR and the label-robust score (LRS) per method, IPC and label mode, where computable.

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
    ``full`` where IOR or HLR is available. Columns: :data:`LABEL_ROBUST_COLUMNS` (percent /
    percentage points).
    """
    check_metric(df, metric)
    if df.empty:
        return pd.DataFrame(columns=LABEL_ROBUST_COLUMNS)
    d = df[df[metric].notna()].assign(family=lambda x: x["protocol"].map(protocol_family))
    grid = d[(d["method"] != FULL) & d["ipc"].notna()]
    cells = seed_stats(grid, list(CELL_KEYS), metric).rename(columns={"mean": "acc"})
    same_cell = ["protocol", "label_mode", "model", "ipc"]
    randoms = _means(grid[grid["method"] == RANDOM], same_cell, metric, "random_acc")
    hard = _means(grid[grid["label_mode"] == HARD], ["family", "model", "method", "ipc"], metric,
                  "method_hard_acc")
    full_hard = _means(d[(d["method"] == FULL) & (d["label_mode"] == HARD)], ["family", "model"], metric,
                       "full_hard_acc")
    out = (cells[cells["method"] != RANDOM].assign(family=lambda x: x["protocol"].map(protocol_family))
           .merge(randoms, on=same_cell, how="left")
           .merge(hard, on=["family", "model", "method", "ipc"], how="left")
           .merge(full_hard, on=["family", "model"], how="left"))
    out["IOR"] = out["acc"] - out["random_acc"]
    out["HLR"] = out["full_hard_acc"] - out["method_hard_acc"]
    out = out[out["IOR"].notna() | out["HLR"].notna()]
    out["LRS"] = [lrs_from(i, h, w=w) for i, h in zip(out["IOR"], out["HLR"])]
    out = in_method_order(out.astype({"ipc": "Int64"}), ["protocol", "label_mode", "model"])
    return out[LABEL_ROBUST_COLUMNS]
