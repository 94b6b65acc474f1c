r"""The lesion GCNNs: graph-level GCNs that map one lesion graph to logits.

- :class:`LesionGCN`, the paper's model (2.3): two GCN layers, a readout, a linear head.
- :class:`HybridLesionGCN`, ``gcnn_ens``'s member: ``layers`` GCN layers, a readout,
  dropout, and a linear head on the readout plus one on lesion-level features ``z``.

Both take a batch as PyG gives it (all graphs' nodes stacked, ``batch`` the graph of each
node) and build the batch's normalised adjacency once (:func:`~.conv.gcn_adjacency`).
"""

from __future__ import annotations

import itertools

import torch
from torch import nn
from torch.nn import functional as F
from torch_geometric.nn import global_add_pool, global_max_pool, global_mean_pool

from lesionuq.scorers.nn.conv import SymmetricGCNConv, gcn_adjacency

__all__ = ["HYBRID_READOUTS", "READOUTS", "HybridLesionGCN", "LesionGCN"]

READOUTS = {"mean": global_mean_pool, "max": global_max_pool, "sum": global_add_pool}
"""Node-to-graph pooling of :class:`LesionGCN`, by name."""
HYBRID_READOUTS: tuple[str, ...] = (*READOUTS, "meanmax")
"""Readouts of :class:`HybridLesionGCN` (``"meanmax"``: mean and max concatenated)."""


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
        - edge_weight: (E,) normalised weights from :func:`~.conv.normalized_edges`, or
          None (raw edges; normalised here)
        - output: (B, out_features)
    """

    def __init__(
        self, in_features: int, hidden: int = 64, out_features: int = 2, readout: str = "mean"
    ) -> None:
        super().__init__()
        if readout not in READOUTS:
            raise ValueError(f"readout must be one of {', '.join(READOUTS)}, got {readout!r}.")
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
        return self.head(READOUTS[self.readout](h, batch))


class HybridLesionGCN(nn.Module):
    """GCN graph readout plus a linear term in lesion-level features.

    ``layers`` x (GCNConv + ReLU), a readout (mean / max / sum, or mean and max
    concatenated), dropout, then ``logits = head_graph(r) + head_lesion(z)``.

    Args:
        in_features: F, node features.
        n_lesion: D, lesion-level features (0: no lesion head, a plain GCN).
        hidden: h.
        layers: Number of GCNConv layers.
        readout: One of :data:`HYBRID_READOUTS`.
        dropout: Dropout probability on the readout.

    Shapes:
        - x: (n_nodes, F); edge_index: (2, E); batch: (n_nodes,) or None
        - z: (B, D) or None when D = 0
        - edge_weight: (E,) from :func:`~.conv.normalized_edges`, or None
        - output: (B, 2) logits [TP, FP]
    """

    def __init__(
        self,
        in_features: int,
        n_lesion: int = 0,
        hidden: int = 64,
        layers: int = 2,
        readout: str = "meanmax",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if readout not in HYBRID_READOUTS:
            raise ValueError(f"readout must be one of {HYBRID_READOUTS}, got {readout!r}.")
        dims = [in_features] + [hidden] * layers
        self.convs = nn.ModuleList(SymmetricGCNConv(a, b) for a, b in itertools.pairwise(dims))
        self.readout = readout
        self.dropout = nn.Dropout(dropout)
        width = 2 * hidden if readout == "meanmax" else hidden
        self.head_graph = nn.Linear(width, 2)
        self.head_lesion = nn.Linear(n_lesion, 2, bias=False) if n_lesion else None

    def forward(
        self,
        x: torch.Tensor,
        edge_index: torch.Tensor,
        batch: torch.Tensor | None = None,
        z: torch.Tensor | None = None,
        edge_weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, 2) logits; see the class docstring for shapes."""
        if batch is None:
            batch = x.new_zeros(x.shape[0], dtype=torch.long)
        adj = gcn_adjacency(edge_index, x.shape[0], edge_weight)
        h = x
        for conv in self.convs:
            h = F.relu(conv(h, adj))
        if self.readout == "meanmax":
            r = torch.cat([global_mean_pool(h, batch), global_max_pool(h, batch)], dim=1)
        else:
            r = READOUTS[self.readout](h, batch)
        out = self.head_graph(self.dropout(r))
        if self.head_lesion is not None:
            if z is None:
                raise ValueError("this model needs the lesion features z.")
            out = out + self.head_lesion(z)
        return out
