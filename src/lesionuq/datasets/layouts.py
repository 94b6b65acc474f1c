"""Folder layouts of the public MS lesion data sets, as distributed, to ``cases.csv``.

One function per layout takes the download folder and returns the cases
(:class:`lesionuq.io.Case`, absolute paths); :func:`build_manifest` writes them as
``cases.csv`` with paths relative to the CSV. A folder that does not match its layout
(no case found, a case with a missing sequence or mask) raises one
:class:`~lesionuq.io.InputError` sentence naming the first offending folder.

Sequence names are the manifest's column names (``flair``, ``t1``, ``t2``, ``pd``,
``gado``); each layout maps them to its own file names and rejects the ones it lacks.
A data set either has a ground-truth mask for every case or for none (prediction
only: the ``mask`` column is left empty); a partial set is an error.

Masks lesionuq computes from a data set's files (WMH 2017's label 1 and label-2 ignore
region, ISBI 2015's union or intersection of the two raters) go to a *derived folder*
next to the manifest, ``<layout>_derived/``. It follows the output-folder rule of
:mod:`lesionuq.outputs` (new, empty, or written by lesionuq; never inside the data set):
every case is read and checked in a temporary folder first and the files are moved into
place only when all cases passed, so a refused case leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lesionuq.io import (
    AFFINE_TOL,
    Case,
    InputError,
    atomic_write_text,
    check_mask,
    load_nifti,
    save_nifti,
    write_manifest,
)
from lesionuq.outputs import check_output_dir, output_dir

__all__ = [
    "LAYOUTS",
    "bids",
    "build_manifest",
    "isbi2015",
    "mslub",
    "msseg2016",
    "shifts",
    "wmh2017",
]

_EXTENSIONS = (".nii.gz", ".nii")


def _find(folder: Path, stem: str) -> Path | None:
    """``folder/stem.nii.gz`` or ``folder/stem.nii``, whichever exists."""
    for ext in _EXTENSIONS:
        path = folder / f"{stem}{ext}"
        if path.is_file():
            return path
    return None


def _check_root(root: str | Path) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: folder not found.")
    return root.resolve()


def _sequence_files(layout: str, names: dict[str, str], sequences: Sequence[str]) -> list[str]:
    """File stems of the requested sequences, or an error naming the unknown one."""
    stems = []
    for seq in sequences:
        if seq not in names:
            raise InputError(
                f"layout {layout} has no sequence {seq!r} (choose from {', '.join(names)})."
            )
        stems.append(names[seq])
    return stems


def _single_rater(layout: str, rater: str | None) -> None:
    if rater is not None and str(rater) != "consensus":
        raise InputError(
            f"layout {layout} has one reference segmentation per case; use --rater consensus."
        )


@dataclass(frozen=True)
class _Entry:
    """A case as found in a layout's folders, before its files are checked.

    Attributes:
        case_id: The manifest's case id.
        folder: The case's folder, named in errors.
        images: (folder, stem) of each sequence.
        mask: (folder, stem) of the mask, or None for a layout without masks.
        grid_hint: When set, every image must be on the mask's voxel grid (the FLAIR's
            without a mask), checked from the headers; the hint ends the refusal.
        extra: Further manifest columns.
    """

    case_id: str
    folder: Path
    images: list[tuple[Path, str]]
    mask: tuple[Path, str] | None
    grid_hint: str | None = None
    extra: tuple[tuple[str, str], ...] = ()


def _check_grid(case: Case, hint: str) -> None:
    """Refuse an image that is not on the voxel grid of the case's mask (or first image)."""
    ref = case.mask if case.mask is not None else case.images[0]
    ref_img = load_nifti(ref, read_data=False)
    for path in case.images:
        if path == ref:
            continue
        img = load_nifti(path, read_data=False)
        same_shape = tuple(img.shape[:3]) == tuple(ref_img.shape[:3])
        if not same_shape or not np.allclose(img.affine, ref_img.affine, atol=AFFINE_TOL):
            raise InputError(
                f"{path}: is on another voxel grid (shape {tuple(img.shape[:3])}) than "
                f"{ref.name} (shape {tuple(ref_img.shape[:3])}), and lesionuq does not "
                f"resample data sets; {hint}."
            )


def _collect(layout: str, root: Path, entries: Sequence[_Entry], expected: str) -> list[Case]:
    """Check a layout's cases and turn them into :class:`Case` objects.

    Args:
        layout: Layout name, for the messages.
        root: The data set folder.
        entries: The cases found, in manifest order.
        expected: The layout's pattern, shown when no case is found.

    Returns:
        The cases in the order given; masks all present or all None.
    """
    if not entries:
        raise InputError(f"{root}: no {layout} case found (expected {expected}).")
    cases = []
    seen: dict[str, Path] = {}
    for entry in entries:
        if entry.case_id in seen:
            raise InputError(
                f"{entry.folder}: case id {entry.case_id!r} is also used by {seen[entry.case_id]}."
            )
        seen[entry.case_id] = entry.folder
        images = []
        for where, stem in entry.images:
            path = _find(where, stem)
            if path is None:
                raise InputError(f"{entry.folder}: missing {stem}.nii[.gz] in {where}.")
            images.append(path)
        mask = _find(*entry.mask) if entry.mask is not None else None
        cases.append(Case(entry.case_id, tuple(images), mask, extra=entry.extra))
    with_mask = [c.mask is not None for c in cases]
    if any(with_mask) and not all(with_mask):
        bad = entries[with_mask.index(False)]
        where, stem = bad.mask if bad.mask is not None else (bad.folder, "mask")
        raise InputError(f"{bad.folder}: missing mask {stem}.nii[.gz] in {where}.")
    for entry, case in zip(entries, cases, strict=True):
        if entry.grid_hint is not None:
            _check_grid(case, entry.grid_hint)
    return cases


def _numbered(parent: Path, pattern: str) -> list[Path]:
    """Sub-folders of ``parent`` whose name matches ``pattern``, sorted by name."""
    if not parent.is_dir():
        return []
    regex = re.compile(pattern)
    return sorted(p for p in parent.iterdir() if p.is_dir() and regex.fullmatch(p.name))


def _subfolders(parent: Path) -> list[Path]:
    """Visible sub-folders of ``parent``, sorted by name."""
    return _numbered(parent, r"[^.].*")


def _glob_depth(root: Path, pattern: str, max_depth: int) -> list[Path]:
    """Paths matching ``pattern`` in ``root`` or up to ``max_depth`` folders below it."""
    found: set[Path] = set()
    for depth in range(max_depth + 1):
        found.update(root.glob("/".join(["*"] * depth + [pattern])))
    return sorted(found)


# ------------------------------------------------------------------ derived masks

#: A derived mask to write: (file name, data (X, Y, Z), affine (4, 4)).
_Derived = tuple[str, np.ndarray, np.ndarray]


def _derived_key(layout: str, root: Path, rater: str) -> str:
    text = json.dumps([layout, str(root), rater])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _check_derived(layout: str, root: Path, derived_dir: Path, rater: str, overwrite: bool) -> str:
    """Check, before anything is read, that ``derived_dir`` may receive derived masks.

    Returns:
        The settings key of the derived folder (the same layout, root and rater rewrite
        it without ``overwrite``; other settings need it).
    """
    target = derived_dir.resolve()
    if target == root or root in target.parents:
        raise InputError(
            f"{derived_dir}: lies inside the data set folder {root}, which lesionuq never "
            "writes into; write the manifest (--out) outside the data set."
        )
    key = _derived_key(layout, root, rater)
    check_output_dir(derived_dir, "derived", overwrite=overwrite, inputs=[root], key=key)
    return key


def _write_derived(
    derived_dir: Path,
    key: str,
    jobs: Sequence[Callable[[], list[_Derived]]],
    readme: str,
) -> set[str]:
    """Run every job (each reads and checks one case), then publish all files at once.

    Files are written into a temporary folder inside ``derived_dir`` and moved into place
    only after the last job succeeded (:func:`lesionuq.outputs.output_dir`); a refused
    case leaves ``derived_dir`` as it was (and removes it when this call created it).

    Returns:
        The names of the files written.
    """
    written: set[str] = set()
    missing = [p for p in derived_dir.absolute().parents if not p.exists()]
    try:
        with output_dir(derived_dir, "derived", key) as tmp:
            for job in jobs:
                for name, data, affine in job():
                    save_nifti(tmp / name, data, affine, dtype=np.uint8)
                    written.add(name)
            atomic_write_text(tmp / "README.txt", readme)
    except BaseException:
        for parent in missing:  # innermost first: folders this call created, if empty
            with suppress(OSError):
                parent.rmdir()
        raise
    return written


def _labels(path: Path, allowed: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """A label map's data (X, Y, Z) and affine, refused unless its values are ``allowed``."""
    img = load_nifti(path)
    data = np.asarray(img.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(f"{path}: expected a 3-D label map, got shape {data.shape}.")
    values = np.unique(data)
    bad = [v for v in values if v not in allowed]
    if bad:
        shown = ", ".join(f"{v:g}" for v in bad[:5])
        want = ", ".join(str(a) for a in allowed)
        raise InputError(f"{path}: labels must be {want}; found {shown}.")
    return np.rint(data).astype(np.int16), np.asarray(img.affine)


# ---------------------------------------------------------------------- msseg2016

_MSSEG_PRE = {"flair": "FLAIR", "t1": "T1", "t2": "T2", "pd": "DP", "gado": "GADO"}
_MSSEG_RAW = {"flair": "3DFLAIR", "t1": "3DT1", "t2": "T2", "pd": "DP", "gado": "3DT1GADO"}


def _msseg_id(root: Path, patient: Path) -> str:
    """The case id of an MSSEG-2016 patient folder, e.g. ``Training_Center_01_Patient_01``.

    The folder names below ``root`` are joined from the ``Training``/``Testing`` level
    when present, so that the folder a zip was unpacked into does not enter the id.
    """
    parts = list(patient.relative_to(root).parts) or [patient.name]
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] in ("Training", "Testing"):
            return "_".join(parts[i:])
    return "_".join(parts)


def msseg2016(
    root: str | Path, sequences: Sequence[str] = ("flair",), rater: str | None = None
) -> list[Case]:
    """MICCAI 2016 MSSEG challenge (the paper's data set), in its three distributions.

    - Shanoir: ``{Training,Testing}/Center_XX/Patient_YY/Preprocessed_Data/
      {FLAIR,T1,T2,DP,GADO}_preprocessed.nii.gz``, masks in ``Patient_YY/Masks/``.
    - The same tree with only ``Patient_YY/Raw_Data/{3DFLAIR,3DT1,T2,DP,3DT1GADO}.nii.gz``.
    - The original challenge archives: one folder per patient code holding
      ``3DFLAIR.nii.gz``, ``3DT1.nii.gz``, ``DP.nii.gz``, ``T2.nii.gz``,
      ``3DT1GADO.nii.gz``, ``Consensus.nii.gz`` and ``ManualSegmentation_N.nii.gz`` side
      by side.

    Patient folders are found up to four levels below ``root``, so ``root`` may be the
    download folder, the folder each zip was unpacked into (``MSSEG-Training/Training/
    ...``) or one of ``Training``/``Testing``. ``Preprocessed_Data`` is used when present.
    Raw images are used only where they lie on the voxel grid of the consensus
    (checked from the headers); lesionuq never resamples a data set, so a raw sequence
    on its own grid is refused with one sentence pointing to ``Preprocessed_Data``.
    Sources: the challenge's data description (Commowick et al., Sci. Rep. 2018) and
    loaders such as sergivalverde/cnn-ms-lesion-segmentation (``FLAIR_preprocessed``,
    ``DP_preprocessed``, ``Consensus``).

    Args:
        root: Download folder.
        sequences: Manifest columns among ``flair, t1, t2, pd, gado``.
        rater: ``"consensus"`` (default) or a rater number 1..7 (``ManualSegmentation_N``).

    Returns:
        One case per patient, id ``{Training|Testing}_Center_XX_Patient_YY`` (the patient
        code for the original archives).
    """
    root = _check_root(root)
    pre_stems = [f"{s}_preprocessed" for s in _sequence_files("msseg2016", _MSSEG_PRE, sequences)]
    raw_stems = _sequence_files("msseg2016", _MSSEG_RAW, sequences)
    rater = "consensus" if rater is None else str(rater)
    if rater == "consensus":
        mask_stem = "Consensus"
    elif rater.isdigit() and 1 <= int(rater) <= 7:
        mask_stem = f"ManualSegmentation_{int(rater)}"
    else:
        raise InputError(f"msseg2016 rater must be consensus or 1..7, got {rater!r}.")
    patients = {p.parent.parent for p in _glob_depth(root, "Preprocessed_Data/FLAIR_pre*", 4)}
    patients |= {p.parent.parent for p in _glob_depth(root, "Raw_Data/3DFLAIR.nii*", 4)}
    patients |= {
        p.parent for p in _glob_depth(root, "3DFLAIR.nii*", 4) if p.parent.name != "Raw_Data"
    }
    hint = "use the Preprocessed_Data files, which are on the consensus grid"
    entries = []
    for patient in sorted(patients):
        masks = patient / "Masks" if (patient / "Masks").is_dir() else patient
        pre, raw = patient / "Preprocessed_Data", patient / "Raw_Data"
        if _find(pre, "FLAIR_preprocessed") is not None:
            seqs, grid = [(pre, s) for s in pre_stems], None
        else:
            where = raw if _find(raw, "3DFLAIR") is not None else patient
            seqs, grid = [(where, s) for s in raw_stems], hint
        cid = _msseg_id(root, patient)
        entries.append(_Entry(cid, patient, seqs, (masks, mask_stem), grid))
    return _collect(
        "msseg2016",
        root,
        entries,
        "Training|Testing/Center_XX/Patient_YY/Preprocessed_Data/FLAIR_preprocessed.nii.gz, "
        "Raw_Data/3DFLAIR.nii.gz or <patient>/3DFLAIR.nii.gz",
    )


# -------------------------------------------------------------------------- mslub


def _mslub_bases(root: Path) -> list[Path]:
    """The folders holding MSLUB's ``patientXX`` folders.

    ``root``, its ``coregistered`` (preferred) or ``raw`` mirror folder, or, when neither
    holds a patient, the sub-folders that do (the original zips unpacked into folders).
    """

    def bases(folder: Path) -> list[Path]:
        for mirror in ("coregistered", "raw"):
            if _numbered(folder / mirror, r"patient\d+"):
                return [folder / mirror]
        return [folder] if _numbered(folder, r"patient\d+") else []

    return bases(root) or [b for sub in _subfolders(root) for b in bases(sub)]


def mslub(
    root: str | Path, sequences: Sequence[str] = ("flair",), rater: str | None = None
) -> list[Case]:
    """MSLUB, the Ljubljana 3D MR data set of 30 MS patients (Lesjak et al. 2017).

    Two layouts are read: the distributed one,
    ``patientXX/patientXX_{FLAIR,T1W,T2W,T1WKS,consensus_gt}.nii.gz``, and the common
    mirror ``{raw,coregistered}/patientXX/{FLAIR,T1W,T2W,T1WKS,consensus_gt}.nii.gz``
    (muschellij2/open_ms_data ``cross_sectional/``; its README lists exactly these
    files). For the mirror ``root`` may be the folder holding ``raw``/``coregistered``
    (``coregistered`` is used when present: the sequences share the FLAIR grid there)
    or one of them. When ``root`` holds no patient folder, its sub-folders are searched
    (the original zips unpacked each into its own folder). In ``raw`` only FLAIR shares
    the grid of ``consensus_gt``: other raw sequences are refused (lesionuq does not
    register images), and any image off the consensus grid is refused from its header.

    Args:
        root: Download folder.
        sequences: Manifest columns among ``flair, t1, t2, gado`` (``gado`` = T1WKS).
        rater: Only ``"consensus"`` (the consensus ground truth; the default).

    Returns:
        One case per patient, id ``patientXX``.
    """
    root = _check_root(root)
    _single_rater("mslub", rater)
    names = {"flair": "FLAIR", "t1": "T1W", "t2": "T2W", "gado": "T1WKS"}
    stems = _sequence_files("mslub", names, sequences)
    hint = "use the co-registered images (the coregistered folder) or --sequences flair"
    entries = []
    for base in _mslub_bases(root):
        other = [s for s in sequences if s != "flair"]
        if base.name == "raw" and other:
            raise InputError(
                f"{base}: MSLUB raw {', '.join(other)} images are in their own space while "
                f"consensus_gt is on the FLAIR grid; {hint}."
            )
        for patient in _numbered(base, r"patient\d+"):
            prefixed = _find(patient, f"{patient.name}_FLAIR") is not None
            pre = f"{patient.name}_" if prefixed else ""
            seqs = [(patient, pre + s) for s in stems]
            mask = (patient, pre + "consensus_gt")
            entries.append(_Entry(patient.name, patient, seqs, mask, hint))
    return _collect(
        "mslub",
        root,
        entries,
        "patientXX/patientXX_FLAIR.nii.gz or raw|coregistered/patientXX/FLAIR.nii.gz",
    )


# ----------------------------------------------------------------------- isbi2015

_TIMEPOINT = re.compile(r"[a-z]+\d+_(\d+)_flair_pp\.nii(\.gz)?")
_ISBI_RATERS = ("1", "2", "union", "intersection")


def isbi2015(
    root: str | Path,
    sequences: Sequence[str] = ("flair",),
    rater: str | None = None,
    derived_dir: str | Path | None = None,
    overwrite: bool = False,
) -> list[Case]:
    """ISBI 2015 longitudinal MS lesion challenge (Carass et al., NeuroImage 2017).

    Layout: ``trainingNN/preprocessed/trainingNN_TT_{flair,mprage,pd,t2}_pp.nii`` with
    ``trainingNN/masks/trainingNN_TT_mask{1,2}.nii``; one case per time point. The test
    set (``testdata_website/testNN/preprocessed/testNN_TT_flair_pp.nii``) has no masks
    and gives a manifest for ``predict --cases``. ``root`` is the folder holding the
    subject folders or the one above it (``training`` or ``testdata_website`` unpacked
    into a folder). Source: the challenge's data description
    (smart-stats-tools.org/lesion-challenge-2015) and loaders such as uoguelph-mlrg/vlr
    (``training01_01_mask1.nii``). The challenge has two raters and no consensus, so a
    rater must be chosen: ``1``, ``2``, or the ``union`` or ``intersection`` of the two,
    written as derived masks to ``derived_dir/<case_id>_mask-<rater>.nii.gz``.

    Args:
        root: The folder holding ``trainingNN`` (e.g. the unpacked ``training``).
        sequences: Manifest columns among ``flair, t1, pd, t2`` (``t1`` = MPRAGE).
        rater: ``"1"``, ``"2"``, ``"union"`` or ``"intersection"``; required when the
            subjects have masks.
        derived_dir: Where union/intersection masks go (default
            ``root/../isbi2015_derived``).
        overwrite: Replace an earlier derived folder made with other settings.

    Returns:
        One case per time point, id ``trainingNN_TT`` (``testNN_TT``).
    """
    root = _check_root(root)
    names = {"flair": "flair", "t1": "mprage", "pd": "pd", "t2": "t2"}
    stems = _sequence_files("isbi2015", names, sequences)
    pattern = r"(training|test)\d+"
    subjects = _numbered(root, pattern) or [
        s for sub in _subfolders(root) for s in _numbered(sub, pattern)
    ]
    with_masks = any((s / "masks").is_dir() for s in subjects)
    if with_masks and rater is None:
        raise InputError(
            "isbi2015 has two raters and no consensus: choose --rater 1, 2, union or intersection."
        )
    rater = str(rater) if rater is not None else "1"
    if rater not in _ISBI_RATERS:
        raise InputError(
            f"isbi2015 has raters 1 and 2 (no consensus), or their union or intersection; "
            f"got --rater {rater}."
        )
    combined = rater in ("union", "intersection")
    derived = Path(derived_dir) if derived_dir is not None else root.parent / "isbi2015_derived"
    key = _check_derived("isbi2015", root, derived, rater, overwrite) if combined else ""
    entries = []
    for subject in subjects:
        pre = subject / "preprocessed"
        points = sorted(
            {m.group(1) for p in pre.glob("*_flair_pp.nii*") if (m := _TIMEPOINT.match(p.name))}
        )
        if not points:
            raise InputError(f"{subject}: no preprocessed/{subject.name}_TT_flair_pp.nii found.")
        for tt in points:
            cid = f"{subject.name}_{tt}"
            seqs = [(pre, f"{cid}_{s}_pp") for s in stems]
            first = "1" if combined else rater
            mask = (subject / "masks", f"{cid}_mask{first}") if with_masks else None
            entries.append(_Entry(cid, subject, seqs, mask))
    cases = _collect(
        "isbi2015", root, entries, "trainingNN/preprocessed/trainingNN_TT_flair_pp.nii"
    )
    if not combined or cases[0].mask is None:
        return cases

    def job(case: Case) -> Callable[[], list[_Derived]]:
        def run() -> list[_Derived]:
            assert case.mask is not None
            second = case.mask.with_name(case.mask.name.replace("_mask1.", "_mask2."))
            if not second.is_file():
                raise InputError(f"{second}: file not found (the {rater} needs both raters).")
            first_img, second_img = load_nifti(case.mask), load_nifti(second)
            a, b = check_mask(first_img, case.mask), check_mask(second_img, second)
            if a.shape != b.shape or not np.allclose(
                first_img.affine, second_img.affine, atol=AFFINE_TOL
            ):
                raise InputError(f"{second}: is not on the grid of {case.mask.name}.")
            both = (a | b) if rater == "union" else (a & b)
            return [(f"{case.case_id}_mask-{rater}.nii.gz", both, first_img.affine)]

        return run

    readme = (
        f"ISBI 2015 masks derived by lesionuq from {root}: the {rater} of the two raters'\n"
        f"masks (mask1, mask2), one file per case: <case_id>_mask-{rater}.nii.gz.\n"
    )
    _write_derived(derived, key, [job(c) for c in cases], readme)
    return [Case(c.case_id, c.images, derived / f"{c.case_id}_mask-{rater}.nii.gz") for c in cases]


# ------------------------------------------------------------------------- shifts


def shifts(
    root: str | Path,
    sequences: Sequence[str] = ("flair",),
    rater: str | None = None,
    split: str | Sequence[str] | None = None,
) -> list[Case]:
    """Shifts 2.0 MS lesion segmentation track (Malinin et al. 2022), as on Zenodo.

    Layout: ``shifts_ms_pt1/msseg/{train,dev_in,eval_in}``, ``shifts_ms_pt2/best/
    {train,dev_in,eval_in}`` and ``shifts_ms_pt2/ljubljana/dev_out``, each split folder
    holding ``{flair,t1,t2,pd,gt,fg_mask}/<id>_{FLAIR,T1,T2,PD,gt}_isovox.nii.gz``.
    ``root`` may be the folder holding the ``shifts_ms_pt*`` folders, one of them, a
    cohort folder or a split folder: split folders are those with a ``flair`` folder, up
    to three levels below ``root``. Each cohort numbers its own subjects, so case ids
    carry the cohort. Source: the challenge's baseline loader (Shifts-Project/shifts
    ``mswml/data_load.py``: ``*FLAIR_isovox.nii.gz`` matched with ``*gt_isovox.nii.gz``)
    and training configs that list ``data/shifts_ms_pt1/msseg/train/flair`` and
    ``data/shifts_ms_pt2/best/train/flair``.

    Args:
        root: Download folder.
        sequences: Manifest columns among ``flair, t1, t2, pd``.
        rater: Only ``"consensus"`` (the ``gt`` consensus; the default).
        split: Keep only these split folders (``train``, ``dev_in``, ``eval_in``,
            ``dev_out``; a comma-separated string or a list); None keeps all.

    Returns:
        One case per scan, id ``<cohort>_<split>_<id>`` (e.g. ``msseg_train_25``).
    """
    root = _check_root(root)
    _single_rater("shifts", rater)
    names = {"flair": "FLAIR", "t1": "T1", "t2": "T2", "pd": "PD"}
    stems = _sequence_files("shifts", names, sequences)
    folders = [p.parent for p in _glob_depth(root, "flair", 3) if p.is_dir()]
    if split is not None:
        wanted = [s.strip() for s in ([split] if isinstance(split, str) else split)]
        wanted = [w for s in wanted for w in s.split(",") if w.strip()]
        present = sorted({f.name for f in folders})
        unknown = [w for w in wanted if w not in present]
        if unknown:
            raise InputError(
                f"{root}: no shifts split {unknown[0]!r} (found {', '.join(present) or 'none'})."
            )
        folders = [f for f in folders if f.name in wanted]
    entries = []
    for folder in sorted(folders):
        ids = sorted(
            (
                p.name.split("_FLAIR_isovox")[0]
                for p in (folder / "flair").glob("*_FLAIR_isovox.nii*")
            ),
            key=lambda s: (len(s), s),
        )
        prefix = f"{folder.parent.name}_{folder.name}"
        for sid in ids:
            seqs = [(folder / s.lower(), f"{sid}_{s}_isovox") for s in stems]
            mask = (folder / "gt", f"{sid}_gt_isovox")
            entries.append(_Entry(f"{prefix}_{sid}", folder, seqs, mask))
    return _collect("shifts", root, entries, "<cohort>/<split>/flair/<id>_FLAIR_isovox.nii.gz")


# ------------------------------------------------------------------------ wmh2017

_WMH_RATERS = ("o12", "o3", "o4")


def _clean_id(parts: Sequence[str]) -> str:
    """A case id from folder names, e.g. ``Philips_VU .PETMR_01.`` -> ``Philips_VU_PETMR_01``.

    Runs of characters other than letters, digits and ``-`` become one ``_``.
    """
    cleaned = (re.sub(r"[^A-Za-z0-9-]+", "_", p).strip("_") for p in parts)
    return "_".join(c for c in cleaned if c)


def _annotations(root: Path, observer: str) -> Path:
    """The folder holding ``additional_annotations/observer_<observer>`` (root or above)."""
    for owner in (root, *list(root.parents)[:2]):
        if (owner / "additional_annotations" / f"observer_{observer}").is_dir():
            return owner
    raise InputError(
        f"{root}: no additional_annotations/observer_{observer} folder here or above it "
        "(the extra WMH observers come with the training set)."
    )


def wmh2017(
    root: str | Path,
    sequences: Sequence[str] = ("flair",),
    rater: str | None = None,
    derived_dir: str | Path | None = None,
    overwrite: bool = False,
) -> list[Case]:
    """MICCAI 2017 WMH segmentation challenge (Kuijf et al., IEEE TMI 2019).

    Layout: ``{training,test}/<site>[/<scanner>]/<id>/pre/{FLAIR,T1}.nii.gz`` with the
    reference ``<id>/wmh.nii.gz`` (observer O1's delineation reviewed by observer O2, not
    a consensus): label 1 is white matter hyperintensity, label 2 "other pathology",
    which the challenge's ``evaluation.py`` leaves out of every metric. The default rater
    ``o12`` takes label 1 as the mask and label 2 as the case's *ignore region* (manifest
    column ``ignore``), both written to ``derived_dir``; ``o3`` and ``o4`` take the extra
    observers' ``additional_annotations/observer_o3|o4/<split>/<site>/.../result.nii.gz``
    as the mask (training only), with the same ignore region. Case ids are cleaned
    (``Amsterdam/Philips_VU .PETMR_01./161`` -> ``Amsterdam_Philips_VU_PETMR_01_161``);
    the folder path is kept in the ``source_id`` column. Source: the challenge's data
    description (wmh.isi.uu.nl, DataverseNL doi:10.34894/AECRSD) and its evaluation code
    (hjkuijf/wmhchallenge ``evaluation.py``).

    Args:
        root: Download folder (``training`` or ``test``, or the folder holding them).
        sequences: Manifest columns among ``flair, t1``.
        rater: ``"o12"`` (default, ``wmh.nii.gz``), ``"o3"`` or ``"o4"``.
        derived_dir: Where the derived masks go (default ``root/../wmh2017_derived``).
        overwrite: Replace an earlier derived folder made with other settings.

    Returns:
        One case per subject, id ``[<split>_]<site>[_<scanner>]_<id>``.
    """
    root = _check_root(root)
    if rater == "consensus":
        raise InputError(
            "wmh2017 has no consensus: wmh.nii.gz is observer O1's delineation reviewed by "
            "O2 (--rater o12, the default); o3 and o4 are two more observers."
        )
    rater = "o12" if rater is None else str(rater)
    if rater not in _WMH_RATERS:
        raise InputError(
            f"wmh2017 raters are o12 (wmh.nii.gz, the default), o3 and o4; got --rater {rater}."
        )
    names = {"flair": "FLAIR", "t1": "T1"}
    stems = _sequence_files("wmh2017", names, sequences)
    subjects = sorted(p.parent.parent for p in root.rglob("pre/FLAIR.nii*"))
    owner = _annotations(root, rater) if rater != "o12" else root
    entries = []
    for subject in subjects:
        rel = subject.relative_to(root)
        if rater == "o12":
            spec = (subject, "wmh")
        else:
            ann = owner / "additional_annotations" / f"observer_{rater}"
            spec = (ann / subject.relative_to(owner), "result")
        seqs = [(subject / "pre", s) for s in stems]
        extra = (("source_id", rel.as_posix()),)
        entries.append(_Entry(_clean_id(rel.parts), subject, seqs, spec, extra=extra))
    cases = _collect("wmh2017", root, entries, "<site>/<id>/pre/FLAIR.nii.gz and wmh.nii.gz")
    references = {c.case_id: _find(s, "wmh") for c, s in zip(cases, subjects, strict=True)}
    if cases[0].mask is None or not all(references.values()):
        return cases
    derived = Path(derived_dir) if derived_dir is not None else root.parent / "wmh2017_derived"
    key = _check_derived("wmh2017", root, derived, rater, overwrite)

    def job(case: Case) -> Callable[[], list[_Derived]]:
        def run() -> list[_Derived]:
            reference = references[case.case_id]
            assert reference is not None
            labels, affine = _labels(reference, (0, 1, 2))
            out: list[_Derived] = []
            if rater == "o12":
                out.append((f"{case.case_id}_wmh_label1.nii.gz", labels == 1, affine))
            if np.any(labels == 2):
                out.append((f"{case.case_id}_wmh_label2_ignore.nii.gz", labels == 2, affine))
            return out

        return run

    readme = (
        f"WMH 2017 masks derived by lesionuq from {root} (rater {rater}):\n"
        "<case_id>_wmh_label1: label 1 of wmh.nii.gz (white matter hyperintensity) -> 1;\n"
        "<case_id>_wmh_label2_ignore: label 2 (other pathology, left out of the challenge's\n"
        "evaluation) -> 1, the case's ignore region (manifest column ignore): its voxels\n"
        "count neither as lesion nor as background in Dice, lesion matching and training.\n"
    )
    written = _write_derived(derived, key, [job(c) for c in cases], readme)
    result = []
    for case in cases:
        lesion = derived / f"{case.case_id}_wmh_label1.nii.gz"
        ignore = derived / f"{case.case_id}_wmh_label2_ignore.nii.gz"
        mask = lesion if rater == "o12" else case.mask
        keep = ignore if ignore.name in written else None
        result.append(Case(case.case_id, case.images, mask, keep, case.extra))
    return result


def _by_lesionuq(folder: Path) -> bool:
    """Whether the derivatives data set ``folder`` was generated by lesionuq."""
    try:
        desc = json.loads((folder / "dataset_description.json").read_text())
        return any(g.get("Name") == "lesionuq" for g in desc.get("GeneratedBy", []))
    except (OSError, ValueError, AttributeError):
        return False


_BIDS_SCAN = re.compile(r"sub-([a-zA-Z0-9]+)(?:_ses-([a-zA-Z0-9]+))?_")


def _by_scan(paths: Sequence[str]) -> dict[tuple[str, str | None], list[str]]:
    """Paths of a pybids query by (subject, session or None), each list sorted.

    The entities are read from the file name (BIDS names start ``sub-X[_ses-Y]_``): asking
    pybids for each file's entities costs a database query per file.
    """
    groups: dict[tuple[str, str | None], list[str]] = {}
    for path in paths:
        found = _BIDS_SCAN.match(Path(path).name)
        if found is not None:
            groups.setdefault((found.group(1), found.group(2)), []).append(path)
    return {k: sorted(v) for k, v in groups.items()}


def bids(
    root: str | Path, sequences: Sequence[str] = ("flair",), rater: str | None = None
) -> list[Case]:
    """A BIDS data set read with pybids (``pip install lesionuq[bids]``).

    Images: ``sub-*/[ses-*/]anat/*_{FLAIR,T1w,T2w,PDw}.nii[.gz]``. Ground truth: a lesion
    mask in a derivatives data set under ``root/derivatives/`` (``*_label-lesion_mask``
    per BIDS common derivatives, or the ``*_label-lesion_roi`` form fMRIPrep documents),
    else a ``*_label-lesion_roi`` beside the images. Source: BIDS specification 1.10,
    "Anatomy imaging data" and "Common derivatives: segmentations"; the fMRIPrep usage
    notes on lesion masks. With several runs/acquisitions of a sequence the first in
    sorted order is used. lesionuq's own predictions (``predict --bids-out``, a
    derivatives folder generated by lesionuq) are never taken as ground truth.

    Args:
        root: The BIDS data set (holds ``dataset_description.json``).
        sequences: Manifest columns among ``flair, t1, t2, pd``.
        rater: Only ``"consensus"`` (the default).

    Returns:
        One case per subject (and session), id ``sub-X[_ses-Y]``.
    """
    try:
        # lazy: pybids is the optional lesionuq[bids] extra, used only by this layout
        from bids import BIDSLayout, BIDSLayoutIndexer
    except ImportError:  # pragma: no cover - depends on the installed extras
        raise InputError("the bids layout needs pybids: pip install 'lesionuq[bids]'.") from None
    root = _check_root(root)
    _single_rater("bids", rater)
    if not (root / "dataset_description.json").is_file():
        raise InputError(f"{root}: not a BIDS data set (no dataset_description.json).")
    names = {"flair": "FLAIR", "t1": "T1w", "t2": "T2w", "pd": "PDw"}
    suffixes = _sequence_files("bids", names, sequences)

    def index(folder: Path, **kwargs: Any) -> BIDSLayout:
        # file names only: the JSON sidecars' metadata is not needed for a manifest
        indexer = BIDSLayoutIndexer(validate=False, index_metadata=False)
        return BIDSLayout(str(folder), validate=False, indexer=indexer, **kwargs)

    layout = index(root, derivatives=False)
    deriv_layouts = []
    deriv_root = root / "derivatives"
    if deriv_root.is_dir():
        for folder in sorted(p for p in deriv_root.iterdir() if p.is_dir()):
            if (folder / "dataset_description.json").is_file() and not _by_lesionuq(folder):
                deriv_layouts.append(index(folder, is_derivative=True))
    ext = [".nii.gz", ".nii"]
    # one query per suffix over the whole index, grouped by (subject, session): a query per
    # subject rescans the index each time, which made this quadratic in the subjects
    anat = {"datatype": "anat", "extension": ext, "return_type": "filename"}
    images_by = {sfx: _by_scan(layout.get(suffix=sfx, **anat)) for sfx in suffixes}
    flair = images_by.get("FLAIR") or _by_scan(layout.get(suffix="FLAIR", **anat))
    keys = sorted(flair, key=lambda k: (k[0], k[1] or ""))
    if not keys:
        raise InputError(
            f"{root}: no BIDS case found (expected sub-*/[ses-*/]anat/*_FLAIR.nii.gz)."
        )
    derived_masks: dict[tuple[str, str | None], list[str]] = {}
    for dl in deriv_layouts:
        for suffix in ("mask", "roi"):
            found = _by_scan(dl.get(suffix=suffix, label="lesion", **anat))
            for key, paths in found.items():
                derived_masks.setdefault(key, []).extend(paths)
    # "label" is not a raw-data entity for pybids: allow it as a filter
    raw_rois = _by_scan(layout.get(suffix="roi", label="lesion", invalid_filters="allow", **anat))
    cases, missing_mask = [], []
    for sub, ses in keys:
        folder = root / f"sub-{sub}" / (f"ses-{ses}" if ses else "") / "anat"
        images = []
        for suffix in suffixes:
            listed = images_by[suffix].get((sub, ses), [])
            if not listed:
                raise InputError(f"{folder}: missing *_{suffix}.nii[.gz].")
            images.append(Path(listed[0]))
        masks = derived_masks.get((sub, ses)) or raw_rois.get((sub, ses), [])
        cid = f"sub-{sub}" + (f"_ses-{ses}" if ses else "")
        mask = Path(sorted(masks)[0]) if masks else None
        if mask is None:
            missing_mask.append(folder)
        cases.append(Case(cid, tuple(images), mask))
    if missing_mask and len(missing_mask) < len(cases):
        raise InputError(
            f"{missing_mask[0]}: no *_label-lesion_mask (or _roi) for this scan in "
            f"{deriv_root} although other scans have one."
        )
    return cases


#: Layout name -> function(root, sequences, rater) -> cases.
LAYOUTS: dict[str, Callable[..., list[Case]]] = {
    "msseg2016": msseg2016,
    "mslub": mslub,
    "isbi2015": isbi2015,
    "shifts": shifts,
    "wmh2017": wmh2017,
    "bids": bids,
}

#: Layouts that write derived masks next to the manifest.
_DERIVING = ("isbi2015", "wmh2017")


def _check_manifest_out(out: Path) -> None:
    """Refuse, before anything is read, an ``--out`` that is not a manifest to (re)write.

    ``out`` must name a ``.csv`` file that is new or a manifest (its header starts with
    ``case_id``), so an input image, a mask or a user's own file is never replaced.
    """
    if out.is_dir():
        raise InputError(
            f"{out}: is a folder; --out names the manifest file to write, e.g. {out / 'cases.csv'}."
        )
    if out.suffix.lower() != ".csv":
        raise InputError(f"{out}: --out must name a .csv file (the manifest, e.g. cases.csv).")
    if out.exists() or out.is_symlink():
        try:
            with open(out, encoding="utf-8-sig", errors="replace") as f:
                first = f.readline(4096)
        except OSError:
            first = ""
        if not first.strip().startswith("case_id"):
            raise InputError(
                f"{out}: exists and is not a cases.csv manifest; lesionuq never replaces "
                "a file it did not write, so choose a new --out."
            )


def build_manifest(
    layout: str,
    root: str | Path,
    out: str | Path,
    sequences: Sequence[str] = ("flair",),
    rater: str | int | None = None,
    split: str | Sequence[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``cases.csv`` for a public data set as distributed.

    Args:
        layout: One of :data:`LAYOUTS` (``msseg2016``, ``mslub``, ``isbi2015``,
            ``shifts``, ``wmh2017``, ``bids``).
        root: The data set's download folder.
        out: The manifest to write (a ``.csv``, new or an earlier manifest); paths in it
            are relative to its folder. Derived masks (``wmh2017``; ``isbi2015`` union
            or intersection) go to ``<out folder>/<layout>_derived``.
        sequences: Manifest image columns, in model input order.
        rater: None for the layout's default (the consensus, WMH's ``o12``; ``isbi2015``
            has none and asks for one), else a rater of the layout.
        split: ``shifts`` only: keep these split folders.
        overwrite: Replace a derived folder written earlier with other settings.

    Returns:
        The written manifest path.
    """
    if layout not in LAYOUTS:
        raise InputError(f"unknown layout {layout!r} (choose from {', '.join(LAYOUTS)}).")
    if not sequences:
        raise InputError("at least one sequence is needed (e.g. --sequences flair).")
    out = Path(out)
    _check_manifest_out(out)
    if split is not None and layout != "shifts":
        raise InputError(f"--split applies to the shifts layout, not to {layout}.")
    kwargs: dict[str, object] = {}
    if layout in _DERIVING:
        kwargs = {"derived_dir": out.parent / f"{layout}_derived", "overwrite": overwrite}
    if layout == "shifts":
        kwargs["split"] = split
    rater_arg = None if rater is None else str(rater)
    cases = LAYOUTS[layout](root, sequences, rater_arg, **kwargs)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_manifest(out, cases, sequences)
    return out
