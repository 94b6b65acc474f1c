from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch

from helpers import random_maps
from lesionuq.config import GraphConfig
from lesionuq.lesions.components import label_lesions, lesion_table
from lesionuq.lesions.graphs import (
    LesionSet,
    build_graphs,
    case_lesions,
    neighbour_edges,
    node_feature_names,
)

SHAPE = (16, 14, 12)


def _maps(shape=SHAPE, seed=0):
    return random_maps(shape, seed)


def _image(shape=SHAPE, channels=2, seed=1):
    return np.random.default_rng(seed).normal(size=(channels, *shape)).astype(np.float32)


def _cube(shape=SHAPE, lo=(5, 5, 5), side=3):
    seg = np.zeros(shape, dtype=bool)
    seg[lo[0] : lo[0] + side, lo[1] : lo[1] + side, lo[2] : lo[2] + side] = True
    return seg


def _graphs(seg, cfg, gt=None, channels=2):
    labels, n = label_lesions(seg)
    maps = _maps()
    table = lesion_table(labels, n, maps, gt, np.eye(4), cfg, "c0")
    return build_graphs(labels, _image(channels=channels), maps, table, cfg), maps


def _brute_force_pairs(coords):
    """Unordered pairs of voxels at Chebyshev distance 1 (26-neighbours), by loops."""
    pairs = set()
    for i, a in enumerate(coords):
        for j, b in enumerate(coords):
            if i < j and max(abs(int(p) - int(q)) for p, q in zip(a, b, strict=True)) == 1:
                pairs.add((i, j))
    return pairs


def _check_edges(edge_index, n_nodes):
    src, dst = edge_index
    assert edge_index.dtype == torch.long
    assert not torch.any(src == dst)  # no self loops
    assert int(edge_index.max()) < n_nodes
    fwd = set(zip(src.tolist(), dst.tolist(), strict=True))
    assert len(fwd) == edge_index.shape[1]  # no duplicates
    assert fwd == {(b, a) for a, b in fwd}  # both directions
    return {(a, b) for a, b in fwd if a < b}


def test_lone_cube_without_dilation():
    (g,), _ = _graphs(_cube(), GraphConfig(dilation=0))
    assert g.num_nodes == 27
    undirected = _check_edges(g.edge_index, 27)
    # 3x3x3 king graph: 54 face + 72 edge-diagonal + 32 corner-diagonal pairs
    assert len(undirected) == 158
    coords = [np.unravel_index(i, (3, 3, 3)) for i in range(27)]  # nodes are in C order
    assert undirected == _brute_force_pairs(coords)
    degree = torch.bincount(g.edge_index[0], minlength=27)
    assert int(degree[13]) == 26  # the centre
    assert int(degree[0]) == 7  # a corner
    assert g["size"] == 27 and g.lesion_id == 1 and g.case_id == "c0"


def test_lone_cube_dilated_once_is_a_5_cube():
    (g,), _ = _graphs(_cube(), GraphConfig(dilation=1))
    assert g.num_nodes == 125
    assert g.x.shape == (125, 2 + 4)
    assert g.x.dtype == torch.float32
    assert len(_check_edges(g.edge_index, 125)) == 3 * 25 * 4 + 6 * 5 * 16 + 4 * 64
    label = g.x[:, 2].numpy()
    assert label.sum() == 27
    inner = np.zeros((5, 5, 5), dtype=bool)
    inner[1:4, 1:4, 1:4] = True
    np.testing.assert_array_equal(label, inner.reshape(-1))
    assert g["size"] == 27  # undilated


def test_lesion_on_the_volume_border_is_clipped():
    (g,), _ = _graphs(_cube(lo=(0, 0, 0)), GraphConfig(dilation=1))
    assert g.num_nodes == 4**3


def test_dilation_two_reaches_a_7_cube():
    (g,), _ = _graphs(_cube(), GraphConfig(dilation=2))
    assert g.num_nodes == 7**3


def test_neighbour_edges_match_brute_force_on_an_irregular_mask():
    rng = np.random.default_rng(5)
    mask = rng.random((5, 4, 6)) < 0.4
    coords, edge_index = neighbour_edges(mask)
    np.testing.assert_array_equal(coords, np.argwhere(mask))
    undirected = _check_edges(torch.from_numpy(edge_index), len(coords))
    assert undirected == _brute_force_pairs(coords)
    assert np.all(np.diff(edge_index[0]) >= 0)  # sorted by source


def test_features_equal_the_maps_at_chosen_voxels():
    seg = _cube()
    cfg = GraphConfig(dilation=1, extra_features=("position", "border_distance"))
    (g,), maps = _graphs(seg, cfg)
    image = _image()
    names = node_feature_names(2, cfg, ["flair", "t1"])
    assert names == [
        "flair",
        "t1",
        "label",
        "entropy",
        "variance",
        "pcs",
        "position_x",
        "position_y",
        "position_z",
        "border_distance",
    ]
    x = g.x.numpy()
    assert x.shape == (125, len(names))

    def node(voxel):  # nodes are the 5x5x5 cube 4..8 in C order
        return np.ravel_multi_index(tuple(v - 4 for v in voxel), (5, 5, 5))

    for voxel in [(4, 4, 4), (5, 5, 5), (6, 6, 6), (8, 7, 4), (7, 5, 6)]:
        i = node(voxel)
        np.testing.assert_array_equal(x[i, :2], image[(slice(None), *voxel)])
        assert x[i, 2] == float(seg[voxel])
        assert x[i, 3] == maps.entropy[voxel]
        assert x[i, 4] == maps.variance[voxel]
        assert x[i, 5] == maps.pcs[voxel]
        np.testing.assert_allclose(x[i, 6:9], np.array(voxel) / (np.array(SHAPE) - 1), rtol=1e-6)
    assert x[node((6, 6, 6)), 9] == 2.0  # centre: two steps to the outside
    assert x[node((7, 6, 6)), 9] == 1.0  # face voxel inside
    assert x[node((5, 5, 5)), 9] == 1.0  # corner voxel inside
    assert x[node((4, 6, 6)), 9] == -1.0  # just outside a face
    assert x[node((4, 4, 4)), 9] == pytest.approx(-np.sqrt(3))  # nearest lesion voxel (5,5,5)


def test_label_feature_marks_other_lesions_and_targets():
    seg = _cube(lo=(2, 2, 2))
    seg[6, 3, 3] = True  # second lesion, 2 voxels from the cube: inside its dilation by 2
    gt = _cube(lo=(2, 2, 2))
    cfg = GraphConfig(dilation=2)
    graphs, _ = _graphs(seg, cfg, gt=gt)
    assert [g.lesion_id for g in graphs] == [1, 2]
    assert [g["size"] for g in graphs] == [27, 1]
    assert graphs[0].x[:, 2].sum() == 28  # the cube + the other lesion's voxel
    assert torch.equal(graphs[0].y_iou, torch.tensor([1.0]))
    assert torch.equal(graphs[0].y_fp, torch.tensor([0]))
    assert torch.equal(graphs[1].y_iou, torch.tensor([0.0]))
    assert torch.equal(graphs[1].y_fp, torch.tensor([1]))
    batch = Batch.from_data_list(graphs)
    assert batch.num_graphs == 2 and batch.x.shape[0] == sum(g.num_nodes for g in graphs)


def test_case_lesions_and_lesionset_round_trip(tmp_path):
    seg = _cube(lo=(1, 1, 1)) | _cube(lo=(9, 8, 6), side=2)
    gt = _cube(lo=(1, 1, 1))
    maps = _maps()
    labels, lesions = case_lesions(seg, _image(), maps, gt, np.eye(4), GraphConfig(), "case_3")
    assert labels.dtype == np.int32 and labels.max() == 2
    assert len(lesions) == 2 and lesions.is_tp.tolist() == [True, False]
    lesions.save(tmp_path / "set")
    back = LesionSet.load(tmp_path / "set")
    assert len(back) == 2
    assert back.table["case_id"].tolist() == ["case_3", "case_3"]
    for a, b in zip(lesions.graphs, back.graphs, strict=True):
        assert torch.equal(a.x, b.x) and torch.equal(a.edge_index, b.edge_index)
        assert torch.equal(a.y_fp, b.y_fp) and torch.equal(a.y_iou, b.y_iou)
        assert (a.case_id, a.lesion_id, a["size"]) == (b.case_id, b.lesion_id, b["size"])


def test_no_lesion_gives_empty_set_and_bad_inputs_raise():
    empty = np.zeros(SHAPE, dtype=bool)
    labels, lesions = case_lesions(empty, _image(), _maps(), None, np.eye(4), GraphConfig(), "e")
    assert len(lesions) == 0 and lesions.graphs == [] and not labels.any()
    with pytest.raises(ValueError, match="extra feature"):
        node_feature_names(1, GraphConfig(extra_features=("colour",)))
    with pytest.raises(ValueError, match="image shape"):
        case_lesions(_cube(), _image()[0], _maps(), None, np.eye(4), GraphConfig(), "e")


def test_brute_force_helper_counts_a_known_case():
    # sanity of the test oracle itself: a 2x2x2 cube is a complete graph K8 (28 pairs)
    coords = list(itertools.product(range(2), repeat=3))
    assert len(_brute_force_pairs(coords)) == 28
