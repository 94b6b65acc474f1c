"""Pinned scores of tiny GCNN fits: the shared training loop must not change a number.

The values were recorded on the CPU before the GCNN scorers' two training loops became
one (``lesionuq.scorers.nn``, issue 26). Each case trains for six epochs on twelve
synthetic lesions with one thread; the same seeds must give the same fitted weights and
so the same scores. The tolerance only allows for another CPU's float kernels and torch
build: on the machine that recorded them the scores are identical to the last bit; on the
host CPU of an H200 machine (torch 2.11) one score of ``ens_auc`` moved by 1.9e-6 relative,
float32 rounding through six epochs, far below what any change to the loop moves.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from lesionuq.config import GCNNConfig
from lesionuq.scorers.base import LesionScorer
from lesionuq.scorers.gcnn import GCNNScorer
from lesionuq.scorers.gcnn_ens import GCNNEnsConfig, GCNNEnsembleScorer
from lesionuq.scorers.robust import RobustGCNNScorer
from test_gcnn import synthetic_lesions

PAPER = GCNNConfig(epochs=6, seed=7)

CASES: dict[str, tuple[Callable[[], LesionScorer], list[float], list[int]]] = {
    "classif": (
        lambda: GCNNScorer("classif", PAPER),
        [0.4660126268863678, 0.49671223759651184, 0.45884355902671814,
         0.49752941727638245, 0.46413567662239075, 0.4942575991153717],
        [6],
    ),
    "reg": (
        lambda: GCNNScorer("reg", PAPER),
        [0.5982184410095215, 0.6654047966003418, 0.5747644305229187,
         0.5518350601196289, 0.6270762085914612, 0.6729118824005127],
        [6],
    ),
    "no_val": (
        lambda: GCNNScorer("classif", GCNNConfig(epochs=6, seed=7, val_fraction=0.0)),
        [0.4566265940666199, 0.4800459146499634, 0.4365317225456238,
         0.4528566002845764, 0.45329487323760986, 0.47255939245224],
        [6],
    ),
    "robust": (  # the _augment hook and the per-scan normalisation
        lambda: RobustGCNNScorer("classif", PAPER, augment=True, scan_norm=True),
        [0.46606045961380005, 0.50790935754776, 0.48211726546287537,
         0.507466197013855, 0.4597946107387543, 0.5070499777793884],
        [6],
    ),
    "ens_loss": (  # dropout, weight decay, the hybrid head, two members
        lambda: GCNNEnsembleScorer(GCNNEnsConfig(n_models=2, epochs=6, seed=7)),
        [0.46926577389240265, 0.630303680896759, 0.3581102341413498,
         0.47080761194229126, 0.4377122223377228, 0.5830032527446747],
        [6, 6],
    ),
    "ens_auc": (
        lambda: GCNNEnsembleScorer(
            GCNNEnsConfig(n_models=2, epochs=6, seed=7, select="auc", readout="sum")
        ),
        [0.2790973025839776, 0.9983850717544556, 0.023927441015985096,
         0.9869179427623749, 0.03459662041859701, 0.9629428386688232],
        [3, 4],
    ),
    "ens_last": (
        lambda: GCNNEnsembleScorer(
            GCNNEnsConfig(
                n_models=1, epochs=6, seed=7, select="last", lesion_features=False,
                readout="mean", dropout=0.0,
            )
        ),
        [0.47020697593688965, 0.49588409066200256, 0.46618977189064026,
         0.4968741238117218, 0.4685767590999603, 0.4945501983165741],
        [6],
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_tiny_fit_gives_the_pinned_scores(case: str) -> None:
    make, scores, best = CASES[case]
    scorer = make().fit(synthetic_lesions(6, seed=3), progress=False)
    np.testing.assert_allclose(scorer.score(synthetic_lesions(3, seed=4)), scores, rtol=1e-5)
    kept = scorer.best_epochs_ if isinstance(scorer, GCNNEnsembleScorer) else [scorer.best_epoch_]
    assert kept == best
