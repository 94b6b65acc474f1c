"""Where each lesion is, and dissemination in space with uncertainty (issue 30).

=============  ==========================================================================
module         content
=============  ==========================================================================
``atlas``      the MNI152 template's location maps (nilearn, no download): ventricles,
               cortex, infratentorial region, distances
``register``   scan -> template registration with SimpleITK (rigid, affine, optional
               B-spline), its quality measures, saved and reused per scan
``tissue``     the scan's own tissue classes (atlas-guided EM on its intensities) and
               lateral ventricles
``classify``   each lesion's class (periventricular, juxtacortical, infratentorial, deep,
               unknown) and MNI centroid; region coverage of a partial scan
``dis``        the DIS verdicts: all lesions, lesions not flagged, P(DIS) under P(FP)
=============  ==========================================================================
"""

from __future__ import annotations

from lesionuq.location.classify import (
    DIS_REGIONS,
    LOCATIONS,
    LesionLocations,
    LocationRules,
    classify_from_maps,
    classify_lesions,
    region_coverage,
)
from lesionuq.location.dis import dis_probability, dis_summary, region_probabilities
from lesionuq.location.register import (
    Registration,
    cached_registration,
    register_to_template,
)

__all__ = [
    "DIS_REGIONS",
    "LOCATIONS",
    "LesionLocations",
    "LocationRules",
    "Registration",
    "cached_registration",
    "classify_from_maps",
    "classify_lesions",
    "dis_probability",
    "dis_summary",
    "region_coverage",
    "region_probabilities",
    "register_to_template",
]
