from __future__ import annotations

import pytest

from lesionuq.config import ExperimentConfig, GCNNConfig, config_digest
from lesionuq.demo import bundled_config


def test_yaml_round_trip(tmp_path):
    cfg = ExperimentConfig().replace(folds=3, sequences=("flair", "t1"))
    path = tmp_path / "cfg.yaml"
    cfg.to_yaml(path)
    back = ExperimentConfig.from_yaml(path)
    assert back == cfg
    assert back.preprocess.shape == (160, 192, 160)
    assert isinstance(back.preprocess.spacing[0], float)


def test_partial_yaml_takes_defaults(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("gcnn:\n  hidden: 32\n")
    cfg = ExperimentConfig.from_yaml(path)
    assert cfg.gcnn == GCNNConfig(hidden=32)
    assert cfg.folds == 4


def test_unknown_key_is_named(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("gcnn:\n  hiden: 32\n")
    with pytest.raises(ValueError, match=r"config\.gcnn\.hiden"):
        ExperimentConfig.from_yaml(path)


def test_wrong_tuple_length_is_an_error():
    with pytest.raises(ValueError, match="3 items"):
        ExperimentConfig.from_dict({"preprocess": {"shape": [1, 2]}})


def test_digest_changes_with_any_field():
    a = config_digest(GCNNConfig())
    assert a == config_digest(GCNNConfig())
    assert a != config_digest(GCNNConfig(epochs=61))


@pytest.mark.parametrize("name", ["demo", "quality", "paper"])
def test_bundled_configs_load(name):
    cfg = bundled_config(name)
    assert cfg.sampling.n_samples == 20
    assert cfg.unet.dropout == 0.2
    assert cfg.graphs.epsilon == 0.1
    assert all(s % 2 ** (len(cfg.unet.channels) - 1) == 0 for s in cfg.preprocess.shape)


def test_paper_config_is_the_paper():
    cfg = bundled_config("paper")
    assert cfg.preprocess.shape == (160, 192, 160)
    assert cfg.train.patch_size == (160, 192, 32)
    assert cfg.train.batch_size == 5
    assert cfg.train.lr == 1e-4
    assert cfg.gcnn.hidden == 64 and cfg.gcnn.batch_size == 10
    assert cfg.gcnn.lr == 1e-2 and cfg.gcnn.lr_min == 1e-5
    assert cfg.folds == 4
