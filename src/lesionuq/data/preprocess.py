"""Bring scans onto the common grid (paper 3.1), and maps back onto the scan's grid.

The target grid is axis-aligned RAS with voxel size ``cfg.spacing`` and shape ``cfg.shape``,
centred on the world-space bounding box of the brain (voxels of the first sequence with
intensity > ``cfg.brain_threshold``). Every input is resampled ONCE from its own voxel grid
to the target grid with the composed voxel-to-voxel affine

    M = A_input^-1 @ A_target        (target voxel -> input voxel),

with ``scipy.ndimage.affine_transform`` (linear for images, nearest for masks), which
handles reorientation (LPS, any axis order), oblique affines and anisotropic voxels in one
step. When the input's axes are a signed permutation of RAS at the target spacing (a pure
reorientation), the target origin is snapped onto the input's voxel lattice, so the
resampling is an exact copy and :func:`to_original` inverts it exactly. When downsampling,
images are first smoothed with a Gaussian of std ``(factor - 1) / 2`` input voxels per axis
(the anti-aliasing of ``skimage.transform.resize``).

Intensities are z-scored per sequence with the mean and standard deviation of the brain
voxels (first sequence > ``cfg.brain_threshold`` on the target grid); voxels outside the
brain are set to 0 (the nnU-Net convention for masked normalisation), so the background
and the region outside the scan's field of view carry no intensity.

:class:`GridTransform` keeps both grids; :func:`to_original` resamples any map on the
target grid back onto the original grid (original shape; the original affine is
``transform.original_affine``) with the inverse mapping, and :func:`native_labels` does
so for lesion labels without losing a lesion smaller than an original voxel.

Example:
    >>> pre = preprocess([flair_img], mask_img, PreprocessConfig())
    >>> pre.image.shape, pre.mask.shape
    ((1, 160, 192, 160), (160, 192, 160))
    >>> back = to_original(pre.mask, pre.transform, order=0)  # shape of flair_img
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from lesionuq.config import PreprocessConfig
from lesionuq.errors import InputWarning
from lesionuq.io import InputError

__all__ = [
    "GridTransform",
    "Preprocessed",
    "mask_to_grid",
    "native_labels",
    "preprocess",
    "preprocess_to_grid",
    "target_grid",
    "to_original",
]

_PERM_TOL = 1e-6
CROP_WARN_FRACTION = 0.01  # warn when more than this fraction of the brain volume is cut
NEGATIVE_ERROR_FRACTION = 0.1
"""Refuse an image with more than this share of negative voxels among its clearly nonzero
ones (an intensity-normalised image: z-scores put about half the brain below 0; a spline
resampling's ripples around the brain make about 4 %)."""
BACKGROUND_WARN_FRACTION = 0.9
"""Warn when more than this share of the image is above the brain threshold (a
skull-stripped brain fills 20-35 % of a scan's field of view, about half of its
bounding box): the scan has no zero background, so its brain mask is the whole image."""


@dataclass(frozen=True, eq=False)
class GridTransform:
    """The map between the preprocessed grid and the original scan grid.

    Attributes:
        original_affine: (4, 4) float64 voxel-to-world (RAS mm) affine of the original scan.
        original_shape: (X, Y, Z) of the original scan.
        affine: (4, 4) float64 affine of the preprocessed (target) grid.
        shape: (X, Y, Z) of the preprocessed grid.
        mean: Per-sequence brain mean used by the z-score, length C.
        std: Per-sequence brain standard deviation used by the z-score, length C.
    """

    original_affine: np.ndarray
    original_shape: tuple[int, int, int]
    affine: np.ndarray
    shape: tuple[int, int, int]
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (lists of floats; floats round-trip exactly through JSON)."""
        return {
            "original_affine": np.asarray(self.original_affine, dtype=np.float64).tolist(),
            "original_shape": [int(v) for v in self.original_shape],
            "affine": np.asarray(self.affine, dtype=np.float64).tolist(),
            "shape": [int(v) for v in self.shape],
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GridTransform:
        """Inverse of :meth:`to_dict`."""
        return cls(
            original_affine=np.asarray(d["original_affine"], dtype=np.float64),
            original_shape=_shape3(d["original_shape"]),
            affine=np.asarray(d["affine"], dtype=np.float64),
            shape=_shape3(d["shape"]),
            mean=tuple(float(v) for v in d.get("mean", ())),
            std=tuple(float(v) for v in d.get("std", ())),
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GridTransform) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(repr(self.to_dict()))

    def voxel_map(self) -> np.ndarray:
        """(4, 4) map from target voxel indices to original voxel indices."""
        return _voxel_map(self.original_affine, self.affine)


@dataclass
class Preprocessed:
    """A case on the common grid.

    Attributes:
        image: (C, X, Y, Z) float32, z-scored within the brain (0 outside), RAS,
            ``cfg.spacing``, ``cfg.shape``.
        mask: (X, Y, Z) uint8 on the same grid (nearest neighbour), or None.
        affine: (4, 4) affine of the preprocessed grid.
        transform: The map back to the original grid.
    """

    image: np.ndarray
    mask: np.ndarray | None
    affine: np.ndarray
    transform: GridTransform


def _shape3(values: Iterable[Any]) -> tuple[int, int, int]:
    """Three sizes as an (X, Y, Z) int tuple; ValueError if there are not three."""
    x, y, z = (int(v) for v in values)
    return x, y, z


def _voxel_map(source_affine: np.ndarray, target_affine: np.ndarray) -> np.ndarray:
    """Target voxel -> source voxel, ``A_source^-1 @ A_target``, snapped when integral."""
    m = np.linalg.solve(np.asarray(source_affine, np.float64), np.asarray(target_affine))
    rounded = np.rint(m)
    if np.allclose(m, rounded, atol=_PERM_TOL):
        return rounded
    return m


def _signed_permutation(lin: np.ndarray) -> bool:
    r = np.rint(lin)
    return bool(
        np.allclose(lin, r, atol=_PERM_TOL)
        and np.all(np.abs(r).sum(axis=0) == 1)
        and np.all(np.abs(r).sum(axis=1) == 1)
    )


def _data(img: nib.Nifti1Image, name: str) -> np.ndarray:
    data = np.asarray(img.dataobj, dtype=np.float32)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(f"{name}: expected a 3-D image, got shape {img.shape}.")
    return data


def _name(img: nib.Nifti1Image, default: str) -> str:
    return str(img.get_filename() or default)


def _negative_share(data: np.ndarray) -> tuple[int, int]:
    """Counts of the clearly negative and the clearly nonzero voxels of an image.

    "Clearly" is beyond 5 % of the 99th percentile of the positive voxels, so that the
    small negative ripples of a spline resampling around a zero background do not count.

    Returns:
        (voxels < -f, voxels with |value| > f), ``f = 0.05 * q99(data > 0)`` (0 when no
        voxel is positive).
    """
    positive = data[data > 0]
    f = 0.05 * float(np.quantile(positive, 0.99)) if positive.size else 0.0
    return int(np.count_nonzero(data < -f)), int(np.count_nonzero(np.abs(data) > f))


def _first_brain(first: nib.Nifti1Image, cfg: PreprocessConfig) -> tuple[np.ndarray, np.ndarray]:
    """(X, Y, Z) data of the first image and its brain voxels (> the brain threshold).

    Raises :class:`InputError` for an intensity-normalised image and warns
    (:class:`~lesionuq.errors.InputWarning`) when the image has no zero background.
    """
    name = _name(first, "image 1")
    data0 = _data(first, name)
    if cfg.brain_threshold >= 0:
        negative, clear = _negative_share(data0)
        if negative > NEGATIVE_ERROR_FRACTION * max(clear, 1):
            raise InputError(
                f"{name}: {100 * negative / clear:.0f} % of its clearly nonzero voxels are "
                f"negative (min {float(data0.min()):.3g}); lesionuq expects the scan's own "
                "intensities, skull-stripped, with a background of 0, not an "
                "intensity-normalised image (z-scores): give the image before normalisation "
                "(for an experiment on such images, set preprocess.brain_threshold to their "
                "background level)."
            )
    brain0 = data0 > cfg.brain_threshold
    if not brain0.any():
        raise InputError(f"{name}: no voxel is above the brain threshold {cfg.brain_threshold:g}.")
    if brain0.mean() > BACKGROUND_WARN_FRACTION:
        warnings.warn(
            InputWarning(
                f"{name}: {100 * brain0.mean():.0f} % of the image is above the brain "
                f"threshold {cfg.brain_threshold:g}, so nearly all of it counts as brain (the "
                "field of view and the intensity normalisation follow it); lesionuq expects "
                "a skull-stripped scan with a background of 0."
            ),
            stacklevel=3,
        )
    return data0, brain0


def target_grid(
    brain: np.ndarray, affine: np.ndarray, cfg: PreprocessConfig
) -> tuple[np.ndarray, bool]:
    """The axis-aligned RAS target grid centred on the brain's world bounding box.

    Args:
        brain: (X, Y, Z) bool brain voxels of the original scan.
        affine: (4, 4) its affine.
        cfg: Target spacing and shape.

    Returns:
        The (4, 4) target affine (positive diagonal ``cfg.spacing``) and whether the brain's
        bounding box is larger than the target field of view (the brain gets cropped).
    """
    spacing = np.asarray(cfg.spacing, dtype=np.float64)
    shape = np.asarray(cfg.shape, dtype=np.float64)
    idx = np.argwhere(brain).astype(np.float64)
    world = idx @ affine[:3, :3].T + affine[:3, 3]
    lo, hi = world.min(axis=0), world.max(axis=0)
    centre = (lo + hi) / 2.0
    target = np.eye(4)
    target[:3, :3] = np.diag(spacing)
    target[:3, 3] = centre - spacing * (shape - 1) / 2.0
    lin = np.linalg.solve(affine[:3, :3], target[:3, :3])
    if _signed_permutation(lin):
        # pure reorientation at the same spacing: put the target voxels on the input lattice
        ijk = np.linalg.solve(affine[:3, :3], target[:3, 3] - affine[:3, 3])
        target[:3, 3] = affine[:3, :3] @ np.rint(ijk) + affine[:3, 3]
    cropped = bool(np.any(hi - lo + spacing > spacing * shape + 1e-6))
    return target, cropped


def _resample(
    data: np.ndarray, m: np.ndarray, shape: Sequence[int], order: int, cval: float = 0.0
) -> np.ndarray:
    out_dtype = np.float32 if order > 0 else data.dtype
    return ndi.affine_transform(
        data,
        m[:3, :3],
        offset=m[:3, 3],
        output_shape=tuple(int(s) for s in shape),
        order=order,
        mode="constant",
        cval=cval,
        prefilter=False,
        output=out_dtype,
    )


def _antialias(data: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Gaussian pre-smoothing before a downsampling ``m`` (target voxel -> input voxel)."""
    step = np.linalg.norm(m[:3, :3], axis=1)  # input voxels per target voxel, per input axis
    sigma = np.maximum(0.0, (step - 1.0) / 2.0)
    if np.all(sigma < 0.05):
        return data
    return ndi.gaussian_filter(data, sigma, mode="nearest")


def preprocess(
    images: Sequence[nib.Nifti1Image], mask: nib.Nifti1Image | None, cfg: PreprocessConfig
) -> Preprocessed:
    """Reorient, resample, crop/pad and z-score one case.

    Args:
        images: One image per sequence; the first defines the brain and the original grid.
            Each is resampled with its own affine (they need not share a grid).
        mask: Ground-truth mask (any grid; nearest neighbour), or None.
        cfg: Target spacing (mm, RAS order), shape, brain threshold.

    Returns:
        image (C, X, Y, Z) float32 z-scored within the brain and 0 outside, mask
        (X, Y, Z) uint8 or None, the target affine, and the :class:`GridTransform`.

    Raises:
        InputError: No voxel of the first image is above ``cfg.brain_threshold``.
    """
    if not images:
        raise ValueError("preprocess needs at least one image.")
    data0, brain0 = _first_brain(images[0], cfg)
    target, _ = target_grid(brain0, np.asarray(images[0].affine, dtype=np.float64), cfg)
    return _onto_grid(images, mask, cfg, target, _shape3(cfg.shape), data0, brain0)


def preprocess_to_grid(
    images: Sequence[nib.Nifti1Image],
    mask: nib.Nifti1Image | None,
    cfg: PreprocessConfig,
    target: np.ndarray,
    shape: Sequence[int],
) -> Preprocessed:
    """:func:`preprocess` onto a given grid (e.g. the grid of samples made elsewhere).

    The same resampling (linear with anti-aliasing for images, nearest for the mask),
    brain z-score and crop warning as :func:`preprocess`; only the target grid is given
    instead of chosen. On the grid :func:`preprocess` would choose, it gives the same
    arrays; an input already on ``target`` is copied exactly.

    Args:
        images: One image per sequence; the first defines the brain and the original grid.
        mask: Ground-truth mask (any grid; nearest neighbour), or None.
        cfg: Brain threshold (``spacing`` and ``shape`` are not used).
        target: (4, 4) affine of the target grid.
        shape: (X, Y, Z) of the target grid.

    Returns:
        The case on the target grid, as :func:`preprocess`.
    """
    data0, brain0 = _first_brain(images[0], cfg)
    return _onto_grid(images, mask, cfg, target, shape, data0, brain0)


def _onto_grid(
    images: Sequence[nib.Nifti1Image],
    mask: nib.Nifti1Image | None,
    cfg: PreprocessConfig,
    target: np.ndarray,
    shape: Sequence[int],
    data0: np.ndarray,
    brain0: np.ndarray,
) -> Preprocessed:
    """:func:`preprocess_to_grid` with the first image's data and brain already read."""
    first = images[0]
    affine0 = np.asarray(first.affine, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    shape = _shape3(shape)

    channels = []
    for i, img in enumerate(images):
        data = data0 if i == 0 else _data(img, _name(img, f"image {i + 1}"))
        m = _voxel_map(np.asarray(img.affine, np.float64), target)
        channels.append(_resample(_antialias(data, m), m, shape, order=1))
    image = np.stack(channels).astype(np.float32)

    brain = image[0] > cfg.brain_threshold
    kept = np.count_nonzero(brain) * abs(np.linalg.det(target[:3, :3]))
    total = np.count_nonzero(brain0) * abs(np.linalg.det(affine0[:3, :3]))
    if kept < (1.0 - CROP_WARN_FRACTION) * total:
        warnings.warn(
            InputWarning(
                f"{_name(first, 'image 1')}: {100 * (1 - kept / total):.0f}% of the brain "
                f"volume lies outside the target field of view {tuple(shape)} x "
                f"{_spacing_text(target)} mm and is cropped."
            ),
            stacklevel=2,
        )
    means, stds = [], []
    for c in range(image.shape[0]):
        vals = image[c][brain].astype(np.float64)
        mu = float(vals.mean()) if vals.size else 0.0
        sd = float(vals.std()) if vals.size else 1.0
        sd = sd if sd > 1e-8 * max(1.0, abs(mu)) else 1.0
        image[c] = np.where(brain, (image[c] - mu) / sd, 0.0)
        means.append(mu)
        stds.append(sd)

    out_mask = mask_to_grid(mask, target, shape) if mask is not None else None

    transform = GridTransform(
        original_affine=affine0,
        original_shape=_shape3(data0.shape),
        affine=target,
        shape=shape,
        mean=tuple(means),
        std=tuple(stds),
    )
    return Preprocessed(image=image, mask=out_mask, affine=target, transform=transform)


def mask_to_grid(mask: nib.Nifti1Image, affine: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """A binary mask (ground truth or ignore region) on a target grid, nearest neighbour.

    Args:
        mask: The mask on its own grid (values > 0.5 are inside).
        affine: (4, 4) target affine, e.g. :attr:`Preprocessed.affine`.
        shape: Target (X, Y, Z).

    Returns:
        (X, Y, Z) uint8 in {0, 1}.
    """
    mdata = np.asarray(mask.dataobj)
    while mdata.ndim > 3 and mdata.shape[-1] == 1:
        mdata = mdata[..., 0]
    mdata = (mdata > 0.5).astype(np.uint8)
    m = _voxel_map(np.asarray(mask.affine, np.float64), np.asarray(affine, np.float64))
    return _resample(mdata, m, shape, order=0)


def _spacing_text(affine: np.ndarray) -> str:
    """Voxel sizes of an affine as ``(1, 1, 3)`` for messages."""
    sizes = np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)
    return "(" + ", ".join(f"{v:g}" for v in sizes) + ")"


def to_original(volume: np.ndarray, transform: GridTransform, order: int = 1) -> np.ndarray:
    """Resample a map on the preprocessed grid back onto the original scan grid.

    For every original voxel ``v`` the value is read at target voxel
    ``A_target^-1 A_original v`` (nearest for ``order=0``, trilinear for ``order=1``);
    outside the preprocessed field of view it is 0.

    Args:
        volume: (X, Y, Z) on the preprocessed grid (``transform.shape``), or (C, X, Y, Z).
        transform: From :func:`preprocess`.
        order: 0 = nearest (labels; keeps the dtype), 1 = linear (float32).

    Returns:
        Array of shape ``transform.original_shape`` (with the leading C if given); its
        affine is ``transform.original_affine``.
    """
    volume = np.asarray(volume)
    if volume.shape[-3:] != tuple(transform.shape):
        raise ValueError(
            f"volume shape {volume.shape} does not match the preprocessed grid "
            f"{tuple(transform.shape)}."
        )
    if volume.ndim == 4:
        return np.stack([to_original(v, transform, order) for v in volume])
    if volume.dtype == bool:
        volume = volume.astype(np.uint8)
    m = _voxel_map(transform.affine, transform.original_affine)
    return _resample(volume, m, transform.original_shape, order=order)


def native_labels(
    labels: np.ndarray, grid_affine: np.ndarray, transform: GridTransform, native_affine: np.ndarray
) -> np.ndarray:
    """Lesion labels on the input (native) grid; every lesion keeps at least one voxel.

    The labels are resampled with nearest neighbour (``to_original(order=0)``). A lesion
    that vanishes (smaller than a native voxel) is put back at the free native voxel
    nearest, in mm, to its centroid (searched within 2 voxels of it).

    Args:
        labels: (X, Y, Z) int labels 1..N on the preprocessed grid.
        grid_affine: (4, 4) affine of the preprocessed grid.
        transform: The :class:`GridTransform` from :func:`preprocess`.
        native_affine: (4, 4) affine of the input scan.

    Returns:
        (X', Y', Z') int32 labels on the input grid, holding every id 1..N.
    """
    n = int(labels.max()) if labels.size else 0
    out = np.rint(to_original(labels.astype(np.float32), transform, order=0)).astype(np.int32)
    if n == 0:
        return out
    present = np.zeros(n + 1, dtype=bool)
    present[np.unique(out)] = True
    lost = [k for k in range(1, n + 1) if not present[k]]
    if not lost:
        return out
    centroids = ndi.center_of_mass(labels > 0, labels, lost)
    to_native = np.linalg.inv(native_affine) @ grid_affine
    spacing = np.linalg.norm(native_affine[:3, :3], axis=0)
    offsets = np.stack(np.meshgrid(*[np.arange(-2, 3)] * 3, indexing="ij"), -1).reshape(-1, 3)
    for k, c in zip(lost, centroids, strict=True):
        v = (to_native @ np.array([*c, 1.0]))[:3]
        base = np.clip(np.rint(v), 0, np.array(out.shape) - 1).astype(np.int64)
        cand = base + offsets
        ok = np.all((cand >= 0) & (cand < np.array(out.shape)), axis=1)
        cand = cand[ok]
        dist = np.linalg.norm((cand - v) * spacing, axis=1)
        cand = cand[np.argsort(dist, kind="stable")]
        free = [tuple(p) for p in cand if out[tuple(p)] == 0]
        out[free[0] if free else tuple(cand[0])] = k
    return out
