"""Data: preprocessing onto the model grid and its inverse, and the phantom generator.

The preprocessing names are imported eagerly (numpy / scipy / nibabel only); the phantom
names are loaded on first use (PEP 562), so ``import lesionuq.data`` stays light.
"""

from __future__ import annotations

from typing import Any

from lesionuq.data.preprocess import (
    GridTransform,
    Preprocessed,
    native_labels,
    preprocess,
    target_grid,
    to_original,
)

_PHANTOM = (
    "CaseDraw",
    "PhantomCase",
    "PhantomParams",
    "draw_case",
    "generate_case",
    "make_phantom_dataset",
    "render_case",
    "write_preview",
)

__all__ = [
    "GridTransform",
    "Preprocessed",
    "native_labels",
    "preprocess",
    "target_grid",
    "to_original",
    *_PHANTOM,
]


def __getattr__(name: str) -> Any:
    if name in _PHANTOM:
        # lazy: the phantom loads torch; `import lesionuq.data` stays light (PEP 562)
        from lesionuq.data import phantom

        return getattr(phantom, name)
    raise AttributeError(f"module 'lesionuq.data' has no attribute {name!r}")
