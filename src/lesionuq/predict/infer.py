"""What runs on one scan's preprocessed grid: inference, scores, calibration, location.

:func:`infer` loads and preprocesses the scan, samples it with MC dropout (or reads the
user's samples), finds its lesions and scores them::

    images --preprocess--> common grid --MC dropout--> VoxelMaps
        --case_lesions--> labels + LesionSet --scorers + calibrators--> p_fp, iou_pred

and returns everything on that grid as an :class:`OnGrid`; :func:`locate` adds the
lesions' locations (:mod:`lesionuq.location`) as a :class:`Located`. Nothing here writes
a file: :mod:`lesionuq.predict.write` brings the results onto the input grid.

Example:
    >>> grid = infer(load_model("runs/demo/fold_0"), (Path("flair.nii.gz"),), "s1", print)
    >>> grid.labels.max(), sorted(grid.scores)
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lesionuq.data.preprocess import Preprocessed, mask_to_grid, preprocess
from lesionuq.errors import InputWarning
from lesionuq.evaluation.render import registration_png
from lesionuq.io import Case, load_case, load_ignore, load_nifti
from lesionuq.lesions.graphs import case_lesions
from lesionuq.methods import CATALOGUE
from lesionuq.predict.model import REQUIRED_SCORERS, UNCALIBRATED_NOTE, FittedModel
from lesionuq.samples import samples_onto_grid
from lesionuq.segmentation.sampling import mc_sample
from lesionuq.segmentation.train import MIN_USABLE_DICE
from lesionuq.shift import ScanProfile, scan_profile, warning_sentence

if TYPE_CHECKING:
    from lesionuq.lesions.dataset import LesionSet
    from lesionuq.location import LesionLocations
    from lesionuq.location.register import Registration
    from lesionuq.uncertainty import VoxelMaps

__all__ = ["Located", "OnGrid", "infer", "locate", "needs_location"]


@dataclass
class OnGrid:
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
            registration (:func:`locate`); None without.
        registration: The scan's registration to MNI152 when a scorer needed the
            locations before scoring (reused by :func:`locate`); None otherwise.
        locations: The lesions' locations computed then (reused by :func:`locate`);
            None otherwise.
        lesions: The lesions 1..N (table and graphs, as the scorers read them); with a
            ground truth (``infer(mask=...)``) the table has ``iou_adj`` and ``is_tp``.
        profile: The scan's shift profile (:func:`lesionuq.shift.scan_profile`), which
            the shift warning checks and a refit's shift reference is fitted on.
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
    located: Located | None = None
    registration: Registration | None = None
    locations: LesionLocations | None = None
    lesions: LesionSet | None = None
    profile: ScanProfile | None = None


@dataclass
class Located:
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


def infer(
    model: FittedModel,
    paths: tuple[Path, ...],
    case_id: str,
    step: Callable[[str], None],
    ignore: str | Path | None = None,
    samples: Path | None = None,
    mask: Path | None = None,
    score: bool = True,
) -> OnGrid:
    """Load, preprocess, MC-dropout sample (or read ``samples``), find and score lesions.

    ``mask``, the scan's ground truth (the manifest's ``mask``), labels the lesions
    (``iou_adj``, ``is_tp`` in :attr:`OnGrid.lesions`), as the graphs stage of a run does;
    :func:`lesionuq.predict.refit.refit_model` fits on them with ``score=False`` (the
    model's own scorers are not run, and :attr:`OnGrid.scores` is empty). ``predict``
    passes no mask.
    """
    cfg = model.cfg
    case = Case(
        case_id,
        paths,
        mask=mask,
        ignore=Path(ignore) if ignore is not None else None,
        samples=samples,
    )
    given: dict[str, object] | None = None
    input_notes: list[str] = []
    if samples is not None:  # every file checked before any work
        with _input_warnings(input_notes):
            native = load_nifti(paths[0])
            ignore_img = load_ignore(case, native)
            pre, maps, info = samples_onto_grid(case, cfg.preprocess, check_values=True)
        given = {"path": str(samples.resolve()), "n_samples": info.n_samples}
        step("preprocess")
        step("samples")
    else:
        with _input_warnings(input_notes):
            imgs, truth = load_case(case)  # truth: None without a mask
            native = imgs[0]
            ignore_img = load_ignore(case, native)
            step("preprocess")
            pre = preprocess(imgs, truth, cfg.preprocess)
        step("MC dropout")
        maps = mc_sample(model.segmenter, pre.image, cfg.sampling, device=model.device)
    region = None
    if ignore_img is not None:
        region = mask_to_grid(ignore_img, pre.affine, pre.image.shape[1:])
    step("lesions")
    labels, lesions = case_lesions(
        maps.seg, pre.image, maps, pre.mask, pre.affine, cfg.graphs, case_id, ignore=region
    )
    labels = np.asarray(labels, dtype=np.int32)
    n = len(lesions)
    if int(labels.max(initial=0)) != n:
        raise RuntimeError(f"case_lesions returned {n} lesions but labels up to {labels.max()}.")
    registration = locations = None
    if needs_location(model):
        # a scorer of the model reads the lesions' locations (graphs.location): locate
        # before scoring; --location reuses this registration and these classes
        # lazy: SimpleITK (the registration) is loaded only for such a model or --location
        from lesionuq.location import classify_lesions, register_to_template

        # lazy: the same (the location package loads SimpleITK)
        from lesionuq.location.features import join_locations, location_columns

        step("location")
        image = pre.image[0]
        registration = register_to_template(image, pre.affine, image != 0)
        locations = classify_lesions(labels, pre.affine, registration, image=image)
        lesions = join_locations(lesions, location_columns(locations))
    step("scores")
    scores = _calibrate(model, _score(model, lesions)) if score else {}
    profile = scan_profile(
        native, maps.entropy, pre.image[0] != 0, brain_threshold=cfg.preprocess.brain_threshold
    )
    notes = input_notes + _review_warnings(model, profile)
    if given is None and model.training is not None:  # the model's own U-Net segmented
        notes.insert(
            len(input_notes),
            f"This model's U-Net did not learn to segment ({model.training}; below "
            f"{MIN_USABLE_DICE}): its lesions are mostly wrong, and so is every P(FP) given "
            "to them; retrain it (train.max_epochs) before reading this scan.",
        )
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
    return OnGrid(
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
        locations=locations,
        lesions=lesions,
        profile=profile,
    )


def needs_location(model: FittedModel) -> bool:
    """Whether a scorer of the model reads the lesions' locations (the catalogue says)."""
    return any(name in CATALOGUE and CATALOGUE[name].needs_location for name in model.scorers)


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


@contextmanager
def _input_warnings(notes: list[str]) -> Iterator[None]:
    """Collect the :class:`~lesionuq.errors.InputWarning` raised inside into ``notes``.

    They become the scan's warnings (terminal, ``prediction.json``, ``lesions.json`` and
    the report), not lines on stderr that a report reader never sees; any other warning
    is passed on as it was raised.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        if issubclass(w.category, InputWarning):
            text = str(w.message)
            text = text[0].upper() + text[1:]
            if text not in notes:
                notes.append(text)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)


def _review_warnings(model: FittedModel, profile: ScanProfile) -> list[str]:
    """The shift warning (:mod:`lesionuq.shift`) and the note of an uncalibrated model."""
    out = []
    if model.shift is not None:
        sentence = warning_sentence(model.shift.check(profile))
        if sentence:
            out.append(sentence[0].upper() + sentence[1:])
    if not model.calibrated:
        out.append(UNCALIBRATED_NOTE[0].upper() + UNCALIBRATED_NOTE[1:])
    return out


def locate(grid: OnGrid) -> tuple[Located, str | None]:
    """Register the scan to MNI152 and classify its lesions; the warning when untrusted."""
    # lazy: SimpleITK (the registration) is loaded only for --location or a scorer that
    # reads the lesions' locations
    from lesionuq.location import classify_lesions, region_coverage, register_to_template

    image = grid.pre.image[0]
    brain = image != 0
    reg = grid.registration or register_to_template(image, grid.pre.affine, brain)
    locations = grid.locations
    if locations is None:
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
    return Located(locations, coverage, reg.to_dict(), reg.ok, png), warning
