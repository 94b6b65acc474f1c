"""Synthetic MS FLAIR data set on real anatomy: the project's default data.

Each case starts from the MNI152 2009 template and its grey/white-matter probability maps
shipped inside nilearn (``load_mni152_template``, ``load_mni152_gm_template``,
``load_mni152_wm_template``; no download). CSF is the skull-stripped template's support
minus GM minus WM; the lateral ventricles are its large deep CSF components.

Per case (all random draws come from one seeded generator and do not depend on the output
spacing, so a seed gives the same subject at 1 mm and at 2 mm, only rasterised differently):

1. Anatomy: a small random affine (rotation, per-axis scale) and a smooth random
   displacement field (Gaussian radial-basis field, a few mm) move the tissue maps.
2. Lesions (the ground truth): a count ``round(max_lesions * Beta(a, b))`` (0 to
   ``max_lesions``, skewed low), log-normal volumes in mm3 (most below 1000 mm3; large ones
   become confluent unions of 2-5 blobs), placed periventricular (half; ovoid, long axis
   perpendicular to the ventricle wall like Dawson's fingers), juxtacortical (a quarter)
   or deep / infratentorial white matter (the rest). Each blob is an ellipsoid with an
   irregular, direction-dependent radius and a soft (erf) edge, drawn in mm and rasterised
   at the output spacing with the voxel's partial-volume width. A lesion replaces the
   parenchyma (GM+WM) fraction of a voxel, never CSF.
3. Mimics (NOT in the ground truth, at lesion-like intensity): periventricular caps at the
   frontal and occipital horns, a thin periventricular rim, bright cortical spots, small
   flow artefacts in CSF spaces, and diffuse faint "dirty-appearing white matter"
   patches. A discrete mimic is dropped when it would come within 1 mm of a lesion, so
   mimics never overlap the ground truth.
4. FLAIR contrast from the inversion-recovery signal equation

       S = PD * |1 - 2 exp(-TI/T1) + exp(-TR/T1)| * exp(-TE/T2),

   TI nulling CSF (``TI = T1_csf ln(2 / (1 + exp(-TR/T1_csf)))``, jittered a little so CSF
   is not perfectly suppressed), mixed by tissue fraction (partial volume). A lesion's
   (T1, T2, PD) lies on the line from white matter to the nominal lesion values, at the
   point that gives its drawn lesion/WM signal ratio (uniform, 1.1 to 2.0).
5. Scanner: Gaussian blur (FWHM 1-1.5 mm), sometimes thick slices along one axis (Gaussian
   slice profile), a smooth multiplicative bias field, Rician noise, a random gain; the
   image is skull-stripped (0 outside the deformed brain, >= 1 inside) and stored as int16.

The ground truth is ``lesion fraction > 0.5`` on the output grid.

Parameters (:class:`PhantomParams`; ranges are uniform unless said otherwise):

=========================  ==================================================================
parameter                  value
=========================  ==================================================================
TR / TE / TI               9000 ms / 120 ms / CSF-nulling (1705 ms) x (1 +- 3 %)
T1 / T2 / PD               CSF 2569/329/1.0, GM 833/83/0.86, WM 500/70/0.77,
                           lesion 1100/180/0.9 (GM/WM signal ratio 1.16)
tissue maps                MNI152 GM/WM/CSF probabilities sharpened p^2 (renormalised)
deformation                rotation +-4 deg, scale +-5 % per axis, displacement std 2.5 mm
                           (radial-basis length 20 mm)
lesion count               round(max_lesions x Beta(1.3, 2.2)), mean ~ 0.37 max_lesions
lesion volume              log-normal, median 70 mm3, sigma 1.1, clipped to 12-6000 mm3;
                           > 700 mm3 -> confluent (2-5 blobs)
placement                  periventricular 0.50, juxtacortical 0.25, deep WM 0.15,
                           infratentorial 0.10
shape                      Dawson elongation 1.5-3 (periventricular), 1-1.6 otherwise;
                           radius irregularity <= 25 %; edge width 0.3-0.8 mm
lesion/WM signal ratio     1.1-2.0 (mean 1.55)
caps                       each of 4 horn tips with prob. 0.7; 30-200 mm3; ratio 1.15-1.6
rim                        thickness 0.6-1.6 mm, peak fraction 0.3-0.9; ratio 1.1-1.4
cortical spots             Poisson(6); 10-100 mm3 (log-uniform); ratio 1.3-1.9 (in GM)
flow artefacts             Poisson(4); 5-80 mm3 (log-uniform); ratio 1.4-2.2 (CSF spaces)
dirty-appearing WM         Poisson(2); 300-3000 mm3 (log-uniform), edge 2-3.5 mm;
                           ratio 1.05-1.2 (deep WM)
blur                       FWHM 1.0-1.5 mm
thick slices               prob. 0.3, 3-5 mm, axis z (0.6) / x / y (0.2 each)
bias field                 max deviation 10-20 %, radial-basis length 80 mm
Rician noise               sigma 2-5 % of the WM signal
gain                       WM ~ 1000 x (0.8-1.25)
=========================  ==================================================================

What it is not: no T1/T2/PD sequences besides FLAIR, no atrophy, no skull, no motion or
Gibbs ringing, one template anatomy (deformed) for all subjects, lesion shapes are
parametric blobs.

Layout (draw, then render, as TorchIO splits a random transform):

=================  ===============================================================
module             content
=================  ===============================================================
``params``         :class:`PhantomParams` (the table above), settable from YAML
                   (``phantom.params`` in an experiment config)
``physics``        the signal equation, CSF-nulling TI, lesion contrast inversion
``anatomy``        the MNI152 template, its seed regions, the output grid
``shapes``         smooth random fields, irregular soft blobs
``draw``           :func:`draw_case`: every random choice, a JSON-able :class:`CaseDraw`
``render``         :func:`render_case`: the draw to images, deterministic;
                   :func:`generate_case` = ``render_case(draw_case(seed))``
``dataset``        :func:`make_phantom_dataset` (validated, atomic per case),
                   :func:`write_preview`
=================  ===============================================================

Example:
    >>> import json
    >>> draw = draw_case(0)
    >>> CaseDraw.from_dict(json.loads(json.dumps(draw.to_dict()))).ti_ms == draw.ti_ms
    True
    >>> case = render_case(draw, spacing=2.0)  # = generate_case(seed=0, spacing=2.0)
    >>> case.flair.shape, int(case.mask.get_fdata().sum()) > 0
    ((99, 117, 95), True)
"""

from __future__ import annotations

from lesionuq.data.phantom.anatomy import Template, load_template, output_grid
from lesionuq.data.phantom.dataset import (
    case_seed,
    estimate_case_memory,
    make_phantom_dataset,
    write_preview,
)
from lesionuq.data.phantom.draw import Abnormality, CaseDraw, draw_case
from lesionuq.data.phantom.params import DEFAULT_PARAMS, PhantomParams
from lesionuq.data.phantom.physics import Contrast, csf_null_ti, flair_signal
from lesionuq.data.phantom.render import PhantomCase, generate_case, render_case
from lesionuq.data.phantom.shapes import Blob, make_blob

__all__ = [
    "DEFAULT_PARAMS",
    "Abnormality",
    "Blob",
    "CaseDraw",
    "Contrast",
    "PhantomCase",
    "PhantomParams",
    "Template",
    "case_seed",
    "csf_null_ti",
    "draw_case",
    "estimate_case_memory",
    "flair_signal",
    "generate_case",
    "load_template",
    "make_blob",
    "make_phantom_dataset",
    "output_grid",
    "render_case",
    "write_preview",
]
