"""nnU-Net v2 outputs as samples, checked with nnU-Net's own export code (issue 27)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from lesionuq.io import InputError

nnunetv2 = pytest.importorskip("nnunetv2")

SHAPE = (20, 24, 10)  # x, y, z of the NIfTI (anisotropic: 3 mm slices)
CROP = ((1, 9), (2, 22), (3, 18))  # nnU-Net's bbox, in its (z, y, x) array order


def _oblique_affine() -> np.ndarray:
    a = np.deg2rad(20.0)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1.0]])
    b = np.deg2rad(10.0)
    rot = rot @ np.array([[1.0, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.9, 1.1, 3.0])
    affine[:3, 3] = [-20.0, 15.0, 40.0]
    return affine


def _image(path: Path) -> np.ndarray:
    """An asymmetric intensity volume (x-ramp plus a bright off-centre block), saved."""
    x, y, z = np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")
    data = (0.005 * x + 0.005 * y + 0.01 * z).astype(np.float32)  # below 0.5
    data[12:17, 4:9, 2:5] = 1.0  # the "lesion": off-centre on every axis
    img = nib.Nifti1Image(data, _oblique_affine())
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    nib.save(img, path)
    return data


def _plans(spacing: list[float]) -> dict:
    """A minimal real nnU-Net v2 plans.json (one 3d_fullres configuration)."""
    return {
        "dataset_name": "Dataset999_Phantom",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": spacing,
        "original_median_shape_after_transp": [10, 24, 20],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {
            "3d_fullres": {
                "data_identifier": "nnUNetPlans_3d_fullres",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 2,
                "patch_size": [8, 16, 16],
                "median_image_size_in_voxels": [10, 24, 20],
                "spacing": spacing,
                "normalization_schemes": ["ZScoreNormalization"],
                "use_mask_for_norm": [False],
                "resampling_fn_data": "resample_data_or_seg_to_shape",
                "resampling_fn_seg": "resample_data_or_seg_to_shape",
                "resampling_fn_data_kwargs": {
                    "is_seg": False,
                    "order": 3,
                    "order_z": 0,
                    "force_separate_z": None,
                },
                "resampling_fn_seg_kwargs": {
                    "is_seg": True,
                    "order": 1,
                    "order_z": 0,
                    "force_separate_z": None,
                },
                "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                "resampling_fn_probabilities_kwargs": {
                    "is_seg": False,
                    "order": 1,
                    "order_z": 0,
                    "force_separate_z": None,
                },
                "architecture": {
                    "network_class_name": (
                        "dynamic_network_architectures.architectures.unet.PlainConvUNet"
                    ),
                    "arch_kwargs": {},
                    "_kw_requires_import": [],
                },
                "batch_dice": False,
            }
        },
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {},
    }


DATASET = {
    "channel_names": {"0": "FLAIR"},
    "labels": {"background": 0, "lesion": 1},
    "numTraining": 1,
    "file_ending": ".nii.gz",
}


def _nnunet_fold(folder: Path, image_path: Path, scale: float) -> None:
    """What nnUNetv2_predict --save_probabilities writes, via nnU-Net's own export code."""
    import torch
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.inference.export_prediction import export_prediction_from_logits
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    folder.mkdir(parents=True)
    data, props = SimpleITKIO().read_images([str(image_path)])  # (1, z, y, x)
    plans = _plans([float(s) for s in props["spacing"]])  # no resampling: only the geometry
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(DATASET))
    (z0, z1), (y0, y1), (x0, x1) = CROP
    cropped = data[0, z0:z1, y0:y1, x0:x1]
    props["shape_before_cropping"] = data.shape[1:]
    props["bbox_used_for_cropping"] = [list(b) for b in CROP]
    props["shape_after_cropping_and_before_resampling"] = cropped.shape
    logits = np.stack([np.zeros_like(cropped), scale * (cropped - 0.5)]).astype(np.float32)
    pm = PlansManager(plans)
    export_prediction_from_logits(
        torch.from_numpy(logits),
        props,
        pm.get_configuration("3d_fullres"),
        pm,
        DATASET,
        str(folder / "case1"),
        save_probabilities=True,
        num_threads_torch=1,
    )


@pytest.fixture(scope="module")
def folds(tmp_path_factory):
    root = tmp_path_factory.mktemp("nnunet")
    image = root / "case1_0000.nii.gz"
    data = _image(image)
    dirs = [root / "fold_0", root / "fold_1"]
    for d, scale in zip(dirs, (8.0, 4.0), strict=True):
        _nnunet_fold(d, image, scale)
    return image, data, dirs


def test_stack_lands_on_the_segmentation_grid(folds, tmp_path):
    from lesionuq.nnunet import stacks_from_nnunet

    image, data, dirs = folds
    assert (dirs[0] / "case1.pkl").is_file()  # written by nnU-Net, never read by lesionuq
    csv = stacks_from_nnunet(dirs, tmp_path / "stacks", progress=False)
    table = pd.read_csv(csv)
    assert table.to_dict("records") == [
        {"case_id": "case1", "samples": "case1.nii.gz", "n_samples": 2}
    ]
    stack = nib.load(tmp_path / "stacks" / "case1.nii.gz")
    seg = nib.load(dirs[0] / "case1.nii.gz")
    assert stack.shape == (*SHAPE, 2)
    # the geometry of the segmentation nnU-Net wrote, which is the image's
    np.testing.assert_allclose(stack.affine, seg.affine, atol=1e-5)
    np.testing.assert_allclose(stack.affine, nib.load(image).affine, atol=1e-4)
    p = np.asarray(stack.dataobj)
    # voxel for voxel: sigmoid(scale * (intensity - 0.5)) inside nnU-Net's crop, 0 outside
    (z0, z1), (y0, y1), (x0, x1) = CROP
    for t, scale in enumerate((8.0, 4.0)):
        expected = np.zeros(SHAPE, np.float32)
        box = data[x0:x1, y0:y1, z0:z1]
        expected[x0:x1, y0:y1, z0:z1] = 1.0 / (1.0 + np.exp(-scale * (box - 0.5)))
        np.testing.assert_allclose(p[..., t], expected, atol=1e-5)
    assert np.array_equal(p[..., 0] > 0.5, np.asarray(seg.dataobj) == 1)
    lesion = np.argwhere(p[..., 0] > 0.5)
    assert lesion.min(0).tolist() == [12, 4, 2] and lesion.max(0).tolist() == [16, 8, 4]


def test_wrong_axis_order_is_caught(folds, tmp_path):
    """An npz whose axes do not match its segmentation is refused in one sentence."""
    from lesionuq.nnunet import nnunet_probability

    _, _, dirs = folds
    with np.load(dirs[0] / "case1.npz") as z:
        probs = z["probabilities"]
    bad = tmp_path / "case1.npz"
    np.savez(bad, probabilities=np.ascontiguousarray(np.flip(probs, axis=1)))  # z reversed
    with pytest.raises(InputError, match=r"case1.npz: the argmax .* differs from case1.nii.gz"):
        nnunet_probability(bad, dirs[0] / "case1.nii.gz")
    with pytest.raises(InputError, match="label 0 is not a foreground class"):
        nnunet_probability(dirs[0] / "case1.npz", dirs[0] / "case1.nii.gz", label=0)


def test_folder_without_probabilities_refused(tmp_path):
    from lesionuq.nnunet import stacks_from_nnunet

    (tmp_path / "f").mkdir()
    with pytest.raises(InputError, match=r"no \.npz probability files .*--save_probabilities"):
        stacks_from_nnunet([tmp_path / "f"], tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_manifest_joined_and_command(folds, tmp_path):
    """`samples-from nnunet --cases` writes a cases.csv with the samples column."""
    from typer.testing import CliRunner

    from lesionuq.cli import app
    from lesionuq.io import read_manifest

    image, _, dirs = folds
    csv = tmp_path / "cases.csv"
    csv.write_text(f"case_id,flair,mask\ncase1,{image},\n")
    out = tmp_path / "stacks"
    res = CliRunner().invoke(
        app, ["samples-from", "nnunet", *map(str, dirs), "--out", str(out), "--cases", str(csv)]
    )
    assert res.exit_code == 0, res.output
    (case,) = read_manifest(out / "cases.csv", require_mask=False)
    assert case.samples == out / "case1.nii.gz"
    assert case.images[0].resolve() == image.resolve()
    assert nib.load(case.samples).shape == (*SHAPE, 2)
    csv.write_text(f"case_id,flair,mask\ncase1,{image},\ncase2,{image},\n")
    res = CliRunner().invoke(
        app,
        [
            "samples-from",
            "nnunet",
            *map(str, dirs),
            "--out",
            str(tmp_path / "o2"),
            "--cases",
            str(csv),
        ],
    )
    assert res.exit_code == 1 and "case 'case2' (and 0 more) has no nnU-Net output" in res.output
    assert not (tmp_path / "o2").exists()
