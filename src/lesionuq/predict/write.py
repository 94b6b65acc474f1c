"""The writers of one scan's prediction: its output folder and its BIDS export.

:func:`write_outputs` brings what :func:`lesionuq.predict.infer.infer` computed on the
preprocessed grid onto the input grid and writes the folder (:data:`OUTPUT_FILES`, plus
the :data:`MAP_NAMES` maps with ``save_maps``): the NIfTI images, ``lesions.csv``
(:mod:`lesionuq.predict.table`), ``lesions.json``, the viewer label files,
``summary.png``, ``report.html`` and ``prediction.json``. It is the one place where the
folder is written, built in a temporary folder and moved into place when complete, so a
failure leaves it as it was. :func:`check_exports` checks a ``--bids-out`` folder before
any computation; the scan is added to it last.

Example:
    >>> result = write_outputs(Path("pred"), grid, model, paths, "s1", 0.5, False, t0)
    >>> result.n_review
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

import nibabel as nib
import numpy as np
import pandas as pd

from lesionuq import __version__
from lesionuq.data.preprocess import native_labels, to_original
from lesionuq.evaluation.render import summary_png
from lesionuq.evaluation.scan_report import scan_report_html
from lesionuq.export import viewer_html, write_fsleyes_lut, write_itksnap_labels
from lesionuq.export.bids import bids_sources, check_bids_out, publish_bids_scan, scan_entities
from lesionuq.io import InputError, atomic_write_text, csv_text, save_nifti
from lesionuq.outputs import output_dir
from lesionuq.predict.infer import Located, OnGrid
from lesionuq.predict.model import REQUIRED_SCORERS, FittedModel, ReviewRule
from lesionuq.predict.result import PredictResult
from lesionuq.predict.table import LOCATION_COLUMNS, TABLE_COLUMNS, lesion_rows

__all__ = ["MAP_NAMES", "OUTPUT_FILES", "check_exports", "output_names", "write_outputs"]

#: Voxel maps written with ``save_maps`` (``NAME.nii.gz``, linear resampling).
MAP_NAMES = ("prob", "entropy", "variance", "pcs")
_STAMP = "prediction.json"
#: Files every prediction writes in its folder (plus ``NAME.nii.gz`` of the maps).
OUTPUT_FILES = (
    "seg.nii.gz",
    "lesions.nii.gz",
    "lesion_uncertainty.nii.gz",
    "lesions.csv",
    "label_description.txt",
    "lesions.lut",
    "lesions.json",
    "summary.png",
    "report.html",
    _STAMP,
)


def output_names(save_maps: bool) -> tuple[str, ...]:
    """The files a prediction writes in its folder (with or without the maps)."""
    maps = tuple(f"{name}.nii.gz" for name in MAP_NAMES) if save_maps else ()
    return OUTPUT_FILES + maps


def _location_payload(located: Located, table: pd.DataFrame) -> dict[str, object]:
    """The ``location`` entry of ``lesions.json``: registration, rules, counts, DIS."""
    # lazy: the location package loads SimpleITK, only for --location
    from lesionuq.location import LOCATIONS, LocationRules, dis_summary

    rules = LocationRules()
    loc = table["location"].astype(str).tolist() if len(table) else []
    dis = dis_summary(
        loc,
        table["p_fp"].to_numpy(dtype=np.float64),
        table["review"].to_numpy(dtype=bool),
        table["lesion_id"].to_numpy(),
        located.coverage,
        rules.min_coverage,
        located.ok,
    )
    return {
        "template": "MNI152 2009c nonlinear symmetric (nilearn), 1 mm",
        "registration": located.registration,
        "rules": {
            "infratentorial": f">= {rules.infratentorial_fraction:g} of the voxels in "
            "brainstem/cerebellum (template region)",
            "periventricular": "touching the lateral ventricles or within "
            f"{rules.periventricular_mm:g} mm",
            "juxtacortical": f"touching the cortex or within {rules.juxtacortical_mm:g} mm",
            "deep": "none of the above (deep white matter; not a DIS region)",
            "order": "infratentorial, periventricular, juxtacortical, deep",
        },
        "counts": {name: int(loc.count(name)) for name in LOCATIONS},
        "dis": dis,
    }


def _write_review_json(
    folder: Path,
    model: FittedModel,
    rule: ReviewRule,
    warnings: list[str],
    location: dict[str, object] | None = None,
) -> Path:
    """``lesions.json``, the companion of ``lesions.csv``: threshold, its origin, warnings.

    With ``location`` (:func:`_location_payload`), also a ``location`` entry.
    """
    payload = {
        "threshold": rule.threshold,
        "threshold_source": rule.source,
        "review_target": rule.target,
        "threshold_meaning": rule.describe(),
        "validation_effect": rule.validation,
        "p_fp": (
            f"calibrated ({model.calibrator.kind}) probability that the lesion is a false "
            "positive, fitted on out-of-fold validation lesions"
            if model.calibrator is not None
            else "raw gcnn_classif output (uncalibrated model folder)"
        ),
        "calibration": model.calibrator.to_dict() if model.calibrator is not None else None,
        "p_fp_method": model.p_fp_method,
        "p_fp_method_reason": model.default.reason
        if model.default is not None
        else ("model folder without default_method.json: the paper's gcnn_classif"),
        "p_fp_method_validation_auc": (
            model.default.to_dict()["val_auc"] if model.default is not None else None
        ),
        # the learned scorers' AUC extrapolated to the fit on all validation lesions, which
        # the rule compared (empty for a folder fitted without half-size fits)
        "p_fp_method_validation_auc_full": (
            model.default.to_dict()["val_auc_full"] if model.default is not None else None
        ),
        "warnings": list(warnings),
    }
    if location is not None:
        payload["location"] = location
    return atomic_write_text(folder / "lesions.json", json.dumps(payload, indent=1) + "\n")


def write_outputs(
    out: Path,
    grid: OnGrid,
    model: FittedModel,
    paths: tuple[Path, ...],
    case_id: str,
    threshold: float,
    save_maps: bool,
    t0: float,
    bids: tuple[Path, dict[str, str]] | None = None,
    rule: ReviewRule | None = None,
) -> PredictResult:
    """Bring the outputs onto the input grid and write the folder ``out`` atomically.

    The one place where ``out`` is written: everything goes into a temporary folder
    that replaces ``out`` only when complete.
    """
    affine, shape, scores = grid.native_affine, grid.native_shape, grid.scores
    n = int(grid.labels.max(initial=0))
    lab_native = native_labels(grid.labels, grid.pre.affine, grid.pre.transform, affine)
    _check_shape(lab_native, shape, "lesions")
    table = lesion_rows(
        grid.labels, lab_native, affine, grid.maps,
        scores["gcnn_classif"], 1.0 - scores["gcnn_reg"], threshold,
    )  # fmt: skip
    for m in scores:
        if m not in REQUIRED_SCORERS:
            table[f"u_{m}"] = scores[m][table["lesion_id"].to_numpy() - 1]
    if grid.in_ignore is not None:  # reported, marked: neither TP nor FP in evaluation
        table["in_ignore"] = grid.in_ignore[table["lesion_id"].to_numpy() - 1]
    located = None
    if grid.located is not None:
        rows = table["lesion_id"].to_numpy(dtype=np.int64) - 1
        loc = grid.located.locations
        table.insert(len(TABLE_COLUMNS), "location", np.asarray(loc.location, dtype=object)[rows])
        for a, name in enumerate(LOCATION_COLUMNS[1:]):
            table.insert(len(TABLE_COLUMNS) + 1 + a, name, loc.mni[rows, a] if n else [])
        located = _location_payload(grid.located, table)
    p_lut = np.zeros(n + 1, dtype=np.float32)
    p_lut[1:] = scores["gcnn_classif"]
    native_maps = {}
    if save_maps:
        for name in MAP_NAMES:
            vol = getattr(grid.maps, name).astype(np.float32)
            vol = to_original(vol, grid.pre.transform, order=1)
            native_maps[name] = _check_shape(vol, shape, name).astype(np.float32)

    rule = rule or ReviewRule(float(threshold), "--threshold")
    result = PredictResult(
        out, table, float(threshold), model.folder, paths, case_id, 0.0, grid.warnings, rule
    )
    result.location = located
    with output_dir(out, "prediction") as tmp:
        save_nifti(tmp / "seg.nii.gz", (lab_native > 0).astype(np.uint8), affine)
        save_nifti(
            tmp / "lesions.nii.gz", lab_native, affine, dtype=np.uint8 if n < 256 else np.int32
        )
        save_nifti(tmp / "lesion_uncertainty.nii.gz", p_lut[lab_native], affine)
        for name, vol in native_maps.items():
            save_nifti(tmp / f"{name}.nii.gz", vol, affine)
        atomic_write_text(tmp / "lesions.csv", csv_text(table))
        viewer, publish_bids = _write_exports(
            tmp, bids, grid, paths, table, lab_native, native_maps, threshold
        )
        _write_review_json(tmp, model, rule, grid.warnings, located)
        png = summary_png(grid.pre.image[0], grid.labels, scores["gcnn_classif"], table, case_id)
        (tmp / "summary.png").write_bytes(png)
        result.seconds = time.perf_counter() - t0
        shown = list(TABLE_COLUMNS) + (list(LOCATION_COLUMNS[:1]) if located else [])
        page = scan_report_html(
            table[shown],
            png,
            case_id=case_id,
            images=paths,
            model=model.folder,
            threshold=result.threshold,
            seconds=result.seconds,
            viewer=viewer,
            warnings=grid.warnings,
            threshold_note=rule.describe(),
            method_note=model.p_fp_note(),
            location=located,
            location_png=grid.located.png if grid.located is not None else None,
        )
        atomic_write_text(tmp / "report.html", page)
        meta = {
            "lesionuq": __version__,
            "case_id": case_id,
            "model": str(model.folder.resolve()),
            "images": [str(p.resolve()) for p in paths],
            "segmentation_from": "samples" if grid.samples is not None else "unet",
            "samples": grid.samples,
            "threshold": float(threshold),
            "threshold_source": rule.source,
            "review_target": rule.target,
            "calibrated": model.calibrated,
            "warnings": list(grid.warnings),
            "save_maps": bool(save_maps),
            "location": grid.located is not None,
            "n_lesions": n,
            "n_review": result.n_review,
            "seconds": round(result.seconds, 3),
            "input_shape": list(shape),
            "input_affine": affine.tolist(),
        }
        atomic_write_text(tmp / _STAMP, json.dumps(meta, indent=1) + "\n")
        publish_bids()  # last: a scan that failed above leaves nothing in the BIDS folder
    return result


# ------------------------------------------------ standard outputs (lesionuq.export)


def check_exports(
    bids_out: str | Path | None, out: str | Path, paths: tuple[Path, ...], overwrite: bool
) -> tuple[Path, dict[str, str]] | None:
    """Check ``bids_out`` before any computation: the folder and the scan's entities."""
    if bids_out is None:
        return None
    deriv, target = Path(bids_out).resolve(), Path(out).resolve()
    if deriv == target or target in deriv.parents or deriv in target.parents:
        raise InputError(
            f"{bids_out}: the --bids-out folder must be apart from the --out folder {out}."
        )
    entities = scan_entities(paths[0])
    return check_bids_out(bids_out, [entities], overwrite, paths), entities


def _write_exports(
    tmp: Path,
    bids: tuple[Path, dict[str, str]] | None,
    grid: OnGrid,
    paths: tuple[Path, ...],
    table: pd.DataFrame,
    lab_native: np.ndarray,
    native_maps: dict[str, np.ndarray],
    threshold: float,
) -> tuple[str | None, Callable[[], object]]:
    """Viewer label files into ``tmp``, the scan's BIDS images, and the report's viewer.

    Returns:
        The NiiVue viewer fragment of ``report.html`` (None without the bundle), and the
        call that adds the scan to the BIDS folder (nothing without ``bids``), made once
        every other output was built.
    """
    affine = grid.native_affine
    write_itksnap_labels(tmp / "label_description.txt", table)
    write_fsleyes_lut(tmp / "lesions.lut", table)
    labels_img = nib.Nifti1Image(lab_native.astype(np.int32), affine)
    if bids is not None:
        prob = native_maps.get("prob")
        if prob is None:
            prob = to_original(grid.maps.prob.astype(np.float32), grid.pre.transform, order=1)
            prob = _check_shape(prob, grid.native_shape, "prob")
        images = {
            "mask": nib.Nifti1Image((lab_native > 0).astype(np.uint8), affine),
            "probseg": nib.Nifti1Image(np.clip(prob, 0, 1).astype(np.float32), affine),
            "dseg": labels_img,
        }
        for name in ("entropy", "variance", "pcs"):
            if name in native_maps:
                images[name] = nib.Nifti1Image(native_maps[name], affine)
        publish: Callable[[], object] = functools.partial(
            publish_bids_scan,
            bids[0],
            bids[1],
            images,
            table,
            threshold=threshold,
            **bids_sources(paths[0]),
        )
    else:
        publish = _nothing
    flair = cast(nib.Nifti1Image, nib.load(str(paths[0])))
    viewer = viewer_html(nib.Nifti1Image(np.asanyarray(flair.dataobj), affine), labels_img, table)
    return viewer, publish


def _nothing() -> None:
    """No BIDS folder to add the scan to."""


def _check_shape(vol: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
    if tuple(vol.shape) != tuple(shape):
        raise RuntimeError(f"to_original gave {name} of shape {vol.shape}, expected {shape}.")
    return vol
