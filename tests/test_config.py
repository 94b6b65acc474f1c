from __future__ import annotations

import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest

import lesionuq
from lesionuq.config import (
    ConfigError,
    ExperimentConfig,
    GCNNConfig,
    GraphConfig,
    UNetConfig,
    config_digest,
    config_from_dict,
    one_of,
)
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


@pytest.mark.parametrize("name", ["demo", "demo_reference", "quality", "paper"])
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


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"gcnn": {"readout": "maen"}},
            "config.gcnn.readout must be one of mean, max, sum, got 'maen' (did you mean 'mean'?).",
        ),
        ({"gcnn": {"readout": "avg"}}, "config.gcnn.readout must be one of mean, max, sum"),
        ({"device": "gpu"}, "config.device must be one of auto, cpu, cuda, got 'gpu'"),
        ({"unet": {"norm": "instnce"}}, "got 'instnce' (did you mean 'instance'?)"),
        ({"unet": {"dropout": 1.5}}, "config.unet.dropout must be in [0, 1), got 1.5."),
        ({"folds": 1}, "config.folds must be >= 2, got 1."),
        ({"val_fraction": 1.0}, "config.val_fraction must be in [0, 1)"),
        ({"gcnn": {"epochs": 0}}, "config.gcnn.epochs must be >= 1, got 0."),
        ({"sampling": {"n_samples": 0}}, "config.sampling.n_samples must be >= 1"),
        ({"preprocess": {"spacing": [1, 0, 1]}}, "config.preprocess.spacing must be > 0, got 0.0"),
        ({"phantom": {"n_cases": 0}}, "config.phantom.n_cases must be >= 1"),
        ({"phantom": {"shape": [8, 0, 8]}}, "config.phantom.shape must be >= 1, got 0."),
        ({"train": {"seed": -1}}, "config.train.seed must be >= 0, got -1."),
        ({"graphs": {"extra_features": ["positon"]}}, "extra_features[0] must be one of"),
        (
            {"methods": ["gcnn_clasif"]},
            "got 'gcnn_clasif' (did you mean 'gcnn_classif'?).",
        ),
        ({"gcnn": {"hiden": 3}}, "Unknown key config.gcnn.hiden (did you mean 'hidden'?)"),
    ],
)
def test_invalid_values_are_named_when_loaded(data, message):
    with pytest.raises(ConfigError) as info:
        ExperimentConfig.from_dict(data)
    assert message in str(info.value)


def test_the_issue_example_fails_at_load_not_in_a_stage():
    bad = {
        "methods": ["gcnn_clasif"],
        "gcnn": {"readout": "avg"},
        "device": "gpu",
        "unet": {"norm": "instnce", "dropout": 1.5},
    }
    with pytest.raises(ConfigError, match="config"):
        ExperimentConfig.from_dict(bad)


def test_constructing_and_replace_check_too():
    with pytest.raises(ConfigError, match=r"GCNNConfig\.readout must be one of mean, max, sum"):
        GCNNConfig(readout="avg")
    with pytest.raises(ConfigError, match=r"ExperimentConfig\.folds must be >= 2, got 1"):
        ExperimentConfig().replace(folds=1)
    with pytest.raises(ConfigError, match="did you mean 'size'"):
        ExperimentConfig().replace(methods=("sise",))
    with pytest.raises(ConfigError, match=r"UNetConfig\.channels must be at least one level"):
        UNetConfig(channels=())
    assert ExperimentConfig().replace(methods=("size",)).methods == ("size",)


def test_one_of_suggests_only_close_names():
    one_of("mean", ["mean", "max"], "x")
    with pytest.raises(ConfigError, match=r"^x must be one of mean, max, got 'zzz'\.$"):
        one_of("zzz", ["mean", "max"], "x")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("gcnn: [1, 2\n", "not valid YAML"),
        ("gcnn:\n  hidden: 3\n bad indent: 1\n", "not valid YAML"),
        ("key: 'unterminated\n", "not valid YAML"),
        ("- folds\n- 3\n", "a config must be a mapping of keys to values, got a list."),
        ("just a string\n", "got a str."),
    ],
)
def test_malformed_yaml_is_one_sentence_naming_the_file(tmp_path, text, message):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        ExperimentConfig.from_yaml(path)
    assert str(info.value).startswith(f"{path}: ")
    assert message in str(info.value)
    assert str(info.value).count("\n") == 0


def test_empty_yaml_is_the_default(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("")
    assert ExperimentConfig.from_yaml(path) == ExperimentConfig()


def test_config_from_dict_is_the_checkpoint_loader_too():
    cfg = config_from_dict(UNetConfig, {"channels": [4, 8], "dropout": 0}, "checkpoint unet")
    assert cfg == UNetConfig(channels=(4, 8), dropout=0.0)
    assert isinstance(cfg.dropout, float)
    with pytest.raises(ConfigError, match=r"^checkpoint unet\.dropout must be in \[0, 1\)"):
        config_from_dict(UNetConfig, {"dropout": 1.0}, "checkpoint unet")


def test_importing_config_does_not_import_torch():
    code = "import sys, lesionuq.config; print('torch' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(Path(lesionuq.__file__).parents[1])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.stdout.strip() == "False", out.stderr


def test_making_and_checking_a_config_imports_no_scorer_and_no_torch():
    """The method names are checked against the catalogue, not the scorer classes."""
    code = (
        "import sys\n"
        "from lesionuq.config import ConfigError, ExperimentConfig\n"
        "cfg = ExperimentConfig.from_dict({'methods': ['gcnn_classif', 'gcnn_stack', 'size']})\n"
        "try:\n"
        "    ExperimentConfig(methods=('gcnn_clasif',))\n"
        "except ConfigError as err:\n"
        "    print(err)\n"
        "heavy = ('torch', 'torch_geometric', 'sklearn', 'lesionuq.scorers')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(lesionuq.__file__).parents[1])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    lines = out.stdout.strip().splitlines()
    assert lines[-1] == "[]", out.stderr
    assert "methods must be one of gcnn_classif" in lines[0]
    assert "got 'gcnn_clasif' (did you mean 'gcnn_classif'?)" in lines[0]


def test_extra_feature_names_match_the_graph_builder():
    from lesionuq.config import ExtraFeature
    from lesionuq.lesions import EXTRA_FEATURES

    assert set(typing.get_args(ExtraFeature)) == set(EXTRA_FEATURES)


def test_a_list_of_choices_names_the_bad_item():
    with pytest.raises(ConfigError) as info:
        GraphConfig(extra_features=("position", "colour"))
    assert str(info.value) == (
        "GraphConfig.extra_features must be a list of extra features among "
        "position, border_distance, got 'colour'."
    )


# --------------------------------------------------------------------------- issue 25


def test_numbers_written_as_text_are_read_as_numbers(tmp_path):
    (tmp_path / "c.yaml").write_text(
        'train:\n  lr: 3e-3\n  max_epochs: "7"\ngcnn:\n  lr: "0.003"\ngraphs:\n  epsilon: "0.1"\n'
    )
    cfg = ExperimentConfig.from_yaml(tmp_path / "c.yaml")  # YAML 1.1 reads 3e-3 as text
    assert (cfg.train.lr, cfg.train.max_epochs, cfg.gcnn.lr, cfg.graphs.epsilon) == (
        0.003,
        7,
        0.003,
        0.1,
    )
    assert isinstance(cfg.train.lr, float) and isinstance(cfg.train.max_epochs, int)


@pytest.mark.parametrize(
    ("section", "value", "message"),
    [
        ({"train": {"lr": "fast"}}, None, "config.train.lr must be a number, got 'fast'."),
        ({"train": {"max_epochs": "7.5"}}, None, "config.train.max_epochs must be an integer"),
        ({"graphs": {"epsilon": [0.1]}}, None, "config.graphs.epsilon must be a number, got [0.1]"),
        ({"train": {"lr": True}}, None, "config.train.lr must be a number, got True."),
    ],
)
def test_text_that_is_not_a_number_names_the_key(section, value, message):
    with pytest.raises(ConfigError) as err:
        ExperimentConfig.from_dict(section)
    assert message in str(err.value)


def test_messages_about_huge_values_are_short():
    for data in (
        {"train": {"lr": list(range(1_200_000))}},
        {"graphs": {"epsilon": "x" * 10_000_000}},
        {"unet": {"norm": "y" * 10_000_000}},
        {"x" * 1_000_000: 1},
    ):
        with pytest.raises(ConfigError) as err:
            ExperimentConfig.from_dict(data)
        assert len(str(err.value)) < 600, str(err.value)[:200]


def test_yaml_aliases_are_refused_before_expansion(tmp_path):
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{k}: &{k} [*{j}, *{j}, *{j}, *{j}, *{j}, *{j}, *{j}, *{j}, *{j}]\n"
        for j, k in zip("abcdefgh", "bcdefghi", strict=True)
    )
    (tmp_path / "bomb.yaml").write_text(bomb + "train:\n  lr: *i\n")
    with pytest.raises(
        ConfigError, match=r"YAML aliases \(\*name\) are not accepted in a config at line 2"
    ):
        ExperimentConfig.from_yaml(tmp_path / "bomb.yaml")
