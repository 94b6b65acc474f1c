"""Dissemination in space (DIS) of one scan, and how much it depends on doubtful lesions.

Decision support, not a diagnosis: the McDonald 2017 criteria count the brain regions
(periventricular, cortical/juxtacortical, infratentorial; the spinal cord is outside a
brain scan) holding at least one T2 lesion; DIS needs >= 2 of the 4 regions, so in a
brain scan >= 2 of these 3. Three verdicts are given:

1. with every lesion found;
2. with only the lesions below the review threshold (those not flagged for review);
3. the probability that DIS holds when each lesion is real with probability
   ``1 - P(FP)``, independently of the others. Region ``r`` then holds a real lesion with
   probability ``q_r = 1 - prod_{i in r} P(FP)_i`` and the regions are independent (each
   lesion lies in one region), so the number of regions with a real lesion follows the
   *Poisson-binomial distribution* of ``(q_r)``, and

       P(DIS) = P(at least 2 regions) = 1 - prod_r (1 - q_r) - sum_r q_r prod_{s != r} (1 - q_s),

   computed exactly (the product formula; two lesions in two regions give
   ``(1 - p_1)(1 - p_2)``).

A registration that is not trusted gives locations ``unknown`` and every verdict
``unknown``; a region without a lesion that the scan does not cover
(:func:`lesionuq.location.classify.region_coverage` below the rules' ``min_coverage``) is
"not assessable", and a verdict that such a region could change is "not determinable".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lesionuq.location.classify import DIS_REGIONS

__all__ = ["dis_probability", "dis_summary", "region_probabilities"]


def region_probabilities(locations: Sequence[str], p_fp: np.ndarray) -> dict[str, float]:
    """``q_r = 1 - prod_{i in r} P(FP)_i``: the probability region r holds a real lesion.

    Args:
        locations: (N,) class of each lesion.
        p_fp: (N,) P(FP) of each lesion.

    Returns:
        Region name (:data:`DIS_REGIONS`) -> q_r (0 for a region without a lesion).
    """
    p = np.clip(np.asarray(p_fp, dtype=np.float64), 0.0, 1.0)
    loc = np.asarray(list(locations), dtype=object)
    return {r: float(1.0 - np.prod(p[loc == r])) if np.any(loc == r) else 0.0 for r in DIS_REGIONS}


def dis_probability(q: Sequence[float], needed: int = 2) -> float:
    """P(at least ``needed`` of independent events with probabilities ``q``) (exact).

    The Poisson-binomial tail by dynamic programming over the events
    (``dist[k]`` = P(k events so far)).

    Args:
        q: (R,) event probabilities.
        needed: Least number of events.

    Returns:
        The probability in [0, 1].
    """
    dist = np.zeros(len(q) + 1)
    dist[0] = 1.0
    for qr in q:
        dist[1:] = dist[1:] * (1.0 - qr) + dist[:-1] * qr
        dist[0] *= 1.0 - qr
    return float(np.clip(dist[needed:].sum(), 0.0, 1.0))


def _verdict(present: set[str], unseen: set[str]) -> str:
    if len(present) >= 2:
        return "met"
    if len(present) + len(unseen - present) >= 2:
        return "not determinable"
    return "not met"


def dis_summary(
    locations: Sequence[str],
    p_fp: np.ndarray,
    review: np.ndarray,
    lesion_ids: np.ndarray,
    coverage: Mapping[str, float] | None = None,
    min_coverage: float = 0.5,
    registration_ok: bool = True,
) -> dict[str, Any]:
    """The DIS verdicts of one scan (see the module's docstring), JSON-able.

    Args:
        locations: (N,) class of each lesion (:data:`~lesionuq.location.classify.LOCATIONS`).
        p_fp: (N,) P(FP) of each lesion.
        review: (N,) bool, lesions flagged for review (``p_fp >= threshold``).
        lesion_ids: (N,) ids of the lesions (for the lesions that decide the verdict).
        coverage: Region -> fraction of it inside the scan (None: fully covered).
        min_coverage: Below this a region without lesions is not assessable.
        registration_ok: False gives every verdict ``unknown``.

    Returns:
        Keys ``regions`` (region -> {``n_lesions``, ``n_kept``, ``coverage``,
        ``assessable``, ``q`` (P(region holds a real lesion)), ``deciding_lesion`` (the
        id of the lesion with the least P(FP) there)}), ``verdict``,
        ``verdict_without_review``, ``probability`` (None when unknown),
        ``probability_method``, ``n_review``, ``sentence``.
    """
    loc = np.asarray(list(locations), dtype=object)
    p = np.asarray(p_fp, dtype=np.float64)
    rev = np.asarray(review, dtype=bool)
    ids = np.asarray(lesion_ids)
    cov = {r: 1.0 for r in DIS_REGIONS} if coverage is None else dict(coverage)
    q = region_probabilities(list(loc), p)
    regions: dict[str, dict[str, Any]] = {}
    for r in DIS_REGIONS:
        here = loc == r
        c = cov.get(r, float("nan"))
        assessable = bool(np.any(here)) or (np.isfinite(c) and c >= min_coverage)
        best = int(ids[here][np.argmin(p[here])]) if np.any(here) else None
        regions[r] = {
            "n_lesions": int(here.sum()),
            "n_kept": int((here & ~rev).sum()),
            "coverage": None if not np.isfinite(c) else round(float(c), 3),
            "assessable": assessable if registration_ok else False,
            "q": round(q[r], 6),
            "deciding_lesion": best,
        }
    method = (
        "Poisson-binomial over the regions: region r holds a real lesion with probability "
        "q_r = 1 - prod_(i in r) P(FP)_i (lesions independent), P(DIS) = P(>= 2 regions)"
    )
    n_review = int(rev.sum())
    if not registration_ok:
        sentence = (
            "DIS: unknown (the registration to the MNI152 template is not trusted, so the "
            "lesion locations are unknown). Decision support only, not a diagnosis."
        )
        return {
            "regions": regions,
            "verdict": "unknown",
            "verdict_without_review": "unknown",
            "probability": None,
            "probability_method": method,
            "n_review": n_review,
            "sentence": sentence,
        }
    unseen = {r for r in DIS_REGIONS if not regions[r]["assessable"]}
    present = {r for r in DIS_REGIONS if regions[r]["n_lesions"] > 0}
    kept = {r for r in DIS_REGIONS if regions[r]["n_kept"] > 0}
    verdict, verdict_kept = _verdict(present, unseen), _verdict(kept, unseen)
    prob = dis_probability([q[r] for r in DIS_REGIONS])
    named = ", ".join(
        f"{r} (lesion {regions[r]['deciding_lesion']})" for r in DIS_REGIONS if r in present
    )
    parts = [f"DIS: {verdict}" + (f" ({named})" if named else " (no lesion in a DIS region)")]
    if n_review:
        still = "still " if verdict_kept == verdict else ""
        parts.append(f"{still}{verdict_kept} without the {n_review} lesion(s) flagged for review")
    else:
        parts.append("no lesion is flagged for review")
    parts.append(f"probability {prob:.2f} under the model's P(FP)")
    sentence = "; ".join(parts) + "."
    if unseen:
        sentence += f" Not assessable (outside the scan): {', '.join(sorted(unseen))}."
    sentence += " Decision support only, not a diagnosis."
    return {
        "regions": regions,
        "verdict": verdict,
        "verdict_without_review": verdict_kept,
        "probability": round(prob, 6),
        "probability_method": method,
        "n_review": n_review,
        "sentence": sentence,
    }
