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
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from lesionuq.io import Case, InputError, atomic_write_text, load_nifti, save_nifti, write_manifest

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


def _single_rater(layout: str, rater: str) -> None:
    if str(rater) != "consensus":
        raise InputError(
            f"layout {layout} has one reference segmentation per case; use --rater consensus."
        )


def _collect(
    layout: str,
    root: Path,
    entries: Sequence[tuple[str, Path, list[tuple[Path, str]], tuple[Path, str]]],
    expected: str,
) -> list[Case]:
    """Check a layout's cases and turn them into :class:`Case` objects.

    Args:
        layout: Layout name, for the messages.
        root: The data set folder.
        entries: Per case: case id, its folder (named in errors), (folder, stem) of each
            sequence, (folder, stem) of the mask.
        expected: The layout's pattern, shown when no case is found.

    Returns:
        The cases in the order given; masks all present or all None.
    """
    if not entries:
        raise InputError(f"{root}: no {layout} case found (expected {expected}).")
    cases = []
    seen: dict[str, Path] = {}
    for cid, folder, seqs, (mask_dir, mask_stem) in entries:
        if cid in seen:
            raise InputError(f"{folder}: case id {cid!r} is also used by {seen[cid]}.")
        seen[cid] = folder
        images = []
        for where, stem in seqs:
            path = _find(where, stem)
            if path is None:
                raise InputError(f"{folder}: missing {stem}.nii[.gz] in {where}.")
            images.append(path)
        cases.append(Case(cid, tuple(images), _find(mask_dir, mask_stem)))
    with_mask = [c.mask is not None for c in cases]
    if any(with_mask) and not all(with_mask):
        i = with_mask.index(False)
        folder, mask_dir, stem = entries[i][1], entries[i][3][0], entries[i][3][1]
        raise InputError(f"{folder}: missing mask {stem}.nii[.gz] in {mask_dir}.")
    return cases


def _numbered(parent: Path, pattern: str) -> list[Path]:
    """Sub-folders of ``parent`` whose name matches ``pattern``, sorted by name."""
    if not parent.is_dir():
        return []
    regex = re.compile(pattern)
    return sorted(p for p in parent.iterdir() if p.is_dir() and regex.fullmatch(p.name))


def msseg2016(
    root: str | Path, sequences: Sequence[str] = ("flair",), rater: str = "consensus"
) -> list[Case]:
    """MICCAI 2016 MSSEG challenge (the paper's data set), as distributed.

    Layout: ``{Training,Testing}/Center_XX/Patient_YY/Preprocessed_Data/
    {FLAIR,T1,T2,DP,GADO}_preprocessed.nii.gz`` with masks in ``Patient_YY/Masks/``:
    ``Consensus.nii.gz`` or ``ManualSegmentation_N.nii.gz`` (N = 1..7). ``root`` may be
    the download folder or one of ``Training``/``Testing``. Source: the challenge's data
    description (Commowick et al., Sci. Rep. 2018) and the loaders that read it, e.g.
    sergivalverde/cnn-ms-lesion-segmentation (``FLAIR_preprocessed.nii.gz``,
    ``DP_preprocessed.nii.gz``, ``Consensus.nii.gz``).

    Args:
        root: Download folder.
        sequences: Manifest columns among ``flair, t1, t2, pd, gado``.
        rater: ``"consensus"`` or a rater number 1..7 (``ManualSegmentation_N``).

    Returns:
        One case per patient, id ``{Training|Testing}_Center_XX_Patient_YY``.
    """
    root = _check_root(root)
    names = {"flair": "FLAIR", "t1": "T1", "t2": "T2", "pd": "DP", "gado": "GADO"}
    stems = [f"{s}_preprocessed" for s in _sequence_files("msseg2016", names, sequences)]
    rater = str(rater)
    if rater == "consensus":
        mask_stem = "Consensus"
    elif rater.isdigit() and 1 <= int(rater) <= 7:
        mask_stem = f"ManualSegmentation_{int(rater)}"
    else:
        raise InputError(f"msseg2016 rater must be consensus or 1..7, got {rater!r}.")
    splits = _numbered(root, r"Training|Testing") or [root]
    entries = []
    for split in splits:
        for center in _numbered(split, r"Center_\d+"):
            for patient in _numbered(center, r"Patient_\d+"):
                parts = ([] if split == root else [split.name]) + [center.name, patient.name]
                pre = patient / "Preprocessed_Data"
                seqs = [(pre, s) for s in stems]
                entries.append(("_".join(parts), patient, seqs, (patient / "Masks", mask_stem)))
    return _collect(
        "msseg2016",
        root,
        entries,
        "Training|Testing/Center_XX/Patient_YY/Preprocessed_Data/FLAIR_preprocessed.nii.gz",
    )


def mslub(
    root: str | Path, sequences: Sequence[str] = ("flair",), rater: str = "consensus"
) -> list[Case]:
    """MSLUB, the Ljubljana 3D MR data set of 30 MS patients (Lesjak et al. 2017).

    Two layouts are read: the distributed one,
    ``patientXX/patientXX_{FLAIR,T1W,T2W,T1WKS,consensus_gt}.nii.gz``, and the common
    mirror ``{raw,coregistered}/patientXX/{FLAIR,T1W,T2W,T1WKS,consensus_gt}.nii.gz``
    (muschellij2/open_ms_data ``cross_sectional/``; its README lists exactly these
    files). For the mirror ``root`` may be the folder holding ``raw``/``coregistered``
    (``coregistered`` is used when present: the sequences share the FLAIR grid there)
    or one of them.

    Args:
        root: Download folder.
        sequences: Manifest columns among ``flair, t1, t2, gado`` (``gado`` = T1WKS).
        rater: Only ``"consensus"`` (the consensus ground truth).

    Returns:
        One case per patient, id ``patientXX``.
    """
    root = _check_root(root)
    _single_rater("mslub", rater)
    names = {"flair": "FLAIR", "t1": "T1W", "t2": "T2W", "gado": "T1WKS"}
    stems = _sequence_files("mslub", names, sequences)
    base = root
    for mirror in ("coregistered", "raw"):
        if (root / mirror).is_dir():
            base = root / mirror
            break
    entries = []
    for patient in _numbered(base, r"patient\d+"):
        prefixed = _find(patient, f"{patient.name}_FLAIR") is not None
        pre = f"{patient.name}_" if prefixed else ""
        seqs = [(patient, pre + s) for s in stems]
        entries.append((patient.name, patient, seqs, (patient, pre + "consensus_gt")))
    return _collect(
        "mslub",
        root,
        entries,
        "patientXX/patientXX_FLAIR.nii.gz or raw|coregistered/patientXX/FLAIR.nii.gz",
    )


def isbi2015(
    root: str | Path, sequences: Sequence[str] = ("flair",), rater: str = "1"
) -> list[Case]:
    """ISBI 2015 longitudinal MS lesion challenge (Carass et al., NeuroImage 2017).

    Layout: ``trainingNN/preprocessed/trainingNN_TT_{flair,mprage,pd,t2}_pp.nii`` with
    ``trainingNN/masks/trainingNN_TT_mask{1,2}.nii``; one case per time point. Source:
    the challenge's data description (smart-stats-tools.org/lesion-challenge-2015) and
    loaders such as uoguelph-mlrg/vlr (``training01_01_mask1.nii``). The challenge has
    two raters and no consensus.

    Args:
        root: The folder holding ``trainingNN`` (e.g. the unpacked ``training``).
        sequences: Manifest columns among ``flair, t1, pd, t2`` (``t1`` = MPRAGE).
        rater: ``"1"`` or ``"2"``.

    Returns:
        One case per time point, id ``trainingNN_TT``.
    """
    root = _check_root(root)
    rater = str(rater)
    if rater not in ("1", "2"):
        raise InputError(f"isbi2015 has raters 1 and 2 (no consensus); got --rater {rater}.")
    names = {"flair": "flair", "t1": "mprage", "pd": "pd", "t2": "t2"}
    stems = _sequence_files("isbi2015", names, sequences)
    entries = []
    for subject in _numbered(root, r"(training|test)\d+"):
        pre = subject / "preprocessed"
        points = sorted(
            {m.group(1) for p in pre.glob("*_flair_pp.nii*") if (m := _TIMEPOINT.match(p.name))}
        )
        if not points:
            raise InputError(f"{subject}: no preprocessed/{subject.name}_TT_flair_pp.nii found.")
        for tt in points:
            cid = f"{subject.name}_{tt}"
            seqs = [(pre, f"{cid}_{s}_pp") for s in stems]
            entries.append((cid, subject, seqs, (subject / "masks", f"{cid}_mask{rater}")))
    return _collect("isbi2015", root, entries, "trainingNN/preprocessed/trainingNN_TT_flair_pp.nii")


_TIMEPOINT = re.compile(r"[a-z]+\d+_(\d+)_flair_pp\.nii(\.gz)?")


def shifts(
    root: str | Path, sequences: Sequence[str] = ("flair",), rater: str = "consensus"
) -> list[Case]:
    """Shifts 2.0 MS lesion segmentation track (Malinin et al. 2022), as on Zenodo.

    Layout: ``<split>/{flair,t1,t2,pd,gt,fg_mask}/<id>_{FLAIR,T1,T2,PD,gt}_isovox.nii.gz``
    for splits such as ``train``, ``dev_in``, ``eval_in``, ``dev_out``. ``root`` may hold
    the split folders or be one split (it then has a ``flair`` folder). Source: the
    challenge's baseline loader (Shifts-Project/shifts ``mswml/data_load.py``:
    ``*FLAIR_isovox.nii.gz`` matched with ``*gt_isovox.nii.gz``).

    Args:
        root: Download folder.
        sequences: Manifest columns among ``flair, t1, t2, pd``.
        rater: Only ``"consensus"`` (the ``gt`` consensus).

    Returns:
        One case per scan, id ``<split>_<id>``.
    """
    root = _check_root(root)
    _single_rater("shifts", rater)
    names = {"flair": "FLAIR", "t1": "T1", "t2": "T2", "pd": "PD"}
    stems = _sequence_files("shifts", names, sequences)
    splits = [root] if (root / "flair").is_dir() else _numbered(root, r"[^.].*")
    entries = []
    for split in splits:
        flair_dir = split / "flair"
        if not flair_dir.is_dir():
            raise InputError(f"{split}: no flair folder (expected <split>/flair/<id>_FLAIR_...).")
        ids = sorted(
            (p.name.split("_FLAIR_isovox")[0] for p in flair_dir.glob("*_FLAIR_isovox.nii*")),
            key=lambda s: (len(s), s),
        )
        for sid in ids:
            seqs = [(split / s.lower(), f"{sid}_{s}_isovox") for s in stems]
            entries.append((f"{split.name}_{sid}", split, seqs, (split / "gt", f"{sid}_gt_isovox")))
    return _collect("shifts", root, entries, "<split>/flair/<id>_FLAIR_isovox.nii.gz")


def wmh2017(
    root: str | Path,
    sequences: Sequence[str] = ("flair",),
    rater: str = "consensus",
    derived_dir: str | Path | None = None,
) -> list[Case]:
    """MICCAI 2017 WMH segmentation challenge (Kuijf et al., IEEE TMI 2019).

    Layout: ``<site>[/<scanner>]/<id>/pre/{FLAIR,T1}.nii.gz`` with the reference
    ``<id>/wmh.nii.gz``, where label 1 is white matter hyperintensity and label 2
    "other pathology", which the challenge excludes from evaluation. lesionuq's masks
    are binary, so each ``wmh.nii.gz`` is binarised (label 1 only; label 2 becomes
    background) and written to ``derived_dir/<case_id>_wmh_label1.nii.gz``; the manifest
    points there and ``derived_dir/README.txt`` says so. Source: the challenge's data
    description (wmh.isi.uu.nl) and loaders such as hongweilibran/wmh_ibbmTum
    (``pre/FLAIR.nii.gz``, ``pre/T1.nii.gz``, ``wmh.nii.gz``).

    Args:
        root: Download folder (``training`` or ``test``, holding the site folders).
        sequences: Manifest columns among ``flair, t1``.
        rater: Only ``"consensus"``.
        derived_dir: Where the binarised masks go (default ``root/../wmh2017_derived``).

    Returns:
        One case per subject, id ``<site>[_<scanner>]_<id>``.
    """
    root = _check_root(root)
    _single_rater("wmh2017", rater)
    names = {"flair": "FLAIR", "t1": "T1"}
    stems = _sequence_files("wmh2017", names, sequences)
    subjects = sorted(p.parent.parent for p in root.rglob("pre/FLAIR.nii*"))
    entries = []
    for subject in subjects:
        cid = "_".join(subject.relative_to(root).parts)
        entries.append((cid, subject, [(subject / "pre", s) for s in stems], (subject, "wmh")))
    cases = _collect("wmh2017", root, entries, "<site>/<id>/pre/FLAIR.nii.gz and wmh.nii.gz")
    if cases[0].mask is None:
        return cases
    derived = Path(derived_dir) if derived_dir is not None else root.parent / "wmh2017_derived"
    out = []
    for case in cases:
        assert case.mask is not None  # _collect gives masks for all cases or for none
        img = load_nifti(case.mask)
        data = np.asarray(img.dataobj)
        binary = (np.rint(data) == 1).astype(np.uint8)
        path = save_nifti(derived / f"{case.case_id}_wmh_label1.nii.gz", binary, img.affine)
        out.append(Case(case.case_id, case.images, path))
    atomic_write_text(
        derived / "README.txt",
        f"Binarised WMH 2017 reference masks written by lesionuq from {root}:\n"
        "label 1 (white matter hyperintensity) -> 1; label 2 (other pathology, excluded\n"
        "by the challenge) and background -> 0. One file per case: <case_id>_wmh_label1.\n",
    )
    return out


def _by_lesionuq(folder: Path) -> bool:
    """Whether the derivatives data set ``folder`` was generated by lesionuq."""
    try:
        desc = json.loads((folder / "dataset_description.json").read_text())
        return any(g.get("Name") == "lesionuq" for g in desc.get("GeneratedBy", []))
    except (OSError, ValueError, AttributeError):
        return False


def bids(
    root: str | Path, sequences: Sequence[str] = ("flair",), rater: str = "consensus"
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
        rater: Only ``"consensus"``.

    Returns:
        One case per subject (and session), id ``sub-X[_ses-Y]``.
    """
    try:
        from bids import BIDSLayout
    except ImportError:  # pragma: no cover - depends on the installed extras
        raise InputError("the bids layout needs pybids: pip install 'lesionuq[bids]'.") from None
    root = _check_root(root)
    _single_rater("bids", rater)
    if not (root / "dataset_description.json").is_file():
        raise InputError(f"{root}: not a BIDS data set (no dataset_description.json).")
    names = {"flair": "FLAIR", "t1": "T1w", "t2": "T2w", "pd": "PDw"}
    suffixes = _sequence_files("bids", names, sequences)
    layout = BIDSLayout(str(root), validate=False, derivatives=False)
    deriv_layouts = []
    deriv_root = root / "derivatives"
    if deriv_root.is_dir():
        for folder in sorted(p for p in deriv_root.iterdir() if p.is_dir()):
            if (folder / "dataset_description.json").is_file() and not _by_lesionuq(folder):
                deriv_layouts.append(BIDSLayout(str(folder), validate=False, is_derivative=True))
    ext = [".nii.gz", ".nii"]
    cases_found = layout.get(suffix="FLAIR", datatype="anat", extension=ext)
    keys = sorted({(f.entities["subject"], f.entities.get("session")) for f in cases_found})
    if not keys:
        raise InputError(
            f"{root}: no BIDS case found (expected sub-*/[ses-*/]anat/*_FLAIR.nii.gz)."
        )
    cases, missing_mask = [], []
    for sub, ses in keys:
        query = {"subject": sub, "datatype": "anat", "extension": ext}
        if ses is not None:
            query["session"] = ses
        folder = root / f"sub-{sub}" / (f"ses-{ses}" if ses else "") / "anat"
        images = []
        for suffix in suffixes:
            found = sorted(f.path for f in layout.get(suffix=suffix, **query))
            if not found:
                raise InputError(f"{folder}: missing *_{suffix}.nii[.gz].")
            images.append(Path(found[0]))
        masks = []
        for dl in deriv_layouts:
            for suffix in ("mask", "roi"):
                masks += [f.path for f in dl.get(suffix=suffix, label="lesion", **query)]
        if not masks:
            # "label" is not a raw-data entity for pybids: allow it as a filter
            found = layout.get(suffix="roi", label="lesion", invalid_filters="allow", **query)
            masks = [f.path for f in found]
        if ses is None:  # a subject without sessions must not pick up session files
            images_ok = all("ses-" not in Path(p).name for p in images)
            masks = [m for m in masks if "ses-" not in Path(m).name] if images_ok else masks
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


def build_manifest(
    layout: str,
    root: str | Path,
    out: str | Path,
    sequences: Sequence[str] = ("flair",),
    rater: str | int = "consensus",
) -> Path:
    """Write ``cases.csv`` for a public data set as distributed.

    Args:
        layout: One of :data:`LAYOUTS` (``msseg2016``, ``mslub``, ``isbi2015``,
            ``shifts``, ``wmh2017``, ``bids``).
        root: The data set's download folder.
        out: The manifest to write; paths in it are relative to its folder. For
            ``wmh2017`` the binarised masks go to ``<out folder>/wmh2017_derived``.
        sequences: Manifest image columns, in model input order.
        rater: ``"consensus"`` or a rater number (``msseg2016`` 1..7; ``isbi2015`` has no
            consensus and needs 1 or 2).

    Returns:
        The written manifest path.
    """
    if layout not in LAYOUTS:
        raise InputError(f"unknown layout {layout!r} (choose from {', '.join(LAYOUTS)}).")
    if not sequences:
        raise InputError("at least one sequence is needed (e.g. --sequences flair).")
    out = Path(out)
    rater = str(rater)
    if layout == "wmh2017":
        cases = wmh2017(root, sequences, rater, derived_dir=out.parent / "wmh2017_derived")
    else:
        cases = LAYOUTS[layout](root, sequences, rater)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_manifest(out, cases, sequences)
    return out
