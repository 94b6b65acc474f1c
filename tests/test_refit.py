"""``lesionuq refit``: a model folder's lesion scorers fitted again on labelled new scans."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from lesionuq.cli import app
from lesionuq.io import InputError, read_manifest, write_manifest
from lesionuq.lesions.dataset import LesionSet
from lesionuq.predict import load_model, predict_scan
from lesionuq.predict.refit import MIN_SCANS, REFIT_FILE, refit_model
from lesionuq.rundir import RunDir


@pytest.fixture(scope="module")
def site(tiny_run, tmp_path_factory):
    """Fold 0's model and a manifest of its test scans with a true lesion (the "new site").

    The tiny run's 4-step U-Net finds ~1,100 lesions per scan, nearly all false; the scans
    with a true one give both classes to fit on.
    """
    root, csv, _ = tiny_run
    run = root / "run"
    test = LesionSet.load(RunDir(run).lesion_set(0, "test")).table
    with_tp = set(test.loc[test["is_tp"].astype(bool), "case_id"].astype(str))
    cases = [c for c in read_manifest(csv) if c.case_id in with_tp]
    assert len(cases) >= MIN_SCANS
    base = tmp_path_factory.mktemp("site")
    manifest = base / "cases.csv"
    write_manifest(manifest, cases)
    return run, manifest, base


@pytest.fixture(scope="module")
def refitted(site):
    run, manifest, base = site
    result = refit_model(run / "fold_0", manifest, base / "model", progress=False)
    return result, base / "model"


def test_the_labelled_lesions_match_the_runs_own(site, refitted):
    """The scans' lesions and labels are those the run's graphs stage found with the same
    U-Net (fold 0's test lesions of these cases): the same true lesions per scan, and the
    lesion counts and voxels agree to within 1 %: predict samples on the fly where the run
    samples its saved preprocessed image, and this 4-step U-Net leaves many voxels near
    0.5."""
    run, _, _ = site
    result, out = refitted
    local = LesionSet.load(out / "graphs" / "val").table
    ref = LesionSet.load(RunDir(run).lesion_set(0, "test")).table
    ref = ref[ref["case_id"].isin(result.cases)]
    assert len(local) == sum(result.lesions_per_case) == result.n_tp + result.n_fp
    assert result.n_tp > 0 and result.n_fp > 0
    for table in (local, ref):
        table["is_tp"] = table["is_tp"].astype(bool)
    per_case = [t.groupby("case_id")["is_tp"].agg(["count", "sum"]) for t in (local, ref)]
    pd.testing.assert_series_equal(per_case[0]["sum"], per_case[1]["sum"])
    # the ~1,100 junk lesions per scan are 1-3 voxel blobs near 0.5: the count moves by a
    # few with the torch thread count (1 thread: 1161 / 1199 against the run's 1156 / 1198)
    np.testing.assert_allclose(per_case[0]["count"], per_case[1]["count"], rtol=0.01)
    voxels = [t.groupby("case_id")["n_voxels"].sum() for t in (local, ref)]
    np.testing.assert_allclose(voxels[0], voxels[1], rtol=0.01)
    tp = [t.loc[t["is_tp"], "iou_adj"].sort_values().to_numpy() for t in (local, ref)]
    np.testing.assert_allclose(tp[0], tp[1], atol=0.05)


def test_refitted_folder_is_a_model_folder_fitted_on_the_new_scans(site, refitted):
    run, manifest, base = site
    result, out = refitted
    source = load_model(run / "fold_0")
    model = load_model(out)
    assert sorted(model.scorers) == sorted(source.scorers) == result.methods
    assert (out / "segmenter.pt").read_bytes() == (run / "fold_0/segmenter.pt").read_bytes()
    # the same U-Net, so the same judgement of its training (the tiny one did not learn)
    assert model.training == source.training is not None
    n = result.n_tp + result.n_fp
    cal = json.loads((out / "scorers/gcnn_classif/calibration.json").read_text())
    assert len(cal["oof_p_fp"]) == n  # cross-fitted on exactly these lesions
    assert model.scorers["gcnn_classif"].n_train_ + model.scorers["gcnn_classif"].n_val_ == n
    assert model.default is not None and model.default.method == result.default_method
    assert model.default.reason == result.reason and result.default_method in result.reason
    assert model.shift is not None
    saved = json.loads((out / REFIT_FILE).read_text())
    assert saved == {k: v for k, v in dataclasses.asdict(result).items() if k != "folder"}
    assert saved["source_model"] == str((run / "fold_0").resolve())
    # the new folder predicts a scan (here one of its own: its lesions are the same)
    case = read_manifest(manifest)[0]
    pred = predict_scan(out, [case.images[0]], base / "pred", progress=False)
    assert len(pred.table) == result.lesions_per_case[0]


def test_refit_refuses_what_it_cannot_fit_on(site, tmp_path):
    run, manifest, _ = site
    cases = read_manifest(manifest)
    one = tmp_path / "one.csv"
    write_manifest(one, cases[:1])
    with pytest.raises(InputError, match=f"at least {MIN_SCANS}"):
        refit_model(run / "fold_0", one, tmp_path / "m1", progress=False)
    nomask = tmp_path / "nomask.csv"
    write_manifest(nomask, [dataclasses.replace(c, mask=None) for c in cases])
    with pytest.raises(InputError, match="mask"):
        refit_model(run / "fold_0", nomask, tmp_path / "m2", progress=False)
    assert not any((tmp_path / m).exists() for m in ("m1", "m2"))


def test_refit_command_passes_its_options_and_prints_the_summary(
    site, refitted, tmp_path, monkeypatch
):
    """The CLI only calls :func:`refit_model` (stubbed here: the fixture's refit) and prints
    its summary; a refusal is one sentence and a non-zero exit."""
    import lesionuq.predict.refit as refit_module

    run, manifest, _ = site
    result, out = refitted
    seen = []
    monkeypatch.setattr(refit_module, "refit_model", lambda *a, **k: seen.append((a, k)) or result)
    args = ["refit", "--model", str(run / "fold_0"), "--cases", str(manifest), "--out", "x"]
    res = CliRunner().invoke(app, [*args, "--overwrite", "--quiet"])
    assert res.exit_code == 0, res.output
    assert seen == [((run / "fold_0", manifest, Path("x")), {"overwrite": True, "progress": False})]
    text = " ".join(res.output.split())
    n = result.n_tp + result.n_fp
    assert text.startswith(f"refitted 11 scorer(s) on {n} lesions ({result.n_tp} TP, ")
    assert f"Default P(FP) method: {result.reason} Use it with" in text
    assert f"lesionuq predict --model {out}" in text
    # 2 scans: fewer than the shift warning's prediction interval needs, and it says so
    assert len(result.cases) == 2
    assert text.endswith("will also warn on some scans like them.")
    assert "these 2 scans' range (a prediction interval needs 5)" in text
    monkeypatch.undo()
    one = tmp_path / "one.csv"
    write_manifest(one, read_manifest(manifest)[:1])
    bad = CliRunner().invoke(
        app,
        [
            "refit",
            "--model",
            str(run / "fold_0"),
            "--cases",
            str(one),
            "--out",
            str(tmp_path / "m"),
        ],
    )
    assert bad.exit_code != 0 and "at least 2" in " ".join(bad.output.split())


def test_location_reading_scorers_are_refitted_on_located_lesions(tmp_path, monkeypatch):
    """A folder with a location-reading scorer (``metaseg_loc``): each labelled scan is
    registered once (through ``infer``; an identity registration here), its lesions carry
    their locations, and the refitted ``metaseg_loc`` is fitted on them."""
    import nibabel as nib

    import lesionuq.location as location
    from lesionuq.config import GraphConfig
    from lesionuq.io import Case
    from lesionuq.location.features import location_features
    from lesionuq.scorers import make_scorer
    from test_located import _located_set
    from test_location_batch import identity
    from test_predict import CFG, LESION_RADIUS, LESIONS, brain_scan, make_model_dir

    calls: list[int] = []

    def counted(*args, **kwargs):
        calls.append(1)
        return identity(*args, **kwargs)

    monkeypatch.setattr("lesionuq.location.features.register_to_template", counted)
    monkeypatch.setattr(location, "register_to_template", counted)
    cfg = CFG.replace(graphs=GraphConfig(location=True))
    folder = make_model_dir(tmp_path / "fold_0")
    cfg.to_yaml(folder / "config.yaml")
    make_scorer("metaseg_loc", cfg).fit(_located_set(40, 0)).save(folder / "scorers/metaseg_loc")
    cases = []
    for i, shift in enumerate((0.0, 2.0)):  # two scans, the second moved 2 mm
        affine = np.diag([1.5, 1.5, 1.5, 1.0])
        affine[:3, 3] = [-30.0 + shift, -42.0, -16.0]
        shape = (42, 42, 34)
        nib.save(brain_scan(affine, shape), str(tmp_path / f"s{i}.nii.gz"))
        ijk = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
        xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
        mask = np.zeros(shape, np.uint8)
        for c in LESIONS[:2]:  # the third bright sphere is not a lesion: an FP
            mask[np.linalg.norm(xyz - c, axis=-1) <= LESION_RADIUS] = 1
        nib.save(nib.Nifti1Image(mask, affine), str(tmp_path / f"m{i}.nii.gz"))
        cases.append(Case(f"s{i}", (tmp_path / f"s{i}.nii.gz",), tmp_path / f"m{i}.nii.gz"))
    write_manifest(tmp_path / "cases.csv", cases)
    result = refit_model(folder, tmp_path / "cases.csv", tmp_path / "model", progress=False)
    assert len(calls) == 2  # one registration per scan
    assert result.methods == ["entropy_mean", "gcnn_classif", "gcnn_reg", "metaseg_loc"]
    assert result.n_tp > 0 and result.n_fp > 0
    table = LesionSet.load(tmp_path / "model/graphs/val").table
    assert set(table["location"]) <= {"periventricular", "juxtacortical", "infratentorial", "deep"}
    assert np.isfinite(table[["mni_x_mm", "mni_y_mm", "mni_z_mm"]].to_numpy()).all()
    refitted = load_model(tmp_path / "model").scorers["metaseg_loc"]
    # fitted on these lesions, with their location features (a model fitted on others
    # scores them differently)
    val = LesionSet.load(tmp_path / "model/graphs/val")
    assert location_features(val.table, "metaseg_loc").shape[0] == len(val)
    again = make_scorer("metaseg_loc", cfg).fit(val)
    np.testing.assert_allclose(refitted.score(val), again.score(val))
    source = load_model(folder).scorers["metaseg_loc"]
    assert not np.allclose(source.score(val), refitted.score(val))
