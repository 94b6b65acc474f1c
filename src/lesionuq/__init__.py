"""lesionuq: lesion-wise uncertainty for MS lesion segmentation with graph networks."""

from __future__ import annotations

__version__ = "0.1.0"
