"""NIfTI input/output, atomic writes and the ``cases.csv`` data set manifest.

Every problem with a user's data is reported as an :class:`InputError` whose message is
one sentence naming the file and what is wrong; the CLI prints it and exits non-zero.

The manifest (docs/DESIGN.md) has a ``case_id`` column, one column per input sequence (named
by the config's ``sequences``), a ``mask`` column (ground truth; may be empty or absent
for prediction-only data), an optional ``ignore`` column (a binary "do not score" mask
per case, e.g. WMH 2017's label 2; may be empty) and an optional ``samples`` column (T
probability maps of the user's own segmenter, :mod:`lesionuq.samples`). Paths are
relative to the CSV's folder.
"""

from __future__ import annotations

import csv
import errno
import io
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt
import pandas as pd
from nibabel.openers import ImageOpener

from lesionuq.errors import InputError

__all__ = [
    "Case",
    "InputError",
    "atomic_dir",
    "atomic_torch_save",
    "atomic_write_bytes",
    "atomic_write_text",
    "available_memory",
    "case_id_problem",
    "check_affine",
    "check_image",
    "check_mask",
    "check_threshold",
    "csv_cell",
    "csv_text",
    "csv_value",
    "describe_load_error",
    "disk_full_guard",
    "load_case",
    "load_ignore",
    "load_nifti",
    "read_csv_table",
    "read_manifest",
    "save_nifti",
    "write_manifest",
]

AFFINE_TOL = 1e-3
#: Peak bytes per input voxel of loading, checking and preprocessing a scan: several
#: float32 copies (a 1024 x 1024 x 512 scan, 0.5 G voxels, took more than 9.5 GB).
BYTES_PER_INPUT_VOXEL = 20
#: Longest case id accepted (case ids name folders; most file systems allow 255 bytes).
MAX_CASE_ID = 100
#: Characters a case id may not hold: path separators and what Windows forbids in names.
_FORBIDDEN_IN_ID = set('/\\:*?"<>|')
#: First characters that make a spreadsheet run a cell as a formula (OWASP CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


@dataclass(frozen=True)
class Case:
    """One row of ``cases.csv`` with absolute paths.

    Attributes:
        case_id: Unique identifier.
        images: Path of each input sequence, in the config's sequence order.
        mask: Path of the ground-truth mask, or None.
        ignore: Path of the case's ignore region (a binary mask on the mask's grid whose
            voxels count neither way: left out of Dice, lesion matching and training), or
            None.
        extra: Further manifest columns written as they are, as (column, value) pairs
            (e.g. ``source_id``, a data set's original case name).
        samples: The ``samples`` column: T probability maps of a segmenter of the user's
            (a 4-D NIfTI, last axis = sample, or a folder of 3-D maps), or None
            (see :mod:`lesionuq.samples`).
    """

    case_id: str
    images: tuple[Path, ...]
    mask: Path | None = None
    ignore: Path | None = None
    extra: tuple[tuple[str, str], ...] = ()
    samples: Path | None = None


def load_nifti(path: str | Path, read_data: bool = True) -> nib.Nifti1Image:
    """Load a NIfTI file, turning every failure into one clear :class:`InputError`.

    Args:
        path: ``.nii`` or ``.nii.gz`` file.
        read_data: Read the voxels once, so that a corrupt file fails here (False: the
            header only, e.g. to compare grids cheaply).

    Returns:
        The image, with its data loaded lazily by nibabel (affine and header kept).
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not a NIfTI file.")
    if not path.is_file():
        raise InputError(f"{path}: file not found.")
    try:
        img = nib.load(str(path))
        if read_data and isinstance(img, nib.Nifti1Image):  # also NIfTI-2, a subclass
            check_memory(img.shape, path)  # from the header, before the data are read
            img.get_fdata(dtype=np.float32)  # force a read so that corruption shows here
    except InputError:
        raise
    except Exception as exc:  # nibabel raises many types for bad files
        raise InputError(
            f"{path}: cannot be read as NIfTI ({exc.__class__.__name__}: {exc})."
        ) from None
    if not isinstance(img, nib.Nifti1Image):
        raise InputError(f"{path}: is not a NIfTI image (nibabel reads a {type(img).__name__}).")
    check_affine(img, path)
    return img


def available_memory() -> float:
    """Memory available to a new allocation (bytes): ``MemAvailable``, else free pages."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return math.inf


def check_memory(shape: Sequence[int], path: str | Path) -> None:
    """Refuse, from its header's shape, a scan too large for the memory available.

    A NIfTI file compresses a mostly empty volume to almost nothing, so a 2.4 MB file
    can hold a 1024 x 1024 x 512 grid; its size on disk says nothing.

    Args:
        shape: The image's shape as the header states it.
        path: Its file, for the message.

    Raises:
        InputError: About :data:`BYTES_PER_INPUT_VOXEL` bytes per voxel are more than
            the memory available now.
    """
    n_voxels = math.prod(int(s) for s in shape)
    need = float(n_voxels) * BYTES_PER_INPUT_VOXEL
    have = available_memory()
    if need > have:
        shown = " x ".join(str(int(s)) for s in shape)
        raise InputError(
            f"{path}: a {shown} image needs about {need / 2**30:.1f} GiB to load and "
            f"preprocess, more than the {have / 2**30:.1f} GiB of memory available; "
            "crop or resample it first."
        )


def _raw_header(img: nib.Nifti1Image, path: Path) -> nib.Nifti1Header | None:
    """The header as stored on disk (nibabel's loader silently repairs some fields)."""
    header_class = type(img.header)
    if not hasattr(header_class, "from_fileobj") or "pixdim" not in img.header:
        return None
    try:
        with ImageOpener(str(path)) as f:
            return header_class.from_fileobj(f, check=False)
    except Exception:  # a header nibabel read once already; re-reading should not fail
        return None


def check_affine(img: nib.Nifti1Image, path: str | Path) -> np.ndarray:
    """Check that an image's voxel-to-world affine is usable for volumes and resampling.

    Refused: NaN or infinite entries, an all-zero or singular 3x3 part, and voxel sizes
    (``pixdim``) of zero or below in a file without an sform or qform (nibabel would
    silently assume 1 mm, so volumes in ml would be wrong).

    Args:
        img: The loaded image.
        path: Its file, for the message.

    Returns:
        The affine, (4, 4) float64.
    """
    path = Path(path)
    raw = _raw_header(img, path)
    if raw is not None and int(raw["sform_code"]) == 0 and int(raw["qform_code"]) == 0:
        pixdim = np.asarray(raw["pixdim"][1:4], dtype=np.float64)
        if not np.all(np.isfinite(pixdim) & (pixdim > 0)):
            shown = ", ".join(f"{v:g}" for v in pixdim)
            raise InputError(
                f"{path}: voxel size (pixdim {shown}) is not positive and the file has no "
                "sform or qform, so its geometry is unknown."
            )
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)):
        raise InputError(f"{path}: the affine (voxel-to-world matrix) contains NaN or infinity.")
    linear = affine[:3, :3]
    if not np.any(linear):
        raise InputError(f"{path}: the affine (voxel-to-world matrix) is all zeros.")
    scale = float(np.prod(np.linalg.norm(linear, axis=0)))
    if scale == 0.0 or abs(float(np.linalg.det(linear))) <= 1e-6 * scale:
        raise InputError(
            f"{path}: the affine (voxel-to-world matrix) is singular (zero voxel volume)."
        )
    return affine


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
    images: list[nib.Nifti1Image] = []
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


def load_ignore(case: Case, reference: nib.Nifti1Image) -> nib.Nifti1Image | None:
    """Load and check a case's ignore region (binary, on the grid of its first image).

    Args:
        case: The case; ``case.ignore`` None gives None.
        reference: The case's first image (from :func:`load_case`).

    Returns:
        The ignore-region image, or None.
    """
    if case.ignore is None:
        return None
    img = load_nifti(case.ignore)
    check_mask(img, case.ignore)
    _check_same_grid(reference, case.images[0], img, case.ignore)
    return img


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
    if csv_path.is_dir():
        raise InputError(f"{csv_path}: is a folder, not a cases.csv file.")
    if not csv_path.is_file():
        raise InputError(f"{csv_path}: file not found.")
    raw = csv_path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raise InputError(f"{csv_path}: is gzip-compressed; decompress it (gunzip) first.")
    try:
        text = raw.decode("utf-8-sig")  # tolerate Excel's BOM
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{csv_path}: is not a UTF-8 text CSV (undecodable byte at offset {exc.start})."
        ) from None
    if "\x00" in text:
        raise InputError(f"{csv_path}: is a binary file, not a text CSV (it holds NUL bytes).")
    try:
        reader = csv.reader(io.StringIO(text, newline=""))
        header = [h.strip() for h in next(reader, [])]
        columns = header
        rows = [
            dict(zip(header, (str(csv_value(c.strip())) for c in r), strict=False))
            for r in reader
            if r
        ]
    except csv.Error as exc:
        raise InputError(f"{csv_path}: is not a valid CSV ({exc}).") from None
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
        problem = case_id_problem(cid)
        if problem is not None:
            shown = cid if len(cid) <= 40 else cid[:37] + "..."
            raise InputError(
                f"{csv_path}: case_id {shown!r} on line {i} cannot name a folder ({problem})."
            )
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
        ignore_value = (row.get("ignore") or "").strip()
        samples_value = (row.get("samples") or "").strip()
        cases.append(
            Case(
                cid,
                tuple(paths),
                root / mask_value if mask_value else None,
                ignore=root / ignore_value if ignore_value else None,
                samples=root / samples_value if samples_value else None,
            )
        )
    return cases


def case_id_problem(case_id: str) -> str | None:
    """Why ``case_id`` cannot be used as a portable folder name, or None when it can.

    Case ids name folders (``RUN/preprocessed/CASE``, ``OUT/CASE``), so an id must not be
    empty, ``.`` or ``..``, start with ``.`` (hidden, and lesionuq's temporary names),
    hold a path separator, a control character or one of ``:*?"<>|``, or be longer than
    :data:`MAX_CASE_ID` characters.

    Args:
        case_id: The id as read from ``cases.csv``.

    Returns:
        A short reason (completes "cannot name a folder (...)"), or None.
    """
    if not case_id:
        return "it is empty"
    if case_id in (".", ".."):
        return f"{case_id!r} is a path, not a name"
    if len(case_id) > MAX_CASE_ID:
        return f"{len(case_id)} characters, at most {MAX_CASE_ID} allowed"
    if case_id.startswith("."):
        return "it starts with '.'"
    bad = sorted({c for c in case_id if c in _FORBIDDEN_IN_ID or ord(c) < 32 or ord(c) == 127})
    if bad:
        return "it contains " + " ".join(repr(c) for c in bad)
    return None


def csv_cell(value: object) -> object:
    """A CSV cell neutralised against CSV injection (the OWASP rule), reversibly.

    Text that a spreadsheet would run as a formula (starting with ``= + - @``, tab or CR)
    gets a leading ``'``, as does text that already starts with ``'`` before such a
    character, so that :func:`csv_value` gives back exactly the original text. Only the
    cell is neutralised: ids and paths inside lesionuq keep their text.

    Numbers and other text are returned unchanged.
    """
    if isinstance(value, str) and value.lstrip("'").startswith(_FORMULA_START):
        return "'" + value
    return value


def csv_value(cell: object) -> object:
    """The value a cell written by :func:`csv_cell` stands for (its inverse).

    A spreadsheet reads a leading ``'`` the same way, so a manifest saved by one gives
    back its ids and paths too.
    """
    if (
        isinstance(cell, str)
        and cell.startswith("'")
        and cell.lstrip("'").startswith(_FORMULA_START)
    ):
        return cell[1:]
    return cell


def csv_text(frame: pd.DataFrame) -> str:
    """``frame.to_csv(index=False)`` with every text cell passed through :func:`csv_cell`.

    Every CSV lesionuq writes goes through this function (or :func:`csv_cell`), so a
    case id such as ``=1+1`` is never run as a formula by a spreadsheet; every CSV it
    reads back goes through :func:`read_csv_table`, which restores the id.
    """
    safe = frame.copy()
    for column in safe.columns:
        if safe[column].dtype == object or pd.api.types.is_string_dtype(safe[column]):
            safe[column] = safe[column].map(csv_cell)
    safe.columns = [csv_cell(str(c)) for c in safe.columns]
    return safe.to_csv(index=False)


def read_csv_table(path: str | Path, **kwargs: Any) -> pd.DataFrame:
    """``pd.read_csv`` of a CSV written by :func:`csv_text`, its text cells restored.

    ``case_id`` is read as text. A cell ``'=1+1`` comes back as the case id ``=1+1``
    (see :func:`csv_value`), so ids read back name the same folders.

    Args:
        path: The CSV file.
        **kwargs: Passed to ``pd.read_csv``.

    Returns:
        The table.
    """
    kwargs.setdefault("dtype", {"case_id": str})
    table = pd.read_csv(path, **kwargs)
    for column in table.columns:
        if table[column].dtype == object or pd.api.types.is_string_dtype(table[column]):
            table[column] = table[column].map(csv_value)
    table.columns = [str(csv_value(str(c))) for c in table.columns]
    return table


def check_threshold(value: float, name: str = "threshold") -> float:
    """Return ``value`` as a float after checking that it is finite and in [0, 1].

    Raises:
        InputError: NaN, infinite or outside [0, 1].
    """
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number in [0, 1], got {value!r}.") from None
    if not np.isfinite(v) or not 0.0 <= v <= 1.0:
        raise InputError(f"{name} must be a finite number in [0, 1], got {value!r}.")
    return v


def describe_load_error(exc: BaseException) -> str:
    """A short description of why a file could not be loaded, for an :class:`InputError`.

    ``torch.load(weights_only=True)`` refuses a pickled Python object with a long message
    that suggests ``weights_only=False``, which would run whatever code the file holds;
    that advice is never passed on: the refusal is described in one clause instead.

    Args:
        exc: The exception raised by the loader.

    Returns:
        E.g. ``"UnpicklingError: ..."`` or the refusal clause.
    """
    text = str(exc)
    if "weights_only" in text or "Weights only load failed" in text:
        found = re.search(r"GLOBAL ([\w.]+)", text)
        what = f" ({found.group(1)})" if found else ""
        return (
            f"it holds a pickled Python object{what}, which lesionuq refuses to load because "
            "unpickling can run arbitrary code"
        )
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"{exc.__class__.__name__}: {first}" if first else exc.__class__.__name__


def _path_cell(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` as a CSV cell that no spreadsheet runs as a formula.

    A relative path starting with a formula character (``=x.nii.gz``) is written as
    ``./=x.nii.gz``: the same file, read back unchanged by :func:`read_manifest`, where a
    leading ``'`` would change the path.
    """
    rel = os.path.relpath(Path(path).resolve(), root)
    return f"./{rel}" if rel.startswith(_FORMULA_START) else rel


def write_manifest(
    csv_path: str | Path, cases: Sequence[Case], sequences: Sequence[str] = ("flair",)
) -> None:
    """Write a manifest with paths relative to its folder.

    Columns: ``case_id``, the sequences, ``mask``, then ``ignore`` when a case has an
    ignore region, ``samples`` when a case has samples, then the cases' ``extra`` columns
    (in first-seen order).
    """
    csv_path = Path(csv_path)
    root = csv_path.parent.resolve()
    extra: list[str] = []
    for case in cases:
        extra += [k for k, _ in case.extra if k not in extra]
    with_ignore = any(c.ignore is not None for c in cases)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    with_samples = any(c.samples is not None for c in cases)
    optional = [("ignore", with_ignore), ("samples", with_samples)]
    columns = [name for name, present in optional if present]
    writer.writerow(["case_id", *sequences, "mask", *columns, *extra])
    for case in cases:
        cells = [csv_cell(case.case_id)]
        cells += [_path_cell(p, root) for p in case.images]
        cells.append(_path_cell(case.mask, root) if case.mask else "")
        for name in columns:
            path = getattr(case, name)
            cells.append(_path_cell(path, root) if path else "")
        values = dict(case.extra)
        cells += [csv_cell(values.get(k, "")) for k in extra]
        writer.writerow(cells)
    atomic_write_text(csv_path, buffer.getvalue())


def save_nifti(
    path: str | Path,
    data: npt.ArrayLike,
    affine: np.ndarray,
    header: nib.Nifti1Header | None = None,
    dtype: npt.DTypeLike | None = None,
) -> Path:
    """Write a 3-D array as NIfTI atomically (temporary file, then rename).

    Args:
        path: Destination, ``.nii.gz`` compresses.
        data: Array (or array-like, e.g. an image's ``dataobj``), shape (X, Y, Z).
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
    with disk_full_guard(path.parent, arr.nbytes):
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=path.parent)
        os.close(fd)
        try:
            nib.save(img, tmp)
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return path


def _umask() -> int:
    """The process umask (read without changing it for longer than one call)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def disk_full_guard(folder: str | Path, needed: int | None = None) -> Iterator[None]:
    """Turn "no space left on device" (or a full quota) into one :class:`InputError`.

    Args:
        folder: The folder being written, named in the message.
        needed: Bytes the write needed, when known.
    """
    try:
        yield
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        size = f" (about {needed / 2**20:.1f} MiB needed)" if needed else ""
        raise InputError(
            f"{folder}: no space left on the device while writing{size}; free some space "
            "or choose another output folder."
        ) from None


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write bytes to ``path`` atomically (temporary file in the same folder, then rename).

    The file gets the permissions of any new file (0666 less the umask, where mkstemp
    would give 0600); a reader never sees a half-written file. A full disk is reported
    as one :class:`InputError` naming the folder (see :func:`disk_full_guard`).
    """
    path = Path(path)
    with disk_full_guard(path.parent, len(data)):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(tmp, 0o666 & ~_umask())
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
    # lazy: torch is not loaded for lesionuq --help (the CLI imports this module)
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Build a folder under a temporary name and move it into place only on success.

    A pre-existing ``path`` is replaced only when the body finishes; on an exception the
    temporary folder is removed and ``path`` is left as it was. The folder gets the
    permissions of any new folder (0777 less the umask). Used for lesionuq's own folders
    inside a run; user-facing output folders go through :mod:`lesionuq.outputs`.

    Yields:
        The temporary folder to write into.
    """
    path = Path(path)
    with disk_full_guard(path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{path.name}-", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; match the files inside
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
