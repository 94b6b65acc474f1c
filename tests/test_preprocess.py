from __future__ import annotations

import json
import math
import warnings

import nibabel as nib
import numpy as np
import pytest

from lesionuq.config import PreprocessConfig
from lesionuq.data.preprocess import GridTransform, preprocess, target_grid, to_original
from lesionuq.errors import InputWarning
from lesionuq.io import InputError


def _rot(ax: float, ay: float) -> np.ndarray:
    ax, ay = math.radians(ax), math.radians(ay)
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    return rx @ ry


def _world(shape: tuple[int, int, int], affine: np.ndarray) -> np.ndarray:
    idx = np.indices(shape).reshape(3, -1).T.astype(float)
    return (idx @ affine[:3, :3].T + affine[:3, 3]).T.reshape(3, *shape)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def _phantom(shape, affine, centre=(3.0, -2.0, 5.0)):
    """Ellipsoid 'brain' (radii 14/15/17 mm) with a brighter 'lesion' ball (r 6 mm)."""
    x, y, z = _world(shape, affine) - np.asarray(centre)[:, None, None, None]
    brain = (x / 14) ** 2 + (y / 15) ** 2 + (z / 17) ** 2 <= 1
    lesion = (x - 3) ** 2 + (y + 2) ** 2 + z**2 <= 36
    image = np.where(brain, 100.0 + 0.5 * x, 0.0) + 80.0 * lesion
    return image.astype(np.float32), lesion.astype(np.uint8)


def test_round_trip_oblique_lps_anisotropic():
    # LPS (x and y voxel axes point to -R, -A), tilted 12/8 degrees, 0.9 x 0.9 x 3 mm
    affine = np.eye(4)
    affine[:3, :3] = _rot(12, 8) @ np.diag([-0.9, -0.9, 3.0])
    affine[:3, 3] = [20.0, 25.0, -22.0]
    shape = (44, 44, 16)
    image, mask = _phantom(shape, affine, centre=affine[:3, :3] @ [22, 22, 7.5] + affine[:3, 3])
    cfg = PreprocessConfig(spacing=(1.0, 1.0, 1.0), shape=(48, 48, 48))
    pre = preprocess([nib.Nifti1Image(image, affine)], nib.Nifti1Image(mask, affine), cfg)

    assert pre.image.shape == (1, 48, 48, 48) and pre.image.dtype == np.float32
    assert pre.mask.shape == (48, 48, 48) and pre.mask.dtype == np.uint8
    np.testing.assert_allclose(pre.affine[:3, :3], np.eye(3))  # RAS, 1 mm
    # the lesion keeps its volume (4/3 pi 6^3 = 905 mm3) on the 1 mm grid
    assert abs(int(pre.mask.sum()) - 905) < 60

    back = to_original(pre.mask, pre.transform, order=0)
    assert back.shape == shape and back.dtype == np.uint8
    np.testing.assert_array_equal(pre.transform.original_affine, affine)
    assert _dice(back, mask) >= 0.95

    # the lesion's world centre is the same on both grids (within a millimetre)
    def centre(vol, aff):
        idx = np.argwhere(vol > 0).mean(axis=0)
        return aff[:3, :3] @ idx + aff[:3, 3]

    assert np.linalg.norm(centre(pre.mask, pre.affine) - centre(mask, affine)) < 1.0


def test_pure_reorientation_is_exact():
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    affine[:3, 3] = [15.0, 10.0, -9.0]
    shape = (24, 20, 18)
    rng = np.random.default_rng(0)
    image = np.zeros(shape, np.float32)
    image[3:21, 2:18, 2:16] = rng.uniform(50, 150, (18, 16, 14))
    mask = np.zeros(shape, np.uint8)
    mask[5:12, 4:9, 3:8] = rng.random((7, 5, 5)) > 0.3
    cfg = PreprocessConfig(spacing=(1.0, 1.0, 1.0), shape=(24, 24, 24))
    pre = preprocess([nib.Nifti1Image(image, affine)], nib.Nifti1Image(mask, affine), cfg)

    np.testing.assert_array_equal(to_original(pre.mask, pre.transform, order=0), mask)
    assert pre.mask.sum() == mask.sum()
    # RAS: voxel (i, j, k) of the output is the input voxel at the same world point
    i, j, k = 7, 9, 4
    world = affine @ [i, j, k, 1]
    out = np.rint(np.linalg.solve(pre.affine, world)[:3]).astype(int)
    mu, sd = pre.transform.mean[0], pre.transform.std[0]
    assert pre.image[0][tuple(out)] == pytest.approx((image[i, j, k] - mu) / sd, rel=1e-5)
    # the z-scored image comes back as the original after de-normalising
    back = to_original(pre.image[0], pre.transform, order=1) * sd + mu
    np.testing.assert_allclose(np.where(image > 0, back, 0), image, rtol=1e-5, atol=1e-3)


def test_zscore_inside_brain_zero_outside():
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    image, _ = _phantom((20, 20, 22), affine, centre=(19.0, 19.0, 21.0))
    pre = preprocess(
        [nib.Nifti1Image(image, affine)], None, PreprocessConfig((2, 2, 2), (24, 24, 24))
    )
    brain = pre.image[0] != 0
    vals = pre.image[0][brain]
    assert pre.mask is None
    assert abs(vals.mean()) < 1e-4 and vals.std() == pytest.approx(1.0, abs=1e-4)
    # the background ring of the 24^3 grid (outside the 20^3 input) is exactly 0
    assert np.all(pre.image[0][:2] == 0) and np.all(pre.image[0][-2:] == 0)
    # brain bounding box centred on the grid: the brain's world centre is the grid centre
    idx = np.argwhere(brain)
    mid = (idx.min(0) + idx.max(0)) / 2
    np.testing.assert_allclose(mid, [11.5, 11.5, 11.5], atol=1.0)


def test_resampling_to_coarser_grid_keeps_world_positions():
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    image = np.zeros((30, 30, 30), np.float32)
    image[5:25, 5:25, 5:25] = 100.0
    image[18:22, 8:12, 14:18] = 300.0  # bright 4 mm cube centred at world (19.5, 9.5, 15.5)
    cfg = PreprocessConfig(spacing=(2.0, 2.0, 3.0), shape=(14, 14, 10))
    pre = preprocess([nib.Nifti1Image(image, affine)], None, cfg)
    peak = np.unravel_index(np.argmax(pre.image[0]), pre.image[0].shape)
    world = pre.affine @ [*peak, 1]
    assert np.all(np.abs(world[:3] - [19.5, 9.5, 15.5]) <= [1.0, 1.0, 1.5])
    np.testing.assert_allclose(np.diag(pre.affine)[:3], [2.0, 2.0, 3.0])


@pytest.mark.filterwarnings("ignore::lesionuq.errors.InputWarning")  # no zero background
def test_two_sequences_on_different_grids():
    def smooth(shape, aff):  # the same smooth world-space function sampled on each grid
        x, y, z = _world(shape, aff) - np.array([14.5, 14.5, 16.5])[:, None, None, None]
        return (10.0 + 100.0 * np.exp(-(x**2 + y**2 + z**2) / (2 * 8.0**2))).astype(np.float32)

    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    aff2 = np.diag([-2.0, -2.0, 2.0, 1.0])  # the second sequence: LPS and 2 mm
    aff2[:3, 3] = [29.5, 29.5, 0.5]
    imgs = [nib.Nifti1Image(smooth((30, 30, 34), affine), affine)]
    imgs.append(nib.Nifti1Image(smooth((15, 15, 17), aff2), aff2))
    pre = preprocess(imgs, None, PreprocessConfig((1, 1, 1), (30, 30, 34)))
    assert pre.image.shape == (2, 30, 30, 34)
    inner = (slice(4, -4),) * 3
    corr = np.corrcoef(pre.image[0][inner].ravel(), pre.image[1][inner].ravel())[0, 1]
    assert corr > 0.995


def test_transform_json_round_trip():
    affine = np.eye(4)
    affine[:3, :3] = _rot(5, -3) @ np.diag([1.1, 0.9, 2.5])
    image, mask = _phantom(
        (30, 30, 14), affine, centre=affine[:3, :3] @ [15, 15, 7] + affine[:3, 3]
    )
    pre = preprocess(
        [nib.Nifti1Image(image, affine)],
        nib.Nifti1Image(mask, affine),
        PreprocessConfig((1, 1, 1), (40, 40, 40)),
    )
    text = json.dumps(pre.transform.to_dict())
    again = GridTransform.from_dict(json.loads(text))
    assert again == pre.transform
    np.testing.assert_array_equal(again.original_affine, affine)
    np.testing.assert_array_equal(
        to_original(pre.mask, again, order=0), to_original(pre.mask, pre.transform, order=0)
    )
    with pytest.raises(ValueError, match="does not match the preprocessed grid"):
        to_original(np.zeros((4, 4, 4)), pre.transform)


def test_empty_image_is_input_error():
    img = nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4))
    with pytest.raises(InputError, match="no voxel is above the brain threshold"):
        preprocess([img], None, PreprocessConfig((1, 1, 1), (8, 8, 8)))


def test_cropped_brain_warns():
    brain = np.ones((20, 20, 20), bool)
    target, cropped = target_grid(brain, np.eye(4), PreprocessConfig((1, 1, 1), (10, 30, 30)))
    assert cropped
    np.testing.assert_allclose(target[:3, 3], [5.0, -5.0, -5.0])  # centre 9.5 - 4.5 / 14.5
    padded = np.pad(brain, 5).astype(np.float32)  # a zero background around the brain
    img = nib.Nifti1Image(padded, np.eye(4))
    with pytest.warns(InputWarning, match="50% of the brain volume lies outside"):
        preprocess([img], None, PreprocessConfig((1, 1, 1), (10, 30, 30)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 20 -> 20 voxels along x: nothing cut, no warning
        preprocess([img], None, PreprocessConfig((1, 1, 1), (20, 30, 30)))


def _head(background: float, brain: float = 600.0) -> np.ndarray:
    """(20, 20, 20) float32: a 10-voxel cube of ``brain`` in a ``background``."""
    data = np.full((20, 20, 20), background, np.float32)
    data[5:15, 5:15, 5:15] = brain
    return data


def test_an_intensity_normalised_image_is_refused():
    cfg = PreprocessConfig((1, 1, 1), (20, 20, 20))
    z = _head(0.0, 1.0)
    z[5:15, 5:10, 5:15] = -1.0  # z-scores: half the brain below 0 (500 of 1000 voxels)
    with pytest.raises(InputError, match=r"50 % of its clearly nonzero voxels are negative"):
        preprocess([nib.Nifti1Image(z, np.eye(4))], None, cfg)
    # a few negative voxels (interpolation ringing at the edge) are no reason to refuse:
    # 100 clearly negative voxels among 1100 clearly nonzero ones (9 %), and tiny ripples
    # (under 5 % of the brain's 600) everywhere else in the background do not count
    ring = _head(-1.0)
    ring[4, 5:15, 5:15] = -60.0
    pre = preprocess([nib.Nifti1Image(ring, np.eye(4))], None, cfg)
    assert pre.image.shape == (1, 20, 20, 20)
    # a negative brain threshold says the background is below 0: no refusal
    shifted = _head(-1000.0, -400.0)
    neg = PreprocessConfig((1, 1, 1), (20, 20, 20), brain_threshold=-900.0)
    pre = preprocess([nib.Nifti1Image(shifted, np.eye(4))], None, neg)
    assert pre.transform.mean == pytest.approx([-400.0])  # the z-score's brain: the cube


def test_an_image_without_zero_background_warns():
    cfg = PreprocessConfig((1, 1, 1), (20, 20, 20))
    with pytest.warns(InputWarning, match=r"100 % of the image is above the brain threshold 0"):
        pre = preprocess([nib.Nifti1Image(_head(10.0), np.eye(4))], None, cfg)
    # every voxel counted as brain: the z-score's mean is (7000 x 10 + 1000 x 600) / 8000
    assert pre.transform.mean == pytest.approx([83.75])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same cube in a zero background: 12.5 %
        pre = preprocess([nib.Nifti1Image(_head(0.0), np.eye(4))], None, cfg)
    assert pre.transform.mean == pytest.approx([600.0])


def test_data_package_exports_lazily() -> None:
    import subprocess
    import sys

    code = (
        "import sys, lesionuq.data as d; assert 'lesionuq.data.phantom' not in sys.modules; "
        "from lesionuq.data.phantom import generate_case as g; assert d.generate_case is g; "
        "print(sorted(d.__all__) == sorted(set(d.__all__)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
