"""Phantom family B (lesionuq.data.family_b): contract, determinism, properties of draws."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lesionuq.config import ConfigError, PhantomConfig
from lesionuq.data.families import make_dataset
from lesionuq.data.family_b import (
    draw_case_b,
    inside_mesh,
    load_anatomy_b,
    render_case_b,
)
from lesionuq.io import read_manifest


def _cube(lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    verts = np.array([[x, y, z] for x in (lo, hi) for y in (lo, hi) for z in (lo, hi)], float)
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    faces = [t for a, b, c, d in quads for t in ((a, b, c), (a, c, d))]
    return verts, np.array(faces)


def test_inside_mesh_cube_counts_the_voxel_centres_inside() -> None:
    # cube [-2.5, 2.5]^3 on a 1 mm grid with voxel 0 at -5: centres -2..2 inside, 5^3
    verts, faces = _cube(-2.5, 2.5)
    inside = inside_mesh(verts, faces, np.array([-5.0, -5.0, -5.0]), (11, 11, 11))
    assert inside.sum() == 125
    assert inside[3:8, 3:8, 3:8].all()
    assert not inside[2].any() and not inside[:, :, 8].any()


@pytest.fixture(scope="module")
def case():
    draw = draw_case_b(3, max_lesions=60)
    return draw, render_case_b(draw, spacing=3.0)


def test_anatomy_volumes_are_brain_like() -> None:
    a = load_anatomy_b()
    wm_ml, gm_ml = a.wm.sum() / 1000, a.gm.sum() / 1000  # 1 mm voxels
    assert 500 < wm_ml < 900 and 250 < gm_ml < 700
    assert a.brain.sum() / 1000 > wm_ml + gm_ml  # the envelope holds CSF too


def test_draw_is_deterministic_and_seeded() -> None:
    a, b = draw_case_b(11, 50).to_dict(), draw_case_b(11, 50).to_dict()
    assert json.dumps(a) == json.dumps(b)
    assert json.dumps(draw_case_b(12, 50).to_dict()) != json.dumps(a)
    assert draw_case_b(11, 0).lesions == []


def test_render_is_deterministic(case) -> None:
    draw, first = case
    again = render_case_b(draw, spacing=3.0)
    assert np.array_equal(np.asarray(first.flair.dataobj), np.asarray(again.flair.dataobj))
    assert np.array_equal(np.asarray(first.mask.dataobj), np.asarray(again.mask.dataobj))


def test_render_contract_and_hand_checkable_properties(case) -> None:
    draw, c = case
    flair = np.asarray(c.flair.dataobj)
    mask = np.asarray(c.mask.dataobj)
    assert flair.dtype == np.int16 and mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 1}
    assert np.allclose(np.diag(c.flair.affine)[:3], 3.0)
    assert np.array_equal(c.flair.affine, c.mask.affine)
    brain = flair > 0
    assert flair[brain].min() >= 1
    assert mask.sum() > 0 and brain[mask > 0].all()  # lesions lie inside the brain
    # lesions are brighter than the typical brain voxel (lesion/WM ratios are >= 1.08)
    assert np.median(flair[mask > 0]) > np.median(flair[brain])
    assert c.info["lesions"] >= 1 and c.info["drawn_lesions"] == len(draw.lesions)
    # every lesion ratio and mimic lies in its documented range
    assert all(1.08 <= les.ratio <= 2.6 for les in draw.lesions)
    assert {les.kind for les in draw.lesions} <= {"finger", "tract", "cluster"}
    # mimics are kept at least 1 mm from every lesion sphere
    for m in draw.mimics:
        for les in draw.lesions:
            d = np.linalg.norm(m.centres[:, None] - les.centres[None], axis=2)
            assert np.all(d >= m.radii[:, None] + les.radii[None] + 1.0 - 1e-9)


def test_spacing_changes_rasterisation_only() -> None:
    draw = draw_case_b(4, 30)
    coarse = render_case_b(draw, spacing=4.0)
    fine = render_case_b(draw, spacing=3.0)
    vol = [np.asarray(x.mask.dataobj).sum() * s**3 for x, s in ((coarse, 4.0), (fine, 3.0))]
    assert vol[0] > 0 and 0.5 < vol[0] / vol[1] < 2.0  # the same lesions, in mm3


def test_dataset_writes_family_a_contract(tmp_path) -> None:
    cfg = PhantomConfig(n_cases=2, seed=1, spacing=4.0, max_lesions=20, family="b")
    csv = make_dataset(tmp_path / "b", cfg, progress=False)
    cases = read_manifest(csv, ("flair",), require_mask=True)
    assert [c.case_id for c in cases] == ["case_000", "case_001"]
    meta = json.loads((tmp_path / "b" / "phantom.json").read_text())
    assert meta["family"] == "b" and len(meta["cases"]) == 2
    from lesionuq.data.phantom import case_seed

    assert meta["cases"][0]["draw"]["seed"] == case_seed(1, 0)
    again = make_dataset(tmp_path / "b2", cfg, progress=False)
    one = (tmp_path / "b" / "case_001" / "flair.nii.gz").read_bytes()
    assert (again.parent / "case_001" / "flair.nii.gz").read_bytes() == one


def test_family_b_follows_the_output_rule(tmp_path) -> None:
    """Issue 25 item 4 for family B: a user's data folder is refused before any work."""
    from lesionuq.io import InputError

    users = tmp_path / "mydata"
    users.mkdir()
    (users / "cases.csv").write_text("case_id,flair\nmine,scan.nii.gz\n")
    cfg = PhantomConfig(n_cases=1, seed=3, spacing=6.0, max_lesions=5, family="b")
    with pytest.raises(InputError, match="not empty"):
        make_dataset(users, cfg, progress=False)
    assert sorted(p.name for p in users.iterdir()) == ["cases.csv"]
    assert (users / "cases.csv").read_text().startswith("case_id,flair\nmine")


def test_family_is_checked_and_b_takes_no_params(tmp_path) -> None:
    with pytest.raises(ConfigError, match="family"):
        PhantomConfig(family="d")
    cfg = PhantomConfig(n_cases=1, family="b", params={"tr_ms": 8000})
    with pytest.raises(ConfigError, match="family b takes none"):
        make_dataset(tmp_path / "x", cfg, progress=False)


def test_cli_family_b(tmp_path) -> None:
    from typer.testing import CliRunner

    from lesionuq.cli import app

    out = tmp_path / "ph"
    args = ["phantom", "--out", str(out), "--cases", "1", "--spacing", "4", "--family", "b"]
    result = CliRunner().invoke(app, [*args, "--max-lesions", "10", "--quiet"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "phantom.json").read_text())["family"] == "b"
    assert (out / "cases.csv").read_text().splitlines()[0] == "case_id,flair,mask"
