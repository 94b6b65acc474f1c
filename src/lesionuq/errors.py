"""The package's exceptions, in one place.

Each is raised with a one-sentence message that names the offending file or key; the CLI
prints it and exits with status 1.

- :class:`InputError`: bad user data (a missing file, a non-binary mask, a broken run).
- :class:`ConfigError`: a config file, dict or dataclass value that is invalid.
- :class:`NotFittedError`: a learned object used before ``fit`` (scikit-learn's name).
"""

from __future__ import annotations

__all__ = ["ConfigError", "InputError", "NotFittedError"]


class InputError(ValueError):
    """Bad user input; the message is one sentence naming the file and the problem."""


class ConfigError(ValueError):
    """A config file, dict or value is invalid; the message names the offending key."""


class NotFittedError(RuntimeError):
    """A scorer (or other learned object) was used before ``fit``."""
