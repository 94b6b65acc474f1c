from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from lesionuq.io import InputError
from lesionuq.rundir import SHIFT_RULE
from lesionuq.shift import (
    INTERVAL_MIN_SCANS,
    SHIFT_ALPHA,
    ScanProfile,
    ShiftReference,
    prediction_half_width,
    scan_profile,
    warning_sentence,
)


def _phantom(seed: int, shape: tuple[int, int, int] = (32, 32, 32)) -> nib.Nifti1Image:
    """A 1 mm RAS head-like volume: CSF-dark ventricles, WM core, GM shell, bright spots."""
    rng = np.random.default_rng(seed)
    c = (np.array(shape) - 1) / 2
    x, y, z = np.indices(shape)
    r = np.sqrt(((x - c[0]) / 13) ** 2 + ((y - c[1]) / 14) ** 2 + ((z - c[2]) / 12) ** 2)
    img = np.where(r < 1, 700.0, 0.0)  # GM
    img[r < 0.8] = 600.0  # WM
    img[r < 0.25] = 150.0  # ventricles (CSF is dark on FLAIR)
    for _ in range(4):  # lesions
        p = c + rng.uniform(-6, 6, 3)
        img[(x - p[0]) ** 2 + (y - p[1]) ** 2 + (z - p[2]) ** 2 < 4] = 1000.0
    img = ndimage.gaussian_filter(img, 0.8)
    img += rng.normal(0, 15, shape) * (img > 50)
    gain = rng.uniform(0.8, 1.25)  # scanner gain: must not matter
    return nib.Nifti1Image((img * gain).astype(np.float32), np.eye(4))


def _thick_lps(img: nib.Nifti1Image) -> nib.Nifti1Image:
    """Resample onto a 0.9 x 0.9 x 3 mm grid in LPS orientation (linear)."""
    zooms = np.array([0.9, 0.9, 3.0])
    shape = np.ceil(np.array(img.shape) / zooms).astype(int)
    target = np.diag([-0.9, -0.9, 3.0, 1.0])
    target[:3, 3] = [img.shape[0] - 1, img.shape[1] - 1, 0]  # same field of view
    m = np.linalg.solve(img.affine, target)  # target voxel -> source voxel
    data = ndimage.affine_transform(
        np.asarray(img.dataobj), m[:3, :3], m[:3, 3], output_shape=tuple(shape), order=1
    )
    return nib.Nifti1Image(data.astype(np.float32), target)


def _entropy(level: float, seed: int, shape=(32, 32, 32)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return level + 0.02 * rng.standard_normal(shape), np.ones(shape, bool)


@pytest.fixture(scope="module")
def reference() -> ShiftReference:
    profiles = []
    for s in range(4):
        e, b = _entropy(0.18 + 0.04 * s, s)
        profiles.append(scan_profile(_phantom(s), e, b))
    return ShiftReference().fit(profiles)


def test_in_distribution_scan_does_not_warn(reference):
    e, b = _entropy(0.25, 10)
    prof = scan_profile(_phantom(10), e, b)
    assert prof.slice_thickness == 1.0 and prof.in_plane == 1.0
    assert reference.check(prof) == []
    assert warning_sentence([]) is None


def test_thick_slice_lps_scan_warns(reference):
    thick = _thick_lps(_phantom(11))
    assert nib.aff2axcodes(thick.affine) == ("L", "P", "S")
    prof = scan_profile(thick)  # no entropy: that feature is skipped
    assert prof.slice_thickness == pytest.approx(3.0) and prof.in_plane == pytest.approx(0.9)
    reasons = reference.check(prof)
    assert reasons == ["slice thickness 3 mm vs 1 mm"]  # 0.9 mm in-plane is within tolerance
    assert warning_sentence(reasons) == (
        "this scan is unlike the scans this model was validated on (slice thickness 3 mm vs "
        "1 mm): P(FP) values may be unreliable; `lesionuq refit` on a few labelled scans like "
        "it adapts the model."
    )


def test_entropy_reason_and_range_text(reference):
    prof = scan_profile(_phantom(10), *_entropy(0.62, 3))
    assert reference.check(prof) == ["mean voxel entropy 0.62 vs 0.18-0.30"]
    # 4 validation scans, fewer than the interval needs: min-max widened by 10 % of the
    # range and 10 % of the bound
    lo, hi = reference.min_["mean_entropy"], reference.max_["mean_entropy"]
    assert reference.hi_["mean_entropy"] == pytest.approx(hi + 0.1 * (hi - lo) + 0.1 * hi)


def test_gain_does_not_matter_and_json_round_trip(tmp_path, reference):
    img = _phantom(5)
    scaled = nib.Nifti1Image(np.asarray(img.dataobj) * 3.0, img.affine)
    a, b = scan_profile(img), scan_profile(scaled)
    assert a.q01 == pytest.approx(b.q01) and a.q99 == pytest.approx(b.q99)
    assert ScanProfile.from_dict(a.to_dict()) == a
    path = reference.save(tmp_path / "shift_reference.json")
    back = ShiftReference.load(path)
    assert back.to_dict() == reference.to_dict()
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(InputError, match="not a shift reference"):
        ShiftReference.load(tmp_path / "bad.json")
    with pytest.raises(InputError, match="no voxel"):
        scan_profile(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)))


def test_prediction_half_width_hand_values():
    v = np.array([0.18, 0.22, 0.26, 0.30])  # mean 0.24, sd 0.05164 (ddof 1)
    # t(0.995; 3) = 5.8409 (tables), sqrt(1 + 1/4) = 1.1180
    assert prediction_half_width(v, 0.01) == pytest.approx(5.8409 * 0.051640 * 1.1180, rel=1e-4)
    # two values: t(0.975; 1) = 12.706, sd = |a - b| / sqrt(2)
    assert prediction_half_width(np.array([1.0, 2.0]), 0.05) == pytest.approx(
        12.706 * (1 / np.sqrt(2)) * np.sqrt(1.5), rel=1e-4
    )
    with pytest.raises(ValueError, match="at least 2"):
        prediction_half_width(np.array([1.0]), 0.05)


def test_prediction_interval_misses_a_new_normal_value_at_rate_alpha():
    """The interval's defining property, by simulation: 5 reference values and one new
    value from the same normal distribution; the new value falls outside with
    probability alpha (here 0.1: 2000 of 20 000 draws, binomial SD 42)."""
    rng = np.random.default_rng(0)
    draws = rng.normal(3.0, 2.0, size=(20_000, 6))
    ref, new = draws[:, :5], draws[:, 5]
    half = np.array([prediction_half_width(r, 0.1) for r in ref])
    miss = np.abs(new - ref.mean(axis=1)) > half
    assert abs(miss.mean() - 0.1) < 0.006
    # min-max alone misses 2 / (n + 1) = 1/3 of them
    outside = (new < ref.min(axis=1)) | (new > ref.max(axis=1))
    assert abs(outside.mean() - 1 / 3) < 0.01


def _profile(entropy: float | None, q01: float, thickness: float = 1.0) -> ScanProfile:
    return ScanProfile(1.0, thickness, entropy, q01, 0.4, 1.2, 1.4)


def test_reference_takes_the_wider_of_min_max_and_the_prediction_interval():
    e = np.array([0.20, 0.22, 0.30, 0.24, 0.26])
    profiles = [_profile(v, 0.10) for v in e]
    ref = ShiftReference().fit(profiles)
    # 5 continuous features carry values (entropy and the four quantiles, three constant)
    half = prediction_half_width(e, SHIFT_ALPHA / 5)
    assert ref.hi_["mean_entropy"] == pytest.approx(e.mean() + half)
    assert ref.lo_["mean_entropy"] == pytest.approx(e.mean() - half)
    # a constant feature has no spread: the min-max rule's 10 % of the bound is kept
    assert (ref.lo_["q01"], ref.hi_["q01"]) == pytest.approx((0.09, 0.11))
    # spacings keep the min-max rule: 1 mm accepts 0.75-1.25 mm
    assert (ref.lo_["slice_thickness"], ref.hi_["slice_thickness"]) == (0.75, 1.25)
    # mean 0.244, sd 0.0385, t(0.995; 4) = 4.604, sqrt(1.2): half-width 0.194
    assert half == pytest.approx(4.6041 * 0.038471 * np.sqrt(1.2), rel=1e-4)
    assert ref.check(_profile(0.42, 0.10)) == []  # inside the prediction interval
    assert ref.check(_profile(0.45, 0.10)) == ["mean voxel entropy 0.45 vs 0.20-0.30"]
    # alpha None is the min-max rule alone: 0.42 warns there
    old = ShiftReference(alpha=None).fit(profiles)
    assert old.hi_["mean_entropy"] == pytest.approx(0.30 + 0.1 * 0.10 + 0.1 * 0.30)
    assert old.check(_profile(0.42, 0.10)) == ["mean voxel entropy 0.42 vs 0.20-0.30"]
    # fewer scans than interval_min_scans (5): the spread is too uncertain, min-max alone
    four = ShiftReference().fit(profiles[:4])
    assert (
        four.to_dict()["features"]
        == ShiftReference(alpha=None).fit(profiles[:4]).to_dict()["features"]
    )
    assert ShiftReference(interval_min_scans=4).fit(profiles[:4]).hi_["mean_entropy"] > 0.42
    with pytest.raises(ValueError, match="alpha"):
        ShiftReference(alpha=1.5)
    with pytest.raises(ValueError, match="interval_min_scans"):
        ShiftReference(interval_min_scans=1)


def test_a_reference_saved_before_the_interval_loads_with_its_bounds(tmp_path, reference):
    d = ShiftReference(alpha=None).fit([_profile(0.2, 0.1), _profile(0.3, 0.1)]).to_dict()
    del d["alpha"], d["interval_min_scans"]  # written by the min-max rule, before both
    back = ShiftReference.from_dict(d)
    assert back.alpha is None
    assert back.hi_["mean_entropy"] == pytest.approx(d["features"]["mean_entropy"]["hi"])
    assert back.check(_profile(0.5, 0.1)) == ["mean voxel entropy 0.50 vs 0.20-0.30"]


def test_the_digest_names_the_rules_settings():
    assert f"alpha {SHIFT_ALPHA:g}, from {INTERVAL_MIN_SCANS} scans" in SHIFT_RULE
