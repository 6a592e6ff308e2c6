"""Per-sample training dynamics: the on-disk record the pruning scores are computed from.

Owns the file layout and the writer that runs inside each training worker (one writer per rank,
no Ray import; pass ``ray.train.get_context().get_world_rank()`` as ``rank``). Per sample and
per epoch it stores what Forgetting, EL2N and AUM need, computed from the logits with a float32
softmax:

    index     int64    stable position of the sample in the full training set (survives
                       shuffling, sharding and augmentation: it is the dataset row, not the batch slot)
    epoch     int16
    correct   bool     argmax(logits) == label
    p_target  float16  softmax probability of the label
    p_other   float16  largest softmax probability among the other classes
    el2n      float16  || softmax(logits) - onehot(label) ||_2
    margin    float32  logit margin z_label - max_{other} z (Pleiss et al. 2020's AUM margin)

Layout: ``out_dir/rank-{rank:03d}/epoch-{epoch:04d}.parquet``, one file per (rank, epoch). Rows are
buffered and flushed as parquet row groups every ``flush_rows`` rows, so the writer's memory is
bounded by that buffer, independent of the epoch size and of the number of epochs. An epoch is
written to a hidden ``.tmp`` file and renamed on ``end_epoch()``: a crashed epoch is never read.

A finished run is sealed by ``write_manifest`` (``out_dir/manifest.json``: expected epochs, number
of samples, rows and sha256 of every epoch file); ``verify_manifest`` checks all of it before any
score is computed, so a truncated, missing or extra file is a clear ``DataError``, never a silent
score over fewer epochs (docs/protocol.md §Teachers and caches).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from orchestrator.errors import DataError
from orchestrator.files import write_text

SCHEMA = pa.schema(
    [
        ("index", pa.int64()),
        ("epoch", pa.int16()),
        ("correct", pa.bool_()),
        ("p_target", pa.float16()),
        ("p_other", pa.float16()),
        ("el2n", pa.float16()),
        ("margin", pa.float32()),
    ]
)
MANIFEST_FILE = "manifest.json"
MANIFEST_VERSION = 1
MAX_EPOCH = int(np.iinfo(np.int16).max)
DEFAULT_FLUSH_ROWS = 65_536
_RANK_DIR = re.compile(r"^rank-(\d+)$")
_EPOCH_FILE = re.compile(r"^epoch-(\d+)\.parquet$")


def rank_dir(out_dir: Path, rank: int) -> Path:
    """Directory of one rank's epoch files."""
    return Path(out_dir) / f"rank-{rank:03d}"


def epoch_file(out_dir: Path, rank: int, epoch: int) -> Path:
    """Final (complete) file of one rank and epoch."""
    return rank_dir(out_dir, rank) / f"epoch-{epoch:04d}.parquet"


def _to_numpy(x: torch.Tensor | np.ndarray, dtype: type) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype).reshape(-1)


def sample_metrics(logits: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> dict[str, np.ndarray]:
    """correct, p_target, p_other, el2n and the logit margin per row of ``logits`` [B, C].

    Probabilities come from a float32 softmax. Computed on the logits' device; only the [B]
    vectors are copied to the host. With a single class, p_other is 0 and the margin is z_label.
    """
    with torch.no_grad():
        x = torch.as_tensor(logits).detach().float()
        if x.ndim != 2:
            raise ValueError(f"logits must be [batch, classes], got shape {tuple(x.shape)}")
        y = torch.as_tensor(labels, device=x.device).long().reshape(-1)
        if y.shape[0] != x.shape[0]:
            raise ValueError(f"{y.shape[0]} labels for {x.shape[0]} rows of logits")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= x.shape[1]):
            raise ValueError(f"labels must lie in [0, {x.shape[1]}) for {x.shape[1]} classes")
        rows = torch.arange(x.shape[0], device=x.device)
        probs = torch.softmax(x, dim=1)
        p_target = probs[rows, y]
        residual = probs.clone()
        residual[rows, y] -= 1.0
        others = probs.clone()
        others[rows, y] = -1.0
        p_other = others.max(dim=1).values.clamp_min(0.0)
        other_logits = x.clone()
        other_logits[rows, y] = float("-inf")
        best_other = other_logits.max(dim=1).values if x.shape[1] > 1 else torch.zeros_like(p_target)
        metrics = {
            "correct": x.argmax(dim=1) == y,
            "p_target": p_target,
            "p_other": p_other,
            "el2n": residual.norm(dim=1),
            "margin": x[rows, y] - best_other,
        }
        return {name: value.cpu().numpy() for name, value in metrics.items()}


class DynamicsWriter:
    """Streams one rank's per-sample dynamics to one parquet file per epoch.

    Usage inside a worker::

        writer = DynamicsWriter(out_dir, rank)
        for epoch in range(epochs):
            for batch in loader:
                writer.add(epoch, batch["index"], logits, batch["label"])
            writer.end_epoch()
        writer.close()

    ``close()`` (and leaving a ``with`` block) discards an epoch that was not ended, so an
    interrupted epoch never appears on disk. Re-writing an epoch (after a resume) replaces it.
    """

    def __init__(self, out_dir: Path, rank: int = 0, *, flush_rows: int = DEFAULT_FLUSH_ROWS) -> None:
        if rank < 0:
            raise ValueError(f"rank must be >= 0, got {rank}")
        if flush_rows < 1:
            raise ValueError(f"flush_rows must be >= 1, got {flush_rows}")
        self.out_dir = Path(out_dir)
        self.rank = rank
        self.flush_rows = flush_rows
        self.dir = rank_dir(self.out_dir, rank)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._epoch: int | None = None
        self._writer: pq.ParquetWriter | None = None
        self._buffer: list[pa.RecordBatch] = []
        self._buffered_rows = 0
        self._closed = False

    # -- public API -------------------------------------------------------------------------
    def add(
        self,
        epoch: int,
        index: torch.Tensor | np.ndarray,
        logits: torch.Tensor | np.ndarray,
        labels: torch.Tensor | np.ndarray,
    ) -> None:
        """Record one batch: ``index`` [B] stable sample ids, ``logits`` [B, C], ``labels`` [B]."""
        self._open_epoch(epoch)
        ids = _to_numpy(index, np.int64)
        metrics = sample_metrics(logits, labels)
        if ids.shape[0] != metrics["correct"].shape[0]:
            raise ValueError(f"{ids.shape[0]} indices for {metrics['correct'].shape[0]} rows of logits")
        self._buffer.append(_record_batch(epoch, ids, metrics))
        self._buffered_rows += ids.shape[0]
        if self._buffered_rows >= self.flush_rows:
            self._flush()

    def end_epoch(self) -> None:
        """Finish the open epoch: flush, close and atomically rename its file. No-op if none is open."""
        if self._epoch is None:
            return
        self._flush(force_open=True)
        assert self._writer is not None
        self._writer.close()
        os.replace(self._tmp_path(self._epoch), epoch_file(self.out_dir, self.rank, self._epoch))
        self._reset_epoch()

    def close(self) -> None:
        """Release the writer; an epoch not ended with ``end_epoch()`` is discarded (with a warning)."""
        if self._epoch is not None:
            warnings.warn(
                f"DynamicsWriter(rank={self.rank}) closed with epoch {self._epoch} still open: "
                "its rows are discarded; call end_epoch() after each epoch",
                stacklevel=2,
            )
            self._abort_epoch()
        self._closed = True

    def __enter__(self) -> "DynamicsWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and self._epoch is not None:
            self._abort_epoch()
        self.close()

    # -- internals ---------------------------------------------------------------------------
    def _open_epoch(self, epoch: int) -> None:
        if self._closed:
            raise RuntimeError("DynamicsWriter is closed")
        if not 0 <= epoch <= MAX_EPOCH:
            raise ValueError(f"epoch must lie in [0, {MAX_EPOCH}], got {epoch}")
        if self._epoch is None:
            self._epoch = epoch
        elif self._epoch != epoch:
            raise ValueError(f"add(epoch={epoch}) while epoch {self._epoch} is open: call end_epoch() first")

    def _tmp_path(self, epoch: int) -> Path:
        return self.dir / f".epoch-{epoch:04d}.parquet.tmp"

    def _flush(self, force_open: bool = False) -> None:
        if self._writer is None and (self._buffered_rows or force_open):
            assert self._epoch is not None
            self._writer = pq.ParquetWriter(self._tmp_path(self._epoch), SCHEMA, compression="zstd")
        if self._buffered_rows:
            assert self._writer is not None
            self._writer.write_table(pa.Table.from_batches(self._buffer, schema=SCHEMA))
        self._buffer = []
        self._buffered_rows = 0

    def _abort_epoch(self) -> None:
        assert self._epoch is not None
        if self._writer is not None:
            self._writer.close()
        self._tmp_path(self._epoch).unlink(missing_ok=True)
        self._reset_epoch()

    def _reset_epoch(self) -> None:
        self._epoch = None
        self._writer = None
        self._buffer = []
        self._buffered_rows = 0


def _record_batch(epoch: int, index: np.ndarray, metrics: dict[str, np.ndarray]) -> pa.RecordBatch:
    columns = [
        pa.array(index, type=pa.int64()),
        pa.array(np.full(index.shape[0], epoch, dtype=np.int16)),
        pa.array(metrics["correct"].astype(bool)),
        pa.array(metrics["p_target"].astype(np.float16)),
        pa.array(metrics["p_other"].astype(np.float16)),
        pa.array(metrics["el2n"].astype(np.float16)),
        pa.array(metrics["margin"].astype(np.float32)),
    ]
    return pa.RecordBatch.from_arrays(columns, schema=SCHEMA)


def _rank_dirs(dyn_dir: Path) -> list[Path]:
    dyn_dir = Path(dyn_dir)
    if not dyn_dir.is_dir():
        raise DataError(f"no training-dynamics directory at {dyn_dir}: record dynamics first (DynamicsWriter)")
    found = [d for d in dyn_dir.iterdir() if d.is_dir() and _RANK_DIR.match(d.name)]
    return sorted(found, key=lambda d: int(_RANK_DIR.match(d.name).group(1)))


def _complete_epochs(one_rank_dir: Path) -> set[int]:
    matches = (_EPOCH_FILE.match(p.name) for p in one_rank_dir.iterdir())
    return {int(m.group(1)) for m in matches if m}


def read_epochs(dyn_dir: Path) -> list[int]:
    """Epochs whose file is complete on every rank directory under ``dyn_dir``, ascending."""
    dirs = _rank_dirs(dyn_dir)
    if not dirs:
        return []
    common = set.intersection(*(_complete_epochs(d) for d in dirs))
    return sorted(common)


def iter_epoch_tables(dyn_dir: Path, epochs: list[int] | None = None) -> Iterator[tuple[int, pa.Table]]:
    """Yield ``(epoch, table)`` in epoch order, each table the concatenation of all ranks' rows.

    ``epochs``: the epochs to read (a verified manifest's); default: those complete on every rank.
    Only one epoch is in memory at a time.
    """
    dirs = _rank_dirs(dyn_dir)
    for epoch in read_epochs(dyn_dir) if epochs is None else epochs:
        tables = [_read_epoch_file(d / f"epoch-{epoch:04d}.parquet") for d in dirs]
        yield epoch, pa.concat_tables(tables)


def _read_epoch_file(path: Path) -> pa.Table:
    try:
        return pq.read_table(path, schema=SCHEMA)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"training-dynamics file {path} is unreadable ({exc}): {RERECORD_HINT}") from exc


# -- manifest ----------------------------------------------------------------------------------
RERECORD_HINT = ("record the dynamics again with `python -m orchestrator teacher --force --config <protocol>` "
                 "(same data, teacher.* and output_dir)")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _epoch_files(dyn_dir: Path) -> list[Path]:
    return sorted(Path(dyn_dir).glob("rank-*/epoch-*.parquet"))


def write_manifest(dyn_dir: Path, *, epochs: int, num_samples: int, key: str) -> dict:
    """Seal a finished run's dynamics: every epoch 0..epochs-1 on every rank, rows and sha256 per file.

    Raises DataError when an expected epoch is missing. ``num_samples`` (the full set's size) is
    recorded; a sample missing from some epochs is scored over the epochs it appears in.
    """
    dyn_dir = Path(dyn_dir)
    found = read_epochs(dyn_dir) if dyn_dir.is_dir() else []
    missing = sorted(set(range(epochs)) - set(found))
    if missing:
        raise DataError(f"training dynamics at {dyn_dir} lack epochs {missing[:10]} of {epochs}: {RERECORD_HINT}")
    files = {}
    for path in _epoch_files(dyn_dir):
        epoch = int(_EPOCH_FILE.match(path.name).group(1))
        files[path.relative_to(dyn_dir).as_posix()] = {
            "epoch": epoch, "rows": pq.ParquetFile(path).metadata.num_rows, "sha256": _sha256(path)}
    manifest = {"version": MANIFEST_VERSION, "key": key, "epochs": epochs, "num_samples": num_samples,
                "files": files}
    write_text(dyn_dir / MANIFEST_FILE, json.dumps(manifest, indent=1, sort_keys=True))
    return manifest


def read_manifest(dyn_dir: Path) -> dict | None:
    """The run's manifest, or None when the run was never sealed (or the file is unreadable)."""
    try:
        manifest = json.loads((Path(dyn_dir) / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("version") == MANIFEST_VERSION else None


def verify_manifest(dyn_dir: Path, *, epochs: int, key: str) -> dict:
    """The manifest, once every file it lists is present with its sha256, and nothing else is.

    ``epochs`` and ``key`` are what the config expects (the key covers the training set, hence its
    size); any difference, a changed, missing or extra epoch file is a DataError naming the file
    and the fix.
    """
    dyn_dir = Path(dyn_dir)
    manifest = read_manifest(dyn_dir)
    if manifest is None:
        raise DataError(f"training dynamics at {dyn_dir} have no valid {MANIFEST_FILE} (the run never finished "
                        f"or predates manifests): {RERECORD_HINT}")
    wanted = {"key": key, "epochs": epochs}
    wrong = {name: (manifest.get(name), value) for name, value in wanted.items() if manifest.get(name) != value}
    if wrong:
        details = ", ".join(f"{name} is {have}, the config needs {need}" for name, (have, need) in wrong.items())
        raise DataError(f"training dynamics at {dyn_dir} were recorded with other settings ({details}): "
                        f"{RERECORD_HINT}")
    listed = manifest["files"]
    on_disk = {path.relative_to(dyn_dir).as_posix() for path in _epoch_files(dyn_dir)}
    for name in sorted(set(listed) | on_disk):
        _check_listed_file(dyn_dir / name, listed.get(name))
    return manifest


def _check_listed_file(path: Path, entry: dict | None) -> None:
    if entry is None:
        raise DataError(f"training-dynamics file {path} is not in the run's {MANIFEST_FILE}: {RERECORD_HINT}")
    if not path.is_file():
        raise DataError(f"training-dynamics file {path} is missing (epoch {entry['epoch']}): {RERECORD_HINT}")
    if _sha256(path) != entry["sha256"]:
        raise DataError(f"training-dynamics file {path} changed since the run finished (sha256 differs: "
                        f"truncated or overwritten): {RERECORD_HINT}")
