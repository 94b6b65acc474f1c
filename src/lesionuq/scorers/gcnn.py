"""The lesion GCNN (paper 2.3): two GCN layers, a graph readout and a linear head.

Each lesion is a graph whose nodes are the voxels of its dilated mask (26-neighbour
edges) with features [intensities..., label, entropy, variance, pcs]. Two variants:

- ``gcnn_classif``: FP (IoU_adj < epsilon) vs TP with cross-entropy; uncertainty P(FP).
- ``gcnn_reg``: IoU_adj with the MSE loss; uncertainty 1 - clip(predicted IoU_adj, 0, 1).

Training follows the paper (3.4): Adam, learning rate from ``cfg.lr`` down to
``cfg.lr_min`` (cosine, per step), batches of ``cfg.batch_size`` graphs, on the CPU by
default. Node features are standardised with the training graphs' mean and std. A
stratified, seeded ``cfg.val_fraction`` of the training graphs is held out to choose the
epoch (lowest validation loss). Everything is seeded by ``cfg.seed`` without touching the
global random state, so a fit on the CPU is reproducible bit for bit.

The normalised adjacency of each lesion graph is computed once (:func:`normalized_edges`)
and a batch's block-diagonal adjacency is one sparse CSR matrix (:func:`gcn_adjacency`),
so each GCN layer is a sparse-dense product instead of PyG's gather/scatter message
passing over the (E, h) edge messages: the same numbers, about 4x faster on a CPU
(26-neighbour graphs have ~20 edges per node).
"""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path
from typing import Any, Self

import numpy as np
import torch
from rich.progress import TaskID
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.nn import functional as F
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader
from torch_geometric.nn import GCNConv, global_add_pool, global_max_pool, global_mean_pool
from torch_geometric.nn.conv.gcn_conv import gcn_norm
from torch_geometric.utils import coalesce, is_undirected, to_torch_csr_tensor

from lesionuq.config import GCNNConfig
from lesionuq.errors import InputError
from lesionuq.io import atomic_torch_save
from lesionuq.lesions.dataset import LesionSet
from lesionuq.scorers.base import LesionScorer, check_is_fitted, table_column
from lesionuq.utils import make_progress, resolve_device, torch_threads

__all__ = [
    "GCNNScorer",
    "LesionGCN",
    "SymmetricGCNConv",
    "gcn_adjacency",
    "normalized_edges",
    "split_train_val",
]

MODEL_FILE = "model.pt"
_READOUTS = {"mean": global_mean_pool, "max": global_max_pool, "sum": global_add_pool}
_TASKS = ("classif", "reg")
_SCORE_BATCH = 256


def normalized_edges(edge_index: torch.Tensor, num_nodes: int) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Edges and weights of :math:`\hat{D}^{-1/2}(A + I)\hat{D}^{-1/2}`, sorted by row.

    Kipf & Welling's normalisation (PyG's ``gcn_norm`` with self-loops), coalesced so that
    the edges of graphs batched one after the other stay sorted by row (what
    :func:`gcn_adjacency` needs).

    Args:
        edge_index: (2, E) int64 edges of one graph (or of a batch), without self-loops,
            each edge in both directions.
        num_nodes: N.

    Returns:
        ``(edge_index, edge_weight)``: (2, E + N) int64 and (E + N,) float32.

    Raises:
        ValueError: The graph is not undirected.
    """
    ei, w = gcn_norm(edge_index.long(), None, num_nodes, add_self_loops=True)
    ei, w = coalesce(ei, w, num_nodes)
    if not is_undirected(ei, w, num_nodes):
        raise ValueError("a lesion graph must be undirected (every edge in both directions).")
    return ei, w.float()


def gcn_adjacency(
    edge_index: torch.Tensor, num_nodes: int, edge_weight: torch.Tensor | None = None
) -> torch.Tensor:
    r"""The normalised GCN adjacency as a sparse CSR matrix (N, N).

    Args:
        edge_index: (2, E) int64. With ``edge_weight=None``, raw edges (self-loops and the
            normalisation are added here); otherwise the output of
            :func:`normalized_edges` (per graph, then batched).
        num_nodes: N.
        edge_weight: (E,) float normalised weights, or None.

    Returns:
        (N, N) ``torch.sparse_csr`` float tensor :math:`\hat{D}^{-1/2}\hat{A}\hat{D}^{-1/2}`
        (symmetric, so it is its own transpose, PyG's ``adj_t``).
    """
    if edge_weight is None:
        edge_index, edge_weight = normalized_edges(edge_index, num_nodes)
    with warnings.catch_warnings():  # "sparse CSR tensor support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        return to_torch_csr_tensor(
            edge_index, edge_weight, size=(num_nodes, num_nodes), is_coalesced=True
        )


class _SymmetricSpMM(torch.autograd.Function):
    """``A @ X`` for a constant symmetric sparse ``A``; the backward reuses ``A`` as ``A^T``.

    torch's own backward of a CSR product builds the transpose as a new CSR matrix at
    every step (about 20x the product's cost for a lesion batch).
    """

    @staticmethod
    def forward(ctx: Any, adj: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.adj = adj
        return torch.sparse.mm(adj, x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, torch.Tensor]:
        return None, torch.sparse.mm(ctx.adj, grad)


class SymmetricGCNConv(GCNConv):
    r"""PyG's ``GCNConv`` (Kipf & Welling) given :func:`gcn_adjacency`'s symmetric matrix.

    The layer, its parameters and its output are ``GCNConv(normalize=False)``'s; only the
    sparse product's gradient uses :math:`\hat{A}^\top = \hat{A}` (undirected lesion graphs).

    Shapes:
        - x: (N, F_in); adj_t: (N, N) sparse CSR from :func:`gcn_adjacency`
        - output: (N, F_out)
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, normalize=False)

    def message_and_aggregate(self, adj_t: Any, x: torch.Tensor) -> torch.Tensor:
        """Sum over neighbours: the sparse product ``adj_t @ x``."""
        return _SymmetricSpMM.apply(adj_t, x)


class LesionGCN(nn.Module):
    r"""Graph-level GCN: 2 x (GCNConv + ReLU), readout, Linear.

    .. math::
        H^{(1)} = \mathrm{ReLU}(\hat{D}^{-1/2}\hat{A}\hat{D}^{-1/2} X \Theta_1), \quad
        H^{(2)} = \mathrm{ReLU}(\hat{D}^{-1/2}\hat{A}\hat{D}^{-1/2} H^{(1)} \Theta_2),

    .. math::
        r_g = \mathrm{readout}_{i \in g} H^{(2)}_i, \quad y_g = W r_g + b,

    with :math:`\hat{A} = A + I` (self-loops) and :math:`\hat{D}` its degree matrix (Kipf &
    Welling's GCN, as DGL's ``GraphConv`` in the paper), readout the node mean, max or sum.

    Args:
        in_features: F, node features.
        hidden: h, hidden size of both layers (64 in the paper).
        out_features: 2 for classification (logits TP, FP), 1 for regression.
        readout: ``"mean"``, ``"max"`` or ``"sum"``.

    Shapes:
        - x: (n_nodes, F) float32, all graphs of the batch stacked
        - edge_index: (2, E) int64
        - batch: (n_nodes,) int64 graph index of each node, or None (one graph)
        - edge_weight: (E,) normalised weights from :func:`normalized_edges`, or None
          (raw edges; normalised here)
        - output: (B, out_features)
    """

    def __init__(self, in_features: int, hidden: int = 64, out_features: int = 2, readout="mean"):
        super().__init__()
        if readout not in _READOUTS:
            raise ValueError(f"readout must be one of {', '.join(_READOUTS)}, got {readout!r}.")
        # the normalised adjacency is built once per batch (gcn_adjacency)
        self.conv1 = SymmetricGCNConv(in_features, hidden)
        self.conv2 = SymmetricGCNConv(hidden, hidden)
        self.head = nn.Linear(hidden, out_features)
        self.readout = readout

    def forward(
        self,
        x: torch.Tensor,
        edge_index: torch.Tensor,
        batch: torch.Tensor | None = None,
        edge_weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Graph outputs (B, out_features); see the class docstring for shapes."""
        if batch is None:
            batch = x.new_zeros(x.shape[0], dtype=torch.long)
        adj = gcn_adjacency(edge_index, x.shape[0], edge_weight)
        h = F.relu(self.conv1(x, adj))
        h = F.relu(self.conv2(h, adj))
        return self.head(_READOUTS[self.readout](h, batch))


def split_train_val(y_fp: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split stratified by class, keeping at least one of each class for training.

    Args:
        y_fp: (N,) int labels (1 = FP).
        fraction: Share of each class held out (rounded per class).
        seed: Seed of the permutation.

    Returns:
        (train_idx, val_idx), sorted int64 arrays; ``val_idx`` may be empty.
    """
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(y_fp):
        idx = rng.permutation(np.flatnonzero(y_fp == c))
        n_val = min(round(fraction * len(idx)), len(idx) - 1)
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    if not train:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.sort(np.concatenate(train)).astype(np.int64), np.sort(np.concatenate(val)).astype(
        np.int64
    )


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

    Attributes:
        model_: The selected :class:`LesionGCN` (on the CPU after fitting / loading).
        in_features_: F, node features seen in fit.
        feature_mean_, feature_std_: (F,) float32 standardisation statistics.
        best_epoch_: 1-based epoch whose weights were kept.
        history_: Per-epoch dicts: epoch, lr, train_loss, val_loss, val_auc / val_mse.
        constant_: The constant uncertainty of a degenerate fit, else None.
    """

    # Learned state, set by ``fit`` / ``load`` (declared here for the type checker only).
    model_: LesionGCN | None
    constant_: float | None
    in_features_: int | None
    best_epoch_: int | None
    history_: list[dict[str, Any]]
    class_weight_: list[float] | None

    def __init__(
        self,
        task: str = "classif",
        cfg: GCNNConfig | None = None,
        name: str | None = None,
        device: str = "cpu",
        num_threads: int | None = 1,
    ) -> None:
        if task not in _TASKS:
            raise ValueError(f"task must be 'classif' or 'reg', got {task!r}.")
        self.task = task
        self.cfg = cfg or GCNNConfig()  # checked when made (GCNNConfig.__post_init__)
        self.name = name or f"gcnn_{task}"
        self.device = device
        self.num_threads = num_threads

    def _new_model(self, in_features: int) -> LesionGCN:
        out = 2 if self.task == "classif" else 1
        return LesionGCN(in_features, self.cfg.hidden, out, self.cfg.readout)

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
            return self._fit(lesions, progress)

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

        train_idx, val_idx = split_train_val(y_fp, cfg.val_fraction, cfg.seed)
        x_train = torch.cat([lesions.graphs[i].x for i in train_idx]).double()
        self.feature_mean_ = x_train.mean(0).float()
        std = x_train.std(0, unbiased=False)
        self.feature_std_ = torch.where(std > 1e-8, std, torch.ones_like(std)).float()
        data = self._to_data(lesions, y_fp, y_iou)
        train = [data[i] for i in train_idx]
        val = [data[i] for i in val_idx]

        device = resolve_device(self.device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            model = self._new_model(n_feat).to(device)
        generator = torch.Generator().manual_seed(cfg.seed)
        loader = DataLoader(train, batch_size=cfg.batch_size, shuffle=True, generator=generator)
        optimiser = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        total_steps = max(1, cfg.epochs * len(loader))
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimiser, T_max=total_steps, eta_min=cfg.lr_min
        )
        weight = None
        if self.task == "classif" and cfg.class_weight:
            counts = np.bincount(y_fp[train_idx], minlength=2).astype(np.float64)
            weight = torch.tensor(len(train_idx) / (2.0 * counts), dtype=torch.float32)
            weight = weight.to(device)
        self.class_weight_ = None if weight is None else weight.cpu().tolist()

        best_loss, best_state = math.inf, None
        self.history_ = []
        start = time.perf_counter()
        with make_progress(transient=False) if progress else _NullProgress() as bar:
            task = bar.add_task(self.name, total=cfg.epochs, info="")
            for epoch in range(1, cfg.epochs + 1):
                lr = optimiser.param_groups[0]["lr"]
                model.train()
                loss_sum, n_seen = 0.0, 0
                for batch in loader:
                    batch = self._augment(batch.to(device))
                    optimiser.zero_grad()
                    loss = self._loss(
                        model(batch.x, batch.edge_index, batch.batch, batch.edge_weight),
                        batch,
                        weight,
                    )
                    loss.backward()
                    optimiser.step()
                    scheduler.step()
                    loss_sum += loss.detach().item() * batch.num_graphs
                    n_seen += batch.num_graphs
                record: dict[str, Any] = {
                    "epoch": epoch,
                    "lr": lr,
                    "train_loss": loss_sum / max(n_seen, 1),
                }
                if val:
                    record.update(self._validate(model, val, weight, device))
                    current = record["val_loss"]
                else:
                    current = -epoch  # no held-out graphs: keep the last epoch
                if current < best_loss:
                    best_loss = current
                    state = model.state_dict()
                    best_state = {k: v.detach().cpu().clone() for k, v in state.items()}
                    self.best_epoch_ = epoch
                self.history_.append(record)
                bar.update(task, advance=1, info=_describe(record))
        if best_state is None:  # validation loss never finite: keep the last epoch
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            self.best_epoch_ = cfg.epochs
        best_model = self._new_model(n_feat)
        best_model.load_state_dict(best_state)
        self.model_ = best_model.eval()
        self.fit_seconds_ = time.perf_counter() - start
        self.n_train_, self.n_val_ = len(train), len(val)
        return self

    def _reset(self) -> None:
        self.model_ = None
        self.constant_ = None
        self.in_features_ = None
        self.best_epoch_ = None
        self.history_ = []
        self.class_weight_ = None
        self.fit_seconds_ = 0.0
        self.n_train_ = self.n_val_ = 0

    def _augment(self, batch: Data) -> Data:
        """A training batch as the model sees it: unchanged here (a subclass's hook)."""
        return batch

    def _loss(self, out: torch.Tensor, batch: Data, weight: torch.Tensor | None) -> torch.Tensor:
        if self.task == "classif":
            return F.cross_entropy(out, batch.y_fp, weight=weight)
        return F.mse_loss(out.squeeze(1), batch.y_iou)

    @torch.no_grad()
    def _validate(
        self, model: LesionGCN, val: list[Data], weight: torch.Tensor | None, device: torch.device
    ) -> dict[str, float | None]:
        model.eval()
        outs, fps, ious = [], [], []
        for batch in DataLoader(val, batch_size=_SCORE_BATCH, shuffle=False):
            batch = batch.to(device)
            outs.append(model(batch.x, batch.edge_index, batch.batch, batch.edge_weight))
            fps.append(batch.y_fp)
            ious.append(batch.y_iou)
        out, y_fp, y_iou = torch.cat(outs), torch.cat(fps), torch.cat(ious)
        if self.task == "classif":
            loss = float(F.cross_entropy(out, y_fp, weight=weight))
            p_fp = torch.softmax(out, dim=1)[:, 1].cpu().numpy()
            labels = y_fp.cpu().numpy()
            auc = float(roc_auc_score(labels, p_fp)) if len(np.unique(labels)) == 2 else None
            return {"val_loss": loss, "val_auc": auc}
        mse = float(F.mse_loss(out.squeeze(1), y_iou))
        return {"val_loss": mse, "val_mse": mse}

    # ---------------------------------------------------------------- score
    def score(self, lesions: LesionSet) -> np.ndarray:
        """(N,) float64: P(FP) (classif) or 1 - clip(predicted IoU_adj, 0, 1) (reg).

        Raises:
            RuntimeError: Not fitted.
            ValueError: Missing graphs or a node-feature count differing from the fit.
        """
        with torch_threads(self.num_threads):
            return self._score(lesions)

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
        model = self.model_.to(device).eval()
        outs = []
        with torch.no_grad():
            for batch in DataLoader(self._to_data(lesions), batch_size=_SCORE_BATCH):
                batch = batch.to(device)
                outs.append(model(batch.x, batch.edge_index, batch.batch, batch.edge_weight).cpu())
        self.model_.cpu()
        out = torch.cat(outs)
        if self.task == "classif":
            u = torch.softmax(out, dim=1)[:, 1]
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
        for i, g in enumerate(lesions.graphs):
            edge_index, edge_weight = normalized_edges(g.edge_index, g.x.shape[0])
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
        if self.constant_ is None:
            path = folder / MODEL_FILE
            if not path.is_file():
                raise InputError(f"{path}: file not found.")
            model = self._new_model(int(self.in_features_))
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            self.model_ = model.eval()


def _describe(record: dict[str, Any]) -> str:
    text = f"loss {record['train_loss']:.4f}"
    if "val_loss" in record:
        text += f" val {record['val_loss']:.4f}"
    if record.get("val_auc") is not None:
        text += f" auc {record['val_auc']:.3f}"
    return text


class _NullProgress:
    """Stand-in for a Rich progress bar when ``progress=False``."""

    def __enter__(self) -> _NullProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_task(self, *args: Any, **kwargs: Any) -> TaskID:
        return TaskID(0)

    def update(self, *args: Any, **kwargs: Any) -> None:
        return None
