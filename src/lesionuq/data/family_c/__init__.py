"""Phantom family C: a third synthetic MS FLAIR family, procedural, without a template.

Families A (:mod:`lesionuq.data.phantom`) and B (:mod:`lesionuq.data.family_b`) deform
the two brain templates that ship offline (MNI152, fsaverage5). Family C builds each
brain from analytic shapes and seeded random fields, and is written separately from both
with other rules at every step, so that a scorer's advantage measured on A and B can be
confirmed or refuted on data it was not designed on:

==============  =======================  =======================  ==========================
step            family A                 family B                 family C (this package)
==============  =======================  =======================  ==========================
anatomy         MNI152 2009 template +   fsaverage5 white and     procedural: super-ellipsoid
                tissue maps, deformed    pial surfaces,           cerebrum with a fissure,
                (affine + radial-basis   voxelised (affine +      cortex 2-4 mm folded by a
                field)                   B-spline); tube          band-pass field (sulcal CSF
                                         ventricles, ellipsoid    sheets), curved-tube
                                         nuclei; no cerebellum    ventricles with a radius
                                                                  profile (atrophy 0.7-2.4),
                                                                  third/fourth ventricles,
                                                                  nuclei, hippocampi,
                                                                  foliated cerebellum,
                                                                  brainstem; affine + smooth
                                                                  warp (anatomy.py)
lesion shapes   harmonic ellipsoids,     unions of spheres        superlevel sets of an
                erf edge                 (fingers, tracts,        oriented quadratic plus a
                                         clusters), linear edge   smoothed Gaussian random
                                                                  field; soft-threshold
                                                                  partial volume
lesion count    max x Beta(1.3, 2.2);    negative binomial        Poisson with a Gamma(2.5)
and size        log-normal volumes       (mean 0.35 max);         rate (mean 0.35 max);
                                         Pareto volumes           log-uniform 10-3000 mm3
placement       peri 0.5, juxta 0.25,    fingers 0.35, tracts     peri 0.4, deep 0.28, juxta
                deep 0.15, infra 0.1     0.2, deep 0.25, juxta    0.2, infra 0.12 (brainstem,
                                         0.2                      cerebellar white matter)
contrast        inversion-recovery       tissue ratios per scan;  latent protocol (te, ti,
                signal equation;         lesion 1 + logN          tr) -> tissue means;
                lesion/WM U(1.1, 2.0)    (1.08-2.6), texture      two-component Gaussian
                                                                  mixtures in space; lesion
                                                                  1.05 + Gamma(2.5, 0.18)
                                                                  x protocol gain; 30 %
                                                                  bright rim, 25 % dark core
mimics          horn caps, rim,          small-vessel dots,       sulcal vessel tubes,
                cortical spots, flow     choroid plexus,          bright hippocampus, bright
                blobs, dirty-appearing   ependymal band,          septum pellucidum, CSF
                white matter             cortical ribbon, ghost   inflow in the 3rd/4th
                                                                  ventricle, Gibbs ringing
scanner         image-space blur, thick  2-D multi-slice,         k-space: render at half
                slices (p 0.3), radial-  polynomial bias,         the spacing, FFT, anisotropic
                basis bias, Rician       nc-chi noise (1-8        box truncation (0.9-1.2 mm
                                         coils)                   in-plane, 1-3 mm slab, random
                                                                  readout), complex noise
                                                                  (SNR 15-50), magnitude;
                                                                  bias = mean of exp(smooth
                                                                  fields); x^gamma (0.85-1.15)
==============  =======================  =======================  ==========================

Realism targets (checked by ``tests/test_family_c.py`` and on the bench's data set, never
tuned against a scorer): brain (the non-zero FLAIR region, parenchyma and its CSF) 1000-
1500 cm3; at ``max_lesions`` 180 mostly 5-80 lesions (connected components of the
mask) per case; lesions hyperintense to the white matter of their scan, some faint or
small; mimics outside the ground truth.

The file contract is family A's (``case_XXX/flair.nii.gz`` int16, 0 outside the brain,
>= 1 inside; ``case_XXX/mask.nii.gz`` uint8, lesion fraction > 0.5; ``phantom.json``
with the config and every draw; ``cases.csv`` last). Draws are made in millimetres, so
a seed gives the same subject at any spacing.

Example:
    >>> draw = draw_case_c(0, max_lesions=20)
    >>> case = render_case_c(draw, spacing=4.0)
    >>> case.flair.shape
    (39, 46, 40)
"""

from __future__ import annotations

from lesionuq.data.family_c.case import CaseDrawC, PhantomCaseC, draw_case_c, render_case_c
from lesionuq.data.family_c.dataset import estimate_case_memory_c, make_family_c_dataset

__all__ = [
    "CaseDrawC",
    "PhantomCaseC",
    "draw_case_c",
    "estimate_case_memory_c",
    "make_family_c_dataset",
    "render_case_c",
]
