"""Refit a model folder's lesion scorers on a few labelled scans of a new site.

A lesion scorer fitted on one data set learns that data set's false positives; on
another it can rank worse than the untrained voxel-uncertainty aggregates. The
cross-family bench (docs/benchmarks.md, issue 31) measured what helps: no variant fitted on the
source alone did, and neither did pooling two sources, while the paper's GCNN fitted on
the labelled lesions of 2-5 scans of the target itself did (at 5 scans +3.2 to +6.8 AUC
points over the best untrained baseline, the interval above 0 on every target). This
module does that with a model folder: its U-Net (or the user's samples) stays as it is,
and its lesion scorers are fitted again on the lesions of the given labelled scans::

    model folder + cases.csv (images, mask) --MC dropout / samples--> labelled lesions
        --fit each of the folder's scorers (calibrated, as `lesionuq fit` does)-->
        OUT: config.yaml, segmenter.pt (+ stamp_train.json), scorers/, shift_reference.json,
             default_method.json, graphs/val, refit.json

``OUT`` is a model folder like ``RUN/fold_K``: ``lesionuq predict --model OUT`` reads it.
Its default P(FP) method is chosen on the new scans' lesions by the rule of
:mod:`lesionuq.scorers.default_method`, so a baseline is reported wherever the refitted
GCNN does not rank them better, and its shift reference is the new scans' profile.

Example:
    >>> result = refit_model("runs/ms/fold_0", "site/cases.csv", "site/model")
    >>> load_model(result.folder).default.method
    'gcnn_classif'
"""

from __future__ import annotations

import functools
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from lesionuq.calibration import fit_calibrated_scorer
from lesionuq.io import Case, InputError, atomic_write_text, read_manifest
from lesionuq.lesions.dataset import LesionSet
from lesionuq.methods import is_learned
from lesionuq.outputs import check_output_dir, locked_output, output_dir
from lesionuq.predict.infer import infer
from lesionuq.predict.model import FittedModel, load_model
from lesionuq.scorers import make_scorer
from lesionuq.scorers.default_method import fit_default_method
from lesionuq.scorers.nn import NullProgress
from lesionuq.shift import INTERVAL_MIN_SCANS, SHIFT_FILE, ScanProfile, ShiftReference
from lesionuq.utils import make_progress, remove_pyg_codegen_files

__all__ = ["MIN_SCANS", "REFIT_FILE", "RefitResult", "labelled_lesions", "refit_model"]

#: Fewest labelled scans :func:`refit_model` accepts. The calibration and the default-method
#: rule judge each learned scorer on scans it was not fitted on (inner folds by scan),
#: which one scan cannot give; and on the cross-family bench a GCNN fitted on one scan of
#: family A landed between -11.4 and +1.0 AUC points around the best baseline, depending
#: on which scan it was (docs/benchmarks.md).
MIN_SCANS = 2
#: Provenance of a refitted model folder: the source folder, the scans, the lesion counts.
REFIT_FILE = "refit.json"


@dataclass(frozen=True)
class RefitResult:
    """What :func:`refit_model` wrote (also in ``OUT/refit.json``).

    Attributes:
        folder: The new model folder.
        source_model: The model folder it was refitted from.
        cases: The labelled scans' case ids.
        lesions_per_case: Lesions found in each.
        n_tp: True-positive lesions among them.
        n_fp: False-positive lesions among them.
        methods: The scorers fitted.
        default_method: The new folder's default P(FP) method.
        reason: Why (:attr:`lesionuq.scorers.default_method.MethodChoice.reason`: the
            validation AUCs it was chosen on).
        seconds: Wall time.
    """

    folder: Path
    source_model: str
    cases: list[str]
    lesions_per_case: list[int]
    n_tp: int
    n_fp: int
    methods: list[str]
    default_method: str
    reason: str
    seconds: float

    def to_dict(self) -> dict[str, object]:
        """JSON-able, without ``folder`` (``refit.json``)."""
        d = asdict(self)
        del d["folder"]
        return d

    def summary(self) -> str:
        """One line: what was fitted on what, the default method, how to use the folder."""
        n = self.n_tp + self.n_fp
        text = (
            f"refitted {len(self.methods)} scorer(s) on {n} lesions ({self.n_tp} TP, "
            f"{self.n_fp} FP) of {len(self.cases)} scans in {self.seconds:.0f} s. Default "
            f"P(FP) method: {self.reason} Use it with "
            f"`lesionuq predict --model {self.folder} ...`"
        )
        if len(self.cases) < INTERVAL_MIN_SCANS:
            text += (
                f". Its shift warning compares a new scan with these {len(self.cases)} "
                f"scans' range (a prediction interval needs {INTERVAL_MIN_SCANS}), so it "
                "will also warn on some scans like them."
            )
        return text


def labelled_lesions(model: FittedModel, case: Case) -> tuple[LesionSet, ScanProfile]:
    """One labelled scan's lesions, found and described as the model finds them.

    Args:
        model: The loaded model folder.
        case: A manifest row with ``mask`` (and ``samples`` where the segmentation comes
            from the user's own model).

    Returns:
        The lesions (table with ``iou_adj`` / ``is_tp``, graphs; location columns when a
        scorer of the model reads them) and the scan's shift profile
        (:func:`lesionuq.shift.scan_profile`).

    Raises:
        InputError: A missing or unreadable file, or a case without a mask.
    """
    if case.mask is None:
        raise InputError(f"case {case.case_id}: refitting needs its ground-truth mask.")
    grid = infer(
        model,
        tuple(case.images),
        case.case_id,
        lambda _: None,
        ignore=case.ignore,
        samples=case.samples,
        mask=case.mask,
        score=False,
    )
    assert grid.lesions is not None and grid.profile is not None
    return grid.lesions, grid.profile


def refit_model(
    model: str | Path | FittedModel,
    cases_csv: str | Path,
    out: str | Path,
    overwrite: bool = False,
    progress: bool = True,
) -> RefitResult:
    """Fit every lesion scorer of a model folder again on the lesions of labelled scans.

    Args:
        model: A model folder (``RUN/fold_K``) or a loaded one.
        cases_csv: A manifest of at least :data:`MIN_SCANS` scans with masks (the
            model's sequences; a ``samples`` column for a model of the samples protocol).
        out: The new model folder (new, empty, or one this function wrote before).
        overwrite: Replace an earlier refitted model in ``out``.
        progress: Show progress bars.

    Returns:
        What was written (:meth:`RefitResult.summary` is what the CLI prints).

    Raises:
        InputError: Fewer than :data:`MIN_SCANS` scans, a case without a mask, unreadable
            files, or an ``out`` that is not free.
    """
    t0 = time.perf_counter()
    if not isinstance(model, FittedModel):
        model = load_model(model)
    cfg = model.cfg
    cases = read_manifest(cases_csv, cfg.sequences, require_mask=True)
    if len(cases) < MIN_SCANS:
        raise InputError(
            f"{cases_csv}: {len(cases)} labelled scan(s); refitting needs at least "
            f"{MIN_SCANS}: the scorers are judged on scans they were not fitted on, which "
            "one scan cannot give."
        )
    chosen = sorted(model.scorers)  # all of them: a folder's scorers share their lesions
    inputs = [p for c in cases for p in (*c.images, c.mask) if p is not None]
    check_output_dir(out, "model", overwrite=overwrite, inputs=[model.folder, *inputs])
    out = Path(out)
    with locked_output(out):  # a second refit into ``out`` is refused meanwhile
        check_output_dir(out, "model", overwrite=overwrite, inputs=[model.folder, *inputs])
        with (
            output_dir(out, "model") as tmp,
            make_progress() if progress else NullProgress() as bar,
        ):
            scans = bar.add_task("labelled scans", total=len(cases), info="")
            sets, profiles = [], []
            for case in cases:
                bar.update(scans, info=case.case_id)
                lesions, profile = labelled_lesions(model, case)
                sets.append(lesions)
                profiles.append(profile)
                bar.update(scans, advance=1)
            val = LesionSet.concat(sets)
            val.save(tmp / "graphs" / "val")
            cfg.to_yaml(tmp / "config.yaml")
            # the source's U-Net, and its stamp: how it trained (and whether it learned)
            for name in ("segmenter.pt", "stamp_train.json"):
                if (model.folder / name).is_file():
                    shutil.copy2(model.folder / name, tmp / name)
            fits = bar.add_task("fitting scorers", total=len(chosen), info="")
            for method in chosen:
                bar.update(fits, info=method)
                folder = tmp / "scorers" / method
                if is_learned(method) and len(val) >= 2:
                    factory = functools.partial(make_scorer, method, cfg)
                    fit_calibrated_scorer(factory, cfg, val, folder, False).save(folder)
                else:
                    make_scorer(method, cfg).fit(val, progress=False).save(folder)
                bar.update(fits, advance=1)
            remove_pyg_codegen_files()
            result = _finish(tmp, out, model, cases, sets, profiles, chosen, t0)
    return result


def _finish(
    tmp: Path,
    out: Path,
    model: FittedModel,
    cases: list[Case],
    sets: list[LesionSet],
    profiles: list[ScanProfile],
    chosen: list[str],
    t0: float,
) -> RefitResult:
    """The shift reference, the default method and ``refit.json`` of the new folder."""
    cfg = model.cfg
    val = LesionSet.concat(sets)
    ShiftReference().fit(profiles).save(tmp / SHIFT_FILE)
    choice = fit_default_method(tmp, val, cfg.calibration.review_target, seed=cfg.seed)
    is_tp = val.is_tp
    result = RefitResult(
        out,
        str(Path(model.folder).resolve()),
        [c.case_id for c in cases],
        [len(s) for s in sets],
        int(np.sum(is_tp)),
        int(np.sum(~is_tp)),
        chosen,
        choice.method,
        choice.reason,
        round(time.perf_counter() - t0, 1),
    )
    atomic_write_text(tmp / REFIT_FILE, json.dumps(result.to_dict(), indent=1) + "\n")
    return result
