"""Label descriptions for the viewers users already have: ITK-SNAP and FSLeyes.

Both colour a lesion label map (lesion ids 1..N) by review status: lesions flagged for
review red, kept lesions green, each named with its id and P(FP).

- ITK-SNAP ``label_description.txt`` (Segmentation > Import Label Descriptions): a
  ``#`` comment header, then one line per label ``IDX R G B A VIS MSH "LABEL"`` with
  R, G, B in 0..255, A the opacity in 0..1, VIS/MSH visibility flags 0|1 and the
  label in double quotes; label 0 is the "Clear Label". Source: the header ITK-SNAP
  writes itself (as reproduced by nipy/nilabels ``manipulate_descriptors.py``).
- FSLeyes ``.lut`` (Lookup table panel > Load): one line per label ``value r g b name``
  with r, g, b in 0.0..1.0, values in ascending order, the name the rest of the line.
  Source: FSLeyes user documentation, "Customising FSLeyes > Lookup tables".
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from lesionuq.io import atomic_write_text

__all__ = [
    "FLAGGED_RGB",
    "KEPT_RGB",
    "label_colours",
    "write_fsleyes_lut",
    "write_itksnap_labels",
]

#: Colour of a lesion flagged for review (red) and of a kept lesion (green), 0..255.
FLAGGED_RGB = (230, 30, 30)
KEPT_RGB = (30, 190, 60)


def label_colours(
    lesions: pd.DataFrame | Mapping[str, Any],
) -> list[tuple[int, tuple[int, int, int], str]]:
    """Colour and name of each lesion by review status.

    Args:
        lesions: One row per lesion with ``lesion_id`` (or ``index``), ``p_fp`` and
            ``review`` (bool), e.g. ``lesions.csv`` of ``predict``.

    Returns:
        ``(lesion_id, (r, g, b), name)`` in ascending id order; name e.g.
        ``lesion 3 review P(FP)=0.82`` or ``lesion 5 kept P(FP)=0.10``.
    """
    table = pd.DataFrame(lesions)
    if "lesion_id" not in table and "index" in table:
        table = table.rename(columns={"index": "lesion_id"})
    table = table.sort_values("lesion_id")
    out = []
    for row in table.itertuples(index=False):
        flagged = bool(row.review)
        status = "review" if flagged else "kept"
        name = f"lesion {int(row.lesion_id)} {status} P(FP)={float(row.p_fp):.2f}"
        out.append((int(row.lesion_id), FLAGGED_RGB if flagged else KEPT_RGB, name))
    return out


def write_itksnap_labels(path: str | Path, lesions: pd.DataFrame | Mapping[str, Any]) -> Path:
    """Write an ITK-SNAP label description file for a lesion label map.

    Args:
        path: Destination, conventionally ``*label_description.txt``.
        lesions: See :func:`label_colours`.

    Returns:
        The written path.
    """
    lines = [
        "################################################",
        "# ITK-SnAP Label Description File",
        "# File format: ",
        "# IDX   -R-  -G-  -B-  -A--  VIS MSH  LABEL",
        "# Fields: ",
        "#    IDX:   Zero-based index ",
        "#    -R-:   Red color component (0..255)",
        "#    -G-:   Green color component (0..255)",
        "#    -B-:   Blue color component (0..255)",
        "#    -A-:   Label transparency (0.00 .. 1.00)",
        "#    VIS:   Label visibility (0 or 1)",
        "#    MSH:   Label mesh visibility (0 or 1)",
        "#  LABEL:   Label description ",
        "# Written by lesionuq: red = flagged for review, green = kept.",
        "################################################",
        f'{0:5d} {0:5d} {0:4d} {0:4d} {0:8g} {0:2d} {0:2d}    "Clear Label"',
    ]
    for idx, (r, g, b), name in label_colours(lesions):
        lines.append(f'{idx:5d} {r:5d} {g:4d} {b:4d} {1:8g} {1:2d} {1:2d}    "{name}"')
    return atomic_write_text(path, "\n".join(lines) + "\n")


def write_fsleyes_lut(path: str | Path, lesions: pd.DataFrame | Mapping[str, Any]) -> Path:
    """Write an FSLeyes lookup table (``.lut``) for a lesion label map.

    Args:
        path: Destination ending in ``.lut`` (FSLeyes wants no spaces in the name).
        lesions: See :func:`label_colours`.

    Returns:
        The written path.
    """
    lines = [
        f"{idx} {r / 255:.5f} {g / 255:.5f} {b / 255:.5f} {name}"
        for idx, (r, g, b), name in label_colours(lesions)
    ]
    return atomic_write_text(path, "\n".join(lines) + ("\n" if lines else ""))
