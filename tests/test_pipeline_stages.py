"""The helper every stage shares (stale stamps -> map_cases -> raise) and the old import path."""

from __future__ import annotations

import pytest

from lesionuq.errors import CasesFailedError
from lesionuq.pipeline import experiment, fit, graphs, stages
from lesionuq.pipeline.stages import Unit, run_stale
from lesionuq.rundir import write_stamp


def _half(x: int) -> int:
    if x < 0:
        raise ValueError("negative")
    return x // 2


def test_run_stale_redoes_only_stale_units_and_raises_after_the_others(tmp_path):
    write_stamp(tmp_path / "a.json", "d1")  # current
    write_stamp(tmp_path / "b.json", "old")  # stale digest
    write_stamp(tmp_path / "c.json", "d3")  # current stamp, but a required file is missing
    units = [
        Unit(tmp_path / "a.json", "d1", {"a": 2}),
        Unit(tmp_path / "b.json", "d2", {"b1": 4, "b2": -1}),
        Unit(tmp_path / "c.json", "d3", {"c": 6}, requires=(tmp_path / "c.pt",)),
        Unit(tmp_path / "missing.json", "d4", {"d": 8}),
    ]
    seen: dict[str, list] = {"check": [], "current": [], "gather": []}

    def check(stale):
        seen["check"] = [u.digest for u in stale]

    def gather(stale, done):
        seen["gather"] = [dict(done.results), dict(done.failed)]

    with pytest.raises(CasesFailedError) as err:
        run_stale(
            _half,
            units,
            what="case",
            desc="test",
            progress=False,
            check=check,
            on_current=lambda u: seen["current"].append(u.digest),
            gather=gather,
        )
    assert list(err.value.failed) == ["b2"]
    assert seen["check"] == ["d2", "d3", "d4"]
    assert seen["current"] == ["d1"]
    results, failed = seen["gather"]
    assert results == {"b1": 2, "c": 3, "d": 4}  # in the units' order
    assert list(failed) == ["b2"]


def test_a_refusing_check_runs_nothing(tmp_path):
    ran = []

    def refuse(stale):
        raise ValueError("no")

    with pytest.raises(ValueError, match="no"):
        run_stale(
            ran.append,
            [Unit(tmp_path / "s.json", "d", {"x": 1})],
            what="case",
            desc="t",
            progress=False,
            check=refuse,
        )
    assert ran == []


def test_old_import_path_is_a_deprecated_alias():
    import lesionuq.experiment as old

    moved = {
        "run_experiment": experiment,
        "STAGES": experiment,
        "stage_graphs": graphs,
        "stage_fit": fit,
        "is_calibrated": fit,
        "load_preprocessed": stages,
    }
    for name, module in moved.items():
        with pytest.warns(DeprecationWarning, match=f"moved to {module.__name__}.{name}"):
            assert getattr(old, name) is getattr(module, name)
    with pytest.raises(AttributeError):
        _ = old.no_such_name
