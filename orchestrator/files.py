"""File writes that a crash or a concurrent reader never sees half done, and output folders checked writable."""

from __future__ import annotations

import os
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from orchestrator.errors import OrchestratorError


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` (same suffix) that replaces `path` when the block succeeds.

    Write the file to the yielded path; on an exception the partial file is removed and `path`
    keeps its old content (or stays absent).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    """Replace `path` with `text` in one step."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def writable_dir(path: Path) -> Path:
    """`path` created when missing and probed with a real write: an error naming it, before any work."""
    out = Path(path).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise OrchestratorError(f"output dir {out} is a file, not a folder: pass another --output-dir")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise OrchestratorError(f"output dir {out} cannot be written ({exc.strerror}): "
                                f"pass a writable --output-dir") from exc
    return out
