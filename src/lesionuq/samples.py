"""Bring your own segmenter: T probability maps made elsewhere in place of the U-Net.

The lesion scorers do not care where the T foreground-probability maps come from (the
paper puts the GCNN "at the output of a trained segmentation model"). A manifest whose
every case has a ``samples`` column (a 4-D NIfTI whose last axis is the sample, or a
folder of 3-D maps, e.g. nnU-Net's folds through :mod:`lesionuq.nnunet`, a deep
ensemble or test-time augmentation) runs the *samples* protocol: no U-Net is trained,
the voxel maps come from :func:`~lesionuq.uncertainty.maps_from_samples` on the samples'
own grid, and the scorers of each fold learn from every non-test case
(:func:`~lesionuq.rundir.make_folds` with ``fixed_segmenter``).

Grids: the samples define the grid of the maps, the lesions and the graphs. The image
is brought onto it (:func:`~lesionuq.data.preprocess.preprocess_to_grid`: the same
resampling and brain z-score as the U-Net protocol; an image already on that grid is
copied exactly) for the GCNN's intensity features; the ground-truth mask may be on the
image's grid or on the samples' grid (nearest neighbour, the rule of the U-Net protocol).

Every check runs before any work (:func:`load_samples_case`); each problem is one
sentence naming the case and the file.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np
import pandas as pd

from lesionuq.config import PreprocessConfig
from lesionuq.data.preprocess import preprocess_to_grid
from lesionuq.io import (
    AFFINE_TOL,
    Case,
    InputError,
    check_mask,
    load_case,
    load_nifti,
    save_nifti,
)
from lesionuq.outputs import check_output_dir, output_dir
from lesionuq.uncertainty import VoxelMaps, load_sample_stack, maps_from_samples, nifti_files

if TYPE_CHECKING:
    from lesionuq.data.preprocess import Preprocessed

__all__ = [
    "BRAIN_OUTSIDE_TOL",
    "SOURCE_FILE",
    "StackInfo",
    "check_samples_grid",
    "describe_source",
    "load_samples_case",
    "manifest_protocol",
    "maps_from_stack",
    "samples_onto_grid",
    "samples_table",
    "save_sample_stack",
    "stack_info",
]

logger = logging.getLogger(__name__)

#: Refuse samples whose field of view leaves out more than this fraction of the brain.
BRAIN_OUTSIDE_TOL = 0.05
#: JSON file an adapter (e.g. :mod:`lesionuq.nnunet`) writes beside the stacks it makes:
#: ``{"source": "words"}``, shown in the run's config and report.
SOURCE_FILE = "lesionuq_samples.json"


@dataclass(frozen=True)
class StackInfo:
    """The geometry of a case's samples (header only).

    Attributes:
        path: The 4-D NIfTI or the folder of 3-D maps.
        shape: (X, Y, Z) of every sample.
        affine: (4, 4) float64 voxel-to-world affine of the samples.
        n_samples: T.
    """

    path: Path
    shape: tuple[int, int, int]
    affine: np.ndarray
    n_samples: int


def stack_info(path: str | Path) -> StackInfo:
    """Read the header of a sample stack (see :func:`~lesionuq.uncertainty.load_sample_stack`).

    Raises:
        InputError: Missing path, empty folder, not 3-D/4-D, no sample.
    """
    path = Path(path)
    load_sample_stack(path)  # the listing, dimensionality and sample count are checked here
    if path.is_dir():
        files = nifti_files(path)
        img, n = load_nifti(files[0]), len(files)
    else:
        img = load_nifti(path)
        n = int(img.shape[3]) if len(img.shape) == 4 else 1
    x, y, z = (int(v) for v in img.shape[:3])
    return StackInfo(path, (x, y, z), np.asarray(img.affine, dtype=np.float64), n)


def manifest_protocol(cases: Sequence[Case], csv_path: str | Path) -> str:
    """``"samples"`` when every case has samples, ``"unet"`` when none has.

    Raises:
        InputError: Some cases have samples and some do not.
    """
    without = [c.case_id for c in cases if c.samples is None]
    if not without:
        return "samples"
    if len(without) == len(cases):
        return "unet"
    raise InputError(
        f"{csv_path}: {len(cases) - len(without)} of {len(cases)} cases have a samples path "
        f"but {len(without)} (e.g. {without[0]!r}) have none; give every case its samples "
        "(your segmenter, scorers only) or none (the U-Net protocol)."
    )


def check_samples_grid(
    info: StackInfo, image: nib.Nifti1Image, image_path: Path, brain_threshold: float
) -> None:
    """Refuse samples that do not cover the scan (a different field of view, swapped axes).

    Any grid is accepted (the image is resampled onto it) as long as at most
    :data:`BRAIN_OUTSIDE_TOL` of the brain (image voxels above ``brain_threshold``) lies
    outside the samples' field of view.

    Raises:
        InputError: One sentence naming the samples and the image.
    """
    shape = tuple(int(v) for v in image.shape[:3])
    affine = np.asarray(image.affine, dtype=np.float64)
    same_affine = np.allclose(info.affine, affine, atol=AFFINE_TOL)
    if same_affine and info.shape == shape:
        return
    if same_affine and sorted(info.shape) == sorted(shape):
        raise InputError(
            f"{info.path}: shape {info.shape} is the shape {shape} of {image_path.name} with "
            "axes swapped (same affine); write the samples in the image's axis order."
        )
    data = np.asarray(image.dataobj, dtype=np.float32).reshape(shape)
    idx = np.argwhere(data > brain_threshold).astype(np.float64)
    if len(idx) == 0:
        return  # preprocessing names this problem
    m = np.linalg.solve(info.affine, affine)  # image voxel -> samples voxel
    v = idx @ m[:3, :3].T + m[:3, 3]
    inside = np.all((v > -0.5) & (v < np.asarray(info.shape) - 0.5), axis=1)
    outside = 1.0 - float(inside.mean())
    if outside > BRAIN_OUTSIDE_TOL:
        raise InputError(
            f"{info.path}: {100 * outside:.0f} % of the brain of {image_path.name} lies outside "
            "the samples' field of view (a different field of view or axis order?); the "
            "samples must cover the scan."
        )


def _check_mask_grid(mask: nib.Nifti1Image, path: Path, image: nib.Nifti1Image,
                     image_path: Path, info: StackInfo) -> None:  # fmt: skip
    """The mask must lie on the image's grid or on the samples' grid."""
    for shape, affine in ((image.shape[:3], image.affine), (info.shape, info.affine)):
        if tuple(mask.shape[:3]) == tuple(shape) and np.allclose(
            mask.affine, affine, atol=AFFINE_TOL
        ):
            return
    raise InputError(
        f"{path}: the mask is neither on the grid of {image_path.name} nor on the grid of "
        f"the samples {info.path.name}."
    )


def load_samples_case(
    case: Case, brain_threshold: float, check_values: bool = True
) -> tuple[list[nib.Nifti1Image], nib.Nifti1Image | None, StackInfo]:
    """Load and check one case of the samples protocol (or one scan of ``predict``).

    Checks the images (:func:`~lesionuq.io.load_case`), the samples' header and grid
    (:func:`check_samples_grid`), the mask (binary, on the image's or the samples' grid)
    and, with ``check_values``, every sample's values (finite, in [0, 1]; read one at a
    time). T = 1 is allowed with a warning (the variance map is then zero).

    Args:
        case: The case; ``case.samples`` must be set.
        brain_threshold: The config's ``preprocess.brain_threshold``.
        check_values: Read every sample to check its values.

    Returns:
        The images (one per sequence), the mask image or None, the samples' geometry.

    Raises:
        InputError: One sentence naming the case and the file.
    """
    if case.samples is None:
        raise InputError(f"case {case.case_id!r}: no samples path was given.")
    try:
        images, _ = load_case(Case(case.case_id, case.images))
        info = stack_info(case.samples)
        check_samples_grid(info, images[0], case.images[0], brain_threshold)
        mask = None
        if case.mask is not None:
            mask = load_nifti(case.mask)
            check_mask(mask, case.mask)
            _check_mask_grid(mask, case.mask, images[0], case.images[0], info)
        if check_values:
            for _ in load_sample_stack(case.samples):
                pass
    except InputError as exc:
        raise InputError(f"case {case.case_id!r}: {exc}") from None
    if info.n_samples == 1:
        text = (
            f"case {case.case_id!r}: {case.samples} holds one sample (T = 1): entropy and PCS "
            "are defined but the variance map is zero."
        )
        warnings.warn(text, stacklevel=2)
        logger.warning(text)
    return images, mask, info


def samples_onto_grid(
    case: Case, cfg_preprocess: PreprocessConfig, check_values: bool = False
) -> tuple[Preprocessed, VoxelMaps, StackInfo]:
    """A case brought onto its samples' grid, and its voxel maps from the samples.

    Args:
        case: The case (``case.samples`` set; ``case.mask`` optional).
        cfg_preprocess: The :class:`~lesionuq.config.PreprocessConfig` (brain threshold).
        check_values: Check every sample's values first (a separate read).

    Returns:
        ``(pre, maps, info)``: the :class:`~lesionuq.data.preprocess.Preprocessed` case on
        the samples' grid (image z-scored within the brain, mask nearest-neighbour), the
        :class:`~lesionuq.uncertainty.VoxelMaps` of the samples (each (X, Y, Z) float32)
        and the :class:`StackInfo`.
    """
    images, mask, info = load_samples_case(case, cfg_preprocess.brain_threshold, check_values)
    pre = preprocess_to_grid(images, mask, cfg_preprocess, info.affine, info.shape)
    try:
        maps: VoxelMaps = maps_from_samples(load_sample_stack(info.path))
    except InputError as exc:
        raise InputError(f"case {case.case_id!r}: {exc}") from None
    return pre, maps, info


def describe_source(cases: Sequence[Case], csv_path: str | Path) -> str:
    """Where the samples came from, in words (config ``samples_source``, the report).

    The ``source`` of any :data:`SOURCE_FILE` an adapter wrote beside the stacks, else
    the manifest's ``samples`` column; then T over the cases.
    """
    sources: list[str] = []
    for case in cases:
        if case.samples is None:
            continue
        folder = case.samples if case.samples.is_dir() else case.samples.parent
        try:
            text = str(json.loads((folder / SOURCE_FILE).read_text())["source"])
        except (OSError, ValueError, KeyError, TypeError):
            text = f"the samples column of {Path(csv_path).name}"
        if text not in sources:
            sources.append(text)
    return "; ".join(sources)


def samples_table(rows: Sequence[tuple[str, StackInfo]]) -> pd.DataFrame:
    """One row per case: ``case_id``, ``samples`` (the path), ``n_samples`` (T), ``shape``.

    T may differ between cases (each case's maps use its own T); this table records it.
    """
    return pd.DataFrame(
        {
            "case_id": [c for c, _ in rows],
            "samples": [str(i.path) for _, i in rows],
            "n_samples": [int(i.n_samples) for _, i in rows],
            "shape": ["x".join(str(v) for v in i.shape) for _, i in rows],
        }
    )


def save_sample_stack(
    path: str | Path, samples: Sequence[np.ndarray] | np.ndarray, affine: np.ndarray
) -> Path:
    """Write T foreground-probability maps as one 4-D NIfTI (last axis = sample).

    The file a ``samples`` column points to (e.g. the project's own MC-dropout samples,
    :func:`lesionuq.segmentation.sampling.mc_samples`, or any other model's).

    Args:
        path: Destination ``.nii.gz``.
        samples: T arrays (X, Y, Z), or one (T, X, Y, Z) array, values in [0, 1].
        affine: (4, 4) voxel-to-world affine of their grid.

    Returns:
        ``path``.
    """
    stack = np.stack([np.asarray(s, dtype=np.float32) for s in samples], axis=-1)
    return save_nifti(path, stack, affine)


def maps_from_stack(stack: Path, out: Path, overwrite: bool = False) -> Path:
    """Voxel maps from T probability maps made elsewhere (bring your own model).

    Args:
        stack: A folder of NIfTI foreground-probability maps (one per sample, any order
            of names, read sorted) or one 4-D NIfTI whose last axis is the sample.
        out: Folder for ``prob``, ``seg``, ``entropy``, ``variance`` and ``pcs`` NIfTI files,
            written on the stack's grid (its affine); see :mod:`lesionuq.outputs`.
        overwrite: Replace an earlier set of maps in ``out`` (only the files lesionuq
            wrote there); without it such a folder is refused, as is any other
            non-empty folder.

    Returns:
        ``out``.
    """
    stack = Path(stack)
    check_output_dir(out, "maps", overwrite=overwrite, inputs=[stack])
    samples = load_sample_stack(stack)  # checks the path and the folder listing
    first = nifti_files(stack)[0] if stack.is_dir() else stack
    affine = load_nifti(first).affine
    maps = maps_from_samples(samples)
    with output_dir(Path(out), "maps") as tmp:
        for name, value in maps.items():
            save_nifti(tmp / f"{name}.nii.gz", value, affine)
    return Path(out)
