"""Template-space regions of lesion location, on the MNI152 2009 template.

Everything comes from the maps shipped inside nilearn (``load_mni152_template``,
``load_mni152_gm_template``, ``load_mni152_wm_template``; no download) and from template
coordinates (RAS mm, MNI152 2009c nonlinear symmetric, 1 mm):

=================  ======================================================================
map                definition (template space)
=================  ======================================================================
brain              the skull-stripped template's support (T1 > 0)
CSF                brain minus GM minus WM probability
lateral            the two largest components of deep CSF (CSF > 0.5, > 15 mm from the
ventricles         brain's outer surface, 3 <= abs(x) <= 38, -65 <= y <= 40, -5 <= z <= 40
                   mm); the same construction the phantom draws its lesions around
deep grey          GM > 0.5 in the box abs(x) <= 33, -40 <= y <= 28, -12 <= z <= 20 mm
nuclei             (caudate, putamen, pallidum, thalamus; the insula lies at abs(x) >= 35,
                   the cingulate above z = 20, the hippocampus and amygdala below -12)
cortex             GM > 0.5 outside the deep grey nuclei and the infratentorial region
infratentorial     brainstem: abs(x) <= 12, -45 <= y <= -15, z <= -8 mm; cerebellum:
                   y <= -38 and below the tentorium z <= -5 - 0.45 abs(x) mm (a tent
                   fitted by eye to the CSF gap between cerebellum and the occipital and
                   temporal lobes in the template: about -10 mm beside the midline,
                   -23 mm at abs(x) = 40)
=================  ======================================================================

The distances to the ventricles and to the cortex (mm, Euclidean distance transforms) are
what the lesion rules of :mod:`lesionuq.location.classify` read after registration.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from lesionuq.data.phantom.anatomy import lateral_ventricles

__all__ = [
    "DEEP_GREY_BOX",
    "TemplateRegions",
    "flair_like",
    "infratentorial_rule",
    "load_regions",
]

DEEP_GREY_BOX = ((-33.0, 33.0), (-40.0, 28.0), (-12.0, 20.0))
"""RAS mm (x, y, z) ranges of the deep grey nuclei: grey matter there is not cortex."""


@dataclass(frozen=True)
class TemplateRegions:
    """The MNI152 template and its location maps at 1 mm (template voxel = mm).

    Attributes:
        affine: (4, 4) voxel -> RAS mm affine of the template (1 mm, axis-aligned).
        t1: (197, 233, 189) float32 template T1 intensity; the other maps alike.
        gm: GM probability; ``wm`` WM probability; ``csf`` the brain's remainder.
        brain: bool brain support.
        ventricles: bool lateral ventricles.
        cortex: bool cortical grey matter.
        infratentorial: bool brainstem and cerebellum (within the brain).
        vdist: float32 distance to the lateral ventricles (mm, 0 inside).
        cdist: float32 distance to the cortex (mm, 0 inside).
    """

    affine: np.ndarray
    t1: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    brain: np.ndarray
    ventricles: np.ndarray
    cortex: np.ndarray
    infratentorial: np.ndarray
    vdist: np.ndarray
    cdist: np.ndarray

    def world_axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The (X,), (Y,), (Z,) RAS mm coordinates of the template's voxel axes."""
        o = self.affine[:3, 3]
        x, y, z = (np.arange(n) + o[a] for a, n in enumerate(self.t1.shape))
        return x, y, z


def infratentorial_rule(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """The infratentorial rule on RAS mm coordinates (broadcast arrays), brain not applied.

    Args:
        x: RAS x (mm), any shape broadcastable with ``y`` and ``z``.
        y: RAS y (mm).
        z: RAS z (mm).

    Returns:
        bool array of the broadcast shape: brainstem box or below the tentorium.
    """
    brainstem = (np.abs(x) <= 12) & (y >= -45) & (y <= -15) & (z <= -8)
    cerebellum = (y <= -38) & (z <= -5.0 - 0.45 * np.abs(x))
    return np.asarray(brainstem | cerebellum)


@functools.lru_cache(maxsize=1)
def load_regions() -> TemplateRegions:
    """The template's location maps (computed once per process, about 2 s)."""
    # lazy: nilearn.datasets takes 0.5-1.5 s to import (scikit-learn, its fetchers), and
    # every pipeline command imports this module (lesionuq.pipeline.graphs), most locate none
    from nilearn import datasets

    img = datasets.load_mni152_template(resolution=1)
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.allclose(affine[:3, :3], np.eye(3)):
        raise RuntimeError("unexpected MNI152 template affine (expected 1 mm RAS).")
    t1 = np.asarray(img.get_fdata(dtype=np.float32))
    gm = datasets.load_mni152_gm_template(resolution=1).get_fdata(dtype=np.float32)
    wm = datasets.load_mni152_wm_template(resolution=1).get_fdata(dtype=np.float32)
    brain = t1 > 0
    gm, wm = gm * brain, wm * brain
    csf = np.clip(brain.astype(np.float32) - gm - wm, 0.0, 1.0)
    depth = ndi.distance_transform_edt(np.pad(brain, 1))[1:-1, 1:-1, 1:-1].astype(np.float32)
    (x0, x1), (y0, y1), (z0, z1) = DEEP_GREY_BOX

    o = affine[:3, 3]
    x, y, z = (np.arange(n) + o[a] for a, n in enumerate(brain.shape))
    xx, yy, zz = np.ix_(x, y, z)
    ventricles = lateral_ventricles(csf, depth, xx, yy, zz)  # as the phantom's
    deep_box = (xx >= x0) & (xx <= x1) & (yy >= y0) & (yy <= y1) & (zz >= z0) & (zz <= z1)
    infra = infratentorial_rule(xx, yy, zz) & brain
    cortex = (gm > 0.5) & ~deep_box & ~infra  # cerebellar cortex is infratentorial
    vdist = ndi.distance_transform_edt(~ventricles).astype(np.float32)
    cdist = ndi.distance_transform_edt(~cortex).astype(np.float32)
    return TemplateRegions(affine, t1, gm, wm, csf, brain, ventricles, cortex, infra, vdist, cdist)


def flair_like(regions: TemplateRegions) -> nib.Nifti1Image:
    """A FLAIR-contrast template: CSF dark, GM 1.16 x WM (the phantom's GM/WM ratio).

    The registration's moving image; Mattes mutual information makes the exact contrast
    matter little, the dark CSF makes the ventricles and sulci line up as in a FLAIR.

    Returns:
        (197, 233, 189) float32 image on the template grid.
    """
    data = 0.1 * regions.csf + 1.16 * regions.gm + 1.0 * regions.wm
    return nib.Nifti1Image(data.astype(np.float32), regions.affine)
