"""Subset selection by pruning rule (docs/protocol.md §Selection).

Owns the rule registry ``RULES`` (name -> ``RuleSpec``), the two budgets and CCS:

- Budgets: ``ipc`` keeps exactly ``ipc`` samples of every class (class-balanced, the benchmark's
  setting); ``fraction`` keeps fraction * N samples, rounded half up, of the whole set (not balanced).
  Each class (or the whole set) is one *pool*; the rule picks ``budget`` samples from each pool.
- Monotonic rules (forgetting, el2n, aum) keep the hardest samples; ``reverse=True`` keeps the
  easiest instead (PCA's prune step: reversed EL2N = lowest EL2N first). **Ties are broken by a
  seeded random draw** (the pool's generator), never by sample index, in both directions.
- ``random``: a seeded uniform choice per pool.
- ``ccs`` (Zheng et al., ICLR'23, coverage-centric coreset selection) over a base rule's score
  (``ccs_score``, default "aum"):
  1. drop the hardest ``mis_ratio`` fraction, ranked by AUM (lowest first) whatever the base score,
     as CCS's code does (``--mis-key accumulated_margin``). If ``mis_ratio`` is None it follows the
     overall prune rate 1 - selected / N: 0.3 when pruning >= 90%, 0.2 when >= 80%, else 0.1. A
     pool is never cut below its budget (fewer of its samples are dropped);
  2. split the remaining score range [min, max] into ``strata`` equal-width bins (the maximum
     falls in the last bin; a constant score puts everything in one bin);
  3. ``ccs_allocate``: visit the non-empty strata from the smallest (ties: lower bin first), each
     gets min(its size, remaining budget // strata not yet visited); the integer remainder thus
     flows to the larger strata visited later, and the last one takes what is left;
  4. sample uniformly without replacement inside each stratum with the pool's seeded generator.
  ``ccs_scope="global"`` (default, CCS's own setting): steps 1-2 run once over the whole set
  (drop count floor(mis_ratio * N), bin edges from the whole set's kept scores); only steps 3-4
  run per class, because the benchmark fixes IPC. ``ccs_scope="class"``: all four steps per pool.

Every pool draws from its own generator ``numpy.random.default_rng([seed, pool_key])`` (pool key 0
for the whole set, class + 1 for a class), so a class's pick does not depend on the other classes;
the global CCS drop uses ``default_rng([seed, 0, 1])``.
Output: sample indices ordered by class, then by rank within the class (hardest first, or
easiest first with ``reverse``); random and ccs have no rank, their picks are in ascending index.

To add a rule: write a picker ``(Pool) -> np.ndarray`` if none fits, then add one line to RULES.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from orchestrator.errors import ConfigError, DataError, did_you_mean


@dataclass(frozen=True)
class Pool:
    """One pool to pick from: a class (class-balanced) or the whole set (fraction)."""

    indices: np.ndarray  # sample indices, ascending
    hardness: np.ndarray | None  # aligned with indices; higher = harder; None for random
    budget: int
    rng: np.random.Generator
    reverse: bool = False
    mis_ratio: float = 0.0
    strata: int = 50
    drop_hardness: np.ndarray | None = None  # ccs: AUM as 'higher = harder', ranks the mislabelled drop
    strata_ids: np.ndarray | None = None  # ccs global: each member's stratum, -1 if dropped


Picker = Callable[[Pool], np.ndarray]
CCS_SCOPES = ("global", "class")


@dataclass(frozen=True)
class RuleSpec:
    """How a rule picks: its picker, the score column it reads and which direction is hard."""

    pick: Picker
    score_column: str | None = None  # column of pca.scores.compute_scores' frame
    higher_is_harder: bool = True
    reversible: bool = False  # whether reverse=True (easy first) means something
    uses_base_score: bool = False  # ccs: the score comes from the rule named by ccs_score


# -- pickers ---------------------------------------------------------------------------------
def hard_order(hardness: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Positions from hardest to easiest; equal scores in a seeded random order."""
    return np.lexsort((rng.random(hardness.shape[0]), -hardness))


def rank_hard_first(pool: Pool) -> np.ndarray:
    """Positions in the pool from hardest to easiest (easiest to hardest if reversed); ties by seeded draw."""
    assert pool.hardness is not None
    return hard_order(-pool.hardness if pool.reverse else pool.hardness, pool.rng)


def pick_monotonic(pool: Pool) -> np.ndarray:
    """The ``budget`` hardest samples (easiest if reversed), in rank order."""
    return pool.indices[rank_hard_first(pool)[: pool.budget]]


def pick_random(pool: Pool) -> np.ndarray:
    """A uniform seeded choice of ``budget`` samples, ascending index."""
    return np.sort(pool.rng.choice(pool.indices, size=pool.budget, replace=False))


def ccs_allocate(stratum_sizes: list[int], budget: int) -> list[int]:
    """Budget per stratum, smallest non-empty strata first (see the module docstring, step 3).

    Worked example: sizes [1, 2, 10, 10], budget 12 -> visit 1 (12//4=3, takes 1), 2 (11//3=3,
    takes 2), the first 10 (9//2=4, takes 4), the last 10 (5//1, takes 5) -> [1, 2, 4, 5].
    """
    sizes = [int(s) for s in stratum_sizes]
    if budget < 0 or any(s < 0 for s in sizes):
        raise ValueError(f"budget and stratum sizes must be >= 0, got {budget} and {sizes}")
    if budget > sum(sizes):
        raise ValueError(f"budget {budget} exceeds the {sum(sizes)} samples in the strata")
    order = sorted((i for i, s in enumerate(sizes) if s > 0), key=lambda i: (sizes[i], i))
    allocation = [0] * len(sizes)
    remaining = budget
    for visited, i in enumerate(order):
        take = min(sizes[i], remaining // (len(order) - visited))
        allocation[i] = take
        remaining -= take
    assert remaining == 0, "smallest-first allocation always meets a feasible budget"
    return allocation


def stratum_ids(values: np.ndarray, strata: int) -> np.ndarray:
    """Equal-width bin of each value over [min, max] in ``strata`` bins (max in the last bin)."""
    low, high = float(np.min(values)), float(np.max(values))
    if high == low:
        return np.zeros(values.shape[0], dtype=np.int64)
    ids = np.floor((values - low) / ((high - low) / strata)).astype(np.int64)
    return np.clip(ids, 0, strata - 1)


def ccs_drop_count(pool_size: int, budget: int, mis_ratio: float) -> int:
    """How many of the hardest samples CCS drops: floor(mis_ratio * size), capped to keep the budget."""
    return max(0, min(int(np.floor(mis_ratio * pool_size + 1e-9)), pool_size - budget))


def ccs_strata_ids(hardness: np.ndarray, drop_hardness: np.ndarray, group: np.ndarray, room: np.ndarray,
                   drop: int, strata: int, rng: np.random.Generator) -> np.ndarray:
    """Stratum of every sample, -1 for the ``drop`` hardest by ``drop_hardness`` (steps 1-2).

    ``group`` [n] is each sample's pool, ``room`` [pools] how many of a pool may be dropped (its
    size minus its budget): walking hardest first, a sample is dropped while its pool has room.
    """
    order = hard_order(drop_hardness, rng)
    ordered_groups = group[order]
    by_group = np.argsort(ordered_groups, kind="stable")  # hardest first within each pool
    sorted_groups = ordered_groups[by_group]
    rank = np.empty(order.size, dtype=np.int64)  # rank of order[i] among the hardest of its pool
    rank[by_group] = np.arange(order.size) - np.searchsorted(sorted_groups, sorted_groups)
    eligible = order[rank < room[ordered_groups]]
    ids = np.full(hardness.shape[0], -1, dtype=np.int64)
    kept = np.ones(hardness.shape[0], dtype=bool)
    kept[eligible[:drop]] = False
    if kept.any():
        ids[kept] = stratum_ids(hardness[kept], strata)
    return ids


def pool_strata_ids(pool: Pool) -> np.ndarray:
    """ccs_scope="class": the drop and the strata within this pool alone."""
    assert pool.hardness is not None and pool.drop_hardness is not None
    size = pool.indices.shape[0]
    drop = ccs_drop_count(size, pool.budget, pool.mis_ratio)
    return ccs_strata_ids(pool.hardness, pool.drop_hardness, np.zeros(size, dtype=np.int64),
                          np.array([size - pool.budget]), drop, pool.strata, pool.rng)


def pick_ccs(pool: Pool) -> np.ndarray:
    """Coverage-centric selection (module docstring, steps 1-4), ascending index."""
    ids = pool.strata_ids if pool.strata_ids is not None else pool_strata_ids(pool)
    kept = np.flatnonzero(ids >= 0)
    if pool.budget == 0 or kept.size == 0:
        return pool.indices[:0]
    allocation = ccs_allocate(np.bincount(ids[kept], minlength=pool.strata).tolist(), pool.budget)
    chosen = [pool.rng.choice(kept[ids[kept] == b], size=n, replace=False) for b, n in enumerate(allocation) if n]
    return np.sort(pool.indices[np.concatenate(chosen)])


RULES: dict[str, RuleSpec] = {
    "random": RuleSpec(pick_random),
    "forgetting": RuleSpec(pick_monotonic, "forgetting_rank_score", higher_is_harder=True, reversible=True),
    "el2n": RuleSpec(pick_monotonic, "el2n", higher_is_harder=True, reversible=True),
    "aum": RuleSpec(pick_monotonic, "aum", higher_is_harder=False, reversible=True),
    "ccs": RuleSpec(pick_ccs, uses_base_score=True),
}


# -- validation and helpers ------------------------------------------------------------------
def easy_first(rule: str) -> bool:
    """Whether PCA keeps the easiest samples of ``rule`` (the monotonic rules); random and CCS pick as they do alone."""
    return get_rule(rule).reversible


def get_rule(rule: str) -> RuleSpec:
    """The registered spec of ``rule``, or a ConfigError suggesting close names."""
    if rule in RULES:
        return RULES[rule]
    raise ConfigError(f"unknown pruning rule {rule!r}: {did_you_mean(rule, RULES, n=3, cutoff=0.4)}"
                      f"known rules: {', '.join(sorted(RULES))}")


def default_mis_ratio(prune_rate: float) -> float:
    """CCS's hard-cutoff ratio from the prune rate: 0.3 at >= 90%, 0.2 at >= 80%, else 0.1."""
    if prune_rate >= 0.9:
        return 0.3
    if prune_rate >= 0.8:
        return 0.2
    return 0.1


def fraction_budget(fraction: float, num_samples: int) -> int:
    """Samples kept by a global fraction: fraction * N rounded half up."""
    return int(np.floor(fraction * num_samples + 0.5))


def _check_budget_args(ipc: int | None, fraction: float | None, num_samples: int) -> None:
    if (ipc is None) == (fraction is None):
        raise ConfigError("give exactly one of ipc (images per class, class-balanced) or fraction (of all samples)")
    if ipc is not None and ipc < 1:
        raise ConfigError(f"ipc must be >= 1, got {ipc}")
    if fraction is not None and not 0 < fraction <= 1:
        raise ConfigError(f"fraction must lie in (0, 1], got {fraction}")
    if fraction is not None and fraction_budget(fraction, num_samples) < 1:
        raise ConfigError(f"fraction {fraction} of {num_samples} samples selects nothing: raise fraction")


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0 or not np.issubdtype(labels.dtype, np.integer):
        raise ConfigError(
            f"labels must be a non-empty 1-D integer array, got dtype {labels.dtype} shape {labels.shape}"
        )
    if labels.min() < 0:
        raise ConfigError("labels must be >= 0")
    return labels.astype(np.int64)


def _base_spec(rule: str, spec: RuleSpec, ccs_score: str) -> RuleSpec:
    if not spec.uses_base_score:
        return spec
    base = get_rule(ccs_score)
    if base.score_column is None or base.uses_base_score:
        scored = sorted(name for name, s in RULES.items() if s.score_column)
        raise ConfigError(f"{rule} needs a scored base rule as ccs_score, one of {scored}; got {ccs_score!r}")
    return base


def _hardness(rule: str, spec: RuleSpec, scores: pd.DataFrame | None, num_samples: int) -> np.ndarray:
    """Score column of ``spec`` as 'higher = harder', checked for length, index and missing values."""
    if scores is None:
        raise ConfigError(f"rule {rule!r} needs scores: pass pca.scores.compute_scores(...)")
    column = spec.score_column
    if column not in scores.columns:
        raise DataError(f"scores have no column {column!r} needed by rule {rule!r}; columns: {list(scores.columns)}")
    if len(scores) != num_samples or not np.array_equal(scores.index.to_numpy(), np.arange(num_samples)):
        raise DataError(f"scores must be indexed 0..{num_samples - 1} like labels; got {len(scores)} rows")
    values = scores[column].to_numpy(dtype=np.float64, na_value=np.nan)
    missing = np.flatnonzero(np.isnan(values))
    if missing.size:
        raise DataError(
            f"{missing.size} samples have no {column!r} score (first: {missing[:5].tolist()}): they were never "
            "recorded in the training dynamics; record dynamics on the full training set "
            "(and check num_samples and el2n_epochs) before selecting"
        )
    return values if spec.higher_is_harder else -values


def _pools(labels: np.ndarray, ipc: int | None, fraction: float | None) -> list[tuple[int, np.ndarray, int]]:
    """(pool key, ascending sample indices, budget) per pool."""
    if fraction is not None:
        return [(0, np.arange(labels.size), fraction_budget(fraction, labels.size))]
    assert ipc is not None
    order = np.argsort(labels, kind="stable")
    classes, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
    too_small = classes[counts < ipc]
    if too_small.size:
        raise ConfigError(
            f"ipc={ipc} exceeds the size of {too_small.size} classes (e.g. class {int(too_small[0])} has "
            f"{int(counts[classes == too_small[0]][0])} samples; smallest class has {int(counts.min())}): "
            f"lower ipc to <= {int(counts.min())} or select by fraction"
        )
    return [(int(c) + 1, order[s : s + n], ipc) for c, s, n in zip(classes, starts, counts)]


def _resolve_mis_ratio(mis_ratio: float | None, total_budget: int, num_samples: int) -> float:
    ratio = default_mis_ratio(1.0 - total_budget / num_samples) if mis_ratio is None else float(mis_ratio)
    if not 0.0 <= ratio < 1.0:
        raise ConfigError(f"mis_ratio must lie in [0, 1), got {mis_ratio}")
    return ratio


def global_strata_ids(hardness: np.ndarray, drop_hardness: np.ndarray, pools: list[tuple[int, np.ndarray, int]],
                      ratio: float, strata: int, seed: int) -> np.ndarray:
    """ccs_scope="global": one drop of floor(ratio * N) over the whole set, bin edges from all kept scores."""
    group = np.zeros(hardness.shape[0], dtype=np.int64)
    room = np.zeros(len(pools), dtype=np.int64)
    for number, (_, indices, budget) in enumerate(pools):
        group[indices] = number
        room[number] = indices.shape[0] - budget
    drop = int(np.floor(ratio * hardness.shape[0] + 1e-9))
    return ccs_strata_ids(hardness, drop_hardness, group, room, drop, strata, np.random.default_rng([seed, 0, 1]))


# -- entry point -------------------------------------------------------------------------------
def select(
    rule: str,
    *,
    labels: np.ndarray,
    scores: pd.DataFrame | None,
    ipc: int | None = None,
    fraction: float | None = None,
    reverse: bool = False,
    seed: int = 0,
    mis_ratio: float | None = None,
    strata: int = 50,
    ccs_score: str = "aum",
    ccs_scope: str = "global",
) -> np.ndarray:
    """Indices of the samples ``rule`` keeps: exactly ``ipc`` per class, or ``fraction`` of all.

    ``labels`` [N] are the class ids of the full training set; ``scores`` is the frame of
    ``pca.scores.compute_scores`` (None is enough for "random"). See the module docstring.
    """
    spec = get_rule(rule)
    labels = _check_labels(labels)
    _check_budget_args(ipc, fraction, labels.size)
    if reverse and not spec.reversible:
        reversible = sorted(name for name, s in RULES.items() if s.reversible)
        raise ConfigError(f"reverse=True (easy first) applies to the monotonic rules {reversible}, not {rule!r}")
    if seed < 0:
        raise ConfigError(f"seed must be >= 0, got {seed}")
    if strata < 1:
        raise ConfigError(f"strata must be >= 1, got {strata}")
    if ccs_scope not in CCS_SCOPES:
        raise ConfigError(f"ccs_scope must be one of {list(CCS_SCOPES)}, got {ccs_scope!r}")
    base = _base_spec(rule, spec, ccs_score)
    hardness = None if base.score_column is None else _hardness(rule, base, scores, labels.size)
    drop_hardness = _hardness(rule, RULES["aum"], scores, labels.size) if spec.uses_base_score else None
    pools = _pools(labels, ipc, fraction)
    ratio = _resolve_mis_ratio(mis_ratio, sum(b for _, _, b in pools), labels.size) if spec.uses_base_score else 0.0
    strata_ids = None
    if spec.uses_base_score and ccs_scope == "global":
        strata_ids = global_strata_ids(hardness, drop_hardness, pools, ratio, strata, seed)
    picked = []
    for key, indices, budget in pools:
        part = {name: None if values is None else values[indices]
                for name, values in (("hardness", hardness), ("drop_hardness", drop_hardness),
                                     ("strata_ids", strata_ids))}
        rng = np.random.default_rng([seed, key])
        picked.append(spec.pick(Pool(indices, part["hardness"], budget, rng, reverse, ratio, strata,
                                     part["drop_hardness"], part["strata_ids"])))
    selected = np.concatenate(picked).astype(np.int64)
    return selected[np.argsort(labels[selected], kind="stable")]
