"""Location as a feature of the lesion scorers (issue 30, part 3)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from helpers import random_lesion_set
from lesionuq.config import ExperimentConfig, GCNNConfig, GraphConfig
from lesionuq.errors import ConfigError
from lesionuq.lesions.dataset import LesionSet
from lesionuq.location import features as feat
from lesionuq.location.features import FEATURE_NAMES, location_features, with_locations
from lesionuq.rundir import FoldSplit, graphs_digest
from lesionuq.scorers import load_scorer, make_scorer
from lesionuq.scorers.located import (
    LocationGCNNScorer,
    LocationMetaSegScorer,
    with_lesion_columns,
)


def _table(locations: list[str], mni: list[list[float]]) -> pd.DataFrame:
    m = np.asarray(mni, dtype=float)
    return pd.DataFrame(
        {"location": locations, "mni_x_mm": m[:, 0], "mni_y_mm": m[:, 1], "mni_z_mm": m[:, 2]}
    )


def test_location_features_hand_values() -> None:
    table = _table(
        ["periventricular", "infratentorial", "unknown"],
        [[25.0, -50.0, 100.0], [0.0, -40.0, -30.0], [np.nan, np.nan, np.nan]],
    )
    x = location_features(table)
    assert FEATURE_NAMES == (
        "loc_periventricular", "loc_juxtacortical", "loc_infratentorial", "loc_deep",
        "mni_x", "mni_y", "mni_z",
    )  # fmt: skip
    assert x.tolist() == [
        [1.0, 0.0, 0.0, 0.0, 0.5, -1.0, 2.0],
        [0.0, 0.0, 1.0, 0.0, 0.0, -0.8, -0.6],
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # unknown: no class, no coordinates
    ]
    assert location_features(table.iloc[:0]).shape == (0, 7)
    assert location_features(table, coordinates=False).tolist() == [r[:4] for r in x.tolist()]


def test_location_features_name_what_is_missing() -> None:
    with pytest.raises(ValueError, match=r"gcnn_loc.*mni_z_mm.*graphs.location: true"):
        location_features(_table(["deep"], [[0, 0, 0]]).drop(columns="mni_z_mm"), "gcnn_loc")
    with pytest.raises(ValueError, match="cortex"):
        location_features(_table(["cortex"], [[0, 0, 0]]))


def test_with_lesion_columns_broadcasts_each_row_to_its_nodes() -> None:
    lesions = random_lesion_set(3, n_features=5)
    f = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    out = with_lesion_columns(lesions, f)
    for g, h, row in zip(lesions.graphs, out.graphs, f, strict=True):
        assert h.x.shape == (g.x.shape[0], 7)
        assert torch.equal(h.x[:, :5], g.x)
        assert torch.equal(h.x[:, 5:], torch.tensor(row, dtype=torch.float32).expand(len(g.x), 2))
    assert lesions.graphs[0].x.shape[1] == 5  # the input is unchanged


def test_with_locations_joins_by_lesion_id(monkeypatch) -> None:
    lesions = random_lesion_set(3).subset([2, 0])  # lesion ids 3 and 1, in that order
    names = ["deep", "juxtacortical", "periventricular"]
    located = _table(names, [[1, 1, 1], [2, 2, 2], [3, 3, 3]])
    seen = []

    def locate(image, affine, labels, registration=None):
        seen.append(registration)
        return located, "reg" if registration is None else registration

    monkeypatch.setattr(feat, "locate_lesions", locate)
    out, reg = with_locations(lesions, np.zeros((2, 2, 2)), np.eye(4), np.zeros((2, 2, 2)))
    assert reg == "reg"
    again, reg = with_locations(lesions, np.zeros((2, 2, 2)), np.eye(4), np.zeros((2, 2, 2)), "r0")
    assert reg == "r0" and seen == [None, "r0"]  # a registration given is passed on
    pd.testing.assert_frame_equal(again.table, out.table)
    assert out.table["location"].tolist() == ["periventricular", "deep"]
    assert out.table["mni_x_mm"].tolist() == [3.0, 1.0]
    assert out.graphs is lesions.graphs


def _located_set(n: int, seed: int) -> LesionSet:
    """FP status depends on the location only: the other columns are noise."""
    lesions = random_lesion_set(n, seed=seed)
    rng = np.random.default_rng(seed + 10)
    is_fp = np.arange(n) % 2 == 1
    lesions.table["is_tp"] = ~is_fp
    lesions.table["iou_adj"] = np.where(is_fp, 0.0, 0.7)
    lesions.table["location"] = np.where(is_fp, "juxtacortical", "periventricular")
    for c in ("mni_x_mm", "mni_y_mm", "mni_z_mm"):
        lesions.table[c] = rng.normal(0, 30, n)  # coordinates carry nothing
    return lesions


def test_location_scorers_learn_a_location_rule_the_plain_ones_cannot() -> None:
    train, test = _located_set(60, 0), _located_set(40, 1)
    y_fp = ~test.table["is_tp"].to_numpy(bool)
    cfg = ExperimentConfig(gcnn=GCNNConfig(epochs=30), graphs=GraphConfig(location=True))
    for plain, located in [("gcnn_classif", "gcnn_loc"), ("metaseg_classif", "metaseg_loc")]:
        auc_plain = roc_auc_score(y_fp, make_scorer(plain, cfg).fit(train, False).score(test))
        auc_loc = roc_auc_score(y_fp, make_scorer(located, cfg).fit(train, False).score(test))
        assert auc_loc > 0.95, (located, auc_loc)
        assert auc_plain < 0.8, (plain, auc_plain)


def test_location_scorers_save_and_reload(tmp_path) -> None:
    lesions = _located_set(24, 2)
    cfg = ExperimentConfig(gcnn=GCNNConfig(epochs=3), graphs=GraphConfig(location=True))
    for name, cls in [("gcnn_loc", LocationGCNNScorer), ("metaseg_loc", LocationMetaSegScorer)]:
        scorer = make_scorer(name, cfg).fit(lesions, progress=False)
        assert isinstance(scorer, cls) and scorer.name == name
        u = scorer.score(lesions)
        scorer.save(tmp_path / name)
        assert np.allclose(load_scorer(name, tmp_path / name).score(lesions), u)
    assert make_scorer("gcnn_loc", cfg).fit(lesions, False).in_features_ == 5 + 4  # class
    mni = make_scorer("gcnn_loc_mni", cfg).fit(lesions, False)
    assert mni.in_features_ == 5 + 7 and mni.coordinates  # class + MNI centroid
    mni.save(tmp_path / "mni")
    assert load_scorer("gcnn_loc_mni", tmp_path / "mni").coordinates


def test_config_refuses_location_methods_without_graphs_location() -> None:
    with pytest.raises(ConfigError, match=r"gcnn_loc.*graphs\.location: true"):
        ExperimentConfig(methods=("gcnn_classif", "gcnn_loc"))
    cfg = ExperimentConfig(methods=("gcnn_loc",), graphs=GraphConfig(location=True))
    assert cfg.methods == ("gcnn_loc",)
    assert ExperimentConfig.from_dict(cfg.to_dict()).graphs.location is True


def test_graphs_digest_unchanged_without_location() -> None:
    cfg = ExperimentConfig()
    split = FoldSplit(0, ("a", "b"), ("c",), ("d",))
    # the digest main gave before graphs.location existed: runs made then are not redone
    assert graphs_digest(cfg, split) == "e73632adac9614a0"
    on = cfg.replace(graphs=GraphConfig(location=True))
    assert graphs_digest(on, split) != graphs_digest(cfg, split)


class _SeesLocations:
    """A stand-in scorer that records the lesion tables it was given."""

    requires_fit = False

    def __init__(self) -> None:
        self.tables: list[pd.DataFrame] = []

    def score(self, lesions) -> np.ndarray:
        self.tables.append(lesions.table.copy())
        return location_features(lesions.table, "spy")[:, 0]  # 1 = periventricular


def test_predict_locates_before_scoring_once(tmp_path, monkeypatch) -> None:
    """A model whose scorer reads locations gets them in predict; --location reuses the
    registration and the classes (one registration and one classification per scan)."""
    import nibabel as nib

    from lesionuq.methods import CATALOGUE, MethodSpec
    from lesionuq.predict import load_model, predict_scan
    from test_location_batch import identity
    from test_predict import OBLIQUE_SHAPE, brain_scan, make_model_dir, oblique_affine

    calls: list[int] = []

    def counted(*args, **kwargs):
        calls.append(1)
        return identity(*args, **kwargs)

    import lesionuq.location as location

    classified: list[int] = []
    classify = location.classify_lesions

    def counted_classify(*args, **kwargs):
        classified.append(1)
        return classify(*args, **kwargs)

    monkeypatch.setattr(feat, "register_to_template", counted)
    monkeypatch.setattr("lesionuq.location.register_to_template", counted)
    monkeypatch.setattr("lesionuq.location.classify_lesions", counted_classify)
    monkeypatch.setitem(
        CATALOGUE,
        "spy_loc",
        MethodSpec(_SeesLocations, "spy", ("#000", "-", 1.0), needs_location=True),
    )
    model = load_model(make_model_dir(tmp_path / "fold_0"), n_images=1)
    spy = _SeesLocations()
    model.scorers["spy_loc"] = spy
    scan = tmp_path / "flair.nii.gz"
    nib.save(brain_scan(oblique_affine(), OBLIQUE_SHAPE), str(scan))
    res = predict_scan(model, scan, tmp_path / "out", progress=False, location=True)
    assert len(calls) == 1  # located before scoring, reused by --location
    assert len(classified) == 1  # and classified once: the report reuses the classes
    (table,) = spy.tables
    assert len(table) == len(res.table) > 0
    # the same location for each lesion (the report's table is in its own order)
    seen = dict(zip(table["lesion_id"], table["location"], strict=True))
    assert seen == dict(zip(res.table["lesion_id"], res.table["location"], strict=True))
    assert set(table["location"]) <= {"periventricular", "juxtacortical", "infratentorial", "deep"}
    calls.clear()
    predict_scan(model, scan, tmp_path / "out2", progress=False)  # without --location
    assert len(calls) == 1 and len(spy.tables) == 2
    assert "mni_x_mm" in spy.tables[1]


def _write_tiny_run(run, cfg: ExperimentConfig) -> None:
    """A run whose graphs stage can run: 2 folds, each case in one fold's validation set
    and the other's test set; the preprocessed scans are ``test_predict``'s analytic
    brain (3 bright lesions, also the ground truth) and the maps call them lesions."""
    from lesionuq.io import save_nifti
    from lesionuq.outputs import start_output
    from lesionuq.rundir import RunDir
    from lesionuq.uncertainty import VoxelMaps, entropy, pcs
    from test_predict import brain_scan, lps_affine

    start_output(run, "run")
    rd = RunDir(run)
    folds = [FoldSplit(0, (), ("a",), ("b",)), FoldSplit(1, (), ("b",), ("a",))]
    rd.write_plan(cfg, run / "cases.csv", folds)
    affine, shape = lps_affine()
    for i, c in enumerate(("a", "b")):
        image = np.asarray(brain_scan(affine, shape).dataobj) * (1.0 + 0.1 * i)
        lesion = image > 200
        save_nifti(rd.preprocessed / c / "flair.nii.gz", image.astype(np.float32), affine)
        save_nifti(rd.preprocessed / c / "mask.nii.gz", lesion.astype(np.uint8), affine)
        prob = np.where(lesion, 0.9, 0.05).astype(np.float32)
        maps = VoxelMaps(prob, entropy(prob), np.full(shape, 0.01, np.float32), pcs(prob))
        for k, split in ((0, "val" if c == "a" else "test"), (1, "test" if c == "a" else "val")):
            for name, data in maps.items():
                save_nifti(rd.case_dir(k, split, c) / f"{name}.nii.gz", data, affine)


def _small_template():
    """Template regions on a 2 mm grid around ``test_predict``'s analytic brain (the real
    ones take seconds to compute): a ventricle block 1.5 mm from its lesion 1, a cortex
    slab that lesion 2 reaches, everything behind y = -20 mm infratentorial (lesion 3);
    lesions 1-3 of ``test_predict.LESIONS`` are labels 3, 1, 2 on its LPS grid."""
    from scipy import ndimage as ndi

    from lesionuq.location.atlas import TemplateRegions

    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-40.0, -50.0, -30.0]
    shape = (41, 41, 36)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    x, y, z = np.moveaxis(ijk @ affine[:3, :3].T + affine[:3, 3], -1, 0)
    ventricles = (np.abs(x) <= 4) & (y >= -16) & (y <= -8) & (z >= 4) & (z <= 12)
    cortex = y >= 3
    full = np.ones(shape, np.float32)
    return TemplateRegions(
        affine, full, full, full, full, full > 0, ventricles, cortex, y <= -20,
        ndi.distance_transform_edt(~ventricles, sampling=2.0).astype(np.float32),
        ndi.distance_transform_edt(~cortex, sampling=2.0).astype(np.float32),
    )  # fmt: skip


def test_graphs_stage_registers_each_scan_once_for_all_its_folds(tmp_path, monkeypatch) -> None:
    """Case a is in fold 0's validation and fold 1's test set: one registration, saved in
    RUN/registrations/a and reused by both units, and by a rerun of the stage."""
    from lesionuq.location import classify
    from lesionuq.location import register as reg_mod
    from lesionuq.pipeline.graphs import stage_graphs
    from lesionuq.rundir import RunDir
    from test_location_batch import identity
    from test_predict import LESIONS

    template = _small_template()
    for module in (classify, reg_mod):
        monkeypatch.setattr(module, "load_regions", lambda: template)

    calls: list[float] = []

    def counted(image, affine, brain=None, **kwargs):
        calls.append(float(image.max()))
        return identity(image, affine, brain, **kwargs)

    monkeypatch.setattr(reg_mod, "register_to_template", counted)
    monkeypatch.setattr(feat, "register_to_template", counted)  # would be a second one
    run = tmp_path / "run"
    _write_tiny_run(run, ExperimentConfig(graphs=GraphConfig(location=True)))
    stage_graphs(run, progress=False)
    assert sorted(calls) == [260.0, 286.0]  # a and b, once each
    rd = RunDir(run)
    for c in ("a", "b"):
        assert sorted(p.name for p in rd.registration(c).iterdir()) == [
            "registration.json", "transform.tfm",
        ]  # fmt: skip
    tables = {}
    for k in (0, 1):
        for split in ("val", "test"):
            t = LesionSet.load(rd.lesion_set(k, split)).table
            assert t["location"].tolist() == ["juxtacortical", "infratentorial", "periventricular"]
            mni = t[["mni_x_mm", "mni_y_mm", "mni_z_mm"]].to_numpy()
            np.testing.assert_allclose(mni, LESIONS[[1, 2, 0]], atol=0.3)  # identity: centres
            tables[k, split] = t
    cols = ["lesion_id", "location", "mni_x_mm", "mni_y_mm", "mni_z_mm"]
    pd.testing.assert_frame_equal(tables[0, "val"][cols], tables[1, "test"][cols])  # case a
    for k in (0, 1):
        (rd.lesion_set(k, "val") / "stamp.json").unlink()  # the stage reruns: no registration
    stage_graphs(run, progress=False)
    assert len(calls) == 2
    pd.testing.assert_frame_equal(LesionSet.load(rd.lesion_set(0, "val")).table, tables[0, "val"])
