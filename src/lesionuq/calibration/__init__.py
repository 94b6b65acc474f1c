"""Turn a lesion scorer's uncertainty into a probability a clinician can read: P(FP).

A learned scorer's output ranks lesions but is not a calibrated probability. A
*calibrator* is a monotone non-decreasing map ``uncertainty -> P(FP)`` fitted on labelled
lesions the scorer did NOT train on. One module per concern:

- :mod:`~lesionuq.calibration.logistic`: the monotone logistic fit
  (:func:`fit_monotone_logistic`) that Platt scaling and ``gcnn_stack`` share;
- :mod:`~lesionuq.calibration.calibrators`: :class:`PlattCalibrator` (default) and
  :class:`IsotonicCalibrator`, saved as JSON (:func:`calibrator_from_dict`);
- :mod:`~lesionuq.calibration.iou`: :class:`IoURecalibrator`, a regressor's predicted
  IoU_adj mapped to the observed one;
- :mod:`~lesionuq.calibration.crossfit`: :func:`cross_fit` over :func:`inner_folds`, so
  that no lesion is used twice;
- :mod:`~lesionuq.calibration.storage`: ``calibration.json``
  (:func:`save_calibration`, :func:`load_calibration`) and its operating point;
- :mod:`~lesionuq.calibration.scorer`: :class:`CalibratedScorer`, the wrapper estimator
  around a scorer instance in the manner of scikit-learn's
  ``CalibratedClassifierCV(estimator, cv)``, and the experiment's
  :func:`fit_calibrated_scorer`.

Every name below is importable from ``lesionuq.calibration`` itself. The modules import
one another one way only: ``logistic`` <- ``calibrators``, ``iou`` <- ``crossfit``,
``storage`` <- ``scorer``.

Example:
    >>> cal = CalibratedScorer(make_scorer("gcnn_classif", cfg), n_inner=5).fit(val_lesions)
    >>> p_fp = cal.predict_p_fp(test_lesions)  # (N,) calibrated P(FP)
"""

from __future__ import annotations

from lesionuq.calibration.calibrators import (
    Calibrator,
    IsotonicCalibrator,
    PlattCalibrator,
    calibrator_from_dict,
    make_calibrator,
)
from lesionuq.calibration.crossfit import (
    CrossFitResult,
    cross_fit,
    half_fit_scores,
    inner_folds,
    is_regressor,
    scan_folds,
)
from lesionuq.calibration.iou import IoURecalibrator
from lesionuq.calibration.logistic import clipped_logit, fit_monotone_logistic
from lesionuq.calibration.scorer import (
    CalibratedScorer,
    Scorer,
    SelfCalibratedScorer,
    clone,
    fit_calibrated_scorer,
)
from lesionuq.calibration.storage import (
    CALIBRATOR_FILE,
    load_calibration,
    operating_point_of,
    save_calibration,
    update_operating_point,
)

__all__ = [
    "CALIBRATOR_FILE",
    "CalibratedScorer",
    "Calibrator",
    "CrossFitResult",
    "IoURecalibrator",
    "IsotonicCalibrator",
    "PlattCalibrator",
    "Scorer",
    "SelfCalibratedScorer",
    "calibrator_from_dict",
    "clipped_logit",
    "clone",
    "cross_fit",
    "fit_calibrated_scorer",
    "fit_monotone_logistic",
    "half_fit_scores",
    "inner_folds",
    "is_regressor",
    "load_calibration",
    "make_calibrator",
    "operating_point_of",
    "save_calibration",
    "scan_folds",
    "update_operating_point",
]
