"""Error types the user sees: each message names the problem and the fix."""

import difflib
from collections.abc import Iterable


class OrchestratorError(Exception):
    """Base class: the CLI prints these as one clear line instead of a traceback."""


class ConfigError(OrchestratorError, ValueError):
    """A config file, override or sweep definition is invalid."""


class DataError(OrchestratorError, ValueError):
    """A dataset source is missing, corrupt, mislabelled or too small for the request."""


def did_you_mean(name: str, known: Iterable[str], *, n: int = 1, cutoff: float = 0.6) -> str:
    """"did you mean 'x'? " for the closest known names, or "" when none is close."""
    close = difflib.get_close_matches(name, list(known), n=n, cutoff=cutoff)
    return f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
