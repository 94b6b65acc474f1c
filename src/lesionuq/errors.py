"""The package's exceptions, in one place.

Each is raised with a one-sentence message that names the offending file or key; the CLI
prints it and exits with status 1.

- :class:`InputError`: bad user data (a missing file, a non-binary mask, a broken run).
- :class:`ConfigError`: a config file, dict or dataclass value that is invalid.
- :class:`NotFittedError`: a learned object used before ``fit`` (scikit-learn's name).
- :class:`CasesFailedError`: some scans of a batch failed while the others finished.
"""

from __future__ import annotations

__all__ = ["CasesFailedError", "ConfigError", "InputError", "NotFittedError"]


class InputError(ValueError):
    """Bad user input; the message is one sentence naming the file and the problem."""


class ConfigError(ValueError):
    """A config file, dict or value is invalid; the message names the offending key."""


class NotFittedError(RuntimeError):
    """A scorer (or other learned object) was used before ``fit``."""


class CasesFailedError(RuntimeError):
    """Some scans of a batch failed; the others finished and their outputs are kept.

    Attributes:
        failed: The error text of each failed scan, by id.
    """

    def __init__(self, failed: dict[str, str], total: int, what: str = "scan") -> None:
        self.failed = dict(failed)
        ids = ", ".join(self.failed)
        first = next(iter(self.failed.values()), "")
        super().__init__(
            f"{len(self.failed)} of {total} {what}(s) failed ({ids}; first error: {first}); "
            "the others finished, and rerunning the same command redoes only the failed ones."
        )
