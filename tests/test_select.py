"""Tests for pca.select: CCS worked examples, class balance, direction per rule, properties."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from orchestrator.errors import ConfigError, DataError
from pca.select import (
    RULES,
    ccs_allocate,
    ccs_drop_count,
    default_mis_ratio,
    select,
    stratum_ids,
)

FAST = settings(max_examples=25, deadline=None, database=None)


def _scores(el2n=None, aum=None, forgetting=None, n: int | None = None) -> pd.DataFrame:
    n = n if n is not None else len(next(v for v in (el2n, aum, forgetting) if v is not None))
    rng = np.random.default_rng(123)
    columns = {
        "el2n": el2n if el2n is not None else rng.random(n),
        "aum": aum if aum is not None else rng.normal(size=n),
        "forgetting_rank_score": forgetting if forgetting is not None else rng.integers(0, 4, n).astype(float),
    }
    return pd.DataFrame({k: np.asarray(v, dtype=float) for k, v in columns.items()}, index=pd.RangeIndex(n))


# -- CCS -------------------------------------------------------------------------------------
def test_ccs_allocate_worked_examples() -> None:
    # smallest first: 1 gets min(1, 12//4=3)=1; 2 gets min(2, 11//3=3)=2; first 10 gets 9//2=4; last 10 gets 5
    assert ccs_allocate([1, 2, 10, 10], 12) == [1, 2, 4, 5]
    # empty strata are skipped; visit 3 (10//3=3), 5 (7//2=3), 20 (4)
    assert ccs_allocate([0, 5, 3, 20], 10) == [0, 3, 3, 4]
    # the remainder goes to the strata visited last (larger, or later among equal sizes)
    assert ccs_allocate([4, 4, 4], 7) == [2, 2, 3]
    assert ccs_allocate([3, 3], 6) == [3, 3]
    assert ccs_allocate([3, 0], 0) == [0, 0]
    with pytest.raises(ValueError, match="exceeds"):
        ccs_allocate([1, 2], 4)


@FAST
@given(st.lists(st.integers(0, 30), min_size=1, max_size=12), st.data())
def test_ccs_allocate_properties(sizes: list[int], data: st.DataObject) -> None:
    budget = data.draw(st.integers(0, sum(sizes)))
    allocation = ccs_allocate(sizes, budget)
    assert sum(allocation) == budget
    assert all(0 <= a <= s for a, s in zip(allocation, sizes))


def test_stratum_ids_equal_width() -> None:
    np.testing.assert_array_equal(stratum_ids(np.array([0.0, 0.24, 0.25, 0.5, 0.99, 1.0]), 4), [0, 0, 1, 2, 3, 3])
    np.testing.assert_array_equal(stratum_ids(np.array([2.0, 2.0, 2.0]), 50), [0, 0, 0])


def test_default_mis_ratio_and_drop_count() -> None:
    assert default_mis_ratio(0.95) == 0.3
    assert default_mis_ratio(0.9) == 0.3
    assert default_mis_ratio(0.85) == 0.2
    assert default_mis_ratio(0.5) == 0.1
    assert ccs_drop_count(100, 10, 0.3) == 30
    assert ccs_drop_count(10, 9, 0.3) == 1  # dropping 3 would leave 7 < 9: drop only 1


def test_ccs_worked_selection() -> None:
    # one class of 10 samples with aum = index: low AUM is hard.
    # mis_ratio .2 drops the 2 hardest (aum 0, 1). The rest, aum 2..9, splits into 2 equal-width
    # strata: {6,7,8,9} (easy) and {2,3,4,5} (hard), 4 each; budget 4 -> 2 from each.
    labels = np.zeros(10, dtype=np.int64)
    scores = _scores(aum=np.arange(10.0))
    for seed in range(5):
        chosen = select("ccs", labels=labels, scores=scores, ipc=4, mis_ratio=0.2, strata=2, seed=seed)
        assert len(chosen) == 4
        assert not {0, 1} & set(chosen.tolist())
        assert len({2, 3, 4, 5} & set(chosen.tolist())) == 2
        assert len({6, 7, 8, 9} & set(chosen.tolist())) == 2


def test_ccs_small_strata_first_in_select() -> None:
    # aum: 1 sample at 0, 2 at 1, 10 at 2, 10 at 3 -> with 4 strata over [0, 3] (width .75) the
    # strata have sizes 1, 2, 10, 10 (bins of 0, 1, 2, 3). No mis drop; budget 12 -> [1, 2, 4, 5].
    aum = np.array([0.0] + [1.0] * 2 + [2.0] * 10 + [3.0] * 10)
    labels = np.zeros(aum.size, dtype=np.int64)
    chosen = select("ccs", labels=labels, scores=_scores(aum=aum), ipc=12, mis_ratio=0.0, strata=4)
    picked = aum[chosen]
    # bins are ordered by hardness (-aum), so aum 3 is bin 0 and aum 2 bin 1: among the equal sizes
    # bin 0 is visited first (9 // 2 = 4) and bin 1 last (5)
    assert [(picked == v).sum() for v in (0.0, 1.0, 2.0, 3.0)] == [1, 2, 5, 4]


def test_ccs_drops_by_aum_and_stratifies_the_base_score() -> None:
    # CCS's code drops its mislabelled fraction by AUM (lowest first) whatever score it stratifies:
    # aum = index, so the two lowest (0, 1) go, even though el2n (= index) calls 8, 9 the hardest
    labels = np.zeros(10, dtype=np.int64)
    scores = _scores(el2n=np.arange(10.0), aum=np.arange(10.0))
    chosen = select("ccs", labels=labels, scores=scores, ipc=8, mis_ratio=0.2, ccs_score="el2n")
    assert set(chosen.tolist()) == set(range(2, 10))


def test_ccs_global_drop_and_strata_span_the_whole_set() -> None:
    # class 0 holds the 4 lowest AUMs. Zheng et al. drop the hardest 20% of the WHOLE set (4 of
    # 20): all from class 0, none from class 1. Per class, 20% of each class (2 + 2) would go.
    labels = np.repeat([0, 1], 10)
    aum = np.concatenate([np.arange(10.0), 10.0 + np.arange(10.0)])
    scores = _scores(aum=aum)
    for seed in range(5):
        whole = select("ccs", labels=labels, scores=scores, ipc=6, mis_ratio=0.2, strata=1, seed=seed)
        assert set(whole[:6].tolist()) == set(range(4, 10))  # class 0 keeps only its 6 easiest
        per_class = select("ccs", labels=labels, scores=scores, ipc=6, mis_ratio=0.2, strata=1, seed=seed,
                           ccs_scope="class")
        assert not {10, 11} & set(per_class.tolist()) and not {0, 1} & set(per_class.tolist())
    # a class is never cut below its IPC: with ratio .5 (10 of 20) class 0 loses only 4
    floor = select("ccs", labels=labels, scores=scores, ipc=6, mis_ratio=0.5, strata=1)
    assert set(floor[:6].tolist()) == set(range(4, 10))


def test_ccs_global_strata_edges_come_from_the_whole_set() -> None:
    # class 0's scores lie in [0, 1), class 1's in [10, 11]: 2 global strata over [0, 11] put all of
    # class 0 in one stratum, so class 0's pick is uniform over it (may take any two); per class,
    # 2 strata split class 0 into [0, .5) and [.5, 1): one from each.
    labels = np.repeat([0, 1], 4)
    aum = np.array([0.0, 0.1, 0.9, 1.0, 10.0, 10.2, 10.8, 11.0])
    scores = _scores(aum=aum)
    per_class_picks = {tuple(select("ccs", labels=labels, scores=scores, ipc=2, mis_ratio=0.0, strata=2, seed=s,
                                    ccs_scope="class")[:2].tolist()) for s in range(20)}
    assert all(len({0, 1} & set(p)) == 1 for p in per_class_picks)
    global_picks = {tuple(select("ccs", labels=labels, scores=scores, ipc=2, mis_ratio=0.0, strata=2,
                                 seed=s)[:2].tolist()) for s in range(20)}
    assert (0, 1) in global_picks or (2, 3) in global_picks


# -- monotonic rules, balance, order -------------------------------------------------------
LABELS = np.array([0, 1, 0, 1, 0, 1, 0, 2, 2, 2])
EL2N = np.array([0.5, 0.1, 0.9, 0.8, 0.2, 0.3, 0.9, 0.4, 0.7, 0.6])


def test_el2n_keeps_highest_reverse_keeps_lowest() -> None:
    scores = _scores(el2n=EL2N)
    # class 0: samples 0 (.5), 2 (.9), 4 (.2), 6 (.9) -> hardest 2 and 6 (a tie: order drawn)
    hard = select("el2n", labels=LABELS, scores=scores, ipc=2)
    assert sorted(hard[:2].tolist()) == [2, 6] and hard[2:].tolist() == [3, 5, 8, 9]
    easy = select("el2n", labels=LABELS, scores=scores, ipc=2, reverse=True)
    assert easy.tolist() == [4, 0, 1, 5, 7, 9]


def test_aum_keeps_lowest_reverse_keeps_highest() -> None:
    scores = _scores(aum=EL2N)
    assert select("aum", labels=LABELS, scores=scores, ipc=1).tolist() == [4, 1, 7]
    assert select("aum", labels=LABELS, scores=scores, ipc=1, reverse=True).tolist() == [2, 3, 8]


def test_forgetting_ranks_never_learned_first() -> None:
    labels = np.zeros(4, dtype=np.int64)
    # rank score from pca.scores: never-learned sample 3 carries max + 1
    scores = _scores(forgetting=np.array([1.0, 0.0, 2.0, 3.0]))
    assert select("forgetting", labels=labels, scores=scores, ipc=2).tolist() == [3, 2]
    assert select("forgetting", labels=labels, scores=scores, ipc=2, reverse=True).tolist() == [1, 0]


def test_fraction_rounds_half_up_and_rejects_empty() -> None:
    labels = np.zeros(5, dtype=np.int64)
    assert select("random", labels=labels, scores=None, fraction=0.5).size == 3
    with pytest.raises(ConfigError, match="selects nothing"):
        select("random", labels=labels, scores=None, fraction=0.05)


def test_fraction_is_global_not_balanced() -> None:
    chosen = select("el2n", labels=LABELS, scores=_scores(el2n=EL2N), fraction=0.3)
    assert sorted(chosen.tolist()) == [2, 3, 6]  # .9, .9, .8: two of class 0
    assert chosen[2] == 3  # ordered by class, then rank


@pytest.mark.parametrize("rule", sorted(RULES))
def test_every_rule_is_class_balanced(rule: str) -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(5), [7, 12, 30, 9, 15])
    rng.shuffle(labels)
    chosen = select(rule, labels=labels, scores=_scores(n=labels.size), ipc=6, seed=3)
    np.testing.assert_array_equal(np.bincount(labels[chosen]), [6] * 5)
    assert len(set(chosen.tolist())) == chosen.size
    assert np.all(np.diff(labels[chosen]) >= 0)


def test_ties_are_broken_by_a_seeded_draw_not_by_index() -> None:
    # 100 samples of one class, all tied (e.g. zero forgetting events): the pick is a seeded draw
    labels = np.zeros(100, dtype=np.int64)
    scores = _scores(forgetting=np.zeros(100))
    picks = [select("forgetting", labels=labels, scores=scores, ipc=5, seed=seed) for seed in range(3)]
    assert picks[0].tolist() != list(range(5)) and picks[0].tolist() != picks[1].tolist()
    np.testing.assert_array_equal(picks[2], select("forgetting", labels=labels, scores=scores, ipc=5, seed=2))
    # the draw only orders ties: a unique hardest sample is always first
    scores.loc[57, "forgetting_rank_score"] = 3.0
    assert select("forgetting", labels=labels, scores=scores, ipc=1, seed=1).tolist() == [57]


# -- errors ----------------------------------------------------------------------------------
def test_errors_are_clear() -> None:
    scores = _scores(el2n=EL2N)
    with pytest.raises(ConfigError, match="lower ipc to <= 3"):
        select("el2n", labels=LABELS, scores=scores, ipc=4)
    with pytest.raises(ValueError, match="did you mean 'el2n'"):
        select("el2m", labels=LABELS, scores=scores, ipc=1)
    with pytest.raises(ConfigError, match="exactly one"):
        select("el2n", labels=LABELS, scores=scores)
    with pytest.raises(ConfigError, match="exactly one"):
        select("el2n", labels=LABELS, scores=scores, ipc=1, fraction=0.5)
    with pytest.raises(ConfigError, match="needs scores"):
        select("aum", labels=LABELS, scores=None, ipc=1)
    with pytest.raises(ConfigError, match="reverse"):
        select("random", labels=LABELS, scores=None, ipc=1, reverse=True)
    with pytest.raises(ConfigError, match="ccs_score"):
        select("ccs", labels=LABELS, scores=scores, ipc=1, ccs_score="random")
    with pytest.raises(ConfigError, match="ccs_scope"):
        select("ccs", labels=LABELS, scores=scores, ipc=1, ccs_scope="pool")


def test_unrecorded_samples_raise() -> None:
    el2n = EL2N.copy()
    el2n[5] = np.nan
    with pytest.raises(DataError, match="never recorded"):
        select("el2n", labels=LABELS, scores=_scores(el2n=el2n), ipc=1)


def test_random_needs_no_scores() -> None:
    chosen = select("random", labels=LABELS, scores=None, ipc=2, seed=1)
    np.testing.assert_array_equal(np.bincount(LABELS[chosen]), [2, 2, 2])


# -- properties ------------------------------------------------------------------------------
@st.composite
def problems(draw: st.DrawFn) -> tuple[np.ndarray, pd.DataFrame, int]:
    class_sizes = draw(st.lists(st.integers(1, 25), min_size=1, max_size=5))
    labels = np.repeat(np.arange(len(class_sizes)), class_sizes)
    perm = np.random.default_rng(draw(st.integers(0, 1000))).permutation(labels.size)
    n = labels.size
    ties = st.lists(st.integers(0, 3).map(float), min_size=n, max_size=n)  # many ties
    scores = _scores(el2n=draw(ties), aum=draw(ties), forgetting=draw(ties))
    ipc = draw(st.integers(1, min(class_sizes)))
    return labels[perm], scores, ipc


@FAST
@given(problems(), st.sampled_from(sorted(RULES)), st.integers(0, 2**16), st.booleans(),
       st.sampled_from(["global", "class"]))
def test_ipc_selection_properties(problem, rule: str, seed: int, reverse: bool, scope: str) -> None:
    labels, scores, ipc = problem
    reverse = reverse and RULES[rule].reversible
    chosen = select(rule, labels=labels, scores=scores, ipc=ipc, seed=seed, reverse=reverse, strata=3,
                    ccs_scope=scope)
    assert chosen.dtype == np.int64
    assert chosen.size == ipc * np.unique(labels).size
    assert np.unique(chosen).size == chosen.size
    assert np.all(np.bincount(labels[chosen]) == ipc)
    again = select(rule, labels=labels, scores=scores, ipc=ipc, seed=seed, reverse=reverse, strata=3,
                   ccs_scope=scope)
    np.testing.assert_array_equal(chosen, again)


@FAST
@given(problems(), st.sampled_from(sorted(RULES)), st.floats(0.05, 1.0), st.integers(0, 2**16))
def test_fraction_selection_properties(problem, rule: str, fraction: float, seed: int) -> None:
    labels, scores, _ = problem
    budget = int(np.floor(fraction * labels.size + 0.5))
    assume(budget >= 1)
    chosen = select(rule, labels=labels, scores=scores, fraction=fraction, seed=seed)
    assert chosen.size == budget
    assert np.unique(chosen).size == chosen.size
    assert chosen.min() >= 0 and chosen.max() < labels.size
    np.testing.assert_array_equal(chosen, select(rule, labels=labels, scores=scores, fraction=fraction, seed=seed))


@FAST
@given(st.integers(0, 2**16), st.integers(0, 2**16))
def test_random_differs_across_seeds(seed_a: int, seed_b: int) -> None:
    # 10 classes of 50, ipc 5: C(50, 5)^10 subsets, so distinct seeds collide with negligible probability
    labels = np.repeat(np.arange(10), 50)
    a = select("random", labels=labels, scores=None, ipc=5, seed=seed_a)
    b = select("random", labels=labels, scores=None, ipc=5, seed=seed_b)
    assert (seed_a == seed_b) == np.array_equal(a, b)
