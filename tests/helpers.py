"""Small builders shared by several test modules (imported as ``helpers``)."""

from __future__ import annotations

import numpy as np

from lesionuq.config import (
    CalibrationConfig,
    ExperimentConfig,
    GCNNConfig,
    PhantomConfig,
    PreprocessConfig,
    SamplingConfig,
    TrainConfig,
    UNetConfig,
)
from lesionuq.uncertainty import VoxelMaps

# the tiny end-to-end experiment shared by the tests (built once, see conftest.tiny_run)
TINY = ExperimentConfig(
    folds=2,
    preprocess=PreprocessConfig(spacing=(4.0, 4.0, 4.0), shape=(40, 48, 40)),
    unet=UNetConfig(channels=(4, 8)),
    # seed 1: this 4-step U-Net's validation lesions hold both TP and FP in both folds,
    # which fitting the calibrators needs (with seed 0 they do not since the per-patch draw)
    train=TrainConfig(
        patch_size=(40, 48, 16), batch_size=2, lr=1e-2, max_epochs=2, steps_per_epoch=2, seed=1
    ),
    sampling=SamplingConfig(n_samples=3, batch_size=3),
    gcnn=GCNNConfig(epochs=2),
    calibration=CalibrationConfig(n_inner=2),  # cross-fitting: 3 fits per learned scorer
    phantom=PhantomConfig(n_cases=6, seed=5, spacing=4.0),
)


def random_maps(shape: tuple[int, int, int], seed: int = 0) -> VoxelMaps:
    """Random but consistent voxel maps: pcs = max(p, 1 - p)."""
    rng = np.random.default_rng(seed)
    prob = rng.random(shape).astype(np.float32)
    return VoxelMaps(
        prob=prob,
        entropy=rng.random(shape).astype(np.float32),
        variance=(0.25 * rng.random(shape)).astype(np.float32),
        pcs=np.maximum(prob, 1 - prob),
    )


def random_lesion_set(n: int, seed: int = 0, n_features: int = 5):
    """``n`` lesions with every table column a scorer reads and chain graphs.

    Lesion ``i`` has ``2 + i % 4`` voxels; the first two lesions are TP and FP so both
    classes are present; the columns are random but finite.
    """
    import pandas as pd
    import torch
    from torch_geometric.data import Data

    from lesionuq.lesions.dataset import LesionSet

    rng = np.random.default_rng(seed)
    iou = rng.random(n)
    iou[:2] = [0.8, 0.0][:n]
    rows, graphs = [], []
    for i in range(n):
        size = 2 + i % 4
        row = {"case_id": "c", "lesion_id": i + 1, "n_voxels": size, "iou_adj": iou[i]}
        row["is_tp"] = bool(iou[i] >= 0.1)
        for m in ("entropy", "variance", "pcs"):
            row[f"{m}_mean"] = rng.random()
            row[f"{m}_logsum"] = -size * rng.random()
        rows.append(row)
        chain = torch.arange(size - 1)
        edges = [torch.cat([chain, chain + 1]), torch.cat([chain + 1, chain])]
        graphs.append(
            Data(
                x=torch.as_tensor(rng.random((size, n_features)), dtype=torch.float32),
                edge_index=torch.stack(edges),
            )
        )
    return LesionSet(pd.DataFrame(rows), graphs)
