"""Tests for pca.scores: hand-computed Forgetting / EL2N / AUM, and streaming == array core."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from orchestrator.errors import DataError
from pca.scores import (
    aum_scores,
    combine_runs,
    compute_scores,
    el2n_scores,
    forgetting_counts,
    forgetting_rank_score,
    scores_from_arrays,
)
from trainers.dynamics import DynamicsWriter, sample_metrics

T, F = True, False
# 6 samples x 4 epochs (rows = epochs). Sample 4 is absent from epoch 1, sample 5 is never recorded.
CORRECT = np.array(
    [
        # s0 s1 s2 s3 s4 s5
        [T, F, T, F, T, F],
        [F, F, F, T, F, F],  # s4 absent here
        [T, F, T, T, F, F],
        [T, F, F, T, T, F],
    ]
)
SEEN = np.ones_like(CORRECT)
SEEN[1, 4] = False
SEEN[:, 5] = False
P_TARGET = np.array(
    [
        [0.6, 0.1, 0.5, 0.2, 0.7, 0.0],
        [0.3, 0.2, 0.2, 0.6, 0.0, 0.0],
        [0.7, 0.1, 0.6, 0.8, 0.3, 0.0],
        [0.9, 0.3, 0.25, 0.9, 0.8, 0.0],
    ]
)
P_OTHER = np.array(
    [
        [0.3, 0.5, 0.4, 0.6, 0.2, 0.0],
        [0.5, 0.4, 0.7, 0.3, 0.0, 0.0],
        [0.2, 0.6, 0.3, 0.1, 0.6, 0.0],
        [0.05, 0.4, 0.5, 0.05, 0.1, 0.0],
    ]
)
MARGIN = np.array(  # logit margins z_label - max other z
    [
        [1.0, -2.0, 0.5, -1.0, 2.0, 0.0],
        [-1.0, -1.0, -2.0, 1.0, 0.0, 0.0],
        [2.0, -3.0, 1.0, 3.0, -1.0, 0.0],
        [4.0, -2.0, -1.0, 4.0, 2.0, 0.0],
    ]
)
EL2N = np.array(
    [
        [0.5, 1.0, 0.6, 0.9, 0.4, 0.0],
        [0.8, 1.1, 1.0, 0.5, 9.9, 0.0],
        [0.2, 1.2, 0.5, 0.3, 0.7, 0.0],
        [0.1, 0.9, 0.9, 0.1, 0.2, 0.0],
    ]
)


def test_forgetting_hand_example() -> None:
    # s0 T F T T: forgotten once (epoch 0->1), then learned and never forgotten again -> 1
    # s1 F F F F: never learned -> literal count 0
    # s2 T F T F: forgotten twice -> 2
    # s3 F T T T: learned, never forgotten -> 0
    # s4 T - F T: absent in epoch 1, so epoch 0 -> 2 is consecutive: T->F counts -> 1
    # s5 never recorded -> 0 here (NaN in the frame)
    np.testing.assert_array_equal(forgetting_counts(CORRECT, SEEN), [1, 0, 2, 0, 1, 0])
    # without the mask, s4's absent epoch (F in the array) would count as a T->F at epoch 1
    assert forgetting_counts(CORRECT)[4] == 1  # T F F T: still one event, at a different epoch


def test_forgetting_skips_absent_epochs() -> None:
    correct = np.array([[T], [F], [T]])
    assert forgetting_counts(correct)[0] == 1
    assert forgetting_counts(correct, np.array([[T], [F], [T]]))[0] == 0  # T (absent) T


def test_forgetting_rank_score_puts_never_learned_hardest() -> None:
    # Toneva: a never-learned sample counts as many events as epochs it was seen (4), more than any
    # sample can be forgotten (at most 2 in 4 epochs)
    forgetting = np.array([1.0, 0.0, 2.0, 0.0, 1.0, np.nan])
    learned = np.array([T, F, T, T, T, F])
    seen = np.array([4, 4, 4, 4, 3, 0])
    np.testing.assert_array_equal(forgetting_rank_score(forgetting, learned, seen), [1, 4, 2, 0, 1, np.nan])


def test_el2n_first_k_epochs_hand_example() -> None:
    # first 2 epochs; s4 is absent from epoch 1 so only epoch 0 counts (its 9.9 is ignored)
    mean = el2n_scores(EL2N, SEEN, epochs=2, reduce="mean")
    np.testing.assert_allclose(mean[:5], [0.65, 1.05, 0.8, 0.7, 0.4])
    assert np.isnan(mean[5])
    total = el2n_scores(EL2N, SEEN, epochs=2, reduce="sum")
    np.testing.assert_allclose(total[:5], [1.3, 2.1, 1.6, 1.4, 0.4])
    np.testing.assert_allclose(el2n_scores(EL2N, SEEN, epochs=1)[:5], EL2N[0, :5])


def test_aum_hand_example() -> None:
    # Pleiss et al.: mean logit margin over the epochs seen
    # s0: (1 - 1 + 2 + 4) / 4; s1: -8 / 4; s2: -1.5 / 4; s3: 7 / 4; s4 (epochs 0, 2, 3): 3 / 3
    logit = aum_scores(MARGIN, SEEN)
    np.testing.assert_allclose(logit[:5], [1.5, -2.0, -0.375, 1.75, 1.0])
    # CCS's code: summed probability margin
    # s0: .3 - .2 + .5 + .85; s1: -.4 -.2 -.5 -.1; s2: .1 -.5 +.3 -.25; s3: -.4 +.3 +.7 +.85
    # s4 (epochs 0, 2, 3): .5 - .3 + .7
    probability = aum_scores(P_TARGET - P_OTHER, SEEN, aum_margin="probability")
    np.testing.assert_allclose(probability[:5], [1.45, -1.2, -0.35, 1.45, 0.9])
    assert np.isnan(logit[5]) and np.isnan(probability[5])


def test_scores_frame_hand_example() -> None:
    frame = scores_from_arrays(CORRECT, P_TARGET, P_OTHER, EL2N, margin=MARGIN, seen=SEEN, el2n_epochs=2)
    assert list(frame.index) == list(range(6))
    np.testing.assert_array_equal(frame["forgetting"], [1, 0, 2, 0, 1, np.nan])
    np.testing.assert_array_equal(frame["forgetting_rank_score"], [1, 4, 2, 0, 1, np.nan])
    np.testing.assert_array_equal(frame["ever_learned"], [T, F, T, T, T, F])
    np.testing.assert_array_equal(frame["epochs_seen"], [4, 4, 4, 4, 3, 0])
    np.testing.assert_allclose(frame["el2n"], [0.65, 1.05, 0.8, 0.7, 0.4, np.nan])
    np.testing.assert_allclose(frame["aum"], [1.5, -2.0, -0.375, 1.75, 1.0, np.nan])
    ccs_style = scores_from_arrays(CORRECT, P_TARGET, P_OTHER, EL2N, seen=SEEN, el2n_epochs=2,
                                   aum_margin="probability")
    np.testing.assert_allclose(ccs_style["aum"], [1.45, -1.2, -0.35, 1.45, 0.9, np.nan])


def test_runs_combine_as_the_papers_do() -> None:
    # run b: every sample learned at every epoch (no forgetting), el2n .1, logit margin 5
    first = scores_from_arrays(CORRECT[:, :5], P_TARGET[:, :5], P_OTHER[:, :5], EL2N[:, :5], margin=MARGIN[:, :5],
                               seen=SEEN[:, :5], el2n_epochs=2)
    ones = np.ones((4, 5))
    second = scores_from_arrays(ones.astype(bool), ones, 0 * ones, 0.1 * ones, margin=5 * ones, el2n_epochs=2)
    both = combine_runs([first, second])
    # Toneva sums forgetting over runs; Paul et al. average EL2N over runs; AUM averaged too
    np.testing.assert_array_equal(both["forgetting_rank_score"], [1, 4, 2, 0, 1])
    np.testing.assert_allclose(both["el2n"], (np.array([0.65, 1.05, 0.8, 0.7, 0.4]) + 0.1) / 2)
    np.testing.assert_allclose(both["aum"], (np.array([1.5, -2.0, -0.375, 1.75, 1.0]) + 5) / 2)
    np.testing.assert_array_equal(both["epochs_seen"], [8, 8, 8, 8, 7])
    assert both["ever_learned"].all()


def _write_random_dynamics(dyn_dir: Path, n: int, epochs: int, seed: int = 0, ranks: int = 2) -> dict[str, np.ndarray]:
    """Shuffled, sharded dynamics with some samples dropped per epoch; returns the float16 [E, N] arrays."""
    rng = np.random.default_rng(seed)
    classes = 4
    labels = rng.integers(0, classes, n)
    arrays = {name: np.zeros((epochs, n)) for name in ("correct", "p_target", "p_other", "el2n", "margin")}
    seen = np.zeros((epochs, n), dtype=bool)
    writers = [DynamicsWriter(dyn_dir, r, flush_rows=16) for r in range(ranks)]
    for epoch in range(epochs):
        order = rng.permutation(n)[: n - 3]  # drop_last: 3 samples unseen this epoch
        logits = rng.normal(size=(n, classes)).astype(np.float32) * (1 + epoch)
        for rank, writer in enumerate(writers):
            shard = order[rank::ranks]
            for start in range(0, len(shard), 10):
                batch = shard[start : start + 10]
                writer.add(epoch, batch, logits[batch], labels[batch])
            writer.end_epoch()
        metrics = sample_metrics(logits[order], labels[order])
        seen[epoch, order] = True
        for name, values in metrics.items():
            stored = {"correct": bool, "margin": np.float32}.get(name, np.float16)  # the file's types
            arrays[name][epoch, order] = values.astype(stored)
    for writer in writers:
        writer.close()
    arrays["seen"] = seen
    return arrays


def test_streaming_equals_array_core(tmp_path: Path) -> None:
    arrays = _write_random_dynamics(tmp_path, n=60, epochs=5)
    streamed = compute_scores(tmp_path, 61, el2n_epochs=3)  # sample 60 never recorded
    core = scores_from_arrays(
        np.pad(arrays["correct"], ((0, 0), (0, 1))).astype(bool),
        np.pad(arrays["p_target"], ((0, 0), (0, 1))),
        np.pad(arrays["p_other"], ((0, 0), (0, 1))),
        np.pad(arrays["el2n"], ((0, 0), (0, 1))),
        margin=np.pad(arrays["margin"], ((0, 0), (0, 1))),
        seen=np.pad(arrays["seen"], ((0, 0), (0, 1))),
        el2n_epochs=3,
    )
    assert list(streamed.columns) == list(core.columns)
    for column in core.columns:
        np.testing.assert_allclose(streamed[column].to_numpy(float), core[column].to_numpy(float), rtol=1e-12)
    assert np.isnan(streamed.loc[60, "aum"]) and streamed.loc[60, "epochs_seen"] == 0
    assert (streamed["epochs_seen"].iloc[:60] >= 2).all()


def test_duplicate_rows_in_an_epoch_use_the_first(tmp_path: Path) -> None:
    writer = DynamicsWriter(tmp_path)
    logits = np.array([[5.0, 0.0], [0.0, 5.0]], dtype=np.float32)
    writer.add(0, np.array([0, 0]), logits, np.array([0, 0]))  # padded duplicate: right, then wrong
    writer.end_epoch()
    writer.close()
    frame = compute_scores(tmp_path, 1)
    assert frame.loc[0, "epochs_seen"] == 1 and bool(frame.loc[0, "ever_learned"])


def test_errors(tmp_path: Path) -> None:
    (tmp_path / "rank-000").mkdir()
    with pytest.raises(DataError, match="no complete epoch"):
        compute_scores(tmp_path, 4)
    writer = DynamicsWriter(tmp_path)
    writer.add(0, np.array([7]), np.zeros((1, 2)), np.array([0]))
    writer.end_epoch()
    writer.close()
    with pytest.raises(DataError, match="full training set"):
        compute_scores(tmp_path, 4)
    with pytest.raises(ValueError, match="el2n_reduce"):
        compute_scores(tmp_path, 8, el2n_reduce="max")


def test_compute_scores_memory_flat_in_epochs(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    n = 4_000
    for name, epochs in (("short", 3), ("long", 15)):
        with DynamicsWriter(tmp_path / name) as writer:
            for epoch in range(epochs):
                writer.add(epoch, rng.permutation(n), rng.normal(size=(n, 5)).astype(np.float32), rng.integers(0, 5, n))
                writer.end_epoch()
    compute_scores(tmp_path / "short", n)  # warm-up
    peaks = {}
    for name in ("short", "long"):
        tracemalloc.start()
        compute_scores(tmp_path / name, n)
        peaks[name] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peaks["long"] <= 1.3 * peaks["short"], peaks
