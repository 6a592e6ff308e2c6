"""Error types the user sees: each message names the problem and the fix."""


class OrchestratorError(Exception):
    """Base class: the CLI prints these as one clear line instead of a traceback."""


class ConfigError(OrchestratorError, ValueError):
    """A config file, override or sweep definition is invalid."""


class DataError(OrchestratorError, ValueError):
    """A dataset source is missing, corrupt, mislabelled or too small for the request."""
