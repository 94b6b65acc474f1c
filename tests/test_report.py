"""Figure 2 and the HTML report on a tiny fake run directory (2 folds x 2 cases, 16^3)."""

from __future__ import annotations

import base64
import json
import re

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from lesionuq.config import METHODS, ExperimentConfig
from lesionuq.evaluation.figures import mean_curve, plot_accuracy_confidence
from lesionuq.evaluation.metrics import table1, table2
from lesionuq.evaluation.render import render_lesion_crop
from lesionuq.evaluation.report import write_report
from lesionuq.evaluation.report_sections import validation_summary
from lesionuq.operating_point import FEW_VALIDATION_LESIONS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# lesion cubes per case: (corner, side); label = position + 1
CUBES = [((2, 2, 3), 3), ((9, 8, 6), 2), ((5, 11, 10), 4)]


def make_fake_run(root, seed=0, with_images=True):
    rng = np.random.default_rng(seed)
    rows, cases = [], []
    for fold in (0, 1):
        for c in range(2):
            case = f"case{fold}{c}"
            d = root / f"fold_{fold}" / "test" / case
            d.mkdir(parents=True)
            labels = np.zeros((16, 16, 16), np.int32)
            for k, ((x, y, z), s) in enumerate(CUBES):
                labels[x : x + s, y : y + s, z : z + s] = k + 1
            image = rng.normal(size=labels.shape).astype(np.float32) + 3.0 * (labels > 0)
            gt = np.zeros(labels.shape, np.uint8)
            gt[2:5, 2:5, 3:6] = 1  # lesion 1 is a TP, the others FP
            if with_images:
                nib.save(nib.Nifti1Image(image, np.eye(4)), d / "image.nii.gz")
            nib.save(nib.Nifti1Image(labels, np.eye(4)), d / "lesions.nii.gz")
            nib.save(nib.Nifti1Image(gt, np.eye(4)), d / "gt.nii.gz")
            for k, (_, s) in enumerate(CUBES):
                rows.append(
                    {
                        "fold": fold,
                        "case_id": case,
                        "lesion_id": k + 1,
                        "n_voxels": s**3,
                        "iou_adj": 1.0 if k == 0 else 0.0,
                        "is_tp": k == 0,
                    }
                )
            cases.append(
                {"fold": fold, "case_id": case, "dice": 0.5 + 0.1 * c, "n_tp": 1, "n_fp": 2}
            )
    lesions = pd.DataFrame(rows)
    for m in METHODS:
        lesions[m] = rng.random(len(lesions))
    lesions["size"] = 1.0 / lesions["n_voxels"]
    lesions["gcnn_classif"] = np.where(lesions["is_tp"], 0.1, 0.8) + 0.01 * lesions["lesion_id"]
    res = root / "results"
    res.mkdir()
    lesions.to_csv(res / "lesions.csv", index=False)
    table1(pd.DataFrame(cases)).to_csv(res / "table1.csv", index=False)
    t2, per_fold = table2(lesions, METHODS)
    t2.to_csv(res / "table2.csv", index=False)
    per_fold.to_csv(res / "table2_folds.csv", index=False)
    ExperimentConfig().to_yaml(root / "config.yaml")
    plot_accuracy_confidence(lesions, METHODS, res / "figure2.png", grid_size=51, dpi=60)
    return lesions


def test_mean_curve_area_matches_mean_auc():
    grid = np.linspace(0, 1, 1001)
    frame = pd.DataFrame(
        {
            "fold": [0] * 5 + [1] * 4,
            "is_tp": [False, True, False, True, True, False, True, True, True],
            "a": [0.9, 0.7, 0.7, 0.4, 0.1, 0.8, 0.9, 0.2, 0.1],
        }
    )
    tp, auc, n = mean_curve(frame, "a", grid)
    assert n == 2
    assert auc == pytest.approx((11 / 12 + 2 / 3) / 2)
    area = np.sum(np.diff(grid) * (tp[1:] + tp[:-1]) / 2)
    assert area == pytest.approx(auc, abs=2e-3)


def test_render_lesion_crop_is_png():
    labels = np.zeros((16, 16, 16), np.int32)
    labels[6:9, 6:9, 4:6] = 3
    png = render_lesion_crop(np.ones(labels.shape), labels, 3, gt=labels > 0, dpi=30)
    assert png.startswith(PNG_MAGIC)
    with pytest.raises(ValueError, match="lesion 4"):
        render_lesion_crop(np.ones(labels.shape), labels, 4)


@pytest.fixture
def no_bundle(monkeypatch, tmp_path):
    """The NiiVue bundle absent, whether or not ``make viewer-bundle`` ran here."""
    import lesionuq.export.viewer as viewer

    monkeypatch.setattr(viewer, "_VENDOR", tmp_path / "absent" / "niivue.umd.js")


def test_write_report_self_contained(tmp_path, no_bundle):
    from lesionuq.export.viewer import NO_VIEWER_NOTE

    run = tmp_path / "run"
    make_fake_run(run)
    assert (run / "results/figure2.png").read_bytes().startswith(PNG_MAGIC)
    path = write_report(run, n_gallery=2)
    assert path == run / "results/report.html"
    text = path.read_text()
    assert "Table 1" in text and "Table 2" in text and "Figure 2" in text
    # the run named by its folder and the parent's: "run" alone says nothing
    assert f"results of run {tmp_path.name}/run</h1>" in text
    # Table 1 fold rows (Dice mean of 0.5 and 0.6, 2 x 1 TP, 2 x 2 FP)
    assert "<td>0</td><td>0.550</td><td>2</td><td>4</td>" in text
    # Table 2: gcnn_classif separates TP from FP perfectly: 100.0 % in bold, size rho -1
    assert "<td>GCNN classif</td><td><b>100.0</b></td>" in text
    assert re.search(r"<td>Size</td><td>[\d.]+</td><td>-1.00</td>", text)
    # per-fold AUC columns, from table2_folds.csv
    assert "<th>AUC fold 0</th><th>AUC fold 1</th>" in text
    assert re.search(r"<td>GCNN classif</td>(<td>.*?</td>){2}<td><b>100.0</b></td>", text)
    # figure + 2 most + 2 least uncertain lesion crops, all valid base64 PNG
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(images) == 5
    assert all(base64.b64decode(b).startswith(PNG_MAGIC) for b in images)
    assert text.count('<div class="tile">') == 4
    assert text.count(">FP</span>") == 2 and text.count(">TP</span>") == 2
    assert "P(FP) = <b>0.83</b>" in text  # the most uncertain: an FP lesion 3
    # self-contained: no external reference of any kind
    assert "http" not in text and "<link" not in text and "<script" not in text
    assert not re.search(r'(src|href)="(?!data:)', text)
    # the config is shown, collapsed
    assert "<details>" in text and "n_samples" in text
    assert "at least 0.1, a" in text  # the TP threshold, read from config.yaml
    assert text.count(NO_VIEWER_NOTE) == 1  # no viewer bundle: says how to get it


def test_gallery_viewer_for_the_top_case_with_bundle_once(tmp_path, monkeypatch):
    import lesionuq.export.viewer as viewer

    bundle = tmp_path / "niivue.umd.js"
    bundle.write_text("/* FAKE-NIIVUE */ var niivue = {};")
    monkeypatch.setattr(viewer, "_VENDOR", bundle)
    run = tmp_path / "run"
    make_fake_run(run)
    text = write_report(run, n_gallery=2).read_text()
    assert text.count("FAKE-NIIVUE") == 1 and viewer.NO_VIEWER_NOTE not in text
    assert text.count('<canvas id="gallery-viewer-canvas"') == 1
    # the most uncertain lesion (gcnn_classif 0.83) is lesion 3 of fold 0, case00
    assert "Viewer: fold 0, case case00" in text
    data = re.search(r'id="gallery-viewer-data">(.*?)</script>', text).group(1)
    centroids = json.loads(data)["centroids"]
    # cube of lesion 3: corner (5, 11, 10), side 4 -> centre (6.5, 12.5, 11.5) (identity affine)
    assert centroids["3"] == [6.5, 12.5, 11.5]
    rows = re.findall(r'<tr data-lesion="(\d)"', text)
    assert rows == ["3", "2", "1"]  # by P(FP), most doubtful first
    assert text.count(">review</td>") == 2 and text.count(">kept</td>") == 1  # FP, FP, TP


def test_write_report_without_images(tmp_path, no_bundle):
    run = tmp_path / "run"
    make_fake_run(run, with_images=False)
    (run / "results/table1.csv").unlink()
    text = write_report(run, method="size", n_gallery=1).read_text()
    assert "not available" in text and "table1.csv" in text
    assert "<td>Size</td>" in text and "uncertainty = <b>" in text


def _val_table(run, fold, cases, is_tp):
    folder = run / f"fold_{fold}/graphs/val"
    folder.mkdir(parents=True)
    pd.DataFrame({"case_id": cases, "lesion_id": range(len(cases)), "is_tp": is_tp}).to_csv(
        folder / "lesions.csv", index=False
    )


def test_validation_summary_counts_scans_and_classes_and_warns_when_small(tmp_path, no_bundle):
    run = tmp_path / "run"
    make_fake_run(run, with_images=False)
    assert validation_summary(run) is None
    text = write_report(run, n_gallery=1).read_text()
    assert "What the learned scorers were trained on" not in text  # nothing to say
    _val_table(run, 1, ["a", "a", "b"], [True, False, True])
    n = FEW_VALIDATION_LESIONS
    _val_table(run, 0, [f"c{i % 4}" for i in range(n)], [i % 5 > 0 for i in range(n)])
    summary = validation_summary(run)
    assert summary.values.tolist() == [[0, 4, n, n - n // 5, n // 5], [1, 2, 3, 2, 1]]
    text = write_report(run, n_gallery=1).read_text()
    assert "<tr><td>1</td><td>2</td><td>3</td><td>2</td><td>1</td></tr>" in text
    assert "as few as 3 validation lesions (fewest scans in a fold: 2)" in text
    # enough lesions and scans in every fold: no warning
    (run / "fold_1/graphs/val/lesions.csv").unlink()
    text = write_report(run, n_gallery=1).read_text()
    assert "What the learned scorers were trained on" in text and "as few as" not in text


def test_report_reads_per_fold_aucs_from_the_results(tmp_path, no_bundle):
    """The fold columns of Table 2 are table2_folds.csv as written, not recomputed."""
    run = tmp_path / "run"
    make_fake_run(run, with_images=False)
    folds = pd.read_csv(run / "results/table2_folds.csv")
    folds.loc[(folds.method == "size") & (folds.fold == 1), "auc"] = 0.123
    folds.to_csv(run / "results/table2_folds.csv", index=False)
    text = write_report(run, n_gallery=1).read_text()
    assert re.search(r"<td>Size</td>.*<td>12.3</td></tr>", text)
    (run / "results/table2_folds.csv").unlink()
    text = write_report(run, n_gallery=1).read_text()
    assert "Table 2" in text and "AUC fold" not in text


def test_old_report_names_are_aliases():
    from lesionuq.evaluation import figures, render, report, report_sections

    assert report.mean_curve is figures.mean_curve
    assert report.plot_accuracy_confidence is figures.plot_accuracy_confidence
    assert report.render_lesion_crop is render.render_lesion_crop
    assert report.validation_summary is report_sections.validation_summary
