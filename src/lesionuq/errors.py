"""The package's exceptions, in one place.

Each is raised with a one-sentence message that names the offending file or key; the CLI
prints it and exits with status 1.

- :class:`InputError`: bad user data (a missing file, a non-binary mask, a broken run).
- :class:`ConfigError`: a config file, dict or dataclass value that is invalid.
- :class:`NotFittedError`: a learned object used before ``fit`` (scikit-learn's name).
- :class:`CasesFailedError`: some scans of a batch failed while the others finished.
- :class:`InputWarning`: usable user data that is unusual in a way that can change the
  results (a brain cut by the field of view, no zero background); ``predict`` reports it
  with the scan's other warnings.
- :class:`TrainingWarning`: a model trained without error but likely unusable (a U-Net
  whose validation Dice stayed near 0); ``train`` reports it per fold.

:func:`did_you_mean` adds the closest valid name to a message about an unknown one.
"""

from __future__ import annotations

import difflib
from typing import Any

__all__ = [
    "CasesFailedError",
    "ConfigError",
    "InputError",
    "InputWarning",
    "NotFittedError",
    "TrainingWarning",
    "did_you_mean",
]


#: Longest text offered a "did you mean" (difflib is quadratic in its length).
_MAX_SUGGEST = 100


def did_you_mean(value: Any, options: list[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest option (``difflib``), or an empty string.

    Args:
        value: What was given.
        options: The allowed values.
    """
    if not isinstance(value, str) or len(value) > _MAX_SUGGEST:
        return ""
    close = difflib.get_close_matches(value, options, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class InputError(ValueError):
    """Bad user input; the message is one sentence naming the file and the problem."""


class InputWarning(UserWarning):
    """Usable user input that can change the results; one sentence naming the file."""


class TrainingWarning(UserWarning):
    """A model that trained without error but is likely unusable.

    The message is one sentence naming the fold, what was measured and the remedy.
    """


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
