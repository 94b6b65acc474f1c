"""``calibration.json``: a scorer's calibrators and operating point, stored as JSON.

:func:`save_calibration` writes the P(FP) calibrator, a regressor's IoU recalibration and
extra entries (the out-of-fold P(FP) and the operating point of the review target) next
to the scorer's ``scorer.json``; :func:`load_calibration` reads them back (never
pickled). :func:`update_operating_point` re-chooses the stored operating point for a new
review target from the stored out-of-fold P(FP).

Example:
    >>> save_calibration(folder / CALIBRATOR_FILE, calibrator, extra={"method": "platt"})
    >>> calibrator, iou_calibrator, payload = load_calibration(folder / CALIBRATOR_FILE)
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from lesionuq.calibration.calibrators import Calibrator, calibrator_from_dict
from lesionuq.calibration.iou import IoURecalibrator
from lesionuq.io import InputError, atomic_write_text
from lesionuq.operating_point import OperatingPoint

__all__ = [
    "CALIBRATOR_FILE",
    "load_calibration",
    "operating_point_of",
    "save_calibration",
    "update_operating_point",
]

logger = logging.getLogger(__name__)

CALIBRATOR_FILE = "calibration.json"
"""Name of the calibration file written next to a scorer's ``scorer.json``."""
_FORMAT = 1


def save_calibration(
    path: str | Path,
    calibrator: Calibrator,
    iou_calibrator: IoURecalibrator | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a calibrator (and a regressor's IoU recalibration) as JSON, atomically.

    Args:
        path: Usually ``RUN/fold_K/scorers/METHOD/calibration.json``.
        calibrator: Fitted P(FP) calibrator.
        iou_calibrator: Fitted IoU recalibration (regressors), or None.
        extra: More JSON-able entries (e.g. the operating point), stored under their keys.
    """
    payload: dict[str, Any] = {
        "format": _FORMAT,
        "calibrator": calibrator.to_dict(),
        "iou_calibrator": iou_calibrator.to_dict() if iou_calibrator is not None else None,
    }
    payload |= extra or {}
    return atomic_write_text(path, json.dumps(payload, indent=1) + "\n")


def load_calibration(
    path: str | Path,
) -> tuple[Calibrator, IoURecalibrator | None, dict[str, Any]]:
    """Read :func:`save_calibration` output.

    Returns:
        The calibrator, the IoU recalibration (or None) and the whole JSON dict (for the
        ``extra`` entries).

    Raises:
        InputError: The file is missing, not JSON or lacks the calibrator.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found.")
    try:
        payload = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not valid JSON ({err.msg}).") from err
    if not isinstance(payload, dict) or "calibrator" not in payload:
        raise InputError(f"{path}: missing key 'calibrator'.")
    try:
        cal = calibrator_from_dict(payload["calibrator"])
        iou = payload.get("iou_calibrator")
        iou_cal = IoURecalibrator.from_dict(iou) if iou else None
    except (KeyError, ValueError, TypeError) as err:
        raise InputError(f"{path}: unreadable calibrator ({err}).") from err
    return cal, iou_cal, payload


def operating_point_of(p_fp: np.ndarray, is_tp: np.ndarray, target: str) -> dict | None:
    """``OperatingPoint.choose`` as a dict, or None when the target cannot be met.

    :meth:`lesionuq.operating_point.OperatingPoint.choose`; a failure is logged.

    Args:
        p_fp: (N,) calibrated P(FP) of validation lesions.
        is_tp: (N,) bool, whether each lesion is a true positive.
        target: A review target such as ``"tp:0.95"``.
    """
    try:
        return OperatingPoint.choose(p_fp, is_tp, target).to_dict()
    except ValueError as err:  # e.g. no true lesion among the validation lesions
        logger.warning("no operating point: %s", err)
        return None


def update_operating_point(folder: Path, target: str) -> None:
    """Re-choose the operating point stored in ``folder/calibration.json`` for ``target``.

    Nothing happens when the file is missing, already holds ``target``, or has no
    out-of-fold P(FP) (an older run).
    """
    path = folder / CALIBRATOR_FILE
    if not path.is_file():
        return
    cal, iou_cal, payload = load_calibration(path)
    op = payload.get("operating_point") or {}
    if op.get("target") == target or "oof_p_fp" not in payload:
        return
    p = np.asarray(payload["oof_p_fp"], dtype=np.float64)
    is_tp = np.asarray(payload["oof_is_tp"], dtype=bool)
    extra = {
        k: v for k, v in payload.items() if k not in ("format", "calibrator", "iou_calibrator")
    }
    extra["operating_point"] = operating_point_of(p, is_tp, target)
    save_calibration(path, cal, iou_cal, extra=extra)
