"""Two label-free ways to move a lesion scorer to another family (issue 31), measured.

On the cross-family bench (``benchmarks/families.py``; run it first) the source family's
scorers score the target family's test lesions. A site has the target's *unlabelled*
scans, so two standard label-free adaptations can use them; both were fixed before
their results and are measured here, per setting ``X->Y`` and fold, on the target's test
lesions of the fold (the batch a site would score):

- ``gcnn_retarget``: the source ``gcnn_classif`` with its node-feature standardisation
  (mean and SD of every node-feature column, fitted on the source's training lesions)
  re-estimated on the target batch's nodes: the GCNN sees target features on the scale
  its source features had (the idea of AdaBN, Li et al. 2016). ``gcnn_retarget_scan``
  does the same per scan (what a single-scan ``predict`` could do).
- ``consensus``: the spectral meta-learner for ranked predictions (SUMMA, Ahsen et al.
  2019): with the source default and the seven untrained baselines as base rankers,
  the off-diagonal covariance of their normalised ranks on the batch is fitted by a
  rank-one matrix ``v v^T``; under conditional independence given the label,
  ``v_i`` is proportional to ``AUC_i - 1/2``, so ``consensus_pick`` reports the ranker
  with the largest ``v_i`` and ``consensus`` the ``max(v, 0)``-weighted rank sum.

A variant counts by the bench's rule: it loses at most 0.5 AUC points to ``gcnn_classif``
within each family and gains over it on every cross-family setting.

Prints the difference to the setting's best baseline (the voxel aggregates, size and the
source's MetaSeg, in hindsight, as ``families.py``) and to ``gcnn_classif`` (paired case
bootstrap, B = 1000), and ``RESULT unlabelled <setting> <method> diff_best <d> ci <lo>
<hi> vs_gcnn <d>``; writes ``OUT/families_unlabelled.csv``.

Usage:
    python benchmarks/families_unlabelled.py [--out runs/families] [--families a,b,c]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.stats import rankdata

from lesionuq.evaluation.bootstrap import bootstrap_auc
from lesionuq.lesions.dataset import LesionSet
from lesionuq.rundir import RunDir
from lesionuq.scorers import load_scorer
from lesionuq.scorers.default_method import load_default_method
from lesionuq.scorers.gcnn import GCNNScorer
from lesionuq.scorers.site import SITE_BASELINES

ADAPTED = ("gcnn_retarget", "gcnn_retarget_scan", "consensus_pick", "consensus")


def node_statistics(lesions: LesionSet) -> tuple[torch.Tensor, torch.Tensor]:
    """(F,) mean and SD (SD 1 where it is 0) over every node of ``lesions``, as ``fit``."""
    x = torch.cat([g.x for g in lesions.graphs]).double()
    sd = x.std(0, unbiased=False)
    return x.mean(0).float(), torch.where(sd > 1e-8, sd, torch.ones_like(sd)).float()


def retargeted(scorer: GCNNScorer, lesions: LesionSet) -> np.ndarray:
    """(N,) scores of ``lesions`` with the standardisation re-estimated on them."""
    saved = scorer.feature_mean_, scorer.feature_std_
    try:
        scorer.feature_mean_, scorer.feature_std_ = node_statistics(lesions)
        return scorer.score(lesions)
    finally:
        scorer.feature_mean_, scorer.feature_std_ = saved


def rank_one_loadings(ranks: np.ndarray, iterations: int = 500) -> np.ndarray:
    """(M,) ``v`` with ``cov(ranks)_ij ~ v_i v_j`` off the diagonal (SUMMA's fit).

    Args:
        ranks: (M, N) normalised ranks of N items by M rankers.

    Returns:
        The loadings, signed so that they sum to a positive number.
    """
    q = np.cov(ranks)
    off = ~np.eye(len(q), dtype=bool)
    v = np.sqrt(np.clip(np.diag(q), 1e-12, None))
    for _ in range(iterations):  # alternate: fill the diagonal, take the top eigenpair
        a = np.where(off, q, np.outer(v, v))
        w, vecs = np.linalg.eigh(a)
        new = vecs[:, -1] * np.sqrt(max(w[-1], 0.0))
        new = new if new.sum() >= 0 else -new
        if np.allclose(new, v, atol=1e-12):
            break
        v = new
    return v


def setting_scores(source: Path, target: Path) -> pd.DataFrame:
    """One row per target test lesion: ``fold, case_id, is_tp`` and every method's score."""
    src, tgt = RunDir(source), RunDir(target)
    _, _, splits = tgt.read_plan()
    frames = []
    for split in splits:
        k = split.fold
        test = LesionSet.load(tgt.lesion_set(k, "test"))
        frame = test.table[["case_id", "is_tp"]].copy()
        frame.insert(0, "fold", k)
        for m in SITE_BASELINES:
            frame[m] = load_scorer(m, tgt.scorer(k, m)).score(test)
        frame["metaseg_classif"] = load_scorer(
            "metaseg_classif", src.scorer(k, "metaseg_classif")
        ).score(test)
        gcnn = load_scorer("gcnn_classif", src.scorer(k, "gcnn_classif"))
        assert isinstance(gcnn, GCNNScorer)
        frame["gcnn_classif"] = gcnn.score(test)
        frame["gcnn_retarget"] = retargeted(gcnn, test)
        per_scan = np.zeros(len(test))
        cases = test.table["case_id"].to_numpy()
        for c in np.unique(cases):
            idx = np.flatnonzero(cases == c)
            per_scan[idx] = retargeted(gcnn, test.subset(idx))
        frame["gcnn_retarget_scan"] = per_scan
        choice = load_default_method(src.fold(k))
        default = choice.method if choice is not None else "gcnn_classif"
        frame["default"] = load_scorer(default, src.scorer(k, default)).score(test)
        rankers = ["default", *SITE_BASELINES]
        ranks = np.vstack([rankdata(frame[m]) / len(frame) for m in rankers])
        v = rank_one_loadings(ranks)
        frame["consensus_pick"] = frame[rankers[int(np.argmax(v))]]
        frame["consensus"] = (np.clip(v, 0, None)[:, None] * ranks).sum(0)
        print(
            f"{source.parent.name}->{target.parent.name} fold {k}: default {default}, "
            f"consensus picks {rankers[int(np.argmax(v))]}",
            flush=True,
        )
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/families"))
    parser.add_argument("--families", default="a,b,c")
    parser.add_argument("--n-boot", type=int, default=1000)
    args = parser.parse_args()
    runs = {f.upper(): args.out / f"fam{f.upper()}" / "run" for f in args.families.split(",")}
    baselines = [*SITE_BASELINES, "metaseg_classif"]
    shown = ["gcnn_classif", "default", *ADAPTED]
    rows = []
    for s, src in runs.items():
        for t, tgt in runs.items():
            lesions = setting_scores(src, tgt)
            methods = baselines + shown
            boot = bootstrap_auc(lesions, methods, n_boot=args.n_boot, seed=0)
            point = dict(zip(methods, 100 * boot.point, strict=True))
            best = max(baselines, key=lambda m: point[m])
            d, lo, hi = (100 * a for a in boot.difference(best))
            p, plo, phi = (100 * a for a in boot.difference("gcnn_classif"))
            for m in shown:
                i = methods.index(m)
                rows.append(
                    {
                        "setting": f"{s}->{t}",
                        "method": m,
                        "auc": point[m],
                        "best_baseline": best,
                        "diff_best": d[i],
                        "diff_lo": lo[i],
                        "diff_hi": hi[i],
                        "vs_gcnn": p[i],
                        "vs_gcnn_lo": plo[i],
                        "vs_gcnn_hi": phi[i],
                    }
                )
                print(
                    f"RESULT unlabelled {s}->{t} {m} diff_best {d[i]:.2f} ci {lo[i]:.2f} "
                    f"{hi[i]:.2f} vs_gcnn {p[i]:.2f}"
                )
    table = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "families_unlabelled.csv", index=False)
    pd.set_option("display.width", 200)
    for col in ("diff_best", "vs_gcnn"):
        print(f"\n{col} (points)")
        print(table.pivot(index="setting", columns="method", values=col).round(2).to_string())


if __name__ == "__main__":
    main()
