"""The method catalogue: one table, agreeing with the scorer classes it names."""

from __future__ import annotations

import pytest

from lesionuq import methods
from lesionuq.config import METHODS, ExperimentConfig
from lesionuq.errors import did_you_mean
from lesionuq.methods import CATALOGUE, MethodSpec
from lesionuq.scorers import REGISTRY, make_scorer, scorer_class


@pytest.mark.parametrize("name", list(CATALOGUE))
def test_each_entry_agrees_with_its_class(name) -> None:
    spec = CATALOGUE[name]
    cls = scorer_class(name)
    assert cls.requires_fit is spec.learned
    assert cls.self_calibrated is spec.self_calibrated
    assert spec.output in ("p_fp", "iou", "uncertainty")
    assert spec.label and len(spec.style) == 3
    scorer = make_scorer(name, ExperimentConfig())
    assert type(scorer) is cls and scorer.name == name
    # an IoU regressor scores 1 - IoU_hat
    if spec.output == "iou":
        assert getattr(scorer, "task", None) == "reg"


def test_one_table_under_every_old_name() -> None:
    from lesionuq.evaluation.report import LABELS
    from lesionuq.learning_curve import LEARNED_METHODS
    from lesionuq.predict.model import REQUIRED_SCORERS

    assert REGISTRY is CATALOGUE
    assert METHODS == methods.METHODS and set(METHODS) <= set(CATALOGUE)
    assert LEARNED_METHODS == (
        "gcnn_classif", "gcnn_reg", "metaseg_classif", "metaseg_reg",
        "gcnn_ens", "gcnn_auto", "gcnn_stack", "gcnn_stack_all", "gcnn_pair",
        "gcnn_nawm", "gcnn_aug", "gcnn_robust", "gcnn_unc", "gcnn_stack_robust", "gcnn_mt",
        "gcnn_scancv", "gcnn_seeds", "gcnn_stack_seeds", "gcnn_loc", "gcnn_loc_mni", "metaseg_loc",
    )  # fmt: skip
    assert LABELS["gcnn_stack"] == "GCNN + uncertainty means (stacked)"
    assert REQUIRED_SCORERS == ("gcnn_classif", "gcnn_reg")
    p_fp = {n for n in CATALOGUE if methods.outputs_p_fp(n)}
    robust = {"gcnn_nawm", "gcnn_aug", "gcnn_robust", "gcnn_unc", "gcnn_stack_robust"}
    robust |= {"gcnn_loc", "gcnn_loc_mni"}  # issue 30 part 3
    robust |= {"gcnn_mt"}  # issue 31, the multi-task GCNN
    robust |= {"gcnn_stack_all"}  # issue 31, the stack over every untrained baseline
    robust |= {"gcnn_pair"}  # issue 31, the paper's two GCNNs stacked
    robust |= {"gcnn_scancv"}  # issue 31, the epochs chosen by scan-grouped CV
    robust |= {"gcnn_seeds", "gcnn_stack_seeds"}  # issue 31, 5 seeds of the paper's GCNN
    assert (
        p_fp
        == {"gcnn_classif", "metaseg_classif", "metaseg_loc", "gcnn_ens", "gcnn_auto", "gcnn_stack"}
        | robust
    )
    assert {n for n, s in CATALOGUE.items() if "gcnn" in s.sections} == {
        "gcnn_classif", "gcnn_reg", "gcnn_ens", "gcnn_auto", "gcnn_stack",
    } | robust  # fmt: skip
    assert CATALOGUE["gcnn_robust"].sections == ("gcnn", "sequences")
    assert CATALOGUE["gcnn_auto"].sections == ("gcnn", "calibration", "seed", "sequences")
    assert methods.fit_cost("gcnn_ens") == 5.0 and methods.fit_cost("size") == 0.0


def test_labels_and_styles_fall_back_for_unknown_names() -> None:
    assert methods.label("entropy_mean") == "Entropy mean"
    assert methods.label("mine") == "mine"
    assert methods.style("size", 0) == ("#000000", ":", 1.8)
    assert methods.style("mine", 0) == ("#17becf", "-", 1.4)
    assert methods.style("mine", 7) == ("#bcbd22", "--", 1.4)


def test_unknown_names_and_bad_implementations_are_refused() -> None:
    with pytest.raises(ValueError, match=r"Unknown scoring method 'gcnn_clasif' \(did you mean"):
        methods.method_spec("gcnn_clasif")
    assert did_you_mean("sise", ["size", "gcnn_reg"]) == " (did you mean 'size'?)"
    with pytest.raises(ValueError, match="must be 'module:attribute'"):
        methods.resolve("lesionuq.scorers.baselines.SizeScorer")
    with pytest.raises(ValueError, match="has no 'Nope'"):
        methods.resolve("lesionuq.scorers.baselines:Nope")


def test_a_wrong_catalogue_entry_is_caught_when_built(monkeypatch) -> None:
    monkeypatch.setitem(
        CATALOGUE, "not_a_scorer", MethodSpec("lesionuq.config:GCNNConfig", "x", ("k", "-", 1.0))
    )
    with pytest.raises(ValueError, match="is not a LesionScorer"):
        make_scorer("not_a_scorer", ExperimentConfig())
    monkeypatch.setitem(
        CATALOGUE,
        "size_learned",
        MethodSpec("lesionuq.scorers.baselines:SizeScorer", "x", ("k", "-", 1.0), learned=True),
    )
    with pytest.raises(ValueError, match=r"learned=True.*requires_fit=False"):
        make_scorer("size_learned", ExperimentConfig())
