"""Ignore regions (issue 29.1): voxels that count neither as lesion nor as background.

The WMH 2017 challenge's ``evaluation.py`` (hjkuijf/wmhchallenge) removes label-2 voxels
("other pathology") from every metric; lesionuq carries such a region as a case's
``ignore`` mask. Everything here is hand-checkable on a 13 x 1 x 1 strip of voxels:

    x:         0  1  2  3  4  5  6  7  8  9 10 11 12
    lesion A:  A  A  A  A                               4 voxels, 2 of them (x = 2, 3) ignored
    lesion B:                 B  B  B                   3 voxels, all ignored
    lesion C:                          C  C             2 voxels, no ground truth
    ignore I:        I  I     I  I  I
    gt G:      G  G                                     2 voxels (A's half outside I)

One background voxel (x = 4, 8) separates the lesions, so they are three components.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lesionuq.config import GraphConfig
from lesionuq.evaluation.metrics import dice
from lesionuq.lesions.components import ignored_lesions, label_lesions, lesion_table
from lesionuq.segmentation.train import IGNORE_LABEL, mask_ignored
from lesionuq.uncertainty import VoxelMaps


def _strip(xs: list[int], n: int = 13) -> np.ndarray:
    a = np.zeros((n, 1, 1), np.uint8)
    a[xs, 0, 0] = 1
    return a


SEG = _strip([0, 1, 2, 3, 5, 6, 7, 9, 10])
IGNORE = _strip([2, 3, 5, 6, 7])
GT = _strip([0, 1])


def _thick(strip: np.ndarray) -> np.ndarray:
    """The (13, 1, 1) strip repeated over a (13, 3, 3) volume (each x holds 9 voxels)."""
    return np.repeat(np.repeat(strip, 3, axis=1), 3, axis=2)


def _maps(shape: tuple[int, ...]) -> VoxelMaps:
    z = np.zeros(shape, np.float32)
    return VoxelMaps(prob=z, entropy=z + 0.5, variance=z + 0.1, pcs=z + 0.9)


def test_half_inside_kept_wholly_inside_ignored_outside_kept():
    labels, n = label_lesions(SEG)
    assert n == 3
    # A: 2 of 4 voxels inside (exactly half, not more) -> kept; B: 3 of 3 -> ignored
    assert ignored_lesions(labels, n, IGNORE).tolist() == [False, True, False]
    cfg = GraphConfig(epsilon=0.1)
    t = lesion_table(labels, n, _maps(SEG.shape), GT, np.eye(4), cfg, "c", ignore=IGNORE)
    # A: 2 voxels left outside I, all in G, G has 2 voxels -> IoU_adj = 2 / 2 = 1
    assert t["iou_adj"].iloc[0] == 1.0
    assert np.isnan(t["iou_adj"].iloc[1])  # B: in the ignore region, no IoU
    assert t["iou_adj"].iloc[2] == 0.0  # C: no ground truth -> FP
    assert t["is_tp"].tolist() == [True, False, False]
    assert t["in_ignore"].tolist() == [False, True, False]
    # without the region: A's IoU_adj is 2 / 4 and B is a false positive
    t0 = lesion_table(labels, n, _maps(SEG.shape), GT, np.eye(4), cfg, "c")
    assert t0["iou_adj"].tolist() == [0.5, 0.0, 0.0]
    assert t0["in_ignore"].tolist() == [False, False, False]


def test_more_than_half_inside_is_ignored():
    labels, n = label_lesions(_strip([0, 1, 2]))
    assert ignored_lesions(labels, n, _strip([1, 2])).tolist() == [True]  # 2 of 3 > 1/2
    assert ignored_lesions(labels, n, _strip([2])).tolist() == [False]  # 1 of 3


def test_dice_leaves_the_ignore_region_out():
    # without: P = 9 voxels, G = 2, P & G = 2 -> 2*2 / 11
    assert dice(SEG, GT) == pytest.approx(4 / 11)
    # with: P = 4 (A's 2 outside + C's 2), G = 2, P & G = 2 -> 2*2 / 6
    assert dice(SEG, GT, IGNORE) == pytest.approx(4 / 6)


def test_ignored_voxels_give_no_gradient():
    from monai.losses import DiceCELoss

    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)
    logits = torch.randn(1, 2, 4, 1, 1, requires_grad=True)
    labels = torch.tensor([0.0, 1.0, IGNORE_LABEL, IGNORE_LABEL]).view(1, 1, 4, 1, 1)
    masked, target = mask_ignored(logits, labels)
    assert target.view(-1).tolist() == [0.0, 1.0, 0.0, 0.0]
    loss_fn(masked, target).backward()
    grad = logits.grad.abs().sum(dim=1).view(-1)
    assert grad[0] > 0 and grad[1] > 0  # voxels 0, 1 are learned
    assert grad[2] == 0 and grad[3] == 0  # voxels 2, 3: masked from the loss
    # no ignored voxel: unchanged
    plain = torch.zeros(1, 1, 4, 1, 1)
    assert mask_ignored(logits, plain)[0] is logits


def test_run_graphs_leave_ignored_lesions_out(tmp_path):
    """The experiment's lesion stage on the strip: B is neither TP nor FP, Dice skips I."""
    from lesionuq.config import ExperimentConfig
    from lesionuq.io import save_nifti
    from lesionuq.pipeline.graphs import _graphs_case, _GraphsJob
    from lesionuq.pipeline.train import _pair

    def vol(strip: np.ndarray) -> np.ndarray:
        out = np.zeros((13, 3, 3), np.float32)
        out[:, 1, 1] = strip[:, 0, 0]
        return out

    run = tmp_path / "run"
    pre = run / "preprocessed" / "c"
    save_nifti(pre / "flair.nii.gz", vol(SEG) + 1.0, np.eye(4))
    save_nifti(pre / "mask.nii.gz", vol(GT).astype(np.uint8), np.eye(4))
    save_nifti(pre / "ignore.nii.gz", vol(IGNORE).astype(np.uint8), np.eye(4))
    case_dir = run / "fold_0" / "test" / "c"
    maps = {"prob": vol(SEG) * 0.9, "entropy": vol(SEG) * 0.3}
    maps |= {"variance": vol(SEG) * 0.01, "pcs": vol(SEG) * 0.8}
    for name, data in maps.items():
        save_nifti(case_dir / f"{name}.nii.gz", data, np.eye(4))
    cfg = ExperimentConfig()
    lesions, row = _graphs_case(_GraphsJob(run, "c", case_dir, cfg))
    assert lesions.table["lesion_id"].tolist() == [1, 3]  # B (lesion 2) left out
    assert lesions.table["is_tp"].tolist() == [True, False]
    assert len(lesions.graphs) == 2
    assert row["n_tp"] == 1 and row["n_fp"] == 1 and row["n_ignored"] == 1
    assert row["dice"] == pytest.approx(4 / 6)
    # training masks carry the region as IGNORE_LABEL (masked from the loss)
    _, mask = _pair(run, "c", cfg)
    assert mask[:, 1, 1].tolist() == [1, 1, 2, 2, 0, 2, 2, 2, 0, 0, 0, 0, 0]


@pytest.mark.filterwarnings("ignore::lesionuq.errors.InputWarning")  # the image is all brain
def test_preprocessing_carries_the_ignore_column(tmp_path):
    """cases.csv ``ignore`` -> ``RUN/preprocessed/CASE/ignore.nii.gz`` on the mask's grid;
    a non-binary region is refused in one sentence when the run is validated."""
    import dataclasses

    import nibabel as nib

    from lesionuq.config import ExperimentConfig, PreprocessConfig
    from lesionuq.io import InputError, read_manifest
    from lesionuq.pipeline.experiment import validate_run
    from lesionuq.pipeline.preprocess import _preprocess_case, _PreprocessJob

    data = tmp_path / "data"
    data.mkdir()
    flair = np.full((13, 3, 3), 1.0, np.float32)
    lines = ["case_id,flair,mask,ignore"]
    for i in range(4):  # the default config's folds need a few cases
        nib.save(nib.Nifti1Image(flair, np.eye(4)), str(data / f"f{i}.nii.gz"))
        nib.save(
            nib.Nifti1Image(_thick(GT), np.eye(4)),
            str(data / f"m{i}.nii.gz"),
        )
        nib.save(
            nib.Nifti1Image(_thick(IGNORE), np.eye(4)),
            str(data / f"i{i}.nii.gz"),
        )
        lines.append(
            f"c{i},f{i}.nii.gz,m{i}.nii.gz,i{i}.nii.gz" if i else f"c{i},f{i}.nii.gz,m{i}.nii.gz,"
        )
    (data / "cases.csv").write_text("\n".join(lines) + "\n")
    cfg = dataclasses.replace(
        ExperimentConfig(), preprocess=PreprocessConfig(spacing=(1.0, 1.0, 1.0), shape=(13, 3, 3))
    )
    cases = read_manifest(data / "cases.csv", cfg.sequences)
    assert cases[0].ignore is None and cases[1].ignore == data / "i1.nii.gz"
    folder = tmp_path / "pre" / "c1"
    _preprocess_case(_PreprocessJob(cases[1], folder, "d", cfg))
    region = np.asarray(nib.load(str(folder / "ignore.nii.gz")).dataobj)
    assert region[:, 1, 1].tolist() == IGNORE[:, 0, 0].tolist()
    assert not (tmp_path / "pre" / "c0").exists()
    # a region with a value other than 0/1 stops the run before any work
    bad = _thick(IGNORE).astype(np.float32) * 2
    nib.save(nib.Nifti1Image(bad, np.eye(4)), str(data / "i2.nii.gz"))
    with pytest.raises(InputError, match=r"i2.nii.gz: the mask is not binary"):
        validate_run(data / "cases.csv", tmp_path / "run", cfg)
    assert not (tmp_path / "run").exists()


def test_detection_metrics_leave_the_ignore_region_out(tmp_path):
    """Lesion-level detection (WMH challenge style): pred and gt are masked by ~I first."""
    from lesionuq.io import save_nifti
    from lesionuq.pipeline.evaluate import detection_cases
    from lesionuq.rundir import FoldSplit

    run = tmp_path / "run"
    case_dir = run / "fold_0" / "test" / "c"
    save_nifti(case_dir / "prob.nii.gz", SEG.astype(np.float32) * 0.9, np.eye(4))
    save_nifti(case_dir / "gt.nii.gz", GT, np.eye(4))
    split = FoldSplit(fold=0, train=(), val=(), test=("c",))
    before = detection_cases(run, split).iloc[0]
    assert (before["n_pred"], before["overlap_tp"], before["overlap_fp"]) == (3, 1, 2)
    save_nifti(run / "preprocessed" / "c" / "ignore.nii.gz", IGNORE, np.eye(4))
    after = detection_cases(run, split).iloc[0]
    # B vanishes (wholly inside I); A keeps its 2 voxels outside I and matches G; C is FP
    assert (after["n_pred"], after["overlap_tp"], after["overlap_fp"]) == (2, 1, 1)
