"""Per-sample pruning scores from recorded training dynamics (docs/protocol.md §Pruning scores).

Owns Forgetting, EL2N and AUM. The scores of one run are computed by streaming its dynamics epoch
by epoch (``trainers.dynamics.iter_epoch_tables``) into a ``ScoreAccumulator`` whose state is a
handful of [N] arrays: memory is O(N) and flat in the number of epochs recorded. Several
independent runs (``prune.score_runs``) are combined by ``combine_runs``. The same per-epoch
update functions back the array-level helpers (``forgetting_counts``, ``el2n_scores``,
``aum_scores``, ``scores_from_arrays``) that take small [E, N] arrays, for hand-checked examples.

Definitions (per sample, per run, over the epochs in which the sample was recorded):

- ``forgetting``: number of correct -> wrong transitions between consecutive recorded epochs
  (Toneva et al. 2019: one presentation per epoch here). A sample never classified correctly
  (``ever_learned`` False) keeps its literal count, 0. ``forgetting_rank_score`` equals
  ``forgetting`` except that never-learned samples get the number of epochs they were recorded
  in, more than any count can reach (at most half the epochs), so they rank hardest, as Toneva's
  ``order_examples_by_forgetting.py`` does; the rule "forgetting" ranks by this column.
- ``el2n``: mean (or sum, ``el2n_reduce``) of ||softmax - onehot||_2 over the first
  ``el2n_epochs`` epochs recorded: early in training (Paul et al. 2021). A sample missing from
  some of them is averaged over those it appears in, and is NaN if it appears in none.
- ``aum``: ``aum_margin="logit"`` (default, Pleiss et al. 2020): the mean over the recorded
  epochs of the logit margin z_label - max_{other} z; ``"probability"`` (CCS's code): the sum of
  p_target - max p_other.
- ``epochs_seen``: number of recorded epochs that contain the sample.

Across runs (``combine_runs``): forgetting and its rank score are summed (Toneva sums over seeds),
EL2N and AUM averaged (Paul et al. average EL2N over runs), ``epochs_seen`` summed,
``ever_learned`` true if learned in any run.

A sample never recorded (``epochs_seen`` 0) has NaN in every score column; selecting on it raises.
Score columns are float64 (so they can hold NaN); ``forgetting`` holds integral values.
If one epoch holds a sample twice (e.g. a distributed sampler padding its last batch), the first
row is used.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from orchestrator.errors import DataError
from trainers.dynamics import iter_epoch_tables

EL2N_REDUCTIONS = ("mean", "sum")
AUM_MARGINS = ("logit", "probability")
SCORE_COLUMNS = ("forgetting", "forgetting_rank_score", "ever_learned", "el2n", "aum", "epochs_seen")
_NOT_SEEN = np.int8(-1)


# -- per-epoch updates (in place, ``index`` unique within one call) ---------------------------
def forgetting_update(last_correct: np.ndarray, forgetting: np.ndarray, index: np.ndarray, correct: np.ndarray) -> None:
    """Count a forgetting event where the previous recorded epoch was correct and this one is not.

    ``last_correct`` is int8: -1 not yet recorded, 0 wrong, 1 correct.
    """
    forgetting[index] += (last_correct[index] == 1) & ~correct
    last_correct[index] = correct


def el2n_update(total: np.ndarray, count: np.ndarray, index: np.ndarray, el2n: np.ndarray) -> None:
    """Add one epoch's EL2N norms."""
    total[index] += el2n
    count[index] += 1


def aum_update(total: np.ndarray, index: np.ndarray, margin: np.ndarray) -> None:
    """Add one epoch's margins (logit or probability, see the module docstring)."""
    total[index] += margin


def forgetting_rank_score(forgetting: np.ndarray, ever_learned: np.ndarray, epochs_seen: np.ndarray) -> np.ndarray:
    """``forgetting`` with never-learned (but recorded) samples set to their recorded epochs: they rank hardest."""
    score = np.asarray(forgetting, dtype=np.float64).copy()
    never = ~np.isnan(score) & ~np.asarray(ever_learned, dtype=bool)
    score[never] = np.asarray(epochs_seen, dtype=np.float64)[never]
    return score


def reduce_el2n(total: np.ndarray, count: np.ndarray, reduce: str) -> np.ndarray:
    """Mean or sum of the accumulated EL2N; NaN where nothing was accumulated."""
    _check_reduce(reduce)
    out = np.full(total.shape, np.nan)
    has = count > 0
    out[has] = total[has] / count[has] if reduce == "mean" else total[has]
    return out


def _check_reduce(reduce: str) -> None:
    if reduce not in EL2N_REDUCTIONS:
        raise ValueError(f"el2n_reduce must be one of {EL2N_REDUCTIONS}, got {reduce!r}")


def _check_margin(aum_margin: str) -> None:
    if aum_margin not in AUM_MARGINS:
        raise ValueError(f"aum_margin must be one of {AUM_MARGINS}, got {aum_margin!r}")


def epoch_margin(aum_margin: str, p_target, p_other, margin) -> np.ndarray:
    """The AUM margin of one epoch: the logit margin, or p_target - p_other."""
    if aum_margin == "logit":
        return np.asarray(margin, dtype=np.float64)
    return np.asarray(p_target, dtype=np.float64) - np.asarray(p_other, dtype=np.float64)


def reduce_aum(total: np.ndarray, epochs_seen: np.ndarray, aum_margin: str) -> np.ndarray:
    """Mean logit margin (Pleiss) or summed probability margin (CCS); NaN where never seen."""
    seen = epochs_seen > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        value = total / np.maximum(epochs_seen, 1) if aum_margin == "logit" else total
    return np.where(seen, value, np.nan)


# -- streaming state -------------------------------------------------------------------------
class ScoreAccumulator:
    """O(N) state of one run, fed one epoch at a time, in epoch order."""

    def __init__(self, num_samples: int, *, el2n_epochs: int = 2, el2n_reduce: str = "mean",
                 aum_margin: str = "logit") -> None:
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if el2n_epochs < 1:
            raise ValueError(f"el2n_epochs must be >= 1, got {el2n_epochs}")
        _check_reduce(el2n_reduce)
        _check_margin(aum_margin)
        self.num_samples = num_samples
        self.el2n_epochs = el2n_epochs
        self.el2n_reduce = el2n_reduce
        self.aum_margin = aum_margin
        self.epochs_added = 0
        self.last_correct = np.full(num_samples, _NOT_SEEN, dtype=np.int8)
        self.forgetting = np.zeros(num_samples, dtype=np.int64)
        self.ever_learned = np.zeros(num_samples, dtype=bool)
        self.el2n_total = np.zeros(num_samples, dtype=np.float64)
        self.el2n_count = np.zeros(num_samples, dtype=np.int64)
        self.aum_total = np.zeros(num_samples, dtype=np.float64)
        self.epochs_seen = np.zeros(num_samples, dtype=np.int64)

    def add_epoch(self, index: np.ndarray, correct: np.ndarray, p_target: np.ndarray, p_other: np.ndarray,
                  el2n: np.ndarray, margin: np.ndarray) -> None:
        """Add one epoch's rows (``index`` unique, within [0, num_samples)); ``margin`` = logit margin."""
        index = np.asarray(index, dtype=np.int64)
        correct = np.asarray(correct, dtype=bool)
        forgetting_update(self.last_correct, self.forgetting, index, correct)
        self.ever_learned[index] |= correct
        if self.epochs_added < self.el2n_epochs:
            el2n_update(self.el2n_total, self.el2n_count, index, np.asarray(el2n, dtype=np.float64))
        aum_update(self.aum_total, index, epoch_margin(self.aum_margin, p_target, p_other, margin))
        self.epochs_seen[index] += 1
        self.epochs_added += 1

    def frame(self) -> pd.DataFrame:
        """The run's scores, indexed by sample index 0..N-1 (see the module docstring)."""
        seen = self.epochs_seen > 0
        forgetting = np.where(seen, self.forgetting, np.nan)
        columns = {
            "forgetting": forgetting,
            "forgetting_rank_score": forgetting_rank_score(forgetting, self.ever_learned, self.epochs_seen),
            "ever_learned": self.ever_learned.copy(),
            "el2n": reduce_el2n(self.el2n_total, self.el2n_count, self.el2n_reduce),
            "aum": reduce_aum(self.aum_total, self.epochs_seen, self.aum_margin),
            "epochs_seen": self.epochs_seen.copy(),
        }
        return pd.DataFrame(columns, index=pd.RangeIndex(self.num_samples, name="index"))


def combine_runs(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """One frame from several independent runs' frames (module docstring: sums and means)."""
    if len(frames) == 1:
        return frames[0]
    stack = {column: np.stack([f[column].to_numpy(dtype=np.float64) for f in frames]) for column in SCORE_COLUMNS}
    columns = {
        "forgetting": stack["forgetting"].sum(axis=0),
        "forgetting_rank_score": stack["forgetting_rank_score"].sum(axis=0),
        "ever_learned": stack["ever_learned"].max(axis=0).astype(bool),
        "el2n": stack["el2n"].mean(axis=0),
        "aum": stack["aum"].mean(axis=0),
        "epochs_seen": stack["epochs_seen"].sum(axis=0).astype(np.int64),
    }
    return pd.DataFrame(columns, index=frames[0].index)


# -- array-level helpers (small [E, N] inputs; hand examples) -------------------------------
def _seen_mask(shape: tuple[int, int], seen: np.ndarray | None) -> np.ndarray:
    if seen is None:
        return np.ones(shape, dtype=bool)
    seen = np.asarray(seen, dtype=bool)
    if seen.shape != shape:
        raise ValueError(f"seen has shape {seen.shape}, expected {shape}")
    return seen


def scores_from_arrays(
    correct: np.ndarray,
    p_target: np.ndarray,
    p_other: np.ndarray,
    el2n: np.ndarray,
    *,
    margin: np.ndarray | None = None,
    seen: np.ndarray | None = None,
    el2n_epochs: int = 2,
    el2n_reduce: str = "mean",
    aum_margin: str = "logit",
) -> pd.DataFrame:
    """Scores of one run from in-memory [E, N] arrays (row e = e-th recorded epoch; ``seen`` masks absent samples).

    ``margin`` is the [E, N] logit margin (needed with ``aum_margin="logit"``).
    """
    correct = np.asarray(correct, dtype=bool)
    if correct.ndim != 2:
        raise ValueError(f"arrays must be [epochs, samples], got shape {correct.shape}")
    if margin is None and aum_margin == "logit":
        raise ValueError("aum_margin='logit' needs the logit margins: pass margin")
    mask = _seen_mask(correct.shape, seen)
    p_target, p_other, el2n = (np.asarray(a, dtype=np.float64) for a in (p_target, p_other, el2n))
    margin = np.zeros(correct.shape) if margin is None else np.asarray(margin, dtype=np.float64)
    acc = ScoreAccumulator(correct.shape[1], el2n_epochs=el2n_epochs, el2n_reduce=el2n_reduce, aum_margin=aum_margin)
    for e in range(correct.shape[0]):
        idx = np.flatnonzero(mask[e])
        acc.add_epoch(idx, correct[e, idx], p_target[e, idx], p_other[e, idx], el2n[e, idx], margin[e, idx])
    return acc.frame()


def forgetting_counts(correct: np.ndarray, seen: np.ndarray | None = None) -> np.ndarray:
    """Forgetting events per sample from a [E, N] bool array (recorded epochs only)."""
    correct = np.asarray(correct, dtype=bool)
    mask = _seen_mask(correct.shape, seen)
    last = np.full(correct.shape[1], _NOT_SEEN, dtype=np.int8)
    counts = np.zeros(correct.shape[1], dtype=np.int64)
    for e in range(correct.shape[0]):
        idx = np.flatnonzero(mask[e])
        forgetting_update(last, counts, idx, correct[e, idx])
    return counts


def el2n_scores(
    el2n: np.ndarray, seen: np.ndarray | None = None, *, epochs: int = 10, reduce: str = "mean"
) -> np.ndarray:
    """EL2N per sample over the first ``epochs`` rows of a [E, N] array; NaN if never seen there."""
    el2n = np.asarray(el2n, dtype=np.float64)
    mask = _seen_mask(el2n.shape, seen)
    total = np.zeros(el2n.shape[1])
    count = np.zeros(el2n.shape[1], dtype=np.int64)
    for e in range(min(epochs, el2n.shape[0])):
        idx = np.flatnonzero(mask[e])
        el2n_update(total, count, idx, el2n[e, idx])
    return reduce_el2n(total, count, reduce)


def aum_scores(margin: np.ndarray, seen: np.ndarray | None = None, *, aum_margin: str = "logit") -> np.ndarray:
    """AUM per sample from a [E, N] array of margins: their mean (logit) or sum (probability); NaN if never seen."""
    _check_margin(aum_margin)
    margin = np.asarray(margin, dtype=np.float64)
    mask = _seen_mask(margin.shape, seen)
    total = np.zeros(margin.shape[1])
    for e in range(margin.shape[0]):
        idx = np.flatnonzero(mask[e])
        aum_update(total, idx, margin[e, idx])
    return reduce_aum(total, mask.sum(axis=0), aum_margin)


# -- from disk -------------------------------------------------------------------------------
def _epoch_columns(epoch: int, table: pa.Table, num_samples: int) -> tuple[np.ndarray, ...]:
    index = table.column("index").to_numpy()
    if index.size and (index.min() < 0 or index.max() >= num_samples):
        raise DataError(
            f"epoch {epoch} of the dynamics holds sample index {int(index.max())} (or a negative one), "
            f"outside [0, {num_samples}): pass the size of the full training set the dynamics were recorded on"
        )
    index, first = np.unique(index, return_index=True)

    def column(name: str) -> np.ndarray:
        return table.column(name).to_numpy()[first]

    return index, column("correct"), column("p_target"), column("p_other"), column("el2n"), column("margin")


def run_scores(dyn_dir: Path, num_samples: int, *, epochs: list[int] | None = None, el2n_epochs: int = 2,
               el2n_reduce: str = "mean", aum_margin: str = "logit") -> pd.DataFrame:
    """One run's scores from the dynamics under ``dyn_dir``, streamed epoch by epoch.

    ``epochs``: the epochs to read (a verified manifest's); default: those complete on every rank.
    """
    acc = ScoreAccumulator(num_samples, el2n_epochs=el2n_epochs, el2n_reduce=el2n_reduce, aum_margin=aum_margin)
    for epoch, table in iter_epoch_tables(dyn_dir, epochs):
        acc.add_epoch(*_epoch_columns(epoch, table, num_samples))
    if acc.epochs_added == 0:
        raise DataError(f"no complete epoch of training dynamics under {dyn_dir}: train with a DynamicsWriter first")
    return acc.frame()


def compute_scores(dyn_dirs: Path | list[Path], num_samples: int, **options) -> pd.DataFrame:
    """Forgetting, EL2N, AUM per sample from one or several runs' dynamics (``combine_runs``).

    Returns a DataFrame indexed by sample index 0..num_samples-1 with the columns of
    ``SCORE_COLUMNS`` (see the module docstring). ``options``: those of ``run_scores``.
    """
    dirs = [dyn_dirs] if isinstance(dyn_dirs, (str, Path)) else list(dyn_dirs)
    return combine_runs([run_scores(Path(d), num_samples, **options) for d in dirs])
