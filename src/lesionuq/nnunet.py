"""nnU-Net v2 as a source of samples: K fold folders -> 4-D stacks of T = K samples.

``nnUNetv2_predict ... -f k --save_probabilities -o FOLD_k`` writes, per case, ``CASE.npz``
holding ``probabilities`` (C, ...) beside the segmentation ``CASE`` + ``file_ending``
(``.nii.gz``) that carries the geometry, and copies the model's ``dataset.json`` and
``plans.json`` into the folder. :func:`stacks_from_nnunet` turns K such folders into
one 4-D NIfTI per case (last axis = fold), the foreground probability of one label, on
the segmentation's grid, plus a manifest fragment (``samples.csv``: ``case_id``,
``samples``, ``n_samples``) to join to ``cases.csv``; then ``lesionuq experiment`` runs
the samples protocol (:mod:`lesionuq.samples`). A case predicted by some folds only
(e.g. each fold predicting the cases it did not train on) gets as many samples as
folds that hold it.

Conventions, checked against nnU-Net's own export code (``tests/test_nnunet.py``): the
probability array is in the axis order of nnU-Net's reader, which is the NIfTI's
(x, y, z) reversed (``SimpleITKIO``, ``NibabelIO``), or that of the image reoriented to
RAS (``NibabelIOWithReorient``; undone as its ``write_seg`` does). The reader is the
``image_reader_writer`` of ``plans.json``. Every stack is checked against its
segmentation file: the argmax over the classes must give the segmentation (label-based
models), so a wrong axis order cannot pass silently. nnU-Net's ``.pkl`` files are never
read (unpickling can run arbitrary code); ``.npz`` files are read with
``allow_pickle=False``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from lesionuq.io import (
    AFFINE_TOL,
    Case,
    InputError,
    atomic_write_text,
    csv_text,
    load_nifti,
    read_manifest,
    write_manifest,
)
from lesionuq.outputs import add_written, check_output_dir, output_dir
from lesionuq.samples import SOURCE_FILE
from lesionuq.utils import track

__all__ = ["READERS", "NnunetCase", "find_nnunet_cases", "nnunet_probability", "stacks_from_nnunet"]

#: nnU-Net image readers whose arrays are the NIfTI's axes reversed.
_PLAIN = ("SimpleITKIO", "NibabelIO")
#: Readers that reorient to RAS first (undone here as their ``write_seg`` does).
_REORIENT = ("NibabelIOWithReorient",)
READERS = _PLAIN + _REORIENT
#: Largest fraction of voxels where the stack's argmax may differ from the segmentation
#: (ties between classes); an axis-order mistake disagrees almost everywhere.
MISMATCH_TOL = 1e-3


@dataclass(frozen=True)
class NnunetCase:
    """One case's nnU-Net outputs: its id and, per fold folder holding it, (npz, seg)."""

    case_id: str
    files: tuple[tuple[Path, Path], ...]


def _fold_settings(folder: Path) -> tuple[str, str, bool]:
    """(file ending, image reader, region-based) of a ``nnUNetv2_predict`` output folder."""
    ending, reader, regions = ".nii.gz", "SimpleITKIO", False
    ds = folder / "dataset.json"
    if ds.is_file():
        try:
            data = json.loads(ds.read_text())
            ending = str(data.get("file_ending", ending))
            reader = str(data.get("overwrite_image_reader_writer", "")) or reader
            regions = "regions_class_order" in data
        except (ValueError, AttributeError):
            raise InputError(f"{ds}: not a valid nnU-Net dataset.json.") from None
    plans = folder / "plans.json"
    if plans.is_file() and not (ds.is_file() and "overwrite_image_reader_writer" in ds.read_text()):
        try:
            reader = str(json.loads(plans.read_text()).get("image_reader_writer", reader))
        except (ValueError, AttributeError):
            raise InputError(f"{plans}: not a valid nnU-Net plans.json.") from None
    if reader not in READERS:
        raise InputError(
            f"{folder}: nnU-Net's image reader {reader} is not supported (supported: "
            f"{', '.join(READERS)})."
        )
    if ending not in (".nii.gz", ".nii"):
        raise InputError(f"{folder}: nnU-Net wrote {ending} files; lesionuq reads NIfTI only.")
    return ending, reader, regions


def find_nnunet_cases(fold_dirs: Sequence[str | Path]) -> list[NnunetCase]:
    """The cases of K ``nnUNetv2_predict --save_probabilities`` output folders.

    Raises:
        InputError: A missing folder, one without ``.npz`` files, or an ``.npz`` without
            its segmentation file.
    """
    found: dict[str, list[tuple[Path, Path]]] = {}
    for folder in map(Path, fold_dirs):
        if not folder.is_dir():
            raise InputError(f"{folder}: folder not found.")
        ending = _fold_settings(folder)[0]
        npz = sorted(folder.glob("*.npz"))
        if not npz:
            raise InputError(
                f"{folder}: no .npz probability files (run nnUNetv2_predict with "
                "--save_probabilities)."
            )
        for p in npz:
            seg = folder / f"{p.name[: -len('.npz')]}{ending}"
            if not seg.is_file():
                raise InputError(f"{p}: its segmentation {seg.name} is missing.")
            found.setdefault(p.name[: -len(".npz")], []).append((p, seg))
    return [NnunetCase(c, tuple(f)) for c, f in sorted(found.items())]


def nnunet_probability(
    npz: Path, seg: Path, label: int = 1, reader: str = "SimpleITKIO", regions: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """One fold's foreground probability of a case, on its segmentation's grid.

    Args:
        npz: nnU-Net's ``CASE.npz`` (``probabilities``, (C, ...) in the reader's order).
        seg: Its segmentation file (the geometry).
        label: The class (channel) taken as foreground; for a region-based model the
            region index.
        reader: nnU-Net's ``image_reader_writer`` (one of :data:`READERS`).
        regions: A region-based model (no argmax check).

    Returns:
        (X, Y, Z) float32 probability in the axis order of ``seg`` as nibabel reads it,
        and that file's (4, 4) affine.

    Raises:
        InputError: Unreadable file, no ``probabilities`` array, a label out of range, a
            shape that does not match the segmentation, or an argmax that does not give it.
    """
    img = load_nifti(seg)
    try:
        with np.load(npz, allow_pickle=False) as z:
            probs = np.asarray(z["probabilities"], dtype=np.float32)
    except KeyError:
        raise InputError(f"{npz}: holds no 'probabilities' array.") from None
    except Exception as exc:  # corrupt zip, pickled object
        raise InputError(f"{npz}: cannot be read ({exc.__class__.__name__}).") from None
    if probs.ndim != 4:
        raise InputError(f"{npz}: expected (C, z, y, x) probabilities, got {probs.shape}.")
    if not 0 <= label < probs.shape[0] or (label == 0 and not regions):
        raise InputError(
            f"{npz}: label {label} is not a foreground class (classes 0-{probs.shape[0] - 1})."
        )
    probs = np.transpose(probs, (0, 3, 2, 1))  # (C, x, y, z) of the reader's array
    if reader in _REORIENT:
        ornt = nib.orientations.ornt_transform(
            nib.orientations.axcodes2ornt("RAS"), nib.orientations.io_orientation(img.affine)
        )
        probs = np.stack([nib.orientations.apply_orientation(p, ornt) for p in probs])
    shape = tuple(int(v) for v in img.shape[:3])
    if probs.shape[1:] != shape:
        raise InputError(
            f"{npz}: probabilities of shape {probs.shape[1:]} (after nnU-Net's axis order) do "
            f"not match {seg.name} of shape {shape}."
        )
    if not regions:
        labels = np.asarray(img.dataobj).reshape(shape)
        wrong = float(np.mean(np.argmax(probs, axis=0) != labels))
        if wrong > MISMATCH_TOL:
            raise InputError(
                f"{npz}: the argmax of its probabilities differs from {seg.name} in "
                f"{100 * wrong:.1f} % of the voxels (not this segmentation's probabilities?)."
            )
    return np.ascontiguousarray(probs[label]), np.asarray(img.affine, dtype=np.float64)


def stacks_from_nnunet(
    fold_dirs: Sequence[str | Path],
    out: str | Path,
    label: int = 1,
    overwrite: bool = False,
    progress: bool = True,
    cases: str | Path | None = None,
    sequences: Sequence[str] = ("flair",),
) -> Path:
    """Write one 4-D sample stack per case from K nnU-Net fold folders, and a manifest.

    Args:
        fold_dirs: K ``nnUNetv2_predict -f k --save_probabilities`` output folders.
        out: Output folder: ``CASE.nii.gz`` (X, Y, Z, T) float32 per case, on the
            segmentation's grid, T = the folds holding the case (in ``fold_dirs`` order);
            ``samples.csv`` (``case_id``, ``samples`` relative to it, ``n_samples``) to
            join to ``cases.csv``; and ``lesionuq_samples.json`` (the source, in words).
        label: The foreground class (multi-class models: that label's probability).
        overwrite: Replace an earlier set of stacks in ``out``.
        progress: Show a progress bar.
        cases: The user's ``cases.csv`` (``case_id``, ``sequences``, ``mask``): also write
            ``out/cases.csv``, the same cases with their ``samples`` (paths relative to
            it), ready for ``lesionuq experiment`` or ``predict --cases``. Every case must
            have nnU-Net outputs.
        sequences: The image columns of ``cases``.

    Returns:
        The path of ``samples.csv``, or of ``out/cases.csv`` when ``cases`` is given.

    Raises:
        InputError: A bad folder or file (see :func:`find_nnunet_cases`,
            :func:`nnunet_probability`), or fold folders whose segmentations of one case
            lie on different grids; checked before ``out`` is written.
    """
    dirs = [Path(d) for d in fold_dirs]
    if not dirs:
        raise InputError("give at least one nnU-Net output folder.")
    settings = {d.resolve(): _fold_settings(d) for d in dirs}
    found = find_nnunet_cases(dirs)
    manifest = _manifest_to_join(cases, sequences, found)
    check_output_dir(out, "samples", overwrite=overwrite, inputs=dirs)
    rows = []
    with output_dir(Path(out), "samples") as tmp:
        for case in track(found, "nnU-Net folds -> sample stacks", enabled=progress):
            maps, affine = [], None
            for npz, seg in case.files:
                _, reader, regions = settings[npz.parent.resolve()]
                p, aff = nnunet_probability(npz, seg, label, reader, regions)
                if affine is not None and (
                    p.shape != maps[0].shape or not np.allclose(aff, affine, atol=AFFINE_TOL)
                ):
                    raise InputError(
                        f"{seg}: not on the grid of {case.files[0][1]} (the same case must "
                        "have the same geometry in every fold)."
                    )
                maps.append(p)
                affine = aff if affine is None else affine
            stack = np.stack(maps, axis=-1).astype(np.float32)
            img = nib.Nifti1Image(stack, affine)
            img.header.set_xyzt_units("mm")
            nib.save(img, tmp / f"{case.case_id}.nii.gz")
            rows.append((case.case_id, f"{case.case_id}.nii.gz", len(maps)))
        table = pd.DataFrame(rows, columns=["case_id", "samples", "n_samples"])
        atomic_write_text(tmp / "samples.csv", csv_text(table))
        names = ", ".join(d.name for d in dirs)
        source = f"nnU-Net v2 ({len(dirs)} fold folders: {names}; label {label})"
        atomic_write_text(tmp / SOURCE_FILE, json.dumps({"source": source}) + "\n")
    if manifest is not None:
        stacks = Path(out).resolve()
        joined = [replace(c, samples=stacks / f"{c.case_id}.nii.gz") for c in manifest]
        write_manifest(Path(out) / "cases.csv", joined, sequences)
        add_written(out, ["cases.csv"])
    return Path(out) / ("cases.csv" if manifest is not None else "samples.csv")


def _manifest_to_join(
    cases: str | Path | None, sequences: Sequence[str], found: Sequence[NnunetCase]
) -> list[Case] | None:
    """The user's manifest, checked to have nnU-Net outputs for every case (or None)."""
    if cases is None:
        return None
    manifest = read_manifest(cases, sequences, require_mask=False)
    have = {c.case_id for c in found}
    missing = [c.case_id for c in manifest if c.case_id not in have]
    if missing:
        raise InputError(
            f"{cases}: case {missing[0]!r} (and {len(missing) - 1} more) has no nnU-Net output "
            "in the fold folders given."
        )
    return manifest
