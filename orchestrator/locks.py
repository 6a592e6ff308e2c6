"""Cross-process file locks: one writer creates the MLflow schema, one process trains a cell.

A lock is `fcntl.flock` on a small file; the holder writes its pid, host and start time into it, so a
process that has to wait can say who it is waiting for. The kernel drops the lock when the holder
exits, however it exits (a killed process leaves no stale lock).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import socket
import time
from pathlib import Path
from typing import Callable, Iterator

from orchestrator.files import writable_dir


def holder(path: Path) -> str:
    """Who holds (or last held) the lock at `path`, as its holder wrote it."""
    try:
        return Path(path).read_text().strip() or "an unknown process"
    except OSError:
        return "an unknown process"


@contextlib.contextmanager
def file_lock(path: Path, what: str, quiet: bool = False) -> Iterator[None]:
    """Hold an exclusive lock on `path`; when another process holds it, say who and wait."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not quiet:
                print(f"{what} is held by {holder(path)}: waiting for it (lock {path})",
                      flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            handle.truncate(0)
            handle.write(f"pid {os.getpid()} on host {socket.gethostname()} since "
                         f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
            handle.flush()
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def held_by(path: Path) -> str | None:
    """Who holds the lock at `path` now (as its holder wrote it), or None when nobody does."""
    try:
        with open(path) as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return holder(path)
            fcntl.flock(handle, fcntl.LOCK_UN)
    except OSError:  # no lock file: nobody ever held it
        return None
    return None


def cell_lock_path(out: Path, cell: str) -> Path:
    return Path(out) / "locks" / f"{cell}.lock"


def cell_lock(out: Path, cell: str) -> contextlib.AbstractContextManager:
    """One process at a time trains a cell of an output folder; the others wait, then find it done."""
    return file_lock(cell_lock_path(out, cell), f"cell {cell}")


def one_process_per_cell(run_cell: Callable) -> Callable:
    """Decorator for `run_cell(config, ...)`: it runs holding the cell's lock, in a writable output dir."""
    from orchestrator.config import cell_name

    @functools.wraps(run_cell)
    def locked(config, *args, **kwargs):
        with cell_lock(writable_dir(config.out), cell_name(config)):
            return run_cell(config, *args, **kwargs)

    return locked


def store_lock(db_path: Path) -> contextlib.AbstractContextManager:
    """One process at a time creates (migrates) a SQLite MLflow store and its experiments."""
    return file_lock(Path(f"{db_path}.lock"), f"MLflow store {db_path}", quiet=True)
