"""Site adaptation (``lesionuq.scorers.site``): a frozen fitted scorer stacked with the
untrained baselines on a few labelled local scans."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from helpers import random_lesion_set
from lesionuq.calibration import clone
from lesionuq.errors import NotFittedError
from lesionuq.lesions.dataset import LesionSet
from lesionuq.scorers import LesionScorer, load_scorer
from lesionuq.scorers.baselines import MetaSegScorer
from lesionuq.scorers.site import SITE_BASELINES, FrozenScorer, site_stack


def _site(n: int, seed: int, fp_by: str, n_cases: int = 4) -> LesionSet:
    """``n`` lesions over ``n_cases`` scans whose FPs show in one cue only.

    ``fp_by="size"``: FPs are 1-2 voxels and TPs 4-5, every uncertainty column random.
    ``fp_by="entropy"``: FPs have entropy_mean in (0.6, 1), TPs in (0, 0.4), and the sizes
    are reversed (FPs large): a rule learned on the first site ranks the second backwards.
    """
    lesions = random_lesion_set(n, seed=seed)
    t = lesions.table
    rng = np.random.default_rng(seed)
    fp = rng.random(n) < 0.5
    fp[:2] = [False, True]
    t["is_tp"] = ~fp
    t["iou_adj"] = np.where(fp, 0.0, 0.8)
    t["case_id"] = [f"s{seed}_{i % n_cases}" for i in range(n)]
    small, large = rng.integers(1, 3, n), rng.integers(4, 6, n)
    if fp_by == "size":
        t["n_voxels"] = np.where(fp, small, large)
    else:
        t["n_voxels"] = np.where(fp, large, small)
        t["entropy_mean"] = np.where(fp, rng.uniform(0.6, 1.0, n), rng.uniform(0.0, 0.4, n))
    return lesions


def _auc(p_fp: np.ndarray, lesions: LesionSet) -> float:
    return float(roc_auc_score(~lesions.is_tp, p_fp))


@pytest.fixture(scope="module")
def source():
    """MetaSeg fitted where FPs are small: it learns 'small = FP'."""
    return MetaSegScorer("classif").fit(_site(200, 0, "size"))


def test_frozen_scorer_ignores_fit_and_clones_to_the_same_model(source, tmp_path):
    other = _site(60, 1, "entropy")
    frozen = FrozenScorer(source)
    assert frozen.name == "metaseg_classif" and not frozen.requires_fit
    before = frozen.score(other)
    np.testing.assert_array_equal(frozen.fit(other).score(other), before)
    np.testing.assert_array_equal(before, source.score(other))
    twin = clone(frozen)
    assert twin is not frozen and twin.scorer is source
    frozen.save(tmp_path / "f")
    back = load_scorer("metaseg_classif", tmp_path / "f")
    assert isinstance(back, FrozenScorer)
    np.testing.assert_array_equal(back.score(other), before)
    with pytest.raises(NotFittedError):
        FrozenScorer(MetaSegScorer("classif"))


def test_site_stack_turns_to_the_local_cue_when_the_source_rule_fails(source, tmp_path):
    local, new = _site(80, 1, "entropy"), _site(200, 2, "entropy")
    assert _auc(source.score(new), new) < 0.2  # the source rule ranks the new site backwards
    stack = site_stack(source).fit(local)
    assert stack.candidates == ("metaseg_classif", *SITE_BASELINES)
    assert stack.weights_["metaseg_classif"] == pytest.approx(1e-6)  # the floor: no weight
    assert stack.weights_["entropy_mean"] > 1.0
    assert stack.inner_auc_["entropy_mean"] == 1.0
    p = stack.score(new)
    assert p.shape == (200,) and np.all((p > 0) & (p < 1))
    assert _auc(p, new) > 0.99
    # saved, the stack is read back in a new process (the package knows FrozenScorer)
    stack.save(tmp_path / "s")
    code = (
        "import json, sys; from lesionuq.scorers import LesionScorer;"
        "s = LesionScorer.load(sys.argv[1]);"
        "print(json.dumps([type(s.fitted_['metaseg_classif']).__name__, s.weights_]))"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, tmp_path / "s"], check=True, capture_output=True, text=True
    )
    assert json.loads(run.stdout) == ["FrozenScorer", stack.weights_]
    np.testing.assert_array_equal(LesionScorer.load(tmp_path / "s").score(new), p)


def test_site_stack_keeps_the_source_where_its_rule_holds(source):
    local, new = _site(80, 3, "size"), _site(200, 4, "size")
    stack = site_stack(source).fit(local)
    assert stack.inner_auc_["metaseg_classif"] == 1.0
    assert stack.weights_["metaseg_classif"] > 0.5
    assert _auc(stack.score(new), new) > 0.99


def test_site_stack_refuses_bad_inputs(source):
    with pytest.raises(ValueError, match="baselines must be among"):
        site_stack(source, baselines=("entropy_mean", "metaseg_classif"))
    renamed = FrozenScorer(source, name="size")
    with pytest.raises(ValueError, match="differ"):
        site_stack(renamed)
    with pytest.raises(NotFittedError):
        site_stack(MetaSegScorer("classif"))
