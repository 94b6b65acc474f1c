"""Each lesion's location as columns of the lesion table, and as features of a scorer.

The paper closes on "the location of the lesion within the brain conveys information
concerning uncertainty, as false positives tend to be concentrated in specific brain
regions". This module joins the two halves of issue 30's part 3:

* :func:`locate_lesions` registers one scan to the MNI152 template
  (:func:`~lesionuq.location.register.register_to_template`), classifies each lesion
  (:func:`~lesionuq.location.classify.classify_lesions`) and returns the table columns
  :data:`LOCATION_COLUMNS` (``location``, the MNI centroid in mm); the experiment's
  graphs stage adds them when ``graphs.location`` is on, ``predict --location`` writes
  the same columns.
* :func:`location_features` turns those columns into a lesion-level feature matrix:
  the one-hot location class (periventricular, juxtacortical, infratentorial, deep; an
  ``unknown`` lesion is all zeros) and the MNI centroid in units of
  :data:`MNI_SCALE_MM` (0 when unknown), read by the location-aware scorers
  (``gcnn_loc``, ``metaseg_loc``).

Example:
    >>> table = pd.DataFrame({"location": ["deep", "unknown"], "mni_x_mm": [10.0, np.nan],
    ...                       "mni_y_mm": [0.0, np.nan], "mni_z_mm": [-50.0, np.nan]})
    >>> location_features(table)[0].tolist()
    [0.0, 0.0, 0.0, 1.0, 0.2, 0.0, -1.0]
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lesionuq.lesions.dataset import LesionSet
from lesionuq.location.classify import LOCATIONS, LesionLocations, classify_lesions
from lesionuq.location.register import Registration, register_to_template

__all__ = [
    "FEATURE_NAMES",
    "LOCATION_COLUMNS",
    "MNI_SCALE_MM",
    "join_locations",
    "locate_lesions",
    "location_columns",
    "location_features",
    "with_locations",
]

LOCATION_COLUMNS: tuple[str, ...] = ("location", "mni_x_mm", "mni_y_mm", "mni_z_mm")
"""Lesion-table columns of a lesion's location: its class (:data:`LOCATIONS`) and its
centroid in MNI152 RAS mm (NaN when unknown)."""

_CLASSES = tuple(c for c in LOCATIONS if c != "unknown")
FEATURE_NAMES: tuple[str, ...] = (*(f"loc_{c}" for c in _CLASSES), "mni_x", "mni_y", "mni_z")
"""Names of the columns of :func:`location_features`."""

MNI_SCALE_MM = 50.0
"""MNI coordinates are divided by this (about the half-width of the brain's core), so
the features are of order one before a scorer standardises them."""


def location_columns(locations: LesionLocations) -> pd.DataFrame:
    """The :data:`LOCATION_COLUMNS` of lesions 1..N as a frame (N rows, in label order)."""
    mni = np.asarray(locations.mni, dtype=np.float64).reshape(-1, 3)
    return pd.DataFrame(
        {
            "location": pd.Series(locations.location, dtype=object),
            "mni_x_mm": mni[:, 0],
            "mni_y_mm": mni[:, 1],
            "mni_z_mm": mni[:, 2],
        }
    )


def locate_lesions(
    image: np.ndarray,
    affine: np.ndarray,
    labels: np.ndarray,
    registration: Registration | None = None,
) -> tuple[pd.DataFrame, Registration]:
    """Register a scan to MNI152 and give each of its lesions a location.

    Args:
        image: (X, Y, Z) scan intensities, 0 outside the brain (the preprocessed FLAIR).
        affine: (4, 4) RAS affine of ``image`` and ``labels``.
        labels: (X, Y, Z) int lesion labels 1..N (0 background).
        registration: The scan's registration computed before (e.g. by
            :func:`~lesionuq.location.register.cached_registration`), on the grid of
            ``image``; None registers the scan here.

    Returns:
        The N rows of :data:`LOCATION_COLUMNS` in label order (all ``unknown`` when the
        registration is not trusted, see :attr:`Registration.ok`), and the registration
        (its quality measures).
    """
    reg = register_to_template(image, affine, image != 0) if registration is None else registration
    return location_columns(classify_lesions(labels, affine, reg, image=image)), reg


def with_locations(
    lesions: LesionSet,
    image: np.ndarray,
    affine: np.ndarray,
    labels: np.ndarray,
    registration: Registration | None = None,
) -> tuple[LesionSet, Registration]:
    """The lesions of one scan with the :data:`LOCATION_COLUMNS` added to their table.

    Args:
        lesions: The scan's lesions; the table's ``lesion_id`` is the label in ``labels``.
        image: (X, Y, Z) scan intensities, 0 outside the brain.
        affine: (4, 4) RAS affine of ``image`` and ``labels``.
        labels: (X, Y, Z) int lesion labels 1..N.
        registration: The scan's registration computed before, or None (registered
            here; see :func:`locate_lesions`).

    Returns:
        A new :class:`LesionSet` (same graphs, the table with the location columns; an
        existing column of that name is replaced) and the registration.
    """
    located, reg = locate_lesions(image, affine, labels, registration=registration)
    return join_locations(lesions, located), reg


def join_locations(lesions: LesionSet, located: pd.DataFrame) -> LesionSet:
    """The lesions with the :data:`LOCATION_COLUMNS` of ``located`` added to their table.

    Args:
        lesions: One scan's lesions; the table's ``lesion_id`` is the lesion's label.
        located: The N rows of :func:`location_columns`, in label order (1..N).

    Returns:
        A new :class:`LesionSet` (same graphs; an existing column of that name is
        replaced).
    """
    table = lesions.table.drop(columns=[c for c in LOCATION_COLUMNS if c in lesions.table])
    ids = table["lesion_id"].to_numpy(dtype=np.int64) - 1 if len(table) else np.zeros(0, int)
    rows = located.iloc[ids].reset_index(drop=True)
    rows.index = table.index
    return LesionSet(pd.concat([table, rows], axis=1), lesions.graphs)


def location_features(
    table: pd.DataFrame, scorer: str = "scorer", coordinates: bool = True
) -> np.ndarray:
    """The lesion-level location features of :data:`FEATURE_NAMES`.

    Args:
        table: N lesions with the :data:`LOCATION_COLUMNS`.
        scorer: The scorer's name, for the error message.
        coordinates: Include the MNI centroid (False: the class only).

    Returns:
        (N, 7) float64 (N, 4 without ``coordinates``): one-hot class (an ``unknown``
        lesion has none), then the MNI centroid / :data:`MNI_SCALE_MM` (0 where unknown).

    Raises:
        ValueError: A column is missing (the lesions were not located) or a class is
            not one of :data:`LOCATIONS`.
    """
    missing = [c for c in LOCATION_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(
            f"scorer '{scorer}' needs the lesion locations (columns {', '.join(missing)} "
            "are missing): set graphs.location: true in the experiment config "
            "(each scan is registered to MNI152, about 10 s)."
        )
    loc = table["location"].astype(str).to_numpy()
    bad = sorted(set(loc) - set(LOCATIONS))
    if bad:
        raise ValueError(f"scorer '{scorer}': unknown location class(es) {bad}.")
    onehot = (loc[:, None] == np.asarray(_CLASSES)[None, :]).astype(np.float64)
    if not coordinates:
        return onehot.reshape(len(table), len(_CLASSES))
    mni = table[list(LOCATION_COLUMNS[1:])].to_numpy(dtype=np.float64) / MNI_SCALE_MM
    mni = np.where(np.isfinite(mni), mni, 0.0)
    return np.concatenate([onehot, mni], axis=1).reshape(len(table), len(FEATURE_NAMES))
