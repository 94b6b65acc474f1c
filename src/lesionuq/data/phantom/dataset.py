"""Write a phantom data set: validated first, built in a temporary folder, published whole."""

from __future__ import annotations

import dataclasses
import io
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import nibabel as nib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy import ndimage as ndi

from lesionuq.config import ConfigError, config_digest
from lesionuq.data.phantom.params import PhantomParams
from lesionuq.data.phantom.render import generate_case
from lesionuq.io import (
    Case,
    atomic_write_bytes,
    atomic_write_text,
    available_memory,
    read_manifest,
    save_nifti,
    write_manifest,
)
from lesionuq.outputs import check_output_dir, output_dir
from lesionuq.utils import PLAIN, plain_text, track

if TYPE_CHECKING:
    from lesionuq.config import PhantomConfig

__all__ = [
    "case_seed",
    "estimate_case_memory",
    "make_phantom_dataset",
    "write_drawn_dataset",
    "write_preview",
]

TEMPLATE_FOV_MM = (197, 233, 189)
"""Field of view of the MNI152 template at 1 mm (X, Y, Z)."""

_BYTES_PER_OUTPUT_VOXEL = 40  # FLAIR, mask, labels, tissue and fraction maps of ``info``
_BYTES_PER_BOX_VOXEL = 160  # coordinates, tissue maps, canvas, image and noise
_TEMPLATE_BYTES = 1.0 * 2**30  # the template, its derived maps and one resampled copy


def case_seed(seed: int, index: int) -> int:
    """Seed of case ``index`` of a data set with master ``seed`` (NumPy ``SeedSequence``)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def estimate_case_memory(spacing: float, shape: tuple[int, int, int] | None = None) -> float:
    """Peak memory (bytes) of generating one case, an upper estimate.

    The renderer works on the part of the grid that can hold brain (at most the template's
    field of view with a 25 mm margin) and returns full-grid maps.

    Args:
        spacing: Voxel size (mm), > 0.
        shape: Grid shape (X, Y, Z), or None for the template's field of view.

    Returns:
        Estimated bytes.
    """
    dims: tuple[int, ...] = (
        tuple(math.floor(n / spacing + 0.5) for n in TEMPLATE_FOV_MM) if shape is None else shape
    )
    n_out = math.prod(int(s) for s in dims)
    n_box = math.prod(
        min(int(s), math.ceil((n + 50) / spacing))
        for s, n in zip(dims, TEMPLATE_FOV_MM, strict=True)
    )
    return _TEMPLATE_BYTES + _BYTES_PER_OUTPUT_VOXEL * n_out + _BYTES_PER_BOX_VOXEL * n_box


def check_phantom_config(
    cfg: PhantomConfig, memory_limit_gib: float | None = None, need_bytes: float | None = None
) -> None:
    """Refuse a phantom config that cannot be generated, with one sentence.

    Args:
        cfg: The data set config.
        memory_limit_gib: Refuse when one case needs more than this (GiB); default half
            of the memory available now.
        need_bytes: Memory one case needs (bytes), for a generator with its own estimate;
            default family A's (:func:`estimate_case_memory`).

    Raises:
        ConfigError: A count, seed, spacing or shape out of range, bad parameters, or a
            case that would need more memory than the limit.
    """
    if not isinstance(cfg.n_cases, int) or cfg.n_cases < 1:
        raise ConfigError(f"phantom.n_cases must be at least 1, got {cfg.n_cases!r}.")
    if not isinstance(cfg.seed, int) or cfg.seed < 0:
        raise ConfigError(f"phantom.seed must be a non-negative integer, got {cfg.seed!r}.")
    if not isinstance(cfg.max_lesions, int) or cfg.max_lesions < 0:
        raise ConfigError(f"phantom.max_lesions must be >= 0, got {cfg.max_lesions!r}.")
    if not (math.isfinite(cfg.spacing) and cfg.spacing > 0):
        raise ConfigError(f"phantom.spacing must be a positive number of mm, got {cfg.spacing!r}.")
    if cfg.shape is not None and (len(cfg.shape) != 3 or min(cfg.shape) < 1):
        raise ConfigError(f"phantom.shape must be three positive sizes, got {cfg.shape!r}.")
    PhantomParams.from_dict(cfg.params)
    need = estimate_case_memory(cfg.spacing, cfg.shape) if need_bytes is None else need_bytes
    if memory_limit_gib is None:
        limit, what = available_memory() / 2.0, "half of the memory available"
    else:
        limit, what = memory_limit_gib * 2**30, "the memory limit"
    if need > limit:
        raise ConfigError(
            f"A phantom case at spacing {cfg.spacing:g} mm and shape "
            f"{_shape_text(cfg)} needs about {need / 2**30:.1f} GiB, more than {what} "
            f"({limit / 2**30:.1f} GiB); use a larger spacing or a smaller shape."
        )


def _shape_text(cfg: PhantomConfig) -> str:
    if cfg.shape is None:
        return "(template field of view)"
    return " x ".join(str(s) for s in cfg.shape)


def make_phantom_dataset(
    out_dir: Path,
    cfg: PhantomConfig,
    preview: bool = False,
    progress: bool = True,
    memory_limit_gib: float | None = None,
    overwrite: bool = False,
) -> Path:
    """Generate ``cfg.n_cases`` cases under ``out_dir`` and their manifest.

    Everything is checked before anything is written (:func:`check_phantom_config`), and
    ``out_dir`` follows lesionuq's output-folder rule (:mod:`lesionuq.outputs`): new,
    empty, or a phantom data set lesionuq wrote (the same settings are made again; other
    settings need ``overwrite``). A user's data folder is refused. The whole data set
    is built in a temporary folder inside ``out_dir`` and moved into place when
    complete, so an interrupted run leaves nothing: each case ``out_dir/<case_id>/``
    (``flair.nii.gz``, ``mask.nii.gz``), ``out_dir/phantom.json`` (config, parameters and
    per-case summary), ``out_dir/cases.csv`` and with ``preview`` ``out_dir/preview.png``
    (:func:`write_preview`).

    Args:
        out_dir: Output folder.
        cfg: Number of cases, master seed, grid, lesion bound and physical parameters.
            Case ``i`` is ``case_{i:03d}`` with seed :func:`case_seed` (cfg.seed, i).
        preview: Also write the preview picture.
        progress: Show a progress bar.
        memory_limit_gib: Refuse when one case needs more memory (GiB); default half of
            the available memory.
        overwrite: Replace an earlier phantom data set made with other settings (only
            the files lesionuq wrote there).

    Returns:
        The manifest path ``out_dir/cases.csv``.

    Raises:
        ConfigError: An invalid config or too large a grid, or ``cfg.family`` is not
            ``"a"`` (this is family A's generator; :func:`lesionuq.data.families.make_dataset`
            makes every family); nothing written.
        InputError: ``out_dir`` is refused by the output-folder rule (nothing written).
    """
    out_dir = Path(out_dir)
    if cfg.family != "a":
        raise ConfigError(
            f"phantom.family is {cfg.family!r}, but this generator makes family A only; "
            "lesionuq.data.families.make_dataset makes every family."
        )
    check_phantom_config(cfg, memory_limit_gib)
    key = config_digest({"phantom": dataclasses.asdict(cfg), "preview": preview})
    check_output_dir(out_dir, "phantom", overwrite=overwrite, key=key)
    params = PhantomParams.from_dict(cfg.params)
    cases, summary = [], []
    with output_dir(out_dir, "phantom", key) as tmp:
        for i in track(range(cfg.n_cases), "phantom cases", enabled=progress):
            case_id = f"case_{i:03d}"
            seed = case_seed(cfg.seed, i)
            case = generate_case(seed, cfg.spacing, cfg.shape, cfg.max_lesions, params)
            folder = tmp / case_id
            flair, mask = folder / "flair.nii.gz", folder / "mask.nii.gz"
            save_nifti(flair, case.flair.dataobj, case.flair.affine, dtype=np.int16)
            save_nifti(mask, case.mask.dataobj, case.mask.affine, dtype=np.uint8)
            cases.append(Case(case_id, (flair,), mask))
            info = case.info
            summary.append(
                {
                    "case_id": case_id,
                    "seed": seed,
                    "lesions": info["lesions"],
                    "mimics": info["mimics"],
                    "scanner": info["scanner"],
                    "ti_ms": info["ti_ms"],
                }
            )
        config = dataclasses.asdict(cfg)
        config.pop("params", None)  # recorded in full under "params"
        meta = {"config": config, "params": params.to_dict(), "cases": summary}
        atomic_write_text(tmp / "phantom.json", json.dumps(meta, indent=1))
        write_manifest(tmp / "cases.csv", cases)
        if preview:
            write_preview(tmp / "cases.csv", tmp / "preview.png")
    return out_dir / "cases.csv"


class DrawnCase(Protocol):
    """A rendered case of a template-free family: images, mask and a JSON-able summary."""

    flair: nib.Nifti1Image
    mask: nib.Nifti1Image
    info: dict[str, Any]


def write_drawn_dataset(
    out_dir: Path,
    cfg: PhantomConfig,
    family: str,
    make_case: Callable[[int], tuple[DrawnCase, dict[str, Any]]],
    preview: bool = False,
    progress: bool = True,
    memory_limit_gib: float | None = None,
    overwrite: bool = False,
    need_bytes: float | None = None,
) -> Path:
    """Write a data set of a family without parameters (B, C): A's files and folder rule.

    Case ``i`` is ``case_{i:03d}`` made by ``make_case(case_seed(cfg.seed, i))``. The
    config is checked and ``out_dir`` follows the output-folder rule before anything
    is written; the data set is built in a temporary folder and moved into place when
    complete: the case folders, ``phantom.json`` (family, config and each case's info
    with its ``draw``) and ``cases.csv`` last.

    Args:
        out_dir: Output folder.
        cfg: The data set config (``params`` must be empty).
        family: The family's name (``"b"``, ``"c"``).
        make_case: Seed -> (rendered case, JSON-able record of its draw).
        preview: Also write ``preview.png``.
        progress: Show a progress bar.
        memory_limit_gib: Refuse when one case needs more memory (GiB); default half of
            the available memory.
        overwrite: Replace an earlier phantom data set made with other settings.
        need_bytes: Memory one case needs (:func:`check_phantom_config`).

    Returns:
        The manifest path ``out_dir/cases.csv``.

    Raises:
        InputError: ``out_dir`` is refused by the output-folder rule (nothing written).
        ConfigError: ``cfg.params`` is set (they are family A's parameters), or the
            config is invalid (nothing written).
    """
    out_dir = Path(out_dir)
    if cfg.params:
        raise ConfigError(f"phantom.params are family A's parameters; family {family} takes none.")
    check_phantom_config(cfg, memory_limit_gib, need_bytes)
    key = config_digest({"phantom": dataclasses.asdict(cfg), "preview": preview})
    check_output_dir(out_dir, "phantom", overwrite=overwrite, key=key)
    cases, summary = [], []
    with output_dir(out_dir, "phantom", key) as tmp:
        for i in track(range(cfg.n_cases), f"phantom cases (family {family})", enabled=progress):
            case_id = f"case_{i:03d}"
            case, draw = make_case(case_seed(cfg.seed, i))
            folder = tmp / case_id
            flair, mask = folder / "flair.nii.gz", folder / "mask.nii.gz"
            save_nifti(flair, case.flair.dataobj, case.flair.affine, dtype=np.int16)
            save_nifti(mask, case.mask.dataobj, case.mask.affine, dtype=np.uint8)
            cases.append(Case(case_id, (flair,), mask))
            summary.append({"case_id": case_id, **case.info, "draw": draw})
        meta = {"family": family, "config": dataclasses.asdict(cfg), "cases": summary}
        atomic_write_text(tmp / "phantom.json", json.dumps(meta, indent=1, default=_plain))
        write_manifest(tmp / "cases.csv", cases)
        if preview:
            write_preview(tmp / "cases.csv", tmp / "preview.png")
    return out_dir / "cases.csv"


def _plain(value: Any) -> Any:
    """JSON form of NumPy scalars and arrays."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON-able: {type(value)}")


def write_preview(
    csv_path: Path, out_png: Path | None = None, max_cases: int = 24, columns: int = 6
) -> Path:
    """One axial slice per case with the ground-truth contours, as a PNG grid.

    Works for any data set manifest (not only phantoms). The slice shown is the axial
    (RAS z) slice with the most mask voxels, or the middle slice when there is no mask.

    Args:
        csv_path: ``cases.csv`` (the ``flair`` column is shown).
        out_png: Output picture; default ``preview.png`` beside the manifest.
        max_cases: Show at most this many cases (the first ones).
        columns: Panels per row.

    Returns:
        The written path.
    """
    csv_path = Path(csv_path)
    out_png = Path(out_png) if out_png is not None else csv_path.parent / "preview.png"
    cases = read_manifest(csv_path, ("flair",), require_mask=False)[:max_cases]
    n = len(cases)
    cols = min(columns, n)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(3.2 * cols, 3.6 * rows))
    FigureCanvasAgg(fig)
    axs = fig.subplots(rows, cols, squeeze=False)
    for ax in axs.ravel():
        ax.axis("off")
    for ax, case in zip(axs.ravel(), cases, strict=False):
        img = nib.as_closest_canonical(nib.load(str(case.images[0])))
        data = np.asarray(img.dataobj, dtype=np.float32)
        mask = None
        if case.mask is not None:
            mimg = nib.as_closest_canonical(nib.load(str(case.mask)))
            mask = np.asarray(mimg.dataobj) > 0
        if mask is not None and mask.any():
            z = int(np.argmax(mask.sum(axis=(0, 1))))
            n_les = ndi.label(mask, structure=np.ones((3, 3, 3)))[1]
            title = f"{case.case_id}: {n_les} lesions"
        else:
            z = data.shape[2] // 2
            title = f"{case.case_id}: no lesion"
        sl = data[:, :, z].T
        vals = data[data > 0]
        vmax = 2.0 * float(np.median(vals)) if vals.size else 1.0  # ~ 2 x WM for FLAIR
        zooms = img.header.get_zooms()[:3]
        ax.imshow(sl, cmap="gray", origin="lower", vmin=0, vmax=vmax, aspect=zooms[1] / zooms[0])
        if mask is not None and mask[:, :, z].any():
            ax.contour(mask[:, :, z].T.astype(float), levels=[0.5], colors="r", linewidths=0.7)
        ax.set_title(f"{plain_text(title)} (z={z})", fontsize=8, **PLAIN)
    fig.suptitle(
        "FLAIR (window 0 to 2 x brain median), axial slice with the most lesion voxels; "
        "red: ground-truth contour",
        fontsize=9,
    )
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=90, format="png")
    return atomic_write_bytes(out_png, buffer.getvalue())
