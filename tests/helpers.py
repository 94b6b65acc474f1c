"""Small builders shared by several test modules (imported as ``helpers``)."""

from __future__ import annotations

import numpy as np

from lesionuq.uncertainty import VoxelMaps


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
