"""GCNN variants meant to carry over to data they were not trained on (issue 31).

The paper's GCNN (``gcnn_classif``, :class:`~lesionuq.scorers.gcnn.GCNNScorer`) reads
the raw node intensities of the preprocessed scan (z-scored over the whole brain). The
brain-wide z-score depends on the scan's anatomy and protocol (how much CSF and grey
matter, the grey/white contrast, the CSF suppression), so the same lesion contrast
gives other node values on another scanner or population. Two general remedies, chosen
for that reason and fixed before any cross-family result was seen:

* **Per-scan normalisation relative to normal-appearing tissue** (``scan_norm``): every
  scan's intensity columns are re-expressed relative to the perilesional ring of that
  scan, the dilated nodes outside the predicted lesions (label column 0), which lie in
  the normal-appearing white matter around the lesions:
  ``(I - median_ring) / (1.4826 MAD_ring)``, pooled over all the scan's lesions (all
  nodes of the scan when it has no ring node, i.e. ``graphs.dilation: 0``). The
  uncertainty columns are left as they are (they come from the same U-Net).
* **Augmentation of the training graphs** (``augment``): in every training batch each
  graph's (standardised) intensity columns are scaled by ``U(0.8, 1.25)`` and shifted by
  ``N(0, 0.25)``, and Gaussian noise (SD 0.1) is added to the intensity and uncertainty
  columns, so the model cannot rely on an exact intensity level or scale.

* **Fewer family-specific features** (``intensities=False``): the intensity columns are
  left out, so the GCNN reads only the label and the three voxel uncertainties, which
  the scan's own segmenter produces; how a family's lesions, mimics and scanner look
  reaches the model only through them.

Everything else (architecture, training, epoch choice) is the paper's GCNN.

Example:
    >>> scorer = RobustGCNNScorer(cfg=GCNNConfig(epochs=5), scan_norm=True).fit(val)
    >>> p_fp = scorer.score(test)  # (N,) float64
"""

from __future__ import annotations

from typing import Self

import numpy as np
import torch
from torch_geometric.data import Data

from lesionuq.config import ExperimentConfig, GCNNConfig
from lesionuq.lesions.dataset import LesionSet
from lesionuq.scorers.gcnn import GCNNScorer

__all__ = [
    "RobustGCNNScorer",
    "make_gcnn_aug",
    "make_gcnn_nawm",
    "make_gcnn_robust",
    "make_gcnn_unc",
    "scan_normalised",
    "without_intensities",
]

AUG_SCALE = (0.8, 1.25)
"""Range of the per-graph intensity scale of the augmentation."""
AUG_SHIFT_SD = 0.25
"""SD of the per-graph intensity shift (standardised units)."""
AUG_NOISE_SD = 0.1
"""SD of the per-node Gaussian noise (standardised units)."""


def scan_normalised(lesions: LesionSet, n_sequences: int = 1) -> LesionSet:
    """The lesions with each scan's intensity columns relative to its perilesional ring.

    Args:
        lesions: N lesions with graphs; ``x`` columns ``[I_1..I_n, label, entropy,
            variance, pcs, ...]`` and the table's ``case_id``.
        n_sequences: n, the number of intensity columns.

    Returns:
        A new :class:`LesionSet` (same table, new graphs; the input is not changed):
        column ``j < n`` of every node of scan ``s`` becomes
        ``(x_j - median_s,j) / (1.4826 MAD_s,j)`` over the scan's ring nodes (label
        column < 0.5; all its nodes when there is none), with a scale of 1 where the MAD
        is 0.
    """
    if len(lesions) == 0 or not lesions.graphs:
        return lesions
    cases = lesions.table["case_id"].astype(str).to_numpy()
    new_x: list[torch.Tensor] = [g.x for g in lesions.graphs]
    for case in np.unique(cases):
        idx = np.flatnonzero(cases == case)
        xs = [lesions.graphs[i].x.double() for i in idx]
        nodes = torch.cat(xs)
        ring = nodes[nodes[:, n_sequences] < 0.5]
        ref = ring if len(ring) else nodes
        med = ref[:, :n_sequences].median(dim=0).values
        mad = (ref[:, :n_sequences] - med).abs().median(dim=0).values * 1.4826
        scale = torch.where(mad > 1e-8, mad, torch.ones_like(mad))
        for i, x in zip(idx, xs, strict=True):
            y = x.clone()
            y[:, :n_sequences] = (y[:, :n_sequences] - med) / scale
            new_x[i] = y.float()
    graphs = []
    for g, x in zip(lesions.graphs, new_x, strict=True):
        h = g.clone()
        h.x = x
        graphs.append(h)
    return LesionSet(lesions.table, graphs)


class RobustGCNNScorer(GCNNScorer):
    """The paper's GCNN with per-scan ring normalisation and/or training augmentation.

    Args:
        task: ``"classif"`` or ``"reg"``.
        cfg: Architecture and training settings (the paper's GCNN's).
        name: Method name.
        n_sequences: Number of intensity columns at the start of ``x``.
        scan_norm: Re-express intensities relative to each scan's perilesional ring
            (:func:`scan_normalised`), in fit and in score.
        augment: Augment the training batches (intensity scale, shift and node noise).
        intensities: Keep the intensity columns (False: the graphs lose their first
            ``n_sequences`` columns, in fit and in score).
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
        num_threads: PyTorch CPU threads while fitting / scoring.
    """

    def __init__(
        self,
        task: str = "classif",
        cfg: GCNNConfig | None = None,
        name: str | None = None,
        n_sequences: int = 1,
        scan_norm: bool = True,
        augment: bool = False,
        device: str = "cpu",
        num_threads: int | None = 1,
        intensities: bool = True,
    ) -> None:
        super().__init__(task, cfg, name, device, num_threads)
        self.n_sequences = n_sequences
        self.scan_norm = scan_norm
        self.augment = augment
        self.intensities = intensities
        self._aug_gen: torch.Generator | None = None

    @property
    def _n_lesion_columns(self) -> int:
        """Trailing node columns that hold lesion-level features (left out of the noise)."""
        return 0

    def _prepared(self, lesions: LesionSet) -> LesionSet:
        if not self.intensities:
            return without_intensities(lesions, self.n_sequences)
        return scan_normalised(lesions, self.n_sequences) if self.scan_norm else lesions

    @property
    def _n_intensity_columns(self) -> int:
        """Intensity columns at the start of the model's input (0 without them)."""
        return self.n_sequences if self.intensities else 0

    def fit(self, lesions: LesionSet, progress: bool = True) -> Self:
        """Fit the GCNN on the (normalised) lesions; see :meth:`GCNNScorer.fit`."""
        self._aug_gen = torch.Generator().manual_seed(self.cfg.seed + 1)
        try:
            return super().fit(lesions, progress)
        finally:
            self._aug_gen = None

    def _augment(self, batch: Data) -> Data:
        if not self.augment or self._aug_gen is None:
            return batch
        gen = self._aug_gen
        x = batch.x.clone()
        n_graphs = int(batch.num_graphs)
        lo, hi = AUG_SCALE
        scale = lo + (hi - lo) * torch.rand(n_graphs, 1, generator=gen)
        shift = AUG_SHIFT_SD * torch.randn(n_graphs, 1, generator=gen)
        per_node = batch.batch.cpu()
        n = self._n_intensity_columns
        x[:, :n] = x[:, :n] * scale[per_node].to(x) + shift[per_node].to(x)
        # all but the label column and the lesion-level columns appended by a subclass
        noisy = [j for j in range(x.shape[1] - self._n_lesion_columns) if j != n]
        noise = AUG_NOISE_SD * torch.randn(x.shape[0], len(noisy), generator=gen)
        x[:, noisy] = x[:, noisy] + noise.to(x)
        batch = batch.clone()
        batch.x = x
        return batch


def without_intensities(lesions: LesionSet, n_sequences: int = 1) -> LesionSet:
    """The lesions with the first ``n_sequences`` (intensity) node columns removed.

    Args:
        lesions: N lesions with graphs; ``x`` columns ``[I_1..I_n, label, entropy,
            variance, pcs, ...]``.
        n_sequences: n, the number of intensity columns.

    Returns:
        A new :class:`LesionSet` (same table; the input is not changed) whose graphs have
        ``x`` of shape (n_nodes, F - n): ``[label, entropy, variance, pcs, ...]``.
    """
    graphs = []
    for g in lesions.graphs:
        h = g.clone()
        h.x = g.x[:, n_sequences:].clone()
        graphs.append(h)
    return LesionSet(lesions.table, graphs)


def _robust(
    cfg: ExperimentConfig, name: str, scan_norm: bool, augment: bool, intensities: bool = True
) -> RobustGCNNScorer:
    return RobustGCNNScorer(
        "classif",
        cfg.gcnn,
        name=name,
        n_sequences=len(cfg.sequences),
        scan_norm=scan_norm,
        augment=augment,
        intensities=intensities,
    )


def make_gcnn_nawm(cfg: ExperimentConfig) -> RobustGCNNScorer:
    """The catalogue's ``gcnn_nawm``: intensities relative to each scan's ring."""
    return _robust(cfg, "gcnn_nawm", scan_norm=True, augment=False)


def make_gcnn_aug(cfg: ExperimentConfig) -> RobustGCNNScorer:
    """The catalogue's ``gcnn_aug``: augmented training graphs."""
    return _robust(cfg, "gcnn_aug", scan_norm=False, augment=True)


def make_gcnn_robust(cfg: ExperimentConfig) -> RobustGCNNScorer:
    """The catalogue's ``gcnn_robust``: ring-normalised and augmented."""
    return _robust(cfg, "gcnn_robust", scan_norm=True, augment=True)


def make_gcnn_unc(cfg: ExperimentConfig) -> RobustGCNNScorer:
    """The catalogue's ``gcnn_unc``: no intensities, only the label and the uncertainties."""
    return _robust(cfg, "gcnn_unc", scan_norm=False, augment=False, intensities=False)
