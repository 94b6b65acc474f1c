"""Output folders never lose user data; the run lock; stale temporary files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lesionuq.config import ExperimentConfig
from lesionuq.io import InputError
from lesionuq.outputs import (
    LOCK_FILE,
    MARKER,
    check_output_dir,
    output_dir,
    read_marker,
    remove_written,
    run_lock,
    start_output,
)
from lesionuq.rundir import FoldSplit, RunDir

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _make_run(root: Path) -> Path:
    run = root / "run"
    folds = [FoldSplit(0, ("a",), ("b",), ("c",)), FoldSplit(1, ("c",), ("b",), ("a",))]
    RunDir(run).write_plan(ExperimentConfig(), root / "cases.csv", folds)
    start_output(run, "run")
    return run


# --------------------------------------------------------------------------- the rule


def test_new_and_empty_folders_are_accepted(tmp_path):
    assert check_output_dir(tmp_path / "new" / "deeper", "prediction") == tmp_path / "new/deeper"
    (tmp_path / "empty").mkdir()
    check_output_dir(tmp_path / "empty", "prediction")
    assert not (tmp_path / "new").exists()  # checking writes nothing


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda d: (d / "out").write_text("mine"), "is a file"),
        (lambda d: ((d / "out").mkdir(), (d / "out/notes.txt").write_text("x")), "foreign"),
    ],
)
def test_files_and_foreign_folders_are_refused(tmp_path, make, fragment):
    make(tmp_path)
    with pytest.raises(InputError, match=fragment):
        check_output_dir(tmp_path / "out", "prediction", overwrite=True)


def test_the_input_folder_and_its_ancestors_are_refused(tmp_path):
    scan = tmp_path / "data" / "sub" / "flair.nii.gz"
    scan.parent.mkdir(parents=True)
    scan.write_bytes(b"x")
    for out in (scan.parent, tmp_path / "data", scan):
        with pytest.raises(InputError, match="folder of the input"):
            check_output_dir(out, "prediction", overwrite=True, inputs=[scan])
    check_output_dir(tmp_path / "data" / "pred", "prediction", inputs=[scan])


def test_earlier_output_needs_overwrite_and_only_our_files_go(tmp_path):
    out = tmp_path / "out"
    with output_dir(out, "prediction") as tmp:
        (tmp / "seg.nii.gz").write_text("old seg")
        (tmp / "old_only.csv").write_text("old")
    (out / "notes.txt").write_text("the user's own notes")
    assert read_marker(out).files == ["old_only.csv", "seg.nii.gz"]
    with pytest.raises(InputError, match="add --overwrite"):
        check_output_dir(out, "prediction")
    with pytest.raises(InputError, match="not a set of voxel maps"):
        check_output_dir(out, "maps", overwrite=True)
    check_output_dir(out, "prediction", overwrite=True)
    with output_dir(out, "prediction") as tmp:
        (tmp / "seg.nii.gz").write_text("new seg")
    assert (out / "seg.nii.gz").read_text() == "new seg"
    assert not (out / "old_only.csv").exists()
    assert (out / "notes.txt").read_text() == "the user's own notes"
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "notes.txt", "seg.nii.gz"]


def test_failed_output_leaves_nothing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError), output_dir(out, "prediction") as tmp:
        (tmp / "half.nii.gz").write_text("half")
        raise RuntimeError("killed")
    assert not out.exists()


def test_same_key_resumes_other_key_needs_overwrite(tmp_path):
    out = tmp_path / "batch"
    start_output(out, "batch", "k1", dirs=["c1"])
    check_output_dir(out, "batch", key="k1")
    with pytest.raises(InputError, match="add --overwrite"):
        check_output_dir(out, "batch", key="k2")


def test_output_folders_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        with output_dir(tmp_path / "out", "maps") as tmp:
            assert tmp.stat().st_mode & 0o777 == 0o750
            (tmp / "a.txt").write_text("a")
    finally:
        os.umask(old)


# --------------------------------------------------------------------------- run lock


def test_second_holder_gets_one_sentence_with_the_pid(tmp_path):
    import fcntl

    from lesionuq.pipeline.graphs import stage_graphs

    run = _make_run(tmp_path)
    fd = os.open(run / LOCK_FILE, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another open file = another holder
        os.write(fd, b"4242\n")
        with pytest.raises(InputError, match=r"in use by another lesionuq process \(PID 4242\)"):
            stage_graphs(run, progress=False)
    finally:
        os.close(fd)
    with run_lock(run), run_lock(run):  # free again, and re-entrant in one process
        assert (run / LOCK_FILE).read_text().strip() == str(os.getpid())


def test_lock_of_a_killed_process_is_released(tmp_path):
    run = _make_run(tmp_path)
    code = (
        "import sys, time; from lesionuq.outputs import run_lock\n"
        "with run_lock(sys.argv[1]):\n    print('locked', flush=True); time.sleep(60)\n"
    )
    env = {**os.environ, "PYTHONPATH": SRC}
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(run)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(InputError, match=f"PID {proc.pid}"), run_lock(run):
            pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with run_lock(run):  # the crash released it: a rerun resumes
        pass


def test_stale_temporaries_are_cleaned_on_the_next_start(tmp_path):
    run = _make_run(tmp_path)
    stale_dir = run / "fold_0" / "test" / ".tmp-case-abc"
    stale_dir.mkdir(parents=True)
    (stale_dir / "prob.nii.gz").write_text("half")
    (run / "fold_0" / ".tmp-xyz.nii.gz").write_text("half")
    (run / "fold_0" / "keep.nii.gz").write_text("done")
    with run_lock(run):
        pass
    assert not stale_dir.exists()
    assert not (run / "fold_0" / ".tmp-xyz.nii.gz").exists()
    assert (run / "fold_0" / "keep.nii.gz").read_text() == "done"


def test_a_foreign_folder_given_as_run_is_left_alone(tmp_path):
    from lesionuq.pipeline.graphs import stage_graphs

    (tmp_path / ".tmp-user-file").write_text("user")
    with pytest.raises(InputError, match="not a run directory"):
        stage_graphs(tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp-user-file"]


def test_run_marker(tmp_path):
    run = _make_run(tmp_path)
    assert json.loads((run / MARKER).read_text())["kind"] == "run"
    check_output_dir(run, "run")  # an earlier run resumes without --overwrite


# --------------------------------------------------------------------------- PyG codegen


def test_pyg_generated_modules_do_not_pile_up_in_tmp(tmp_path):
    code = (
        "from torch_geometric.nn import GCNConv\n"
        "from lesionuq.scorers.gcnn import SymmetricGCNConv\n"
        "from lesionuq.utils import remove_pyg_codegen_files\n"
        "GCNConv(2, 2)\n"
        "SymmetricGCNConv(2, 2)\n"  # a subclass of ours: a module named after lesionuq's
        "print(len(remove_pyg_codegen_files()))\n"
    )
    env = {**os.environ, "PYTHONPATH": SRC, "TMPDIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], check=True, env=env, capture_output=True)
    assert out.stdout.split()[-1] == b"2"  # GCNConv's and SymmetricGCNConv's
    assert not [p.name for p in tmp_path.iterdir() if "propagate" in p.name]


# --------------------------------------------------------------------------- issue 25


@pytest.mark.parametrize(
    ("entry", "fragment"),
    [
        ("../x.txt", "outside its folder"),
        ("ABS", "outside its folder"),
        ("link", "symbolic link"),
        ("sub/x.txt", "leads outside"),
    ],
)
def test_a_tampered_marker_is_refused_and_deletes_nothing(tmp_path, entry, fragment):
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "x.txt"
    victim.write_text("the user's")
    (out / "link").symlink_to(victim)
    (out / "sub").symlink_to(tmp_path)  # a listed file under a linked folder
    entry = str(victim) if entry == "ABS" else entry
    (out / MARKER).write_text(json.dumps({"kind": "prediction", "files": [entry]}))
    with pytest.raises(InputError, match=fragment):
        check_output_dir(out, "prediction", overwrite=True)
    with pytest.raises(InputError, match=fragment):
        remove_written(out)
    assert victim.read_text() == "the user's"


def test_a_marker_listing_a_link_inside_or_a_folder_is_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "real.txt").write_text("x")
    (out / "link.txt").symlink_to(out / "real.txt")
    (out / "sub").mkdir()
    for entry in ("link.txt", "sub"):
        (out / MARKER).write_text(json.dumps({"kind": "prediction", "files": [entry]}))
        with pytest.raises(InputError, match="not a regular file"):
            check_output_dir(out, "prediction", overwrite=True)
    assert (out / "real.txt").read_text() == "x"


@pytest.mark.parametrize("kind", ["symlink", "folder", "fifo"])
def test_the_lock_is_never_followed_nor_a_non_file(tmp_path, kind):
    run = _make_run(tmp_path)
    target = tmp_path / "precious.txt"
    target.write_text("a user's file")
    lock = run / LOCK_FILE
    if kind == "symlink":
        lock.symlink_to(target)
    elif kind == "folder":
        lock.mkdir()
    else:
        os.mkfifo(lock)
    with pytest.raises(InputError, match="refuses to use it as its lock"), run_lock(run):
        pass
    assert target.read_text() == "a user's file"


def test_a_look_alike_run_is_not_taken_for_a_run(tmp_path):
    from lesionuq.pipeline.fit import stage_fit

    run = tmp_path / "run"
    folds = [FoldSplit(0, ("a",), ("b",), ("c",)), FoldSplit(1, ("c",), ("b",), ("a",))]
    RunDir(run).write_plan(ExperimentConfig(), tmp_path / "cases.csv", folds)  # no marker
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    assert read_marker(run) is None
    with pytest.raises(InputError, match="not written by lesionuq"):
        check_output_dir(run, "run")
    with pytest.raises(InputError, match="no lesionuq run marker"):
        stage_fit(run, progress=False)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_publishing_never_replaces_a_file_the_marker_does_not_list(tmp_path):
    out = tmp_path / "out"
    with output_dir(out, "maps") as tmp:
        (tmp / "prob.nii.gz").write_text("ours")
    check_output_dir(out, "maps", overwrite=True, writes=["prob.nii.gz", "entropy.nii.gz"])
    (out / "entropy.nii.gz").write_text("the user's")
    with pytest.raises(InputError, match="is not a file lesionuq wrote"):
        check_output_dir(out, "maps", overwrite=True, writes=["prob.nii.gz", "entropy.nii.gz"])
    (out / "entropy.nii.gz").unlink()
    with (
        pytest.raises(InputError, match="is not a file lesionuq wrote"),
        output_dir(out, "maps") as tmp,
    ):
        (tmp / "entropy.nii.gz").write_text("new")
        (out / "entropy.nii.gz").write_text("the user's, made meanwhile")
    assert (out / "entropy.nii.gz").read_text() == "the user's, made meanwhile"
    assert (out / "prob.nii.gz").read_text() == "ours"
