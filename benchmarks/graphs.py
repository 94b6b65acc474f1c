"""Speed of lesion labelling + IoU_adj + lesion table + lesion graphs on one case.

The vectorised implementation (``lesionuq.lesions``) is timed against a straightforward
per-voxel Python reference on the same inputs in the same run: flood-fill labelling voxel
by voxel, IoU_adj from one boolean mask per lesion, table aggregates from per-lesion
masks, and graphs by dilating and linking voxel by voxel through a dict of coordinates.
Both must give the same labels, IoUs, table and graphs.

Input: a phantom case (``lesionuq.data.phantom.generate_case`` at 1 mm) when that module
is available, else a synthetic 160x192x160 volume with ~40 blobs of log-normal sizes; the
segmentation perturbs the ground truth (some lesions grown, shrunk or dropped, false
blobs added) and the voxel maps are smooth functions of it.

Run: ``python benchmarks/graphs.py [--seed 0] [--repeat 3] [--ref-lesions 0]``
(``--ref-lesions K`` times the reference graphs on K lesions only and scales per node).
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections import deque

import numpy as np
from scipy import ndimage

from lesionuq.config import GraphConfig
from lesionuq.lesions.components import label_lesions, lesion_table
from lesionuq.lesions.graphs import build_graphs
from lesionuq.uncertainty import VoxelMaps

OFFSETS = [o for o in itertools.product((-1, 0, 1), repeat=3) if o != (0, 0, 0)]


# ----------------------------------------------------------------------------- inputs


def synthetic_case(seed: int, shape=(160, 192, 160), n_lesions: int = 40):
    """(image (1, X, Y, Z), gt (X, Y, Z) bool) with blobs of log-normal volumes."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape, sparse=True)
    centre = np.array(shape) / 2
    brain = (
        sum(((g - c) / (0.42 * s)) ** 2 for g, c, s in zip(grid, centre, shape, strict=True)) <= 1
    )
    image = ndimage.gaussian_filter(rng.normal(size=shape).astype(np.float32), 2) * 3
    image += brain
    gt = np.zeros(shape, dtype=bool)
    inside = np.argwhere(brain[::4, ::4, ::4]) * 4
    for _ in range(n_lesions):
        vol = float(np.clip(rng.lognormal(np.log(120), 1.1), 4, 15000))
        radii = (3 * vol / (4 * np.pi)) ** (1 / 3) * rng.uniform(0.6, 1.5, 3)
        c = inside[rng.integers(len(inside))]
        lo = np.maximum(c - np.ceil(radii).astype(int) - 1, 0)
        hi = np.minimum(c + np.ceil(radii).astype(int) + 2, shape)
        sub = np.indices(hi - lo).astype(np.float32)
        d = sum(((sub[i] + lo[i] - c[i]) / radii[i]) ** 2 for i in range(3))
        noise = rng.normal(scale=0.25, size=d.shape)
        gt[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] |= d + noise <= 1
    image[gt] += 2.0
    return image[None].astype(np.float32), gt


def phantom_case(seed: int):
    """(image (1, X, Y, Z), gt) from the phantom generator, or None if unavailable."""
    try:
        from lesionuq.data.phantom import generate_case
    except ImportError:
        return None
    case = generate_case(seed, spacing=1.0)
    image = np.asarray(case.flair.dataobj, dtype=np.float32)
    gt = np.asarray(case.mask.dataobj) > 0
    brain = image > 0
    if brain.any():
        image = (image - image[brain].mean()) / (image[brain].std() + 1e-6)
    return image[None], gt


def perturbed_segmentation(gt: np.ndarray, seed: int) -> np.ndarray:
    """Grow, shrink or drop ground-truth lesions and add false blobs."""
    rng = np.random.default_rng(seed + 1)
    labels, _ = ndimage.label(gt, np.ones((3, 3, 3)))
    seg = np.zeros_like(gt)
    boxes = ndimage.find_objects(labels)
    for k, box in enumerate(boxes, start=1):
        grown = tuple(slice(max(s.start - 2, 0), s.stop + 2) for s in box)
        m = labels[grown] == k
        r = rng.random()
        if r < 0.15:
            continue  # missed
        if r < 0.45:
            m = ndimage.binary_dilation(m)
        elif r < 0.65 and m.sum() > 30:
            m = ndimage.binary_erosion(m)
        seg[grown] |= m
    shape = np.array(gt.shape)
    for _ in range(15):  # false positives
        c = rng.integers(shape // 5, 4 * shape // 5)
        r = rng.uniform(0.8, 3.0)
        lo, hi = np.maximum(c - 4, 0), c + 5
        sub = np.indices(hi - lo)
        d = sum((sub[i] + lo[i] - c[i]) ** 2 for i in range(3))
        seg[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] |= d <= r * r
    return seg


def smooth_maps(seg: np.ndarray, seed: int) -> VoxelMaps:
    rng = np.random.default_rng(seed + 2)
    soft = ndimage.gaussian_filter(seg.astype(np.float32), 1.0)
    noise = ndimage.gaussian_filter(rng.normal(size=seg.shape).astype(np.float32), 2.0)
    prob = np.clip(0.5 + 0.95 * (soft - 0.5) + 0.3 * noise * soft, 0.0, 1.0).astype(np.float32)
    p = np.clip(prob, 1e-7, 1 - 1e-7)
    entropy = -(p * np.log(p) + (1 - p) * np.log(1 - p))
    variance = (p * (1 - p) * (0.2 + 0.1 * np.abs(noise))).astype(np.float32)
    return VoxelMaps(
        prob=prob,
        entropy=entropy.astype(np.float32),
        variance=variance,
        pcs=np.maximum(prob, 1 - prob).astype(np.float32),
    )


# -------------------------------------------------------------------------- reference


def ref_label(seg: np.ndarray) -> tuple[np.ndarray, int]:
    """26-connected flood fill, voxel by voxel, seeds in C order."""
    shape = seg.shape
    labels = np.zeros(shape, dtype=np.int32)
    n = 0
    for start in map(tuple, np.argwhere(seg)):
        if labels[start]:
            continue
        n += 1
        labels[start] = n
        queue = deque([start])
        while queue:
            x, y, z = queue.popleft()
            for dx, dy, dz in OFFSETS:
                v = (x + dx, y + dy, z + dz)
                if (
                    0 <= v[0] < shape[0]
                    and 0 <= v[1] < shape[1]
                    and 0 <= v[2] < shape[2]
                    and seg[v]
                    and not labels[v]
                ):
                    labels[v] = n
                    queue.append(v)
    return labels, n


def ref_iou(labels: np.ndarray, n: int, gt: np.ndarray) -> np.ndarray:
    """The MetaSeg definition with one full-volume boolean mask per lesion."""
    g_lab, _ = ndimage.label(gt, np.ones((3, 3, 3)))
    out = np.zeros(n)
    for k in range(1, n + 1):
        pk = labels == k
        touching = np.unique(g_lab[pk])
        touching = touching[touching > 0]
        if len(touching) == 0:
            continue
        k_prime = np.isin(g_lab, touching)
        others = np.unique(labels[k_prime])
        others = others[(others > 0) & (others != k)]
        q_prime = np.isin(labels, others)
        out[k - 1] = np.sum(pk & k_prime) / np.sum((pk | k_prime) & ~q_prime)
    return out


def ref_table(labels, n, maps, iou, cfg) -> dict[str, np.ndarray]:
    cols: dict[str, list] = {"n_voxels": [], "centroid": [], "iou_adj": list(iou)}
    for name in ("entropy", "variance", "pcs"):
        cols[f"{name}_mean"], cols[f"{name}_logsum"] = [], []
    for k in range(1, n + 1):
        mk = labels == k
        cols["n_voxels"].append(int(mk.sum()))
        cols["centroid"].append(np.argwhere(mk).mean(axis=0))
        for name, u in (
            ("entropy", maps.entropy[mk]),
            ("variance", maps.variance[mk]),
            ("pcs", 1.0 - maps.pcs[mk]),
        ):
            u = u.astype(np.float64)
            cols[f"{name}_mean"].append(u.mean())
            cols[f"{name}_logsum"].append(np.log(np.maximum(u, cfg.logsum_eps)).sum())
    return {k: np.asarray(v) for k, v in cols.items()}


def ref_graph(labels, k, image, maps, cfg):
    """Dilate and link voxel by voxel through a dict of voxel coordinates."""
    shape = labels.shape
    nodes = {tuple(v) for v in np.argwhere(labels == k)}
    for _ in range(cfg.dilation):
        grown = set(nodes)
        for x, y, z in nodes:
            for dx, dy, dz in OFFSETS:
                v = (x + dx, y + dy, z + dz)
                if all(0 <= v[i] < shape[i] for i in range(3)):
                    grown.add(v)
        nodes = grown
    order = sorted(nodes)  # C order
    index = {v: i for i, v in enumerate(order)}
    src, dst, feats = [], [], []
    for i, (x, y, z) in enumerate(order):
        for dx, dy, dz in OFFSETS:
            j = index.get((x + dx, y + dy, z + dz))
            if j is not None:
                src.append(i)
                dst.append(j)
        feats.append(
            [
                *image[:, x, y, z],
                float(labels[x, y, z] > 0),
                maps.entropy[x, y, z],
                maps.variance[x, y, z],
                maps.pcs[x, y, z],
            ]
        )
    return np.asarray(feats, dtype=np.float32), np.array([src, dst], dtype=np.int64)


# ------------------------------------------------------------------------------ main


def best_of(repeat: int, fn):
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--ref-lesions", type=int, default=0, help="0 = all lesions")
    args = parser.parse_args()

    cfg = GraphConfig()
    loaded = phantom_case(args.seed)
    source = "phantom (generate_case, 1 mm)"
    if loaded is None:
        loaded = synthetic_case(args.seed)
        source = "synthetic blobs (lesionuq.data.phantom not available)"
    image, gt = loaded
    seg = perturbed_segmentation(gt, args.seed)
    maps = smooth_maps(seg, args.seed)
    affine = np.eye(4)
    print(f"input: {source}, shape {gt.shape}, {image.shape[0]} sequence(s), cfg {cfg}")

    # vectorised
    t_label, (labels, n) = best_of(args.repeat, lambda: label_lesions(seg))
    t_table, table = best_of(
        args.repeat, lambda: lesion_table(labels, n, maps, gt, affine, cfg, "bench")
    )
    t_graphs, graphs = best_of(args.repeat, lambda: build_graphs(labels, image, maps, table, cfg))
    nodes = sum(g.num_nodes for g in graphs)
    edges = sum(g.num_edges for g in graphs)

    # reference
    t0 = time.perf_counter()
    r_labels, r_n = ref_label(seg)
    r_t_label = time.perf_counter() - t0
    t0 = time.perf_counter()
    r_iou = ref_iou(r_labels, r_n, gt)
    r_t_iou = time.perf_counter() - t0
    t0 = time.perf_counter()
    r_tab = ref_table(r_labels, r_n, maps, r_iou, cfg)
    r_t_table = time.perf_counter() - t0 + r_t_iou
    subset = range(1, n + 1) if args.ref_lesions <= 0 else range(1, min(args.ref_lesions, n) + 1)
    t0 = time.perf_counter()
    r_graphs = [ref_graph(r_labels, k, image, maps, cfg) for k in subset]
    r_t_graphs = time.perf_counter() - t0
    r_nodes = sum(len(x) for x, _ in r_graphs)
    scaled = len(subset) < n
    if scaled:  # scale per node of the subset to all nodes
        r_t_graphs *= nodes / r_nodes

    # identical results
    assert r_n == n and np.array_equal(r_labels, labels), "labels differ"
    np.testing.assert_allclose(table["iou_adj"], r_tab["iou_adj"], rtol=1e-12, atol=0)
    np.testing.assert_array_equal(table["n_voxels"], r_tab["n_voxels"])
    np.testing.assert_allclose(
        table[["centroid_x", "centroid_y", "centroid_z"]].to_numpy(), r_tab["centroid"], rtol=1e-9
    )
    for name in ("entropy", "variance", "pcs"):
        for agg in ("mean", "logsum"):
            col = f"{name}_{agg}"
            np.testing.assert_allclose(table[col], r_tab[col], rtol=1e-9, atol=1e-12)
    for g, (x, ei) in zip(graphs, r_graphs, strict=False):
        assert np.array_equal(g.x.numpy(), x), f"features differ (lesion {g.lesion_id})"
        assert np.array_equal(g.edge_index.numpy(), ei), f"edges differ (lesion {g.lesion_id})"
    print(
        f"checked: labels, IoU_adj, table and {len(r_graphs)} graphs identical "
        f"to the reference ({int(table['is_tp'].sum())} TP, {int((~table['is_tp']).sum())} FP; "
        f"nodes per graph median {int(np.median([g.num_nodes for g in graphs]))}, "
        f"max {max(g.num_nodes for g in graphs)})"
    )

    fast = t_label + t_table + t_graphs
    ref = r_t_label + r_t_table + r_t_graphs
    rows = [
        ("label", t_label, r_t_label),
        ("IoU_adj + table", t_table, r_t_table),
        ("graphs" + (" (ref scaled)" if scaled else ""), t_graphs, r_t_graphs),
        ("total", fast, ref),
    ]
    print()
    print(f"lesions {n}   nodes {nodes}   edges {edges}   (dilation {cfg.dilation})")
    print(f"{'stage':<24}{'vectorised s':>14}{'reference s':>14}{'ratio':>10}")
    for name, a, b in rows:
        print(f"{name:<24}{a:>14.4f}{b:>14.4f}{b / a:>10.1f}")
    print(f"graph nodes/s: vectorised {nodes / t_graphs:,.0f}, reference {nodes / r_t_graphs:,.0f}")
    if scaled:
        print(f"(reference graphs timed on {len(subset)} of {n} lesions, scaled per node)")
    print(f"RESULT graph_speedup {ref / fast:.1f}")


if __name__ == "__main__":
    main()
