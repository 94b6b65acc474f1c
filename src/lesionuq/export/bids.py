"""Predictions as a BIDS-derivatives data set.

Follows BIDS 1.10 "Derivatives" (``dataset_description.json`` with ``DatasetType:
derivative`` and ``GeneratedBy``) and "Common derivatives: segmentations": a binary
``_mask``, a ``_probseg`` (probability of the ``label-lesion`` class) and a ``_dseg``
whose ``dseg.tsv`` look-up table has the required ``index`` and ``name`` columns and,
as the spec allows, extra columns described in the JSON sidecar (keys = column names).
Files keep the source scan's entities (``sub``, ``ses``, ``acq``, ``run``...) and add
``space-orig`` (the scan's own grid). Voxel-wise uncertainty maps have no standard
suffix; they are written as ``..._space-orig_label-lesion_desc-<measure>_uncertainty``
(BIDS-style name, ``desc-`` telling the measure) with a sidecar and a line in the
data set's README.

Per scan, in ``sub-<s>/[ses-<t>/]anat/``::

    <ents>_space-orig_label-lesion_mask.nii.gz (+ .json)       binary segmentation
    <ents>_space-orig_label-lesion_probseg.nii.gz (+ .json)    P(lesion), MC mean
    <ents>_space-orig_desc-lesions_dseg.nii.gz                 lesion ids 1..N
    <ents>_space-orig_desc-lesions_dseg.tsv                    index name p_fp volume_ml
                                                               review color
    <ents>_space-orig_desc-lesions_dseg.json                   columns described
    <ents>_space-orig_label-lesion_desc-<m>_uncertainty.nii.gz (+ .json)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

from lesionuq import __version__
from lesionuq.export.labels import FLAGGED_RGB, KEPT_RGB
from lesionuq.io import InputError, atomic_write_text, save_nifti
from lesionuq.outputs import (
    TMP_PREFIX,
    add_written,
    check_not_foreign,
    check_output_dir,
    read_marker,
    start_output,
)

__all__ = [
    "BIDS_KEY",
    "BIDS_VERSION",
    "MAP_DESCRIPTIONS",
    "bids_entities",
    "bids_sources",
    "check_bids_out",
    "publish_bids_scan",
    "scan_entities",
    "write_bids_derivatives",
]

BIDS_VERSION = "1.10.0"
#: Entities in the order the BIDS entity table puts them (those lesionuq may meet).
_ORDER = ("sub", "ses", "task", "acq", "ce", "rec", "run", "echo", "part", "space", "label", "desc")
_LABEL = re.compile(r"[A-Za-z0-9]+")
#: File extensions stripped before the entities are read.
_EXTENSIONS = (".nii.gz", ".nii", ".json", ".tsv")
#: Sidecar descriptions of lesionuq's voxel maps (``lesionuq.uncertainty.VoxelMaps``).
MAP_DESCRIPTIONS = {
    "entropy": "Voxel-wise predictive entropy of the MC-dropout mean lesion probability (nats).",
    "variance": "Voxel-wise variance of the lesion probability over the MC-dropout samples.",
    "pcs": "Voxel-wise predicted class score max(p, 1 - p) of the MC-dropout mean probability.",
    "prob": "Voxel-wise MC-dropout mean lesion probability.",
}
_TSV_COLUMNS = {
    "index": {"Description": "Label value of the lesion in the _dseg image (1..N)."},
    "name": {"Description": "Lesion name, lesion-<index>."},
    "p_fp": {
        "Description": "Predicted probability that the lesion is a false positive "
        "(lesionuq graph network classifier).",
        "Units": "arbitrary",
    },
    "volume_ml": {"Description": "Lesion volume.", "Units": "mL"},
    "review": {
        "Description": "Whether the lesion is flagged for review (p_fp at or above the threshold).",
        "Levels": {"true": "flagged for review", "false": "kept"},
    },
    "color": {"Description": "Display colour: red flagged, green kept (hex RGB)."},
}
#: Columns of the .tsv present when the prediction located its lesions (issue 30).
_LOCATION_TSV_COLUMNS = {
    "location": {
        "Description": "Lesion location class after registration to MNI152 (lesionuq.location).",
        "Levels": {
            "periventricular": "touching the lateral ventricles or within 3 mm",
            "juxtacortical": "touching the cortex or within 2 mm (cortical included)",
            "infratentorial": "at least half in the brainstem or cerebellum",
            "deep": "deep white matter (none of the above)",
            "unknown": "the registration was not trusted",
        },
    },
    **{
        f"mni_{a}_mm": {
            "Description": f"Lesion centroid, MNI152 {a.upper()} coordinate (RAS).",
            "Units": "mm",
        }
        for a in "xyz"
    },
}


def bids_entities(name: str | Path) -> dict[str, str]:
    """Entities of a BIDS file name or case id, in file order.

    Every ``_``-separated part but a final suffix must be ``key-label`` with an
    alphanumeric key and label (BIDS's label rule), so that a name such as
    ``sub-01_ses-.._FLAIR`` is refused instead of silently losing its session.

    Args:
        name: ``sub-01_ses-a_acq-3d_FLAIR.nii.gz``, a path to it, or a case id such as
            ``sub-01_ses-a``.

    Returns:
        e.g. ``{"sub": "01", "ses": "a", "acq": "3d"}`` (the suffix is dropped).

    Raises:
        ValueError: No ``sub-<label>``, a repeated or malformed entity, or a key or
            label that is not alphanumeric.
    """
    stem = Path(name).name
    for ext in _EXTENSIONS:
        if stem.endswith(ext):
            stem = stem[: -len(ext)]
            break
    if not stem.startswith("sub-"):
        raise ValueError(f"{name}: no sub-<label> entity (a BIDS name starts with it).")
    parts = stem.split("_")
    out: dict[str, str] = {}
    for i, part in enumerate(parts):
        key, sep, value = part.partition("-")
        if not sep and i == len(parts) - 1 and _LABEL.fullmatch(part) and out:
            break  # the suffix (FLAIR, T1w...)
        if not (sep and _LABEL.fullmatch(key) and _LABEL.fullmatch(value)) or key in out:
            raise ValueError(
                f"{name}: {part[:40]!r} is not a BIDS entity key-label with alphanumeric "
                "key and label."
            )
        out[key] = value
    return out


def _stem(entities: Mapping[str, str], **extra: str) -> str:
    ents = {k: v for k, v in entities.items() if k not in ("space", "label", "desc")}
    ents.update(extra)
    for key, value in ents.items():
        if not (_LABEL.fullmatch(str(key)) and _LABEL.fullmatch(str(value))):
            raise ValueError(f"BIDS entity {key}-{value}: keys and labels must be alphanumeric.")
    tail = ("space", "label", "desc")
    keys = [k for k in _ORDER if k in ents and k not in tail]
    keys += [k for k in ents if k not in _ORDER]  # unknown entities go before space
    keys += [k for k in tail if k in ents]
    return "_".join(f"{k}-{ents[k]}" for k in keys)


def _json(path: Path, obj: Mapping[str, Any]) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def _lesion_table(lesions: pd.DataFrame | Mapping[str, Any]) -> pd.DataFrame:
    table = pd.DataFrame(lesions)
    if "index" not in table and "lesion_id" in table:
        table = table.rename(columns={"lesion_id": "index"})
    missing = [c for c in ("index", "p_fp", "volume_ml", "review") if c not in table]
    if missing:
        raise ValueError(f"lesion table lacks column(s) {', '.join(missing)}.")
    table = table.sort_values("index").reset_index(drop=True)
    review = table["review"].astype(bool)
    extra = {c: table[c] for c in _LOCATION_TSV_COLUMNS if c in table}
    for c in ("mni_x_mm", "mni_y_mm", "mni_z_mm"):
        if c in extra:
            extra[c] = extra[c].astype(float).round(2)
    return pd.DataFrame(
        {
            "index": table["index"].astype(int),
            "name": [f"lesion-{int(i)}" for i in table["index"]],
            "p_fp": table["p_fp"].astype(float).round(6),
            "volume_ml": table["volume_ml"].astype(float).round(6),
            "review": np.where(review, "true", "false"),
            "color": [
                "#{:02x}{:02x}{:02x}".format(*(FLAGGED_RGB if r else KEPT_RGB)) for r in review
            ],
            **extra,
        }
    )


def write_bids_derivatives(
    deriv_root: str | Path,
    entities: Mapping[str, str],
    images: Mapping[str, nib.Nifti1Image],
    lesions: pd.DataFrame | Mapping[str, Any],
    *,
    sources: list[str] | None = None,
    threshold: float | None = None,
    source_datasets: list[dict[str, str]] | None = None,
    dataset_links: dict[str, str] | None = None,
    name: str = "lesionuq",
    version: str = __version__,
) -> dict[str, Path]:
    """Write one scan's predictions into a BIDS-derivatives data set.

    Args:
        deriv_root: The derivatives data set folder (created; e.g. ``ds/derivatives/lesionuq``).
        entities: The source scan's entities, e.g. :func:`bids_entities` of its FLAIR;
            must hold ``sub``.
        images: ``mask`` (binary, (X, Y, Z)), ``probseg`` (float in [0, 1]), ``dseg``
            (lesion ids 0..N), plus any voxel uncertainty maps keyed by measure name
            (``entropy``, ``variance``, ``pcs``...; alphanumeric), all on the scan's grid.
        lesions: One row per lesion: ``index`` (or ``lesion_id``), ``p_fp``,
            ``volume_ml``, ``review`` (e.g. ``lesions.csv`` of ``predict``).
        sources: BIDS URIs or paths of the input files (sidecar ``Sources``).
        threshold: The review threshold on P(FP), recorded in the dseg sidecar.
        source_datasets: ``SourceDatasets`` entries of ``dataset_description.json``.
        dataset_links: ``DatasetLinks`` of ``dataset_description.json`` (e.g.
            ``{"raw": "file:///data/ds"}`` for ``bids:raw:`` URIs in ``sources``).
        name: ``GeneratedBy`` name.
        version: ``GeneratedBy`` version.

    Returns:
        Written files by role: ``mask``, ``probseg``, ``dseg``, ``dseg_tsv``, each map
        name, and ``dataset_description``.
    """
    for key in ("mask", "probseg", "dseg"):
        if key not in images:
            raise ValueError(f"images lacks {key!r}.")
    root = Path(deriv_root)
    description: dict[str, Any] = {
        "Name": f"{name} lesion segmentation and lesion-wise uncertainty",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [
            {
                "Name": name,
                "Version": version,
                "Description": "MC-dropout 3D U-Net lesion segmentation with lesion-wise "
                "false-positive probability from graph networks.",
            }
        ],
    }
    if source_datasets:
        description["SourceDatasets"] = list(source_datasets)
    if dataset_links:
        description["DatasetLinks"] = dict(dataset_links)
    written = {"dataset_description": _json(root / "dataset_description.json", description)}
    _readme(root)
    folder = root / f"sub-{entities['sub']}"
    if "ses" in entities:
        folder = folder / f"ses-{entities['ses']}"
    folder = folder / "anat"
    common = {"Sources": list(sources)} if sources else {}

    def nifti(role: str, stem: str, img: nib.Nifti1Image, meta: dict[str, Any]) -> None:
        data = np.asarray(img.dataobj)
        if role in ("mask", "dseg"):
            data = np.rint(data).astype(np.uint8 if data.max(initial=0) < 256 else np.int32)
        else:
            data = data.astype(np.float32)
        written[role] = save_nifti(folder / f"{stem}.nii.gz", data, img.affine)
        _json(folder / f"{stem}.json", {**meta, **common})

    mask_stem = _stem(entities, space="orig", label="lesion")
    nifti(
        "mask",
        f"{mask_stem}_mask",
        images["mask"],
        {
            "Description": "Binary lesion segmentation of the lesionuq MC-dropout U-Net.",
            "Type": "Lesion",
        },
    )
    nifti(
        "probseg",
        f"{mask_stem}_probseg",
        images["probseg"],
        {"Description": "Probability of the lesion class: mean over MC-dropout samples."},
    )
    dseg_stem = _stem(entities, space="orig", desc="lesions") + "_dseg"
    meta: dict[str, Any] = {
        "Description": "Lesion label map: each connected lesion has its own index, "
        "listed in the .tsv with its false-positive probability and review flag.",
        **_TSV_COLUMNS,
    }
    table = _lesion_table(lesions)
    meta.update({c: d for c, d in _LOCATION_TSV_COLUMNS.items() if c in table})
    if threshold is not None:
        meta["ReviewThreshold"] = float(threshold)
    nifti("dseg", dseg_stem, images["dseg"], meta)
    written["dseg_tsv"] = atomic_write_text(
        folder / f"{dseg_stem}.tsv", table.to_csv(sep="\t", index=False, lineterminator="\n")
    )
    for key, img in images.items():
        if key in ("mask", "probseg", "dseg"):
            continue
        stem = _stem(entities, space="orig", label="lesion", desc=key) + "_uncertainty"
        text = MAP_DESCRIPTIONS.get(key, f"Voxel-wise {key} uncertainty map.")
        nifti(key, stem, img, {"Description": text})
    return written


def _readme(root: Path) -> None:
    if (root / "README.md").exists():
        return
    atomic_write_text(
        root / "README.md",
        "# lesionuq derivatives\n\n"
        "Per scan, in `sub-<s>/[ses-<t>/]anat/`, on the scan's own grid (`space-orig`):\n\n"
        "- `*_label-lesion_mask.nii.gz`: binary lesion segmentation;\n"
        "- `*_label-lesion_probseg.nii.gz`: lesion probability (MC-dropout mean);\n"
        "- `*_desc-lesions_dseg.nii.gz` + `.tsv`: lesion ids with `p_fp` (probability that\n"
        "  the lesion is a false positive), `volume_ml`, `review` and a display `color`;\n"
        "  the `.json` sidecar describes the columns;\n"
        "- `*_label-lesion_desc-<measure>_uncertainty.nii.gz`: voxel-wise uncertainty\n"
        "  (`entropy`, `variance`, `pcs`); `uncertainty` is not a BIDS-standard suffix.\n",
    )


#: Settings key of a lesionuq derivatives folder: constant, so that scans are added to it.
BIDS_KEY = "bids-derivatives"


def scan_entities(path: str | Path) -> dict[str, str]:
    """Entities of an input scan for ``predict --bids-out``, or one sentence why not.

    Args:
        path: The scan (first image), e.g. ``ds/sub-01/ses-a/anat/sub-01_ses-a_FLAIR.nii.gz``.

    Returns:
        Its entities, e.g. ``{"sub": "01", "ses": "a"}``.

    Raises:
        InputError: The file name is not a BIDS name (no ``sub-<label>``) or has a
            non-alphanumeric label.
    """
    try:
        entities = bids_entities(path)
        _stem(entities)
    except ValueError:
        raise InputError(
            f"{path}: is not a BIDS file name (sub-<label>[_ses-<label>]_..._FLAIR.nii.gz with "
            "alphanumeric labels), so --bids-out cannot name its outputs; rename the scan or "
            "leave out --bids-out."
        ) from None
    return entities


def _anat(root: Path, entities: Mapping[str, str]) -> Path:
    folder = root / f"sub-{entities['sub']}"
    if "ses" in entities:
        folder = folder / f"ses-{entities['ses']}"
    return folder / "anat"


def _scan_names(entities: Mapping[str, str]) -> list[str]:
    """Every file (relative to the data set folder) that one scan's export may write."""
    anat = _anat(Path(), entities)
    mask = _stem(entities, space="orig", label="lesion")
    dseg = _stem(entities, space="orig", desc="lesions") + "_dseg"
    stems = [f"{mask}_mask", f"{mask}_probseg"]
    stems += [
        _stem(entities, space="orig", label="lesion", desc=m) + "_uncertainty"
        for m in MAP_DESCRIPTIONS
    ]
    names = [f"{st}{ext}" for st in stems for ext in (".nii.gz", ".json")]
    names += [f"{dseg}{ext}" for ext in (".nii.gz", ".json", ".tsv")]
    return [(anat / n).as_posix() for n in names]


def _scan_files(root: Path, entities: Mapping[str, str]) -> list[Path]:
    """Files of one scan already in the derivatives folder ``root`` that lesionuq wrote.

    Only files its marker lists count: a file of the user's next to them (say a
    ``..._desc-manualfix_mask.nii.gz``) is never taken for lesionuq's.
    """
    marker = read_marker(root)
    listed = set(marker.files) if marker is not None else set()
    prefix = (_anat(Path(), entities) / f"{_stem(entities, space='orig')}_").as_posix()
    return sorted(root / f for f in listed if f.startswith(prefix) and "/" not in f[len(prefix) :])


def check_bids_out(
    deriv_root: str | Path,
    entity_sets: Sequence[Mapping[str, str]],
    overwrite: bool = False,
    inputs: Sequence[str | Path] = (),
) -> Path:
    """Check, before any computation, that scans may be added to ``deriv_root``.

    ``deriv_root`` follows lesionuq's output-folder rule (:mod:`lesionuq.outputs`): new,
    empty, or a derivatives folder lesionuq wrote before, to which scans are added. A
    scan whose files are already there is replaced only with ``overwrite``.

    Args:
        deriv_root: The derivatives data set folder.
        entity_sets: The entities of each scan to write (:func:`scan_entities`).
        overwrite: Replace files of scans already in the folder.
        inputs: Input files; ``deriv_root`` may neither be their folder nor hold them.

    Returns:
        ``deriv_root`` as a Path.

    Raises:
        InputError: The folder is refused, two scans have the same entities, or a scan
            is already there without ``overwrite``.
    """
    root = check_output_dir(deriv_root, "bids", overwrite, inputs, key=BIDS_KEY)
    seen: set[str] = set()
    for entities in entity_sets:
        stem = _stem(entities)
        if stem in seen:
            raise InputError(
                f"--bids-out: two scans have the same BIDS entities {stem}; each scan needs "
                "its own sub/ses/acq/run."
            )
        seen.add(stem)
        if not overwrite and any(p.exists() for p in _scan_files(root, entities)):
            raise InputError(
                f"{root}: already holds the derivatives of {stem}; add --overwrite to replace them."
            )
        if root.is_dir():
            check_not_foreign(root, _scan_names(entities))
    return root


def publish_bids_scan(
    deriv_root: str | Path,
    entities: Mapping[str, str],
    images: Mapping[str, nib.Nifti1Image],
    lesions: pd.DataFrame | Mapping[str, Any],
    **kwargs: Any,
) -> dict[str, Path]:
    """Add one scan to a derivatives folder checked by :func:`check_bids_out`.

    The files are built by :func:`write_bids_derivatives` in a temporary folder inside
    ``deriv_root``, then moved into place and recorded in the folder's lesionuq marker;
    the scan's earlier files are replaced and other scans are kept, as is an existing
    ``README.md``.

    Args:
        deriv_root: The derivatives data set folder.
        entities: The scan's entities.
        images: See :func:`write_bids_derivatives`.
        lesions: See :func:`write_bids_derivatives`.
        **kwargs: Passed to :func:`write_bids_derivatives`.

    Returns:
        The published files by role (as :func:`write_bids_derivatives`).
    """
    root = Path(deriv_root)
    start_output(root, "bids", BIDS_KEY)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-", dir=root))
    try:
        built = write_bids_derivatives(tmp, entities, images, lesions, **kwargs)
        new = sorted(p for p in tmp.rglob("*") if p.is_file())
        keep_readme = (root / "README.md").exists()
        rels = [
            str(p.relative_to(tmp))
            for p in new
            if not (keep_readme and p.name == "README.md" and p.parent == tmp)
        ]
        check_not_foreign(root, rels)
        for old in _scan_files(root, entities):
            if old.is_file() and not old.is_symlink():
                old.unlink()
        moved = []
        for path in new:
            rel = path.relative_to(tmp)
            if str(rel) not in rels:
                continue
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, root / rel)
            moved.append(str(rel))
        add_written(root, moved)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {role: root / p.relative_to(tmp) for role, p in built.items()}


def bids_sources(path: str | Path) -> dict[str, Any]:
    """Provenance arguments of :func:`write_bids_derivatives` for one input scan.

    When the scan lies in a BIDS data set (a ``sub-<label>`` folder above it), its
    ``Sources`` entry is a ``bids:raw:`` URI and ``DatasetLinks``/``SourceDatasets`` name
    the data set's folder; otherwise ``Sources`` is the scan's absolute path.

    Args:
        path: The input scan.

    Returns:
        ``sources`` and, for a BIDS input, ``dataset_links`` and ``source_datasets``.
    """
    path = Path(path).resolve()
    for parent in path.parents:
        if parent.name.startswith("sub-"):
            root = parent.parent
            uri = root.as_uri()
            return {
                "sources": [f"bids:raw:{path.relative_to(root).as_posix()}"],
                "dataset_links": {"raw": uri},
                "source_datasets": [{"URL": uri}],
            }
    return {"sources": [str(path)]}
