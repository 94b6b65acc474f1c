r"""``gcnn_ens``: a seeded ensemble of hybrid lesion GCNNs, shrunk toward MetaSeg.

The paper's GCNN (``gcnn_classif``) learns from a few hundred validation lesions; with
fewer it overfits and can fall below the linear MetaSeg model on the same lesions. This
scorer keeps the paper's graph convolutions and adds three principled safeguards, none of
them a tuned constant of one data set:

1. **Hybrid head (shrinkage toward the simpler model).** The FP logit is the sum of a
   linear function of the lesion-level MetaSeg features ``z`` = standardised
   [entropy_mean, variance_mean, pcs_mean, log n_voxels] (optionally the lesion centroid,
   the "global location" the paper's future work proposes) and a linear function of the
   graph readout ``r``:

   .. math::
       \mathrm{logit}_{FP} = w_z^\top z + w_r^\top \mathrm{dropout}(r) + b.

   With the graph weights at zero this *is* MetaSeg's logistic regression; weight decay
   pulls the graph part toward zero unless the data pay for it.
2. **Regularisation**: weight decay (L2) on every weight and dropout on the readout.
3. **A seeded ensemble**: ``n_models`` members, each with its own seed, initialisation,
   batch order and stratified held-out split, each keeping its best epoch on its held-out
   lesions; the uncertainty is the mean P(FP) of the members.

With ``n_models=1, lesion_features=False, readout="mean", dropout=0, weight_decay=0`` the
model is the paper's (2 GCNConv layers, h = 64, mean readout, linear head).

Example:
    >>> scorer = GCNNEnsembleScorer(GCNNEnsConfig(n_models=5)).fit(val_lesions)
    >>> u = scorer.score(test_lesions)  # (N,) float64 P(FP)
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score
from torch.nn import functional as F
from torch_geometric.data import Batch, Data

from lesionuq.config import ExperimentConfig
from lesionuq.io import InputError, atomic_torch_save
from lesionuq.lesions.dataset import LesionSet
from lesionuq.scorers.base import LesionScorer, check_is_fitted, table_column
from lesionuq.scorers.nn import (
    HYBRID_READOUTS,
    HybridLesionGCN,
    NullProgress,
    Schedule,
    balanced_class_weight,
    fit_graph_model,
    normalized_edges_each,
    predict,
    split_train_val,
)
from lesionuq.utils import make_progress, torch_threads

__all__ = [
    "LESION_FEATURES",
    "POSITION_FEATURES",
    "GCNNEnsConfig",
    "GCNNEnsembleScorer",
    "HybridLesionGCN",
    "lesion_features",
    "make_gcnn_ens",
    "member_seed",
]

MODEL_FILE = "models.pt"
LESION_FEATURES: tuple[str, ...] = ("entropy_mean", "variance_mean", "pcs_mean", "n_voxels")
"""Lesion-table columns of the hybrid head (``n_voxels`` enters as its log)."""
POSITION_FEATURES: tuple[str, ...] = ("centroid_x", "centroid_y", "centroid_z")
"""Lesion-table columns added by ``GCNNEnsConfig.position``."""
_READOUTS = HYBRID_READOUTS
_SELECT = ("loss", "auc", "last")
_SCORE_BATCH = 256


@dataclass(frozen=True)
class GCNNEnsConfig:
    """Settings of :class:`GCNNEnsembleScorer` (defaults: the registered ``gcnn_ens``).

    Attributes:
        n_models: Ensemble members (each seeded ``member_seed(seed, m)``).
        hidden: Hidden size h of the GCNConv layers.
        layers: Number of GCNConv layers (2 in the paper).
        readout: ``"mean"``, ``"max"``, ``"sum"`` or ``"meanmax"`` (both concatenated).
        lesion_features: Hybrid head: add the lesion-level MetaSeg features linearly.
        position: Also give the head the lesion centroid (needs ``lesion_features``).
        dropout: Dropout on the graph readout (training only).
        weight_decay: Adam L2 penalty on all weights.
        standardize: Standardise node features with the training mean / std.
        lr: Initial Adam learning rate.
        lr_min: Final learning rate (cosine decay per step).
        epochs: Training epochs per member.
        batch_size: Graphs per batch.
        val_fraction: Stratified share of the training lesions each member holds out to
            choose its epoch.
        select: Epoch choice on the held-out lesions: ``"loss"`` (lowest cross-entropy),
            ``"auc"`` (highest AUC, ties to the lower loss) or ``"last"``.
        class_weight: Weight the cross-entropy by inverse class frequency.
        seed: Master seed.
    """

    n_models: int = 5
    hidden: int = 64
    layers: int = 2
    readout: str = "meanmax"
    lesion_features: bool = True
    position: bool = False
    dropout: float = 0.2
    weight_decay: float = 1e-3
    standardize: bool = True
    lr: float = 1e-2
    lr_min: float = 1e-5
    epochs: int = 60
    batch_size: int = 10
    val_fraction: float = 0.2
    select: str = "loss"
    class_weight: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.readout not in _READOUTS:
            raise ValueError(f"readout must be one of {_READOUTS}, got {self.readout!r}.")
        if self.select not in _SELECT:
            raise ValueError(f"select must be one of {_SELECT}, got {self.select!r}.")
        if self.position and not self.lesion_features:
            raise ValueError("position needs lesion_features=True (it enters the hybrid head).")
        if min(self.n_models, self.layers, self.hidden, self.epochs, self.batch_size) < 1:
            raise ValueError(
                "n_models, layers, hidden, epochs and batch_size must be >= 1, "
                f"got {self.n_models}, {self.layers}, {self.hidden}, {self.epochs}, "
                f"{self.batch_size}."
            )
        if not 0 <= self.val_fraction < 1 or not 0 <= self.dropout < 1:
            raise ValueError("val_fraction and dropout must lie in [0, 1).")


def member_seed(seed: int, member: int) -> int:
    """Seed of ensemble member ``member`` (member 0 uses ``seed`` itself)."""
    return int(seed) + 1_000_003 * int(member)


def lesion_features(table: pd.DataFrame, position: bool = False, scorer: str = "gcnn_ens"):
    """Lesion-level features of the hybrid head (unstandardised).

    Args:
        table: Lesion table with the :data:`LESION_FEATURES` columns (and
            :data:`POSITION_FEATURES` when ``position``).
        position: Append the centroid (voxel coordinates).
        scorer: Name used in error messages.

    Returns:
        (N, 4) or (N, 7) float64: [entropy_mean, variance_mean, pcs_mean, log n_voxels,
        (centroid_x, centroid_y, centroid_z)].

    Raises:
        ValueError: A column is missing, NaN, or a size below one voxel.
    """
    cols = LESION_FEATURES + (POSITION_FEATURES if position else ())
    z = np.stack([table_column(table, c, scorer) for c in cols], axis=1).reshape(len(table), -1)
    if np.any(z[:, 3] < 1):
        raise ValueError(f"scorer '{scorer}': lesion sizes must be >= 1 voxel.")
    z[:, 3] = np.log(z[:, 3])
    if not np.all(np.isfinite(z)):
        raise ValueError(f"scorer '{scorer}': the lesion features contain NaN or inf.")
    return z


class GCNNEnsembleScorer(LesionScorer):
    """``gcnn_ens``: mean P(FP) of a seeded ensemble of hybrid lesion GCNNs.

    Labels: FP = not ``is_tp``. A degenerate training set (no lesions or a single class)
    gives a constant uncertainty (the FP fraction; 0.5 without lesions) with a warning.

    Args:
        cfg: Settings (see :class:`GCNNEnsConfig`).
        name: Method name.
        num_threads: PyTorch CPU threads while fitting / scoring (restored afterwards), or
            None to keep the current setting. Training runs on the CPU.

    Attributes:
        models_: The fitted :class:`HybridLesionGCN` members.
        in_features_: F, node features seen in fit.
        n_lesion_: D, lesion-level features (0 without the hybrid head).
        node_mean_, node_std_: (F,) float32 node standardisation.
        lesion_mean_, lesion_std_: (D,) float32 lesion-feature standardisation.
        best_epochs_: 1-based kept epoch of each member.
        history_: Per member, per-epoch dicts (epoch, train_loss, val_loss, val_auc).
        constant_: The constant uncertainty of a degenerate fit, else None.
    """

    models_: list[HybridLesionGCN]
    constant_: float | None
    in_features_: int | None

    def __init__(
        self, cfg: GCNNEnsConfig | None = None, name: str = "gcnn_ens", num_threads: int | None = 1
    ) -> None:
        self.cfg = cfg or GCNNEnsConfig()
        self.name = name
        self.num_threads = num_threads

    def get_params(self) -> dict[str, Any]:
        """Constructor arguments (the config as a dict)."""
        return {
            "cfg": dataclasses.asdict(self.cfg),
            "name": self.name,
            "num_threads": self.num_threads,
        }

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Self:
        """Rebuild from :meth:`get_params` output."""
        params = dict(params)
        params["cfg"] = GCNNEnsConfig(**params["cfg"])
        return cls(**params)

    def _new_model(self) -> HybridLesionGCN:
        c = self.cfg
        if self.in_features_ is None:
            raise TypeError(f"{self.name}: the node feature count is unknown (not fitted).")
        return HybridLesionGCN(
            int(self.in_features_), self.n_lesion_, c.hidden, c.layers, c.readout, c.dropout
        )

    # ------------------------------------------------------------------ fit
    def fit(self, lesions: LesionSet, progress: bool = True) -> Self:
        """Train ``n_models`` members on labelled lesion graphs.

        Args:
            lesions: N lesions with graphs and the table columns ``is_tp`` and the
                lesion features.
            progress: Show a bar over the members' epochs.

        Raises:
            ValueError: Missing graphs / columns, inconsistent node features.
        """
        with torch_threads(self.num_threads):
            return self._fit(lesions, progress)

    def _fit(self, lesions: LesionSet, progress: bool) -> Self:
        cfg = self.cfg
        y_fp = (1 - table_column(lesions.table, "is_tp", self.name)).astype(np.int64)
        self._reset()
        self.in_features_ = _check_graphs(lesions, None, self.name)
        self.n_lesion_ = (
            len(LESION_FEATURES) + (len(POSITION_FEATURES) if cfg.position else 0)
            if cfg.lesion_features
            else 0
        )
        if len(y_fp) == 0 or np.all(y_fp == y_fp[0]):
            self.constant_ = float(y_fp.mean()) if len(y_fp) else 0.5
            warnings.warn(
                f"{self.name}: training lesions contain a single class (or none); "
                f"using the constant uncertainty {self.constant_:g}.",
                UserWarning,
                stacklevel=3,
            )
            return self
        x_all = torch.cat([g.x for g in lesions.graphs]).double()
        if cfg.standardize:
            std = x_all.std(0, unbiased=False)
            self.node_mean_ = x_all.mean(0).float()
            self.node_std_ = torch.where(std > 1e-8, std, torch.ones_like(std)).float()
        else:
            self.node_mean_ = torch.zeros(x_all.shape[1])
            self.node_std_ = torch.ones(x_all.shape[1])
        if self.n_lesion_:
            z = lesion_features(lesions.table, cfg.position, self.name)
            sd = z.std(0)
            self.lesion_mean_ = torch.tensor(z.mean(0), dtype=torch.float32)
            self.lesion_std_ = torch.tensor(np.where(sd > 1e-8, sd, 1.0), dtype=torch.float32)
        data = self._to_data(lesions, y_fp)
        start = time.perf_counter()
        with make_progress() if progress else NullProgress() as bar:
            task = bar.add_task(self.name, total=cfg.n_models * cfg.epochs, info="")
            for m in range(cfg.n_models):
                model, best, history = self._fit_member(
                    data, y_fp, member_seed(cfg.seed, m), lambda: bar.update(task, advance=1)
                )
                self.models_.append(model)
                self.best_epochs_.append(best)
                self.history_.append(history)
        self.fit_seconds_ = time.perf_counter() - start
        return self

    def _fit_member(
        self, data: list[Data], y_fp: np.ndarray, seed: int, tick: Any
    ) -> tuple[HybridLesionGCN, int, list[dict[str, Any]]]:
        cfg = self.cfg
        train_idx, val_idx = split_train_val(y_fp, cfg.val_fraction, seed)
        weight = balanced_class_weight(y_fp[train_idx]) if cfg.class_weight else None
        fitted = fit_graph_model(
            self._new_model,
            [data[i] for i in train_idx],
            [data[i] for i in val_idx],
            schedule=Schedule(
                cfg.lr, cfg.lr_min, cfg.epochs, cfg.batch_size, weight_decay=cfg.weight_decay
            ),
            seed=seed,
            forward=_forward,
            loss=lambda out, batch: F.cross_entropy(out, batch.y_fp, weight=weight),
            validate=lambda model, val: _validate(model, val, weight),
            rank=None if cfg.select == "last" else _RANKS[cfg.select],
            on_epoch=lambda record: tick(),
        )
        assert isinstance(fitted.model, HybridLesionGCN)
        return fitted.model, fitted.best_epoch, fitted.history

    def _reset(self) -> None:
        self.models_ = []
        self.constant_ = None
        self.in_features_ = None
        self.n_lesion_ = 0
        self.node_mean_ = self.node_std_ = torch.zeros(0)
        self.lesion_mean_ = self.lesion_std_ = torch.zeros(0)
        self.best_epochs_: list[int] = []
        self.history_: list[list[dict[str, Any]]] = []
        self.fit_seconds_ = 0.0

    def _to_data(self, lesions: LesionSet, y_fp: np.ndarray | None = None) -> list[Data]:
        """Standardised ``Data`` (x, normalised edges, z (1, D), and y_fp when given)."""
        if self.n_lesion_:
            z = lesion_features(lesions.table, self.cfg.position, self.name)
            z = (torch.tensor(z, dtype=torch.float32) - self.lesion_mean_) / self.lesion_std_
        out = []
        edges = normalized_edges_each(
            [g.edge_index for g in lesions.graphs], [g.x.shape[0] for g in lesions.graphs]
        )
        for i, (g, (edge_index, edge_weight)) in enumerate(zip(lesions.graphs, edges, strict=True)):
            d = Data(
                x=(g.x.float() - self.node_mean_) / self.node_std_,
                edge_index=edge_index,
                edge_weight=edge_weight,
            )
            if self.n_lesion_:
                d.z = z[i : i + 1]
            if y_fp is not None:
                d.y_fp = torch.tensor([y_fp[i]], dtype=torch.long)
            out.append(d)
        return out

    # ---------------------------------------------------------------- score
    def score(self, lesions: LesionSet) -> np.ndarray:
        """(N,) float64: the members' mean P(FP).

        Raises:
            NotFittedError: Not fitted.
            ValueError: Missing graphs / columns or a node-feature count differing from fit.
        """
        with torch_threads(self.num_threads):
            return self._score(lesions)

    def _score(self, lesions: LesionSet) -> np.ndarray:
        check_is_fitted(self)
        n = len(lesions)
        if n and self.in_features_ is not None:
            _check_graphs(lesions, self.in_features_, self.name)
        if self.constant_ is not None:
            return np.full(n, self.constant_, dtype=np.float64)
        if n == 0:
            return np.zeros(0, dtype=np.float64)
        data = self._to_data(lesions)
        total = torch.zeros(n, dtype=torch.float64)
        for model in self.models_:
            out = predict(model, data, _forward, _SCORE_BATCH)
            total += torch.softmax(out, dim=1)[:, 1].double()
        return (total / len(self.models_)).numpy()

    # ------------------------------------------------------------ save/load
    def _state(self, folder: Path) -> dict[str, Any]:
        check_is_fitted(self)
        if self.models_:
            atomic_torch_save([m.state_dict() for m in self.models_], folder / MODEL_FILE)
        return {
            "constant": self.constant_,
            "in_features": self.in_features_,
            "n_lesion": self.n_lesion_,
            "node_mean": self.node_mean_.tolist(),
            "node_std": self.node_std_.tolist(),
            "lesion_mean": self.lesion_mean_.tolist(),
            "lesion_std": self.lesion_std_.tolist(),
            "best_epochs": self.best_epochs_,
            "fit_seconds": self.fit_seconds_,
            "history": self.history_,
        }

    def _set_state(self, state: dict[str, Any] | None, folder: Path) -> None:
        if state is None:
            raise ValueError(f"{folder}: scorer '{self.name}' was saved without its state.")
        self._reset()
        self.constant_ = state["constant"]
        self.in_features_ = state["in_features"]
        self.n_lesion_ = int(state["n_lesion"])
        self.node_mean_ = torch.tensor(state["node_mean"], dtype=torch.float32)
        self.node_std_ = torch.tensor(state["node_std"], dtype=torch.float32)
        self.lesion_mean_ = torch.tensor(state["lesion_mean"], dtype=torch.float32)
        self.lesion_std_ = torch.tensor(state["lesion_std"], dtype=torch.float32)
        self.best_epochs_ = list(state["best_epochs"])
        self.fit_seconds_ = state["fit_seconds"]
        self.history_ = state["history"]
        if self.constant_ is None:
            path = folder / MODEL_FILE
            if not path.is_file():
                raise InputError(f"{path}: file not found.")
            for sd in torch.load(path, map_location="cpu", weights_only=True):
                model = self._new_model()
                model.load_state_dict(sd)
                self.models_.append(model.eval())


def _forward(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """A batch through :class:`HybridLesionGCN` (with its lesion features when it has them)."""
    return model(batch.x, batch.edge_index, batch.batch, _z(batch), batch.edge_weight)


def _z(batch: Batch) -> torch.Tensor | None:
    return batch.z if "z" in batch else None


def _validate(
    model: torch.nn.Module, val: list[Data], weight: torch.Tensor | None
) -> dict[str, float | None]:
    """Held-out cross-entropy and AUC of the graphs ``val``, in one batch."""
    out = predict(model, val, _forward, len(val))
    y_fp = torch.cat([d.y_fp for d in val])
    loss = float(F.cross_entropy(out, y_fp, weight=weight))
    labels = y_fp.numpy()
    p_fp = torch.softmax(out, dim=1)[:, 1].numpy()
    auc = float(roc_auc_score(labels, p_fp)) if len(np.unique(labels)) == 2 else None
    return {"val_loss": loss, "val_auc": auc}


def _rank_by_loss(record: dict[str, Any]) -> tuple[float, ...]:
    return (record["val_loss"], 0.0)


def _rank_by_auc(record: dict[str, Any]) -> tuple[float, ...]:
    auc = record["val_auc"]
    return (-(auc if auc is not None else 0.5), record["val_loss"])


_RANKS = {"loss": _rank_by_loss, "auc": _rank_by_auc}
"""Epoch keys of ``GCNNEnsConfig.select`` (smaller is better; ``"last"`` ranks none)."""


def _check_graphs(lesions: LesionSet, expected: int | None, name: str) -> int | None:
    """Validate one (n_nodes, F) graph per lesion; return F (None without lesions)."""
    if len(lesions) == 0:
        return expected
    if len(lesions.graphs) != len(lesions):
        raise ValueError(
            f"scorer '{name}' needs one graph per lesion; the LesionSet has "
            f"{len(lesions.graphs)} graphs for {len(lesions)} lesions."
        )
    n_feat = expected
    for i, g in enumerate(lesions.graphs):
        if g.x is None or g.x.dim() != 2 or g.x.shape[0] == 0 or g.edge_index is None:
            raise ValueError(f"scorer '{name}': graph {i} has no (n_nodes, F) x or edges.")
        n_feat = int(g.x.shape[1]) if n_feat is None else n_feat
        if g.x.shape[1] != n_feat:
            what = "the model was fitted on" if expected is not None else "graph 0 has"
            raise ValueError(
                f"scorer '{name}': graph {i} has {g.x.shape[1]} node features, {what} {n_feat}."
            )
        if not torch.isfinite(g.x).all():
            raise ValueError(f"scorer '{name}': graph {i} has NaN/inf node features.")
    return n_feat


def make_gcnn_ens(cfg: ExperimentConfig) -> GCNNEnsembleScorer:
    """The registered ``gcnn_ens`` scorer.

    :class:`GCNNEnsConfig` defaults for the model, the experiment's ``gcnn`` settings for
    training (h, learning rates, epochs, batch size, held-out fraction, class weights, seed).
    """
    g = cfg.gcnn
    ens = GCNNEnsConfig(
        hidden=g.hidden,
        lr=g.lr,
        lr_min=g.lr_min,
        epochs=g.epochs,
        batch_size=g.batch_size,
        val_fraction=g.val_fraction,
        class_weight=g.class_weight,
        seed=g.seed,
    )
    return GCNNEnsembleScorer(ens, name="gcnn_ens")
