"""Error types the user sees: each message names the problem and the fix, each kind its exit code.

The CLI (`cli_args.run_parsed`) prints an OrchestratorError as one `error:` line (a traceback only
with `--verbose`) and exits with the error's `exit_code`, so scripts can tell the kinds apart:

| code | kind |
|---|---|
| 2 | ConfigError, and any other OrchestratorError: a config, override, flag or sweep file |
| 3 | DataError: a dataset source is missing, corrupt, mislabelled or too small |
| 4 | StoreBusyError: the MLflow store stayed locked by another process past the retry window |
| 5 | TrainingDiverged: the loss became NaN or infinite |
| 6 | CheckpointError: a checkpoint or artifact file is damaged or not ours |
| 7 | DiskFullError: no space (or quota) left where the run writes |
| 8 | RayBusyError: gave up waiting for CPUs that other programs hold on the Ray it joined |
| 130 | interrupted (Ctrl-C) |
"""

import difflib
import errno
import os
from collections.abc import Iterable
from pathlib import Path


class OrchestratorError(Exception):
    """Base class: the CLI prints these as one clear line instead of a traceback."""

    exit_code = 2


class ConfigError(OrchestratorError, ValueError):
    """A config file, override or sweep definition is invalid."""


class DataError(OrchestratorError, ValueError):
    """A dataset source is missing, corrupt, mislabelled or too small for the request."""

    exit_code = 3


class StoreBusyError(OrchestratorError, RuntimeError):
    """The MLflow store stayed locked (another process writing) for longer than the retry window."""

    exit_code = 4


class TrainingDiverged(OrchestratorError, FloatingPointError):
    """A cell's loss became NaN or infinite."""

    exit_code = 5


class CheckpointError(OrchestratorError, RuntimeError):
    """A checkpoint (or cached artifact) cannot be loaded safely."""

    exit_code = 6


class DiskFullError(OrchestratorError, OSError):
    """No space left on the device (or quota exceeded) where the run writes."""

    exit_code = 7


class RayBusyError(OrchestratorError, RuntimeError):
    """Gave up waiting for resources that other programs hold on the Ray this program joined."""

    exit_code = 8


def did_you_mean(name: str, known: Iterable[str], *, n: int = 1, cutoff: float = 0.6) -> str:
    """"did you mean 'x'? " for the closest known names, or "" when none is close."""
    close = difflib.get_close_matches(name, list(known), n=n, cutoff=cutoff)
    return f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""


def original_error(error: BaseException) -> BaseException:
    """The exception a cell's own code raised, out of the wrappers Ray puts around it on the way back:
    a Tune trial's RayTaskError, Ray Train's WorkerGroupError (one per failed rank), ControllerError
    and UserExceptionWithTraceback."""
    for _ in range(8):  # wrappers nest a few deep at most
        inner = wrapped_error(error)
        if inner is None:
            return error
        error = inner
    return error


def wrapped_error(error: BaseException) -> BaseException | None:
    """The exception one Ray wrapper holds, or None when `error` is not a wrapper."""
    failures = getattr(error, "worker_failures", None)
    if isinstance(failures, dict) and failures:
        return failures[min(failures)]
    for name in ("_base_exc", "controller_failure", "cause"):
        inner = getattr(error, name, None)
        if isinstance(inner, BaseException) and inner is not error:
            return inner
    return None


DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
# What the errors say when they crossed a process (Ray pickles an exception without its chain, and
# keeps the worker's traceback as text) or came from a library that sets no errno (SQLite, pyarrow).
DISK_FULL_TEXTS = (os.strerror(errno.ENOSPC), os.strerror(errno.EDQUOT), "database or disk is full")


def disk_full_cause(error: BaseException) -> BaseException | None:
    """The "no space left" (or "quota exceeded") error behind `error`, if any, found through exception
    chains and Ray's wrappers: an OSError with that errno, else the innermost error saying so; else None."""
    errors = related_errors(error)
    for candidate in errors:
        if isinstance(candidate, DiskFullError) or (
                isinstance(candidate, OSError) and candidate.errno in DISK_FULL_ERRNOS):
            return candidate
    return next((e for e in reversed(errors) if any(text in str(e) for text in DISK_FULL_TEXTS)), None)


def related_errors(error: BaseException) -> list[BaseException]:
    """`error`, its causes and contexts, and what Ray's wrappers hold, outermost first."""
    found, queue = [], [error]
    while queue:
        current = queue.pop(0)
        if current is None or any(current is seen for seen in found):
            continue
        found.append(current)
        queue += [current.__cause__, current.__context__, getattr(current, "orig", None), wrapped_error(current)]
    return found


def disk_full_error(cause: BaseException, folder: str | Path | None) -> DiskFullError:
    """The one-line DiskFullError for `cause` (see `disk_full_cause`), naming the folder written to."""
    if isinstance(cause, DiskFullError):
        return cause
    if isinstance(cause, OSError) and cause.strerror:
        what = cause.strerror + (f" writing {cause.filename}" if cause.filename else "")
    elif "database or disk is full" in str(cause):
        what = "the MLflow store (SQLite) cannot grow"
    else:
        what = os.strerror(errno.ENOSPC)
    place = f"in {folder}" if folder else "where the run writes"
    return DiskFullError(f"the disk is full {place} ({what}): free space there or pass another --output-dir")
