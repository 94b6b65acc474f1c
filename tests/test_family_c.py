"""Phantom family C (lesionuq.data.family_c): contract, determinism, generative pieces."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from lesionuq.config import ConfigError, PhantomConfig
from lesionuq.data.families import make_dataset
from lesionuq.data.family_c import dataset as c_dataset
from lesionuq.data.family_c import draw_case_c, render_case_c
from lesionuq.data.family_c.anatomy import tissue_maps
from lesionuq.data.family_c.lesions import COUNT_SHAPE, draw_lesion_count
from lesionuq.data.family_c.scanner import acquire
from lesionuq.data.phantom import case_seed
from lesionuq.data.phantom import dataset as shared_dataset
from lesionuq.io import InputError, read_manifest


@pytest.fixture(scope="module")
def case():
    draw = draw_case_c(3, max_lesions=60)
    return draw, render_case_c(draw, spacing=4.0)


def test_draw_is_deterministic_and_seeded() -> None:
    a = json.dumps(draw_case_c(11, 30).to_dict())
    assert json.dumps(draw_case_c(11, 30).to_dict()) == a
    assert json.dumps(draw_case_c(12, 30).to_dict()) != a
    assert draw_case_c(11, 0).lesions == []


def test_render_contract_and_hand_checkable_properties(case) -> None:
    draw, c = case
    flair, mask, maps = np.asarray(c.flair.dataobj), np.asarray(c.mask.dataobj), c.maps
    assert flair.dtype == np.int16 and mask.dtype == np.uint8
    assert np.allclose(np.diag(c.flair.affine)[:3], 4.0)
    assert np.array_equal(c.flair.affine, c.mask.affine)
    brain = maps["brain"] > 0.5
    assert np.array_equal(flair > 0, brain)  # 0 outside the brain, >= 1 inside
    assert flair[brain].min() >= 1
    assert np.array_equal(mask > 0, (maps["lesion"] > 0.5) & brain)  # fraction > 0.5
    assert 1000 < c.info["brain_cm3"] < 1500  # the stated brain volume
    assert c.info["lesions"] >= 1 and c.info["drawn_lesions"] == len(draw.lesions)
    # lesions are hyperintense relative to the white matter of the same scan
    wm = (maps["wm"] > 0.9) & (mask == 0) & (maps["mimic"] < 0.1)
    assert np.median(flair[mask > 0]) > 1.1 * np.median(flair[wm])
    # mimics are outside the ground truth
    assert draw.mimics and not np.any((maps["mimic"] > 0.5) & (mask > 0))
    record = draw.to_dict()
    assert {les["kind"] for les in record["lesions"]} <= {
        "periventricular",
        "deep",
        "juxtacortical",
        "infratentorial",
    }
    assert all(10 <= les["volume_mm3"] <= 3000 for les in record["lesions"])
    assert all(len(les["centre"]) == 3 for les in record["lesions"])


def test_lesion_kinds_sit_in_their_regions(case) -> None:
    draw, _ = case
    centres = np.array([les.centre for les in draw.lesions], dtype=np.float32)
    t = tissue_maps(draw.subject, centres, 1.0)
    kinds = np.array([les.kind for les in draw.lesions])
    radius = np.array([(3 * les.volume_mm3 / (4 * np.pi)) ** (1 / 3) for les in draw.lesions])
    assert set(kinds) == {"periventricular", "deep", "juxtacortical", "infratentorial"}
    peri = kinds == "periventricular"  # next to the ventricle wall
    assert np.all(t["d_vent"][peri] < 0.5 * radius[peri] + 3.0 + 1e-3)
    infra = kinds == "infratentorial"  # in the brainstem or the cerebellar white matter
    assert np.all(t["stem"][infra] + t["cb_wm"][infra] > 0.5)
    deep = kinds == "deep"  # deep white matter, away from ventricles and cortex
    assert np.all((t["wm"][deep] > 0.9) & (t["d_vent"][deep] > 5.0) & (t["d_wm"][deep] > 5.0))
    juxta = kinds == "juxtacortical"  # touching the grey-white boundary from below
    assert np.all((t["d_wm"][juxta] > 0.0) & (t["d_wm"][juxta] < np.maximum(radius[juxta], 1.5)))


def test_lesion_count_mean_matches_its_formula() -> None:
    rng = np.random.default_rng(0)
    counts = np.array([draw_lesion_count(rng, 100) for _ in range(4000)])
    mean = 0.35 * 100  # Poisson with a Gamma(2.5, 0.35 max / 2.5) rate
    sd = np.sqrt((mean + mean**2 / COUNT_SHAPE) / len(counts))
    assert abs(counts.mean() - mean) < 4 * sd + 0.2  # + the cap's small cut
    assert counts.max() <= 100 and draw_lesion_count(rng, 0) == 0


def test_kspace_truncation_of_a_delta_gives_the_sinc_width() -> None:
    n = 64
    delta = np.zeros((n, n, n), dtype=np.float32)
    delta[32, 32, 32] = 1.0
    out = acquire(
        delta, factor=1, spacing=1.0, resolution=[1.0, 1.0, 4.0], noise_sigma=0.0, noise_seed=0
    )
    # kept |k| <= 1/8 per mm on a 64 mm grid: 17 samples, a Dirichlet kernel whose
    # first zeros sit at 64/17 = 3.8 mm and whose FWHM is ~1.21 x 64/17 = 4.5 mm
    profile = out[32, 32, :] / out[32, 32, 32]
    above = np.flatnonzero(profile >= 0.5)
    assert 4 <= above.max() - above.min() + 1 <= 5
    assert np.argmin(profile[32:40]) in (3, 4)  # the first zero, 3.8 mm away
    assert out[31, 32, 32] < 1e-3 * out[32, 32, 32]  # full resolution in x: no spread


def test_dataset_contract_determinism_and_manifest_last(tmp_path, monkeypatch) -> None:
    cfg = PhantomConfig(n_cases=2, seed=1, spacing=6.0, max_lesions=20, family="c")
    seen = []
    real = shared_dataset.write_manifest

    def spy(path, cases):
        seen.append(sorted(p.name for p in path.parent.iterdir()))
        return real(path, cases)

    monkeypatch.setattr(shared_dataset, "write_manifest", spy)
    csv = make_dataset(tmp_path / "c", cfg, progress=False)
    assert seen == [["case_000", "case_001", "phantom.json"]]  # cases.csv comes last
    cases = read_manifest(csv, ("flair",), require_mask=True)
    assert [c.case_id for c in cases] == ["case_000", "case_001"]
    meta = json.loads((tmp_path / "c" / "phantom.json").read_text())
    assert meta["family"] == "c" and len(meta["cases"]) == 2
    assert [m["draw"]["seed"] for m in meta["cases"]] == [case_seed(1, 0), case_seed(1, 1)]
    assert all("lesions" in m["draw"] and "scanner" in m["draw"] for m in meta["cases"])
    again = make_dataset(tmp_path / "c2", cfg, progress=False)
    name = "case_001/flair.nii.gz"
    assert (again.parent / name).read_bytes() == (tmp_path / "c" / name).read_bytes()
    other = make_dataset(tmp_path / "c3", dataclasses.replace(cfg, seed=2), progress=False)
    assert (other.parent / name).read_bytes() != (tmp_path / "c" / name).read_bytes()


def test_family_c_refuses_params_other_families_and_foreign_folders(tmp_path) -> None:
    with pytest.raises(ConfigError, match="family"):
        PhantomConfig(family="d")
    cfg = PhantomConfig(n_cases=1, family="c", params={"tr_ms": 8000})
    with pytest.raises(ConfigError, match="family c takes none"):
        make_dataset(tmp_path / "x", cfg, progress=False)
    assert not (tmp_path / "x").exists()
    users = tmp_path / "mydata"
    users.mkdir()
    (users / "cases.csv").write_text("case_id,flair\nmine,scan.nii.gz\n")
    with pytest.raises(InputError, match="not empty"):
        make_dataset(users, PhantomConfig(n_cases=1, spacing=6.0, family="c"), progress=False)
    assert sorted(p.name for p in users.iterdir()) == ["cases.csv"]
    with pytest.raises(ConfigError, match="memory limit"):
        c_dataset.make_family_c_dataset(
            tmp_path / "y", PhantomConfig(family="c", spacing=1.0), memory_limit_gib=0.1
        )
    assert not (tmp_path / "y").exists()
