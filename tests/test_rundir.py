from __future__ import annotations

import pytest

from lesionuq.config import ExperimentConfig
from lesionuq.io import InputError
from lesionuq.rundir import RunDir, make_folds, stamp_ok, write_stamp


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
