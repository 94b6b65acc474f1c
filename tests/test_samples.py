"""The samples protocol: scorers on top of a segmenter the user already has (issue 27)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml

from lesionuq.io import InputError, read_manifest, write_manifest
from lesionuq.rundir import RunDir

MAPS = ("prob", "seg", "entropy", "variance", "pcs", "image", "gt", "lesions")
#: The scorers predict needs and two baselines: enough for every seam, fitted quickly.
METHODS = ("gcnn_classif", "gcnn_reg", "entropy_mean", "size")
# the module's run (and, when first, the session's tiny U-Net run) is built in the first test
pytestmark = pytest.mark.timeout(900)


def _stack(run: Path, fold: int, case_id: str, cfg) -> tuple[np.ndarray, np.ndarray]:
    """The MC-dropout samples of fold ``fold``'s U-Net for a case: (X, Y, Z, T), affine."""
    from lesionuq.pipeline.stages import load_preprocessed
    from lesionuq.segmentation.sampling import mc_samples
    from lesionuq.segmentation.train import load_segmenter

    model = load_segmenter(RunDir(run).fold(fold) / "segmenter.pt", device="cpu")
    image, _, affine = load_preprocessed(run, case_id, cfg.sequences)
    parts = [p.cpu().numpy() for p in mc_samples(model, image, cfg.sampling, device="cpu")]
    return np.moveaxis(np.concatenate(parts), 0, -1).astype(np.float32), affine


@pytest.fixture(scope="module")
def samples_run(tiny_run, tmp_path_factory):
    """The tiny U-Net run's own MC samples as stacks -> a samples-protocol run.

    Each case's stack comes from the U-Net of the fold where it is a test case, on the
    run's preprocessed grid.
    """
    from helpers import TINY
    from lesionuq.pipeline.experiment import run_experiment

    root, csv, _ = tiny_run
    unet_run = root / "run"
    base = tmp_path_factory.mktemp("samples")
    cfg, _, splits = RunDir(unet_run).read_plan()
    stacks = base / "stacks"
    stacks.mkdir()
    for split in splits:
        for c in split.test:
            data, affine = _stack(unet_run, split.fold, c, cfg)
            nib.save(nib.Nifti1Image(data, affine), stacks / f"{c}.nii.gz")
    cases = [replace(c, samples=stacks / f"{c.case_id}.nii.gz") for c in read_manifest(csv)]
    manifest = base / "cases_samples.csv"
    write_manifest(manifest, cases)
    result = run_experiment(manifest, base / "run", TINY.replace(methods=METHODS), progress=False)
    return unet_run, base / "run", manifest, result


def test_fold_scorers_never_fit_on_a_test_case(samples_run):
    from lesionuq.lesions.dataset import load_lesion_set

    unet_run, run, manifest, _ = samples_run
    _, _, unet_splits = RunDir(unet_run).read_plan()
    cfg, _, splits = RunDir(run).read_plan()
    ids = {c.case_id for c in read_manifest(manifest)}
    assert cfg.protocol == "samples"
    for split, unet_split in zip(splits, unet_splits, strict=True):
        assert split.test == unet_split.test  # the same test cases as the U-Net protocol
        assert split.train == ()
        assert set(split.val) == ids - set(split.test)  # every other case
        val = load_lesion_set(RunDir(run).lesion_set(split.fold, "val"))
        seen = set(val.table["case_id"].astype(str))
        assert seen and seen <= set(split.val) and not seen & set(split.test)
        fold = RunDir(run).fold(split.fold)
        assert not (fold / "segmenter.pt").exists()
        assert (fold / "scorers" / "gcnn_classif" / "scorer.json").is_file()


def test_own_mc_samples_give_byte_identical_maps(samples_run):
    unet_run, run, _, _ = samples_run
    _, _, splits = RunDir(run).read_plan()
    for split in splits:
        for c in split.test:
            for name in MAPS:
                a = nib.load(RunDir(unet_run).case_dir(split.fold, "test", c) / f"{name}.nii.gz")
                b = nib.load(RunDir(run).case_dir(split.fold, "test", c) / f"{name}.nii.gz")
                assert np.asarray(a.dataobj).tobytes() == np.asarray(b.dataobj).tobytes(), name
                assert np.array_equal(a.affine, b.affine)
        # the test lesions (IoU_adj, TP/FP) are the same
        t_a = pd.read_csv(RunDir(unet_run).lesion_set(split.fold, "test") / "cases.csv")
        t_b = pd.read_csv(RunDir(run).lesion_set(split.fold, "test") / "cases.csv")
        pd.testing.assert_frame_equal(t_a, t_b)


def test_run_records_protocol_and_samples(samples_run):
    _, run, _, result = samples_run
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["protocol"] == "samples"
    assert cfg["samples_source"] == "the samples column of cases_samples.csv"
    table = pd.read_csv(run / "samples.csv")
    assert sorted(table["n_samples"]) == [3] * 6  # T = 3 for each of the 6 cases
    html = result.report.read_text()
    assert "Scorer-only (samples) protocol" in html and "cases_samples.csv" in html
    assert list(result.table2["method"])  # Table 2 as usual


def test_predict_with_own_samples_matches_the_unet(samples_run, tmp_path):
    """U-Net path vs the same MC samples as a stack: the same lesions.csv, byte for byte.

    The stack is made from predict's own preprocessing of the scan (a C-ordered array:
    with bfloat16 sampling on a CPU with native bf16, the U-Net's rounding depends on
    the input's memory layout, and the run's preprocessed NIfTI is read F-ordered).
    """
    from lesionuq.data.preprocess import preprocess
    from lesionuq.io import Case, load_case
    from lesionuq.predict import load_model, predict_scan
    from lesionuq.samples import save_sample_stack
    from lesionuq.segmentation.sampling import mc_samples

    unet_run, _run, manifest, _ = samples_run
    _, _, splits = RunDir(unet_run).read_plan()
    case = {c.case_id: c for c in read_manifest(manifest)}[splits[0].test[0]]
    model = load_model(RunDir(unet_run).fold(0))
    pre = preprocess(load_case(Case(case.case_id, case.images))[0], None, model.cfg.preprocess)
    parts = mc_samples(model.segmenter, pre.image, model.cfg.sampling, device=model.device)
    save_sample_stack(
        tmp_path / "stack.nii.gz", np.concatenate([p.cpu().numpy() for p in parts]), pre.affine
    )
    a = predict_scan(model, case.images, tmp_path / "a", progress=False)
    b = predict_scan(
        model, case.images, tmp_path / "b", progress=False, samples=tmp_path / "stack.nii.gz"
    )
    assert a.n_lesions > 0
    assert (tmp_path / "a" / "lesions.csv").read_bytes() == (
        tmp_path / "b" / "lesions.csv"
    ).read_bytes()
    meta = json.loads((tmp_path / "b" / "prediction.json").read_text())
    assert meta["segmentation_from"] == "samples" and meta["samples"]["n_samples"] == 3
    assert any("not from the model's U-Net" in w for w in b.warnings)
    assert not any("not from the model's U-Net" in w for w in a.warnings)
    # the tiny U-Net did not learn: said where it segmented, not where samples were given
    assert model.training is not None
    assert any("did not learn" in w for w in a.warnings)
    assert not any("did not learn" in w for w in b.warnings)


def test_model_without_unet_needs_samples(samples_run, tmp_path):
    from lesionuq.predict import predict_scan

    _, run, manifest, _ = samples_run
    case = read_manifest(manifest)[0]
    with pytest.raises(InputError, match=r"has no U-Net .* --samples STACK"):
        predict_scan(run / "fold_0", case.images, tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()
    res = predict_scan(
        run / "fold_0", case.images, tmp_path / "y", progress=False, samples=case.samples
    )
    meta = json.loads((tmp_path / "y" / "prediction.json").read_text())
    assert meta["segmentation_from"] == "samples"
    assert not any("U-Net" in w for w in res.warnings)  # nothing was overridden


def test_predict_manifest_reads_the_samples_column(samples_run, tmp_path):
    from lesionuq.predict import predict_manifest

    _, run, manifest, _ = samples_run
    cases = read_manifest(manifest)[:2]
    small = tmp_path / "two.csv"
    write_manifest(small, cases)
    batch = predict_manifest(run / "fold_0", small, tmp_path / "out", progress=False)
    assert sorted(batch.results) == sorted(c.case_id for c in cases)
    write_manifest(small, [replace(cases[0], samples=None), cases[1]])
    with pytest.raises(InputError, match=r"has no samples path but .* has no U-Net"):
        predict_manifest(run / "fold_0", small, tmp_path / "out2", progress=False)


# ------------------------------------------------------------------------- bad input


@pytest.fixture
def bad_data(samples_run, tmp_path):
    """A copy of the samples manifest's first 4 cases to spoil one at a time."""
    _, _, manifest, _ = samples_run
    cases = read_manifest(manifest)[:4]
    return cases, tmp_path


def _expect_refused(cases, tmp_path, match):
    from helpers import TINY
    from lesionuq.pipeline.experiment import run_experiment

    csv = tmp_path / "cases.csv"
    write_manifest(csv, cases)
    with pytest.raises(InputError, match=match):
        run_experiment(csv, tmp_path / "run", TINY.replace(folds=2), progress=False)
    assert not (tmp_path / "run").exists()  # nothing written


def _spoil(case, tmp_path, data=None, affine=None):
    img = nib.load(case.samples)
    arr = np.asarray(img.dataobj) if data is None else data(np.asarray(img.dataobj))
    path = tmp_path / f"{case.case_id}_bad.nii.gz"
    nib.save(nib.Nifti1Image(arr, img.affine if affine is None else affine), path)
    return replace(case, samples=path)


def test_mixed_manifest_refused(bad_data):
    cases, tmp = bad_data
    cases[1] = replace(cases[1], samples=None)
    _expect_refused(
        cases, tmp, rf"3 of 4 cases have a samples path but 1 \(e.g. '{cases[1].case_id}'\)"
    )


def test_missing_samples_file_refused(bad_data):
    cases, tmp = bad_data
    cases[2] = replace(cases[2], samples=tmp / "nowhere.nii.gz")
    _expect_refused(cases, tmp, rf"case '{cases[2].case_id}': .*nowhere.nii.gz: file not found")


def test_values_outside_unit_interval_refused(bad_data):
    cases, tmp = bad_data
    cases[0] = _spoil(cases[0], tmp, data=lambda a: a * 3.0 + 0.5)
    _expect_refused(cases, tmp, rf"case '{cases[0].case_id}': .*_bad.nii.gz \(sample 0\): values")


def test_swapped_axes_refused(bad_data):
    cases, tmp = bad_data
    cases[0] = _spoil(cases[0], tmp, data=lambda a: np.ascontiguousarray(np.swapaxes(a, 0, 1)))
    _expect_refused(cases, tmp, rf"case '{cases[0].case_id}': .*_bad.nii.gz: .*outside the samples")


def test_other_field_of_view_refused(bad_data):
    cases, tmp = bad_data
    moved = nib.load(cases[3].samples).affine.copy()
    moved[:3, 3] += 100.0  # 100 mm away
    cases[3] = _spoil(cases[3], tmp, affine=moved)
    _expect_refused(cases, tmp, rf"case '{cases[3].case_id}': .*% of the brain .* outside")


def test_one_sample_warns_and_t_may_differ(bad_data):
    from lesionuq.samples import load_samples_case

    cases, tmp = bad_data
    one = _spoil(cases[0], tmp, data=lambda a: a[..., :1])
    with pytest.warns(UserWarning, match=r"one sample \(T = 1\).*variance map is zero"):
        _, _, info = load_samples_case(one, 0.0)
    assert info.n_samples == 1
    two = _spoil(cases[1], tmp, data=lambda a: a[..., :2])
    assert load_samples_case(two, 0.0)[2].n_samples == 2


def test_mask_on_the_samples_grid(bad_data):
    """A mask on the samples' grid is accepted; elsewhere refused with one sentence."""
    from lesionuq.samples import load_samples_case

    cases, tmp = bad_data
    img = nib.load(cases[0].samples)
    on_samples = tmp / "mask_samples.nii.gz"
    nib.save(
        nib.Nifti1Image((np.asarray(img.dataobj)[..., 0] > 0.5).astype(np.uint8), img.affine),
        on_samples,
    )
    load_samples_case(replace(cases[0], mask=on_samples), 0.0)
    odd = tmp / "mask_odd.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((5, 5, 5), np.uint8), np.eye(4)), odd)
    with pytest.raises(InputError, match=r"mask_odd.nii.gz: the mask is neither on the grid"):
        load_samples_case(replace(cases[0], mask=odd), 0.0)


def test_train_refused_on_a_samples_run(samples_run, tmp_path):
    from lesionuq.pipeline.train import train_run

    _, run, _, _ = samples_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    with pytest.raises(InputError, match="there is no U-Net to train"):
        train_run(copy, progress=False)


def test_cli_predict_with_samples(samples_run, tmp_path):
    from typer.testing import CliRunner

    from lesionuq.cli import app

    _, run, manifest, _ = samples_run
    case = read_manifest(manifest)[0]
    args = ["predict", "--model", str(run / "fold_0"), "--image", str(case.images[0])]
    res = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "x")])
    text = " ".join(res.output.split())
    assert res.exit_code == 1 and "has no U-Net" in text and "--samples STACK" in text
    res = CliRunner().invoke(
        app, [*args, "--samples", str(case.samples), "--out", str(tmp_path / "y"), "--quiet"]
    )
    assert res.exit_code == 0, res.output
    table = pd.read_csv(tmp_path / "y" / "lesions.csv")
    assert {"p_fp", "review"} <= set(table.columns)
    assert nib.load(tmp_path / "y" / "lesions.nii.gz").shape == nib.load(case.images[0]).shape
