"""Lesion scorers that also read where the lesion is (issue 30, part 3).

The paper's future work: "false positives tend to be concentrated in specific brain
regions".

Both read the lesion table's location columns (:data:`~lesionuq.location.features.
LOCATION_COLUMNS`, added by the graphs stage with ``graphs.location: true``) through
:func:`~lesionuq.location.features.location_features`: the one-hot class
(periventricular, juxtacortical, infratentorial, deep) and the MNI centroid / 50 mm.

- ``gcnn_loc`` (:class:`LocationGCNNScorer`): the paper's GCNN with the one-hot location
  class (4 columns) appended to every node of the lesion's graph; ``gcnn_loc_mni`` also
  appends the MNI centroid (7 columns). A column that is constant
  within a graph is a lesion-level input: after the two GCN layers and the mean readout
  it reaches the head like a graph-level feature, and it can interact non-linearly with
  the voxel features (a separate linear head on the features, as
  :class:`~lesionuq.scorers.nn.HybridLesionGCN` has, could only shift the logit).
  Everything else (architecture, training, epoch choice) is the paper's GCNN.
- ``metaseg_loc`` (:class:`LocationMetaSegScorer`): MetaSeg's logistic regression on its
  four features plus the 7 location features.

Example:
    >>> scorer = LocationGCNNScorer(cfg=GCNNConfig(epochs=5)).fit(val)  # val located
    >>> p_fp = scorer.score(test)  # (N,) float64
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from lesionuq.config import ExperimentConfig, GCNNConfig
from lesionuq.lesions.dataset import LesionSet
from lesionuq.location.features import FEATURE_NAMES, location_features
from lesionuq.scorers.baselines import METASEG_FEATURES, MetaSegScorer
from lesionuq.scorers.robust import RobustGCNNScorer

__all__ = [
    "LocationGCNNScorer",
    "LocationMetaSegScorer",
    "make_gcnn_loc",
    "make_gcnn_loc_mni",
    "with_lesion_columns",
]


def with_lesion_columns(lesions: LesionSet, features: np.ndarray) -> LesionSet:
    """The lesions with each lesion's feature row appended to every node of its graph.

    Args:
        lesions: N lesions with graphs (``x`` of shape (n_nodes_i, F)).
        features: (N, D) lesion-level features.

    Returns:
        A new :class:`LesionSet` (same table; the input is not changed) whose graph i has
        ``x`` of shape (n_nodes_i, F + D), the last D columns all equal to row i.
    """
    feats = torch.as_tensor(np.asarray(features, dtype=np.float32))
    if feats.shape[0] != len(lesions.graphs):
        raise ValueError(f"{feats.shape[0]} feature rows for {len(lesions.graphs)} graphs.")
    graphs = []
    for g, row in zip(lesions.graphs, feats, strict=True):
        h = g.clone()
        h.x = torch.cat([g.x.float(), row.expand(g.x.shape[0], -1)], dim=1)
        graphs.append(h)
    return LesionSet(lesions.table, graphs)


class LocationGCNNScorer(RobustGCNNScorer):
    """The GCNN with the lesion's location features on every node (``gcnn_loc``).

    Args:
        task: ``"classif"`` or ``"reg"``.
        cfg: Architecture and training settings (the paper's GCNN's).
        name: Method name.
        n_sequences: Number of intensity columns at the start of ``x``.
        scan_norm: Also re-express intensities relative to each scan's perilesional ring
            (see :class:`~lesionuq.scorers.robust.RobustGCNNScorer`).
        augment: Also augment the training batches (the location columns are not
            perturbed).
        coordinates: Also append the MNI centroid (else the class only).
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
        num_threads: PyTorch CPU threads while fitting / scoring.
    """

    def __init__(
        self,
        task: str = "classif",
        cfg: GCNNConfig | None = None,
        name: str | None = None,
        n_sequences: int = 1,
        scan_norm: bool = False,
        augment: bool = False,
        device: str = "cpu",
        num_threads: int | None = 1,
        coordinates: bool = False,
    ) -> None:
        super().__init__(
            task, cfg, name or f"gcnn_loc_{task}", n_sequences, scan_norm, augment, device,
            num_threads,
        )  # fmt: skip
        self.coordinates = coordinates

    @property
    def _n_lesion_columns(self) -> int:
        """The appended location columns (left out of the augmentation noise)."""
        return len(FEATURE_NAMES) if self.coordinates else len(FEATURE_NAMES) - 3

    def _prepared(self, lesions: LesionSet) -> LesionSet:
        base = super()._prepared(lesions)
        if len(base) == 0:
            return base
        features = location_features(base.table, self.name, self.coordinates)
        return with_lesion_columns(base, features)


class LocationMetaSegScorer(MetaSegScorer):
    """MetaSeg's linear model on its features plus the location features (``metaseg_loc``).

    Args:
        task: ``"classif"`` or ``"reg"``.
        name: Method name; defaults to ``"metaseg_loc_" + task``.
        max_iter: Iteration limit of the logistic regression solver.
    """

    def __init__(self, task: str = "classif", name: str | None = None, max_iter: int = 1000):
        super().__init__(task, name or f"metaseg_loc_{task}", max_iter)

    @property
    def feature_names(self) -> tuple[str, ...]:
        """MetaSeg's feature columns, then :data:`FEATURE_NAMES`."""
        return (*METASEG_FEATURES, *FEATURE_NAMES)

    def _features(self, table: pd.DataFrame) -> np.ndarray:
        base = super()._features(table)
        return np.concatenate([base, location_features(table, self.name)], axis=1)


def make_gcnn_loc(cfg: ExperimentConfig) -> LocationGCNNScorer:
    """The catalogue's ``gcnn_loc``: the paper's GCNN reading the lesion's location class."""
    return LocationGCNNScorer("classif", cfg.gcnn, name="gcnn_loc", n_sequences=len(cfg.sequences))


def make_gcnn_loc_mni(cfg: ExperimentConfig) -> LocationGCNNScorer:
    """The catalogue's ``gcnn_loc_mni``: the location class and the MNI centroid."""
    return LocationGCNNScorer(
        "classif", cfg.gcnn, name="gcnn_loc_mni", n_sequences=len(cfg.sequences), coordinates=True
    )
