"""A registration saved to a folder and reused (issue 30: one registration per scan and run).

The cache tests replace the registration by a counting identity (as ``test_location_batch``
does): what is checked is when it runs, not how well it registers.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from lesionuq.location import register as reg_mod
from lesionuq.location.register import (
    INFO_FILE,
    TRANSFORM_FILE,
    Registration,
    cached_registration,
    registration_key,
)
from test_location_batch import identity


def _affine_bspline() -> sitk.Transform:
    """A scan-to-template transform as :func:`register_to_template` builds it: an affine
    with a centre, then a B-spline with nonzero coefficients."""
    aff = sitk.AffineTransform(3)
    aff.SetMatrix([1.03, 0.02, -0.01, -0.015, 0.97, 0.04, 0.005, -0.03, 1.08])
    aff.SetTranslation([3.25, -7.125, 11.0625])
    aff.SetCenter([-1.5, 20.25, 12.75])
    grid = sitk.Image([30, 30, 20], sitk.sitkFloat32)
    grid.SetSpacing([2.0, 2.0, 3.0])
    grid.SetOrigin([-30.0, -10.0, -20.0])
    bspline = sitk.BSplineTransformInitializer(grid, [4, 4, 4], order=3)
    coef = np.random.default_rng(0).normal(0.0, 1.5, len(bspline.GetParameters()))
    bspline.SetParameters([float(c) for c in coef])
    return sitk.CompositeTransform([aff, bspline])


def _fields(r: Registration) -> tuple:
    return (
        r.shape, r.affine.tolist(), r.brain_dice, r.brain_seen, r.scales.tolist(), r.seconds,
        r.deformable, r.error, r.ok,
    )  # fmt: skip


def test_saved_registration_maps_the_same_points_and_keeps_its_measures(tmp_path):
    affine = np.diag([-1.2, -1.2, 2.5, 1.0])
    affine[:3, 3] = [40.1, 35.3, -30.7]
    reg = Registration(
        _affine_bspline(), (60, 62, 30), affine, brain_dice=0.9312345678901234,
        scales=np.array([0.98765432101, 1.0312, 1.1]), seconds=9.87654321, deformable=True,
        metric=-0.512345678901, brain_seen=0.98,
    )  # fmt: skip
    assert reg.ok
    reg.save(tmp_path / "a", key="k1")
    assert (tmp_path / "a" / TRANSFORM_FILE).read_text().startswith("#Insight Transform File")
    back = Registration.load(tmp_path / "a", key="k1")
    points = np.random.default_rng(1).uniform(-60.0, 60.0, (200, 3))
    np.testing.assert_allclose(back.to_template(points), reg.to_template(points), rtol=0, atol=1e-9)
    assert _fields(back) == _fields(reg)
    assert back.metric == reg.metric and back.problem() is None
    with pytest.raises(ValueError, match="another image or other settings"):
        Registration.load(tmp_path / "a", key="k2")

    failed = Registration(None, (10, 10, 10), np.eye(4), error="fewer than 1000 brain voxels")
    failed.save(tmp_path / "a", key="k3")  # a failed one replaces it, without a transform
    assert not (tmp_path / "a" / TRANSFORM_FILE).exists()
    back = Registration.load(tmp_path / "a", key="k3")
    assert back.transform is None and not back.ok and np.isnan(back.metric)
    assert _fields(back) == _fields(failed)
    assert np.isnan(back.to_template(points[:2])).all()


def _scan() -> tuple[np.ndarray, np.ndarray]:
    image = np.zeros((20, 22, 18), np.float32)
    image[4:16, 5:18, 3:15] = np.linspace(50.0, 150.0, 12 * 13 * 12).reshape(12, 13, 12)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-20.0, -30.0, -10.0]
    return image, affine


@pytest.fixture()
def counted(monkeypatch):
    """The registrations :func:`cached_registration` computed: their (image, affine)."""
    calls: list[tuple[np.ndarray, np.ndarray]] = []

    def counting(image, affine, brain=None, **kwargs):
        calls.append((image.copy(), affine))
        assert np.array_equal(brain, image != 0)  # the brain support of a preprocessed scan
        return identity(image, affine, brain, **kwargs)

    monkeypatch.setattr(reg_mod, "register_to_template", counting)
    return calls


def test_cached_registration_registers_once_and_again_when_the_image_changes(tmp_path, counted):
    image, affine = _scan()
    folder = tmp_path / "registrations" / "case1"
    first = cached_registration(folder, image, affine)
    again = cached_registration(folder, image, affine)
    assert len(counted) == 1 and again.ok and again.shape == image.shape
    assert {p.name for p in folder.iterdir()} == {TRANSFORM_FILE, INFO_FILE}
    pts = np.array([[1.0, 2.0, 3.0], [-10.0, 5.5, 0.25]])
    np.testing.assert_array_equal(again.to_template(pts), first.to_template(pts))
    info = json.loads((folder / INFO_FILE).read_text())
    assert info["key"] == registration_key(image, affine) and info["ok"] is True

    changed = image.copy()
    changed[10, 10, 10] += 1.0  # one voxel
    cached_registration(folder, changed, affine)
    assert len(counted) == 2 and np.array_equal(counted[1][0], changed)
    moved = affine.copy()
    moved[0, 3] += 0.5
    cached_registration(folder, changed, moved)  # another affine
    cached_registration(folder, changed, moved, deformable=True)  # other settings
    assert len(counted) == 4
    cached_registration(folder, changed, moved, deformable=True)
    assert len(counted) == 4


@pytest.mark.parametrize(
    "damage",
    ["truncated JSON", "JSON list", "missing field", "transform missing", "transform changed"],
)
def test_a_damaged_cache_entry_is_computed_again(tmp_path, counted, damage):
    image, affine = _scan()
    folder = tmp_path / "case1"
    cached_registration(folder, image, affine)
    info, tfm = folder / INFO_FILE, folder / TRANSFORM_FILE
    if damage == "truncated JSON":
        info.write_text(info.read_text()[:40])
    elif damage == "JSON list":
        info.write_text("[1, 2]")
    elif damage == "missing field":
        info.write_text(json.dumps({k: v for k, v in json.loads(info.read_text()).items()
                                    if k != "scales"}))  # fmt: skip
    elif damage == "transform missing":
        tfm.unlink()
    else:
        tfm.write_text(tfm.read_text().replace("Parameters: 1 ", "Parameters: 2 ", 1))
    again = cached_registration(folder, image, affine)
    assert len(counted) == 2 and again.ok
    cached_registration(folder, image, affine)  # repaired: reused
    assert len(counted) == 2


def test_a_failed_registration_is_cached_too(tmp_path, monkeypatch):
    calls = []

    def failing(image, affine, brain=None, **_):
        calls.append(1)
        shape = tuple(int(s) for s in image.shape)
        return Registration(None, shape, affine, error="fewer than 1000 brain voxels")

    monkeypatch.setattr(reg_mod, "register_to_template", failing)
    image, affine = _scan()
    for _ in range(2):
        reg = cached_registration(tmp_path / "c", image, affine)
        assert reg.error == "fewer than 1000 brain voxels" and not reg.ok
    assert len(calls) == 1
    assert not (tmp_path / "c" / TRANSFORM_FILE).exists()
