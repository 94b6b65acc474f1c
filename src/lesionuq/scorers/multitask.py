"""The multi-task lesion GCNN ``gcnn_mt`` (issue 31): P(FP) with IoU_adj as a second task.

The paper's GCNN (``gcnn_classif``) learns from one bit per validation lesion (FP or
TP), and the validation lesions are few (tens to a few hundred). Every lesion also has
its adjusted IoU (``iou_adj``, the target of ``gcnn_reg``), a graded target that costs
no extra labelling: the FP label is ``iou_adj < epsilon``, so the IoU says in addition
how far from the threshold a lesion is. On the quality bench's learning curve
``gcnn_reg`` is ahead of ``gcnn_classif`` at 25-100 validation lesions. An auxiliary
regression head on the same trunk therefore gives each lesion more supervision and
regularises a small-data model towards features that track the overlap with the ground
truth, rather than features that only separate one family's FPs. Chosen for that reason
and fixed before any cross-family result was seen:

* the trunk, readout, schedule, feature standardisation and epoch rule of the paper's
  GCNN (:class:`~lesionuq.scorers.gcnn.GCNNScorer`, ``task="classif"``);
* a head of 3 outputs: the [TP, FP] logits and the predicted IoU_adj;
* the loss ``CE_w(logits, FP) + IOU_WEIGHT * MSE(IoU_hat, IoU_adj)``, with the class
  weights of ``gcnn_classif`` and :data:`IOU_WEIGHT` = 1 (fixed a priori, not tuned);
* the epoch with the lowest held-out (weighted) cross-entropy, as ``gcnn_classif``;
* the score P(FP), the softmax of the two logits (the IoU head is only a training aid).

Example:
    >>> scorer = MultiTaskGCNNScorer(GCNNConfig(epochs=5)).fit(val)
    >>> p_fp = scorer.score(test)  # (N,) float64 in [0, 1]
"""

from __future__ import annotations

from typing import Self

import numpy as np
import torch
from torch.nn import functional as F
from torch_geometric.data import Data

from lesionuq.config import GCNNConfig
from lesionuq.lesions.dataset import LesionSet
from lesionuq.scorers.base import table_column
from lesionuq.scorers.gcnn import GCNNScorer, _forward
from lesionuq.scorers.nn import predict

__all__ = ["IOU_WEIGHT", "MultiTaskGCNNScorer", "multitask_loss"]

IOU_WEIGHT = 1.0
"""Weight of the IoU_adj mean squared error in the training loss (fixed a priori)."""


def multitask_loss(
    out: torch.Tensor,
    y_fp: torch.Tensor,
    y_iou: torch.Tensor,
    weight: torch.Tensor | None = None,
    iou_weight: float = IOU_WEIGHT,
) -> torch.Tensor:
    """Class-weighted cross-entropy of the logits plus the weighted IoU_adj MSE.

    Args:
        out: (B, 3) model outputs: the [TP, FP] logits, then the predicted IoU_adj.
        y_fp: (B,) int64, 1 for an FP lesion.
        y_iou: (B,) float32 IoU_adj.
        weight: (2,) class weights of the cross-entropy, or None.
        iou_weight: Weight of the MSE term.

    Returns:
        Scalar ``CE_w(out[:, :2], y_fp) + iou_weight * mean((out[:, 2] - y_iou)^2)``.
    """
    ce = F.cross_entropy(out[:, :2], y_fp, weight=weight)
    return ce + iou_weight * F.mse_loss(out[:, 2], y_iou)


class MultiTaskGCNNScorer(GCNNScorer):
    """The paper's GCNN trained on FP vs TP and IoU_adj at once; scores P(FP).

    See the module docstring. Needs ``is_tp`` and a finite ``iou_adj`` for every training
    lesion.

    Args:
        cfg: Architecture and training settings (the paper's GCNN's).
        name: Method name.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
        num_threads: PyTorch CPU threads while fitting / scoring.

    Attributes:
        history_: Per-epoch dicts as :class:`GCNNScorer`'s, plus ``val_iou_mse``, the
            held-out MSE of the IoU head.
    """

    def __init__(
        self,
        cfg: GCNNConfig | None = None,
        name: str | None = None,
        device: str = "cpu",
        num_threads: int | None = 1,
    ) -> None:
        super().__init__("classif", cfg, name or "gcnn_mt", device, num_threads)

    @property
    def _out_features(self) -> int:
        """The two [TP, FP] logits and the IoU_adj."""
        return 3

    def _fp_logits(self, out: torch.Tensor) -> torch.Tensor:
        return out[:, :2]

    def _fit(self, lesions: LesionSet, progress: bool) -> Self:
        y_iou = table_column(lesions.table, "iou_adj", self.name)
        if not np.all(np.isfinite(y_iou)):
            raise ValueError(f"{self.name}: iou_adj has NaN; fitting needs ground truth.")
        return super()._fit(lesions, progress)

    def _loss(self, out: torch.Tensor, batch: Data, weight: torch.Tensor | None) -> torch.Tensor:
        return multitask_loss(out, batch.y_fp, batch.y_iou, weight)

    def _validate(
        self,
        model: torch.nn.Module,
        val: list[Data],
        weight: torch.Tensor | None,
        device: torch.device,
    ) -> dict[str, float | None]:
        """The classifier's held-out loss (which picks the epoch) and AUC, and the IoU MSE."""
        record = super()._validate(model, val, weight, device)
        out = predict(model, val, _forward, max(len(val), 1), device)
        record["val_iou_mse"] = float(F.mse_loss(out[:, 2], torch.cat([d.y_iou for d in val])))
        return record
