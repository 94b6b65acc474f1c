"""map_cases: the in-process loop, a Dask LocalCluster, failures by id, argument checks.

The Dask tests predict 3 tiny analytic scans (about 26 x 28 x 22 voxels, the model of
test_predict: a thresholding U-Net and two small GCNNs) on a ``LocalCluster`` of two
single-threaded worker processes and compare every output file byte for byte with the
in-process loop, which runs single-threaded too (``one_thread``) so that the
convolutions sum in the same order.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from helpers import TINY
from lesionuq.cli import app
from lesionuq.errors import CasesFailedError
from lesionuq.io import InputError, check_threshold
from lesionuq.outputs import LOCK_FILE, TMP_PREFIX
from lesionuq.parallel import check_parallel, map_cases
from lesionuq.predict import load_model, predict_manifest
from test_predict import brain_scan, make_model_dir

SRC = str(Path(__file__).resolve().parents[1] / "src")
# files whose content holds the wall time of the prediction
TIMED = {"prediction.json", "report.html", LOCK_FILE}  # and the lock's PID


def _square(x: int) -> int:
    if x == 3:
        raise ValueError("three is refused")
    return x * x


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("run") / "fold_0", ("gcnn_classif", "gcnn_reg"))


@pytest.fixture(scope="module")
def three_scans(tmp_path_factory):
    """cases.csv of 3 small scans: RAS, LPS (flipped) and shifted, 2.2-2.5 mm voxels."""
    root = tmp_path_factory.mktemp("scans")
    centre = np.array([2.0, -12.0, 8.0])
    grids = {
        "a": (np.diag([2.2, 2.2, 2.4, 1.0]), (26, 28, 22), 0.0),
        "b": (np.diag([-2.3, -2.3, 2.5, 1.0]), (25, 27, 21), 1.0),
        "c": (np.diag([2.4, 2.2, 2.2, 1.0]), (24, 28, 24), -1.5),
    }
    lines = ["case_id,flair"]
    for cid, (affine, shape, shift) in grids.items():
        affine = affine.copy()
        affine[:3, 3] = centre + shift - affine[:3, :3] @ ((np.array(shape) - 1) / 2)
        path = root / f"{cid}.nii.gz"
        nib.save(brain_scan(affine, shape), str(path))
        lines.append(f"{cid},{path.name}")
    csv = root / "cases.csv"
    csv.write_text("\n".join(lines) + "\n")
    return csv


@pytest.fixture(scope="module")
def reference(model_dir, three_scans, tmp_path_factory, one_thread):
    """The in-process batch (torch single-threaded)."""
    out = tmp_path_factory.mktemp("ref") / "batch"
    res = predict_manifest(load_model(model_dir), three_scans, out, progress=False)
    assert all(r is not None for r in res.results.values())
    return out


def _files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in TIMED
    }


def _untimed(files: dict[str, bytes]) -> dict[str, object]:
    """Scorer folders' files without stamps, and scorer.json without its wall times."""
    out: dict[str, object] = {}
    for name, content in files.items():
        if name.endswith("stamp.json"):
            continue
        if name.endswith("scorer.json"):
            text = json.loads(content)
            (text.get("state") or {}).pop("fit_seconds", None)
            out[name] = text
        else:
            out[name] = content
    return out


# --------------------------------------------------------------------------- in-process


def test_in_process_map_keeps_order_and_records_failures_by_id():
    res = map_cases(_square, {"c4": 4, "c3": 3, "c2": 2, "c0": 0}, progress=False)
    assert list(res.results.items()) == [("c4", 16), ("c2", 4), ("c0", 0)]
    assert res.failed == {"c3": "ValueError: three is refused"}
    with pytest.raises(CasesFailedError, match=r"1 of 4 case\(s\) failed \(c3; first error"):
        res.raise_failed("case")
    map_cases(_square, {"x": 2}, progress=False).raise_failed()  # nothing failed: no error


def test_a_task_runs_torch_single_threaded():
    import torch

    from lesionuq.parallel import _task

    n = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert _task(lambda x: (x, torch.get_num_threads()), "a") == ("a", 1)
    finally:
        torch.set_num_threads(n)


def test_default_path_imports_no_dask(tmp_path):
    code = (
        "import sys\n"
        "import lesionuq.cli, lesionuq.pipeline.experiment, lesionuq.predict\n"
        "from lesionuq.parallel import map_cases\n"
        "res = map_cases(abs, {'a': -2, 'b': 3}, progress=False)\n"
        "assert res.results == {'a': 2, 'b': 3}, res\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')))\n"
    )
    env = {**os.environ, "PYTHONPATH": SRC}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.strip() == "[]"


def test_a_failed_scan_is_named_the_others_finish_and_a_rerun_completes(
    model_dir, three_scans, reference, tmp_path, monkeypatch
):
    import lesionuq.predict.batch as batch

    real = batch.predict_scan

    def predict_but_b(model, images, folder, *args, **kwargs):
        if Path(folder).name == "b":
            raise RuntimeError("scanner exploded")
        return real(model, images, folder, *args, **kwargs)

    out = tmp_path / "batch"
    monkeypatch.setattr(batch, "predict_scan", predict_but_b)
    with pytest.raises(CasesFailedError, match=r"1 of 3 scan\(s\) failed \(b; first error: R"):
        predict_manifest(model_dir, three_scans, out, progress=False)
    assert (out / "a" / "lesions.csv").is_file() and (out / "c" / ".batch_digest").is_file()
    assert not (out / "b").exists() and not (out / "lesions.csv").exists()
    monkeypatch.setattr(batch, "predict_scan", real)
    again = predict_manifest(model_dir, three_scans, out, progress=False)
    assert [k for k, r in again.results.items() if r is not None] == ["b"]  # a, c reused
    assert _files(out) == _files(reference)


# --------------------------------------------------------------------------- arguments


def test_parallel_options_are_checked(model_dir, three_scans, tmp_path):
    check_parallel(None, None)
    check_parallel("tcp://10.0.0.5:8786", None)
    check_parallel("localhost:8786", None)
    with pytest.raises(InputError, match="not both"):
        check_parallel("tcp://10.0.0.5:8786", 2)
    with pytest.raises(InputError, match="at least 1, got 0"):
        check_parallel(None, 0)
    with pytest.raises(InputError, match="not a Dask scheduler address"):
        check_parallel("tcp://my scheduler", None)
    with pytest.raises(InputError, match="at least 1"):
        predict_manifest(model_dir, three_scans, tmp_path / "o1", progress=False, workers=-1)
    with pytest.raises(InputError, match="--bids-out is written by one process"):
        predict_manifest(
            model_dir, three_scans, tmp_path / "o2", workers=2, bids_out=tmp_path / "d"
        )
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_cli_parallel_options(model_dir, three_scans, tmp_path):
    runner = CliRunner()
    base = ["predict", "--model", str(model_dir), "--out", str(tmp_path / "o"), "--quiet"]
    res = runner.invoke(app, [*base, "--cases", str(three_scans), "--workers", "0"])
    assert res.exit_code == 1 and "--workers must be at least 1, got 0." in res.output
    res = runner.invoke(
        app, [*base, "--cases", str(three_scans), "--workers", "2", "--scheduler", "x:1"]
    )
    assert res.exit_code == 1 and "not both" in res.output
    res = runner.invoke(app, [*base, "--image", "x.nii.gz", "--workers", "2"])
    assert res.exit_code == 1 and "use them with --cases CSV" in res.output
    for command in ("experiment", "sample", "graphs"):
        res = runner.invoke(app, [command, "--help"])
        assert "--scheduler" in res.output and "--workers" in res.output
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- Dask


def _die_writing_case_c() -> None:
    """On a worker: end the process in the middle of writing case ``c``'s outputs.

    ``c`` is the last task submitted, so no other task waits behind it on that worker
    (a task queued on a dying worker would fail with it, as retries are off here).
    """
    import lesionuq.predict.write as writers  # the writers read atomic_write_text there

    real = writers.atomic_write_text

    def write(path, text):
        if Path(path).parent.parent.name == "c":  # out/c/.tmp-lesionuq-PID-*/lesions.csv
            os._exit(1)
        return real(path, text)

    writers.atomic_write_text = write


@pytest.fixture(scope="module")
def cluster():
    """Two single-threaded worker processes; a task whose worker dies is not retried."""
    distributed = pytest.importorskip("distributed")  # the Dask tests need lesionuq[cluster]
    import cloudpickle
    import dask

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # for client.run
    with (
        dask.config.set({"distributed.scheduler.allowed-failures": 0}),
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            silence_logs=logging.CRITICAL,
        ) as local,
        distributed.Client(local) as client,
    ):
        yield local, client
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def test_local_cluster_predicts_the_same_bytes_and_loads_the_model_once_per_worker(
    model_dir, three_scans, reference, cluster, tmp_path
):
    from lesionuq.predict.model import _load_model_once

    local, client = cluster
    before = client.run(_load_model_once.cache_info)
    out = tmp_path / "batch"
    res = predict_manifest(
        model_dir, three_scans, out, progress=False, scheduler=local.scheduler_address
    )
    assert sorted(res.results) == ["a", "b", "c"]
    assert all(r is not None and r.n_lesions == 3 for r in res.results.values())
    assert _files(out) == _files(reference)  # lesions.csv, NIfTIs, PNG, markers
    after = client.run(_load_model_once.cache_info)
    calls = {w: after[w].hits + after[w].misses - before[w].hits - before[w].misses for w in after}
    loads = {w: after[w].misses - before[w].misses for w in after}
    assert sum(calls.values()) == 3
    assert all(loads[w] <= 1 for w in after)  # the model is loaded once per worker


def test_killed_worker_leaves_no_half_written_case_and_a_rerun_completes(
    model_dir, three_scans, reference, cluster, tmp_path
):
    local, client = cluster
    client.run(_die_writing_case_c)
    out = tmp_path / "batch"
    with pytest.raises(CasesFailedError, match=r"1 of 3 scan\(s\) failed \(c; first error: its w"):
        predict_manifest(
            model_dir, three_scans, out, progress=False, scheduler=local.scheduler_address
        )
    for cid in ("a", "b"):
        assert (out / cid / ".batch_digest").is_file()
    left = [p for p in (out / "c").rglob("*") if p.is_file() and p.name != LOCK_FILE]
    assert left and all(TMP_PREFIX in p.as_posix() for p in left)  # killed mid-write
    assert not (out / "c" / "lesions.csv").exists() and not (out / "lesions.csv").exists()
    again = predict_manifest(model_dir, three_scans, out, progress=False, workers=1)
    assert [k for k, r in again.results.items() if r is not None] == ["c"]
    assert not [p for p in out.rglob("*") if TMP_PREFIX in p.as_posix()]  # stale tmp removed
    assert _files(out) == _files(reference)
    table = pd.read_csv(out / "lesions.csv", dtype={"case_id": str})
    assert table.groupby("case_id").size().to_dict() == {"a": 3, "b": 3, "c": 3}


def _run_copies(run, tmp_path, local, drop):
    """(name, copy of ``run`` without the paths ``drop``, stage keywords): loop, then Dask."""
    for name, where in (("loop", {}), ("dask", {"scheduler": local.scheduler_address})):
        copy = tmp_path / name
        shutil.copytree(run, copy)
        for rel in drop:
            path = copy / rel
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        yield name, copy, where


def test_experiment_stages_on_dask_write_the_same_files(tiny_run, cluster, tmp_path, one_thread):
    from lesionuq.pipeline.fit import stage_fit
    from lesionuq.pipeline.graphs import stage_graphs
    from lesionuq.pipeline.preprocess import stage_preprocess
    from lesionuq.pipeline.sample import stage_sample

    root, _, _ = tiny_run
    local, _ = cluster
    runs = {}
    drop = ("preprocessed", "fold_0/val", "fold_0/test", "fold_0/graphs", "fold_0/scorers")
    for name, run, where in _run_copies(root / "run", tmp_path, local, drop):
        stage_preprocess(run, progress=False, **where)
        stage_sample(run, [0], progress=False, **where)
        stage_graphs(run, [0], progress=False, **where)
        stage_fit(run, [0], progress=False, **where)  # one task per method
        runs[name] = run
    for sub in ("preprocessed", "fold_0/val", "fold_0/test", "fold_0/graphs", "fold_0/scorers"):
        loop, dask_ = _files(runs["loop"] / sub), _files(runs["dask"] / sub)
        if sub.endswith("scorers"):  # stamps and scorer.json hold the fit's wall time
            loop, dask_ = _untimed(loop), _untimed(dask_)
            assert {f"{m}/scorer.json" for m in TINY.methods} <= set(loop), sorted(loop)
        assert loop and loop == dask_, sub


def test_folds_train_side_by_side_on_dask_with_the_same_weights(
    tiny_run, cluster, tmp_path, one_thread
):
    """Two folds, one task each on single-threaded workers == the loop on one thread."""
    import torch

    from lesionuq.pipeline.train import stage_train

    root, _, _ = tiny_run
    local, _ = cluster
    runs = {}
    names = ("segmenter.pt", "segmenter_last.pt", "stamp_train.json")
    drop = [f"fold_{fold}/{f}" for fold in (0, 1) for f in names]
    for name, run, where in _run_copies(root / "run", tmp_path, local, drop):
        stage_train(run, progress=False, **where)
        runs[name] = run
    for fold in (0, 1):
        a, b = (torch.load(runs[k] / f"fold_{fold}/segmenter.pt") for k in ("loop", "dask"))
        assert a["epoch"] == b["epoch"] and a["best_dice"] == b["best_dice"]  # best epoch
        last = [torch.load(runs[k] / f"fold_{fold}/segmenter_last.pt") for k in runs]
        assert [c["epoch"] for c in last] == [TINY.train.max_epochs] * 2
        assert a["state_dict"].keys() == b["state_dict"].keys()
        for key, w in a["state_dict"].items():
            assert torch.equal(w, b["state_dict"][key]), key
        stamps = [json.loads((runs[k] / f"fold_{fold}/stamp_train.json").read_text()) for k in runs]
        assert stamps[0] == stamps[1]
        assert stamps[0]["threads"] == 1 and stamps[0]["device"] == "cpu"  # how it trained
    # trained folds are skipped: no task is sent, nothing is rewritten
    before = (runs["dask"] / "fold_0/segmenter.pt").stat().st_mtime_ns
    stage_train(runs["dask"], progress=False, scheduler=local.scheduler_address)
    assert (runs["dask"] / "fold_0/segmenter.pt").stat().st_mtime_ns == before


def test_local_workers_start_without_dasks_malloc_trim_threshold(monkeypatch):
    """Dask's MALLOC_TRIM_THRESHOLD_=65536 makes torch 1.75x slower; workers go without it."""
    from lesionuq.parallel import _client

    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")  # left by an earlier Dask cluster
    with _client(None, 1) as client:
        env = client.run(lambda: dict(os.environ))
    (worker_env,) = env.values()
    assert "MALLOC_TRIM_THRESHOLD_" not in worker_env
    assert worker_env["OMP_NUM_THREADS"] == "1"  # Dask's other settings are kept
    assert os.environ["MALLOC_TRIM_THRESHOLD_"] == "65536"  # this process's env restored
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1048576")  # the user's own choice stays
    with _client(None, 1) as client:
        (worker_env,) = client.run(lambda: dict(os.environ)).values()
    assert worker_env["MALLOC_TRIM_THRESHOLD_"] == "1048576"


# --------------------------------------------------------------------------- issue 25


def test_workers_are_capped_at_the_cpu_count_with_one_sentence(caplog):
    from lesionuq.parallel import local_workers

    with caplog.at_level(logging.WARNING, logger="lesionuq.parallel"):
        assert local_workers(999, cpus=4) == 4
        assert local_workers(999, cpus=4) == 4  # told once
        assert local_workers(3, cpus=4) == 3
    assert [r.getMessage() for r in caplog.records] == [
        "--workers 999 is more than the 4 CPU core(s) of this machine; using 4 worker processes."
    ]


def test_a_cluster_without_workers_is_noticed_after_the_grace():
    from lesionuq.parallel import _WorkerWatch

    watch = _WorkerWatch(grace=60.0)
    assert not watch.lost(2, now=0.0)
    assert not watch.lost(0, now=10.0)  # e.g. a worker restarting
    assert not watch.lost(0, now=69.0)
    assert not watch.lost(1, now=70.0)  # back: the clock starts again
    assert not watch.lost(0, now=100.0)
    assert watch.lost(0, now=160.0)
    assert "no worker left for 60 s" in watch.sentence()


def test_a_task_error_comes_back_as_text_not_raised_on_the_worker():
    from lesionuq.parallel import _Failure, _task

    assert _task(str.upper, "a") == "A"
    failure = _task(check_threshold, "nan")
    assert failure == _Failure(
        "InputError: threshold must be a finite number in [0, 1], got 'nan'."
    )


def test_local_cluster_keeps_its_workers_and_prints_no_worker_traceback(capfd):
    pytest.importorskip("distributed")
    from lesionuq.parallel import _client

    with _client(None, 1) as client:  # no time-to-live: a suspended cluster keeps its workers
        assert client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.worker_ttl) is None
    capfd.readouterr()
    res = map_cases(check_threshold, {"a": "nan", "b": 0.5}, workers=1, progress=False)
    assert res.results == {"b": 0.5}
    assert res.failed == {
        "a": "InputError: threshold must be a finite number in [0, 1], got 'nan'."
    }
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Compute Failed" not in err


def test_a_lost_heartbeat_is_dropped_and_every_other_record_kept() -> None:
    import logging

    from lesionuq.parallel import HEARTBEAT_LOST, _not_a_lost_heartbeat

    def record(msg: str, level: int = logging.ERROR) -> logging.LogRecord:
        return logging.LogRecord("distributed.worker", level, __file__, 1, msg, None, None)

    assert _not_a_lost_heartbeat(record(HEARTBEAT_LOST)) is False
    assert _not_a_lost_heartbeat(record("Compute Failed")) is True
    assert _not_a_lost_heartbeat(record(HEARTBEAT_LOST + " again")) is True
    assert _not_a_lost_heartbeat(record("%s", logging.WARNING)) is True


def test_the_workers_of_a_local_cluster_drop_the_lost_heartbeat() -> None:
    pytest.importorskip("distributed")
    from lesionuq.parallel import _client, _not_a_lost_heartbeat

    def installed() -> bool:
        import logging

        return _not_a_lost_heartbeat in logging.getLogger("distributed.worker").filters

    with _client(None, 1) as client:
        assert list(client.run(installed).values()) == [True]
