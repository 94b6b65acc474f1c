r"""Voxel-wise uncertainty from T Monte Carlo samples of a binary segmentation (paper 2.1).

For a voxel v and T stochastic forward passes with softmax outputs
:math:`p_t(c \mid v)`, :math:`c \in \{0 \text{ (background)}, 1 \text{ (lesion)}\}`,
write :math:`\bar p_c = \frac1T \sum_t p_t(c \mid v)` and :math:`\bar p = \bar p_1`:

- mean probability (``prob``): :math:`\bar p`; segmentation ``seg`` = :math:`\bar p > 0.5`
  (the argmax of the mean softmax);
- entropy: :math:`H = -\sum_c \bar p_c \log \bar p_c
  = -\bar p \log \bar p - (1 - \bar p)\log(1 - \bar p)` (natural log, :math:`0 \log 0 = 0`);
- variance: :math:`\sigma^2 = \frac1T \sum_t (p_t(1 \mid v) - \bar p)^2` (population
  variance of the foreground probability, 0 when T = 1);
- PCS (predicted confidence score): :math:`\max_c \bar p_c = \max(\bar p, 1 - \bar p)`,
  a confidence in [0.5, 1]; methods that need an uncertainty use :math:`1 - \text{PCS}`.

The maps are computed from streaming sums (:class:`RunningMoments`), so the T samples are
never held in memory together. :func:`load_sample_stack` reads samples produced by any
other model (deep ensembles, test-time augmentation, nnU-Net) for the same maps.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from lesionuq.io import InputError, load_nifti

__all__ = [
    "RunningMoments",
    "VoxelMaps",
    "entropy",
    "load_sample_stack",
    "maps_from_samples",
    "nifti_files",
    "pcs",
    "variance",
]

#: Probabilities may exceed [0, 1] by this much (float rounding in other tools) and are
#: then clipped; anything further out is an error.
PROB_TOL = 1e-4


def entropy(prob: np.ndarray) -> np.ndarray:
    r"""Binary entropy of the mean softmax, natural log.

    :math:`H = -\bar p \log \bar p - (1 - \bar p) \log (1 - \bar p)`, with
    :math:`0 \log 0 = 0`; so H is in :math:`[0, \log 2]`.

    Args:
        prob: Mean foreground probability :math:`\bar p`, any shape, values in [0, 1].

    Returns:
        H, float32, same shape.
    """
    p = np.clip(np.asarray(prob, dtype=np.float64), 0.0, 1.0)
    q = 1.0 - p
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -(np.where(p > 0, p * np.log(p), 0.0) + np.where(q > 0, q * np.log(q), 0.0))
    return h.astype(np.float32)


def pcs(prob: np.ndarray) -> np.ndarray:
    r"""Predicted confidence score :math:`\max_c \bar p_c = \max(\bar p, 1 - \bar p)`.

    Args:
        prob: Mean foreground probability :math:`\bar p`, any shape.

    Returns:
        PCS in [0.5, 1], float32, same shape (a confidence: 1 - PCS is the uncertainty).
    """
    p = np.asarray(prob, dtype=np.float64)
    return np.maximum(p, 1.0 - p).astype(np.float32)


def variance(samples: np.ndarray) -> np.ndarray:
    r"""Population variance over samples, :math:`\frac1T \sum_t (p_t - \bar p)^2`.

    Args:
        samples: (T, ...) foreground probabilities :math:`p_t(1 \mid v)`.

    Returns:
        float32 of shape ``samples.shape[1:]`` (zeros when T = 1).
    """
    return np.var(np.asarray(samples, dtype=np.float64), axis=0).astype(np.float32)


@dataclass
class VoxelMaps:
    r"""Voxel-wise maps of one case, each (X, Y, Z) float32.

    Attributes:
        prob: Mean foreground probability :math:`\bar p`.
        entropy: Entropy of the mean softmax (natural log).
        variance: Population variance of the foreground probability over the T samples.
        pcs: Predicted confidence score :math:`\max(\bar p, 1 - \bar p)`.
        n_samples: T, the number of samples the maps come from.
    """

    prob: np.ndarray
    entropy: np.ndarray
    variance: np.ndarray
    pcs: np.ndarray
    n_samples: int = 0

    @property
    def seg(self) -> np.ndarray:
        """Segmentation: (X, Y, Z) bool, ``prob > 0.5`` (argmax of the mean softmax)."""
        return self.prob > 0.5

    @property
    def shape(self) -> tuple[int, ...]:
        """Spatial shape (X, Y, Z)."""
        return tuple(self.prob.shape)

    @classmethod
    def load(cls, folder: str | Path) -> VoxelMaps:
        """Read the maps saved as ``FOLDER/{prob,entropy,variance,pcs}.nii.gz``.

        Args:
            folder: E.g. a case folder of a run's ``sample`` stage.

        Returns:
            The maps, each (X, Y, Z) float32 (``n_samples`` is not stored: 0).
        """

        def read(name: str) -> np.ndarray:
            img = nib.load(str(Path(folder) / f"{name}.nii.gz"))
            return np.asarray(img.dataobj, dtype=np.float32)  # type: ignore[attr-defined]

        return cls(
            prob=read("prob"), entropy=read("entropy"), variance=read("variance"), pcs=read("pcs")
        )

    def items(self) -> list[tuple[str, np.ndarray]]:
        """``(name, map)`` for prob, seg (uint8), entropy, variance and pcs (file names)."""
        return [
            ("prob", self.prob),
            ("seg", self.seg.astype(np.uint8)),
            ("entropy", self.entropy),
            ("variance", self.variance),
            ("pcs", self.pcs),
        ]


class RunningMoments:
    r"""Streaming first and second moments of the foreground probability.

    Keeps :math:`S_1 = \sum_t p_t` and :math:`S_2 = \sum_t p_t^2` per voxel in float64
    (two volumes, whatever T), then :math:`\bar p = S_1 / T` and
    :math:`\sigma^2 = \max(S_2 / T - \bar p^2, 0)`.

    Example:
        >>> rm = RunningMoments()
        >>> _ = rm.update(np.full((2, 1, 1, 1), 0.2)).update(np.full((1, 1, 1, 1), 0.8))
        >>> round(float(rm.finalize().prob[0, 0, 0]), 6)
        0.4
    """

    def __init__(self) -> None:
        self.count_ = 0
        self.sum_: torch.Tensor | None = None
        self.sum_sq_: torch.Tensor | None = None

    def update(self, p_fg: torch.Tensor | np.ndarray) -> RunningMoments:
        """Add B samples.

        Args:
            p_fg: (B, X, Y, Z) foreground probabilities of B samples (any device).

        Returns:
            self.
        """
        p = torch.as_tensor(p_fg)
        if p.ndim != 4:
            raise ValueError(f"expected (B, X, Y, Z) samples, got shape {tuple(p.shape)}.")
        if self.sum_ is not None and tuple(p.shape[1:]) != tuple(self.sum_.shape):
            raise ValueError(
                f"sample shape {tuple(p.shape[1:])} differs from {tuple(self.sum_.shape)}."
            )
        p = p.detach().to(torch.float64)
        if self.sum_ is None:
            self.sum_ = torch.zeros(p.shape[1:], dtype=torch.float64, device=p.device)
            self.sum_sq_ = torch.zeros_like(self.sum_)
        self.sum_ += p.sum(0)
        self.sum_sq_ += (p * p).sum(0)  # type: ignore[operator]
        self.count_ += int(p.shape[0])
        return self

    def finalize(self) -> VoxelMaps:
        """The voxel maps of the samples seen so far (see the module docstring)."""
        if self.count_ == 0 or self.sum_ is None or self.sum_sq_ is None:
            raise ValueError("no samples were given.")
        mean = (self.sum_ / self.count_).clamp_(0.0, 1.0)
        var = (self.sum_sq_ / self.count_ - mean * mean).clamp_(min=0.0)
        prob = mean.cpu().numpy()
        return VoxelMaps(
            prob=prob.astype(np.float32),
            entropy=entropy(prob),
            variance=var.cpu().numpy().astype(np.float32),
            pcs=pcs(prob),
            n_samples=self.count_,
        )


def maps_from_samples(samples: Iterable[np.ndarray]) -> VoxelMaps:
    """Voxel maps from T foreground-probability maps, streamed one at a time.

    Args:
        samples: T arrays, each (X, Y, Z) with values in [0, 1] (e.g. from
            :func:`load_sample_stack`).

    Returns:
        The same :class:`VoxelMaps` as MC sampling would give from these samples.
    """
    rm = RunningMoments()
    for s in samples:
        rm.update(np.asarray(s, dtype=np.float32)[None])
    return rm.finalize()


def nifti_files(folder: Path) -> list[Path]:
    """The ``.nii`` / ``.nii.gz`` files of ``folder``, sorted by name."""
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.name.endswith((".nii", ".nii.gz"))
    )


def _check_prob(data: np.ndarray, where: str) -> np.ndarray:
    if not np.all(np.isfinite(data)):
        raise InputError(f"{where}: the probability map contains NaN or infinite values.")
    lo, hi = float(data.min()), float(data.max())
    if lo < -PROB_TOL or hi > 1.0 + PROB_TOL:
        raise InputError(
            f"{where}: values must be probabilities in [0, 1], found [{lo:g}, {hi:g}]."
        )
    return np.clip(data, 0.0, 1.0)


def load_sample_stack(path: str | Path) -> Iterator[np.ndarray]:
    """Read T foreground-probability maps produced by any model (bring your own model).

    Args:
        path: A folder of 3-D NIfTI files (``*.nii`` / ``*.nii.gz``, one sample each, read
            in sorted name order) or one 4-D NIfTI whose last axis indexes the samples.

    Returns:
        An iterator over the T samples, each (X, Y, Z) float32 in [0, 1], read lazily
        (one sample in memory at a time). The folder listing, the 4-D header and the
        file count are checked at once; each sample's values, shape and affine are
        checked when it is read.

    Raises:
        InputError: Missing path, empty folder, wrong dimensionality, shapes or affines
            that differ between files, values outside [0, 1] or not finite.
    """
    path = Path(path)
    if path.is_dir():
        files = nifti_files(path)
        if not files:
            raise InputError(f"{path}: the folder holds no NIfTI files (.nii or .nii.gz).")
        return _iter_folder(files)
    img = load_nifti(path)
    if len(img.shape) not in (3, 4):
        raise InputError(f"{path}: expected a 4-D NIfTI (X, Y, Z, samples), got shape {img.shape}.")
    if len(img.shape) == 4 and img.shape[3] == 0:
        raise InputError(f"{path}: the 4-D NIfTI holds no samples (last axis is empty).")
    return _iter_4d(img, path)


def _iter_folder(files: list[Path]) -> Iterator[np.ndarray]:
    ref: nib.Nifti1Image | None = None
    for f in files:
        img = load_nifti(f)
        if len(img.shape) != 3 and not (len(img.shape) == 4 and img.shape[3] == 1):
            raise InputError(f"{f}: expected a 3-D probability map, got shape {img.shape}.")
        if ref is None:
            ref = img
        elif tuple(img.shape[:3]) != tuple(ref.shape[:3]):
            raise InputError(
                f"{f}: shape {tuple(img.shape[:3])} does not match {files[0].name} "
                f"shape {tuple(ref.shape[:3])}."
            )
        elif not np.allclose(img.affine, ref.affine, atol=1e-3):
            raise InputError(f"{f}: affine does not match the affine of {files[0].name}.")
        data = np.asarray(img.dataobj, dtype=np.float32).reshape(img.shape[:3])
        yield _check_prob(data, str(f)).astype(np.float32, copy=False)


def _iter_4d(img: nib.Nifti1Image, path: Path) -> Iterator[np.ndarray]:
    if len(img.shape) == 3:
        yield _check_prob(np.asarray(img.dataobj, dtype=np.float32), str(path))
        return
    for t in range(img.shape[3]):
        data = np.asarray(img.dataobj[..., t], dtype=np.float32)
        yield _check_prob(data, f"{path} (sample {t})").astype(np.float32, copy=False)
