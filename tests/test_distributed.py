"""Multi-process training (torchrun/DDP): 2 gloo processes against one process."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from monai.losses import DiceCELoss

from lesionuq.config import ConfigError, TrainConfig, UNetConfig
from lesionuq.distributed import GatheredLoss, TorchrunEnv, local_items
from lesionuq.segmentation import train as train_mod
from lesionuq.segmentation.unet import UNet3D

# no dropout: dropout masks are drawn per rank, so only a dropout-free net is comparable
UNET = UNetConfig(channels=(4, 8), dropout=0.0)
CFG = TrainConfig(
    patch_size=(16, 16, 16),
    batch_size=4,
    lr=1e-3,
    max_epochs=3,
    patience=10,
    steps_per_epoch=1,  # one step per epoch: the history holds every step's loss
    augment=True,
    seed=3,
)
WORLD = 2


def _case(seed: int, n: int = 24) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    grid = np.indices((n, n, n)).astype(np.float32)
    c = rng.uniform(6, n - 6, 3)
    mask = (((grid - c[:, None, None, None]) ** 2).sum(0) < 16).astype(np.uint8)
    image = rng.normal(0, 0.3, (1, n, n, n)).astype(np.float32) + 2.0 * mask
    return image, mask


def _data():
    return [_case(i) for i in range(3)], [_case(10 + i) for i in range(3)]


def _loss() -> DiceCELoss:
    return DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)


def _worker(rank: int, init_file: str, out: str) -> None:
    """One rank: a gradient check, then a training run killed after 2 epochs and resumed."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        train, val = _data()
        items = local_items(CFG.batch_size, rank, WORLD)
        sampler = train_mod._PatchSampler(train, CFG.patch_size, CFG.pos_fraction)
        aug = train_mod.augmentation(0)
        x, y = train_mod._draw_batch(sampler, aug, CFG.seed, 1, 0, range(CFG.batch_size))
        xs, ys = train_mod._draw_batch(sampler, aug, CFG.seed, 1, 0, items)

        torch.manual_seed(0)
        ref = UNet3D(UNET)
        model = copy.deepcopy(ref)
        ref_loss = _loss()(ref(x), y)
        ref_loss.backward()
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        loss = GatheredLoss(_loss())(ddp(xs), ys)
        loss.backward()
        grad_err = max(
            float((p.grad - q.grad).abs().max() / q.grad.abs().max().clamp_min(1e-12))
            for p, q in zip(model.parameters(), ref.parameters(), strict=True)
        )

        first = dataclasses.replace(CFG, max_epochs=2)  # as if killed after epoch 2
        train_mod.train_segmenter(train, val, UNET, first, Path(out), "cpu", progress=False)
        res = train_mod.train_segmenter(train, val, UNET, CFG, Path(out), "cpu", progress=False)
        torch.save(
            {
                "slice_equal": bool(torch.equal(xs, x[items.start : items.stop]))
                and bool(torch.equal(ys, y[items.start : items.stop])),
                "loss": loss.item(),
                "ref_loss": ref_loss.item(),
                "grad_err": grad_err,
                "history": res.history,
                "resumed_from": res.resumed_from,
                "best_epoch": res.best_epoch,
            },
            Path(out).parent / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """2 gloo processes (spawned) and one process, same config: (tmp, ranks, single)."""
    tmp = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(str(tmp / "pg"), str(tmp / "ddp")), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train, val = _data()
        single = train_mod.train_segmenter(train, val, UNET, CFG, tmp / "one", "cpu", False)
    finally:
        torch.set_num_threads(n)
    return tmp, ranks, single


def test_each_rank_draws_its_slice_and_gets_the_global_gradient(ddp_run):
    _, ranks, _ = ddp_run
    for r in ranks:
        assert r["slice_equal"]  # its 2 of the 4 patches, bit for bit
        assert r["loss"] == pytest.approx(r["ref_loss"], abs=1e-6)  # the global-batch loss
        # gather's backward sums K ranks' gradients, DDP divides by K: the single-process
        # gradient (relative error per tensor; a factor-2 scale error would read 0.5 or 1)
        assert r["grad_err"] < 1e-5


def test_ddp_training_equals_one_process(ddp_run):
    tmp, ranks, single = ddp_run
    ref = [h["loss"] for h in single.history]
    assert len(ref) == 3
    for r in ranks:
        assert r["resumed_from"] == 2 and r["best_epoch"] == single.best_epoch
        np.testing.assert_allclose([h["loss"] for h in r["history"]], ref, rtol=0, atol=1e-5)
        dice = [h["val_dice"] for h in r["history"]]
        np.testing.assert_allclose(dice, [h["val_dice"] for h in single.history], atol=1e-4)
    # only rank 0 wrote: one checkpoint set, no temporary files
    assert sorted(p.name for p in (tmp / "ddp").iterdir()) == ["segmenter.pt", "segmenter_last.pt"]
    a = torch.load(tmp / "ddp" / "segmenter_last.pt", weights_only=True)
    b = torch.load(tmp / "one" / "segmenter_last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 3
    for k, v in b["state_dict"].items():  # 3 Adam steps at lr 1e-3; float rounding only
        torch.testing.assert_close(a["state_dict"][k], v, rtol=1e-4, atol=1e-5)


def test_batch_must_split_evenly_over_ranks():
    assert local_items(4, 1, 2) == range(2, 4) and local_items(6, 2, 3) == range(4, 6)
    with pytest.raises(ConfigError, match="multiple of the number of training processes"):
        local_items(4, 0, 3)


def test_torchrun_environment_is_read_or_refused():
    assert TorchrunEnv.from_environ({"PATH": "/bin"}) is None
    env = TorchrunEnv.from_environ({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert env == TorchrunEnv(rank=3, world_size=4, local_rank=1)
    with pytest.raises(ConfigError, match="LOCAL_RANK not set"):
        TorchrunEnv.from_environ({"RANK": "0", "WORLD_SIZE": "2"})
    with pytest.raises(ConfigError, match="not in"):
        TorchrunEnv.from_environ({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})


def test_train_command_refuses_an_uneven_global_batch(tiny_run):
    from typer.testing import CliRunner

    from lesionuq.cli import app

    _, _, result = tiny_run  # train.batch_size = 2
    env = {"RANK": "0", "WORLD_SIZE": "3", "LOCAL_RANK": "0"}
    out = CliRunner().invoke(app, ["train", "--run", str(result.run), "--quiet"], env=env)
    assert out.exit_code == 1
    assert "train.batch_size = 2 must be a multiple of the number of training processes (3)" in (
        " ".join(out.output.split())
    )


def test_torchrun_trains_a_fold_and_writes_one_checkpoint_set(tiny_run, tmp_path):
    """The real entry point: ``torchrun --nproc_per_node 2 -m lesionuq train`` (gloo, CPU).

    ``--run-dir``: torchrun's parser rejects ``--run`` (ambiguous with its ``--run-path``).
    """
    import os
    import shutil
    import subprocess
    import sys

    import lesionuq
    from lesionuq.pipeline.train import stage_train

    _, _, result = tiny_run
    run = tmp_path / "run"
    shutil.copytree(result.run, run)
    fold = run / "fold_0"
    for name in ("segmenter.pt", "segmenter_last.pt", "stamp_train.json"):
        (fold / name).unlink()
    src = str(Path(lesionuq.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "lesionuq", "train", "--run-dir", str(run), "--fold", "0", "--quiet"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = sorted(p.name for p in fold.glob("*segmenter*"))
    assert names == ["segmenter.pt", "segmenter_last.pt"] and (fold / "stamp_train.json").is_file()
    assert not [p for p in run.rglob("*") if ".tmp" in p.name]  # no stray temporary files
    last = torch.load(fold / "segmenter_last.pt", weights_only=True)
    assert last["epoch"] == 2 and len(last["history"]) == 2
    assert all(np.isfinite(h["loss"]) and 0 <= h["val_dice"] <= 1 for h in last["history"])
    # the stamp is current: a single-process rerun trains nothing
    before = (fold / "segmenter_last.pt").stat().st_mtime_ns
    stage_train(run, [0], progress=False)
    assert (fold / "segmenter_last.pt").stat().st_mtime_ns == before
