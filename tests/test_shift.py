from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from lesionuq.io import InputError
from lesionuq.shift import ScanProfile, ShiftReference, scan_profile, warning_sentence


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
        "1 mm): P(FP) values may be unreliable."
    )


def test_entropy_reason_and_range_text(reference):
    prof = scan_profile(_phantom(10), *_entropy(0.62, 3))
    assert reference.check(prof) == ["mean voxel entropy 0.62 vs 0.18-0.30"]
    # the accepted range is min-max widened by 10% of the range and 10% of the bound
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
