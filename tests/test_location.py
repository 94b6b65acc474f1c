"""Lesion location classes and dissemination in space (issue 30), on hand-made cases."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import ndimage as ndi

from lesionuq.location import (
    DIS_REGIONS,
    LesionLocations,
    Registration,
    classify_from_maps,
    classify_lesions,
    dis_probability,
    dis_summary,
    region_coverage,
    register_to_template,
)


def synthetic_maps() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A 60^3 1 mm box: a ventricle block, a cortex slab, an infratentorial corner.

    Returns (labels, vdist, cdist, infra): lesion 1 touches the ventricle, lesion 2 is
    2 mm from it (within 3 mm), lesion 3 touches the cortex, lesion 4 is deep, lesion 5
    is in the infratentorial region.
    """
    shape = (60, 60, 60)
    ventricle = np.zeros(shape, bool)
    ventricle[20:30, 20:40, 30:40] = True
    cortex = np.zeros(shape, bool)
    cortex[55:, :, :] = True
    infra = np.zeros(shape, np.float32)
    infra[:, :, :8] = 1.0
    vdist = ndi.distance_transform_edt(~ventricle).astype(np.float32)
    cdist = ndi.distance_transform_edt(~cortex).astype(np.float32)
    labels = np.zeros(shape, np.int32)
    labels[30:33, 25:28, 32:35] = 1  # first voxel row adjacent to the ventricle (x = 29)
    labels[32:35, 30:33, 32:35] = 2  # 3 voxels beyond: nearest voxel centre 3 mm away
    labels[51:54, 10:13, 40:43] = 3  # x = 53, 2 mm from the cortex at x = 55
    labels[40:43, 45:48, 20:23] = 4  # > 10 mm from both
    labels[10:13, 10:13, 2:5] = 5  # infratentorial corner (and far from the rest)
    return labels, vdist, cdist, infra


def test_lesion_touching_a_synthetic_ventricle_is_periventricular():
    labels, vdist, cdist, infra = synthetic_maps()
    loc, vmin, cmin, frac = classify_from_maps(labels, vdist, cdist, infra)
    assert list(loc) == [
        "periventricular",
        "periventricular",
        "juxtacortical",
        "deep",
        "infratentorial",
    ]
    np.testing.assert_allclose(vmin[:2], [1.0, 3.0])
    assert cmin[2] == pytest.approx(2.0)
    np.testing.assert_allclose(frac, [0, 0, 0, 0, 1])
    # one more millimetre away and lesion 2 is deep white matter
    shifted = np.roll(labels == 2, 1, axis=0)
    labels2 = np.where(labels == 2, 0, labels)
    labels2[shifted] = 2
    assert classify_from_maps(labels2, vdist, cdist, infra)[0][1] == "deep"


def test_dis_probability_of_two_lesions_in_two_regions_is_the_product():
    p1, p2 = 0.2, 0.35
    out = dis_summary(
        ["periventricular", "juxtacortical"],
        np.array([p1, p2]),
        np.array([False, True]),
        np.array([1, 2]),
    )
    assert out["probability"] == pytest.approx((1 - p1) * (1 - p2))
    assert out["verdict"] == "met"
    assert out["verdict_without_review"] == "not met"  # lesion 2 is flagged
    assert out["regions"]["periventricular"]["deciding_lesion"] == 1
    assert "still" not in out["sentence"] and "not a diagnosis" in out["sentence"]


def test_dis_probability_matches_enumeration_of_kept_lesions():
    loc = ["periventricular", "periventricular", "juxtacortical", "infratentorial", "deep"]
    p = np.array([0.5, 0.6, 0.3, 0.9, 0.1])
    brute = 0.0
    for keep in itertools.product([0, 1], repeat=len(p)):
        weight = math.prod(1 - pi if k else pi for k, pi in zip(keep, p, strict=True))
        regions = {r for r, k in zip(loc, keep, strict=True) if k and r in DIS_REGIONS}
        brute += weight * (len(regions) >= 2)
    out = dis_summary(loc, p, p >= 0.55, np.arange(1, 6))
    assert out["probability"] == pytest.approx(brute, abs=1e-6)
    q = [1 - 0.5 * 0.6, 1 - 0.3, 1 - 0.9]
    assert dis_probability(q) == pytest.approx(brute)
    assert out["verdict"] == "met" and out["verdict_without_review"] == "met"


def test_not_assessable_region_and_failed_registration_give_no_confident_verdict():
    # one region seen with a lesion, the infratentorial region outside the scan
    out = dis_summary(
        ["periventricular"], np.array([0.1]), np.array([False]), np.array([1]),
        coverage={"periventricular": 1.0, "juxtacortical": 0.95, "infratentorial": 0.1},
    )  # fmt: skip
    assert out["regions"]["infratentorial"]["assessable"] is False
    assert out["verdict"] == "not determinable"
    assert "Not assessable (outside the scan): infratentorial" in out["sentence"]
    # an untrusted registration: unknown locations, no verdict, no probability
    reg = Registration(None, (10, 10, 10), np.eye(4), error="boom")
    labels = np.zeros((10, 10, 10), np.int32)
    labels[2:4, 2:4, 2:4] = 1
    loc = classify_lesions(labels, np.eye(4), reg)
    assert list(loc.location) == ["unknown"] and np.isnan(loc.mni).all()
    out = dis_summary(list(loc.location), np.array([0.1]), np.array([False]), np.array([1]),
                      registration_ok=False)  # fmt: skip
    assert out["verdict"] == out["verdict_without_review"] == "unknown"
    assert out["probability"] is None
    assert isinstance(LesionLocations.unknown(0).location, np.ndarray)


def _rigid(deg_z: float, deg_x: float, shift: tuple[float, float, float]) -> np.ndarray:
    cz, sz = math.cos(math.radians(deg_z)), math.sin(math.radians(deg_z))
    cx, sx = math.cos(math.radians(deg_x)), math.sin(math.radians(deg_x))
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    m = np.eye(4)
    m[:3, :3] = rz @ rx
    m[:3, 3] = shift
    return m


def test_registration_recovers_a_known_rotation_and_shift():
    """The template moved by a known rigid transform registers back within 1.5 mm.

    Also: the region coverage of the whole scan and of a scan cut at z = -5 mm, and a
    noise cube that fails the quality check.
    """
    from lesionuq.location.atlas import flair_like, load_regions

    regions = load_regions()
    img = flair_like(regions)
    data = np.asarray(img.dataobj, dtype=np.float32)[::2, ::2, ::2]  # 2 mm, quicker
    affine = regions.affine.copy()
    affine[:3, :3] *= 2.0
    moved = _rigid(10.0, -6.0, (8.0, -12.0, 5.0))
    reg = register_to_template(data, moved @ affine)
    assert reg.ok and reg.brain_dice > 0.95
    pts = np.array([[0.0, 0.0, 0.0], [30.0, -40.0, 20.0], [-20.0, 30.0, -10.0]])
    scan_pts = pts @ moved[:3, :3].T + moved[:3, 3]  # where the template point is now
    err = np.linalg.norm(reg.to_template(scan_pts) - pts, axis=1)
    assert err.max() < 1.5, err
    np.testing.assert_allclose(reg.scales, 1.0, atol=0.03)
    # the same scan again: the same transform to the last bit (fixed seed, one thread)
    again = register_to_template(data, moved @ affine)
    assert again.transform.GetParameters() == reg.transform.GetParameters()
    np.testing.assert_array_equal(again.to_template(scan_pts), reg.to_template(scan_pts))
    coverage = region_coverage(reg, data > 0)
    assert min(coverage.values()) > 0.9, coverage
    # a scan of the brain above z = -5 mm: the infratentorial region is not assessable
    z = np.arange(data.shape[2]) * 2.0 + regions.affine[2, 3]
    cut = np.where(z[None, None, :] >= -5.0, data, 0.0).astype(np.float32)
    part = register_to_template(cut, moved @ affine)
    assert part.ok, part.to_dict()  # the brain Dice is measured within the scan's extent
    coverage = region_coverage(part, cut > 0)
    assert coverage["infratentorial"] < 0.2 and coverage["periventricular"] > 0.9, coverage
    # noise instead of a brain (a 96 mm field of view): the quality check says so
    rng = np.random.default_rng(0)
    noise = np.zeros((48, 48, 48), np.float32)
    noise[14:34, 14:34, 14:34] = rng.uniform(1, 2, (20, 20, 20))
    bad = register_to_template(noise, affine)
    assert not bad.ok and bad.brain_seen < 0.1, bad.to_dict()
    assert "of the template brain within the scan" in str(bad.problem())
