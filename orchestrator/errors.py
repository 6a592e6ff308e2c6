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
from collections.abc import Iterable


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
