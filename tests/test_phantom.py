from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest

from lesionuq.config import PhantomConfig
from lesionuq.data.phantom import (
    DEFAULT_PARAMS,
    _Contrast,
    _make_blob,
    _template,
    case_seed,
    csf_null_ti,
    flair_signal,
    generate_case,
    make_phantom_dataset,
)
from lesionuq.io import load_case, read_manifest

SPACING = 3.0
SEEDS = (1, 2, 3, 4)


@pytest.fixture(scope="module")
def cases():
    return [generate_case(s, spacing=SPACING) for s in SEEDS]


def test_signal_equation_hand_values():
    ti = csf_null_ti(2569.0, 9000.0)
    # TI = T1 ln(2 / (1 + exp(-TR/T1))) = 2569 x 0.66350 ms
    assert ti == pytest.approx(1704.5, abs=0.1)
    assert abs(flair_signal(2569.0, 329.0, 1.0, ti=ti)) < 1e-12  # CSF nulled
    wm = flair_signal(500.0, 70.0, 0.77, ti=ti)
    gm = flair_signal(833.0, 83.0, 0.86, ti=ti)
    # WM: 0.77 x (1 - 2 e^-3.409 + e^-18) x e^-(120/70)
    assert wm == pytest.approx(0.77 * (1 - 2 * math.exp(-ti / 500)) * math.exp(-120 / 70), rel=1e-6)
    assert gm / wm == pytest.approx(1.160, abs=0.002)
    nominal = flair_signal(1100.0, 180.0, 0.9, ti=ti) / wm
    assert nominal == pytest.approx(2.054, abs=0.002)


def test_lesion_contrast_inversion():
    c = _Contrast(DEFAULT_PARAMS, csf_null_ti(2569.0, 9000.0))
    for ratio in (1.1, 1.5, 2.0):
        assert c.lesion_signal(ratio) / c.signal["wm"] == pytest.approx(ratio, rel=1e-3)


def test_blob_volume_is_the_drawn_volume():
    rng = np.random.default_rng(0)
    blob = _make_blob(rng, np.zeros(3), 500.0, 2.5, np.array([1.0, 1, 0]), 0.3, 0.25)
    h = 0.5
    g = np.arange(-16, 16 + h / 2, h, dtype=np.float32)
    d = np.stack(np.meshgrid(g, g, g, indexing="ij"))
    frac = blob.fraction(d, 0.3)
    assert np.count_nonzero(frac > 0.5) * h**3 == pytest.approx(500.0, rel=0.05)
    # the long axis is along the requested direction: the extent is larger along (1, 1, 0)
    assert blob.axes[0] > 2.0 * blob.axes[1] * 0.9


def test_same_seed_same_bytes_different_seed_differs():
    a, b = generate_case(7, spacing=4.0), generate_case(7, spacing=4.0)
    c = generate_case(8, spacing=4.0)
    assert a.flair.dataobj.tobytes() == b.flair.dataobj.tobytes()
    assert a.mask.dataobj.tobytes() == b.mask.dataobj.tobytes()
    assert a.flair.dataobj.tobytes() != c.flair.dataobj.tobytes()
    assert case_seed(0, 1) == case_seed(0, 1) != case_seed(0, 2) != case_seed(1, 2)


def test_grid_and_dtypes(cases):
    case = cases[0]
    assert case.flair.shape == (66, 78, 63)  # 197 x 233 x 189 mm at 3 mm, rounded
    assert case.flair.get_data_dtype() == np.int16
    assert case.mask.get_data_dtype() == np.uint8
    np.testing.assert_allclose(np.diag(case.flair.affine)[:3], [SPACING] * 3)
    flair = np.asarray(case.flair.dataobj)
    brain = case.info["brain"]
    assert flair[~brain].max() == 0 and flair[brain].min() >= 1  # skull-stripped
    assert set(np.unique(np.asarray(case.mask.dataobj))) <= {0, 1}


def test_shape_crops_the_field_of_view_centred():
    full = generate_case(3, spacing=4.0)
    crop = generate_case(3, spacing=4.0, shape=(40, 48, 40))
    assert crop.flair.shape == (40, 48, 40)
    centre = lambda img: img.affine @ [*(np.array(img.shape) - 1) / 2, 1]  # noqa: E731
    np.testing.assert_allclose(centre(crop.flair), centre(full.flair))
    # the same subject whatever the grid: the draws do not depend on spacing or shape
    fine = generate_case(3, spacing=2.0)
    for other in (crop, fine):
        assert other.info["lesions"][0]["volume_mm3"] == full.info["lesions"][0]["volume_mm3"]
        assert [m["kind"] for m in other.info["mimics"]] == [m["kind"] for m in full.info["mimics"]]


def test_tissue_contrast_order(cases):
    """Mean FLAIR over the cases: CSF < WM < GM < lesions (CSF nulled, GM/WM 1.16)."""
    means = {"csf": [], "wm": [], "gm": [], "lesion": []}
    for case in cases:
        flair = np.asarray(case.flair.dataobj, dtype=np.float64) / case.info["wm_signal"]
        tissue = case.info["tissue"]
        normal = (case.info["lesion_fraction"] < 0.01) & (case.info["mimic_fraction"] < 0.01)
        means["csf"].append(flair[tissue["csf"] > 0.9].mean())
        means["wm"].append(flair[(tissue["wm"] > 0.9) & normal].mean())
        means["gm"].append(flair[(tissue["gm"] > 0.7) & normal].mean())
        means["lesion"].append(flair[np.asarray(case.mask.dataobj) > 0].mean())
    m = {k: float(np.mean(v)) for k, v in means.items()}
    assert m["csf"] < 0.3 < 0.9 < m["wm"] < 1.1  # CSF nulled (noise floor, partial volume)
    assert m["wm"] < m["gm"] < m["lesion"]
    assert m["gm"] / m["wm"] > 1.03
    assert m["lesion"] / m["wm"] > 1.25


def test_lesion_counts_sizes_and_ratios_within_spec():
    p = DEFAULT_PARAMS
    counts, volumes, ratios, kinds = [], [], [], []
    for s in range(12):
        info = generate_case(100 + s, spacing=6.0, max_lesions=40).info
        counts.append(len(info["lesions"]))
        for les in info["lesions"]:
            volumes.append(les["volume_mm3"])
            ratios.append(les["ratio"])
            kinds.append(les["kind"])
            assert les["n_blobs"] == 1 or les["volume_mm3"] > p.confluent_mm3
    counts, volumes, ratios = np.array(counts), np.array(volumes), np.array(ratios)
    assert counts.min() >= 0 and counts.max() <= 40
    assert 8 <= counts.mean() <= 22  # 40 x E[Beta(1.3, 2.2)] = 14.9
    assert volumes.min() >= 12.0 and volumes.max() <= 6000.0
    assert 0.85 <= np.mean(volumes < 1000.0) < 1.0  # most below 1000 mm3, a few large
    assert 40 <= np.median(volumes) <= 120  # log-normal median 70 mm3
    assert ratios.min() >= 1.1 and ratios.max() <= 2.0
    frac_pv = np.mean(np.array(kinds) == "periventricular")
    assert 0.35 <= frac_pv <= 0.65
    assert all(
        len(generate_case(s, spacing=6.0, max_lesions=3).info["lesions"]) <= 3 for s in range(3)
    )


def test_rasterised_mask_matches_drawn_volumes(cases):
    for case in cases:
        drawn = sum(les["volume_mm3"] for les in case.info["lesions"])
        mask_mm3 = np.asarray(case.mask.dataobj).sum() * SPACING**3
        # partial volume and overlap of confluent blobs: within a factor 1.6 either way
        if drawn > 500:
            assert drawn / 1.6 < mask_mm3 < drawn * 1.6
        labels = case.info["lesion_labels"]
        assert np.array_equal(labels > 0, np.asarray(case.mask.dataobj) > 0)
        counts = np.bincount(labels.ravel(), minlength=len(case.info["lesions"]) + 1)[1:]
        assert [les["n_voxels"] for les in case.info["lesions"]] == counts.tolist()


def test_mimics_present_and_outside_the_mask(cases):
    kinds = set()
    n_visible = 0
    for case in cases:
        mask = np.asarray(case.mask.dataobj) > 0
        mimic = case.info["mimic_labels"] > 0
        assert not np.any(mimic & mask)
        n_visible += int(np.count_nonzero(mimic))
        kinds |= {m["kind"] for m in case.info["mimics"] if m.get("n_voxels", 0) > 0}
        assert case.info["mimics"][-1]["kind"] == "rim"
        # mimics are lesion-bright: the brightest mimic voxels reach lesion intensities
        flair = np.asarray(case.flair.dataobj, dtype=np.float64) / case.info["wm_signal"]
        if mimic.any():
            assert flair[mimic].max() > 1.2
    assert n_visible > 20
    assert {"cap", "cortical", "dawm"} <= kinds


def test_dataset_files_manifest_preview_and_determinism(tmp_path):
    cfg = PhantomConfig(n_cases=2, seed=5, spacing=6.0)
    csv_a = make_phantom_dataset(tmp_path / "a", cfg, preview=True, progress=False)
    csv_b = make_phantom_dataset(tmp_path / "b", cfg, preview=False, progress=False)
    assert csv_a == tmp_path / "a" / "cases.csv"
    cases = read_manifest(csv_a)
    assert [c.case_id for c in cases] == ["case_000", "case_001"]
    for case in cases:
        images, mask = load_case(case)  # passes the input checks (3-D, finite, binary mask)
        assert images[0].shape == mask.shape
        for name in ("flair.nii.gz", "mask.nii.gz"):
            a = (tmp_path / "a" / case.case_id / name).read_bytes()
            b = (tmp_path / "b" / case.case_id / name).read_bytes()
            assert a == b
    assert csv_a.read_text() == csv_b.read_text()
    png = tmp_path / "a" / "preview.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert not (tmp_path / "b" / "preview.png").exists()
    # case i is generate_case(case_seed(seed, i)) at the config's spacing
    again = generate_case(case_seed(5, 1), spacing=6.0)
    disk = nib.load(str(tmp_path / "a" / "case_001" / "flair.nii.gz"))
    np.testing.assert_array_equal(np.asarray(disk.dataobj), np.asarray(again.flair.dataobj))


def test_lesion_placement_by_kind():
    """Periventricular lesions sit on the ventricle wall, the others away from it."""
    t = _template()
    dist = {}
    for s in range(6):
        for les in generate_case(200 + s, spacing=6.0).info["lesions"]:
            idx = np.rint(np.array(les["centre_mm"]) - t.origin).astype(int)
            dist.setdefault(les["kind"], []).append(float(t.vdist[tuple(idx)]))
    assert set(dist) == {"periventricular", "juxtacortical", "deep", "infratentorial"}
    assert max(dist["periventricular"]) <= 10.0  # seed <= 2 mm + 0.8 x long semi-axis
    assert min(dist["deep"] + dist["juxtacortical"] + dist["infratentorial"]) >= 8.0
