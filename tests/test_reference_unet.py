"""The shipped reference U-Net (issue 28) and the demo's two modes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import lesionuq.demo as demo_module
from lesionuq.config import SamplingConfig
from lesionuq.data.phantom import case_seed, generate_case
from lesionuq.data.preprocess import preprocess
from lesionuq.demo import bundled_config, demo_plan, run_demo
from lesionuq.errors import ConfigError
from lesionuq.segmentation.reference import (
    REFERENCE_SEED,
    load_reference_unet,
    reference_card,
    reference_preprocess,
    reference_weights_path,
)
from lesionuq.segmentation.sampling import mc_sample
from lesionuq.segmentation.train import validation_dice

#: Master seeds of every phantom data set the package and its benchmarks make (bundled
#: configs, helpers.TINY and benchmarks/gpu_check.py: 5, benchmarks/nnunet_e2e.py: 7).
BENCH_SEEDS = {0, 1, 5, 7}
#: A held-out phantom case for the Dice check: index 100 of the reference's master seed,
#: outside its training (0-39) and validation (40-47) cases.
HELD_OUT = case_seed(REFERENCE_SEED, 100)
#: Dice of the shipped weights on HELD_OUT, dropout off (measured when they were made:
#: 0.7318 on one thread; other thread counts round the convolutions differently).
EXPECTED_DICE = 0.7318


def test_weights_load_with_weights_only_and_match_the_card():
    ck = torch.load(reference_weights_path(), map_location="cpu", weights_only=True)
    card = reference_card()
    assert ck["format"] == "lesionuq.segmenter/1"
    assert all(v.dtype == torch.float16 for v in ck["state_dict"].values() if v.is_floating_point())
    assert tuple(ck["unet"]["channels"]) == (8, 16, 32, 64)
    assert card["data"]["master_seed"] == REFERENCE_SEED
    assert card["val_dice_fp16_weights"] >= 0.65  # the bar, on the held-out cases
    assert card["steps"] == card["train"]["max_epochs"] * card["train"]["steps_per_epoch"]
    assert "benchmarks/train_reference_unet.py" in card["command"]
    size = reference_weights_path().stat().st_size
    assert 100_000 < size < 5_000_000  # float16: a few hundred kB, not a float32 copy
    model = load_reference_unet("cpu")
    assert not model.training
    assert next(model.parameters()).dtype == torch.float32  # loaded as float32


@pytest.fixture(scope="module")
def held_out_case():
    """A phantom case no demo, bench or training case uses, on the reference grid."""
    case = generate_case(HELD_OUT, 1.5, None, 180)
    pre = preprocess([case.flair], case.mask, reference_preprocess())
    assert pre.mask is not None
    return case, pre


def test_reference_unet_segments_a_held_out_phantom_case(held_out_case, one_thread):
    _, pre = held_out_case
    model = load_reference_unet("cpu")
    pair = (pre.image, pre.mask)
    dice = validation_dice(model, [pair], (32, 32, 32), torch.device("cpu"))
    assert dice == pytest.approx(EXPECTED_DICE, abs=0.01)
    maps = mc_sample(model, pre.image, SamplingConfig(n_samples=2, precision="fp32"), "cpu")
    assert maps.prob.shape == pre.mask.shape == (112, 128, 112)
    assert 0.0 <= float(maps.prob.min()) and float(maps.prob.max()) <= 1.0


def test_no_demo_or_bench_case_shares_a_seed_with_the_reference_cases():
    card = reference_card()
    indices = card["data"]["train_cases"] + card["data"]["val_cases"]
    assert len(indices) == 48
    reference = {case_seed(REFERENCE_SEED, i) for i in indices}
    seeds = set(BENCH_SEEDS)
    for name in ("demo", "demo_reference", "quality", "paper", "families"):
        seeds.add(bundled_config(name).phantom.seed)
    assert REFERENCE_SEED not in seeds
    # up to index 1000: benchmarks/phantom.py also draws cases 998 and 999 of its seed
    others = {case_seed(s, i) for s in seeds for i in range(1000)}
    assert reference.isdisjoint(others)
    assert HELD_OUT not in reference and HELD_OUT not in others


def test_demo_plan_default_is_scorer_only_and_full_is_the_papers(tmp_path):
    plan = demo_plan(tmp_path)
    assert plan.protocol == "samples"
    assert plan.cfg.preprocess == reference_preprocess()
    assert plan.cfg.phantom.max_lesions == 180 and plan.cfg.phantom.spacing == 1.5
    assert (plan.data, plan.samples, plan.run) == (
        tmp_path / "data",
        tmp_path / "samples",
        tmp_path / "run",
    )
    full = demo_plan(tmp_path, full=True)
    assert full.protocol == "unet"
    assert full.cfg == bundled_config("demo")
    assert full.cfg.preprocess.spacing == (2.0, 2.0, 2.0)
    assert full.samples is None and full.run == tmp_path / "full" / "run"
    with pytest.raises(ConfigError, match="reference U-Net"):
        demo_plan(tmp_path, cfg=bundled_config("demo"))  # 2 mm: not the reference grid


def test_run_demo_samples_with_the_reference_unet_by_default_and_trains_with_full(
    tmp_path, monkeypatch
):
    calls: list[tuple[str, object]] = []

    def fake_phantom(out, cfg, **kwargs):
        calls.append(("phantom", cfg.spacing))
        out.mkdir(parents=True)
        (out / ".lesionuq.json").write_text("{}")
        return out / "cases.csv"

    def fake_sample(data, out, cfg, **kwargs):
        calls.append(("sample", data))
        return Path(out) / "cases.csv"

    def fake_experiment(data, out, cfg, **kwargs):
        calls.append(("experiment", data))
        return "result"

    monkeypatch.setattr("lesionuq.data.phantom.make_phantom_dataset", fake_phantom)
    monkeypatch.setattr(demo_module, "add_written", lambda *a: None)
    monkeypatch.setattr(demo_module, "sample_with_reference", fake_sample)
    monkeypatch.setattr(demo_module, "run_experiment", fake_experiment)
    monkeypatch.setattr(
        demo_module, "_install_reference_unet", lambda run, folds: calls.append(("install", run))
    )
    assert run_demo(tmp_path, progress=False, workers=1) == "result"
    assert calls == [
        ("phantom", 1.5),
        ("sample", tmp_path / "data" / "cases.csv"),
        ("experiment", tmp_path / "samples" / "cases.csv"),
        ("install", tmp_path / "run"),
    ]
    calls.clear()
    run_demo(tmp_path, progress=False, workers=1, full=True)
    assert calls == [("phantom", 2.0), ("experiment", tmp_path / "full" / "data" / "cases.csv")]


def test_cli_demo_passes_full_and_no_config_to_run_demo(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from lesionuq.cli import app

    seen: list[tuple[object, bool]] = []

    def fake_run_demo(out, cfg, progress, workers, full):
        seen.append((cfg, full))
        raise SystemExit(0)

    monkeypatch.setattr(demo_module, "run_demo", fake_run_demo)
    runner = CliRunner()
    assert runner.invoke(app, ["demo", "--out", str(tmp_path)]).exit_code == 0
    assert runner.invoke(app, ["demo", "--out", str(tmp_path), "--full"]).exit_code == 0
    assert seen == [(None, False), (None, True)]  # each mode's own bundled config


def test_sample_with_reference_writes_stacks_the_samples_protocol_reads(
    held_out_case, tmp_path, one_thread
):
    from lesionuq.io import Case, read_manifest, save_nifti, write_manifest
    from lesionuq.samples import manifest_protocol
    from lesionuq.uncertainty import load_sample_stack, maps_from_samples

    case, pre = held_out_case
    data = tmp_path / "data"
    flair = save_nifti(
        data / "c0" / "flair.nii.gz", case.flair.dataobj, case.flair.affine, dtype=np.int16
    )  # as the phantom writes it
    mask = save_nifti(data / "c0" / "mask.nii.gz", case.mask.dataobj, case.mask.affine)
    write_manifest(data / "cases.csv", [Case("c0", (flair,), mask)])
    cfg = bundled_config("demo_reference").replace(
        sampling=SamplingConfig(n_samples=2, precision="fp32"), device="cpu"
    )
    manifest = demo_module.sample_with_reference(
        data / "cases.csv", tmp_path / "samples", cfg, progress=False
    )
    cases = read_manifest(manifest)
    assert manifest_protocol(cases, manifest) == "samples"
    stack = cases[0].samples
    assert stack == (tmp_path / "samples" / "c0.nii.gz").resolve()
    maps = maps_from_samples(load_sample_stack(stack))
    model = load_reference_unet("cpu")
    direct = mc_sample(model, pre.image, cfg.sampling, "cpu")
    # 16-bit storage: steps of 1/65535 of the stack's range
    assert np.abs(maps.prob - direct.prob).max() < 2e-5
    assert np.abs(maps.entropy - direct.entropy).max() < 1e-3
    assert maps.prob.shape == (112, 128, 112)
    mtime = stack.stat().st_mtime_ns
    demo_module.sample_with_reference(data / "cases.csv", tmp_path / "samples", cfg, progress=False)
    assert stack.stat().st_mtime_ns == mtime  # same data, weights and settings: skipped


def test_run_demo_on_a_gpu_machine_gives_the_cpu_stages_the_cores(tmp_path, monkeypatch):
    workers: list[tuple[str, object]] = []

    def fake_phantom(out, cfg, **kwargs):
        out.mkdir(parents=True)
        (out / ".lesionuq.json").write_text("{}")
        return out / "cases.csv"

    def fake_sample(data, out, cfg, **kwargs):
        workers.append(("sample", kwargs["workers"]))
        return Path(out) / "cases.csv"

    def fake_experiment(data, out, cfg, **kwargs):
        workers.append(("experiment", kwargs["workers"]))
        return "result"

    monkeypatch.setattr("lesionuq.data.phantom.make_phantom_dataset", fake_phantom)
    monkeypatch.setattr(demo_module, "add_written", lambda *a: None)
    monkeypatch.setattr(demo_module, "sample_with_reference", fake_sample)
    monkeypatch.setattr(demo_module, "run_experiment", fake_experiment)
    monkeypatch.setattr(demo_module, "_install_reference_unet", lambda run, folds: None)
    monkeypatch.setattr(demo_module.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(demo_module.os, "cpu_count", lambda: 16)
    folds = bundled_config("demo_reference").folds
    run_demo(tmp_path, progress=False)
    # the reference U-Net samples on the GPU in this process; maps, graphs, fits on the CPUs
    assert workers == [("sample", None), ("experiment", folds)]
    workers.clear()
    run_demo(tmp_path, progress=False, full=True)  # training on the GPU: this process
    assert workers == [("experiment", None)]
