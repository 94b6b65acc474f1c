from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch_geometric.data import Batch, Data
from torch_geometric.nn import GCNConv

from lesionuq.config import METHODS, ExperimentConfig, GCNNConfig
from lesionuq.lesions.dataset import LesionSet
from lesionuq.scorers import load_scorer, make_scorer
from lesionuq.scorers.gcnn import (
    GCNNScorer,
    LesionGCN,
    SymmetricGCNConv,
    gcn_adjacency,
    normalized_edges,
    normalized_edges_each,
    split_train_val,
)

EPS = 1e-6
OFFSETS = np.array([o for o in itertools.product((-1, 0, 1), repeat=3) if o != (0, 0, 0)])


def grid_graph(dims: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """Voxels of a box as nodes (C order) and their 26-neighbour edges (both directions).

    Returns (depth (n,), radius (n,), edge_index (2, E)); depth = Chebyshev distance to the
    box rim, radius = Euclidean distance to the box centre.
    """
    shape = np.array(dims)
    coords = np.stack(np.unravel_index(np.arange(shape.prod()), dims), axis=1)
    depth = np.minimum(coords, shape - 1 - coords).min(axis=1)
    radius = np.linalg.norm(coords - (shape - 1) / 2, axis=1)
    src, dst = [], []
    for off in OFFSETS:
        nb = coords + off
        ok = np.all((nb >= 0) & (nb < shape), axis=1)
        src.append(np.flatnonzero(ok))
        dst.append(np.ravel_multi_index(nb[ok].T, dims))
    edge_index = torch.from_numpy(np.stack([np.concatenate(src), np.concatenate(dst)]))
    return depth, radius, edge_index


def synthetic_lesions(n_pairs: int, seed: int) -> LesionSet:
    """Pairs of box lesions (one TP, one FP) with the SAME multiset of lesion-voxel values.

    Per pair: random lesion box dims in {3, 4, 5}^3 and random voxel entropies v. The graph
    is the box dilated by one voxel (label 1 inside, 0 on the ring, as ``build_graphs``).
    Inside the lesion the TP graph puts the highest uncertainties on the lesion's rim and
    the lowest in its core, the FP graph the reverse; ring values are random. Every
    permutation-invariant statistic of the lesion voxels (mean, logsum, size) is identical
    within a pair, so the table baselines rank at chance (AUC 0.5); only the spatial
    arrangement tells FP from TP. Node features [intensity, label, entropy, variance, pcs]
    with variance = v^2 / 4 and pcs (confidence) = 1 - v / 2.
    """
    rng = np.random.default_rng(seed)
    rows, graphs = [], []
    for k in range(n_pairs):
        dims = tuple(int(d) for d in rng.integers(3, 6, size=3))
        depth, radius, edge_index = grid_graph(tuple(d + 2 for d in dims))
        inside = depth >= 1
        radius_in = radius[inside]
        n, n_all = int(inside.sum()), len(depth)
        lo = rng.uniform(0.0, 0.2)
        v = np.sort(rng.uniform(lo, lo + 0.5, size=n))[::-1]  # descending multiset
        u_var, u_pcs = v**2 / 4, v / 2  # the three voxel uncertainties
        for is_tp in (True, False):
            # rank lesion voxels rim-first (TP) or centre-first (FP), random tie-break
            key = -radius_in if is_tp else radius_in
            order = np.lexsort((rng.random(n), key))
            ent = rng.uniform(0.2, 0.7, size=n_all)  # ring
            ent_in = np.empty(n)
            ent_in[order] = v
            ent[inside] = ent_in
            label = inside.astype(np.float64)
            x = np.stack(
                [label + rng.normal(size=n_all), label, ent, ent**2 / 4, 1 - ent / 2], axis=1
            ).astype(np.float32)
            iou = rng.uniform(0.3, 0.9) if is_tp else rng.uniform(0.0, 0.09)
            lesion_id = 2 * k + (0 if is_tp else 1) + 1
            rows.append(
                {
                    "case_id": f"c{seed}",
                    "lesion_id": lesion_id,
                    "n_voxels": n,
                    "iou_adj": iou,
                    "is_tp": is_tp,
                    # aggregates over the canonical (sorted) multiset: exact ties in a pair
                    "entropy_mean": v.mean(),
                    "entropy_logsum": np.log(np.maximum(v, EPS)).sum(),
                    "variance_mean": u_var.mean(),
                    "variance_logsum": np.log(np.maximum(u_var, EPS)).sum(),
                    "pcs_mean": u_pcs.mean(),
                    "pcs_logsum": np.log(np.maximum(u_pcs, EPS)).sum(),
                }
            )
            graphs.append(
                Data(
                    x=torch.from_numpy(x),
                    edge_index=edge_index,
                    y_iou=torch.tensor([iou], dtype=torch.float32),
                    y_fp=torch.tensor([int(not is_tp)]),
                    case_id=f"c{seed}",
                    lesion_id=lesion_id,
                    size=n,
                )
            )
    return LesionSet(pd.DataFrame(rows), graphs)


FAST = GCNNConfig(epochs=8, batch_size=10, lr=1e-2, lr_min=1e-4, seed=0)


@pytest.fixture(scope="module")
def train_set() -> LesionSet:
    return synthetic_lesions(50, seed=1)


@pytest.fixture(scope="module")
def test_set() -> LesionSet:
    return synthetic_lesions(30, seed=2)


@pytest.fixture(scope="module")
def fitted(train_set: LesionSet) -> GCNNScorer:
    return GCNNScorer("classif", FAST).fit(train_set, progress=False)


def test_synthetic_pairs_share_lesion_values_but_not_their_places(train_set: LesionSet) -> None:
    for i in range(0, 6, 2):
        tp, fp = train_set.graphs[i].x, train_set.graphs[i + 1].x
        assert train_set.is_tp[i] and not train_set.is_tp[i + 1]
        assert tp.shape == fp.shape and torch.equal(tp[:, 1], fp[:, 1])
        inside = tp[:, 1] == 1
        assert int(inside.sum()) == train_set.sizes[i] == train_set.sizes[i + 1]
        # lesion-voxel uncertainties: same values, different places
        torch.testing.assert_close(tp[inside, 2:].sort(0).values, fp[inside, 2:].sort(0).values)
        assert not torch.equal(tp[inside, 2], fp[inside, 2])
        mean = tp[inside, 2].double().mean().item()
        assert train_set.table["entropy_mean"][i] == pytest.approx(mean, rel=1e-6)


def test_gcnn_beats_every_baseline_on_spatial_arrangement(
    fitted: GCNNScorer, train_set: LesionSet, test_set: LesionSet
) -> None:
    y_fp = ~test_set.is_tp
    cfg = ExperimentConfig()
    best_baseline = 0.0
    for name in METHODS:
        if name.startswith("gcnn"):
            continue
        u = make_scorer(name, cfg).fit(train_set, progress=False).score(test_set)
        auc = roc_auc_score(y_fp, u)
        # chance by construction: FP and TP score multisets are equal (exactly, up to
        # BLAS rounding in the fitted linear models)
        tol = 0.02 if name.startswith("metaseg") else 1e-12
        assert auc == pytest.approx(0.5, abs=tol), name
        best_baseline = max(best_baseline, auc, 1 - auc)
    gcnn_auc = roc_auc_score(y_fp, fitted.score(test_set))
    assert gcnn_auc >= 0.85
    assert gcnn_auc >= best_baseline + 0.3
    assert 1 <= fitted.best_epoch_ <= FAST.epochs
    assert len(fitted.history_) == FAST.epochs
    assert fitted.n_train_ == 80 and fitted.n_val_ == 20  # 20 % of each class held out


def test_gcnn_reg_learns_the_arrangement(train_set: LesionSet, test_set: LesionSet) -> None:
    scorer = GCNNScorer("reg", FAST).fit(train_set, progress=False)
    u = scorer.score(test_set)
    assert np.all((u >= 0) & (u <= 1))
    assert roc_auc_score(~test_set.is_tp, u) >= 0.75


def test_save_load_gives_identical_scores(fitted: GCNNScorer, test_set, tmp_path) -> None:
    fitted.save(tmp_path)
    meta = json.loads((tmp_path / "scorer.json").read_text())
    assert meta["class"] == "GCNNScorer" and meta["params"]["cfg"]["epochs"] == FAST.epochs
    assert len(meta["state"]["feature_mean"]) == 5
    loaded = load_scorer("gcnn_classif", tmp_path)
    assert isinstance(loaded, GCNNScorer) and loaded.best_epoch_ == fitted.best_epoch_
    np.testing.assert_array_equal(loaded.score(test_set), fitted.score(test_set))
    with pytest.raises(ValueError, match="gcnn_reg"):
        load_scorer("gcnn_reg", tmp_path)


def test_wrong_feature_count_is_a_clear_error(fitted: GCNNScorer, test_set) -> None:
    g = test_set.graphs[0]
    bad = Data(x=torch.zeros(g.num_nodes, 6), edge_index=g.edge_index)
    with pytest.raises(ValueError, match="6 node features, the model was fitted on 5"):
        fitted.score(LesionSet(test_set.table.iloc[:1], [bad]))
    with pytest.raises(ValueError, match="graphs"):
        fitted.score(LesionSet(test_set.table))  # table without graphs


def test_fit_is_deterministic_and_seeded() -> None:
    lesions = synthetic_lesions(12, seed=3)
    cfg = GCNNConfig(epochs=3, seed=7)
    threads = torch.get_num_threads()
    a = GCNNScorer("classif", cfg).fit(lesions, progress=False).score(lesions)
    assert torch.get_num_threads() == threads  # the 1-thread setting is restored
    a2 = GCNNScorer("classif", cfg).fit(lesions, progress=False).score(lesions)
    np.testing.assert_array_equal(a, a2)  # same seed, same threads: identical bytes
    b = GCNNScorer("classif", cfg, num_threads=None).fit(lesions, progress=False).score(lesions)
    # more threads change the order of float sums, so only rounding may differ
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    c = GCNNScorer("classif", GCNNConfig(epochs=3, seed=8)).fit(lesions, progress=False)
    assert not np.array_equal(a, c.score(lesions))


def test_degenerate_training_set_falls_back_to_the_prior(tmp_path) -> None:
    lesions = synthetic_lesions(4, seed=4)
    only_tp = lesions.subset(np.flatnonzero(lesions.is_tp))
    with pytest.warns(UserWarning, match="single class"):
        scorer = GCNNScorer("classif", GCNNConfig(epochs=2)).fit(only_tp, progress=False)
    np.testing.assert_array_equal(scorer.score(lesions), np.zeros(len(lesions)))
    scorer.save(tmp_path)
    assert not (tmp_path / "model.pt").exists()
    np.testing.assert_array_equal(load_scorer("gcnn_classif", tmp_path).score(lesions), 0.0)


def test_progress_bar_and_history(capsys) -> None:
    lesions = synthetic_lesions(5, seed=5)
    scorer = GCNNScorer("classif", GCNNConfig(epochs=2, val_fraction=0.5)).fit(lesions)
    assert [h["epoch"] for h in scorer.history_] == [1, 2]
    assert scorer.history_[0]["lr"] == pytest.approx(1e-2)
    assert {"train_loss", "val_loss", "val_auc"} <= set(scorer.history_[0])


def test_split_train_val_is_stratified_and_seeded() -> None:
    y = np.array([0] * 10 + [1] * 5)
    train, val = split_train_val(y, 0.2, seed=0)
    assert len(val) == 3 and int(y[val].sum()) == 1  # round(2.0) TP + round(1.0) FP
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(15))
    np.testing.assert_array_equal(split_train_val(y, 0.2, seed=0)[1], val)
    # a class of one keeps its only member in training
    train, val = split_train_val(np.array([0, 0, 0, 1]), 0.5, seed=0)
    assert 3 in train and len(val) == 2


def test_lesion_gcn_shapes_and_readouts() -> None:
    depth, _, ei = grid_graph((2, 2, 2))  # complete graph on 8 nodes
    assert ei.shape == (2, 8 * 7) and depth.tolist() == [0] * 8
    x = torch.randn(8, 5)
    batch = torch.zeros(8, dtype=torch.long)
    for readout in ("mean", "max", "sum"):
        torch.manual_seed(0)
        model = LesionGCN(5, hidden=16, out_features=2, readout=readout)
        assert model(x, ei, batch).shape == (1, 2)
    # two graphs in one batch: outputs equal those of the graphs alone
    torch.manual_seed(0)
    model = LesionGCN(5, hidden=16, out_features=1)
    both = model(torch.cat([x, x + 1]), torch.cat([ei, ei + 8], 1), torch.tensor([0] * 8 + [1] * 8))
    torch.testing.assert_close(both[0], model(x, ei)[0])
    torch.testing.assert_close(both[1], model(x + 1, ei)[0])
    with pytest.raises(ValueError, match="readout"):
        LesionGCN(5, readout="median")


def test_normalized_edges_hand_case() -> None:
    # path 0 - 1 - 2; with self-loops the degrees are 2, 3, 2
    ei = torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]])
    out_ei, w = normalized_edges(ei, 3)
    dense = torch.zeros(3, 3)
    dense[out_ei[0], out_ei[1]] = w
    a = 1 / np.sqrt(6)
    expected = torch.tensor([[1 / 2, a, 0], [a, 1 / 3, a], [0, a, 1 / 2]], dtype=torch.float32)
    torch.testing.assert_close(dense, expected)
    # sorted by row, so batched graphs stay sorted
    assert torch.all(out_ei[0][1:] >= out_ei[0][:-1])
    torch.testing.assert_close(gcn_adjacency(ei, 3).to_dense(), expected)
    torch.testing.assert_close(gcn_adjacency(out_ei, 3, w).to_dense(), expected)
    with pytest.raises(ValueError, match="undirected"):
        normalized_edges(torch.tensor([[0, 1], [1, 2]]), 3)


def test_normalized_edges_each_equals_one_call_per_graph() -> None:
    """Bit for bit: a 3x3x2 grid, a single node, the path 0-1-2 and a 2x2x2 grid."""
    graphs = [
        (grid_graph((3, 3, 2))[2], 18),
        (torch.zeros((2, 0), dtype=torch.long), 1),  # one voxel: its self-loop only
        (torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]]), 3),
        (grid_graph((2, 2, 2))[2], 8),
    ]
    each = normalized_edges_each([g for g, _ in graphs], [n for _, n in graphs])
    assert len(each) == 4
    for (ei, n), (e, w) in zip(graphs, each, strict=True):
        e_ref, w_ref = normalized_edges(ei, n)
        assert torch.equal(e, e_ref) and torch.equal(w, w_ref)
    assert each[1][0].tolist() == [[0], [0]] and each[1][1].tolist() == [1.0]
    assert normalized_edges_each([], []) == []
    with pytest.raises(ValueError, match="undirected"):
        normalized_edges_each([torch.tensor([[0, 1], [1, 2]])], [3])
    with pytest.raises(ValueError, match="2 edge lists for 1 node counts"):
        normalized_edges_each([graphs[0][0], graphs[2][0]], [18])


def test_sparse_gcn_equals_pyg_message_passing() -> None:
    """LesionGCN's sparse layers give GCNConv's outputs and gradients (2 batched graphs)."""
    _, _, ei_a = grid_graph((3, 3, 2))
    _, _, ei_b = grid_graph((2, 2, 2))
    gen = torch.Generator().manual_seed(0)
    graphs = []
    for ei in (ei_a, ei_b):
        n = int(ei.max()) + 1
        e, w = normalized_edges(ei, n)
        graphs.append(Data(x=torch.randn(n, 5, generator=gen), edge_index=e, edge_weight=w))
    batch = Batch.from_data_list(graphs)
    raw = torch.cat([ei_a, ei_b + 18], 1)  # the same batch, raw edges
    torch.manual_seed(0)
    model = LesionGCN(5, hidden=8, out_features=2)
    ref = [GCNConv(5, 8), GCNConv(8, 8)]  # PyG's own normalisation and message passing
    ref[0].load_state_dict(model.conv1.state_dict())
    ref[1].load_state_dict(model.conv2.state_dict())

    def reference(x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(ref[1](torch.relu(ref[0](x, raw)), raw))
        return model.head(torch.stack([h[:18].mean(0), h[18:].mean(0)]))

    out = model(batch.x, batch.edge_index, batch.batch, batch.edge_weight)
    torch.testing.assert_close(out, reference(batch.x))
    torch.testing.assert_close(model(batch.x, raw, batch.batch), out)
    out.square().sum().backward()
    reference(batch.x).square().sum().backward()
    torch.testing.assert_close(model.conv1.lin.weight.grad, ref[0].lin.weight.grad)
    torch.testing.assert_close(model.conv2.lin.weight.grad, ref[1].lin.weight.grad)
    assert isinstance(model.conv1, GCNConv) and isinstance(model.conv1, SymmetricGCNConv)


def test_load_lesion_set_reads_once_until_the_files_change(tmp_path) -> None:
    from lesionuq.lesions.dataset import load_lesion_set

    lesions = synthetic_lesions(3, seed=4)
    lesions.save(tmp_path / "set")
    first = load_lesion_set(tmp_path / "set")
    assert len(first) == 6 and len(first.graphs) == 6
    assert load_lesion_set(tmp_path / "set") is first  # cached: not read again
    lesions.subset([0, 1]).save(tmp_path / "set")  # rewritten: read again
    again = load_lesion_set(tmp_path / "set")
    assert again is not first and len(again) == 2
