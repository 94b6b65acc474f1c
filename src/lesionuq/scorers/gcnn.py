"""The lesion GCNN (paper 2.3): two GCN layers, a graph readout and a linear head.

Each lesion is a graph whose nodes are the voxels of its dilated mask (26-neighbour
edges) with features [intensities..., label, entropy, variance, pcs]. Two variants:

- ``gcnn_classif``: FP (IoU_adj < epsilon) vs TP with cross-entropy; uncertainty P(FP).
- ``gcnn_reg``: IoU_adj with the MSE loss; uncertainty 1 - clip(predicted IoU_adj, 0, 1).

Training follows the paper (3.4): Adam, learning rate from ``cfg.lr`` down to
``cfg.lr_min`` (cosine, per step), batches of ``cfg.batch_size`` graphs, on the CPU by
default. Node features are standardised with the training graphs' mean and std. A
stratified, seeded ``cfg.val_fraction`` of the training graphs is held out to choose the
epoch (lowest validation loss; the paper does not say how it stops). With ``epoch_cv =
k >= 2`` (``gcnn_scancv``, issue 31) the number of epochs is chosen instead by k-fold
cross-validation over the training graphs grouped by scan (the lesion-weighted mean
held-out loss per epoch), and the model is refitted on all of them, stopped at that
epoch. Everything is seeded by ``cfg.seed`` without touching the
global random state, so a fit on the CPU is reproducible bit for bit.

The model (:class:`~lesionuq.scorers.nn.LesionGCN`, sparse GCN layers) and the training
loop (:func:`~lesionuq.scorers.nn.fit_graph_model`) live in :mod:`lesionuq.scorers.nn`,
shared with ``gcnn_ens``; they are re-exported here under their old names.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch.nn import functional as F
from torch_geometric.data import Batch, Data

from lesionuq.calibration import scan_folds
from lesionuq.config import GCNNConfig
from lesionuq.errors import InputError
from lesionuq.io import atomic_torch_save
from lesionuq.lesions.dataset import LesionSet
from lesionuq.scorers.base import LesionScorer, check_is_fitted, table_column
from lesionuq.scorers.nn import (
    FittedModel,
    LesionGCN,
    NullProgress,
    Schedule,
    SymmetricGCNConv,
    balanced_class_weight,
    fit_graph_model,
    gcn_adjacency,
    normalized_edges,
    normalized_edges_each,
    predict,
    split_train_val,
)
from lesionuq.utils import make_progress, resolve_device, torch_threads

__all__ = [
    "GCNNScorer",
    "LesionGCN",
    "SymmetricGCNConv",
    "gcn_adjacency",
    "normalized_edges",
    "normalized_edges_each",
    "split_train_val",
]

MODEL_FILE = "model.pt"
_TASKS = ("classif", "reg")
_SCORE_BATCH = 256


class GCNNScorer(LesionScorer):
    """GCNN lesion scorer (``task="classif"``: P(FP); ``task="reg"``: 1 - IoU_adj).

    Labels come from the lesion table: FP = not ``is_tp`` and ``iou_adj``. If the
    training lesions are degenerate (none, or a single class for the classifier), the
    scorer warns and returns a constant (the FP fraction; 0.5 without lesions).

    Args:
        task: ``"classif"`` or ``"reg"``.
        cfg: Architecture and training settings.
        name: Method name; defaults to ``"gcnn_" + task``.
        device: ``"cpu"`` (default; the paper trains on CPU), ``"cuda"`` or ``"auto"``.
        num_threads: PyTorch CPU threads while fitting / scoring (restored afterwards), or
            None to keep the current setting. Defaults to 1: the graphs are so small that
            more threads do not help, and they slow down badly when cores are shared.
        epoch_cv: 0 (default): keep the epoch with the lowest loss on the held-out
            ``cfg.val_fraction`` of the lesions, split by lesion. k >= 2: choose the
            number of epochs by k-fold cross-validation grouped by scan
            (:func:`~lesionuq.calibration.scan_folds`: ``min(k, scans)`` folds from 2
            scans on, by lesion below), the first minimum of the held-out loss averaged
            over the folds with weights their lesion counts; then train on ALL the
            lesions with the same schedule and stop at that epoch. Costs about k + 1
            fits. Falls back to the held-out rule when no inner fold has both classes.

    Attributes:
        model_: The selected :class:`LesionGCN` (on the CPU after fitting / loading).
        in_features_: F, node features seen in fit.
        feature_mean_, feature_std_: (F,) float32 standardisation statistics.
        best_epoch_: 1-based epoch whose weights were kept.
        history_: Per-epoch dicts: epoch, lr, train_loss, val_loss, val_auc / val_mse.
        cv_loss_: (epochs,) cross-validated held-out loss per epoch (``epoch_cv``), else
            None.
        constant_: The constant uncertainty of a degenerate fit, else None.
    """

    # Learned state, set by ``fit`` / ``load`` (declared here for the type checker only).
    model_: LesionGCN | None
    constant_: float | None
    in_features_: int | None
    best_epoch_: int | None
    history_: list[dict[str, Any]]
    class_weight_: list[float] | None
    cv_loss_: list[float] | None

    def __init__(
        self,
        task: str = "classif",
        cfg: GCNNConfig | None = None,
        name: str | None = None,
        device: str = "cpu",
        num_threads: int | None = 1,
        epoch_cv: int = 0,
    ) -> None:
        if task not in _TASKS:
            raise ValueError(f"task must be 'classif' or 'reg', got {task!r}.")
        if epoch_cv < 0 or epoch_cv == 1:
            raise ValueError(f"epoch_cv must be 0 or at least 2, got {epoch_cv}.")
        self.task = task
        self.cfg = cfg or GCNNConfig()  # checked when made (GCNNConfig.__post_init__)
        self.name = name or f"gcnn_{task}"
        self.device = device
        self.num_threads = num_threads
        self.epoch_cv = epoch_cv

    @property
    def _out_features(self) -> int:
        """Width of the model's head: 2 logits (classif) or 1 IoU_adj (reg); a subclass's hook."""
        return 2 if self.task == "classif" else 1

    def _new_model(self, in_features: int) -> LesionGCN:
        return LesionGCN(in_features, self.cfg.hidden, self._out_features, self.cfg.readout)

    def _fp_logits(self, out: torch.Tensor) -> torch.Tensor:
        """(B, 2) [TP, FP] logits of the model's (B, out_features) output (classif).

        The whole output here; a subclass with more outputs picks its logit columns.
        """
        return out

    # ------------------------------------------------------------------ fit
    def fit(self, lesions: LesionSet, progress: bool = True) -> Self:
        """Train on labelled lesion graphs and keep the best epoch's weights.

        Args:
            lesions: N lesions with graphs and the table columns ``is_tp`` / ``iou_adj``.
            progress: Show a bar over epochs with the train loss and validation metric.

        Raises:
            ValueError: No graphs, inconsistent node features, NaN labels.
        """
        with torch_threads(self.num_threads):
            return self._fit(self._prepared(lesions), progress)

    def _fit(self, lesions: LesionSet, progress: bool) -> Self:
        cfg = self.cfg
        y_fp = (1 - table_column(lesions.table, "is_tp", self.name)).astype(np.int64)
        y_iou = table_column(lesions.table, "iou_adj", self.name)
        if self.task == "reg" and not np.all(np.isfinite(y_iou)):
            raise ValueError(f"{self.name}: iou_adj has NaN; fitting needs ground truth.")
        self._reset()
        n_feat = self._check_graphs(lesions, expected=None)
        self.in_features_ = n_feat
        degenerate = len(y_fp) == 0 or (self.task == "classif" and np.all(y_fp == y_fp[0]))
        if degenerate:
            self.constant_ = float(y_fp.mean()) if len(y_fp) else 0.5
            self.feature_mean_ = torch.zeros(n_feat or 0)
            self.feature_std_ = torch.ones(n_feat or 0)
            warnings.warn(
                f"{self.name}: training lesions contain a single class (or none); "
                f"using the constant uncertainty {self.constant_:g}.",
                UserWarning,
                stacklevel=3,
            )
            return self
        assert n_feat is not None  # there are lesions, so _check_graphs read F

        device = resolve_device(self.device)
        start = time.perf_counter()
        with make_progress(transient=False) if progress else NullProgress() as bar:
            stop_after = None
            if self.epoch_cv >= 2:
                curve = self._cv_loss(lesions, y_fp, y_iou, device, bar)
                if curve is not None:
                    self.cv_loss_ = curve.tolist()
                    stop_after = int(np.argmin(curve)) + 1
            if stop_after is None:
                train_idx, val_idx = split_train_val(y_fp, cfg.val_fraction, cfg.seed)
            else:
                train_idx, val_idx = np.arange(len(y_fp)), np.zeros(0, np.int64)
            task = bar.add_task(self.name, total=stop_after or cfg.epochs, info="")
            fitted = self._train(
                lesions,
                (y_fp, y_iou),
                (train_idx, val_idx),
                device,
                stop_after,
                on_epoch=lambda record: bar.update(task, advance=1, info=_describe(record)),
            )
        assert isinstance(fitted.model, LesionGCN)
        self.model_ = fitted.model
        self.best_epoch_ = fitted.best_epoch
        self.history_ = fitted.history
        self.fit_seconds_ = time.perf_counter() - start
        self.n_train_, self.n_val_ = len(train_idx), len(val_idx)
        return self

    def _train(
        self,
        lesions: LesionSet,
        labels: tuple[np.ndarray, np.ndarray],
        split: tuple[np.ndarray, np.ndarray],
        device: torch.device,
        stop_after: int | None = None,
        on_epoch: Callable[[dict[str, Any]], None] | None = None,
    ) -> FittedModel:
        """One fit on the lesions ``split[0]``, its epoch ranked on ``split[1]``.

        Sets the standardisation (``feature_mean_`` / ``feature_std_``, from the training
        graphs' nodes) and ``class_weight_`` to this fit's.

        Args:
            lesions: The N lesions.
            labels: (N,) int FP labels and (N,) float IoU_adj.
            split: Indices of the training and of the held-out lesions (may be empty).
            device: Training device.
            stop_after: Last epoch to train (:func:`fit_graph_model`), None for all.
            on_epoch: Called with each epoch's record.
        """
        cfg = self.cfg
        y_fp, y_iou = labels
        train_idx, val_idx = split
        x_train = torch.cat([lesions.graphs[i].x for i in train_idx]).double()
        self.feature_mean_ = x_train.mean(0).float()
        std = x_train.std(0, unbiased=False)
        self.feature_std_ = torch.where(std > 1e-8, std, torch.ones_like(std)).float()
        data = self._to_data(lesions, y_fp, y_iou)
        weight = None
        if self.task == "classif" and cfg.class_weight:
            weight = balanced_class_weight(y_fp[train_idx]).to(device)
        self.class_weight_ = None if weight is None else weight.cpu().tolist()
        n_feat = int(self.feature_mean_.numel())
        return fit_graph_model(
            lambda: self._new_model(n_feat),
            [data[i] for i in train_idx],
            [data[i] for i in val_idx],
            schedule=Schedule(cfg.lr, cfg.lr_min, cfg.epochs, cfg.batch_size),
            seed=cfg.seed,
            forward=_forward,
            loss=lambda out, batch: self._loss(out, batch, weight),
            validate=lambda model, held_out: self._validate(model, held_out, weight, device),
            rank=lambda record: (record["val_loss"],),
            augment=self._augment,
            device=device,
            log_lr=True,
            on_epoch=on_epoch,
            stop_after=stop_after,
        )

    def _cv_loss(
        self,
        lesions: LesionSet,
        y_fp: np.ndarray,
        y_iou: np.ndarray,
        device: torch.device,
        bar: Any,
    ) -> np.ndarray | None:
        """(epochs,) held-out loss per epoch, cross-validated by scan (``epoch_cv``).

        The lesion-weighted mean over the inner folds (:func:`scan_folds`) whose training
        part can be fitted (both classes, for the classifier); None when none can.
        """
        fold = scan_folds(lesions, self.epoch_cv, self.cfg.seed)
        total, n_held = np.zeros(self.cfg.epochs), 0
        task = bar.add_task(f"{self.name} (scan CV)", total=self.cfg.epochs * (fold.max() + 1))
        for k in range(int(fold.max()) + 1):
            train_idx, val_idx = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
            fittable = self.task == "reg" or np.unique(y_fp[train_idx]).size == 2
            if fittable and val_idx.size:
                fitted = self._train(
                    lesions,
                    (y_fp, y_iou),
                    (train_idx, val_idx),
                    device,
                    on_epoch=lambda record: bar.update(task, advance=1),
                )
                total += val_idx.size * np.array([r["val_loss"] for r in fitted.history])
                n_held += val_idx.size
            else:
                bar.update(task, advance=self.cfg.epochs)
        return total / n_held if n_held else None

    def _reset(self) -> None:
        self.model_ = None
        self.constant_ = None
        self.in_features_ = None
        self.best_epoch_ = None
        self.history_ = []
        self.class_weight_ = None
        self.cv_loss_ = None
        self.fit_seconds_ = 0.0
        self.n_train_ = self.n_val_ = 0

    def _prepared(self, lesions: LesionSet) -> LesionSet:
        """The lesions as the model reads them, in fit and score (a subclass's hook).

        Unchanged here; a subclass may normalise per scan or append lesion-level columns.
        """
        return lesions

    def _augment(self, batch: Data) -> Data:
        """A training batch as the model sees it: unchanged here (a subclass's hook)."""
        return batch

    def _loss(self, out: torch.Tensor, batch: Data, weight: torch.Tensor | None) -> torch.Tensor:
        if self.task == "classif":
            return F.cross_entropy(out, batch.y_fp, weight=weight)
        return F.mse_loss(out.squeeze(1), batch.y_iou)

    def _validate(
        self,
        model: torch.nn.Module,
        val: list[Data],
        weight: torch.Tensor | None,
        device: torch.device,
    ) -> dict[str, float | None]:
        """Held-out loss and AUC (classif) or MSE (reg) of the graphs ``val``."""
        out = predict(model, val, _forward, _SCORE_BATCH, device)
        if self.task == "classif":
            y_fp = torch.cat([d.y_fp for d in val])
            w = None if weight is None else weight.cpu()
            logits = self._fp_logits(out)
            loss = float(F.cross_entropy(logits, y_fp, weight=w))
            p_fp = torch.softmax(logits, dim=1)[:, 1].numpy()
            labels = y_fp.numpy()
            auc = float(roc_auc_score(labels, p_fp)) if len(np.unique(labels)) == 2 else None
            return {"val_loss": loss, "val_auc": auc}
        mse = float(F.mse_loss(out.squeeze(1), torch.cat([d.y_iou for d in val])))
        return {"val_loss": mse, "val_mse": mse}

    # ---------------------------------------------------------------- score
    def score(self, lesions: LesionSet) -> np.ndarray:
        """(N,) float64: P(FP) (classif) or 1 - clip(predicted IoU_adj, 0, 1) (reg).

        Raises:
            RuntimeError: Not fitted.
            ValueError: Missing graphs or a node-feature count differing from the fit.
        """
        with torch_threads(self.num_threads):
            return self._score(self._prepared(lesions))

    def _score(self, lesions: LesionSet) -> np.ndarray:
        check_is_fitted(self)
        n = len(lesions)
        if self.constant_ is not None:
            if n and self.in_features_ is not None:
                self._check_graphs(lesions, expected=self.in_features_)
            return np.full(n, self.constant_, dtype=np.float64)
        if n == 0:
            return np.zeros(0, dtype=np.float64)
        self._check_graphs(lesions, expected=self.in_features_)
        assert self.model_ is not None
        device = resolve_device(self.device)
        try:
            out = predict(
                self.model_.to(device), self._to_data(lesions), _forward, _SCORE_BATCH, device
            )
        finally:
            self.model_.cpu()
        if self.task == "classif":
            u = torch.softmax(self._fp_logits(out), dim=1)[:, 1]
        else:
            u = 1.0 - out.squeeze(1).clamp(0.0, 1.0)
        return u.numpy().astype(np.float64)

    # -------------------------------------------------------------- helpers
    def _check_graphs(self, lesions: LesionSet, expected: int | None) -> int | None:
        """Validate graphs; return their node-feature count (None when no lesions)."""
        if len(lesions) == 0:
            return expected
        if len(lesions.graphs) != len(lesions):
            raise ValueError(
                f"scorer '{self.name}' needs one graph per lesion; the LesionSet has "
                f"{len(lesions.graphs)} graphs for {len(lesions)} lesions."
            )
        n_feat = expected
        for i, g in enumerate(lesions.graphs):
            x = g.x
            if x is None or x.dim() != 2 or x.shape[0] == 0:
                raise ValueError(f"scorer '{self.name}': graph {i} has no (n_nodes, F) x.")
            if n_feat is None:
                n_feat = int(x.shape[1])
            if x.shape[1] != n_feat:
                what = "the model was fitted on" if expected is not None else "graph 0 has"
                raise ValueError(
                    f"scorer '{self.name}': graph {i} has {x.shape[1]} node features, "
                    f"{what} {n_feat}."
                )
            if g.edge_index is None or g.edge_index.dim() != 2 or g.edge_index.shape[0] != 2:
                raise ValueError(f"scorer '{self.name}': graph {i} has no (2, E) edge_index.")
            if not torch.isfinite(x).all():
                raise ValueError(f"scorer '{self.name}': graph {i} has NaN/inf node features.")
        return n_feat

    def _to_data(
        self, lesions: LesionSet, y_fp: np.ndarray | None = None, y_iou: np.ndarray | None = None
    ) -> list[Data]:
        """Standardised ``Data`` (x, normalised edge_index / edge_weight, labels when given)."""
        out = []
        edges = normalized_edges_each(
            [g.edge_index for g in lesions.graphs], [g.x.shape[0] for g in lesions.graphs]
        )
        for i, (g, (edge_index, edge_weight)) in enumerate(zip(lesions.graphs, edges, strict=True)):
            d = Data(
                x=(g.x.float() - self.feature_mean_) / self.feature_std_,
                edge_index=edge_index,
                edge_weight=edge_weight,
            )
            if y_fp is not None and y_iou is not None:
                d.y_fp = torch.tensor([y_fp[i]], dtype=torch.long)
                d.y_iou = torch.tensor([y_iou[i]], dtype=torch.float32)
            out.append(d)
        return out

    # ------------------------------------------------------------ save/load
    def _state(self, folder: Path) -> dict[str, Any]:
        if self.model_ is not None:
            atomic_torch_save(self.model_.state_dict(), folder / MODEL_FILE)
        return {
            "task": self.task,
            "constant": self.constant_,
            "in_features": self.in_features_,
            "feature_mean": self.feature_mean_.tolist(),
            "feature_std": self.feature_std_.tolist(),
            "best_epoch": self.best_epoch_,
            "n_train": self.n_train_,
            "n_val": self.n_val_,
            "class_weight": self.class_weight_,
            "fit_seconds": self.fit_seconds_,
            "history": self.history_,
            "cv_loss": self.cv_loss_,
        }

    def _set_state(self, state: dict[str, Any] | None, folder: Path) -> None:
        if state is None:
            raise ValueError(f"{folder}: scorer '{self.name}' was saved without its state.")
        self._reset()
        self.constant_ = state["constant"]
        self.in_features_ = state["in_features"]
        self.feature_mean_ = torch.tensor(state["feature_mean"], dtype=torch.float32)
        self.feature_std_ = torch.tensor(state["feature_std"], dtype=torch.float32)
        self.best_epoch_ = state["best_epoch"]
        self.n_train_, self.n_val_ = state["n_train"], state["n_val"]
        self.class_weight_ = state["class_weight"]
        self.fit_seconds_ = state["fit_seconds"]
        self.history_ = state["history"]
        self.cv_loss_ = state.get("cv_loss")  # saved before epoch_cv existed: None
        if self.constant_ is None:
            path = folder / MODEL_FILE
            if not path.is_file():
                raise InputError(f"{path}: file not found.")
            model = self._new_model(int(self.in_features_))
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            self.model_ = model.eval()


def _forward(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """A batch through :class:`LesionGCN`: (B, 2) logits or (B, 1) IoU_adj."""
    return model(batch.x, batch.edge_index, batch.batch, batch.edge_weight)


def _describe(record: dict[str, Any]) -> str:
    text = f"loss {record['train_loss']:.4f}"
    if "val_loss" in record:
        text += f" val {record['val_loss']:.4f}"
    if record.get("val_auc") is not None:
        text += f" auc {record['val_auc']:.3f}"
    return text
