"""NIfTI input/output, atomic writes and the ``cases.csv`` data set manifest.

Every problem with a user's data is reported as an :class:`InputError` whose message is
one sentence naming the file and what is wrong; the CLI prints it and exits non-zero.

The manifest (DESIGN.md) has a ``case_id`` column, one column per input sequence (named
by the config's ``sequences``) and a ``mask`` column (ground truth; may be empty or absent
for prediction-only data). Paths are relative to the CSV's folder.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from lesionuq.errors import InputError

__all__ = [
    "Case",
    "InputError",
    "atomic_dir",
    "atomic_torch_save",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_image",
    "check_mask",
    "load_case",
    "load_nifti",
    "read_manifest",
    "save_nifti",
    "write_manifest",
]

AFFINE_TOL = 1e-3


@dataclass(frozen=True)
class Case:
    """One row of ``cases.csv`` with absolute paths.

    Attributes:
        case_id: Unique identifier.
        images: Path of each input sequence, in the config's sequence order.
        mask: Path of the ground-truth mask, or None.
    """

    case_id: str
    images: tuple[Path, ...]
    mask: Path | None = None


def load_nifti(path: str | Path) -> nib.Nifti1Image:
    """Load a NIfTI file, turning every failure into one clear :class:`InputError`.

    Args:
        path: ``.nii`` or ``.nii.gz`` file.

    Returns:
        The image, with its data loaded lazily by nibabel (affine and header kept).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found.")
    try:
        img = nib.load(str(path))
        img.get_fdata(dtype=np.float32)  # force a read so that corruption shows here
    except Exception as exc:  # nibabel raises many types for bad files
        raise InputError(
            f"{path}: cannot be read as NIfTI ({exc.__class__.__name__}: {exc})."
        ) from None
    return img


def check_image(img: nib.Nifti1Image, path: str | Path) -> np.ndarray:
    """Check that an image is a finite, non-empty 3-D volume.

    Args:
        img: The loaded image.
        path: Its file, for the message.

    Returns:
        The data as float32, shape (X, Y, Z).
    """
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        data = np.asarray(img.dataobj, dtype=np.float32)[..., 0]
    elif len(shape) != 3:
        raise InputError(f"{path}: expected a 3-D image, got {len(shape)}-D shape {shape}.")
    else:
        data = np.asarray(img.dataobj, dtype=np.float32)
    if not np.all(np.isfinite(data)):
        n = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
        raise InputError(f"{path}: contains {n} NaN or infinite voxels.")
    if not np.any(data):
        raise InputError(f"{path}: the image is empty (all voxels are zero).")
    return data


def check_mask(img: nib.Nifti1Image, path: str | Path) -> np.ndarray:
    """Check that a mask is 3-D, finite and binary (values 0 and 1 only).

    Returns:
        The mask as uint8, shape (X, Y, Z). An all-zero mask is valid (no lesion).
    """
    if len(img.shape) == 4 and img.shape[3] == 1:
        data = np.asarray(img.dataobj, dtype=np.float32)[..., 0]
    elif len(img.shape) != 3:
        raise InputError(f"{path}: expected a 3-D mask, got shape {img.shape}.")
    else:
        data = np.asarray(img.dataobj, dtype=np.float32)
    if not np.all(np.isfinite(data)):
        raise InputError(f"{path}: the mask contains NaN or infinite voxels.")
    values = np.unique(data)
    if not np.all(np.isin(values, (0.0, 1.0))):
        shown = ", ".join(f"{v:g}" for v in values[:5])
        raise InputError(f"{path}: the mask is not binary (values {shown}...).")
    return data.astype(np.uint8)


def _check_same_grid(
    ref: nib.Nifti1Image, ref_path: Path, other: nib.Nifti1Image, path: Path
) -> None:
    if tuple(other.shape[:3]) != tuple(ref.shape[:3]):
        raise InputError(
            f"{path}: shape {tuple(other.shape)} does not match {ref_path.name} "
            f"shape {tuple(ref.shape)}."
        )
    if not np.allclose(other.affine, ref.affine, atol=AFFINE_TOL):
        raise InputError(f"{path}: affine does not match the affine of {ref_path.name}.")


def load_case(case: Case) -> tuple[list[nib.Nifti1Image], nib.Nifti1Image | None]:
    """Load and validate every file of a case.

    Returns:
        The images (one per sequence) and the mask image (None when the case has none).
        Data are validated: 3-D, finite, non-empty, same grid; the mask binary.
    """
    images = []
    for path in case.images:
        img = load_nifti(path)
        check_image(img, path)
        if images:
            _check_same_grid(images[0], case.images[0], img, path)
        images.append(img)
    mask = None
    if case.mask is not None:
        mask = load_nifti(case.mask)
        check_mask(mask, case.mask)
        _check_same_grid(images[0], case.images[0], mask, case.mask)
    return images, mask


def read_manifest(
    csv_path: str | Path, sequences: Sequence[str] = ("flair",), require_mask: bool = True
) -> list[Case]:
    """Read ``cases.csv`` and resolve its paths (files are checked by :func:`load_case`).

    Args:
        csv_path: The manifest.
        sequences: Names of the image columns, in model input order.
        require_mask: Whether every case must have a mask (training and evaluation do).

    Returns:
        The cases, in file order.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise InputError(f"{csv_path}: file not found.")
    with open(csv_path, newline="", encoding="utf-8-sig") as f:  # tolerate Excel's BOM
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        columns = header
        rows = [dict(zip(header, (c.strip() for c in r), strict=False)) for r in reader if r]
    missing = [c for c in ("case_id", *sequences) if c not in columns]
    if require_mask and "mask" not in columns:
        missing.append("mask")
    if missing:
        raise InputError(f"{csv_path}: missing column(s) {', '.join(missing)}.")
    if not rows:
        raise InputError(f"{csv_path}: no cases listed.")
    root = csv_path.parent
    cases, seen = [], set()
    for i, row in enumerate(rows, start=2):
        cid = (row.get("case_id") or "").strip()
        if not cid:
            raise InputError(f"{csv_path}: line {i} has an empty case_id.")
        if cid in seen:
            raise InputError(f"{csv_path}: duplicate case_id {cid!r} on line {i}.")
        seen.add(cid)
        paths = []
        for seq in sequences:
            value = (row.get(seq) or "").strip()
            if not value:
                raise InputError(f"{csv_path}: case {cid!r} has no {seq} path (line {i}).")
            paths.append(root / value)
        mask_value = (row.get("mask") or "").strip()
        if require_mask and not mask_value:
            raise InputError(f"{csv_path}: case {cid!r} has no mask path (line {i}).")
        cases.append(Case(cid, tuple(paths), root / mask_value if mask_value else None))
    return cases


def write_manifest(
    csv_path: str | Path, cases: Sequence[Case], sequences: Sequence[str] = ("flair",)
) -> None:
    """Write a manifest with paths relative to its folder."""
    csv_path = Path(csv_path)
    root = csv_path.parent.resolve()
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["case_id", *sequences, "mask"])
    for case in cases:
        cells = [case.case_id]
        cells += [os.path.relpath(Path(p).resolve(), root) for p in case.images]
        cells.append(os.path.relpath(Path(case.mask).resolve(), root) if case.mask else "")
        writer.writerow(cells)
    atomic_write_text(csv_path, buffer.getvalue())


def save_nifti(
    path: str | Path,
    data: np.ndarray,
    affine: np.ndarray,
    header: nib.Nifti1Header | None = None,
    dtype: type | str | None = None,
) -> Path:
    """Write a 3-D array as NIfTI atomically (temporary file, then rename).

    Args:
        path: Destination, ``.nii.gz`` compresses.
        data: Array, shape (X, Y, Z).
        affine: 4x4 voxel-to-world (RAS mm) matrix.
        header: Optional header to copy (spacing units, description).
        dtype: On-disk data type; default float32 for floats, uint8/int16/int32 for labels.

    Returns:
        The written path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(data)
    if dtype is None:
        if arr.dtype == bool:
            dtype = np.uint8
        elif np.issubdtype(arr.dtype, np.floating):
            dtype = np.float32
        elif np.issubdtype(arr.dtype, np.integer):
            dtype = np.uint8 if arr.size == 0 or arr.max() < 256 else np.int32
        else:
            dtype = arr.dtype
    arr = arr.astype(dtype, copy=False)
    img = nib.Nifti1Image(arr, np.asarray(affine, dtype=np.float64), header=header)
    img.set_data_dtype(dtype)
    img.header.set_xyzt_units("mm")
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        nib.save(img, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write bytes to ``path`` atomically (temporary file in the same folder, then rename).

    The file is made world-readable (0644); a reader never sees a half-written file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be shared
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 text to ``path`` atomically (see :func:`atomic_write_bytes`)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj: object, path: str | Path) -> Path:
    """``torch.save`` to ``path`` atomically (see :func:`atomic_write_bytes`)."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Build a folder under a temporary name and move it into place only on success.

    A pre-existing ``path`` is replaced only when the body finishes; on an exception the
    temporary folder is removed and ``path`` is left as it was.

    Yields:
        The temporary folder to write into.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{path.name}-", dir=path.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        old = path.with_name(f".old-{path.name}-{os.getpid()}")
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)
