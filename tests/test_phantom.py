from __future__ import annotations

import hashlib
import json
import math

import nibabel as nib
import numpy as np
import pytest

from lesionuq.config import ConfigError, ExperimentConfig, PhantomConfig
from lesionuq.data.phantom import (
    DEFAULT_PARAMS,
    CaseDraw,
    Contrast,
    PhantomParams,
    case_seed,
    csf_null_ti,
    draw_case,
    estimate_case_memory,
    flair_signal,
    generate_case,
    load_template,
    make_blob,
    make_phantom_dataset,
    render_case,
)
from lesionuq.data.phantom import dataset as phantom_dataset
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
    c = Contrast(DEFAULT_PARAMS, csf_null_ti(2569.0, 9000.0))
    for ratio in (1.1, 1.5, 2.0):
        assert c.lesion_signal(ratio) / c.signal["wm"] == pytest.approx(ratio, rel=1e-3)


def test_blob_volume_is_the_drawn_volume():
    rng = np.random.default_rng(0)
    blob = make_blob(rng, np.zeros(3), 500.0, 2.5, np.array([1.0, 1, 0]), 0.3, 0.25)
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
    t = load_template()
    dist = {}
    for s in range(6):
        for les in generate_case(200 + s, spacing=6.0).info["lesions"]:
            idx = np.rint(np.array(les["centre_mm"]) - t.origin).astype(int)
            dist.setdefault(les["kind"], []).append(float(t.vdist[tuple(idx)]))
    assert set(dist) == {"periventricular", "juxtacortical", "deep", "infratentorial"}
    assert max(dist["periventricular"]) <= 10.0  # seed <= 2 mm + 0.8 x long semi-axis
    assert min(dist["deep"] + dist["juxtacortical"] + dist["infratentorial"]) >= 8.0


# The sha256 of generate_case(11, spacing=6.0)'s FLAIR then mask bytes, recorded with the
# single-module generator before it was split into draw / render (same NumPy and SciPy).
GOLDEN_SEED_11_6MM = "4772e0ff9a2f433b52382305878eea039dda8c412b58efcac4f998d1e5b9ddd5"


def _digest(case) -> str:
    data = np.asarray(case.flair.dataobj).tobytes() + np.asarray(case.mask.dataobj).tobytes()
    return hashlib.sha256(data).hexdigest()


def test_golden_bytes_and_draw_replay_through_json():
    case = generate_case(11, spacing=6.0)
    assert _digest(case) == GOLDEN_SEED_11_6MM
    draw = draw_case(11)
    text = json.dumps(draw.to_dict())
    again = CaseDraw.from_dict(json.loads(text))
    assert json.dumps(again.to_dict()) == text  # the JSON value round-trips exactly
    assert again.seed == 11 and len(again.lesions) == len(case.info["lesions"])
    assert [m.kind for m in again.mimics] == [m["kind"] for m in case.info["mimics"][:-1]]
    # rendering the replayed draw gives the same bytes as generate_case, twice
    assert _digest(render_case(again, spacing=6.0)) == GOLDEN_SEED_11_6MM
    assert _digest(render_case(draw, spacing=6.0)) == GOLDEN_SEED_11_6MM
    # a draw from a Generator instead of a seed is the same subject, seed not recorded
    from_rng = draw_case(np.random.default_rng(11))
    assert from_rng.seed is None and from_rng.ti_ms == draw.ti_ms


def test_params_from_yaml_mapping_and_errors():
    params = PhantomParams.from_dict(
        {"deform_mm": 3, "edge_mm": [0.4, 0.9], "placement": {"deep": 1}}
    )
    assert params.deform_mm == 3.0 and isinstance(params.deform_mm, float)
    assert params.edge_mm == (0.4, 0.9) and params.placement == {"deep": 1.0}
    assert params.tissue == DEFAULT_PARAMS.tissue  # keys not given keep their default
    assert PhantomParams.from_dict(None) == DEFAULT_PARAMS
    cfg = ExperimentConfig.from_dict({"phantom": {"params": {"deform_mm": 3.0}}})
    assert PhantomParams.from_dict(cfg.phantom.params).deform_mm == 3.0
    with pytest.raises(ConfigError, match=r"phantom\.params\.deform"):
        PhantomParams.from_dict({"deform": 3.0})
    with pytest.raises(ConfigError, match=r"edge_mm must be \(lo, hi\)"):
        PhantomParams.from_dict({"edge_mm": [0.9, 0.4]})
    with pytest.raises(ConfigError, match="placement keys"):
        PhantomParams.from_dict({"placement": {"cortex": 1.0}})


def test_dataset_uses_config_params(tmp_path):
    cfg = PhantomConfig(n_cases=1, seed=2, spacing=8.0, params={"placement": {"deep": 1.0}})
    make_phantom_dataset(tmp_path, cfg, progress=False)
    meta = json.loads((tmp_path / "phantom.json").read_text())
    assert meta["params"]["placement"] == {"deep": 1.0} and "params" not in meta["config"]
    kinds = {les["kind"] for les in meta["cases"][0]["lesions"]}
    assert kinds == {"deep"}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"n_cases": 0}, "n_cases"),
        ({"n_cases": -1}, "n_cases"),
        ({"spacing": 0.0}, "spacing"),
        ({"spacing": -4.0}, "spacing"),
        ({"shape": (0, 10, 10)}, "shape"),
        ({"seed": -1}, "seed"),
        ({"shape": (4000, 4000, 4000)}, r"needs about 238\d\.\d GiB"),
        ({"params": {"noise": [0.5, 0.1]}}, "noise"),
        # family A's generator never makes another family's data under its name
        ({"family": "c"}, r"phantom.family is 'c', but this generator makes family A only"),
    ],
)
def test_bad_config_is_one_sentence_and_writes_nothing(tmp_path, changes, message):
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=message):
        make_phantom_dataset(out, PhantomConfig(**changes), progress=False)
    assert not out.exists()


def test_memory_estimate_and_limit(tmp_path):
    # 4000^3 voxels x 40 bytes of full-grid maps dominate: about 2.4 TB
    assert estimate_case_memory(1.0, (4000, 4000, 4000)) / 2**30 == pytest.approx(2385, rel=0.01)
    small, fine = estimate_case_memory(4.0), estimate_case_memory(1.0)
    assert small < fine < 4 * 2**30  # a 1 mm case fits in a few GiB
    with pytest.raises(ConfigError, match=r"more than the memory limit \(0\.5 GiB\)"):
        make_phantom_dataset(tmp_path / "x", PhantomConfig(), memory_limit_gib=0.5)
    assert not (tmp_path / "x").exists()


def test_interrupted_dataset_leaves_no_partial_case(tmp_path, monkeypatch):
    real = phantom_dataset.generate_case
    calls = []

    def flaky(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(phantom_dataset, "generate_case", flaky)
    stale = tmp_path / ".tmp-lesionuq-999999999-left-by-kill"  # a dead process's temporary
    stale.mkdir()
    with pytest.raises(KeyboardInterrupt):
        make_phantom_dataset(tmp_path, PhantomConfig(n_cases=3, spacing=8.0), progress=False)
    assert list(tmp_path.iterdir()) == []  # nothing half-made is published; stale temp cleaned
