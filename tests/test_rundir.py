from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from lesionuq.config import ExperimentConfig
from lesionuq.io import Case, InputError
from lesionuq.rundir import (
    RunDir,
    fit_digest,
    graphs_digest,
    make_folds,
    preprocess_digest,
    sample_digest,
    shift_digest,
    stamp_ok,
    train_digest,
    write_stamp,
)


@pytest.mark.parametrize(("n", "k"), [(20, 4), (83, 4), (7, 3), (5, 2)])
def test_each_case_is_tested_exactly_once(n, k):
    ids = [f"c{i:02d}" for i in range(n)]
    folds = make_folds(ids, k, val_fraction=0.2, seed=1)
    assert len(folds) == k
    tested = [c for f in folds for c in f.test]
    assert sorted(tested) == sorted(ids)
    for f in folds:
        assert set(f.train) | set(f.val) | set(f.test) == set(ids)
        assert not set(f.train) & set(f.val)
        assert not set(f.test) & (set(f.train) | set(f.val))
        assert len(f.val) >= 1 and len(f.train) >= 1
    sizes = [len(f.test) for f in folds]
    assert max(sizes) - min(sizes) <= 1


def test_paper_split_proportions():
    folds = make_folds([str(i) for i in range(83)], 4, 0.2, seed=0)
    f = folds[0]
    assert len(f.test) == 21
    assert len(f.val) == round(0.2 * 62)
    assert len(f.train) == 62 - len(f.val)


def test_folds_are_seeded():
    ids = [str(i) for i in range(20)]
    assert make_folds(ids, 4, seed=3) == make_folds(ids, 4, seed=3)
    assert make_folds(ids, 4, seed=3) != make_folds(ids, 4, seed=4)


def test_too_few_cases():
    with pytest.raises(InputError, match="too few"):
        make_folds(["a", "b", "c"], 4)


def test_plan_round_trip(tmp_path):
    cfg = ExperimentConfig().replace(folds=2)
    folds = make_folds([str(i) for i in range(6)], 2)
    rd = RunDir(tmp_path / "run")
    rd.write_plan(cfg, tmp_path / "cases.csv", folds)
    cfg2, data, folds2 = rd.read_plan()
    assert cfg2 == cfg and folds2 == folds and data == (tmp_path / "cases.csv").resolve()


def test_not_a_run(tmp_path):
    with pytest.raises(InputError, match="not a run directory"):
        RunDir(tmp_path).read_plan()


def test_stamps(tmp_path):
    p = tmp_path / "stamp.json"
    assert not stamp_ok(p, "abc")
    write_stamp(p, "abc", seconds=1.5)
    assert stamp_ok(p, "abc")
    assert not stamp_ok(p, "abd")


#: Stage digests of the default config (2 folds of c0..c5), as written by the runs made
#: before issue 26 moved them: a changed string means every earlier run recomputes.
PINNED = {
    "unet": {
        "preprocess": ("1a79c830e03792bf", "dda3777b04586389"),
        "train": "c99aa908ff11c76b",
        "sample": "a89a1a904ddcd48f",
        "graphs": "3dfcb29d7ecdb924",
        "fit": {
            "gcnn_classif": "786d00dc950960b7",
            "gcnn_reg": "f4f2a9b343ed8832",
            "entropy_mean": "743a900b79be0010",
            "size": "411e63010417ae2a",
            "metaseg_classif": "abc1b1b47ebd8099",
        },
        "shift": "2cb53fceddedc2e1",  # the t prediction interval (2026-12-03); was c0a7331e2a19088e
    },
    "samples": {
        "preprocess": ("6dfb007246765121", "2854b2760d300ada"),
        "train": "86010deb2c8a35f0",
        "sample": "454f309081705de0",
        "graphs": "b465b27fe94363bd",
        "fit": {
            "gcnn_classif": "0818ebca1fa19a38",
            "gcnn_reg": "514a03a5d420ca19",
            "entropy_mean": "b931fa4d4bd370da",
            "size": "f033f5ba665384ee",
            "metaseg_classif": "059b66805bfa3d25",
        },
        "shift": "a39840615bb96462",  # the same; was 340fb6a3248a9609
    },
}


@pytest.mark.parametrize("protocol", ["unet", "samples"])
def test_stage_digests_are_unchanged(protocol):
    """An existing run resumes without recomputation: every stage's digest is pinned."""
    cfg = ExperimentConfig().replace(folds=2, protocol=protocol)
    split = make_folds([f"c{i}" for i in range(6)], 2, fixed_segmenter=protocol == "samples")[0]
    plain = Case("a", (Path("/d/a_flair.nii.gz"),), Path("/d/a_mask.nii.gz"))
    full = Case(
        "b",
        (Path("/d/b_flair.nii.gz"),),
        None,
        Path("/d/b_ignore.nii.gz"),
        samples=Path("/d/b_s.nii.gz"),
    )
    pinned = PINNED[protocol]
    assert (preprocess_digest(cfg, plain), preprocess_digest(cfg, full)) == pinned["preprocess"]
    assert train_digest(cfg, split) == pinned["train"]
    assert sample_digest(cfg, split) == pinned["sample"]
    graphs = graphs_digest(cfg, split)
    assert graphs == pinned["graphs"]
    # the half-size fits (issue 31, on by default) are new work for the classifiers only:
    # without them every scorer's digest is the pinned one; with them only the classifiers'
    # change (an earlier run refits them, to add the fits), the regressor's and baselines' not
    before = cfg.replace(calibration=dataclasses.replace(cfg.calibration, half_fits=False))
    assert {m: fit_digest(graphs, m, before) for m in pinned["fit"]} == pinned["fit"]
    changed = {m for m in pinned["fit"] if fit_digest(graphs, m, cfg) != pinned["fit"][m]}
    assert changed == {"gcnn_classif", "metaseg_classif"}
    assert shift_digest(cfg, split) == pinned["shift"]


def test_half_fits_enter_the_digest_of_exactly_the_scorers_that_make_them():
    """``fit_digest`` tells classifiers by the catalogue's ``output``, ``CalibratedScorer``
    by the scorer's task: the two agree on every learned method, so a digest changes
    exactly when half-size fits are added to a scorer's fit."""
    from lesionuq.calibration import is_regressor
    from lesionuq.config import GraphConfig
    from lesionuq.methods import CATALOGUE, is_learned, method_spec
    from lesionuq.scorers import make_scorer

    cfg = ExperimentConfig(graphs=GraphConfig(location=True))
    learned = [m for m in CATALOGUE if is_learned(m)]
    regressors = {m for m in learned if is_regressor(make_scorer(m, cfg))}
    assert regressors == {"gcnn_reg", "metaseg_reg"}
    assert {m for m in learned if method_spec(m).output != "p_fp"} == regressors


def test_more_cuts_into_halves_change_the_digest_of_the_classifiers_only():
    from lesionuq.methods import CATALOGUE, is_learned, method_spec

    cfg = ExperimentConfig()
    three = cfg.replace(calibration=dataclasses.replace(cfg.calibration, half_splits=3))
    changed = {m for m in CATALOGUE if fit_digest("g", m, cfg) != fit_digest("g", m, three)}
    want = {m for m in CATALOGUE if is_learned(m) and method_spec(m).output == "p_fp"}
    assert changed == want and "gcnn_classif" in changed and "gcnn_reg" not in changed
    off = cfg.replace(calibration=dataclasses.replace(cfg.calibration, half_fits=False))
    off3 = off.replace(calibration=dataclasses.replace(off.calibration, half_splits=3))
    assert fit_digest("g", "gcnn_classif", off) == fit_digest("g", "gcnn_classif", off3)
