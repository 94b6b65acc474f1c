"""Learning curve: the subsampling (stratified, seeded, by case, nested) and the command."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import lesionuq.pipeline.learning_curve as lc
from lesionuq.cli import app
from lesionuq.evaluation.figures import learning_curve_figure
from lesionuq.evaluation.metrics import summarize_learning_curve
from lesionuq.io import InputError
from lesionuq.pipeline.learning_curve import (
    learning_curve,
    parse_sizes,
    stratified_case_subsample,
)


def _lesions(n_cases: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    per_case = rng.integers(2, 9, n_cases)
    case_id = np.repeat([f"c{i:02d}" for i in range(n_cases)], per_case)
    is_tp = rng.random(case_id.size) < 0.65
    return case_id, is_tp


def test_subsample_is_stratified():
    case_id, is_tp = _lesions()
    share = is_tp.mean()
    for size in (5, 10, 20, 40):
        idx = stratified_case_subsample(case_id, is_tp, size, 0)
        assert idx.size == size and np.unique(idx).size == size
        assert int(is_tp[idx].sum()) == round(size * share)


def test_subsample_keeps_both_classes_and_returns_all_when_large():
    case_id = np.array(["a"] * 10)
    is_tp = np.array([True] * 9 + [False])
    idx = stratified_case_subsample(case_id, is_tp, 3, 1)
    assert is_tp[idx].sum() == 2 and (~is_tp[idx]).sum() == 1  # round(0.3) = 0 FP raised to 1
    np.testing.assert_array_equal(stratified_case_subsample(case_id, is_tp, 10, 1), np.arange(10))


def test_subsample_is_seeded_and_nested():
    case_id, is_tp = _lesions()
    a = stratified_case_subsample(case_id, is_tp, 15, (0, 1, 2))
    np.testing.assert_array_equal(a, stratified_case_subsample(case_id, is_tp, 15, (0, 1, 2)))
    assert not np.array_equal(a, stratified_case_subsample(case_id, is_tp, 15, (0, 1, 3)))
    small = stratified_case_subsample(case_id, is_tp, 8, (0, 1, 2))
    large = stratified_case_subsample(case_id, is_tp, 30, (0, 1, 2))
    assert set(small) <= set(a) <= set(large)


def test_subsample_takes_whole_cases_where_possible():
    case_id, is_tp = _lesions(n_cases=20, seed=3)
    for seed in range(5):
        idx = stratified_case_subsample(case_id, is_tp, 30, seed)
        chosen = np.zeros(case_id.size, bool)
        chosen[idx] = True
        for cls in (True, False):
            partial = [
                c
                for c in np.unique(case_id)
                if 0
                < chosen[(case_id == c) & (is_tp == cls)].sum()
                < ((case_id == c) & (is_tp == cls)).sum()
            ]
            assert len(partial) <= 1  # only the boundary case of each class is split


def test_parse_sizes():
    assert parse_sizes("25, 50,all,50") == [25, 50, "all"]
    with pytest.raises(InputError, match="'x'"):
        parse_sizes("25,x")
    with pytest.raises(InputError):
        parse_sizes("0")


@pytest.fixture(scope="module")
def lc_run(tiny_run, tmp_path_factory):
    """A private copy of the tiny run (the learning curve writes into results/)."""
    root, _, _ = tiny_run
    run = tmp_path_factory.mktemp("lc") / "run"
    shutil.copytree(root / "run", run)
    return run


def test_fits_only_on_validation_lesions(lc_run, monkeypatch):
    folds = json.loads((lc_run / "folds.json").read_text())["folds"]
    seen: list[tuple[str, ...]] = []
    real = lc._fit_scorer

    def spy(method, cfg, lesions):
        seen.append(tuple(lesions.table["case_id"].astype(str)))
        return real(method, cfg, lesions)

    monkeypatch.setattr(lc, "_fit_scorer", spy)
    out = lc_run.parent / "spy"
    shutil.copytree(lc_run, out)
    learning_curve(out, sizes=[4, "all"], repeats=1, methods=["metaseg_classif"], progress=False)
    val = {c for f in folds for c in f["val"]}
    assert seen and all(set(cases) <= val for cases in seen)
    # per fold: the "all" fit uses exactly that fold's validation lesions
    curve = pd.read_csv(out / "results/learning_curve.csv")
    for f in folds:
        n_val = len(pd.read_csv(lc_run / f"fold_{f['fold']}/graphs/val/lesions.csv"))
        full = curve[(curve.fold == f["fold"]) & curve.full]
        assert full["size"].tolist() == [n_val]
        assert (full.n_tp + full.n_fp).tolist() == [n_val]


def test_learning_curve_command_writes_files_and_resumes(lc_run):
    result = CliRunner().invoke(
        app,
        ["learning-curve", "--run", str(lc_run), "--sizes", "3,6,all", "--repeats", "2", "--quiet"],
    )
    assert result.exit_code == 0, result.output
    res = lc_run / "results"
    curve = pd.read_csv(res / "learning_curve.csv")
    assert list(curve.columns)[:5] == ["fold", "size", "repeat", "method", "auc"]
    assert set(curve.method) == {"gcnn_classif", "gcnn_reg", "metaseg_classif", "metaseg_reg"}
    assert set(curve.repeat) == {0, 1}
    assert curve[~curve.full]["size"].isin([3, 6]).all()
    assert ((curve.n_tp + curve.n_fp) == curve["size"]).all()
    assert curve.auc.dropna().between(0, 1).all()
    assert (res / "learning_curve.png").stat().st_size > 1000
    html = (res / "report.html").read_text()
    assert "Learning curve" in html and html.count("data:image/png;base64,") >= 2
    # the same "all" fit with repeat 0 reproduces the stage-fit MetaSeg model's AUC
    t2 = pd.read_csv(res / "table2_folds.csv")
    full = curve[curve.full & (curve.repeat == 0) & (curve.method == "metaseg_classif")]
    want = t2[t2.method == "metaseg_classif"].set_index("fold")["auc"]
    # to one tied pair in ~34,000: the tiny run's near-identical 1-voxel junk lesions swap
    # places on last-bit float differences (with 1 torch thread: 0.41029 against 0.41032)
    np.testing.assert_allclose(full.set_index("fold")["auc"], want.loc[full.fold], atol=1e-4)
    # resume: nothing is refitted, the file is unchanged
    before = (res / "learning_curve.csv").read_text()
    again = learning_curve(lc_run, "3,6,all", repeats=2, progress=False)
    assert (res / "learning_curve.csv").read_text() == before
    assert len(again) == len(curve)
    summary = summarize_learning_curve(again)
    assert set(summary["size"]) <= {3, 6, "all"} and (summary.repeats == 2).all()


def test_learning_curve_on_dask_writes_the_same_rows(lc_run, tmp_path):
    pytest.importorskip("distributed")  # the Dask tests need lesionuq[cluster]
    curves = {}
    for name, where in (("loop", {}), ("dask", {"workers": 2})):
        run = tmp_path / name
        shutil.copytree(lc_run, run)
        (run / "results/learning_curve.csv").unlink(missing_ok=True)
        curves[name] = learning_curve(
            run,
            "3,all",
            repeats=1,  # the repeats are the command test's; here, the same rows on Dask
            methods=["gcnn_classif", "metaseg_classif"],
            progress=False,
            **where,
        )
        assert (run / "results/learning_curve.png").is_file()
    assert len(curves["loop"]) == 2 * 2 * 1 * 2  # folds x sizes x repeats x methods
    pd.testing.assert_frame_equal(curves["loop"], curves["dask"])
    with pytest.raises(InputError, match="either"):
        learning_curve(lc_run, "3", repeats=1, workers=2, scheduler="tcp://h:1", progress=False)


def test_learning_curve_rejects_untrained_method(lc_run):
    with pytest.raises(InputError, match="learned methods only"):
        learning_curve(lc_run, methods=["size"], progress=False)


def test_learned_methods_are_the_registry_methods_that_fit():
    from lesionuq.scorers.registry import REGISTRY

    fitted = {name for name, spec in REGISTRY.items() if spec.cls.requires_fit}
    assert set(lc.LEARNED_METHODS) == fitted
    assert "gcnn_ens" in fitted and "entropy_mean" not in fitted


def test_figure_x_ticks_are_the_training_sizes():
    """Two folds x one repeat: sizes 25 and 50 plus ``all`` (100 and 120 lesions, mean
    110) give exactly the ticks 25, 50, 110, labelled plainly (no "3x10^1" minor labels)."""
    rows = [
        (fold, size, 0, "gcnn_classif", auc, 0, 0, full)
        for fold, n_all in ((0, 100), (1, 120))
        for size, auc, full in ((25, 0.7, False), (50, 0.8, False), (n_all, 0.9, True))
    ]
    curve = pd.DataFrame(rows, columns=list(lc.CSV_COLUMNS))
    ax = learning_curve_figure(curve, {"size": 0.75}).axes[0]
    assert list(ax.get_xticks()) == [25.0, 50.0, 110.0]
    fmt = ax.xaxis.get_major_formatter()
    assert [fmt(v, i) for i, v in enumerate(ax.get_xticks())] == ["25", "50", "110"]
    assert ax.xaxis.get_minor_formatter()(30.0, 0) == ""
    assert [round(y, 1) for y in ax.lines[0].get_ydata()] == [70.0, 80.0, 90.0]


def test_old_module_reexports_the_moved_names():
    """``lesionuq.learning_curve`` is a deprecated alias of the pipeline step and the figure."""
    import lesionuq.learning_curve as old
    from lesionuq.evaluation import figures

    assert old.learning_curve is lc.learning_curve
    assert old.stratified_case_subsample is lc.stratified_case_subsample
    assert old.LEARNED_METHODS == lc.LEARNED_METHODS and old.CSV_COLUMNS == lc.CSV_COLUMNS
    assert old.learning_curve_figure is figures.learning_curve_figure
    assert old.plot_learning_curve is figures.plot_learning_curve
    assert old.summarize_learning_curve is summarize_learning_curve
