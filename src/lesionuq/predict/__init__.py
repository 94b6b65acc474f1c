"""Predict on new scans: segmentation and lesion-wise uncertainty in the scan's own space.

A fitted model folder ``RUN/fold_K`` (``config.yaml``, ``segmenter.pt``,
``scorers/METHOD/``) is applied to one scan (:func:`predict_scan`) or to every case of a
``cases.csv`` (:func:`predict_manifest`)::

    images (input grid) --preprocess--> common grid --MC dropout--> VoxelMaps
        --case_lesions--> labels + LesionSet --gcnn_classif / gcnn_reg--> p_fp, iou_pred
        --to_original--> every output on the INPUT grid (its shape and affine)

Modules:

- :mod:`~lesionuq.predict.model`: :class:`FittedModel`, :func:`load_model`.
- :mod:`~lesionuq.predict.scan`: :func:`predict_scan` (the outputs of one scan are listed
  there), which runs the steps of:

  - :mod:`~lesionuq.predict.infer`: what runs on the preprocessed grid (MC dropout,
    lesions, scores, calibration, locations);
  - :mod:`~lesionuq.predict.write`: the output folder and the BIDS export;
  - :mod:`~lesionuq.predict.table`: the ``lesions.csv`` table, :func:`lesion_rows`;
  - :mod:`~lesionuq.predict.result`: :class:`PredictResult`.
- :mod:`~lesionuq.predict.batch`: :func:`predict_manifest`, resuming an interrupted batch.

The figure and the HTML page of a scan are drawn by :mod:`lesionuq.evaluation.scan_report`.

Example:
    >>> res = predict_scan("runs/demo/fold_0", ["flair.nii.gz"], "pred/")
    >>> print(res.summary())
"""

from __future__ import annotations

from lesionuq.predict.batch import BatchResult, predict_manifest
from lesionuq.predict.model import REQUIRED_SCORERS, FittedModel, load_model
from lesionuq.predict.result import PredictResult
from lesionuq.predict.scan import predict_scan
from lesionuq.predict.table import LOCATION_COLUMNS, TABLE_COLUMNS, empty_table, lesion_rows
from lesionuq.predict.write import MAP_NAMES

__all__ = [
    "LOCATION_COLUMNS",
    "MAP_NAMES",
    "REQUIRED_SCORERS",
    "TABLE_COLUMNS",
    "BatchResult",
    "FittedModel",
    "PredictResult",
    "empty_table",
    "lesion_rows",
    "load_model",
    "predict_manifest",
    "predict_scan",
]
