"""Which P(FP) method ``predict`` reports by default, chosen per model folder (issue 31).

The paper's GCNN is not always the best ranker: on data it was not designed on, an
untrained voxel-uncertainty aggregate can rank the lesions better. So each model folder
chooses its default P(FP) method on its own validation lesions, where every learned
scorer has *out-of-fold* P(FP) (``scorers/METHOD/calibration.json``: ``oof_p_fp``, the
lesion scored by a model that did not see it) and every untrained baseline its plain
score (nothing was fitted). The IoU regressors (``gcnn_reg``, ``metaseg_reg``) are not
candidates: admitted through their out-of-fold P(FP) (a Platt map of ``1 - IoU_hat``),
they gained within family C and lost up to 17 points on the cross-family bench, where the
regression GCNN fitted on one family ranked another's lesions worst of all
(docs/benchmarks.md, "The regression GCNN as a default candidate");
:func:`read_candidates` admits them on request, for that bench:

1. AUC (the accuracy-confidence AUC of Table 2) of every candidate on the validation
   lesions, counted over the FP-TP pairs *within an inner fold*
   (:func:`~lesionuq.evaluation.curves.within_fold_auc`): each inner fold's lesions were
   scored by one model, and a pooled AUC would also compare lesions scored by different
   inner models, whose score levels differ by chance, which underrates a learned scorer
   against an untrained one (on the cross-family bench by up to 6.8 points). Each learned
   scorer is compared with the baselines on its own pairs; the best untrained baseline
   is the one with the highest AUC on them.
2. The default is the learned scorer with the highest out-of-fold AUC among those at
   least as high as the best baseline's (a tie goes to the earlier in ``order``: the
   paper's ``gcnn_classif`` first). A learned scorer's out-of-fold AUC comes from models
   fitted on (K-1)/K of the lesions, while the folder's model is fitted on all of them;
   where ``calibration.json`` holds half-size fits (``half_scores``, config
   ``calibration.half_fits``: each inner model's training cases cut in two), the AUC
   compared is extrapolated along the learning curve, linear in log(size):
   ``AUC + (AUC - AUC_half) * log(K / (K - 1)) / log 2``
   (:func:`extrapolated_auc`). A scorer that still gains from more lesions is judged
   at the size it will be used at, not below it (on family A of the cross-family bench
   the paper's GCNN rose from 72.1 % at half size to 80.0 % out of fold, and ranked the
   test lesions at 86.0 %).
3. When no learned scorer reaches it, the default is the best baseline itself, its score
   turned into P(FP) by Platt scaling on the validation lesions (a monotone map: the
   ranking is the baseline's).
4. Validation lesions of one class only (no FP or no TP) rank nothing: the default stays
   ``gcnn_classif``, and the reason says so.

A model folder fitted before the inner folds were stored (``calibration.json`` without
``oof_fold``) has them recomputed from the seed (:func:`~lesionuq.calibration.inner_folds`
is deterministic); without a seed, the pooled AUC is used, as before, and
:attr:`MethodChoice.pairs` says which.

So the reported method never ranks the validation lesions worse than the best untrained
baseline (rule 4 aside), judged at the size it is used at: with half-size fits, a learned
scorer whose out-of-fold AUC is below the baseline's can still be chosen when its
extrapolated AUC is not (family A's fold 0: 80.0 % out of fold, 84.7 % extrapolated, the
baseline 80.4 %). The choice, its reason and every candidate's validation AUC
are written to ``fold_K/default_method.json`` by ``lesionuq fit`` and shown by
``predict`` in ``lesions.json`` and the report.

Example:
    >>> choice = choose_default_method({"gcnn_classif": oof}, {"entropy_mean": u}, is_tp)
    >>> choice.method, choice.reason
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lesionuq.calibration import (
    CALIBRATOR_FILE,
    PlattCalibrator,
    inner_folds,
    operating_point_of,
)
from lesionuq.evaluation.bootstrap import weighted_auc
from lesionuq.evaluation.curves import within_fold_auc
from lesionuq.io import atomic_write_text
from lesionuq.methods import CATALOGUE, is_learned
from lesionuq.scorers.base import SCORER_FILE
from lesionuq.scorers.registry import load_scorer

__all__ = [
    "DEFAULT_METHOD_FILE",
    "PAPER_METHOD",
    "Candidates",
    "MethodChoice",
    "choose_default_method",
    "extrapolated_auc",
    "fit_default_method",
    "load_default_method",
    "read_candidates",
    "validation_auc",
]

DEFAULT_METHOD_FILE = "default_method.json"
PAPER_METHOD = "gcnn_classif"


def validation_auc(score: np.ndarray, is_tp: np.ndarray) -> float:
    """Accuracy-confidence AUC: P(an FP scores above a TP), ties counted half.

    Args:
        score: (N,) float, higher = less trusted.
        is_tp: (N,) bool.

    Returns:
        The AUC in [0, 1], NaN without an FP or a TP lesion.
    """
    s = np.asarray(score, dtype=np.float64)
    t = np.asarray(is_tp, dtype=bool)
    if s.shape != t.shape:
        raise ValueError(f"score {s.shape} and is_tp {t.shape} differ.")
    if t.all() or not t.any():
        return math.nan
    return float(weighted_auc(s, t, np.ones((1, s.size)))[0])


def extrapolated_auc(
    auc: float, half_scores: np.ndarray, is_tp: np.ndarray, fold: np.ndarray
) -> float:
    """A learned scorer's out-of-fold AUC extrapolated to the fit on all N lesions.

    The cross-fit's models are fitted on (K-1)/K of the lesions and reach ``auc``; the
    half-size models (:func:`~lesionuq.calibration.half_fit_scores`) reach ``AUC_half``
    (the mean over the halves of every cut, each counted within the inner folds). Linear in
    log(training size), the full fit is one step of ``log(K / (K - 1))`` further:

    ``auc + (auc - AUC_half) * log(K / (K - 1)) / log 2``

    A learning curve that is flat leaves ``auc`` as it is; one that falls (noise, or
    overfitting) lowers it.

    Args:
        auc: The out-of-fold AUC (pairs within inner folds).
        half_scores: (2S, N) scores of the half-size fits (S cuts); NaN where none scored.
        is_tp: (N,) bool.
        fold: (N,) inner fold of each lesion (K distinct values).

    Returns:
        The extrapolated AUC, clipped to [0, 1]; ``auc`` itself when there are fewer than
        2 inner folds or no half-size AUC.
    """
    f = np.asarray(fold)
    k = len(np.unique(f))
    t = np.asarray(is_tp, dtype=bool)
    halves = []
    for row in np.asarray(half_scores, dtype=np.float64).reshape(-1, t.size):
        ok = np.isfinite(row)
        if ok.any() and t[ok].any() and not t[ok].all():
            halves.append(within_fold_auc(row[ok], t[ok], f[ok]))
    halves = [a for a in halves if math.isfinite(a)]
    if k < 2 or not halves or not math.isfinite(auc):
        return auc
    step = (auc - float(np.mean(halves))) * math.log(k / (k - 1)) / math.log(2)
    return min(max(auc + step, 0.0), 1.0)


@dataclass
class MethodChoice:
    """The default P(FP) method of a model folder and why.

    Attributes:
        method: The chosen method (a learned scorer, or an untrained baseline).
        reason: One sentence for the report.
        val_auc: Validation AUC of every candidate (learned: out of fold), by method.
        learned: The learned candidates (names).
        best_baseline: The untrained baseline with the highest validation AUC, or None.
        n_lesions: Validation lesions.
        n_fp: Of which false positives.
        calibrator: For a baseline default, the ``calibration.json``-like payload of its
            Platt calibrator (``calibrator``, the validation ``oof_p_fp`` / ``oof_is_tp``
            (in-sample: nothing else was fitted) and ``operating_point``), else None.
        pairs: Which FP-TP pairs the AUCs count: ``"within inner folds"`` (rule 1) or
            ``"pooled"`` (every pair: no inner folds known, or a folder chosen before).
        val_auc_full: For the learned scorers with half-size fits, the out-of-fold AUC
            extrapolated to the fit on all validation lesions (:func:`extrapolated_auc`),
            which rule 2 compared instead of ``val_auc``.
    """

    method: str
    reason: str
    val_auc: dict[str, float]
    learned: list[str]
    best_baseline: str | None
    n_lesions: int
    n_fp: int
    calibrator: dict[str, Any] | None = field(default=None)
    pairs: str = "pooled"
    val_auc_full: dict[str, float] = field(default_factory=dict)

    @property
    def is_baseline(self) -> bool:
        """Whether the default is an untrained baseline (no learned scorer reached it)."""
        return self.method not in self.learned

    def baselines_text(self) -> str:
        """The baselines' validation AUCs as text, best first (``entropy_mean 81.2 %, ...``)."""
        base = {m: a for m, a in self.val_auc.items() if m not in self.learned}
        items = sorted(base.items(), key=lambda kv: -kv[1] if math.isfinite(kv[1]) else 1.0)
        return ", ".join(f"{m} {100 * a:.1f} %" for m, a in items)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (NaN AUCs as None)."""
        d = asdict(self)
        for key in ("val_auc", "val_auc_full"):
            d[key] = {k: (None if not math.isfinite(v) else v) for k, v in d[key].items()}
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MethodChoice:
        """Inverse of :meth:`to_dict`."""
        auc = {k: (math.nan if v is None else float(v)) for k, v in d["val_auc"].items()}
        full = d.get("val_auc_full") or {}
        return cls(
            method=str(d["method"]),
            reason=str(d["reason"]),
            val_auc=auc,
            learned=list(d["learned"]),
            best_baseline=d.get("best_baseline"),
            n_lesions=int(d["n_lesions"]),
            n_fp=int(d["n_fp"]),
            calibrator=d.get("calibrator"),
            pairs=str(d.get("pairs", "pooled")),
            val_auc_full={k: (math.nan if v is None else float(v)) for k, v in full.items()},
        )


def choose_default_method(
    learned: Mapping[str, np.ndarray],
    baselines: Mapping[str, np.ndarray],
    is_tp: np.ndarray,
    order: Sequence[str] = (PAPER_METHOD,),
    folds: Mapping[str, np.ndarray] | None = None,
    half_scores: Mapping[str, np.ndarray] | None = None,
) -> MethodChoice:
    """Apply the rule of this module to validation lesions.

    Args:
        learned: Out-of-fold P(FP) (N,) of each learned scorer on the validation lesions.
        baselines: Score (N,) of each untrained baseline on the same lesions.
        is_tp: (N,) bool.
        order: Tie preference among learned scorers (earlier wins); scorers not listed
            come after, in the order of ``learned``.
        folds: (N,) inner fold of each lesion, by learned scorer (the folds its
            out-of-fold P(FP) came from). A scorer without an entry, or None, counts
            every pair (the pooled AUC).
        half_scores: (2S, N) scores of the half-size fits (S cuts), by learned scorer; a scorer
            with an entry and known ``folds`` is judged by :func:`extrapolated_auc`.

    Returns:
        The choice (``calibrator`` is None here; :func:`fit_default_method` adds it).
        ``val_auc`` holds each learned scorer's AUC on its own pairs and each baseline's
        on the pairs of the first learned scorer in ``order`` with known folds.
    """
    t = np.asarray(is_tp, dtype=bool)
    n, n_fp = int(t.size), int((~t).sum())
    names = list(learned)
    rank = {m: (list(order).index(m) if m in order else len(order) + names.index(m)) for m in names}
    known = {m: np.asarray(f) for m, f in (folds or {}).items() if m in learned}
    pooled = np.zeros(n, dtype=np.int64)

    def auc_on(score: np.ndarray, fold: np.ndarray) -> float:
        if n == 0 or t.all() or not t.any():
            return math.nan
        return within_fold_auc(score, t, fold)

    ref = known[min(known, key=lambda m: rank[m])] if known else pooled
    auc = {m: auc_on(s, known.get(m, pooled)) for m, s in learned.items()}
    auc.update({m: auc_on(s, ref) for m, s in baselines.items()})
    full = {
        m: extrapolated_auc(auc[m], h, t, known[m])
        for m, h in (half_scores or {}).items()
        if m in known and n and t.any() and not t.all()
    }
    judged = {m: full.get(m, auc[m]) for m in names}
    pairs = "within inner folds" if known else "pooled"
    base = [m for m in baselines if math.isfinite(auc[m])]
    best = max(base, key=lambda m: (auc[m], -list(baselines).index(m)), default=None)

    def choice(method: str, reason: str) -> MethodChoice:
        return MethodChoice(
            method, reason, auc, names, best, n, n_fp, pairs=pairs, val_auc_full=full
        )

    fallback = PAPER_METHOD if PAPER_METHOD in learned else (names[0] if names else None)
    if best is None or n_fp == 0 or n_fp == n:
        what = "no validation lesion" if n == 0 else "validation lesions of one class only"
        method = fallback or (next(iter(baselines)) if baselines else PAPER_METHOD)
        return choice(method, f"{what}: nothing to rank, the default stays {method}.")

    def best_baseline_on(m: str) -> float:
        """The best baseline's AUC on the pairs of learned scorer ``m``."""
        fold = known.get(m, pooled)
        if fold is ref:
            return auc[best]
        return max(auc_on(s, fold) for s in baselines.values())

    eligible = [m for m in names if math.isfinite(judged[m]) and judged[m] >= best_baseline_on(m)]
    where = " (pairs within inner folds)" if known else ""

    def auc_text(m: str) -> str:
        text = f"{100 * auc[m]:.1f} %"
        if m in full:
            text += f", {100 * full[m]:.1f} % extrapolated to all {n} lesions"
        return text

    if eligible:
        method = max(eligible, key=lambda m: (judged[m], -rank[m]))
        reason = (
            f"{method} ranked the {n} validation lesions best among the learned scorers "
            f"(out-of-fold AUC {auc_text(method)}{where}), not below the best "
            f"untrained baseline {best} ({100 * auc[best]:.1f} %)."
        )
        return choice(method, reason)
    top = max(names, key=lambda m: judged[m] if math.isfinite(judged[m]) else -1.0, default=None)
    learned_text = (
        f"the best learned scorer, {top}, reached {auc_text(top)} out of fold"
        if top is not None and math.isfinite(judged[top])
        else "no learned scorer could be judged"
    )
    reason = (
        f"the untrained baseline {best} ranked the {n} validation lesions best "
        f"(AUC {100 * auc[best]:.1f} %{where}; {learned_text}), so P(FP) is {best}'s score "
        "mapped to a probability by Platt scaling on these lesions."
    )
    return choice(best, reason)


@dataclass
class Candidates:
    """What the rule compares on a model folder's validation lesions (:func:`read_candidates`).

    Attributes:
        learned: Out-of-fold P(FP) (N,) of each learned scorer.
        baselines: Score (N,) of each untrained baseline.
        folds: (N,) inner fold of each learned scorer's out-of-fold P(FP), where known.
        half_scores: (2S, N) scores of each learned scorer's half-size fits, where stored.
    """

    learned: dict[str, np.ndarray] = field(default_factory=dict)
    baselines: dict[str, np.ndarray] = field(default_factory=dict)
    folds: dict[str, np.ndarray] = field(default_factory=dict)
    half_scores: dict[str, np.ndarray] = field(default_factory=dict)

    def only(self, learned: Sequence[str]) -> Candidates:
        """The same with only the learned scorers named in ``learned`` (the baselines all)."""
        keep = [m for m in self.learned if m in learned]
        return Candidates(
            {m: self.learned[m] for m in keep},
            dict(self.baselines),
            {m: f for m, f in self.folds.items() if m in keep},
            {m: h for m, h in self.half_scores.items() if m in keep},
        )

    def choose(self, is_tp: np.ndarray, order: Sequence[str] = (PAPER_METHOD,)) -> MethodChoice:
        """:func:`choose_default_method` on these candidates."""
        return choose_default_method(
            self.learned, self.baselines, is_tp, order, self.folds, self.half_scores
        )


def read_candidates(
    fold_dir: Path, val: Any, seed: int | None = None, regressors: bool = False
) -> Candidates:
    """The candidates of a model folder, scored on its validation lesions ``val``.

    Learned candidates are the scorers under ``fold_dir/scorers/`` whose
    ``calibration.json`` holds out-of-fold P(FP) for these validation lesions (the
    classifiers; with ``regressors`` the IoU regressors too, whose P(FP) is a Platt map
    of ``1 - IoU_hat``: measured and not adopted, module docstring); untrained
    candidates are the folder's other scorers (``requires_fit`` False), scored on them.
    A learned scorer's ``half_scores`` (its half-size fits), when the file has them, make
    it judged by its extrapolated AUC.
    Each learned scorer's inner folds are its ``calibration.json``'s ``oof_fold``; a file
    written before that field existed has them recomputed with ``seed`` (the experiment's,
    which the cross-fit used), and is counted pooled when ``seed`` is None.

    Args:
        fold_dir: ``RUN/fold_K`` (a model folder).
        val: The fold's validation :class:`~lesionuq.lesions.dataset.LesionSet`.
        seed: The seed of the cross-fit's inner split, for files without ``oof_fold``.
        regressors: Also admit the IoU regressors (``calibration.json`` with an
            ``iou_calibrator``).
    """
    is_tp = np.asarray(val.is_tp, dtype=bool)
    out = Candidates()
    root = Path(fold_dir) / "scorers"
    for folder in sorted(p for p in root.iterdir() if (p / SCORER_FILE).is_file()):
        name = folder.name
        if name not in CATALOGUE:
            continue
        if is_learned(name):
            path = folder / CALIBRATOR_FILE
            if not path.is_file():
                continue
            payload = json.loads(path.read_text())
            oof = payload.get("oof_p_fp")
            if oof is None or len(oof) != len(is_tp):
                continue  # no out-of-fold P(FP) for these lesions
            if payload.get("iou_calibrator") and not regressors:
                continue  # an IoU regressor
            out.learned[name] = np.asarray(oof, dtype=np.float64)
            fold = _inner_folds_of(payload, val, seed)
            if fold is not None:
                out.folds[name] = fold
            if payload.get("half_scores") is not None:
                rows = [[math.nan if v is None else v for v in r] for r in payload["half_scores"]]
                out.half_scores[name] = np.asarray(rows, dtype=np.float64)
        elif len(is_tp):
            scores = load_scorer(name, folder).score(val)
            out.baselines[name] = np.asarray(scores, dtype=np.float64)
    return out


def fit_default_method(
    fold_dir: Path,
    val: Any,
    review_target: str = "tp:0.95",
    order: Sequence[str] = (PAPER_METHOD,),
    seed: int | None = None,
) -> MethodChoice:
    """Choose a model folder's default P(FP) method and write ``default_method.json``.

    The candidates are :func:`read_candidates`'s; the rule is :func:`choose_default_method`.

    Args:
        fold_dir: ``RUN/fold_K`` (a model folder).
        val: The fold's validation :class:`~lesionuq.lesions.dataset.LesionSet`.
        review_target: For a baseline default, the target of the operating point stored
            with its calibrator (as the learned scorers' ``calibration.json``).
        order: Tie preference among learned scorers.
        seed: The seed of the cross-fit's inner split, for files without ``oof_fold``.

    Returns:
        The choice, as written.
    """
    is_tp = np.asarray(val.is_tp, dtype=bool)
    found = read_candidates(fold_dir, val, seed)
    choice = found.choose(is_tp, order)
    baselines = found.baselines
    if choice.is_baseline and choice.method in baselines:
        cal = PlattCalibrator(transform="identity").fit(baselines[choice.method], ~is_tp)
        p_val = cal.predict(baselines[choice.method])
        choice.calibrator = {
            "calibrator": cal.to_dict(),
            "oof_p_fp": [float(v) for v in p_val],
            "oof_is_tp": [bool(v) for v in is_tp],
            "operating_point": operating_point_of(p_val, is_tp, review_target),
        }
    atomic_write_text(
        Path(fold_dir) / DEFAULT_METHOD_FILE, json.dumps(choice.to_dict(), indent=1) + "\n"
    )
    return choice


def _inner_folds_of(payload: Mapping[str, Any], val: Any, seed: int | None) -> np.ndarray | None:
    """(N,) inner fold of each validation lesion of a ``calibration.json``, or None.

    ``oof_fold`` when stored; else, for a cross-fitted scorer (not a self-calibrated one,
    whose inner split is its own), :func:`~lesionuq.calibration.inner_folds` recomputed
    with ``seed`` and the stored ``n_inner``; else None (count every pair).
    """
    n = len(val)
    if payload.get("oof_fold") is not None:
        fold = np.asarray(payload["oof_fold"], dtype=np.int64)
        return fold if fold.shape == (n,) else None
    n_inner = payload.get("n_inner")
    if seed is None or payload.get("method") == "self" or not n_inner or n < 2:
        return None
    table = val.table
    groups = table["case_id"].astype(str).to_numpy() if "case_id" in table else None
    return inner_folds(np.asarray(val.is_tp, dtype=bool), groups, int(n_inner), seed)


def load_default_method(fold_dir: Path) -> MethodChoice | None:
    """``fold_dir/default_method.json``, or None for a folder fitted without it."""
    path = Path(fold_dir) / DEFAULT_METHOD_FILE
    if not path.is_file():
        return None
    return MethodChoice.from_dict(json.loads(path.read_text()))
