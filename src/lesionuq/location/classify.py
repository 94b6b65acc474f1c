"""Where each lesion is: the location classes of the MS consensus, after registration.

The template's maps (:mod:`lesionuq.location.atlas`) are brought onto the scan's grid with
the registration (:mod:`lesionuq.location.register`) and each lesion (a label of the
scan's lesion map) gets ONE class, the first rule that holds, in this order:

==================  ======================================================================
class               rule (distances in template mm, over the lesion's voxel centres)
==================  ======================================================================
infratentorial      at least half of its voxels in the infratentorial region (brainstem
                    and cerebellum)
periventricular     touching the lateral ventricles or within 3 mm of them
                    (:attr:`LocationRules.periventricular_mm`); the scan's own ventricles
                    when its image is given (:func:`scan_distances`)
juxtacortical       touching the cortex or within 2 mm of it (no room for white matter
                    between: :attr:`LocationRules.juxtacortical_mm`); the class holds
                    cortical lesions too (McDonald 2017 "cortical or juxtacortical");
                    with the image, the template's cortex where the scan shows no white
                    matter (:func:`scan_distances`)
deep                none of the above: deep (subcortical) white matter; not a DIS region
unknown             the registration failed or looks wrong
==================  ======================================================================

The priority follows the consensus reading (MAGNIMS 2016, McDonald 2017): a lesion that
reaches both the ventricles and the cortex counts once, as periventricular.

A region a scan does not cover cannot be judged: :func:`region_coverage` is the fraction of
each DIS region's template volume that lands inside the scan's brain support.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from lesionuq.location.atlas import load_regions
from lesionuq.location.register import Registration
from lesionuq.location.tissue import scan_ventricles, tissue_posteriors

__all__ = [
    "DIS_REGIONS",
    "LOCATIONS",
    "LesionLocations",
    "LocationRules",
    "classify_from_maps",
    "classify_lesions",
    "region_coverage",
    "scan_distances",
]

#: Location classes of a lesion (``unknown`` when the registration is not trusted).
LOCATIONS = ("periventricular", "juxtacortical", "infratentorial", "deep", "unknown")
#: The brain regions of dissemination in space (McDonald 2017; the spinal cord is not in
#: a brain scan).
DIS_REGIONS = ("periventricular", "juxtacortical", "infratentorial")


@dataclass(frozen=True)
class LocationRules:
    """The distances and fractions of the location rules (see the module's table).

    Attributes:
        periventricular_mm: A lesion voxel this close to the lateral ventricles (mm)
            makes the lesion periventricular.
        juxtacortical_mm: A lesion voxel this close to the cortex (mm) makes it
            juxtacortical.
        infratentorial_fraction: At least this fraction of voxels in the infratentorial
            region makes it infratentorial.
        min_coverage: A DIS region with less than this fraction of its template volume
            inside the scan's brain is "not assessable" (unless a lesion was found in it).
    """

    periventricular_mm: float = 3.0
    juxtacortical_mm: float = 2.0
    infratentorial_fraction: float = 0.5
    min_coverage: float = 0.5


@dataclass
class LesionLocations:
    """The location of lesions 1..N of a scan.

    Attributes:
        location: (N,) class names (:data:`LOCATIONS`).
        mni: (N, 3) centroid in MNI152 RAS mm (NaN when unknown).
        ventricle_mm: (N,) least distance of a voxel to the lateral ventricles (mm).
        cortex_mm: (N,) least distance of a voxel to the cortex (mm).
        infratentorial_fraction: (N,) fraction of voxels in the infratentorial region.
    """

    location: np.ndarray
    mni: np.ndarray
    ventricle_mm: np.ndarray
    cortex_mm: np.ndarray
    infratentorial_fraction: np.ndarray

    @classmethod
    def unknown(cls, n: int) -> LesionLocations:
        """N lesions of unknown location (a failed registration)."""
        nan = np.full(n, np.nan)
        return cls(
            np.array(["unknown"] * n, dtype=object), np.full((n, 3), np.nan), nan, nan.copy(),
            nan.copy(),
        )  # fmt: skip


def classify_from_maps(
    labels: np.ndarray,
    vdist: np.ndarray,
    cdist: np.ndarray,
    infra: np.ndarray,
    rules: LocationRules = LocationRules(),
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The class of each lesion from region maps on the lesions' own grid.

    Args:
        labels: (X, Y, Z) int lesion labels 1..N (0 background).
        vdist: (X, Y, Z) distance to the lateral ventricles (mm).
        cdist: (X, Y, Z) distance to the cortex (mm).
        infra: (X, Y, Z) infratentorial indicator (fraction in [0, 1]; > 0.5 counts).
        rules: The distances of the rules.

    Returns:
        (N,) object array of class names, (N,) least ventricle distance, (N,) least cortex
        distance, (N,) infratentorial voxel fraction.
    """
    n = int(labels.max(initial=0))
    if n == 0:
        empty = np.zeros(0)
        return np.zeros(0, dtype=object), empty, empty.copy(), empty.copy()
    ids = np.arange(1, n + 1)
    inside = labels > 0  # the lesion voxels only: ndimage sorts what it is given
    lab = labels[inside]
    vmin = np.asarray(ndi.minimum(vdist[inside], lab, ids), dtype=np.float64)
    cmin = np.asarray(ndi.minimum(cdist[inside], lab, ids), dtype=np.float64)
    frac = np.asarray(
        ndi.mean((infra[inside] > 0.5).astype(np.float32), lab, ids), dtype=np.float64
    )
    loc = np.full(n, "deep", dtype=object)
    loc[cmin <= rules.juxtacortical_mm] = "juxtacortical"
    loc[vmin <= rules.periventricular_mm] = "periventricular"
    loc[frac >= rules.infratentorial_fraction] = "infratentorial"
    return loc, vmin, cmin, frac


def scan_distances(
    image: np.ndarray,
    labels: np.ndarray,
    spacing: np.ndarray,
    priors: tuple[np.ndarray, np.ndarray, np.ndarray],
    template_vdist: np.ndarray,
    template_cortex: np.ndarray,
    template_cdist: np.ndarray,
    min_mm3: float = 500.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Distances to the scan's own lateral ventricles and cortex (mm).

    The scan's tissue classes come from its intensities and the registered template's
    priors (:func:`~lesionuq.location.tissue.tissue_posteriors`; the lesions and the
    voxels touching them are left out of the fit).

    - Ventricles: the CSF components that reach the template's
      (:func:`~lesionuq.location.tissue.scan_ventricles`); distances to them do not
      suffer the registration's residual error, nor another brain's ventricle size.
    - Cortex: the registered template's cortex where the scan does not show white matter
      (WM posterior <= 0.5): a template gyrus that lies over the scan's white matter is
      not the scan's cortex. The template only says where cortex may be (its deep grey
      nuclei and cerebellum are excluded); the scan removes what is white matter there.

    Each falls back to the template's distance when the scan gives fewer than
    ``min_mm3`` mm3 (e.g. an image without tissue contrast).

    Args:
        image: (X, Y, Z) scan intensities, 0 outside the brain.
        labels: (X, Y, Z) int lesion labels (0 background).
        spacing: (3,) voxel size (mm).
        priors: (GM, WM, CSF) template probabilities on the scan, each (X, Y, Z).
        template_vdist: (X, Y, Z) distance to the template's ventricles on the scan (mm).
        template_cortex: (X, Y, Z) the template's cortex on the scan (fraction, > 0.5).
        template_cdist: (X, Y, Z) distance to the template's cortex on the scan (mm).
        min_mm3: Least volume of the scan's own ventricles or cortex.

    Returns:
        ((X, Y, Z) ventricle distance, (X, Y, Z) cortex distance), float32 mm.
    """
    exclude = ndi.binary_dilation(labels > 0)
    post = tissue_posteriors(image, image != 0, priors, spacing, exclude=exclude)
    voxel_mm3 = float(np.prod(spacing))
    out = []
    own = (
        scan_ventricles(post[2], template_vdist),
        (template_cortex > 0.5) & (post[1] <= 0.5),
    )
    for mask, fallback in zip(own, (template_vdist, template_cdist), strict=True):
        if mask.sum() * voxel_mm3 < min_mm3:
            out.append(np.asarray(fallback, dtype=np.float32))
        else:
            out.append(ndi.distance_transform_edt(~mask, sampling=spacing).astype(np.float32))
    return out[0], out[1]


def classify_lesions(
    labels: np.ndarray,
    affine: np.ndarray,
    registration: Registration,
    rules: LocationRules = LocationRules(),
    image: np.ndarray | None = None,
) -> LesionLocations:
    """Each lesion's class and MNI centroid, through a scan-to-template registration.

    With ``image``, the distances are measured to the scan's own ventricles and cortex
    (:func:`scan_distances`: an atlas-guided tissue classification of the scan; its CSF
    in the components that come within 4 mm of the registered template's ventricles; the
    template's cortex where the scan shows no white matter), each falling back to the
    template's when fewer than 500 mm3 are found.

    Args:
        labels: (X, Y, Z) int lesion labels 1..N on the registration's grid.
        affine: (4, 4) RAS affine of ``labels`` (the registration's ``affine``).
        registration: The scan's registration; when it is not trusted
            (:attr:`Registration.ok` False) every lesion is ``unknown``.
        rules: The distances of the rules.
        image: (X, Y, Z) scan intensities (0 outside the brain), or None.

    Returns:
        The locations of lesions 1..N.
    """
    n = int(labels.max(initial=0))
    if not registration.ok:
        return LesionLocations.unknown(n)
    if tuple(labels.shape) != registration.shape:
        raise ValueError(f"labels {labels.shape} are not on the registration's grid.")
    if n == 0:
        return LesionLocations.unknown(0)
    regions = load_regions()
    vdist = registration.on_scan(regions.vdist, order=1, fill=100.0)
    cdist = registration.on_scan(regions.cdist, order=1, fill=100.0)
    if image is not None:
        spacing = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)
        priors = (
            registration.on_scan(regions.gm, order=1),
            registration.on_scan(regions.wm, order=1),
            registration.on_scan(regions.csf, order=1),
        )
        cortex = registration.on_scan(regions.cortex.astype(np.float32), order=1)
        vdist, cdist = scan_distances(image, labels, spacing, priors, vdist, cortex, cdist)
    infra = registration.on_scan(regions.infratentorial.astype(np.float32), order=1)
    loc, vmin, cmin, frac = classify_from_maps(labels, vdist, cdist, infra, rules)
    ids = np.arange(1, n + 1)
    com = np.asarray(ndi.center_of_mass(labels > 0, labels, ids), dtype=np.float64).reshape(n, 3)
    world = com @ np.asarray(affine)[:3, :3].T + np.asarray(affine)[:3, 3]
    return LesionLocations(loc, registration.to_template(world), vmin, cmin, frac)


def region_coverage(registration: Registration, brain: np.ndarray) -> dict[str, float]:
    """The fraction of each DIS region's template volume inside the scan's brain support.

    Each region (periventricular: within 3 mm of the ventricles; juxtacortical: the
    cortex; infratentorial) is brought onto the scan grid padded by 40 mm at 2 mm
    voxels, and counted inside and outside the scan's brain support.

    Args:
        registration: A trusted registration.
        brain: (X, Y, Z) bool brain support on the registration's grid.

    Returns:
        Region name -> fraction in [0, 1] (NaN for an untrusted registration).
    """
    if not registration.ok:
        return {r: float("nan") for r in DIS_REGIONS}
    regions = load_regions()
    aff = np.asarray(registration.affine, dtype=np.float64)
    step = max(1, round(2.0 / float(np.linalg.norm(aff[:3, 0]))))
    pad = 40.0
    spacing = np.linalg.norm(aff[:3, :3], axis=0) * step
    pad_vox = np.ceil(pad / spacing).astype(int)
    coarse = np.asarray(brain, bool)[::step, ::step, ::step]
    padded = np.pad(coarse, [(int(p), int(p)) for p in pad_vox])
    caff = aff.copy()
    caff[:3, :3] = aff[:3, :3] * step
    caff[:3, 3] = aff[:3, 3] - caff[:3, :3] @ pad_vox
    coarse_reg = Registration(
        registration.transform, (padded.shape[0], padded.shape[1], padded.shape[2]), caff
    )
    masks = {
        "periventricular": (regions.vdist <= 3.0) & regions.brain,
        "juxtacortical": regions.cortex,
        "infratentorial": regions.infratentorial,
    }
    out = {}
    for name, m in masks.items():
        frac = coarse_reg.on_scan(m.astype(np.float32), order=1)
        total = float(frac.sum())
        out[name] = float((frac * padded).sum() / total) if total > 0 else 0.0
    return out
