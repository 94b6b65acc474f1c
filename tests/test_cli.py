"""The CLI is a thin layer: bad input gives one sentence and exit code 1, no traceback."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from lesionuq.cli import app
from lesionuq.errors import InputError

runner = CliRunner()


def _text(result) -> str:
    """Output with Rich's line wrapping undone."""
    return " ".join(result.output.split())


def test_missing_manifest_is_one_sentence(tmp_path):
    result = runner.invoke(
        app, ["experiment", "--data", str(tmp_path / "no.csv"), "--out", str(tmp_path / "run")]
    )
    assert result.exit_code == 1
    assert "file not found" in _text(result)
    assert "Traceback" not in _text(result)
    assert not (tmp_path / "run").exists()


def test_stage_on_a_non_run_directory(tmp_path):
    result = runner.invoke(app, ["graphs", "--run", str(tmp_path)])
    assert result.exit_code == 1
    assert "not a run directory" in _text(result)


def test_unknown_config_key(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("unet:\n  chanels: [4, 8]\n")
    (tmp_path / "cases.csv").write_text("case_id,flair,mask\n")
    result = runner.invoke(
        app,
        [
            "experiment",
            "--data",
            str(tmp_path / "cases.csv"),
            "--out",
            str(tmp_path / "run"),
            "--config",
            str(cfg),
        ],
    )
    assert result.exit_code == 1
    assert "config.unet.chanels" in _text(result)


def test_phantom_command_writes_a_manifest(tmp_path):
    out = tmp_path / "ph"
    result = runner.invoke(
        app,
        ["phantom", "--out", str(out), "--cases", "2", "--spacing", "4", "--seed", "3", "--quiet"],
    )
    assert result.exit_code == 0, result.output
    lines = (out / "cases.csv").read_text().splitlines()
    assert lines[0] == "case_id,flair,mask" and len(lines) == 3
    img = nib.load(str(out / "case_000" / "flair.nii.gz"))
    assert np.allclose(np.abs(np.diag(img.affine)[:3]), 4.0)


def test_predict_needs_image_or_cases(tmp_path):
    result = runner.invoke(app, ["predict", "--model", str(tmp_path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert "--image" in _text(result)


def test_predict_bids_out_needs_a_bids_name(tmp_path):
    scan = tmp_path / "scans" / "patient01_flair.nii.gz"
    scan.parent.mkdir()
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)), str(scan))
    args = ["predict", "--model", str(tmp_path), "--image", str(scan), "--out"]
    result = runner.invoke(app, [*args, str(tmp_path / "o"), "--bids-out", str(tmp_path / "d")])
    assert result.exit_code == 1
    assert "is not a BIDS file name" in _text(result)
    assert not (tmp_path / "o").exists() and not (tmp_path / "d").exists()


def test_demo_workers_auto_uses_the_cores_on_a_cpu_up_to_the_folds():
    from lesionuq.config import ExperimentConfig
    from lesionuq.demo import demo_workers

    cfg = ExperimentConfig(folds=4)
    assert demo_workers("auto", cfg, cpus=2, cuda=False) == 2
    assert demo_workers("auto", cfg, cpus=16, cuda=False) == 4  # one per fold at most
    assert demo_workers("auto", cfg, cpus=1, cuda=False) is None  # one core: this process
    assert demo_workers("auto", cfg, cpus=8, cuda=True) is None  # device auto -> the GPU
    on_cpu = ExperimentConfig(folds=4, device="cpu")
    assert demo_workers("auto", on_cpu, cpus=8, cuda=True) == 4
    # CPU work (the samples protocol's stages) takes the cores on a GPU machine too
    assert demo_workers("auto", cfg, cpus=16, cuda=True, cpu_only=True) == 4
    assert demo_workers("auto", cfg, cpus=1, cuda=True, cpu_only=True) is None
    assert demo_workers("3", cfg, cpus=2, cuda=False) == 3  # an explicit count is kept
    assert demo_workers(1, cfg) is None and demo_workers(None, cfg) is None
    for bad in ("many", "0", -2):
        with pytest.raises(InputError, match="workers"):
            demo_workers(bad, cfg)


def test_printed_tables_say_how_many_validation_lesions_the_learned_scorers_had(tmp_path):
    import pandas as pd

    from lesionuq import cli
    from lesionuq.pipeline.evaluate import ExperimentResult

    folder = tmp_path / "fold_0/graphs/val"
    folder.mkdir(parents=True)
    pd.DataFrame({"case_id": ["a", "a", "b"], "is_tp": [True, False, True]}).to_csv(
        folder / "lesions.csv", index=False
    )
    t1 = pd.DataFrame({"fold": [0], "dice": [0.5], "n_tp": [2], "n_fp": [1]})
    t2 = pd.DataFrame({"method": ["size"], "auc": [0.75], "spearman_rho": [-1.0]})
    result = ExperimentResult(tmp_path, t1, t2, t2.assign(fold=0), tmp_path / "report.html")
    with cli.console.capture() as captured:
        cli.print_tables(result)
    text = " ".join(captured.get().split())
    assert "learned scorers fitted on 3-3 validation lesions per fold (2-2 scans): few" in text
    assert "75.00" in text


def test_the_packages_warnings_print_as_one_sentence_others_keep_their_format(
    tmp_path, monkeypatch
):
    import warnings

    from lesionuq.errors import TrainingWarning
    from lesionuq.pipeline import train as pipeline_train

    def train_run(run, folds, progress, workers):  # what stage_train says of a failed fold
        warnings.warn(
            TrainingWarning(f"fold 1: the U-Net did not learn ({run.name})"), stacklevel=1
        )
        warnings.warn(RuntimeWarning("a library's own warning"), stacklevel=1)

    monkeypatch.setattr(pipeline_train, "train_run", train_run)
    with warnings.catch_warnings(record=True) as outside:
        warnings.simplefilter("always")
        result = runner.invoke(app, ["train", "--run", str(tmp_path / "r1")])
    assert result.exit_code == 0, result.output
    assert "warning: fold 1: the U-Net did not learn (r1)" in _text(result)
    assert "TrainingWarning" not in result.output and "warnings.warn" not in result.output
    # the CLI shows only its own warnings its way; the rest go where Python sends them
    assert [str(w.message) for w in outside] == ["a library's own warning"]
