from __future__ import annotations

import json

import numpy as np
import pytest

from lesionuq.operating_point import (
    OperatingPoint,
    choose_threshold,
    operating_point_effect,
    parse_target,
)

# 4 TP and 4 FP lesions with ties across the classes at 0.5
P = np.array([0.1, 0.2, 0.5, 0.9, 0.3, 0.5, 0.5, 0.8])
TP = np.array([True, True, True, True, False, False, False, False])


def test_parse_target():
    assert parse_target("tp:0.95") == ("tp", 0.95)
    assert parse_target(" FP:0.5 ") == ("fp", 0.5)
    for bad, msg in [("0.95", "must look like"), ("xx:0.5", "must look like"),
                     ("tp:abc", "not a number"), ("fp:0", "in \\(0, 1\\]")]:  # fmt: skip
        with pytest.raises(ValueError, match=msg):
            parse_target(bad)


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("tp:0.5", 0.25),  # 2nd smallest TP is 0.2; next value 0.3 -> midpoint 0.25
        ("tp:0.75", 0.65),  # 3rd smallest TP is 0.5 (tied with 2 FP); next 0.8
        ("tp:1.0", float(np.nextafter(0.9, 1.0))),  # above the largest value
        ("fp:0.25", 0.65),  # largest FP is 0.8; next lower value 0.5
        ("fp:0.5", 0.4),  # 2nd largest FP is 0.5; next lower 0.3
        ("fp:1.0", 0.25),  # all FP: smallest FP 0.3, next lower 0.2
    ],
)
def test_threshold_hand_cases(target, expected):
    t = choose_threshold(P, TP, target)
    assert t == pytest.approx(expected)
    eff = operating_point_effect(P, TP, t)
    kind, q = parse_target(target)
    if kind == "tp":
        assert 1 - eff["tp_flagged"] >= q
    else:
        assert eff["fp_flagged"] >= q


def test_target_met_on_random_validation_lesions_and_is_tight():
    rng = np.random.default_rng(0)
    p = np.round(rng.random(300), 2)  # many ties
    tp = rng.random(300) > p
    for q in (0.5, 0.8, 0.95, 0.99):
        t = choose_threshold(p, tp, f"tp:{q}")
        assert np.mean(p[tp] < t) >= q
        lower = np.unique(p)[np.unique(p) < t]
        if lower.size:  # the next lower candidate flags more and misses the target
            assert np.mean(p[tp] < lower[-1]) < q
        t = choose_threshold(p, tp, f"fp:{q}")
        assert np.mean(p[~tp] >= t) >= q
        higher = np.unique(p)[np.unique(p) > t]
        assert higher[0] == np.sort(p[~tp])[::-1][int(np.ceil(q * (~tp).sum() - 1e-9)) - 1]
        if higher.size > 1:  # higher[0] flags the same lesions; the next one misses
            assert np.mean(p[~tp] >= higher[1]) < q


def test_effect_hand_case():
    eff = operating_point_effect(P, TP, 0.5)  # flags 0.5, 0.9 (TP) and 0.5, 0.5, 0.8 (FP)
    assert eff["n_flagged"] == 5
    assert eff["fp_flagged"] == 0.75 and eff["tp_flagged"] == 0.5
    assert eff["precision_before"] == 0.5
    assert eff["precision_after"] == pytest.approx(2 / 3)
    assert np.isnan(operating_point_effect(P, TP, 0.0)["precision_after"])


def test_errors_and_round_trip():
    with pytest.raises(ValueError, match="no true lesion"):
        choose_threshold(P[~TP], TP[~TP], "tp:0.9")
    with pytest.raises(ValueError, match="no false positive"):
        choose_threshold(P[TP], TP[TP], "fp:0.9")
    op = OperatingPoint.choose(P, TP, "tp:0.75")
    assert op.threshold == pytest.approx(0.65) and op.validation["tp_flagged"] == 0.25
    assert OperatingPoint.from_dict(json.loads(json.dumps(op.to_dict()))) == op
