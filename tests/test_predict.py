"""predict: a new scan in its own space (oblique / LPS, anisotropic) -> maps, table, report.

The model folder is built by hand: a U-Net whose weights make it a thresholder (a voxel is
lesion when its preprocessed intensity exceeds ``T_LESION``), and two GCNNs fitted for a
few epochs on a tiny lesion set. The test scan is an analytic brain (ellipsoid) with
three bright spherical lesions whose world centres are known, sampled on an oblique grid
of 0.9 x 0.9 x 3 mm voxels.
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import ndimage
from scipy.spatial.transform import Rotation

from lesionuq.config import (
    ExperimentConfig,
    GCNNConfig,
    GraphConfig,
    PreprocessConfig,
    SamplingConfig,
    UNetConfig,
)
from lesionuq.data.preprocess import native_labels
from lesionuq.io import InputError
from lesionuq.predict import (
    LOCATION_COLUMNS,
    TABLE_COLUMNS,
    load_model,
    predict_manifest,
    predict_scan,
)

CFG = ExperimentConfig(
    preprocess=PreprocessConfig(spacing=(2.0, 2.0, 2.0), shape=(32, 32, 32)),
    unet=UNetConfig(channels=(4, 8), dropout=0.05, norm="batch"),
    sampling=SamplingConfig(n_samples=3, batch_size=3, seed=0),
    gcnn=GCNNConfig(hidden=8, epochs=3, batch_size=4),
    device="cpu",
)
T_LESION = 2.0  # preprocessed (z-scored) intensity above which the test U-Net says lesion
BRAIN_CENTRE = np.array([2.0, -12.0, 8.0])  # mm, world (RAS)
BRAIN_AXES = np.array([24.0, 27.0, 21.0])  # mm, semi-axes
LESIONS = np.array([[-10.0, -12.0, 8.0], [8.0, 0.0, 14.0], [6.0, -24.0, 2.0]])  # mm
LESION_RADIUS = 4.5  # mm


# --------------------------------------------------------------------------- fixtures


def brain_scan(affine: np.ndarray, shape: tuple[int, int, int]) -> nib.Nifti1Image:
    """The analytic brain sampled at the voxel centres of ``affine``/``shape``."""
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
    inside = (((xyz - BRAIN_CENTRE) / BRAIN_AXES) ** 2).sum(-1) <= 1.0
    data = np.where(inside, 100.0 + 0.5 * (xyz[..., 2] - BRAIN_CENTRE[2]), 0.0)
    for c in LESIONS:
        data[np.linalg.norm(xyz - c, axis=-1) <= LESION_RADIUS] = 260.0
    return nib.Nifti1Image(data.astype(np.float32), affine)


def oblique_affine() -> np.ndarray:
    """0.9 x 0.9 x 3 mm voxels, rotated 20/-15/10 degrees, covering the brain."""
    rot = Rotation.from_euler("xyz", [20, -15, 10], degrees=True).as_matrix()
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.9, 0.9, 3.0])
    shape = np.array([76, 76, 24])
    centre_vox = (shape - 1) / 2
    affine[:3, 3] = BRAIN_CENTRE - affine[:3, :3] @ centre_vox
    return affine


OBLIQUE_SHAPE = (76, 76, 24)


def lps_affine() -> tuple[np.ndarray, tuple[int, int, int]]:
    """LPS orientation (x and y flipped), 1.2 x 1.2 x 2.5 mm voxels, a wider field."""
    shape = (60, 62, 30)
    affine = np.diag([-1.2, -1.2, 2.5, 1.0])
    affine[:3, 3] = BRAIN_CENTRE - affine[:3, :3] @ ((np.array(shape) - 1) / 2 + [3, -2, 1])
    return affine, shape


def thresholder_state(unet_cfg: UNetConfig, threshold: float) -> dict[str, torch.Tensor]:
    """U-Net weights computing ``logit_fg - logit_bg = 10 * (mean channel signal - t)``.

    Batch norm in eval mode with its initial running statistics is the identity (up to
    ``1/sqrt(1 + eps)``), so the first encoder block copies the input into its four
    channels (centre tap 1), the decoder block averages the skip channels, the deep path
    is zero, and the head thresholds. Every channel carries the same signal; with all
    channels kept, dropout's 1/(1-p) scaling lowers the threshold to ``t / (1-p)^2``, and
    at p = 0.05 a sample rarely loses enough channels to lose a bright lesion.
    """
    from lesionuq.segmentation.unet import UNet3D

    net = UNet3D(unet_cfg)
    state = {k: torch.zeros_like(v) for k, v in net.state_dict().items()}
    for k, v in net.state_dict().items():
        if k.endswith(("norm1.weight", "norm2.weight", "running_var")):
            state[k] = torch.ones_like(v)
    state["encoders.0.body.conv1.conv.weight"][:, 0, 1, 1, 1] = 1.0
    state["encoders.0.body.conv2.conv.weight"][:, :, 1, 1, 1] = torch.eye(4)
    skip = slice(4, 8)  # decoder input = cat(upsampled deep path, skip)
    state["decoders.0.body.conv_block.conv1.conv.weight"][:, skip, 1, 1, 1] = 0.25
    state["decoders.0.body.conv_block.conv2.conv.weight"][:, :, 1, 1, 1] = torch.eye(4)
    state["head.conv.conv.weight"][1, :, 0, 0, 0] = 10.0 / 4
    state["head.conv.conv.bias"][1] = -10.0 * threshold
    return state


def save_segmenter(path, unet_cfg: UNetConfig, state: dict[str, torch.Tensor]) -> None:
    """A checkpoint in the format ``train_segmenter`` writes (``segmenter.pt``)."""
    from lesionuq.segmentation.train import FORMAT

    checkpoint = {
        "format": FORMAT,
        "state_dict": state,
        "unet": dataclasses.asdict(unet_cfg),
        "train": dataclasses.asdict(CFG.train),
        "epoch": 0,
        "best_dice": 0.0,
    }
    torch.save(checkpoint, path)


def training_lesions():
    """A tiny labelled LesionSet (5 node features) with TP and FP lesions."""
    from lesionuq.lesions.dataset import LesionSet
    from lesionuq.lesions.graphs import case_lesions
    from lesionuq.uncertainty import VoxelMaps, entropy, pcs

    rng = np.random.default_rng(0)
    sets = []
    for case in range(3):
        prob = np.zeros((20, 20, 20), np.float32)
        gt = np.zeros((20, 20, 20), np.uint8)
        for k, (x, y, z) in enumerate([(3, 3, 3), (3, 12, 4), (12, 4, 12), (14, 14, 14)]):
            r = 1 + (k + case) % 3
            prob[x : x + r + 1, y : y + r + 1, z : z + 2] = 0.6 + 0.1 * k
            if (k + case) % 2 == 0:
                gt[x : x + r + 1, y : y + r + 1, z : z + 2] = 1
        prob += rng.uniform(0, 0.05, prob.shape).astype(np.float32)
        prob = np.clip(prob, 0, 1)
        maps = VoxelMaps(prob, entropy(prob), 0.1 * entropy(prob), pcs(prob), n_samples=2)
        image = (1.0 + 2.0 * prob)[None].astype(np.float32)
        _, lesions = case_lesions(maps.seg, image, maps, gt, np.eye(4), GraphConfig(), f"t{case}")
        sets.append(lesions)
    return LesionSet.concat(sets)


def make_model_dir(folder, methods=("gcnn_classif", "gcnn_reg", "entropy_mean")):
    """A model folder: the thresholding U-Net and ``methods`` fitted on training_lesions()."""
    from lesionuq.scorers import make_scorer

    (folder / "scorers").mkdir(parents=True)
    CFG.to_yaml(folder / "config.yaml")
    save_segmenter(folder / "segmenter.pt", CFG.unet, thresholder_state(CFG.unet, T_LESION))
    train = training_lesions()
    assert 0 < train.is_tp.sum() < len(train)
    for method in methods:
        scorer = make_scorer(method, CFG)
        kwargs = {"progress": False} if method.startswith("gcnn") else {}
        scorer.fit(train, **kwargs).save(folder / "scorers" / method)
    return folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("run") / "fold_0")


@pytest.fixture(scope="module")
def oblique(tmp_path_factory):
    root = tmp_path_factory.mktemp("scan")
    path = root / "flair_oblique.nii.gz"
    nib.save(brain_scan(oblique_affine(), OBLIQUE_SHAPE), str(path))
    return path


@pytest.fixture(scope="module")
def predicted(model_dir, oblique, tmp_path_factory):
    out = tmp_path_factory.mktemp("pred") / "out"
    res = predict_scan(model_dir, [oblique], out, threshold=0.5, save_maps=True, progress=False)
    return res, out


def load(path):
    img = nib.load(str(path))
    return np.asarray(img.dataobj), img.affine


# --------------------------------------------------------------------------- round trip


def test_outputs_on_input_grid(predicted, oblique):
    _, out = predicted
    ref = nib.load(str(oblique))
    names = ["seg", "lesions", "lesion_uncertainty", "prob", "entropy", "variance", "pcs"]
    for name in names:
        img = nib.load(str(out / f"{name}.nii.gz"))
        assert img.shape == OBLIQUE_SHAPE, name
        np.testing.assert_allclose(img.affine, ref.affine, atol=1e-5, err_msg=name)
    assert nib.load(str(out / "lesion_uncertainty.nii.gz")).get_data_dtype() == np.float32
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"]  # no temporary left


def test_three_lesions_found_at_their_world_centres(predicted):
    res, out = predicted
    table = pd.read_csv(out / "lesions.csv")
    assert list(table.columns) == [*TABLE_COLUMNS, "u_entropy_mean"]
    assert len(table) == 3 == res.n_lesions
    centres = table[["centroid_x_mm", "centroid_y_mm", "centroid_z_mm"]].to_numpy()
    # each true lesion has exactly one predicted lesion within 2 mm of its centre
    dist = np.linalg.norm(centres[:, None] - LESIONS[None], axis=-1)
    assert sorted(dist.argmin(1).tolist()) == [0, 1, 2]
    assert dist.min(1).max() < 2.0
    # a 4.5 mm sphere is 0.38 ml; thresholding the resampled edge shaves a little
    sphere_ml = 4 / 3 * np.pi * LESION_RADIUS**3 / 1000
    assert np.all(np.abs(table.volume_ml - sphere_ml) < 0.5 * sphere_ml)


def test_labels_match_table_rows(predicted):
    _, out = predicted
    table = pd.read_csv(out / "lesions.csv")
    labels, affine = load(out / "lesions.nii.gz")
    seg, _ = load(out / "seg.nii.gz")
    ids, counts = np.unique(labels[labels > 0], return_counts=True)
    assert sorted(table.lesion_id) == ids.tolist() == [1, 2, 3]
    np.testing.assert_array_equal(seg > 0, labels > 0)
    voxel_ml = abs(np.linalg.det(affine[:3, :3])) / 1000
    by_id = table.set_index("lesion_id")
    np.testing.assert_allclose(by_id.loc[ids, "volume_ml"], counts * voxel_ml, rtol=1e-6)
    com = np.array(ndimage.center_of_mass(labels > 0, labels, ids))
    world = com @ affine[:3, :3].T + affine[:3, 3]
    cols = ["centroid_x_mm", "centroid_y_mm", "centroid_z_mm"]
    np.testing.assert_allclose(by_id.loc[ids, cols].to_numpy(), world, atol=1e-4)


def test_lesion_uncertainty_is_each_rows_p_fp(predicted):
    _, out = predicted
    table = pd.read_csv(out / "lesions.csv")
    labels, _ = load(out / "lesions.nii.gz")
    unc, _ = load(out / "lesion_uncertainty.nii.gz")
    for row in table.itertuples():
        np.testing.assert_allclose(unc[labels == row.lesion_id], row.p_fp, rtol=1e-6)
    assert np.all(unc[labels == 0] == 0)
    assert table.p_fp.is_monotonic_decreasing
    assert (table.review == (table.p_fp >= 0.5)).all()
    assert ((table.p_fp >= 0) & (table.p_fp <= 1) & (table.iou_pred >= 0)).all()
    assert (table.iou_pred <= 1).all()
    # PCS confidence of a binary problem lies in [0.5, 1]; lesions are confident here
    assert ((table.pcs_mean >= 0.5) & (table.pcs_mean <= 1)).all()
    assert (table.entropy_mean <= np.log(2) + 1e-6).all()


def test_summary_report_and_message(predicted, model_dir, oblique):
    res, out = predicted
    png = (out / "summary.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html
    assert html.count('<tr class="review">') == res.n_review
    assert str(oblique.resolve()) in html and str(model_dir.resolve()) in html
    text = res.summary()
    assert "3 lesion(s)" in text and f"{res.n_review} to review" in text


def test_maps_have_expected_values(predicted):
    _, out = predicted
    prob, _ = load(out / "prob.nii.gz")
    pcs, _ = load(out / "pcs.nii.gz")
    labels, _ = load(out / "lesions.nii.gz")
    # lesion cores are confidently foreground
    core = ndimage.binary_erosion(labels > 0)
    assert core.any() and prob[core].mean() > 0.9
    inside = pcs > 0  # within the preprocessed field of view
    assert pcs[inside].min() >= 0.5 - 1e-4


def test_matplotlib_backend_is_left_alone(model_dir, oblique, tmp_path):
    """A notebook user's backend survives predict_scan (figures use the Agg canvas)."""
    import matplotlib

    before = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        res = predict_scan(model_dir, [oblique], tmp_path / "out", progress=False)
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)
    assert (tmp_path / "out" / "summary.png").read_bytes()[:4] == b"\x89PNG"
    assert res.n_lesions == 3


# --------------------------------------------------------------------------- native labels


def test_vanishing_lesions_are_put_back(tmp_path):
    """Single-voxel lesions on the 2 mm grid vs a 4 mm input: every label survives."""
    from lesionuq.data.preprocess import preprocess, to_original

    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    shape = (16, 18, 14)
    affine[:3, 3] = BRAIN_CENTRE - 4.0 * (np.array(shape) - 1) / 2
    pre = preprocess([brain_scan(affine, shape)], None, CFG.preprocess)
    labels = np.zeros(CFG.preprocess.shape, np.int32)
    for k, (x, y, z) in enumerate([(9, 9, 9), (10, 14, 16), (20, 13, 11), (21, 21, 21)], 1):
        labels[x, y, z] = k
    labels[14:18, 14:18, 14:18] = 5  # large enough to survive on its own
    plain = to_original(labels.astype(np.float32), pre.transform, order=0)
    assert set(range(1, 5)) - set(np.unique(plain).astype(int).tolist())  # some vanish
    out = native_labels(labels, pre.affine, pre.transform, affine)
    assert out.shape == shape
    assert np.unique(out[out > 0]).tolist() == [1, 2, 3, 4, 5]
    # lesions that survive nearest-neighbour resampling are left as they were
    for k in set(np.unique(plain).astype(int).tolist()) - {0}:
        np.testing.assert_array_equal(out == k, plain == k)
    # each restored single voxel is the native voxel nearest the lesion's centre
    for k in range(1, 5):
        v = np.argwhere(labels == k)[0]
        world = pre.affine[:3, :3] @ v + pre.affine[:3, 3]
        expect = np.rint(np.linalg.solve(affine[:3, :3], world - affine[:3, 3])).astype(int)
        got = np.argwhere(out == k)
        assert any(np.abs(g - expect).max() <= 1 for g in got), k


# --------------------------------------------------------------------------- bad input


def _nifti(path, data, affine=None):
    nib.save(nib.Nifti1Image(np.asarray(data, np.float32), np.eye(4) if affine is None else affine),
             str(path))  # fmt: skip
    return path


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "file not found"),
        ("empty", "empty"),
        ("four_d", "expected a 3-D image"),
        ("nan", "NaN"),
        ("two_images", "expects 1 image(s)"),
        ("incomplete_model", "missing scorers/gcnn_reg/scorer.json"),
        ("grid_mismatch", None),
    ],
)
def test_bad_input_gives_one_sentence_and_no_dir(case, message, model_dir, oblique, tmp_path):
    model = model_dir
    images = [oblique]
    if case == "missing":
        images = [tmp_path / "nope.nii.gz"]
    elif case == "empty":
        images = [_nifti(tmp_path / "zero.nii.gz", np.zeros((8, 8, 8)))]
    elif case == "four_d":
        images = [_nifti(tmp_path / "4d.nii.gz", np.ones((8, 8, 8, 2)))]
    elif case == "nan":
        data = np.ones((8, 8, 8))
        data[2, 3, 4] = np.nan
        images = [_nifti(tmp_path / "nan.nii.gz", data)]
    elif case == "two_images":
        images = [oblique, oblique]
    elif case == "incomplete_model":
        model = tmp_path / "fold_x"
        shutil.copytree(model_dir, model)
        shutil.rmtree(model / "scorers" / "gcnn_reg")
    elif case == "grid_mismatch":
        # a two-sequence model given two scans on different grids
        model = tmp_path / "fold_2seq"
        shutil.copytree(model_dir, model)
        cfg2 = CFG.replace(sequences=("flair", "t1"))
        cfg2.to_yaml(model / "config.yaml")
        unet2 = dataclasses.replace(CFG.unet, in_channels=2)
        save_segmenter(model / "segmenter.pt", unet2, _two_channel_state(unet2))
        other = _nifti(tmp_path / "t1.nii.gz", np.ones((8, 8, 8)))
        images = [oblique, other]
        message = "does not match"
    out = tmp_path / "out"
    with pytest.raises(InputError) as err:
        predict_scan(model, images, out, progress=False)
    text = str(err.value)
    assert message in text
    assert text.count(". ") == 0 and text.endswith((".", ").")), text  # one sentence
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


def _two_channel_state(unet_cfg: UNetConfig) -> dict[str, torch.Tensor]:
    from lesionuq.segmentation.unet import UNet3D

    return UNet3D(unet_cfg).state_dict()


def test_failure_keeps_previous_output(model_dir, oblique, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(InputError):
        predict_scan(model_dir, [oblique, oblique], out, progress=False)
    assert (out / "keep.txt").read_text() == "old"


# --------------------------------------------------------------------------- no lesion


def test_no_lesion_gives_empty_table_and_zero_maps(model_dir, oblique, tmp_path):
    model = tmp_path / "fold_blind"
    shutil.copytree(model_dir, model)
    save_segmenter(model / "segmenter.pt", CFG.unet, thresholder_state(CFG.unet, 1e3))
    out = tmp_path / "out"
    res = predict_scan(model, [oblique], out, progress=False)
    assert res.n_lesions == 0
    assert "no lesion found" in res.summary()
    table = pd.read_csv(out / "lesions.csv")
    assert list(table.columns) == [*TABLE_COLUMNS, "u_entropy_mean"] and len(table) == 0
    for name in ("seg", "lesions", "lesion_uncertainty"):
        data, _ = load(out / f"{name}.nii.gz")
        assert data.shape == OBLIQUE_SHAPE and not data.any()
    assert "No lesion found" in (out / "report.html").read_text()


# --------------------------------------------------------------------------- batch


def test_manifest_batch_and_resume(model_dir, oblique, tmp_path):
    affine, shape = lps_affine()
    lps = tmp_path / "flair_lps.nii.gz"
    nib.save(brain_scan(affine, shape), str(lps))
    csv = tmp_path / "cases.csv"
    csv.write_text(f"case_id,flair\nobl,{oblique}\nlps,{lps.name}\n")
    out = tmp_path / "batch"
    model = load_model(model_dir, n_images=1)
    res = predict_manifest(model, csv, out, progress=False)
    table = pd.read_csv(out / "lesions.csv", dtype={"case_id": str})
    assert list(table.columns) == ["case_id", *TABLE_COLUMNS, "u_entropy_mean"]
    assert table.groupby("case_id").size().to_dict() == {"lps": 3, "obl": 3}
    lps_img = nib.load(str(out / "lps" / "lesions.nii.gz"))
    assert lps_img.shape == shape
    np.testing.assert_allclose(lps_img.affine, affine, atol=1e-5)
    # the same lesion centres, in world mm, whatever the orientation of the scan
    for cid in ("lps", "obl"):
        c = table[table.case_id == cid][["centroid_x_mm", "centroid_y_mm", "centroid_z_mm"]]
        dist = np.linalg.norm(c.to_numpy()[:, None] - LESIONS[None], axis=-1)
        assert dist.min(1).max() < 2.0
    assert all(r is not None for r in res.results.values())
    again = predict_manifest(model, csv, out, progress=False)
    assert all(r is None for r in again.results.values())  # reused, not recomputed
    pd.testing.assert_frame_equal(again.table.reset_index(drop=True), table, check_dtype=False)


def test_a_cohort_unlike_the_validation_scans_is_said_once(model_dir, oblique, tmp_path):
    """Every scan of a batch warns (a reference from 5 mm scans): the batch counts them,
    says it once for the cohort, and keeps the warnings of reused cases."""
    from typer.testing import CliRunner

    from lesionuq.cli import app
    from lesionuq.shift import SHIFT_FILE, ScanProfile, ShiftReference

    folder = tmp_path / "fold_0"
    shutil.copytree(model_dir, folder)
    thick = [ScanProfile(1.0, 5.0, None, 0.1, 0.4, 1.2, 1.4) for _ in range(2)]
    ShiftReference().fit(thick).save(folder / SHIFT_FILE)
    affine, shape = lps_affine()
    lps = tmp_path / "flair_lps.nii.gz"
    nib.save(brain_scan(affine, shape), str(lps))
    csv = tmp_path / "cases.csv"
    csv.write_text(f"case_id,flair\nobl,{oblique}\nlps,{lps.name}\n")
    res = predict_manifest(folder, csv, tmp_path / "batch", progress=False)
    assert res.shifted == ["obl", "lps"]
    assert all("slice thickness" in res.warnings[c][0] for c in ("obl", "lps"))
    assert res.summary().startswith("2 case(s), 2 unlike the model's validation scans, 6 ")
    cohort = res.cohort_warning()
    assert cohort is not None and cohort.startswith("2 of 2 scans are unlike the scans")
    again = predict_manifest(folder, csv, tmp_path / "batch", progress=False)
    assert all(r is None for r in again.results.values())  # reused: warnings from disk
    assert again.warnings == res.warnings and again.cohort_warning() == cohort
    args = ["predict", "--model", str(folder), "--cases", str(csv), "--out"]
    result = CliRunner().invoke(app, [*args, str(tmp_path / "batch"), "--quiet"])
    text = " ".join(result.output.split())
    assert result.exit_code == 0, result.output
    assert "warning (lps): This scan is unlike" in text and "warning: 2 of 2 scans" in text
    # one scan of two warning is no cohort shift
    res.warnings["lps"] = []
    assert res.shifted == ["obl"] and res.cohort_warning() is None


def test_manifest_bad_case_writes_nothing(model_dir, oblique, tmp_path):
    csv = tmp_path / "cases.csv"
    csv.write_text(f"case_id,flair,mask\nobl,{oblique},\nbad,missing.nii.gz,\n")
    out = tmp_path / "batch"
    with pytest.raises(InputError, match=r"missing\.nii\.gz: file not found"):
        predict_manifest(model_dir, csv, out, progress=False)
    assert not out.exists()


# --------------------------------------------------------------------------- issue 10


def test_earlier_prediction_needs_overwrite_and_keeps_user_files(model_dir, oblique, tmp_path):
    out = tmp_path / "out"
    predict_scan(model_dir, [oblique], out, threshold=0.5, progress=False)
    (out / "notes.txt").write_text("my notes")
    before = (out / "lesions.csv").read_bytes()
    with pytest.raises(InputError, match="add --overwrite"):
        predict_scan(model_dir, [oblique], out, threshold=0.9, progress=False)
    assert (out / "lesions.csv").read_bytes() == before
    res = predict_scan(model_dir, [oblique], out, threshold=0.9, progress=False, overwrite=True)
    assert res.threshold == 0.9
    assert (out / "notes.txt").read_text() == "my notes"
    assert pd.read_csv(out / "lesions.csv")["review"].sum() == res.n_review


def test_threshold_nan_is_refused(model_dir, oblique, tmp_path):
    with pytest.raises(InputError, match=r"finite number in \[0, 1\]"):
        predict_scan(model_dir, [oblique], tmp_path / "o", threshold=float("nan"), progress=False)
    assert not (tmp_path / "o").exists()


def test_extra_scorer_that_fails_to_load_is_warned_about(model_dir, tmp_path):
    model = tmp_path / "fold"
    shutil.copytree(model_dir, model)
    (model / "scorers" / "entropy_mean" / "scorer.json").write_text("{not json")
    with pytest.warns(UserWarning, match="entropy_mean: skipped, cannot load"):
        loaded = load_model(model)
    assert "entropy_mean" not in loaded.scorers


# --------------------------------------------------------------------------- issue 14 outputs


def test_viewer_label_files_next_to_lesions(predicted):
    res, out = predicted
    table = res.table.set_index("lesion_id")
    lines = (out / "label_description.txt").read_text().splitlines()
    rows = [ln.split() for ln in lines if ln and not ln.startswith("#")]
    by_id = {int(r[0]): r for r in rows if int(r[0]) > 0}
    assert sorted(by_id) == [1, 2, 3]
    for lid, r in by_id.items():
        rgb = (230, 30, 30) if table.loc[lid, "review"] else (30, 190, 60)
        assert tuple(int(v) for v in r[1:4]) == rgb
        assert f'"lesion {lid} ' in " ".join(r)
    lut = [ln.split() for ln in (out / "lesions.lut").read_text().splitlines()]
    assert [int(r[0]) for r in lut] == [1, 2, 3]
    for r in lut:
        flagged = bool(table.loc[int(r[0]), "review"])
        assert float(r[1]) == pytest.approx((230 if flagged else 30) / 255, abs=1e-4)
        assert r[4:7] == ["lesion", r[0], "review" if flagged else "kept"]


def test_report_has_viewer_or_says_how_to_get_it(predicted):
    from lesionuq.export.viewer import NO_VIEWER_NOTE, find_niivue_bundle

    _, out = predicted
    page = (out / "report.html").read_text()
    assert "data:image/png;base64," in page  # the static figure is always there
    if find_niivue_bundle() is None:
        assert NO_VIEWER_NOTE in page and "lesionuq-viewer-canvas" not in page
    else:
        assert page.count('<canvas id="lesionuq-viewer-canvas"') == 1
        assert NO_VIEWER_NOTE not in page and page.count("class Niivue") <= 1
        # the table rows jump to the 3 lesions
        assert all(f'data-lesion="{i}"' in page for i in (1, 2, 3))


def _bids_tree(root, oblique):
    """A BIDS data set: sub-01 with session a (oblique scan), sub-02 without (LPS scan)."""
    (root / "dataset_description.json").parent.mkdir(parents=True)
    (root / "dataset_description.json").write_text('{"Name": "t", "BIDSVersion": "1.10.0"}')
    a = root / "sub-01" / "ses-a" / "anat"
    a.mkdir(parents=True)
    shutil.copy(oblique, a / "sub-01_ses-a_FLAIR.nii.gz")
    b = root / "sub-02" / "anat"
    b.mkdir(parents=True)
    affine, shape = lps_affine()
    nib.save(brain_scan(affine, shape), str(b / "sub-02_FLAIR.nii.gz"))
    return a / "sub-01_ses-a_FLAIR.nii.gz", b / "sub-02_FLAIR.nii.gz"


def test_bids_out_batch_over_bids_manifest_is_indexed_by_pybids(model_dir, oblique, tmp_path):
    bids = pytest.importorskip("bids")
    from lesionuq.datasets import build_manifest

    ds = tmp_path / "ds"
    flair1, _ = _bids_tree(ds, oblique)
    csv = build_manifest("bids", ds, tmp_path / "cases.csv")
    deriv = ds / "derivatives" / "lesionuq"
    model = load_model(model_dir, n_images=1)
    res = predict_manifest(model, csv, tmp_path / "pred", progress=False, bids_out=deriv)
    layout = bids.BIDSLayout(str(deriv), validate=False, is_derivative=True)
    masks = layout.get(suffix="mask", label="lesion", space="orig", extension=".nii.gz")
    assert sorted((f.entities["subject"], f.entities.get("session")) for f in masks) == [
        ("01", "a"),
        ("02", None),
    ]
    for sub, ses, cid in (("01", "a", "sub-01_ses-a"), ("02", None, "sub-02")):
        query = {"subject": sub, "space": "orig"} | ({"session": ses} if ses else {})
        probseg = layout.get(suffix="probseg", label="lesion", extension=".nii.gz", **query)
        dseg = layout.get(suffix="dseg", desc="lesions", extension=".nii.gz", **query)
        tsv = layout.get(suffix="dseg", desc="lesions", extension=".tsv", **query)
        assert len(probseg) == len(dseg) == len(tsv) == 1
        # the dseg is predict's lesions.nii.gz, its table the case's rows of lesions.csv
        ours = nib.load(str(tmp_path / "pred" / cid / "lesions.nii.gz"))
        np.testing.assert_array_equal(nib.load(dseg[0].path).get_fdata(), ours.get_fdata())
        rows = pd.read_csv(tsv[0].path, sep="\t")
        want = res.table[res.table.case_id == cid].sort_values("lesion_id")
        assert rows["index"].tolist() == want["lesion_id"].tolist() == [1, 2, 3]
        np.testing.assert_allclose(rows["p_fp"], want["p_fp"], atol=1e-6)
        prob = nib.load(probseg[0].path).get_fdata()
        core = ndimage.binary_erosion(ours.get_fdata() > 0)
        assert prob.min() >= 0 and prob.max() <= 1 and prob[core].mean() > 0.9
        assert prob[ours.get_fdata() == 0].mean() < 0.05
    desc = (deriv / "dataset_description.json").read_text()
    assert '"DatasetType": "derivative"' in desc and '"Name": "lesionuq"' in desc
    meta = layout.get(suffix="mask", subject="01", extension=".nii.gz")[0].get_metadata()
    assert meta["Sources"] == ["bids:raw:sub-01/ses-a/anat/sub-01_ses-a_FLAIR.nii.gz"]
    # the same batch resumes; lesionuq's derivatives are not taken as ground truth
    again = predict_manifest(model, csv, tmp_path / "pred", progress=False, bids_out=deriv)
    assert all(r is None for r in again.results.values())
    assert pd.read_csv(build_manifest("bids", ds, tmp_path / "c2.csv"))["mask"].isna().all()
    # one scan again: refused without --overwrite, then replaced, sub-02 kept
    with pytest.raises(InputError, match="already holds the derivatives of sub-01_ses-a"):
        predict_scan(model, [flair1], tmp_path / "one", progress=False, bids_out=deriv)
    assert not (tmp_path / "one").exists()
    predict_scan(model, [flair1], tmp_path / "one", 0.9, progress=False, bids_out=deriv,
                 overwrite=True)  # fmt: skip
    layout = bids.BIDSLayout(str(deriv), validate=False, is_derivative=True)
    assert len(layout.get(suffix="mask", extension=".nii.gz")) == 2
    dseg_json = layout.get(suffix="dseg", subject="01", extension=".nii.gz")[0].get_metadata()
    assert dseg_json["ReviewThreshold"] == 0.9


def test_bids_out_refuses_non_bids_name_and_its_own_out(model_dir, oblique, tmp_path):
    with pytest.raises(InputError, match="is not a BIDS file name"):
        predict_scan(model_dir, [oblique], tmp_path / "o", progress=False, bids_out=tmp_path / "d")
    with pytest.raises(InputError, match="apart from the --out folder"):
        predict_scan(model_dir, [oblique], tmp_path / "o", progress=False, bids_out=tmp_path / "o")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "foreign.txt").write_text("x")
    a = tmp_path / "ds" / "sub-1" / "anat"
    a.mkdir(parents=True)
    shutil.copy(oblique, a / "sub-1_FLAIR.nii.gz")
    with pytest.raises(InputError, match="not written by lesionuq"):
        predict_scan(model_dir, [a / "sub-1_FLAIR.nii.gz"], tmp_path / "o", progress=False,
                     bids_out=tmp_path / "d")  # fmt: skip
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- issue 25


def test_a_second_prediction_into_a_folder_in_use_is_refused(model_dir, oblique, tmp_path):
    import fcntl
    import os

    from lesionuq.outputs import LOCK_FILE

    out = tmp_path / "out"
    out.mkdir()
    fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another predict holds the folder
        os.write(fd, b"4242\n")
        with pytest.raises(InputError, match=r"in use by another lesionuq process \(PID 4242\)"):
            predict_scan(model_dir, [oblique], out, progress=False)
    finally:
        os.close(fd)
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # nothing written meanwhile


def test_a_failed_prediction_into_a_new_folder_leaves_no_lock(
    model_dir, oblique, tmp_path, monkeypatch
):
    import lesionuq.predict.write as write  # the writers read summary_png there

    def broken(*args, **kwargs):
        raise RuntimeError("summary figure failed")

    monkeypatch.setattr(write, "summary_png", broken)
    with pytest.raises(RuntimeError, match="summary figure failed"):
        predict_scan(model_dir, [oblique], tmp_path / "new", progress=False)
    assert not (tmp_path / "new").exists()


def test_a_scan_failing_after_its_bids_export_leaves_no_export(
    model_dir, oblique, tmp_path, monkeypatch
):
    import lesionuq.predict.write as write  # the writers read summary_png there

    flair, _ = _bids_tree(tmp_path / "ds", oblique)
    deriv = tmp_path / "ds" / "derivatives" / "lesionuq"
    real, calls = write.summary_png, []

    def once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("summary figure failed")
        return real(*args, **kwargs)

    monkeypatch.setattr(write, "summary_png", once)
    with pytest.raises(RuntimeError):
        predict_scan(model_dir, [flair], tmp_path / "pred", progress=False, bids_out=deriv)
    assert not (deriv / "sub-01").exists()  # the scan's export was not left behind
    # the rerun the error suggests finishes it, without --overwrite
    predict_scan(model_dir, [flair], tmp_path / "pred", progress=False, bids_out=deriv)
    assert len(list((deriv / "sub-01" / "ses-a" / "anat").glob("*_mask.nii.gz"))) == 1


def test_bids_overwrite_replaces_only_listed_files(model_dir, oblique, tmp_path):
    flair, _ = _bids_tree(tmp_path / "ds", oblique)
    deriv = tmp_path / "ds" / "derivatives" / "lesionuq"
    model = load_model(model_dir, n_images=1)
    predict_scan(model, [flair], tmp_path / "p1", progress=False, bids_out=deriv)
    anat = deriv / "sub-01" / "ses-a" / "anat"
    mine = anat / "sub-01_ses-a_space-orig_desc-manualfix_mask.nii.gz"
    mine.write_text("a user's corrected mask")
    predict_scan(model, [flair], tmp_path / "p2", progress=False, bids_out=deriv, overwrite=True)
    assert mine.read_text() == "a user's corrected mask"
    # a user's file where lesionuq would write (not in its marker) is refused, before the work
    ours = anat / "sub-01_ses-a_space-orig_label-lesion_mask.nii.gz"
    from lesionuq.outputs import MARKER

    marker = json.loads((deriv / MARKER).read_text())
    marker["files"].remove(str(ours.relative_to(deriv)))
    (deriv / MARKER).write_text(json.dumps(marker))
    with pytest.raises(InputError, match="is not a file lesionuq wrote"):
        predict_scan(
            model, [flair], tmp_path / "p3", progress=False, bids_out=deriv, overwrite=True
        )
    assert not (tmp_path / "p3").exists()


def test_file_names_with_dollar_braces_and_latin1_bytes(model_dir, oblique, tmp_path):
    import os

    name = os.fsdecode(b"caf\xe9 $x{$y}.nii.gz")  # Latin-1 byte: a surrogate escape in Python
    scan = tmp_path / name
    shutil.copy(oblique, scan)
    res = predict_scan(model_dir, [scan], tmp_path / "out", progress=False)
    assert res.n_lesions == 3
    assert (tmp_path / "out" / "summary.png").stat().st_size > 0
    assert "café $x{$y}" in (tmp_path / "out" / "report.html").read_text(encoding="utf-8")


def test_case_id_naming_the_batch_table_is_refused(model_dir, oblique, tmp_path):
    csv = tmp_path / "cases.csv"
    csv.write_text(f"case_id,flair\nLesions.csv,{oblique}\n")
    with pytest.raises(InputError, match="name of the batch's own table"):
        predict_manifest(model_dir, csv, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_case_id_formula_keeps_its_text_in_the_batch(model_dir, oblique, tmp_path):
    from lesionuq.io import read_csv_table

    csv = tmp_path / "cases.csv"
    csv.write_text(f"case_id,flair\n=1+1,{oblique}\n")
    out = tmp_path / "out"
    predict_manifest(model_dir, csv, out, progress=False)
    assert (out / "=1+1" / "lesions.csv").is_file()
    assert (out / "lesions.csv").read_text().splitlines()[1].startswith("'=1+1,")
    assert set(read_csv_table(out / "lesions.csv")["case_id"]) == {"=1+1"}
    again = predict_manifest(model_dir, csv, out, progress=False)  # reused, same ids
    assert again.results == {"=1+1": None}


def test_lesion_in_ignore_region_is_reported_and_marked(model_dir, oblique, tmp_path):
    """Issue 29.1: a lesion mostly inside the case's ignore region stays in lesions.csv,
    with ``in_ignore`` True; the other two are False."""
    affine = oblique_affine()
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in OBLIQUE_SHAPE], indexing="ij"), -1)
    xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
    region = (np.linalg.norm(xyz - LESIONS[0], axis=-1) <= LESION_RADIUS + 2.0).astype(np.uint8)
    ignore = tmp_path / "ignore.nii.gz"
    nib.save(nib.Nifti1Image(region, affine), str(ignore))
    out = tmp_path / "out"
    res = predict_scan(model_dir, [oblique], out, threshold=0.5, progress=False, ignore=ignore)
    table = pd.read_csv(out / "lesions.csv")
    assert len(table) == 3 == res.n_lesions
    centres = table[["centroid_x_mm", "centroid_y_mm", "centroid_z_mm"]].to_numpy()
    nearest = np.linalg.norm(centres[:, None] - LESIONS[None], axis=-1).argmin(1)
    assert table["in_ignore"].tolist() == (nearest == 0).tolist()
    assert int(table["in_ignore"].sum()) == 1


# --------------------------------------------------------------------------- location (issue 30)


def test_location_columns_untrusted_registration_gives_unknown(model_dir, oblique, tmp_path):
    """The toy scan (a 5 cm ellipsoid) does not register to MNI152: unknown, warned."""
    res = predict_scan(model_dir, [oblique], tmp_path / "o", progress=False, location=True)
    table = pd.read_csv(tmp_path / "o" / "lesions.csv")
    assert list(table.columns) == [*TABLE_COLUMNS, *LOCATION_COLUMNS, "u_entropy_mean"]
    assert len(table) == 3 and (table["location"] == "unknown").all()
    assert table[list(LOCATION_COLUMNS[1:])].isna().all().all()
    loc = json.loads((tmp_path / "o" / "lesions.json").read_text())["location"]
    assert loc["registration"]["ok"] is False and loc["counts"]["unknown"] == 3
    assert loc["dis"]["verdict"] == "unknown" and loc["dis"]["probability"] is None
    assert any("registration to the MNI152 template" in w for w in res.warnings)
    assert "DIS: unknown" in (tmp_path / "o" / "report.html").read_text()


def test_location_columns_with_a_trusted_registration(model_dir, oblique, tmp_path, monkeypatch):
    """An identity registration: MNI centroid = world centroid, classes and P(DIS) written."""
    import SimpleITK as sitk

    import lesionuq.location as location
    from lesionuq.location import Registration, dis_probability, region_probabilities

    def identity(image, affine, brain=None, **_):
        shape = tuple(int(s) for s in image.shape)
        return Registration(sitk.AffineTransform(3), shape, affine, 1.0, np.ones(3))

    monkeypatch.setattr(location, "register_to_template", identity)
    flair, _ = _bids_tree(tmp_path / "ds", oblique)
    deriv = tmp_path / "ds" / "derivatives" / "lesionuq"
    res = predict_scan(
        model_dir, [flair], tmp_path / "o", 0.5, progress=False, location=True, bids_out=deriv
    )
    table = pd.read_csv(tmp_path / "o" / "lesions.csv")
    mni = table[["mni_x_mm", "mni_y_mm", "mni_z_mm"]].to_numpy()
    world = table[["centroid_x_mm", "centroid_y_mm", "centroid_z_mm"]].to_numpy()
    # the MNI centroid is measured on the preprocessed grid, the world one on the input
    assert np.abs(mni - world).max() < 1.5
    assert set(table["location"]) <= {"periventricular", "juxtacortical", "deep"}
    # (-10, -12, 8) mm is the left thalamus of MNI152: its centre lies 10.8 mm from the
    # lateral ventricles and 13.4 mm from the cortex, its radius is 4.5 mm: deep
    near = np.linalg.norm(world - LESIONS[0], axis=1).argmin()
    assert table["location"].iloc[near] == "deep"
    payload = json.loads((tmp_path / "o" / "lesions.json").read_text())["location"]
    dis = payload["dis"]
    q = region_probabilities(table["location"].tolist(), table["p_fp"].to_numpy())
    assert dis["probability"] == pytest.approx(dis_probability(list(q.values())), abs=1e-6)
    # the 5 cm toy brain does not reach the infratentorial region
    assert dis["regions"]["infratentorial"]["assessable"] is False
    assert payload["registration"]["ok"] is True and res.location == payload
    assert dis["sentence"] in res.summary()
    report = (tmp_path / "o" / "report.html").read_text()
    assert "Registration to MNI152" in report and "dissemination in space" in report
    tsv = next(deriv.rglob("*_dseg.tsv"))
    dseg = pd.read_csv(tsv, sep="\t")
    assert list(dseg.columns[-4:]) == list(LOCATION_COLUMNS)
    assert sorted(dseg["location"]) == sorted(table["location"])
    sidecar = json.loads(tsv.with_suffix(".json").read_text())
    assert "location" in sidecar and "mni_x_mm" in sidecar
