"""Tests for trainers.dynamics: per-sample values, file layout, atomic epochs, flat memory, manifests."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from orchestrator.errors import DataError
from trainers.dynamics import DynamicsWriter, epoch_file, iter_epoch_tables, read_epochs, sample_metrics, \
    verify_manifest, write_manifest


def _expected(logits: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Reference values computed independently with numpy in float64."""
    z = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    rows = np.arange(len(labels))
    onehot = np.eye(logits.shape[1])[labels]
    others = np.where(onehot == 1, -np.inf, probs)
    other_logits = np.where(onehot == 1, -np.inf, logits)
    return {
        "correct": logits.argmax(axis=1) == labels,
        "p_target": probs[rows, labels],
        "p_other": others.max(axis=1),
        "el2n": np.linalg.norm(probs - onehot, axis=1),
        "margin": logits[rows, labels] - other_logits.max(axis=1),
    }


def test_sample_metrics_hand_example() -> None:
    # softmax([0, ln 3]) = [0.25, 0.75]; label 0: wrong, p_target .25, p_other .75, el2n = sqrt(2)*.75
    logits = torch.tensor([[0.0, np.log(3.0)], [0.0, np.log(3.0)]])
    out = sample_metrics(logits, np.array([0, 1]))
    np.testing.assert_array_equal(out["correct"], [False, True])
    np.testing.assert_allclose(out["p_target"], [0.25, 0.75], atol=1e-6)
    np.testing.assert_allclose(out["p_other"], [0.75, 0.25], atol=1e-6)
    np.testing.assert_allclose(out["el2n"], [np.sqrt(2) * 0.75, np.sqrt(2) * 0.25], atol=1e-6)
    # Pleiss et al.'s AUM margin is on logits: z_label - max other z = -ln 3 and +ln 3
    np.testing.assert_allclose(out["margin"], [-np.log(3.0), np.log(3.0)], atol=1e-6)


def test_two_ranks_three_epochs_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n, classes = 40, 5
    labels = rng.integers(0, classes, n)
    logits = {e: rng.normal(size=(n, classes)).astype(np.float32) * 3 for e in range(3)}
    writers = [DynamicsWriter(tmp_path, rank, flush_rows=7) for rank in range(2)]
    for epoch in range(3):
        order = rng.permutation(n)  # shuffled each epoch; rank r gets every other sample
        for rank, writer in enumerate(writers):
            shard = order[rank::2]
            for start in range(0, len(shard), 6):
                batch = shard[start : start + 6]
                writer.add(epoch, batch, torch.from_numpy(logits[epoch][batch]), labels[batch])
            writer.end_epoch()
    for writer in writers:
        writer.close()

    for rank in range(2):
        files = sorted(p.name for p in (tmp_path / f"rank-{rank:03d}").iterdir())
        assert files == ["epoch-0000.parquet", "epoch-0001.parquet", "epoch-0002.parquet"]
    assert read_epochs(tmp_path) == [0, 1, 2]

    seen_epochs = []
    for epoch, table in iter_epoch_tables(tmp_path):
        seen_epochs.append(epoch)
        assert table.schema.field("p_target").type == pa.float16()
        assert table.schema.field("epoch").type == pa.int16()
        assert table.num_rows == n
        index = table.column("index").to_numpy()
        assert sorted(index.tolist()) == list(range(n))
        assert set(table.column("epoch").to_numpy().tolist()) == {epoch}
        want = _expected(logits[epoch][index].astype(np.float64), labels[index])
        np.testing.assert_array_equal(table.column("correct").to_numpy(), want["correct"])
        for name in ("p_target", "p_other", "el2n", "margin"):
            got = table.column(name).to_numpy().astype(np.float64)
            np.testing.assert_allclose(got, want[name], atol=2e-3, rtol=2e-3)
    assert seen_epochs == [0, 1, 2]


def test_unfinished_epoch_never_visible(tmp_path: Path) -> None:
    logits = np.zeros((4, 3), dtype=np.float32)
    with pytest.warns(UserWarning, match="discarded"):
        with DynamicsWriter(tmp_path, 0, flush_rows=2) as writer:
            writer.add(0, np.arange(4), logits, np.zeros(4, dtype=np.int64))
            writer.end_epoch()
            writer.add(1, np.arange(4), logits, np.zeros(4, dtype=np.int64))  # flushed to tmp, never ended
    assert read_epochs(tmp_path) == [0]
    assert sorted(p.name for p in (tmp_path / "rank-000").iterdir()) == ["epoch-0000.parquet"]


def test_epoch_missing_on_one_rank_is_not_read(tmp_path: Path) -> None:
    logits = np.zeros((2, 3), dtype=np.float32)
    for rank, epochs in ((0, [0, 1]), (1, [0])):
        writer = DynamicsWriter(tmp_path, rank)
        for epoch in epochs:
            writer.add(epoch, np.array([rank, rank + 2]), logits, np.array([0, 1]))
            writer.end_epoch()
        writer.close()
    assert epoch_file(tmp_path, 1, 0).exists()
    assert read_epochs(tmp_path) == [0]


def test_add_rejects_mixed_epochs_and_bad_shapes(tmp_path: Path) -> None:
    writer = DynamicsWriter(tmp_path)
    writer.add(0, np.arange(2), np.zeros((2, 3)), np.array([0, 1]))
    with pytest.raises(ValueError, match="end_epoch"):
        writer.add(1, np.arange(2), np.zeros((2, 3)), np.array([0, 1]))
    with pytest.raises(ValueError, match="indices"):
        writer.add(0, np.arange(3), np.zeros((2, 3)), np.array([0, 1]))
    with pytest.raises(ValueError, match="labels"):
        writer.add(0, np.arange(2), np.zeros((2, 3)), np.array([0, 3]))
    writer.end_epoch()
    writer.close()


def test_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="record dynamics"):
        read_epochs(tmp_path / "nope")


def test_memory_flat_in_epochs(tmp_path: Path) -> None:
    n, classes, batch = 5_000, 10, 500
    rng = np.random.default_rng(0)
    labels = rng.integers(0, classes, n)

    def write_epoch(writer: DynamicsWriter, epoch: int) -> None:
        order = rng.permutation(n)
        for start in range(0, n, batch):
            idx = order[start : start + batch]
            logits = torch.from_numpy(rng.standard_normal((len(idx), classes), dtype=np.float32))
            writer.add(epoch, idx, logits, labels[idx])
        writer.end_epoch()

    with DynamicsWriter(tmp_path / "warmup", 0) as warmup:  # one-off lazy initialisation of torch/arrow
        write_epoch(warmup, 0)
    writer = DynamicsWriter(tmp_path, 0, flush_rows=1_000)
    tracemalloc.start()
    try:
        peaks = {}
        for epoch in range(20):
            write_epoch(writer, epoch)
            peaks[epoch + 1] = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        writer.close()
    # The buffered rows are numpy-backed (traced); a writer keeping rows across epochs grows ~10x here.
    assert peaks[20] <= 1.5 * peaks[2], peaks
    assert read_epochs(tmp_path) == list(range(20))
    assert pq.ParquetFile(epoch_file(tmp_path, 0, 19)).metadata.num_rows == n


def _sealed_run(tmp_path: Path, epochs: int = 3, n: int = 6) -> Path:
    out = tmp_path / "dyn"
    with DynamicsWriter(out, 0) as writer:
        for epoch in range(epochs):
            writer.add(epoch, np.arange(n), np.zeros((n, 2), dtype=np.float32), np.zeros(n, dtype=np.int64))
            writer.end_epoch()
    write_manifest(out, epochs=epochs, num_samples=n, key="k1")
    return out


def test_manifest_accepts_the_sealed_run(tmp_path: Path) -> None:
    out = _sealed_run(tmp_path)
    manifest = verify_manifest(out, epochs=3, key="k1")
    assert manifest["num_samples"] == 6 and len(manifest["files"]) == 3
    assert manifest["files"]["rank-000/epoch-0002.parquet"]["rows"] == 6


def test_manifest_rejects_a_truncated_file(tmp_path: Path) -> None:
    out = _sealed_run(tmp_path)
    path = epoch_file(out, 0, 1)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match=r"epoch-0001.parquet changed.*teacher --force"):
        verify_manifest(out, epochs=3, key="k1")


def test_manifest_rejects_a_deleted_or_extra_epoch(tmp_path: Path) -> None:
    out = _sealed_run(tmp_path)
    extra = epoch_file(out, 1, 0)
    extra.parent.mkdir()
    extra.write_bytes(epoch_file(out, 0, 0).read_bytes())
    with pytest.raises(DataError, match=r"rank-001/epoch-0000.parquet is not in"):
        verify_manifest(out, epochs=3, key="k1")
    extra.unlink()
    epoch_file(out, 0, 2).unlink()
    with pytest.raises(DataError, match=r"epoch-0002.parquet is missing \(epoch 2\)"):
        verify_manifest(out, epochs=3, key="k1")


def test_manifest_rejects_other_settings_and_unsealed_runs(tmp_path: Path) -> None:
    out = _sealed_run(tmp_path)
    with pytest.raises(DataError, match="recorded with other settings .*epochs is 3, the config needs 8"):
        verify_manifest(out, epochs=8, key="k1")
    with pytest.raises(DataError, match="key is k1, the config needs k2"):
        verify_manifest(out, epochs=3, key="k2")
    (out / "manifest.json").unlink()
    with pytest.raises(DataError, match="no valid manifest.json"):
        verify_manifest(out, epochs=3, key="k1")
    with pytest.raises(DataError, match=r"lack epochs \[3\]"):
        write_manifest(out, epochs=4, num_samples=6, key="k1")
