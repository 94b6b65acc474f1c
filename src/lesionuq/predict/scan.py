"""One scan: segmentation and lesion-wise uncertainty in the scan's own space.

:func:`predict_scan` applies a fitted model (:mod:`lesionuq.predict.model`) to one scan::

    images (input grid) --preprocess--> common grid --MC dropout--> VoxelMaps
        --case_lesions--> labels + LesionSet --gcnn_classif / gcnn_reg--> p_fp, iou_pred
        --native_labels / to_original--> every output on the INPUT grid

It runs the steps (with a progress bar) of its modules:

- :mod:`~lesionuq.predict.infer`: what runs on the preprocessed grid (MC dropout or the
  user's samples, lesions, scores, calibration, the lesions' locations).
- :mod:`~lesionuq.predict.write`: the output folder, written by
  :func:`~lesionuq.predict.write.write_outputs` only, built in a temporary folder and
  moved into place when complete, so a failure leaves it as it was; the BIDS export.
- :mod:`~lesionuq.predict.table`: the ``lesions.csv`` table, :func:`lesion_rows`.
- :mod:`~lesionuq.predict.result`: :class:`PredictResult`, what it returns.

The table's and the folder's names are re-exported here (:data:`TABLE_COLUMNS`,
:data:`LOCATION_COLUMNS`, :data:`MAP_NAMES`, :data:`OUTPUT_FILES`, :func:`lesion_rows`,
:func:`empty_table`, :func:`output_names`, :class:`PredictResult`).

Example:
    >>> res = predict_scan("runs/demo/fold_0", ["flair.nii.gz"], "pred/")
    >>> print(res.summary())
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from lesionuq.io import InputError, check_threshold
from lesionuq.outputs import check_output_dir, locked_output
from lesionuq.predict.infer import infer, locate, needs_location
from lesionuq.predict.model import FittedModel, load_model
from lesionuq.predict.result import PredictResult
from lesionuq.predict.table import LOCATION_COLUMNS, TABLE_COLUMNS, empty_table, lesion_rows
from lesionuq.predict.write import (
    MAP_NAMES,
    OUTPUT_FILES,
    check_exports,
    output_names,
    write_outputs,
)
from lesionuq.utils import make_progress

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

_STEPS = ("load", "preprocess", "MC dropout", "lesions", "scores", "write")


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
    bids = check_exports(bids_out, out, paths, overwrite)
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
        located = location or needs_location(model)
        steps = (*_STEPS[:-1], "location", _STEPS[-1]) if located else _STEPS
        with _Steps(steps, progress, case_id).run() as step:
            grid = infer(
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
                grid.located, warning = locate(grid)
                if warning is not None:
                    grid.warnings.append(warning)
            step("write")
            result = write_outputs(
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
