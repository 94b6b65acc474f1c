"""``gcnn_auto``: the paper's GCNN where the validation lesions show it helps, else MetaSeg.

The learning curve (``lesionuq learning-curve``) shows that a lesion GCNN trained on a few
dozen lesions ranks worse than simpler scorers, and better once it has a few hundred.
:class:`SelectedScorer` makes that choice from the validation lesions alone. Its
candidates are scorer instances, given as (name, scorer) pairs as scikit-learn's
``StackingClassifier(estimators=...)`` takes them; every fit uses clones
(:func:`lesionuq.calibration.clone`), the instances themselves stay unfitted. The
catalogue's ``gcnn_auto`` / ``gcnn_stack`` get theirs from the registry
(:func:`lesionuq.scorers.registry.make_estimators`); this module imports no registry.

1. The lesions are split into ``n_inner`` inner folds by case
   (:func:`lesionuq.calibration.inner_folds`, stratified by TP/FP).
2. Each candidate gets an accuracy-confidence AUC on the validation lesions: a learned
   candidate (``gcnn_auto``'s: MetaSeg and the GCNN) from its out-of-fold scores (each
   lesion scored by a model that never saw it); an untrained one (a voxel-uncertainty
   mean or logsum, size), if listed, from its scores directly (nothing is fitted). Every
   AUC counts the FP-TP pairs within an inner fold only
   (:func:`~lesionuq.evaluation.curves.within_fold_auc`): a pooled AUC would also compare
   lesions scored by different inner models, whose levels differ by chance, and so
   underrate the learned candidates.
3. The candidate with the highest AUC is chosen (ties: the earlier candidate; the
   simpler come first) and refitted on all the validation lesions. With ``half_fits``
   (the catalogue's ``gcnn_auto`` takes ``calibration.half_fits``, on by default), a
   learned candidate is judged by its AUC *extrapolated to the fit on all the lesions*,
   as the default P(FP) method is (:func:`~lesionuq.scorers.default_method.extrapolated_auc`
   on :func:`~lesionuq.calibration.half_fit_scores`): its inner models see (K-1)/K of
   the lesions, the chosen one all of them, and a scorer still gaining from more lesions
   is judged at the size it is used at.
4. A Platt map (:class:`~lesionuq.calibration.PlattCalibrator`, strictly increasing) from
   the chosen method's out-of-fold validation scores to FP is fitted, so that the output
   is a P(FP) in (0, 1) whichever method was chosen: scores of different inner folds stay
   comparable when this scorer is itself cross-fitted for calibration.

Test lesions never take part in the choice. The price is ``n_inner`` extra fits of each
learned candidate; the AUC of a small validation set is noisy, so near the cross-over
the choice can go either way (the learning curve measures what that costs).

Example:
    >>> pairs = [("metaseg_classif", MetaSegScorer("classif")), ("gcnn_classif", GCNNScorer())]
    >>> s = SelectedScorer(pairs).fit(val_lesions)
    >>> s.choice_, s.inner_auc_["gcnn_classif"]
    ('gcnn_classif', 0.87)
    >>> p_fp = s.score(test_lesions)  # (N,) in (0, 1)
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np
from scipy import special

from lesionuq.calibration import (
    Calibrator,
    PlattCalibrator,
    calibrator_from_dict,
    clipped_logit,
    clone,
    fit_monotone_logistic,
    half_fit_scores,
    inner_folds,
    scan_folds,
)
from lesionuq.evaluation.curves import within_fold_auc
from lesionuq.lesions.dataset import LesionSet
from lesionuq.methods import method_spec, outputs_p_fp
from lesionuq.scorers.base import LesionScorer, check_is_fitted
from lesionuq.scorers.default_method import extrapolated_auc

__all__ = ["CANDIDATES", "STACK_CANDIDATES", "SelectedScorer", "StackedScorer", "selection_aucs"]

#: ``gcnn_auto``'s candidates, from the catalogue (which says why these): MetaSeg, the GCNN.
CANDIDATES: tuple[str, ...] = method_spec("gcnn_auto").candidates
#: ``gcnn_stack``'s candidates, from the catalogue: MetaSeg's four features, the GCNN.
STACK_CANDIDATES: tuple[str, ...] = method_spec("gcnn_stack").candidates
_CHOSEN_DIR = "chosen"
_CANDIDATES_DIR = "candidates"


def selection_aucs(
    factories: dict[str, Callable[[], Any]], lesions: LesionSet, fold: np.ndarray
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Each candidate's accuracy-confidence AUC on validation lesions, out of fold.

    Args:
        factories: Candidate name -> zero-argument function returning an unfitted scorer.
        lesions: N labelled validation lesions.
        fold: (N,) inner fold of each lesion (0..K-1); learned candidates are fitted on
            the other folds and score this one.

    Returns:
        (AUC by name over the FP-TP pairs within an inner fold
        (:func:`~lesionuq.evaluation.curves.within_fold_auc`), a fraction in [0, 1] or NaN
        when no inner fold holds both classes; the (N,) out-of-fold scores by name).
    """
    aucs: dict[str, float] = {}
    scores: dict[str, np.ndarray] = {}
    is_tp = lesions.is_tp
    for name, factory in factories.items():
        scorer = factory()
        if not scorer.requires_fit:
            u = np.asarray(scorer.score(lesions), dtype=np.float64)
        else:
            u = np.full(len(lesions), np.nan)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # one-class inner folds
                for k in range(int(fold.max()) + 1):
                    train, test = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
                    fitted = factory().fit(lesions.subset(train), progress=False)
                    u[test] = np.asarray(fitted.score(lesions.subset(test)), dtype=np.float64)
        scores[name] = u
        aucs[name] = within_fold_auc(u, is_tp, fold)
    return aucs, scores


class SelectedScorer(LesionScorer):
    """Choose among candidate scorers by out-of-fold AUC on the validation lesions.

    Args:
        estimators: The candidates as (name, unfitted scorer) pairs, simplest first (ties
            go to the earlier); each fit uses a clone. The name is a method of the
            catalogue when the score is a P(FP) (its Platt map then takes the logit).
        n_inner: Inner folds of the choice (by case, stratified).
        seed: Seed of the inner split and of the halves (the candidates' own seeds are
            their parameters).
        name: Method name.
        half_fits: Judge learned candidates by their AUC extrapolated to the full fit
            (2 more fits per inner fold, on half of its training cases).
        half_splits: Distinct cuts into halves per inner fold (``splits`` of
            :func:`~lesionuq.calibration.half_fit_scores`).

    Attributes:
        candidates: The candidates' names (read-only).
        choice_: The chosen method's name.
        inner_auc_: Out-of-fold validation AUC (fraction) of every candidate.
        judged_auc_: The AUC the choice compared: ``inner_auc_``, extrapolated to the
            full fit for learned candidates with ``half_fits``.
        chosen_: The chosen scorer, refitted on all the validation lesions.
        platt_: Its validation scores -> P(FP) map (strictly increasing).
    """

    def __init__(
        self,
        estimators: Sequence[tuple[str, LesionScorer]],
        n_inner: int = 3,
        seed: int = 0,
        name: str = "gcnn_auto",
        half_fits: bool = False,
        half_splits: int = 1,
    ) -> None:
        self.estimators = [(c, scorer) for c, scorer in estimators]
        self.n_inner = n_inner
        self.seed = seed
        self.name = name
        self.half_fits = half_fits
        self.half_splits = half_splits

    @property
    def candidates(self) -> tuple[str, ...]:
        """The candidates' names, in order."""
        return tuple(c for c, _ in self.estimators)

    def _factories(self) -> dict[str, Callable[[], LesionScorer]]:
        """Candidate name -> a function returning a new clone of that candidate.

        Raises:
            ValueError: No candidates, a name twice or the selector's own, or a candidate
                that is not a :class:`LesionScorer`.
        """
        names = self.candidates
        bad = [c for c, s in self.estimators if c == self.name or not isinstance(s, LesionScorer)]
        if bad or not names or len(set(names)) < len(names):
            raise ValueError(f"{self.name}: bad candidates {list(names)}.")
        return {c: functools.partial(clone, s) for c, s in self.estimators}

    def fit(self, lesions: LesionSet, progress: bool = True) -> Self:
        """Choose the method on ``lesions``, refit it on all of them, fit its P(FP) map.

        Args:
            lesions: N labelled validation lesions (graphs for the GCNN, the table columns
                of the others). With fewer than 2 there is nothing to choose with: the
                first candidate is kept and its score mapped by ``sigmoid(u)``.
            progress: Unused (the inner fits are short); kept for the interface.

        Returns:
            (N,) float64 P(FP) in (0, 1), out of fold (in-sample with fewer than 2 lesions).

        Raises:
            ValueError: Bad candidates (:meth:`_factories`).
        """
        factories = self._factories()
        if len(lesions) < 2:  # nothing to choose with: the first candidate, sigmoid(u)
            self.choice_ = self.candidates[0]
            self.inner_auc_ = {c: math.nan for c in self.candidates}
            self.judged_auc_ = dict(self.inner_auc_)
            self.chosen_ = factories[self.choice_]()
            if self.chosen_.requires_fit:
                self.chosen_.fit(lesions, progress=False)
            self.platt_: Calibrator = PlattCalibrator.identity("identity")
            return self
        fold = self._inner_fold(lesions)
        aucs, scores = selection_aucs(factories, lesions, fold)
        judged = {k: float(v) for k, v in aucs.items()}
        if self.half_fits:
            for c, factory in factories.items():
                if math.isfinite(judged[c]) and factory().requires_fit:
                    half = half_fit_scores(factory, lesions, fold, self.seed, self.half_splits)
                    judged[c] = extrapolated_auc(judged[c], half, lesions.is_tp, fold)
        finite = {k: v for k, v in judged.items() if np.isfinite(v)}
        # one class only: no AUC can tell; keep the first (simplest) candidate
        choice = max(finite, key=lambda k: (finite[k], -self.candidates.index(k)), default=None)
        self.choice_ = choice or self.candidates[0]
        self.inner_auc_ = {k: float(v) for k, v in aucs.items()}
        self.judged_auc_ = judged
        self.chosen_ = factories[self.choice_]()
        if self.chosen_.requires_fit:
            self.chosen_.fit(lesions, progress=False)
        transform = "logit" if self._probability(self.choice_) else "identity"
        platt = PlattCalibrator(transform=transform)
        self.platt_ = platt.fit(scores[self.choice_], ~lesions.is_tp)
        return self

    def _inner_fold(self, lesions: LesionSet) -> np.ndarray:
        """(N,) ``n_inner`` inner folds by case (stratified, seeded; :func:`inner_folds`)."""
        return inner_folds(lesions.is_tp, self._cases(lesions), self.n_inner, self.seed)

    @staticmethod
    def _cases(lesions: LesionSet) -> np.ndarray | None:
        """(N,) case id of each lesion as str, or None without a ``case_id`` column."""
        table = lesions.table
        return table["case_id"].astype(str).to_numpy() if "case_id" in table else None

    @staticmethod
    def _probability(method: str) -> bool:
        """Whether ``method`` outputs a P(FP) in [0, 1] (the catalogue's ``output``)."""
        return outputs_p_fp(method)

    def score(self, lesions: LesionSet) -> np.ndarray:
        """(N,) float64 P(FP) in (0, 1): the chosen method's score through its Platt map.

        Raises:
            NotFittedError: Not fitted.
        """
        check_is_fitted(self)
        u = np.asarray(self.chosen_.score(lesions), dtype=np.float64)
        return np.asarray(self.platt_.predict(u), dtype=np.float64)

    def _state(self, folder: Path) -> dict[str, Any]:
        check_is_fitted(self)
        self.chosen_.save(folder / _CHOSEN_DIR)
        return {
            "choice": self.choice_,
            "inner_auc": {k: v if np.isfinite(v) else None for k, v in self.inner_auc_.items()},
            "judged_auc": {k: v if np.isfinite(v) else None for k, v in self.judged_auc_.items()},
            "platt": self.platt_.to_dict(),
        }

    def _set_state(self, state: dict[str, Any] | None, folder: Path) -> None:
        if state is None:
            raise ValueError(f"{folder}: scorer '{self.name}' was saved without its state.")
        self.choice_ = str(state["choice"])
        self.inner_auc_ = {
            k: math.nan if v is None else float(v) for k, v in state["inner_auc"].items()
        }
        # saved before the half fits: the choice compared the out-of-fold AUC itself
        judged = state.get("judged_auc", state["inner_auc"])
        self.judged_auc_ = {k: math.nan if v is None else float(v) for k, v in judged.items()}
        self.platt_ = calibrator_from_dict(state["platt"])
        self.chosen_ = LesionScorer.load(folder / _CHOSEN_DIR)


class StackedScorer(SelectedScorer):
    """Combine the candidates instead of choosing one: monotone stacking (``gcnn_stack``).

    Near the cross-over of the learning curve the out-of-fold AUCs of a small validation
    set cannot tell the simpler scorers from the GCNN, and a hard choice (``gcnn_auto``)
    pays for every wrong pick. Stacking weighs them instead:

    1. every candidate is scored out of fold over ``min(n_inner, number of cases)``
       inner folds grouped by case, so that a learned candidate is judged on scans it
       was not fitted on (an untrained candidate's scores are its own). Lesions from a
       single scan cannot show that: there the learned candidates are left out (weight 0)
       and only the untrained ones are stacked;
    2. ``P(FP) = sigmoid(sum_k a_k z_k + b)`` is fitted on those scores
       (:func:`~lesionuq.calibration.fit_monotone_logistic`), ``z_k`` the logit of a
       learned classifier's P(FP) (the score itself for other methods), every ``a_k >=
       1e-6``: the output never decreases when a candidate's uncertainty grows, and a
       candidate that adds nothing gets a near-zero weight rather than a negative one;
    3. every candidate is refitted on all the validation lesions (as scikit-learn's
       ``StackingClassifier`` does); new lesions get the weighted sum of their scores.

    The catalogue's candidates (:data:`STACK_CANDIDATES`) are MetaSeg's four features, each
    an untrained uncertainty of its own, and the paper's GCNN: with few validation
    lesions the GCNN's out-of-fold scores are poor and the voxel-uncertainty means carry
    the sum (a MetaSeg whose weights cannot change sign); with hundreds the GCNN does.
    The output is a P(FP) in (0, 1). Test lesions never take part.

    Args:
        estimators: The candidates as (name, unfitted scorer) pairs (see
            :class:`SelectedScorer`).
        n_inner: Inner folds (by case, stratified) when there are at least as many cases;
            else one per case (2 or more cases).
        seed: Seed of the inner split.
        name: Method name.

    Attributes:
        inner_auc_: Out-of-fold validation AUC (fraction) of every candidate.
        weights_: Slope ``a_k`` of every candidate (> 0).
        intercept_: ``b``.
        fitted_: Every candidate, refitted on all the validation lesions.
    """

    self_calibrated = True

    def __init__(
        self,
        estimators: Sequence[tuple[str, LesionScorer]],
        n_inner: int = 3,
        seed: int = 0,
        name: str = "gcnn_stack",
    ) -> None:
        super().__init__(estimators, n_inner, seed, name)

    def _z(self, method: str, u: np.ndarray) -> np.ndarray:
        """(N,) the stacking input of ``method``'s (N,) scores."""
        u = np.asarray(u, dtype=np.float64)
        return clipped_logit(u) if self._probability(method) else u

    def fit(self, lesions: LesionSet, progress: bool = True) -> Self:
        """Fit the stacking weights on out-of-fold scores, then refit every candidate.

        See :meth:`fit_predict_oof`, which also returns the out-of-fold P(FP).
        """
        self.fit_predict_oof(lesions, progress)
        return self

    def fit_predict_oof(self, lesions: LesionSet, progress: bool = True) -> np.ndarray:
        """Fit as :meth:`fit` does; return the fitting lesions' out-of-fold P(FP).

        The out-of-fold P(FP) of lesion i is the stacked output on its out-of-fold
        candidate scores (the stacking weights are fitted on them too): what a review
        threshold is chosen on, in place of cross-fitting a calibrator around this scorer
        (``self_calibrated``; :class:`lesionuq.calibration.CalibratedScorer`).

        Args:
            lesions: N labelled validation lesions. With fewer than 2 there are no inner
                folds: every weight is 1 and the intercept 0. From one scan only (one
                ``case_id``), the learned candidates are left out (weight 0, not fitted;
                a warning says so) unless no other candidate is listed.
            progress: Unused (the inner fits are short); kept for the interface.

        Returns:
            (N,) float64 P(FP) in (0, 1), out of fold (in-sample with fewer than 2 lesions).

        Raises:
            ValueError: Bad candidates (:meth:`SelectedScorer._factories`).
        """
        factories = self._factories()
        active = self._active(lesions)
        z = None
        weights = np.ones(len(active))
        self.inner_auc_ = {c: math.nan for c in self.candidates}
        self.intercept_ = 0.0
        self.oof_fold_ = np.zeros(len(lesions), dtype=np.int64)
        if len(lesions) >= 2:
            self.oof_fold_ = np.asarray(self._inner_fold(lesions), dtype=np.int64)
            aucs, scores = selection_aucs(
                {c: factories[c] for c in active}, lesions, self.oof_fold_
            )
            self.inner_auc_.update({k: float(v) for k, v in aucs.items()})
            z = np.stack([self._z(c, scores[c]) for c in active], axis=1)
            weights, self.intercept_ = fit_monotone_logistic(z, ~lesions.is_tp)
        self.weights_ = dict.fromkeys(self.candidates, 0.0)
        self.weights_.update({c: float(w) for c, w in zip(active, weights, strict=True)})
        self.fitted_: dict[str, LesionScorer] = {}
        for c in active:
            scorer = factories[c]()
            if scorer.requires_fit:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)  # one class: constant
                    scorer.fit(lesions, progress=False)
            self.fitted_[c] = scorer
        if z is None:  # no inner folds: the in-sample P(FP)
            return self.score(lesions)
        return np.asarray(special.expit(z @ weights + self.intercept_), dtype=np.float64)

    def _active(self, lesions: LesionSet) -> list[str]:
        """The candidates that take part: all, or the untrained ones when from one scan.

        A learned candidate must be judged on scans it was not fitted on; lesions of a
        single scan cannot show how it does on another (their inner folds mix lesions of
        that scan, and its quirks, e.g. FPs more certain than TPs, are then learned and
        confirmed alike).
        """
        cases = self._cases(lesions)
        if cases is None or np.unique(cases).size >= 2:
            return list(self.candidates)
        learns = {c: scorer.requires_fit for c, scorer in self.estimators}
        untrained = [c for c in self.candidates if not learns[c]]
        learned = [c for c in self.candidates if learns[c]]
        if not untrained or not learned:
            return list(self.candidates)
        warnings.warn(
            f"{self.name}: the {len(lesions)} validation lesions come from one scan; "
            f"the learned candidates ({', '.join(learned)}) are left out, since one scan "
            "cannot show how they do on another.",
            UserWarning,
            stacklevel=3,
        )
        return untrained

    def _inner_fold(self, lesions: LesionSet) -> np.ndarray:
        """(N,) inner folds, by case whenever there are at least 2 cases.

        ``min(n_inner, number of cases)`` folds grouped by case (so every out-of-fold
        score comes from models that never saw that scan); by lesion otherwise.
        """
        return scan_folds(lesions, self.n_inner, self.seed)

    def score(self, lesions: LesionSet) -> np.ndarray:
        """(N,) float64 P(FP) in (0, 1): the weighted sum of the candidates' scores.

        Raises:
            NotFittedError: Not fitted.
        """
        check_is_fitted(self)
        f = np.full(len(lesions), self.intercept_)
        for c, scorer in self.fitted_.items():
            f += self.weights_[c] * self._z(c, scorer.score(lesions))
        return np.asarray(special.expit(f), dtype=np.float64)

    def _state(self, folder: Path) -> dict[str, Any]:
        check_is_fitted(self)
        for c, scorer in self.fitted_.items():
            scorer.save(folder / _CANDIDATES_DIR / c)
        return {
            "weights": self.weights_,
            "active": list(self.fitted_),
            "intercept": self.intercept_,
            "inner_auc": {k: v if np.isfinite(v) else None for k, v in self.inner_auc_.items()},
        }

    def _set_state(self, state: dict[str, Any] | None, folder: Path) -> None:
        if state is None:
            raise ValueError(f"{folder}: scorer '{self.name}' was saved without its state.")
        self.weights_ = {k: float(v) for k, v in state["weights"].items()}
        self.intercept_ = float(state["intercept"])
        self.inner_auc_ = {
            k: math.nan if v is None else float(v) for k, v in state["inner_auc"].items()
        }
        active = state.get("active", list(self.weights_))  # saved before "active": all
        self.fitted_ = {c: LesionScorer.load(folder / _CANDIDATES_DIR / c) for c in active}
