"""Hostile but realistic inputs: one sentence, exit 1, and the file system unchanged.

One row per input of issues 10 and 25. Each row builds a small valid data set (four 8^3 cases)
plus the hostile part, snapshots every file under the test folder, runs the command
through Typer's runner, and checks the exit code, the sentence and that nothing was
created, changed or removed anywhere (a refused command writes nothing at all).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from lesionuq.cli import app
from lesionuq.config import ExperimentConfig
from lesionuq.outputs import LOCK_FILE, MARKER, run_lock, start_output
from lesionuq.rundir import FoldSplit, RunDir

runner = CliRunner()


# --------------------------------------------------------------------------- builders


def _nifti(path: Path, data: np.ndarray | None = None, affine: np.ndarray | None = None) -> Path:
    if data is None:
        data = np.ones((8, 8, 8), np.float32)
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


def _dataset(root: Path, first_id: str = "c0") -> Path:
    data = root / "data"
    data.mkdir(exist_ok=True)
    mask = np.zeros((8, 8, 8), np.uint8)
    mask[2:4, 2:4, 2:4] = 1
    rows = ["case_id,flair,mask"]
    for i in range(4):  # the demo config's 4 folds need 4 cases
        _nifti(data / f"f{i}.nii.gz")
        _nifti(data / f"m{i}.nii.gz", mask)
        rows.append(f"{first_id if i == 0 else f'c{i}'},f{i}.nii.gz,m{i}.nii.gz")
    (data / "cases.csv").write_text("\n".join(rows) + "\n")
    (data / "notes.txt").write_text("the user's notes")
    return data / "cases.csv"


def _patch_header(path: Path, **fields: object) -> None:
    """Rewrite header fields on disk (nibabel refuses to save some broken affines)."""
    img = nib.load(str(path))
    hdr = img.header.copy()
    for k, v in fields.items():
        hdr[k] = v
    raw = bytearray(path.read_bytes())
    raw[: hdr.sizeof_hdr] = hdr.binaryblock
    path.write_bytes(bytes(raw))


def _uncompressed_f0(tmp: Path) -> tuple[Path, Path]:
    """The standard data set with its first scan as ``f0.nii`` (a header to patch)."""
    csv = _dataset(tmp)
    f0 = csv.parent / "f0.nii"
    _nifti(f0)
    (csv.parent / "f0.nii.gz").unlink()
    csv.write_text(csv.read_text().replace("f0.nii.gz", "f0.nii"))
    return csv, f0


def _bad_affine(kind: str) -> Callable[[Path], list[str]]:
    def setup(tmp: Path) -> list[str]:
        csv, f0 = _uncompressed_f0(tmp)
        rows = {
            "zero": np.zeros((3, 4)),
            "singular": np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0.0]]),
            "nan": np.full((3, 4), np.nan),
        }
        if kind == "pixdim0":
            _patch_header(f0, qform_code=0, sform_code=0)
            raw = bytearray(f0.read_bytes())
            raw[80:92] = struct.pack("<3f", 0.0, 0.0, 0.0)  # pixdim[1:4]
            f0.write_bytes(bytes(raw))
        else:
            r = rows[kind]
            _patch_header(f0, qform_code=0, sform_code=1, srow_x=r[0], srow_y=r[1], srow_z=r[2])
        return _experiment(tmp, csv)

    return setup


def _experiment(tmp: Path, csv: Path, *extra: str) -> list[str]:
    return ["experiment", "--data", str(csv), "--out", str(tmp / "run"), "--quiet", *extra]


def _with_id(case_id: str) -> Callable[[Path], list[str]]:
    def setup(tmp: Path) -> list[str]:
        return _experiment(tmp, _dataset(tmp, case_id))

    return setup


def _predict(tmp: Path, out: str, *extra: str) -> list[str]:
    scan = _dataset(tmp).parent / "f0.nii.gz"
    model = tmp / "model"
    return ["predict", "--model", str(model), "--image", str(scan), "--out", out, *extra]


def _model_folder(tmp: Path, config_text: str | None, segmenter: object = None) -> Path:
    model = tmp / "model"
    (model / "scorers" / "gcnn_classif").mkdir(parents=True)
    (model / "scorers" / "gcnn_reg").mkdir(parents=True)
    for m in ("gcnn_classif", "gcnn_reg"):
        (model / "scorers" / m / "scorer.json").write_text("{}")
    if config_text is None:
        ExperimentConfig().to_yaml(model / "config.yaml")
    else:
        (model / "config.yaml").write_text(config_text)
    torch.save(segmenter if segmenter is not None else {}, model / "segmenter.pt")
    return model


class Gadget:
    """A class torch's weights-only loader refuses to unpickle."""


# --------------------------------------------------------------------------- rows


@dataclass
class Row:
    """One hostile input: ``setup(tmp)`` builds it and returns the CLI arguments."""

    name: str
    setup: Callable[[Path], list[str]]
    fragment: str
    code: int = 1
    marks: tuple = ()
    chdir: str | None = None


def _out_is_scan_folder(tmp: Path) -> list[str]:
    return _predict(tmp, str(tmp / "data"))


def _out_is_file(tmp: Path) -> list[str]:
    args = _predict(tmp, str(tmp / "existing.txt"))
    (tmp / "existing.txt").write_text("precious")
    return args


def _out_foreign(tmp: Path) -> list[str]:
    args = _predict(tmp, str(tmp / "mine"))
    (tmp / "mine").mkdir()
    (tmp / "mine" / "thesis.tex").write_text("years of work")
    return args


def _experiment_out_file(tmp: Path) -> list[str]:
    (tmp / "run").write_text("precious")
    return _experiment(tmp, _dataset(tmp))


def _experiment_out_foreign(tmp: Path) -> list[str]:
    (tmp / "run").mkdir()
    (tmp / "run" / "thesis.tex").write_text("years of work")
    return _experiment(tmp, _dataset(tmp))


def _binary_csv(tmp: Path) -> list[str]:
    csv = _dataset(tmp)
    csv.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe\x00")
    return _experiment(tmp, csv)


def _gzip_csv(tmp: Path) -> list[str]:
    csv = _dataset(tmp)
    csv.write_bytes(gzip.compress(csv.read_bytes()))
    return _experiment(tmp, csv)


def _folder_as_image(tmp: Path) -> list[str]:
    csv = _dataset(tmp)
    (csv.parent / "scan_dir.nii.gz").mkdir()
    csv.write_text(csv.read_text().replace("f1.nii.gz", "scan_dir.nii.gz"))
    return _experiment(tmp, csv)


def _config(text: str) -> Callable[[Path], list[str]]:
    def setup(tmp: Path) -> list[str]:
        (tmp / "cfg.yaml").write_text(text)
        return _experiment(tmp, _dataset(tmp), "--config", str(tmp / "cfg.yaml"))

    return setup


def _folds_1(tmp: Path) -> list[str]:
    return _experiment(tmp, _dataset(tmp), "--folds", "1")


def _stop_after_bogus(tmp: Path) -> list[str]:
    return _experiment(tmp, _dataset(tmp), "--stop-after", "bogus")


def _stack_empty(tmp: Path) -> list[str]:
    (tmp / "stack").mkdir()
    return ["sample", "--stack", str(tmp / "stack"), "--out", str(tmp / "maps")]


def _model_bad_yaml(tmp: Path) -> list[str]:
    args = _predict(tmp, str(tmp / "pred"))
    _model_folder(tmp, "unet: [channels: {4, 8\n")
    return args


def _model_pickle(tmp: Path) -> list[str]:
    args = _predict(tmp, str(tmp / "pred"))
    _model_folder(tmp, None, {"state_dict": Gadget()})
    return args


def _absolute_id(tmp: Path) -> list[str]:
    victim = tmp / "victim"  # old code emptied a folder named by an absolute case_id
    victim.mkdir()
    (victim / "results.xlsx").write_text("someone's work")
    return _experiment(tmp, _dataset(tmp, str(victim)))


def _phantom(*extra: str) -> Callable[[Path], list[str]]:
    def setup(tmp: Path) -> list[str]:
        return ["phantom", "--out", str(tmp / "ph"), "--quiet", *extra]

    return setup


# ------------------------------------------------------------ issue 25: tampered folders


def _tampered_marker(
    listed: Callable[[Path], str], link: bool = False
) -> Callable[[Path], list[str]]:
    """A prediction folder whose marker lists a path outside it (or a link out of it)."""

    def setup(tmp: Path) -> list[str]:
        args = _predict(tmp, str(tmp / "pred"), "--overwrite")
        (tmp / "pred").mkdir()
        (tmp / "x.txt").write_text("the user's file outside --out")
        if link:
            (tmp / "pred" / "link.txt").symlink_to(tmp / "x.txt")
        entry = listed(tmp)
        (tmp / "pred" / MARKER).write_text(f'{{"kind": "prediction", "files": ["{entry}"]}}')
        return args

    return setup


def _run_dir(tmp: Path) -> Path:
    """A real run directory (plan and marker) over the standard data set."""
    run = tmp / "run"
    csv = _dataset(tmp)
    folds = [
        FoldSplit(0, ("c0", "c1"), ("c2",), ("c3",)),
        FoldSplit(1, ("c2", "c3"), ("c0",), ("c1",)),
    ]
    RunDir(run).write_plan(ExperimentConfig(), csv, folds)
    start_output(run, "run")
    return run


def _lock_is(kind: str) -> Callable[[Path], list[str]]:
    def setup(tmp: Path) -> list[str]:
        run = _run_dir(tmp)
        (tmp / "precious.txt").write_text("a user's file")
        if kind == "symlink":
            (run / LOCK_FILE).symlink_to(tmp / "precious.txt")
        else:
            (run / LOCK_FILE).mkdir()
        return ["fit", "--run", str(run), "--quiet"]

    return setup


def _fit_bogus(tmp: Path) -> list[str]:
    run = _run_dir(tmp)
    with run_lock(run):  # the lock file exists (the command rewrites the same PID)
        pass
    return ["fit", "--run", str(run), "--method", "bogus", "--quiet"]


def _phantom_into_data(tmp: Path) -> list[str]:
    _dataset(tmp)
    return ["phantom", "--out", str(tmp / "data"), "--cases", "1", "--quiet"]


def _experiment_look_alike(tmp: Path) -> list[str]:
    (tmp / "run").mkdir()
    (tmp / "run" / "config.yaml").write_text("someone: else's\n")
    (tmp / "run" / "folds.json").write_text('{"theirs": true}')
    return _experiment(tmp, _dataset(tmp))


def _maps_over_user_file(tmp: Path) -> list[str]:
    args = _predict(tmp, str(tmp / "pred"), "--overwrite", "--maps")
    (tmp / "pred").mkdir()
    (tmp / "pred" / "seg.nii.gz").write_text("lesionuq's")
    (tmp / "pred" / "entropy.nii.gz").write_text("the user's own entropy map")
    (tmp / "pred" / MARKER).write_text('{"kind": "prediction", "files": ["seg.nii.gz"]}')
    return args


def _huge_header(tmp: Path) -> list[str]:
    """A tiny file whose header claims 4096^3 voxels (a compressed, mostly empty scan)."""
    csv, f0 = _uncompressed_f0(tmp)
    _patch_header(f0, dim=[3, 4096, 4096, 4096, 1, 1, 1, 1])
    return _experiment(tmp, csv)


_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{k}: &{k} [*{j}, *{j}, *{j}, *{j}, *{j}, *{j}, *{j}, *{j}, *{j}]\n"
    for j, k in zip("abcdefgh", "bcdefghi", strict=True)
)


def _model_bomb(tmp: Path) -> list[str]:
    args = _predict(tmp, str(tmp / "pred"))
    _model_folder(tmp, _BOMB + "seed: *i\n")
    return args


def _bids_name(name: str) -> Callable[[Path], list[str]]:
    def setup(tmp: Path) -> list[str]:
        scan = _nifti(_dataset(tmp).parent / name)
        model = tmp / "model"
        out, deriv = str(tmp / "pred"), str(tmp / "deriv")
        return [
            "predict",
            "--model",
            str(model),
            "--image",
            str(scan),
            "--out",
            out,
            "--bids-out",
            deriv,
        ]

    return setup


ROWS = [
    Row("case_id absolute path of a folder", _absolute_id, "cannot name a folder"),
    Row("case_id ../../../x", _with_id("../../../x"), "cannot name a folder"),
    Row("case_id .", _with_id("."), "cannot name a folder"),
    Row("case_id ..", _with_id(".."), "cannot name a folder"),
    Row("case_id a/b", _with_id("a/b"), "cannot name a folder"),
    Row("case_id 300 chars", _with_id("x" * 300), "300 characters"),
    Row("case_id control char", _with_id("a\x07b"), "cannot name a folder"),
    Row("binary cases.csv", _binary_csv, "not a UTF-8 text CSV"),
    Row("gzip cases.csv", _gzip_csv, "gzip-compressed"),
    Row("predict --out scan folder", _out_is_scan_folder, "folder of the input"),
    Row("predict --out existing file", _out_is_file, "is a file"),
    Row("predict --out foreign folder", _out_foreign, "not written by lesionuq"),
    Row("predict --out .", lambda t: _predict(t, "."), "folder of the input", chdir="data"),
    Row("predict --out ..", lambda t: _predict(t, ".."), "folder of the input", chdir="data"),
    Row(
        "predict --threshold nan",
        lambda t: _predict(t, str(t / "p"), "--threshold", "nan"),
        "finite number in [0, 1]",
    ),
    Row(
        "predict --threshold 1.5",
        lambda t: _predict(t, str(t / "p"), "--threshold", "1.5"),
        "finite number in [0, 1]",
    ),
    Row("experiment --out existing file", _experiment_out_file, "is a file"),
    Row("experiment --out foreign folder", _experiment_out_foreign, "not written by lesionuq"),
    Row("all-zero affine", _bad_affine("zero"), "is all zeros"),
    Row("singular affine", _bad_affine("singular"), "is singular"),
    Row("NaN affine", _bad_affine("nan"), "contains NaN"),
    Row("pixdim 0 without sform/qform", _bad_affine("pixdim0"), "voxel size (pixdim 0"),
    Row("folder given as image", _folder_as_image, "is a folder, not a NIfTI file"),
    Row("malformed YAML --config", _config("unet: [channels: {4, 8\n"), "not valid YAML"),
    Row("--folds 1", _folds_1, "folds must be >= 2"),
    Row("--stop-after bogus", _stop_after_bogus, "Invalid value for '--stop-after'", code=2),
    Row("sample --stack empty folder", _stack_empty, "holds no NIfTI files"),
    Row("model config.yaml malformed YAML", _model_bad_yaml, "not a valid config"),
    Row("model segmenter.pt with a pickled object", _model_pickle, "refuses to load"),
    Row(
        "config n_samples 0",
        _config("sampling:\n  n_samples: 0\n"),
        "n_samples",
    ),
    Row("phantom --cases 0", _phantom("--cases", "0"), "cases"),
    Row("phantom --cases -1", _phantom("--cases", "-1"), "cases"),
    Row("phantom --seed -1", _phantom("--seed", "-1"), "seed"),
    Row("phantom --spacing 0", _phantom("--spacing", "0"), "spacing"),
    Row("phantom --spacing -4", _phantom("--spacing", "-4"), "spacing"),
    Row(
        "phantom --shape 0 10 10",
        _phantom("--shape", "0", "10", "10"),
        "shape",
    ),
    Row(
        "phantom --shape 4000^3",
        _phantom("--shape", "4000", "4000", "4000"),
        "memory",
    ),
    # issue 25
    Row("marker lists ../x.txt", _tampered_marker(lambda t: "../x.txt"), "outside its folder"),
    Row(
        "marker lists an absolute path",
        _tampered_marker(lambda t: str(t / "x.txt")),
        "outside its folder",
    ),
    Row(
        "marker lists a symlink out",
        _tampered_marker(lambda t: "link.txt", link=True),
        "not a regular file but a symbolic link",
    ),
    Row("lock file a symlink to a user file", _lock_is("symlink"), "refuses to use it as its lock"),
    Row("lock file a folder", _lock_is("folder"), "refuses to use it as its lock"),
    Row("phantom --out a user's data folder", _phantom_into_data, "not written by lesionuq"),
    Row(
        "experiment --out a look-alike run (config.yaml, folds.json)",
        _experiment_look_alike,
        "not written by lesionuq",
    ),
    Row(
        "predict --overwrite --maps over the user's entropy.nii.gz",
        _maps_over_user_file,
        "is not a file lesionuq wrote",
    ),
    Row("NIfTI header of 4096^3 voxels", _huge_header, "GiB to load and preprocess"),
    Row(
        "YAML alias bomb under a scalar key",
        _config(_BOMB + "train:\n  lr: *i\n"),
        "YAML aliases (*name) are not accepted",
    ),
    Row("YAML alias bomb in a model folder", _model_bomb, "YAML aliases (*name) are not accepted"),
    Row(
        "BIDS name sub-01_ses-.._FLAIR",
        _bids_name("sub-01_ses-.._FLAIR.nii.gz"),
        "not a BIDS file name",
    ),
    Row(
        "BIDS entity key <img src=x onerror=alert(1)>",
        _bids_name("sub-01_<img src=x onerror=alert(1)>-a_FLAIR.nii.gz"),
        "not a BIDS file name",
    ),
    Row("fit --method bogus", _fit_bogus, "'bogus' is not a scoring method"),
    Row(
        "config lr: not a number",
        _config("train:\n  lr: fast\n"),
        "config.train.lr must be a number, got 'fast'",
    ),
]


def _snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under ``root``: its content digest ('dir' for folders)."""
    snap = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        snap[rel] = "dir" if path.is_dir() else hashlib.sha1(path.read_bytes()).hexdigest()
    return snap


@pytest.mark.parametrize("row", [pytest.param(r, id=r.name, marks=r.marks) for r in ROWS])
def test_hostile_input(row: Row, tmp_path, monkeypatch):
    args = row.setup(tmp_path)
    if row.chdir:
        monkeypatch.chdir(tmp_path / row.chdir)
    before = _snapshot(tmp_path)
    result = runner.invoke(app, args)
    text = " ".join(result.output.split())
    assert result.exit_code == row.code, text
    assert row.fragment in text
    assert "Traceback" not in text
    assert "weights_only=False" not in text
    assert _snapshot(tmp_path) == before  # nothing created, changed or removed


def test_read_only_out_is_refused_before_any_work(tmp_path, monkeypatch):
    import lesionuq.outputs

    args = _predict(tmp_path, str(tmp_path / "ro" / "pred"))
    (tmp_path / "ro").mkdir(mode=0o555)
    if os.geteuid() == 0:  # root ignores permission bits: deny as a read-only mount would
        real = os.access
        ro = (tmp_path / "ro").resolve()
        monkeypatch.setattr(
            lesionuq.outputs.os, "access", lambda p, m: Path(p) != ro and real(p, m)
        )
    before = _snapshot(tmp_path)
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert "is not writable" in " ".join(result.output.split())
    assert _snapshot(tmp_path) == before


def test_an_unreachable_scheduler_leaves_nothing_behind(tmp_path, monkeypatch):
    import lesionuq.parallel

    monkeypatch.setattr(lesionuq.parallel, "CONNECT_TIMEOUT", 1)
    args = _experiment(tmp_path, _dataset(tmp_path), "--scheduler", "tcp://127.0.0.1:9")
    before = _snapshot(tmp_path)
    result = runner.invoke(app, args)
    text = " ".join(result.output.split())
    assert result.exit_code == 1
    assert "--scheduler tcp://127.0.0.1:9: cannot reach a Dask scheduler there" in text
    assert _snapshot(tmp_path) == before  # no OUT/.lesionuq.json, no config.yaml


# ------------------------------- issue 25 items 3 and 8: manifest --out and derived masks


def _wmh_download(tmp: Path, bad_label: bool = False) -> Path:
    """A WMH 2017 ``training`` folder of two subjects (``pre/FLAIR.nii.gz``, ``wmh.nii.gz``
    with labels 0/1/2); ``bad_label`` puts a 5 in the second subject's reference."""
    root = tmp / "wmh" / "training"
    for i, site in enumerate(("Singapore/50", "Utrecht/0")):
        (root / site / "pre").mkdir(parents=True)
        _nifti(root / site / "pre" / "FLAIR.nii.gz")
        labels = np.zeros((8, 8, 8), np.float32)
        labels[1, 1, 1], labels[5, 5, 5] = 1, 2
        if bad_label and i == 1:
            labels[3, 3, 3] = 5
        _nifti(root / site / "wmh.nii.gz", labels)
    return root


def _manifest(out: Callable[[Path], Path], bad: bool = False) -> Callable[[Path], list[str]]:
    def setup(tmp: Path) -> list[str]:
        root = _wmh_download(tmp, bad)
        return ["manifest", "--layout", "wmh2017", "--root", str(root), "--out", str(out(tmp))]

    return setup


def _out_existing_folder(tmp: Path) -> Path:
    (tmp / "existing").mkdir()
    return tmp / "existing"


def _out_users_csv(tmp: Path) -> Path:
    (tmp / "grades.csv").write_text("student,grade\nann,A\n")
    return tmp / "grades.csv"


def _out_foreign_derived(tmp: Path) -> Path:
    (tmp / "m" / "wmh2017_derived").mkdir(parents=True)
    (tmp / "m" / "wmh2017_derived" / "my_mask.nii.gz").write_text("user's mask")
    return tmp / "m" / "cases.csv"


def _rater_change(tmp: Path) -> list[str]:
    from lesionuq.datasets import build_manifest

    root = _wmh_download(tmp)
    obs = tmp / "wmh" / "additional_annotations" / "observer_o3" / "training"
    for site in ("Singapore/50", "Utrecht/0"):
        (obs / site).mkdir(parents=True)
        _nifti(obs / site / "result.nii.gz", np.zeros((8, 8, 8), np.float32))
    build_manifest("wmh2017", root, tmp / "m" / "cases.csv")  # derived masks of rater o12
    args = ["manifest", "--layout", "wmh2017", "--root", str(root)]
    return [*args, "--out", str(tmp / "m" / "cases.csv"), "--rater", "o3"]


FLAIR = "wmh/training/Singapore/50/pre/FLAIR.nii.gz"
MANIFEST_ROWS = [
    Row("manifest --out the input FLAIR", _manifest(lambda t: t / FLAIR), "must name a .csv"),
    Row(
        "manifest --out the input mask",
        _manifest(lambda t: t / "wmh/training/Utrecht/0/wmh.nii.gz"),
        "must name a .csv",
    ),
    Row("manifest --out existing folder", _manifest(_out_existing_folder), "is a folder"),
    Row("manifest --out a user's CSV", _manifest(_out_users_csv), "is not a cases.csv manifest"),
    Row(
        "manifest --out inside the data set",
        _manifest(lambda t: t / "wmh/training/cases.csv"),
        "lies inside the data set folder",
    ),
    Row(
        "manifest derived folder holds a user's files",
        _manifest(_out_foreign_derived),
        "not written by lesionuq",
    ),
    Row(
        "manifest wmh2017 second case refused",
        _manifest(lambda t: t / "m" / "cases.csv", bad=True),
        "labels must be 0, 1, 2; found 5",
    ),
    Row("manifest derived masks of another rater", _rater_change, "add --overwrite"),
]


@pytest.mark.parametrize("row", [pytest.param(r, id=r.name) for r in MANIFEST_ROWS])
def test_hostile_manifest(row: Row, tmp_path, monkeypatch):
    test_hostile_input(row, tmp_path, monkeypatch)
