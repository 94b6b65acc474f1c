"""Bring a scan onto the MNI152 template with SimpleITK: rigid, affine, then optional B-spline.

The scan is the *fixed* image and the FLAIR-like template
(:func:`lesionuq.location.atlas.flair_like`) the *moving* one, so the transform found maps a
point of the scan to its template point: the template's region maps are resampled onto the
scan's grid with it, and a lesion's centroid is mapped to MNI coordinates with it.

=================  ======================================================================
stage              setting
=================  ======================================================================
initialisation     translation between the centres of mass of the two brain supports
grid               both images resampled to 2 mm (Gaussian anti-aliasing)
rigid              Euler 3-D, Mattes mutual information (32 bins, 10 % random samples),
                   regular-step gradient descent, 4 mm then 2 mm (smoothing 1/0 voxels)
affine             the same, 12 parameters, started from the rigid result
B-spline           optional (``deformable``): 4 x 4 x 4 control grid over the scan,
                   Mattes MI, L-BFGS-B (40 iterations) at 4 mm
quality            Dice of the scan's brain support with the template's brain support
                   brought onto the scan, within the bounding box of the scan's brain (a
                   scan covering part of the brain is not penalised); the fraction of the
                   template brain inside that box; the affine's scale factors
=================  ======================================================================

A registration *looks wrong* when the brain Dice is below :data:`MIN_BRAIN_DICE`, less than
:data:`MIN_BRAIN_SEEN` of the template brain lies within the scan's brain extent (a blob
matched to a brain; a slab too thin to register), or a scale factor of the affine lies
outside :data:`SCALE_RANGE` (a head half or double the template's size): the caller then
reports the locations as unknown.

A registration is saved to a folder (:meth:`Registration.save`) as ``transform.tfm``, an
ITK transform file that ITK-SNAP, 3D Slicer and ANTs read (scan LPS mm -> template LPS mm,
absent for a failed registration), and ``registration.json`` with its quality measures,
grid and cache key. :func:`cached_registration` registers a scan once and reuses the saved
result while the image, its affine and the registration settings are the same (the
experiment's graphs stage keeps one per scan in ``RUN/registrations/CASE``).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from lesionuq.io import atomic_write_bytes, atomic_write_text
from lesionuq.location.atlas import flair_like, load_regions

__all__ = [
    "MIN_BRAIN_DICE",
    "MIN_BRAIN_SEEN",
    "REGISTRATION_SEED",
    "SCALE_RANGE",
    "Registration",
    "cached_registration",
    "register_to_template",
    "registration_key",
]

MIN_BRAIN_DICE = 0.85
"""A registration whose brain Dice is below this is reported as failed."""
MIN_BRAIN_SEEN = 0.4
"""A registration with less of the template brain inside the scan's extent is failed."""
SCALE_RANGE = (0.7, 1.45)
"""Plausible scale factors (singular values) of the scan-to-template affine."""

REGISTRATION_MM = 2.0
"""Both images are resampled to this isotropic voxel size (mm) before registering."""

REGISTRATION_SEED = 1
"""Default seed of the metric's random sampling. Not 0: SimpleITK reads 0 as "seed from
the wall clock", which made every registration (and the locations) differ slightly from
run to run."""

CACHE_VERSION = 2
"""Enters every :func:`registration_key`: raise it when :func:`register_to_template`
changes what it computes, so saved registrations are computed again."""

TRANSFORM_FILE = "transform.tfm"
"""The saved transform (ITK text format) in a registration folder."""
INFO_FILE = "registration.json"
"""The saved quality measures, grid and key in a registration folder (written last)."""

_LPS = np.diag([-1.0, -1.0, 1.0])


def to_sitk(data: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """A SimpleITK image of an (X, Y, Z) array with a RAS voxel-to-world ``affine`` (4, 4).

    Raises:
        ValueError: The affine has shear (its axes are not orthogonal).
    """
    m = _LPS @ np.asarray(affine, dtype=np.float64)[:3, :3]
    spacing = np.linalg.norm(m, axis=0)
    direction = m / spacing
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
        raise ValueError("the grid's affine has shear; resample it onto an orthogonal grid.")
    img = sitk.GetImageFromArray(
        np.ascontiguousarray(np.asarray(data, np.float32).transpose(2, 1, 0))
    )
    img.SetSpacing([float(s) for s in spacing])
    img.SetDirection([float(v) for v in direction.ravel()])
    img.SetOrigin([float(v) for v in _LPS @ np.asarray(affine, dtype=np.float64)[:3, 3]])
    return img


def from_sitk(img: sitk.Image) -> np.ndarray:
    """The (X, Y, Z) array of a SimpleITK image."""
    return np.asarray(sitk.GetArrayFromImage(img)).transpose(2, 1, 0)


@dataclass
class Registration:
    """A scan-to-template registration.

    Attributes:
        transform: SimpleITK transform, scan LPS mm -> template LPS mm.
        shape: (X, Y, Z) of the scan grid it was computed on; ``affine`` its (4, 4) RAS
            affine.
        brain_dice: Dice of the scan's brain support with the template's brain brought onto
            the scan grid.
        scales: (3,) singular values of the scan-to-template affine's linear part.
        seconds: Wall time.
        deformable: Whether a B-spline stage followed the affine.
        metric: Final Mattes MI of the last stage (more negative is better).
        error: Why the registration failed (an exception message), or None.
        brain_seen: Fraction of the template brain (on the scan grid) inside the bounding
            box of the scan's brain: a partial scan sees part of it, a registration that
            matched a small blob to the brain sees little.
    """

    transform: sitk.Transform | None
    shape: tuple[int, int, int]
    affine: np.ndarray
    brain_dice: float = 0.0
    scales: np.ndarray = field(default_factory=lambda: np.zeros(3))
    seconds: float = 0.0
    deformable: bool = False
    metric: float = float("nan")
    error: str | None = None
    brain_seen: float = 1.0

    @property
    def ok(self) -> bool:
        """True when the registration ran and passes the quality checks."""
        lo, hi = SCALE_RANGE
        return (
            self.transform is not None
            and self.error is None
            and self.brain_dice >= MIN_BRAIN_DICE
            and self.brain_seen >= MIN_BRAIN_SEEN
            and bool(np.all((self.scales >= lo) & (self.scales <= hi)))
        )

    def problem(self) -> str | None:
        """A sentence saying why the registration is not trusted, or None when it is."""
        if self.ok:
            return None
        if self.error is not None or self.transform is None:
            return f"the registration to the MNI152 template failed ({self.error})"
        return (
            f"the registration to the MNI152 template looks wrong (brain Dice "
            f"{self.brain_dice:.3f}, below {MIN_BRAIN_DICE}, or {self.brain_seen:.0%} of "
            f"the template brain within the scan, below {MIN_BRAIN_SEEN:.0%}, or scale "
            f"factors {', '.join(f'{s:.2f}' for s in self.scales)} outside {SCALE_RANGE})"
        )

    def to_template(self, points: np.ndarray) -> np.ndarray:
        """Scan RAS mm points (N, 3) -> template (MNI) RAS mm points (N, 3)."""
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        if self.transform is None:
            return np.full(pts.shape, np.nan)
        lps = pts @ _LPS.T
        out = np.array([self.transform.TransformPoint([float(v) for v in p]) for p in lps])
        return out.reshape(-1, 3) @ _LPS.T

    def on_scan(self, volume: np.ndarray, order: int = 1, fill: float = 0.0) -> np.ndarray:
        """A template-grid map (197, 233, 189) resampled onto the scan grid (X, Y, Z).

        Args:
            volume: Template-grid map.
            order: 0 nearest neighbour, 1 linear.
            fill: Value outside the template.
        """
        if self.transform is None:
            raise RuntimeError("no transform: the registration failed.")
        regions = load_regions()
        moving = to_sitk(volume.astype(np.float32), regions.affine)
        ref = to_sitk(np.zeros(self.shape, np.float32), self.affine)
        interp = sitk.sitkNearestNeighbor if order == 0 else sitk.sitkLinear
        out = sitk.Resample(moving, ref, self.transform, interp, float(fill), sitk.sitkFloat32)
        return from_sitk(out)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (the quality measures)."""
        return {
            "method": "SimpleITK rigid+affine" + ("+B-spline" if self.deformable else ""),
            "ok": self.ok,
            "brain_dice": round(float(self.brain_dice), 4),
            "brain_seen": round(float(self.brain_seen), 4),
            "scales": [round(float(s), 4) for s in self.scales],
            "mattes_mi": None if not np.isfinite(self.metric) else round(float(self.metric), 4),
            "seconds": round(float(self.seconds), 2),
            "error": self.error,
        }

    def save(self, folder: str | Path, key: str | None = None) -> Path:
        """Write the registration to ``folder`` (created), each file atomically.

        ``transform.tfm`` first (none for a failed registration; an earlier one is
        removed), then ``registration.json``, which holds the fields at full precision,
        ``key`` and the SHA-256 of the transform file, so :meth:`load` never pairs a
        transform with the measures of another registration. Two processes saving the
        same registration at once both succeed.

        Args:
            folder: The registration's folder, e.g. ``RUN/registrations/CASE``.
            key: The cache key (:func:`registration_key`) checked by :meth:`load`.

        Returns:
            ``folder`` as a Path.
        """
        folder = Path(folder)
        tfm_sha = None
        if self.transform is not None:
            with tempfile.TemporaryDirectory(prefix="lesionuq-tfm-") as tmp:
                path = Path(tmp) / TRANSFORM_FILE  # ITK picks the text format by extension
                sitk.WriteTransform(self.transform, str(path))
                data = path.read_bytes()
            atomic_write_bytes(folder / TRANSFORM_FILE, data)
            tfm_sha = hashlib.sha256(data).hexdigest()
        info = {
            "format": CACHE_VERSION,
            "key": key,
            "transform": TRANSFORM_FILE if tfm_sha is not None else None,
            "transform_sha256": tfm_sha,
            "ok": self.ok,
            "shape": list(self.shape),
            "affine": np.asarray(self.affine, dtype=np.float64).tolist(),
            "brain_dice": float(self.brain_dice),
            "brain_seen": float(self.brain_seen),
            "scales": [float(s) for s in np.asarray(self.scales).ravel()],
            "seconds": float(self.seconds),
            "deformable": bool(self.deformable),
            "metric": float(self.metric) if np.isfinite(self.metric) else None,
            "error": self.error,
        }
        atomic_write_text(folder / INFO_FILE, json.dumps(info, indent=1) + "\n")
        if tfm_sha is None:
            (folder / TRANSFORM_FILE).unlink(missing_ok=True)
        return folder

    @classmethod
    def load(cls, folder: str | Path, key: str | None = None) -> Registration:
        """Read a registration written by :meth:`save`.

        Args:
            folder: The registration's folder.
            key: When given, the saved key must be this one.

        Returns:
            The registration (a failed one has ``error`` set and no transform).

        Raises:
            FileNotFoundError: Nothing saved there.
            ValueError: The entry is damaged or partial (unreadable JSON, a missing
                field, a transform file missing or not the one the JSON names), or its
                key is not ``key``.
        """
        folder = Path(folder)
        info = json.loads((folder / INFO_FILE).read_text())  # ValueError when damaged
        if not isinstance(info, dict):
            raise ValueError(f"{folder / INFO_FILE}: not a JSON object.")
        if key is not None and info.get("key") != key:
            raise ValueError(f"{folder}: saved for another image or other settings.")
        try:
            transform = None
            if info["transform"] is not None:
                if info["transform"] != TRANSFORM_FILE:
                    raise ValueError(f"{folder / INFO_FILE}: names another transform file.")
                data = (folder / TRANSFORM_FILE).read_bytes()
                if hashlib.sha256(data).hexdigest() != info["transform_sha256"]:
                    raise ValueError(f"{folder}: the transform file is not the saved one.")
                transform = _read_transform(data)
            shape = tuple(int(n) for n in info["shape"])
            affine = np.asarray(info["affine"], dtype=np.float64)
            if len(shape) != 3 or affine.shape != (4, 4):
                raise ValueError(f"{folder / INFO_FILE}: a grid that is not 3-D.")
            metric = info["metric"]
            error = info["error"]
            return cls(
                transform,
                (shape[0], shape[1], shape[2]),
                affine,
                brain_dice=float(info["brain_dice"]),
                scales=np.asarray(info["scales"], dtype=np.float64).reshape(3),
                seconds=float(info["seconds"]),
                deformable=bool(info["deformable"]),
                metric=float("nan") if metric is None else float(metric),
                error=None if error is None else str(error),
                brain_seen=float(info["brain_seen"]),
            )
        except FileNotFoundError as exc:
            raise ValueError(f"{folder}: the transform file is missing.") from exc
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{folder / INFO_FILE}: damaged ({exc!r}).") from exc


def _read_transform(data: bytes) -> sitk.Transform:
    """A SimpleITK transform from the bytes of an ITK ``.tfm`` file.

    Raises:
        ValueError: ITK cannot read it.
    """
    with tempfile.TemporaryDirectory(prefix="lesionuq-tfm-") as tmp:
        path = Path(tmp) / TRANSFORM_FILE
        path.write_bytes(data)
        try:
            return sitk.ReadTransform(str(path))
        except RuntimeError as exc:  # ITK's exception
            raise ValueError("the transform file cannot be read by ITK.") from exc


def _coarse(img: sitk.Image, spacing_mm: float) -> sitk.Image:
    """``img`` resampled to isotropic ``spacing_mm`` (Gaussian anti-aliasing first)."""
    old = np.array(img.GetSpacing())
    size = np.array(img.GetSize())
    if np.all(old >= spacing_mm - 1e-6):
        return img
    sigma = [float(np.sqrt(max(spacing_mm**2 - s**2, 0.0)) / 2.355) for s in old]
    smooth = sitk.SmoothingRecursiveGaussian(img, sigma)
    new_size = [max(1, round(n * s / spacing_mm)) for n, s in zip(size, old, strict=True)]
    return sitk.Resample(
        smooth,
        new_size,
        sitk.Transform(),
        sitk.sitkLinear,
        img.GetOrigin(),
        [spacing_mm] * 3,
        img.GetDirection(),
        0.0,
        sitk.sitkFloat32,
    )


@functools.lru_cache(maxsize=1)
def _moving() -> sitk.Image:
    """The FLAIR-like template at :data:`REGISTRATION_MM` (computed once per process)."""
    regions = load_regions()
    img = to_sitk(flair_like(regions).get_fdata(dtype=np.float32), regions.affine)
    return _coarse(img, REGISTRATION_MM)


def _brain_com_lps(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    idx = np.argwhere(mask).mean(axis=0)
    return _LPS @ (affine[:3, :3] @ idx + affine[:3, 3])


@contextlib.contextmanager
def _single_threaded() -> Iterator[None]:
    """ITK's global default thread count set to 1 for the block, then restored.

    A multi-threaded metric sums its samples in a varying order, so even with a fixed
    seed two registrations of one scan differed slightly (1e-8 in the parameters; 13 of
    1737 lesion classes moved on the cross-family bench). The method's own
    ``SetNumberOfThreads`` does not reach the metric; the global default does. A
    registration then takes about 1.3x as long (measured on the bench's graphs stage).
    """
    before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before)


def _method(
    shrink: tuple[int, ...], sigmas: tuple[int, ...], seed: int
) -> sitk.ImageRegistrationMethod:
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.1, seed)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetShrinkFactorsPerLevel(list(shrink))
    reg.SetSmoothingSigmasPerLevel(list(sigmas))
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    return reg


def register_to_template(
    image: np.ndarray,
    affine: np.ndarray,
    brain: np.ndarray | None = None,
    deformable: bool = False,
    seed: int = REGISTRATION_SEED,
) -> Registration:
    """Register a scan to the MNI152 template (see the module's table of stages).

    Args:
        image: (X, Y, Z) scan intensities (any scale; FLAIR expected).
        affine: (4, 4) RAS voxel-to-world affine of ``image``.
        brain: (X, Y, Z) bool brain support; default ``image != 0`` (the preprocessed
            scans are 0 outside the brain).
        deformable: Add the B-spline stage after the affine.
        seed: Seed of the metric's random sampling (not 0, which SimpleITK reads as
            the wall clock: the result would change from run to run).

    Returns:
        The registration with its quality measures; on an exception, one with ``error``
        set and no transform (never raises for a bad image).
    """
    with _single_threaded():
        return _register(image, affine, brain, deformable, seed)


def _register(
    image: np.ndarray,
    affine: np.ndarray,
    brain: np.ndarray | None,
    deformable: bool,
    seed: int,
) -> Registration:
    """:func:`register_to_template`'s work, in the caller's ITK threading."""
    t0 = time.perf_counter()
    affine = np.asarray(affine, dtype=np.float64)
    shape = (int(image.shape[0]), int(image.shape[1]), int(image.shape[2]))
    result = Registration(None, shape, affine, deformable=deformable)
    try:
        regions = load_regions()
        mask = (image != 0) if brain is None else np.asarray(brain, bool)
        if mask.sum() < 1000:
            raise ValueError("fewer than 1000 brain voxels")
        img = np.asarray(image, np.float32)
        lo = float(np.percentile(img[mask], 0.5))
        fixed_data = np.where(mask, img - lo + 1.0, 0.0).astype(np.float32)
        fixed = _coarse(to_sitk(fixed_data, affine), REGISTRATION_MM)
        moving = _moving()

        centre = _brain_com_lps(mask, affine)
        shift = _brain_com_lps(regions.brain, regions.affine) - centre
        rigid = sitk.Euler3DTransform()
        rigid.SetCenter([float(v) for v in centre])
        rigid.SetTranslation([float(v) for v in shift])
        reg = _method((2, 1), (1, 0), seed)
        reg.SetOptimizerAsRegularStepGradientDescent(1.0, 1e-3, 150, relaxationFactor=0.6)
        reg.SetOptimizerScalesFromPhysicalShift()
        reg.SetInitialTransform(rigid, inPlace=True)
        reg.Execute(fixed, moving)

        aff = sitk.AffineTransform(3)
        aff.SetCenter(rigid.GetCenter())
        aff.SetMatrix(rigid.GetMatrix())
        aff.SetTranslation(rigid.GetTranslation())
        reg = _method((2, 1), (1, 0), seed)
        reg.SetOptimizerAsRegularStepGradientDescent(1.0, 1e-3, 150, relaxationFactor=0.6)
        reg.SetOptimizerScalesFromPhysicalShift()
        reg.SetInitialTransform(aff, inPlace=True)
        reg.Execute(fixed, moving)
        metric = reg.GetMetricValue()
        transform: sitk.Transform = sitk.CompositeTransform([aff])
        if deformable:
            bspline = sitk.BSplineTransformInitializer(fixed, [4, 4, 4], order=3)
            reg = _method((2,), (1,), seed)
            reg.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=40)
            reg.SetMovingInitialTransform(aff)
            reg.SetInitialTransform(bspline, inPlace=True)
            reg.Execute(fixed, moving)
            metric = reg.GetMetricValue()
            transform = sitk.CompositeTransform([aff, bspline])
        result.transform = transform
        result.metric = float(metric)
        result.scales = np.linalg.svd(np.asarray(aff.GetMatrix()).reshape(3, 3), compute_uv=False)
        warped = result.on_scan(regions.brain.astype(np.float32), order=1) > 0.5
        box = ndi.find_objects(mask.astype(np.uint8))[0]  # a partial scan: its extent only
        inter = float(np.logical_and(warped[box], mask[box]).sum())
        result.brain_dice = 2.0 * inter / float(warped[box].sum() + mask[box].sum())
        result.brain_seen = float(warped[box].sum()) / max(float(warped.sum()), 1.0)
    except (RuntimeError, ValueError) as exc:  # ITK raises RuntimeError
        result.transform, result.error = None, str(exc).strip().splitlines()[-1][:300]
    result.seconds = time.perf_counter() - t0
    return result


def registration_key(
    image: np.ndarray, affine: np.ndarray, deformable: bool = False, seed: int = REGISTRATION_SEED
) -> str:
    """The cache key of a registration: what :func:`register_to_template` depends on.

    Args:
        image: (X, Y, Z) scan intensities (its dtype, shape and bytes enter).
        affine: (4, 4) RAS affine of ``image``.
        deformable: The B-spline stage setting.
        seed: The metric's sampling seed.

    Returns:
        A SHA-256 hex digest of the image, the affine, the settings
        (:data:`REGISTRATION_MM`, ``deformable``, ``seed``) and :data:`CACHE_VERSION`.
    """
    data = np.ascontiguousarray(image)
    settings = {
        "version": CACHE_VERSION,
        "registration_mm": REGISTRATION_MM,
        "deformable": bool(deformable),
        "seed": int(seed),
        "dtype": data.dtype.str,
        "shape": list(data.shape),
    }
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    h.update(np.ascontiguousarray(affine, dtype=np.float64).tobytes())
    h.update(data.tobytes())
    return h.hexdigest()


def cached_registration(
    folder: str | Path,
    image: np.ndarray,
    affine: np.ndarray,
    deformable: bool = False,
    seed: int = REGISTRATION_SEED,
) -> Registration:
    """:func:`register_to_template` of a brain-extracted scan, saved in ``folder`` and reused.

    The saved registration is reused when its key (:func:`registration_key`) is that of
    ``image``, ``affine`` and the settings; otherwise (none saved, another image, other
    settings, a damaged or partial entry) the scan is registered and saved again. A
    failed registration is saved too: it would fail again. Two processes registering the
    same scan at once both compute it and both save it (each file is replaced
    atomically); neither fails.

    Args:
        folder: The scan's registration folder, e.g. ``RUN/registrations/CASE``.
        image: (X, Y, Z) scan intensities, 0 outside the brain (the brain support is
            ``image != 0``, as in :func:`~lesionuq.location.features.locate_lesions`).
        affine: (4, 4) RAS affine of ``image``.
        deformable: Add the B-spline stage.
        seed: Seed of the metric's random sampling (not 0, which SimpleITK reads as
            the wall clock: the result would change from run to run).

    Returns:
        The registration (loaded or computed).
    """
    key = registration_key(image, affine, deformable, seed)
    try:
        return Registration.load(folder, key=key)
    except (OSError, ValueError):  # none saved, another key, or a damaged entry
        pass
    reg = register_to_template(image, affine, image != 0, deformable=deformable, seed=seed)
    reg.save(folder, key=key)
    return reg
