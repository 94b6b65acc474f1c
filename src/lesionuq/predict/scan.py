"""One scan: segmentation and lesion-wise uncertainty in the scan's own space.

:func:`predict_scan` applies a fitted model (:mod:`lesionuq.predict.model`) to one scan::

    images (input grid) --preprocess--> common grid --MC dropout--> VoxelMaps
        --case_lesions--> labels + LesionSet --gcnn_classif / gcnn_reg--> p_fp, iou_pred
        --native_labels / to_original--> every output on the INPUT grid

and :func:`lesion_rows` is its ``lesions.csv`` table. The output folder is written by
:func:`_write_outputs` only, built in a temporary folder and moved into place when
complete, so a failure leaves it as it was.

Example:
    >>> res = predict_scan("runs/demo/fold_0", ["flair.nii.gz"], "pred/")
    >>> print(res.summary())
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

from lesionuq import __version__
from lesionuq.data.preprocess import (
    Preprocessed,
    mask_to_grid,
    native_labels,
    preprocess,
    to_original,
)
from lesionuq.evaluation.render import plain_text, registration_png, summary_png
from lesionuq.evaluation.scan_report import scan_report_html
from lesionuq.export import viewer_html, write_fsleyes_lut, write_itksnap_labels
from lesionuq.export.bids import bids_sources, check_bids_out, publish_bids_scan, scan_entities
from lesionuq.io import (
    Case,
    InputError,
    atomic_write_text,
    check_threshold,
    csv_text,
    load_case,
    load_ignore,
    load_nifti,
    save_nifti,
)
from lesionuq.lesions.graphs import case_lesions
from lesionuq.methods import CATALOGUE
from lesionuq.outputs import check_output_dir, locked_output, output_dir
from lesionuq.predict.model import (
    REQUIRED_SCORERS,
    UNCALIBRATED_NOTE,
    FittedModel,
    ReviewRule,
    load_model,
)
from lesionuq.samples import samples_onto_grid
from lesionuq.segmentation.sampling import mc_sample
from lesionuq.shift import scan_profile, warning_sentence
from lesionuq.utils import make_progress

if TYPE_CHECKING:
    from lesionuq.lesions.dataset import LesionSet
    from lesionuq.location import LesionLocations
    from lesionuq.location.register import Registration
    from lesionuq.uncertainty import VoxelMaps

__all__ = [
    "LOCATION_COLUMNS",
    "MAP_NAMES",
    "OUTPUT_FILES",
    "TABLE_COLUMNS",
    "PredictResult",
    "empty_table",
    "lesion_rows",
    "predict_scan",
]

#: Columns of ``lesions.csv`` (one row per lesion), in order.
TABLE_COLUMNS = (
    "lesion_id",
    "volume_ml",
    "centroid_x_mm",
    "centroid_y_mm",
    "centroid_z_mm",
    "p_fp",
    "iou_pred",
    "entropy_mean",
    "variance_mean",
    "pcs_mean",
    "review",
)
#: Columns added to ``lesions.csv`` with ``location`` (after :data:`TABLE_COLUMNS`).
LOCATION_COLUMNS = ("location", "mni_x_mm", "mni_y_mm", "mni_z_mm")
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
_STEPS = ("load", "preprocess", "MC dropout", "lesions", "scores", "write")


@dataclass
class PredictResult:
    """What :func:`predict_scan` wrote.

    Attributes:
        out: The output folder.
        table: ``lesions.csv`` as a DataFrame (sorted by ``p_fp`` descending).
        threshold: P(FP) at or above which a lesion is flagged for review.
        model: The model folder.
        images: The input scans.
        case_id: Name of the case (default: the first image's file name).
        seconds: Wall time of the prediction.
        warnings: Sentences for the user: the shift warning (the scan is unlike the
            validation scans) and the note of an uncalibrated model folder.
        rule: How the review threshold was chosen.
        location: With ``location``: the ``location`` entry of ``lesions.json``
            (registration, rules, counts per region, DIS verdicts); None without.
    """

    out: Path
    table: pd.DataFrame
    threshold: float
    model: Path
    images: tuple[Path, ...]
    case_id: str
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    rule: ReviewRule | None = None
    location: dict[str, object] | None = None

    @property
    def n_lesions(self) -> int:
        """Number of lesions found."""
        return len(self.table)

    @property
    def n_review(self) -> int:
        """Number of lesions with ``p_fp >= threshold``."""
        return int(self.table["review"].sum()) if len(self.table) else 0

    def summary(self, max_rows: int = 10) -> str:
        """A few lines for the terminal: counts, the most doubtful lesions, the folder."""
        name = plain_text(self.case_id)  # a Latin-1 file name prints as text
        if self.n_lesions == 0:
            return (
                f"{name}: no lesion found; wrote an empty table and zero maps to "
                f"{self.out} ({self.seconds:.1f} s)."
            )
        head = (
            f"{name}: {self.n_lesions} lesion(s), {self.n_review} to review "
            f"(P(FP) >= {self.threshold:g}); wrote {self.out} ({self.seconds:.1f} s)."
        )
        shown = self.table.head(max_rows)[
            ["lesion_id", "volume_ml", "p_fp", "iou_pred", "review"]
        ].to_string(index=False, float_format=lambda v: f"{v:.3f}")
        more = (
            f"\n... {self.n_lesions - max_rows} more in lesions.csv"
            if (self.n_lesions > max_rows)
            else ""
        )
        dis = self.location.get("dis") if self.location else None
        tail = f"\n{dis['sentence']}" if isinstance(dis, dict) else ""
        return f"{head}\n{shown}{more}{tail}"


def lesion_rows(
    labels_grid: np.ndarray,
    labels_native: np.ndarray,
    native_affine: np.ndarray,
    maps: VoxelMaps,
    p_fp: np.ndarray,
    iou_pred: np.ndarray,
    threshold: float,
) -> pd.DataFrame:
    """The ``lesions.csv`` table of one scan (see :data:`TABLE_COLUMNS`).

    Volumes and centroids are measured on the input grid (``labels_native`` and its
    affine, so they match ``lesions.nii.gz``); the mean voxel measures on the
    preprocessed grid where the maps were computed.

    Args:
        labels_grid: (X, Y, Z) labels 1..N on the preprocessed grid.
        labels_native: (X', Y', Z') the same labels on the input grid.
        native_affine: (4, 4) affine of the input grid.
        maps: ``VoxelMaps`` on the preprocessed grid.
        p_fp: (N,) P(FP) of lesions 1..N.
        iou_pred: (N,) predicted IoU_adj of lesions 1..N.
        threshold: ``review = p_fp >= threshold``.

    Returns:
        N rows sorted by ``p_fp`` descending (ties by ``lesion_id``).
    """
    n = len(p_fp)
    if n == 0:
        return empty_table()
    ids = np.arange(1, n + 1)
    voxel_ml = abs(float(np.linalg.det(native_affine[:3, :3]))) / 1000.0
    counts = np.bincount(labels_native.ravel(), minlength=n + 1)[1:]
    com = np.asarray(ndimage.center_of_mass(labels_native > 0, labels_native, ids)).reshape(n, 3)
    world = com @ native_affine[:3, :3].T + native_affine[:3, 3]
    table = pd.DataFrame(
        {
            "lesion_id": ids,
            "volume_ml": counts * voxel_ml,
            "centroid_x_mm": world[:, 0],
            "centroid_y_mm": world[:, 1],
            "centroid_z_mm": world[:, 2],
            "p_fp": np.asarray(p_fp, dtype=np.float64),
            "iou_pred": np.asarray(iou_pred, dtype=np.float64),
            "entropy_mean": ndimage.mean(maps.entropy, labels_grid, ids),
            "variance_mean": ndimage.mean(maps.variance, labels_grid, ids),
            "pcs_mean": ndimage.mean(maps.pcs, labels_grid, ids),
            "review": np.asarray(p_fp) >= threshold,
        }
    )
    order = np.lexsort((table["lesion_id"].to_numpy(), -table["p_fp"].to_numpy()))
    return table.iloc[order].reset_index(drop=True)


def empty_table() -> pd.DataFrame:
    """A ``lesions.csv`` table without rows: the :data:`TABLE_COLUMNS` and their dtypes."""
    table = pd.DataFrame({c: pd.Series(dtype=np.float64) for c in TABLE_COLUMNS})
    return table.astype({"lesion_id": np.int64, "review": bool})


def _as_paths(images: str | Path | Sequence[str | Path]) -> tuple[Path, ...]:
    if isinstance(images, str | Path):
        return (Path(images),)
    return tuple(Path(p) for p in images)


def _case_name(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


class _Steps:
    """A progress bar over the named steps of one prediction (or nothing)."""

    def __init__(self, steps: Sequence[str], enabled: bool, title: str) -> None:
        self.steps, self.enabled, self.title = list(steps), enabled, title

    @contextmanager
    def run(self) -> Iterator[Callable[[str], None]]:
        if not self.enabled:
            yield lambda name: None
            return
        with make_progress() as bar:
            task = bar.add_task(self.title, total=len(self.steps), info=self.steps[0])

            def step(name: str) -> None:
                bar.update(task, advance=1, info=name)

            yield step


@dataclass
class _OnGrid:
    """What one scan's inference computed on the preprocessed grid.

    Attributes:
        pre: The preprocessed scan (image (C, X, Y, Z), affine, transform).
        maps: ``VoxelMaps`` of MC dropout.
        labels: (X, Y, Z) int32 lesion labels 1..N.
        scores: Each scorer's (N,) uncertainty of lesions 1..N.
        native_affine: (4, 4) affine of the input scan.
        native_shape: (X', Y', Z') shape of the input scan.
        warnings: Shift warning and calibration note (:func:`_review_warnings`).
        in_ignore: (N,) bool, lesions mostly in the ignore region; None without one.
        samples: With the user's samples: ``{"path", "n_samples"}``; None for MC dropout.
        located: With ``location``: the lesions' locations, the region coverage and the
            registration (:func:`_locate`); None without.
        registration: The scan's registration to MNI152 when a scorer needed the
            locations before scoring (reused by :func:`_locate`); None otherwise.
    """

    pre: Preprocessed
    maps: VoxelMaps
    labels: np.ndarray
    scores: dict[str, np.ndarray]
    native_affine: np.ndarray
    native_shape: tuple[int, ...]
    warnings: list[str] = field(default_factory=list)
    in_ignore: np.ndarray | None = None
    samples: dict[str, object] | None = None
    located: _Located | None = None
    registration: Registration | None = None


@dataclass
class _Located:
    """Lesion locations of one scan (:mod:`lesionuq.location`).

    Attributes:
        locations: Classes and MNI centroids of lesions 1..N.
        coverage: DIS region -> fraction inside the scan.
        registration: Its quality measures (:meth:`Registration.to_dict`).
        ok: Whether the registration is trusted.
        png: The registration check figure (template outlines on the scan), or None when
            the registration failed outright.
    """

    locations: LesionLocations
    coverage: dict[str, float]
    registration: dict[str, object]
    ok: bool
    png: bytes | None = None


def _locate(grid: _OnGrid) -> tuple[_Located, str | None]:
    """Register the scan to MNI152 and classify its lesions; the warning when untrusted."""
    # lazy: SimpleITK (the registration) is loaded only for --location or a scorer that
    # reads the lesions' locations
    from lesionuq.location import classify_lesions, region_coverage, register_to_template

    image = grid.pre.image[0]
    brain = image != 0
    reg = grid.registration or register_to_template(image, grid.pre.affine, brain)
    locations = classify_lesions(grid.labels, grid.pre.affine, reg, image=image)
    coverage = region_coverage(reg, brain)
    png = None
    if reg.transform is not None:
        # lazy: the location package loads SimpleITK, only for --location (see above)
        from lesionuq.location.atlas import load_regions

        regions = load_regions()
        brain_t = reg.on_scan(regions.brain.astype(np.float32)) > 0.5
        vent_t = reg.on_scan(regions.ventricles.astype(np.float32)) > 0.5
        q = reg.to_dict()
        title = (
            f"registration check: template brain (cyan), ventricles (yellow); brain Dice "
            f"{q['brain_dice']}, scales {q['scales']}" + ("" if reg.ok else " - NOT TRUSTED")
        )
        png = registration_png(image, brain_t, vent_t, title)
    problem = reg.problem()
    warning = None
    if problem is not None:
        warning = (
            f"{problem[0].upper()}{problem[1:]}: the lesion locations are reported as unknown "
            "and no dissemination-in-space verdict is given."
        )
    return _Located(locations, coverage, reg.to_dict(), reg.ok, png), warning


def _location_payload(located: _Located, table: pd.DataFrame) -> dict[str, object]:
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


def predict_scan(
    model: str | Path | FittedModel,
    images: str | Path | Sequence[str | Path],
    out: str | Path,
    threshold: float | None = None,
    save_maps: bool = False,
    progress: bool = True,
    case_id: str | None = None,
    overwrite: bool = False,
    bids_out: str | Path | None = None,
    review_target: str | None = None,
    ignore: str | Path | None = None,
    samples: str | Path | None = None,
    location: bool = False,
) -> PredictResult:
    """Segment one scan and score each lesion's uncertainty, in the scan's own space.

    Outputs in ``out`` (replaced as a whole on success):

    - ``seg.nii.gz`` (uint8): the union of the lesions below.
    - ``lesions.nii.gz``: lesion labels 1..N (nearest-neighbour resampling; a lesion too
      small to survive on a coarser input grid is put back at the free input voxel
      nearest its centroid, see :func:`~lesionuq.data.preprocess.native_labels`).
    - ``lesion_uncertainty.nii.gz`` (float32): each lesion's voxels hold its P(FP).
    - with ``save_maps``: the :data:`MAP_NAMES` maps (linear resampling).
    - ``lesions.csv``: :func:`lesion_rows`, then ``u_METHOD`` for any other fitted scorer
      of the model folder.
    - ``lesions.json``: the companion of ``lesions.csv``: the review threshold, how it
      was chosen, the calibration and the warnings.
    - ``label_description.txt`` (ITK-SNAP) and ``lesions.lut`` (FSLeyes): the lesion ids
      of ``lesions.nii.gz`` coloured by review status (red review, green kept).
    - ``summary.png``, ``report.html`` (self-contained; with the interactive NiiVue
      viewer when its bundle was fetched, see :mod:`lesionuq.export.viewer`) and
      ``prediction.json``.

    With ``bids_out``, the scan is also added to that BIDS-derivatives data set
    (:func:`lesionuq.export.bids.write_bids_derivatives`, entities from the first
    image's BIDS file name).

    ``p_fp`` is the calibrated P(FP) of the model folder's default method
    (:mod:`lesionuq.scorers.default_method`: ``gcnn_classif`` unless another ranked the
    validation lesions better; ``lesions.json`` and the report say which and why) and
    ``iou_pred`` the recalibrated
    IoU_adj of ``gcnn_reg`` (raw outputs for a model folder fitted before calibration).
    When the scan is unlike the model's validation scans (:mod:`lesionuq.shift`) a
    warning goes to :attr:`PredictResult.warnings`, ``prediction.json``, ``lesions.json``
    and the top of ``report.html``.

    Args:
        model: A model folder (``RUN/fold_K``) or a :class:`FittedModel`.
        images: One scan per model sequence, in the config's order, on the same grid
            (any orientation, voxel size and field of view).
        out: Output folder ``DIR`` (replaced as a whole on success).
        threshold: ``review`` is ``p_fp >= threshold``; overrides ``review_target``.
        save_maps: Also write the ``prob``, ``entropy``, ``variance`` and ``pcs`` maps.
        progress: Show a progress bar over the steps.
        case_id: Name used in the table and report (default: first image's file name).
        overwrite: Replace an earlier prediction in ``out`` (see :mod:`lesionuq.outputs`)
            and this scan's earlier files in ``bids_out``.
        bids_out: A BIDS-derivatives folder to add this scan to (new, empty, or one
            lesionuq wrote); the first image must have a BIDS file name.
        review_target: Choose the threshold for this target (``"tp:0.95"``, ``"fp:0.5"``)
            on the model's validation lesions; default: the stored operating point
            (:meth:`FittedModel.review_rule`).
        ignore: The scan's ignore region (a binary mask on the first image's grid, the
            manifest's ``ignore`` column), or None. Lesions mostly inside it
            (:func:`~lesionuq.lesions.components.ignored_lesions`) are still reported,
            with ``in_ignore`` True in ``lesions.csv`` (a column present only then).
        samples: T probability maps of this scan from the user's own segmenter (a 4-D
            NIfTI, last axis = sample, or a folder of 3-D maps; any grid covering the
            scan, :mod:`lesionuq.samples`): the segmentation and voxel maps come from
            them instead of the model's U-Net (a note says so when the model has one).
            Required by a model folder of the samples protocol (no U-Net).
        location: Also locate each lesion (:mod:`lesionuq.location`: registration to
            MNI152, about 10 s): ``lesions.csv`` and the BIDS ``dseg.tsv`` gain the
            :data:`LOCATION_COLUMNS`, ``lesions.json`` a ``location`` entry (registration
            quality, rules, counts per region, the DIS verdicts with P(DIS)) and the report
            the counts and the DIS sentence. An untrusted registration gives a warning and
            ``unknown`` locations.

    Returns:
        The result (its :meth:`PredictResult.summary` is what the CLI prints).

    Raises:
        InputError: Missing or unreadable file, empty, 4-D or non-finite image, images on
            different grids, wrong image count, incomplete model folder, a non-BIDS
            file name with ``bids_out``. ``out`` is then left untouched.
    """
    t0 = time.perf_counter()
    paths = _as_paths(images)
    if not paths:
        raise InputError("no input image was given.")
    if threshold is not None:
        threshold = check_threshold(threshold)
    writes = output_names(save_maps)
    inputs = (*paths, Path(samples)) if samples is not None else paths
    check_output_dir(out, "prediction", overwrite=overwrite, inputs=inputs, writes=writes)
    bids = _check_exports(bids_out, out, paths, overwrite)
    if not isinstance(model, FittedModel):
        model = load_model(model, n_images=len(paths))
    model.check_images(len(paths))
    if samples is None and model.segmenter is None:
        raise InputError(
            f"{model.folder}: this model has no U-Net (its scorers learned from another "
            "segmenter's samples): give that segmenter's samples of this scan with --samples "
            "STACK (a 4-D NIfTI, last axis = sample, or a folder of 3-D maps)."
        )
    rule = model.review_rule(threshold, review_target)
    case_id = case_id or _case_name(paths[0])
    out = Path(out)
    with locked_output(out):  # a second prediction into ``out`` is refused meanwhile
        check_output_dir(out, "prediction", overwrite=overwrite, inputs=inputs, writes=writes)
        located = location or _needs_location(model)
        steps = (*_STEPS[:-1], "location", _STEPS[-1]) if located else _STEPS
        with _Steps(steps, progress, case_id).run() as step:
            grid = _infer(
                model,
                paths,
                case_id,
                step,
                ignore,
                None if samples is None else Path(samples),
            )
            if location:
                if grid.registration is None:  # else the step ran before the scores
                    step("location")
                grid.located, warning = _locate(grid)
                if warning is not None:
                    grid.warnings.append(warning)
            step("write")
            result = _write_outputs(
                out,
                grid,
                model,
                paths,
                case_id,
                rule.threshold,
                save_maps,
                t0,
                bids=bids,
                rule=rule,
            )
            step("done")
    return result


def output_names(save_maps: bool) -> tuple[str, ...]:
    """The files :func:`predict_scan` writes in its folder (with or without the maps)."""
    maps = tuple(f"{name}.nii.gz" for name in MAP_NAMES) if save_maps else ()
    return OUTPUT_FILES + maps


def _infer(
    model: FittedModel,
    paths: tuple[Path, ...],
    case_id: str,
    step: Callable[[str], None],
    ignore: str | Path | None = None,
    samples: Path | None = None,
) -> _OnGrid:
    """Load, preprocess, MC-dropout sample (or read ``samples``), find and score lesions."""
    cfg = model.cfg
    case = Case(
        case_id,
        paths,
        ignore=Path(ignore) if ignore is not None else None,
        samples=samples,
    )
    given: dict[str, object] | None = None
    if samples is not None:  # every file checked before any work
        native = load_nifti(paths[0])
        ignore_img = load_ignore(case, native)
        pre, maps, info = samples_onto_grid(case, cfg.preprocess, check_values=True)
        given = {"path": str(samples.resolve()), "n_samples": info.n_samples}
        step("preprocess")
        step("samples")
    else:
        imgs, _ = load_case(case)
        native = imgs[0]
        ignore_img = load_ignore(case, native)
        step("preprocess")
        pre = preprocess(imgs, None, cfg.preprocess)
        step("MC dropout")
        maps = mc_sample(model.segmenter, pre.image, cfg.sampling, device=model.device)
    region = None
    if ignore_img is not None:
        region = mask_to_grid(ignore_img, pre.affine, pre.image.shape[1:])
    step("lesions")
    labels, lesions = case_lesions(
        maps.seg, pre.image, maps, None, pre.affine, cfg.graphs, case_id, ignore=region
    )
    labels = np.asarray(labels, dtype=np.int32)
    n = len(lesions)
    if int(labels.max(initial=0)) != n:
        raise RuntimeError(f"case_lesions returned {n} lesions but labels up to {labels.max()}.")
    registration = None
    if _needs_location(model):
        # a scorer of the model reads the lesions' locations (graphs.location): locate
        # before scoring; --location reuses this registration
        # lazy: SimpleITK (the registration) is loaded only for such a model or --location
        from lesionuq.location.features import with_locations

        step("location")
        lesions, registration = with_locations(lesions, pre.image[0], pre.affine, labels)
    step("scores")
    scores = _calibrate(model, _score(model, lesions))
    notes = _review_warnings(model, native, maps, pre)
    if registration is not None and (problem := registration.problem()) is not None:
        notes.append(
            f"{problem[0].upper()}{problem[1:]}: the scorers that read the lesions' "
            "locations saw them as unknown."
        )
    if given is not None and model.segmenter is not None:
        notes.append(
            f"The segmentation comes from the samples given ({samples}, T = "
            f"{given['n_samples']}), not from the model's U-Net."
        )
    return _OnGrid(
        pre,
        maps,
        labels,
        scores,
        np.asarray(native.affine, dtype=np.float64),
        tuple(native.shape[:3]),
        notes,
        lesions.table["in_ignore"].to_numpy(dtype=bool) if region is not None else None,
        given,
        registration=registration,
    )


def _needs_location(model: FittedModel) -> bool:
    """Whether a scorer of the model reads the lesions' locations (the catalogue says)."""
    return any(name in CATALOGUE and CATALOGUE[name].needs_location for name in model.scorers)


def _calibrate(model: FittedModel, scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """P(FP) and predicted IoU through the model's calibrators (raw without them).

    ``scores["gcnn_classif"]`` becomes the calibrated P(FP) and ``scores["gcnn_reg"]``
    ``1 -`` the recalibrated IoU_adj; the other scorers keep their raw uncertainty.
    """
    out = dict(scores)
    # the reported P(FP) (kept under the "gcnn_classif" key the writers read) comes from
    # the model folder's default method (default_method.json; gcnn_classif without it)
    out["gcnn_classif"] = model.p_fp(scores[model.p_fp_method])
    out["gcnn_reg"] = 1.0 - model.iou_pred(scores["gcnn_reg"])
    return out


def _review_warnings(
    model: FittedModel, native: nib.Nifti1Image, maps: VoxelMaps, pre: Preprocessed
) -> list[str]:
    """The shift warning (:mod:`lesionuq.shift`) and the note of an uncalibrated model."""
    out = []
    if model.shift is not None:
        brain = pre.image[0] != 0
        profile = scan_profile(
            native, maps.entropy, brain, brain_threshold=model.cfg.preprocess.brain_threshold
        )
        sentence = warning_sentence(model.shift.check(profile))
        if sentence:
            out.append(sentence[0].upper() + sentence[1:])
    if not model.calibrated:
        out.append(UNCALIBRATED_NOTE[0].upper() + UNCALIBRATED_NOTE[1:])
    return out


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
        "warnings": list(warnings),
    }
    if location is not None:
        payload["location"] = location
    return atomic_write_text(folder / "lesions.json", json.dumps(payload, indent=1) + "\n")


def _write_outputs(
    out: Path,
    grid: _OnGrid,
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


def _check_exports(
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
    grid: _OnGrid,
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


def _score(model: FittedModel, lesions: LesionSet) -> dict[str, np.ndarray]:
    """Each scorer's uncertainty of lesions 1..N, (N,) float64 (zeros(0) without lesions)."""
    n = len(lesions)
    ids = lesions.table["lesion_id"].to_numpy(dtype=np.int64) if n else np.zeros(0, np.int64)
    if n and sorted(ids.tolist()) != list(range(1, n + 1)):
        raise RuntimeError(f"lesion ids of the table are not 1..{n}.")
    scores: dict[str, np.ndarray] = {}
    for name, scorer in model.scorers.items():
        if n == 0:
            scores[name] = np.zeros(0)
            continue
        try:
            u = np.asarray(scorer.score(lesions), dtype=np.float64)
        except ValueError:
            if name in REQUIRED_SCORERS:
                raise
            continue  # an optional scorer that cannot read these lesions is left out
        if u.shape != (n,):
            raise RuntimeError(f"scorer {name} returned shape {u.shape} for {n} lesions.")
        by_id = np.zeros(n)  # table rows may come in any order: index by lesion id - 1
        by_id[ids - 1] = u
        scores[name] = by_id
    # P(FP) and predicted IoU stay in [0, 1] whatever the scorer's numerics.
    scores["gcnn_classif"] = np.clip(scores["gcnn_classif"], 0.0, 1.0)
    scores["gcnn_reg"] = np.clip(scores["gcnn_reg"], 0.0, 1.0)
    return scores


def _check_shape(vol: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
    if tuple(vol.shape) != tuple(shape):
        raise RuntimeError(f"to_original gave {name} of shape {vol.shape}, expected {shape}.")
    return vol
