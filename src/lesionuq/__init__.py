"""lesionuq: lesion-wise uncertainty for MS lesion segmentation with graph networks."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lesionuq")  # the one source: pyproject.toml
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
