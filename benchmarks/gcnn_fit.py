"""Speed of a lesion-GCNN training epoch: sparse products against PyG message passing.

``LesionGCN`` (``lesionuq.scorers.gcnn``) computes each GCN layer as one sparse CSR product
with the normalised adjacency, built once per graph (``normalized_edges``) and once per
batch (``gcn_adjacency``), with a backward that reuses the symmetric matrix. The
reference, measured in the same run on the same batches, is the textbook PyG model:
``GCNConv`` with its default normalisation recomputed in every forward and gather /
scatter message passing over the (E, h) edge messages. Both start from the same weights;
the table gives seconds per epoch (forward, backward, Adam step over all training
graphs), the ratio, and the largest difference of their outputs.

Input: a run's validation lesion set (``--run RUN --fold K``), else a synthetic set of
lesion graphs: ellipsoids of log-normal volume (median ~25 voxels), dilated by one voxel,
26-neighbour edges, 7 node features.

Run: ``python benchmarks/gcnn_fit.py [--run RUN --fold 0] [--epochs 5] [--threads 1]``
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from torch import nn
from torch.nn import functional as F
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader
from torch_geometric.nn import GCNConv, global_mean_pool

from lesionuq.lesions.graphs import neighbour_edges
from lesionuq.scorers.gcnn import LesionGCN, normalized_edges


class ReferenceGCN(nn.Module):
    """The paper's GCN written the plain PyG way (normalisation and messages per call)."""

    def __init__(self, in_features: int, hidden: int = 64) -> None:
        super().__init__()
        self.conv1 = GCNConv(in_features, hidden)
        self.conv2 = GCNConv(hidden, hidden)
        self.head = nn.Linear(hidden, 2)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor, batch: torch.Tensor):
        h = F.relu(self.conv1(x, edge_index))
        h = F.relu(self.conv2(h, edge_index))
        return self.head(global_mean_pool(h, batch))


def synthetic_graphs(n: int, seed: int) -> list[Data]:
    """``n`` lesion graphs: dilated ellipsoids of log-normal volume, 7 random features."""
    rng = np.random.default_rng(seed)
    graphs = []
    for _ in range(n):
        volume = float(np.clip(rng.lognormal(np.log(25), 1.0), 3, 3000))
        radii = (volume * 3 / (4 * np.pi)) ** (1 / 3) * rng.uniform(0.7, 1.3, 3)
        half = np.ceil(radii).astype(int) + 2
        grid = np.stack(np.meshgrid(*[np.arange(-h, h + 1) for h in half], indexing="ij"))
        mask = (((grid / radii[:, None, None, None]) ** 2).sum(0) <= 1) | (grid == 0).all(0)
        mask = ndimage.binary_dilation(mask, np.ones((3, 3, 3), bool))
        _, edge_index = neighbour_edges(mask)
        x = torch.from_numpy(rng.normal(size=(int(mask.sum()), 7)).astype(np.float32))
        y = torch.tensor([int(rng.random() < 0.25)])
        graphs.append(Data(x=x, edge_index=torch.from_numpy(edge_index).long(), y=y))
    return graphs


def run_graphs(run: Path, fold: int) -> list[Data]:
    """A run's validation lesion graphs with their FP labels."""
    from lesionuq.lesions.dataset import LesionSet
    from lesionuq.rundir import RunDir

    val = LesionSet.load(RunDir(run).lesion_set(fold, "val"))
    fp = (~val.is_tp).astype(int)
    return [
        Data(x=g.x.float(), edge_index=g.edge_index.long(), y=torch.tensor([int(f)]))
        for g, f in zip(val.graphs, fp, strict=True)
    ]


def epoch_seconds(model: nn.Module, data: list[Data], sparse: bool, epochs: int) -> float:
    """Mean seconds of one training epoch (batches of 10, Adam), after one warm-up epoch."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    times = []
    for epoch in range(epochs + 1):
        loader = DataLoader(
            data, batch_size=10, shuffle=True, generator=torch.Generator().manual_seed(epoch)
        )
        t0 = time.perf_counter()
        for b in loader:
            opt.zero_grad()
            if sparse:
                out = model(b.x, b.edge_index, b.batch, b.edge_weight)
            else:
                out = model(b.x, b.edge_index, b.batch)
            F.cross_entropy(out, b.y).backward()
            opt.step()
        times.append(time.perf_counter() - t0)
    return float(np.mean(times[1:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=None)
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--lesions", type=int, default=300, help="synthetic graphs")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    raw = run_graphs(args.run, args.fold) if args.run else synthetic_graphs(args.lesions, args.seed)
    normed = []
    for g in raw:
        ei, w = normalized_edges(g.edge_index, g.num_nodes)
        normed.append(Data(x=g.x, edge_index=ei, edge_weight=w, y=g.y))
    nodes = sum(g.num_nodes for g in raw)
    edges = sum(g.edge_index.shape[1] for g in raw)
    source = f"{args.run} fold {args.fold}" if args.run else "synthetic"
    print(f"{source}: {len(raw)} graphs, {nodes} nodes, {edges} edges, threads={args.threads}")

    torch.manual_seed(args.seed)
    ours = LesionGCN(raw[0].num_features, 64, 2, "mean")
    ref = ReferenceGCN(raw[0].num_features)
    ref.load_state_dict(ours.state_dict())
    first = next(iter(DataLoader(normed, batch_size=len(normed))))
    base = next(iter(DataLoader(raw, batch_size=len(raw))))
    with torch.no_grad():
        diff = (
            (
                ours(first.x, first.edge_index, first.batch, first.edge_weight)
                - ref(base.x, base.edge_index, base.batch)
            )
            .abs()
            .max()
            .item()
        )

    t_ref = epoch_seconds(ref, raw, sparse=False, epochs=args.epochs)
    t_ours = epoch_seconds(ours, normed, sparse=True, epochs=args.epochs)
    print(f"{'path':34s} {'s/epoch':>8s} {'ratio':>6s}")
    print(f"{'reference: GCNConv message passing':34s} {t_ref:8.3f} {1.0:6.2f}")
    print(f"{'lesionuq: sparse CSR products':34s} {t_ours:8.3f} {t_ref / t_ours:6.2f}")
    print(f"max |output difference| at equal weights: {diff:.2e}")
    print(f"RESULT gcnn_epoch_speedup {t_ref / t_ours:.2f}")


if __name__ == "__main__":
    main()
