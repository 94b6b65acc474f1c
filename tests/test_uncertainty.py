from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest

from lesionuq.io import InputError
from lesionuq.uncertainty import (
    RunningMoments,
    entropy,
    load_sample_stack,
    maps_from_samples,
    pcs,
    variance,
)


def _direct(stack: np.ndarray) -> dict[str, np.ndarray]:
    """The definitions, written out on the whole (T, X, Y, Z) stack in float64."""
    p = stack.astype(np.float64).mean(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.nan_to_num(p * np.log(p)) - np.nan_to_num((1 - p) * np.log(1 - p))
    return {
        "prob": p,
        "entropy": h,
        "variance": ((stack - p) ** 2).mean(0),
        "pcs": np.maximum(p, 1 - p),
    }


def test_pure_functions_hand_values():
    assert entropy(np.array([0.5]))[0] == pytest.approx(math.log(2), abs=1e-6)
    assert entropy(np.array([0.2]))[0] == pytest.approx(0.5004024, abs=1e-6)
    np.testing.assert_array_equal(entropy(np.array([0.0, 1.0])), [0.0, 0.0])
    np.testing.assert_allclose(pcs(np.array([0.2, 0.5, 0.9])), [0.8, 0.5, 0.9], atol=1e-7)
    np.testing.assert_allclose(variance(np.array([[0.2], [0.8]])), [0.09], atol=1e-7)
    np.testing.assert_array_equal(variance(np.array([[0.3]])), [0.0])


@pytest.mark.parametrize("batches", [(3, 3, 1), (7,), (1,)])
def test_running_moments_equal_direct_numpy(batches):
    rng = np.random.default_rng(0)
    t = sum(batches)
    stack = rng.random((t, 5, 4, 3)).astype(np.float32)
    stack[:, 0, 0, 0] = 0.0  # p = 0 exactly: entropy 0, PCS 1
    stack[:, 0, 0, 1] = 1.0
    rm = RunningMoments()
    start = 0
    for b in batches:
        rm.update(stack[start : start + b])
        start += b
    maps = rm.finalize()
    ref = _direct(stack)
    assert maps.n_samples == t
    for name, value in ref.items():
        got = getattr(maps, name)
        assert got.dtype == np.float32 and got.shape == (5, 4, 3)
        np.testing.assert_allclose(got, value, atol=1e-6, err_msg=name)
    assert maps.entropy[0, 0, 0] == 0.0 and maps.pcs[0, 0, 1] == 1.0
    if t == 1:
        np.testing.assert_array_equal(maps.variance, 0.0)
        np.testing.assert_array_equal(maps.prob, stack[0])


def test_seg_is_strictly_above_half_and_items_order():
    rm = RunningMoments().update(np.array([0.2, 0.5, 0.51, 0.9]).reshape(4, 1, 1, 1))
    maps = RunningMoments().update(np.array([0.5, 0.51, 0.9]).reshape(1, 3, 1, 1)).finalize()
    assert maps.seg[:, 0, 0].tolist() == [False, True, True]
    assert [k for k, _ in maps.items()] == ["prob", "seg", "entropy", "variance", "pcs"]
    assert rm.finalize().prob[0, 0, 0] == pytest.approx(0.5275)


def test_running_moments_rejects_bad_updates():
    rm = RunningMoments()
    with pytest.raises(ValueError, match="no samples"):
        rm.finalize()
    with pytest.raises(ValueError, match="B, X, Y, Z"):
        rm.update(np.zeros((3, 3, 3)))
    rm.update(np.zeros((1, 3, 3, 3)))
    with pytest.raises(ValueError, match="differs"):
        rm.update(np.zeros((1, 3, 3, 2)))


def _save(path, data):
    nib.save(nib.Nifti1Image(np.asarray(data, dtype=np.float32), np.eye(4)), str(path))
    return path


def test_sample_stack_folder_and_4d_give_the_same_maps(tmp_path):
    rng = np.random.default_rng(1)
    stack = rng.random((4, 6, 5, 4)).astype(np.float32)
    folder = tmp_path / "samples"
    folder.mkdir()
    for t in range(4):
        _save(folder / f"sample_{t:02d}.nii.gz", stack[t])
    (folder / "notes.txt").write_text("ignored")
    four_d = _save(tmp_path / "stack.nii.gz", np.moveaxis(stack, 0, -1))

    read = list(load_sample_stack(folder))
    assert len(read) == 4
    np.testing.assert_array_equal(read[2], stack[2])  # sorted name order
    a = maps_from_samples(load_sample_stack(folder))
    b = maps_from_samples(load_sample_stack(four_d))
    ref = _direct(stack)
    for name in ("prob", "entropy", "variance", "pcs"):
        np.testing.assert_allclose(getattr(a, name), ref[name], atol=1e-6)
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_maps_from_stack_writes_the_maps_on_the_stack_grid(tmp_path):
    """``sample --stack``'s function: the five maps of the definitions, with the stack's
    affine, in a folder that lesionuq's marker lists (a second run needs --overwrite)."""
    from lesionuq.outputs import MARKER
    from lesionuq.samples import maps_from_stack

    rng = np.random.default_rng(2)
    stack = rng.random((3, 5, 4, 6)).astype(np.float32)
    affine = np.diag([2.0, 1.5, 3.0, 1.0])
    path = tmp_path / "stack.nii.gz"
    nib.save(nib.Nifti1Image(np.moveaxis(stack, 0, -1), affine), str(path))
    out = maps_from_stack(path, tmp_path / "maps")
    ref = _direct(stack)
    for name in ("prob", "entropy", "variance", "pcs"):
        img = nib.load(str(out / f"{name}.nii.gz"))
        np.testing.assert_allclose(img.affine, affine)
        np.testing.assert_allclose(np.asarray(img.dataobj), ref[name], atol=1e-6)
    seg = np.asarray(nib.load(str(out / "seg.nii.gz")).dataobj)
    np.testing.assert_array_equal(seg > 0, ref["prob"] > 0.5)
    assert (out / MARKER).is_file()
    with pytest.raises(InputError, match="overwrite"):
        maps_from_stack(path, out)
    maps_from_stack(path, out, overwrite=True)


def test_sample_stack_errors_name_the_file(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="holds no NIfTI"):
        load_sample_stack(empty)
    with pytest.raises(InputError, match="not found"):
        load_sample_stack(tmp_path / "missing.nii.gz")

    bad = _save(tmp_path / "bad.nii.gz", np.full((3, 3, 3, 2), 1.5))
    with pytest.raises(InputError, match=r"bad\.nii\.gz \(sample 0\): values must be"):
        maps_from_samples(load_sample_stack(bad))

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    _save(mixed / "a.nii.gz", np.zeros((3, 3, 3)))
    _save(mixed / "b.nii.gz", np.zeros((3, 3, 4)))
    with pytest.raises(InputError, match=r"b\.nii\.gz: shape \(3, 3, 4\) does not match"):
        maps_from_samples(load_sample_stack(mixed))

    nan = tmp_path / "nan"
    nan.mkdir()
    _save(nan / "a.nii.gz", np.full((2, 2, 2), np.nan))
    with pytest.raises(InputError, match="NaN"):
        maps_from_samples(load_sample_stack(nan))


def test_small_rounding_above_one_is_clipped(tmp_path):
    path = _save(tmp_path / "p.nii.gz", np.full((2, 2, 2, 1), 1.00001))
    maps = maps_from_samples(load_sample_stack(path))
    np.testing.assert_array_equal(maps.prob, 1.0)
    np.testing.assert_array_equal(maps.entropy, 0.0)


def test_voxel_maps_load_reads_the_saved_maps(tmp_path):
    from lesionuq.uncertainty import VoxelMaps

    rng = np.random.default_rng(3)
    prob = rng.random((4, 5, 6)).astype(np.float32)
    maps = maps_from_samples([prob, 1 - prob, prob])
    for name, data in maps.items():
        nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / f"{name}.nii.gz")
    loaded = VoxelMaps.load(tmp_path)
    for name in ("prob", "entropy", "variance", "pcs"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(maps, name))
        assert getattr(loaded, name).dtype == np.float32
    np.testing.assert_array_equal(loaded.seg, maps.seg)
