"""The test tiers: the slow table names real tests, and the fast tier skips them."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import SLOW_FIXTURES, SLOW_TESTS

HERE = Path(__file__).parent


def _functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}


def test_every_slow_name_is_a_test_or_a_fixture_that_exists() -> None:
    for key in SLOW_TESTS:
        file, _, name = key.partition("::")
        assert (HERE / file).is_file(), key
        if name:
            assert name.startswith("test_") and name in _functions(HERE / file), key
    fixtures = set().union(*(_functions(p) for p in HERE.glob("*.py")))
    assert set(SLOW_FIXTURES) <= fixtures


def test_tiny_run_users_are_slow_and_unit_tests_are_not(request) -> None:
    assert request.node.get_closest_marker("slow") is None
    for item in request.session.items:
        if "tiny_run" in getattr(item, "fixturenames", ()):
            assert item.get_closest_marker("slow") is not None, item.nodeid
        if item.nodeid.endswith("test_train.py::test_resume_continues_exactly"):
            assert item.get_closest_marker("slow") is not None
        if item.nodeid.endswith("test_train.py::test_learning_rate_schedules_by_hand"):
            assert item.get_closest_marker("slow") is None
