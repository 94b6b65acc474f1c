"""Predict on new scans: segmentation and lesion-wise uncertainty in the scan's own space.

A fitted model folder ``RUN/fold_K`` (``config.yaml``, ``segmenter.pt``,
``scorers/METHOD/``) is applied to one scan (:func:`predict_scan`) or to every case of a
``cases.csv`` (:func:`predict_manifest`)::

    images (input grid) --preprocess--> common grid --MC dropout--> VoxelMaps
        --case_lesions--> labels + LesionSet --gcnn_classif / gcnn_reg--> p_fp, iou_pred
        --to_original--> every output on the INPUT grid (its shape and affine)

Outputs of one scan (folder ``DIR``, built in a temporary folder and moved into place
only when complete, so a failure leaves ``DIR`` as it was):

- ``seg.nii.gz`` (uint8): the union of the lesions below.
- ``lesions.nii.gz``: lesion labels 1..N (nearest-neighbour resampling of the labels;
  a lesion too small to survive on a coarser input grid is put back at the free input
  voxel nearest its centroid, so every table row has at least one voxel).
- ``lesion_uncertainty.nii.gz`` (float32): each lesion's voxels hold its P(FP), 0 elsewhere.
- with ``save_maps``: ``prob``, ``entropy``, ``variance``, ``pcs`` (linear resampling).
- ``lesions.csv``: one row per lesion, sorted by P(FP) descending (:data:`TABLE_COLUMNS`,
  then ``u_METHOD`` for any other fitted scorer found in the model folder).
- ``summary.png``, ``report.html`` (self-contained) and ``prediction.json`` (provenance).

Example:
    >>> res = predict_scan("runs/demo/fold_0", ["flair.nii.gz"], "pred/")
    >>> print(res.summary())
"""

from __future__ import annotations

import base64
import html
import io
import json
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage

from lesionuq import __version__
from lesionuq.config import ExperimentConfig, config_digest
from lesionuq.io import (
    Case,
    InputError,
    atomic_write_text,
    check_threshold,
    csv_text,
    describe_load_error,
    load_case,
    read_manifest,
    save_nifti,
)
from lesionuq.outputs import add_written, check_output_dir, output_dir, start_output
from lesionuq.utils import make_progress, remove_pyg_codegen_files, track

__all__ = [
    "REQUIRED_SCORERS",
    "TABLE_COLUMNS",
    "BatchResult",
    "FittedModel",
    "PredictResult",
    "lesion_rows",
    "load_model",
    "native_labels",
    "predict_manifest",
    "predict_scan",
]

#: Scorers a model folder must hold: P(FP) and the predicted IoU_adj.
REQUIRED_SCORERS = ("gcnn_classif", "gcnn_reg")
#: Columns of ``lesions.csv`` (one row per lesion), in order.
TABLE_COLUMNS = (
    "lesion_id",
    "volume_ml",
    "centroid_x_mm",
    "centroid_y_mm",
    "centroid_z_mm",
    "p_fp",
    "iou_pred",
    "entropy_mean",
    "variance_mean",
    "pcs_mean",
    "review",
)
MAP_NAMES = ("prob", "entropy", "variance", "pcs")
_STAMP = "prediction.json"


# --------------------------------------------------------------------------- model


@dataclass
class FittedModel:
    """A loaded model folder: config, MC-dropout U-Net and fitted lesion scorers.

    Attributes:
        folder: The model folder (``RUN/fold_K``).
        cfg: The resolved experiment config of the run.
        segmenter: The U-Net (``lesionuq.segmentation.unet.UNet3D``).
        scorers: Fitted scorers by method name; always holds :data:`REQUIRED_SCORERS`.
        device: Device of the U-Net (``"auto"``, ``"cpu"`` or ``"cuda"``).
    """

    folder: Path
    cfg: ExperimentConfig
    segmenter: Any
    scorers: dict[str, Any]
    device: str = "auto"

    @property
    def sequences(self) -> tuple[str, ...]:
        """Names of the input sequences, in the order the images must be given."""
        return tuple(self.cfg.sequences)

    def check_images(self, n_images: int) -> None:
        """Raise :class:`InputError` unless ``n_images`` matches the model's sequences."""
        n = len(self.sequences)
        if n_images != n:
            names = ", ".join(self.sequences)
            raise InputError(
                f"{self.folder}: the model expects {n} image(s) ({names}, in that order) "
                f"but {n_images} {'was' if n_images == 1 else 'were'} given."
            )

    def digest(self) -> str:
        """Identity of the model: its folder, config and segmenter file (size, mtime)."""
        st = (self.folder / "segmenter.pt").stat()
        return config_digest(
            {
                "folder": str(self.folder.resolve()),
                "cfg": self.cfg.to_dict(),
                "segmenter": [st.st_size, st.st_mtime_ns],
                "scorers": sorted(self.scorers),
            }
        )


def load_model(
    folder: str | Path, n_images: int | None = None, device: str | None = None
) -> FittedModel:
    """Load a fitted model folder after checking that it is complete.

    Args:
        folder: ``RUN/fold_K`` with ``config.yaml``, ``segmenter.pt`` and
            ``scorers/gcnn_classif`` / ``scorers/gcnn_reg`` (other scorers found under
            ``scorers/`` are loaded too).
        n_images: Number of images that will be given, checked against the model's
            sequences (None: no check).
        device: Device of the U-Net; default the config's, except that a model trained
            with ``device: cuda`` runs on the CPU where no GPU is present.

    Returns:
        The loaded model.

    Raises:
        InputError: Folder missing or incomplete (listing every missing file), unreadable
            config, checkpoint or scorer, or a sequence count that does not match.
    """
    from lesionuq.scorers.base import SCORER_FILE, load_scorer
    from lesionuq.segmentation.train import load_segmenter

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: model folder not found.")
    needed = ["config.yaml", "segmenter.pt"]
    needed += [f"scorers/{m}/{SCORER_FILE}" for m in REQUIRED_SCORERS]
    missing = [name for name in needed if not (folder / name).is_file()]
    if missing:
        raise InputError(
            f"{folder}: incomplete model folder, missing {', '.join(missing)} "
            "(a fold of a finished `lesionuq experiment` run is a model folder)."
        )
    try:
        cfg = ExperimentConfig.from_yaml(folder / "config.yaml")
    except Exception as exc:  # malformed YAML, unknown keys, bad values
        raise InputError(f"{folder / 'config.yaml'}: not a valid config ({exc}).") from None
    device = device or ("auto" if cfg.device == "cuda" else cfg.device)
    model = FittedModel(folder, cfg, None, {}, device)
    if n_images is not None:
        model.check_images(n_images)
    try:
        model.segmenter = load_segmenter(folder / "segmenter.pt", device=device)
    except InputError:
        raise
    except Exception as exc:  # torch raises many types for bad checkpoints
        raise InputError(
            f"{folder / 'segmenter.pt'}: cannot be loaded ({describe_load_error(exc)})."
        ) from None
    in_channels = getattr(getattr(model.segmenter, "cfg", None), "in_channels", None)
    if in_channels is not None and in_channels != len(cfg.sequences):
        raise InputError(
            f"{folder / 'segmenter.pt'}: the U-Net takes {in_channels} sequence(s) but "
            f"config.yaml lists {len(cfg.sequences)}."
        )
    scorer_root = folder / "scorers"
    names = list(REQUIRED_SCORERS)
    names += sorted(
        p.name
        for p in scorer_root.iterdir()
        if p.name not in REQUIRED_SCORERS and (p / SCORER_FILE).is_file()
    )
    for name in names:
        try:
            model.scorers[name] = load_scorer(name, scorer_root / name)
        except Exception as exc:
            if name in REQUIRED_SCORERS and isinstance(exc, InputError):
                raise
            if name in REQUIRED_SCORERS:
                raise InputError(
                    f"{scorer_root / name}: cannot load scorer ({describe_load_error(exc)})."
                ) from None
            warnings.warn(
                f"{scorer_root / name}: skipped, cannot load ({describe_load_error(exc)}).",
                stacklevel=2,
            )
    remove_pyg_codegen_files()
    return model


# --------------------------------------------------------------------------- results


@dataclass
class PredictResult:
    """What :func:`predict_scan` wrote.

    Attributes:
        out: The output folder.
        table: ``lesions.csv`` as a DataFrame (sorted by ``p_fp`` descending).
        threshold: P(FP) at or above which a lesion is flagged for review.
        model: The model folder.
        images: The input scans.
        case_id: Name of the case (default: the first image's file name).
        seconds: Wall time of the prediction.
    """

    out: Path
    table: pd.DataFrame
    threshold: float
    model: Path
    images: tuple[Path, ...]
    case_id: str
    seconds: float = 0.0

    @property
    def n_lesions(self) -> int:
        """Number of lesions found."""
        return len(self.table)

    @property
    def n_review(self) -> int:
        """Number of lesions with ``p_fp >= threshold``."""
        return int(self.table["review"].sum()) if len(self.table) else 0

    def summary(self, max_rows: int = 10) -> str:
        """A few lines for the terminal: counts, the most doubtful lesions, the folder."""
        if self.n_lesions == 0:
            return (
                f"{self.case_id}: no lesion found; wrote an empty table and zero maps to "
                f"{self.out} ({self.seconds:.1f} s)."
            )
        head = (
            f"{self.case_id}: {self.n_lesions} lesion(s), {self.n_review} to review "
            f"(P(FP) >= {self.threshold:g}); wrote {self.out} ({self.seconds:.1f} s)."
        )
        shown = self.table.head(max_rows)[
            ["lesion_id", "volume_ml", "p_fp", "iou_pred", "review"]
        ].to_string(index=False, float_format=lambda v: f"{v:.3f}")
        more = (
            f"\n... {self.n_lesions - max_rows} more in lesions.csv"
            if (self.n_lesions > max_rows)
            else ""
        )
        return f"{head}\n{shown}{more}"


@dataclass
class BatchResult:
    """What :func:`predict_manifest` wrote.

    Attributes:
        out: The output folder (one sub-folder per case and ``lesions.csv``).
        table: All cases' lesions with a leading ``case_id`` column.
        results: One :class:`PredictResult` per case (None for a case reused from an
            earlier identical run).
    """

    out: Path
    table: pd.DataFrame
    results: dict[str, PredictResult | None] = field(default_factory=dict)

    def summary(self) -> str:
        """One line: cases, lesions and lesions to review."""
        n_review = int(self.table["review"].sum()) if len(self.table) else 0
        return (
            f"{len(self.results)} case(s), {len(self.table)} lesion(s), {n_review} to review; "
            f"wrote {self.out}."
        )


# --------------------------------------------------------------------------- native grid


def native_labels(
    labels: np.ndarray, grid_affine: np.ndarray, transform: Any, native_affine: np.ndarray
) -> np.ndarray:
    """Lesion labels on the input (native) grid; every lesion keeps at least one voxel.

    The labels are resampled with nearest neighbour (``to_original(order=0)``). A lesion
    that vanishes (smaller than a native voxel) is put back at the free native voxel
    nearest, in mm, to its centroid.

    Args:
        labels: (X, Y, Z) int labels 1..N on the preprocessed grid.
        grid_affine: (4, 4) affine of the preprocessed grid.
        transform: The ``GridTransform`` from preprocessing.
        native_affine: (4, 4) affine of the input scan.

    Returns:
        (X', Y', Z') int32 labels on the input grid, holding every id 1..N.
    """
    from lesionuq.data.preprocess import to_original

    n = int(labels.max()) if labels.size else 0
    out = np.rint(to_original(labels.astype(np.float32), transform, order=0)).astype(np.int32)
    if n == 0:
        return out
    present = np.zeros(n + 1, dtype=bool)
    present[np.unique(out)] = True
    lost = [k for k in range(1, n + 1) if not present[k]]
    if not lost:
        return out
    centroids = ndimage.center_of_mass(labels > 0, labels, lost)
    to_native = np.linalg.inv(native_affine) @ grid_affine
    spacing = np.linalg.norm(native_affine[:3, :3], axis=0)
    offsets = np.stack(np.meshgrid(*[np.arange(-2, 3)] * 3, indexing="ij"), -1).reshape(-1, 3)
    for k, c in zip(lost, centroids, strict=True):
        v = (to_native @ np.array([*c, 1.0]))[:3]
        base = np.clip(np.rint(v), 0, np.array(out.shape) - 1).astype(np.int64)
        cand = base + offsets
        ok = np.all((cand >= 0) & (cand < np.array(out.shape)), axis=1)
        cand = cand[ok]
        dist = np.linalg.norm((cand - v) * spacing, axis=1)
        cand = cand[np.argsort(dist, kind="stable")]
        free = [tuple(p) for p in cand if out[tuple(p)] == 0]
        out[free[0] if free else tuple(cand[0])] = k
    return out


def lesion_rows(
    labels_grid: np.ndarray,
    labels_native: np.ndarray,
    native_affine: np.ndarray,
    maps: Any,
    p_fp: np.ndarray,
    iou_pred: np.ndarray,
    threshold: float,
) -> pd.DataFrame:
    """The ``lesions.csv`` table of one scan (see :data:`TABLE_COLUMNS`).

    Volumes and centroids are measured on the input grid (``labels_native`` and its
    affine, so they match ``lesions.nii.gz``); the mean voxel measures on the
    preprocessed grid where the maps were computed.

    Args:
        labels_grid: (X, Y, Z) labels 1..N on the preprocessed grid.
        labels_native: (X', Y', Z') the same labels on the input grid.
        native_affine: (4, 4) affine of the input grid.
        maps: ``VoxelMaps`` on the preprocessed grid.
        p_fp: (N,) P(FP) of lesions 1..N.
        iou_pred: (N,) predicted IoU_adj of lesions 1..N.
        threshold: ``review = p_fp >= threshold``.

    Returns:
        N rows sorted by ``p_fp`` descending (ties by ``lesion_id``).
    """
    n = len(p_fp)
    if n == 0:
        return _empty_table()
    ids = np.arange(1, n + 1)
    voxel_ml = abs(float(np.linalg.det(native_affine[:3, :3]))) / 1000.0
    counts = np.bincount(labels_native.ravel(), minlength=n + 1)[1:]
    com = np.asarray(ndimage.center_of_mass(labels_native > 0, labels_native, ids)).reshape(n, 3)
    world = com @ native_affine[:3, :3].T + native_affine[:3, 3]
    table = pd.DataFrame(
        {
            "lesion_id": ids,
            "volume_ml": counts * voxel_ml,
            "centroid_x_mm": world[:, 0],
            "centroid_y_mm": world[:, 1],
            "centroid_z_mm": world[:, 2],
            "p_fp": np.asarray(p_fp, dtype=np.float64),
            "iou_pred": np.asarray(iou_pred, dtype=np.float64),
            "entropy_mean": ndimage.mean(maps.entropy, labels_grid, ids),
            "variance_mean": ndimage.mean(maps.variance, labels_grid, ids),
            "pcs_mean": ndimage.mean(maps.pcs, labels_grid, ids),
            "review": np.asarray(p_fp) >= threshold,
        }
    )
    order = np.lexsort((table["lesion_id"].to_numpy(), -table["p_fp"].to_numpy()))
    return table.iloc[order].reset_index(drop=True)


def _empty_table() -> pd.DataFrame:
    table = pd.DataFrame({c: pd.Series(dtype=np.float64) for c in TABLE_COLUMNS})
    return table.astype({"lesion_id": np.int64, "review": bool})


# --------------------------------------------------------------------------- predict


def _as_paths(images: str | Path | Sequence[str | Path]) -> tuple[Path, ...]:
    if isinstance(images, str | Path):
        return (Path(images),)
    return tuple(Path(p) for p in images)


def _case_name(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


class _Steps:
    """A progress bar over the named steps of one prediction (or nothing)."""

    def __init__(self, steps: Sequence[str], enabled: bool, title: str) -> None:
        self.steps, self.enabled, self.title = list(steps), enabled, title

    @contextmanager
    def run(self) -> Iterator[Callable[[str], None]]:
        if not self.enabled:
            yield lambda name: None
            return
        with make_progress() as bar:
            task = bar.add_task(self.title, total=len(self.steps), info=self.steps[0])

            def step(name: str) -> None:
                bar.update(task, advance=1, info=name)

            yield step


def predict_scan(
    model: str | Path | FittedModel,
    images: str | Path | Sequence[str | Path],
    out: str | Path,
    threshold: float = 0.5,
    save_maps: bool = False,
    progress: bool = True,
    case_id: str | None = None,
    overwrite: bool = False,
) -> PredictResult:
    """Segment one scan and score each lesion's uncertainty, in the scan's own space.

    Args:
        model: A model folder (``RUN/fold_K``) or a :class:`FittedModel`.
        images: One scan per model sequence, in the config's order, on the same grid
            (any orientation, voxel size and field of view).
        out: Output folder ``DIR`` (replaced as a whole on success).
        threshold: ``review`` is ``p_fp >= threshold``.
        save_maps: Also write the ``prob``, ``entropy``, ``variance`` and ``pcs`` maps.
        progress: Show a progress bar over the steps.
        case_id: Name used in the table and report (default: first image's file name).
        overwrite: Replace an earlier prediction in ``out`` (see :mod:`lesionuq.outputs`).

    Returns:
        The result (its :meth:`PredictResult.summary` is what the CLI prints).

    Raises:
        InputError: Missing or unreadable file, empty, 4-D or non-finite image, images on
            different grids, wrong image count, incomplete model folder. ``out`` is
            then left untouched.
    """
    from lesionuq.data.preprocess import preprocess, to_original
    from lesionuq.lesions.graphs import case_lesions
    from lesionuq.segmentation.sampling import mc_sample

    t0 = time.perf_counter()
    paths = _as_paths(images)
    if not paths:
        raise InputError("no input image was given.")
    threshold = check_threshold(threshold)
    check_output_dir(out, "prediction", overwrite=overwrite, inputs=paths)
    if not isinstance(model, FittedModel):
        model = load_model(model, n_images=len(paths))
    model.check_images(len(paths))
    cfg = model.cfg
    case_id = case_id or _case_name(paths[0])
    out = Path(out)
    steps = _Steps(
        ["load", "preprocess", "MC dropout", "lesions", "scores", "write"], progress, case_id
    )
    with steps.run() as step:
        imgs, _ = load_case(Case(case_id, paths))
        native = imgs[0]
        native_affine = np.asarray(native.affine, dtype=np.float64)
        native_shape = tuple(native.shape[:3])
        step("preprocess")
        pre = preprocess(imgs, None, cfg.preprocess)
        step("MC dropout")
        maps = mc_sample(model.segmenter, pre.image, cfg.sampling, device=model.device)
        step("lesions")
        labels, lesions = case_lesions(
            maps.seg, pre.image, maps, None, pre.affine, cfg.graphs, case_id
        )
        labels = np.asarray(labels, dtype=np.int32)
        n = len(lesions)
        if int(labels.max(initial=0)) != n:
            raise RuntimeError(
                f"case_lesions returned {n} lesions but labels up to {labels.max()}."
            )
        step("scores")
        scores = _score(model, lesions)
        step("write")
        lab_native = native_labels(labels, pre.affine, pre.transform, native_affine)
        _check_shape(lab_native, native_shape, "lesions")
        table = lesion_rows(
            labels, lab_native, native_affine, maps,
            scores["gcnn_classif"], 1.0 - scores["gcnn_reg"], threshold,
        )  # fmt: skip
        extra = [m for m in scores if m not in REQUIRED_SCORERS]
        for m in extra:
            table[f"u_{m}"] = scores[m][table["lesion_id"].to_numpy() - 1]
        p_lut = np.zeros(n + 1, dtype=np.float32)
        p_lut[1:] = scores["gcnn_classif"]
        native_maps = {}
        if save_maps:
            for name in MAP_NAMES:
                vol = to_original(getattr(maps, name).astype(np.float32), pre.transform, order=1)
                native_maps[name] = _check_shape(vol, native_shape, name).astype(np.float32)

        result = PredictResult(out, table, float(threshold), model.folder, paths, case_id)
        with output_dir(out, "prediction") as tmp:
            save_nifti(tmp / "seg.nii.gz", (lab_native > 0).astype(np.uint8), native_affine)
            save_nifti(
                tmp / "lesions.nii.gz",
                lab_native,
                native_affine,
                dtype=np.uint8 if n < 256 else np.int32,
            )
            save_nifti(tmp / "lesion_uncertainty.nii.gz", p_lut[lab_native], native_affine)
            for name, vol in native_maps.items():
                save_nifti(tmp / f"{name}.nii.gz", vol, native_affine)
            atomic_write_text(tmp / "lesions.csv", csv_text(table))
            png = _summary_png(pre.image[0], labels, scores["gcnn_classif"], table, case_id)
            (tmp / "summary.png").write_bytes(png)
            result.seconds = time.perf_counter() - t0
            atomic_write_text(tmp / "report.html", _report_html(result, png))
            meta = {
                "lesionuq": __version__,
                "case_id": case_id,
                "model": str(model.folder.resolve()),
                "images": [str(p.resolve()) for p in paths],
                "threshold": float(threshold),
                "save_maps": bool(save_maps),
                "n_lesions": n,
                "n_review": result.n_review,
                "seconds": round(result.seconds, 3),
                "input_shape": list(native_shape),
                "input_affine": native_affine.tolist(),
            }
            atomic_write_text(tmp / _STAMP, json.dumps(meta, indent=1) + "\n")
        step("done")
    return result


def _score(model: FittedModel, lesions: Any) -> dict[str, np.ndarray]:
    """Each scorer's uncertainty of lesions 1..N, (N,) float64 (zeros(0) without lesions)."""
    n = len(lesions)
    ids = lesions.table["lesion_id"].to_numpy(dtype=np.int64) if n else np.zeros(0, np.int64)
    if n and sorted(ids.tolist()) != list(range(1, n + 1)):
        raise RuntimeError(f"lesion ids of the table are not 1..{n}.")
    scores: dict[str, np.ndarray] = {}
    for name, scorer in model.scorers.items():
        if n == 0:
            scores[name] = np.zeros(0)
            continue
        try:
            u = np.asarray(scorer.score(lesions), dtype=np.float64)
        except ValueError:
            if name in REQUIRED_SCORERS:
                raise
            continue  # an optional scorer that cannot read these lesions is left out
        if u.shape != (n,):
            raise RuntimeError(f"scorer {name} returned shape {u.shape} for {n} lesions.")
        by_id = np.zeros(n)  # table rows may come in any order: index by lesion id - 1
        by_id[ids - 1] = u
        scores[name] = by_id
    # P(FP) and predicted IoU stay in [0, 1] whatever the scorer's numerics.
    scores["gcnn_classif"] = np.clip(scores["gcnn_classif"], 0.0, 1.0)
    scores["gcnn_reg"] = np.clip(scores["gcnn_reg"], 0.0, 1.0)
    return scores


def _check_shape(vol: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
    if tuple(vol.shape) != tuple(shape):
        raise RuntimeError(f"to_original gave {name} of shape {vol.shape}, expected {shape}.")
    return vol


# --------------------------------------------------------------------------- batch


def predict_manifest(
    model: str | Path | FittedModel,
    cases_csv: str | Path,
    out: str | Path,
    threshold: float = 0.5,
    save_maps: bool = False,
    progress: bool = True,
    overwrite: bool = False,
) -> BatchResult:
    """Predict every case of a ``cases.csv`` (the ``mask`` column is optional and unused).

    Every case's files are checked before anything is written, the model is loaded once,
    and each case is written atomically to ``out/CASE`` (see :func:`predict_scan`); a
    case whose folder holds a prediction with the same model, images and options is
    reused, so an interrupted batch resumes. ``out/lesions.csv`` (all lesions, with a
    leading ``case_id`` column) is written last.

    Args:
        model: A model folder or a :class:`FittedModel`.
        cases_csv: The manifest (``case_id`` and one column per model sequence).
        out: Output folder.
        threshold: ``review`` is ``p_fp >= threshold``.
        save_maps: Also write the voxel maps of every case.
        progress: Show a progress bar over the cases.
        overwrite: Replace an earlier batch made with other settings (see
            :mod:`lesionuq.outputs`); the same settings resume without it.

    Returns:
        The batch result.
    """
    threshold = check_threshold(threshold)
    if not isinstance(model, FittedModel):
        model = load_model(model)
    cases = read_manifest(cases_csv, model.sequences, require_mask=False)
    inputs = [Path(cases_csv), *(p for c in cases for p in c.images)]
    out = Path(out)
    model_digest = model.digest()
    key = config_digest([model_digest, str(Path(cases_csv).resolve()), threshold, save_maps])
    check_output_dir(out, "batch", overwrite=overwrite, inputs=inputs, key=key)
    for case in track(cases, "checking inputs", enabled=progress):
        load_case(Case(case.case_id, case.images))
    start_output(out, "batch", key, dirs=[c.case_id for c in cases])
    results: dict[str, PredictResult | None] = {}
    tables = []
    for case in track(cases, "predict", enabled=progress):
        folder = out / case.case_id
        done = _previous(folder, model_digest, case, threshold, save_maps)
        if done is not None:
            results[case.case_id] = None
            table = done
        else:
            res = predict_scan(
                model, case.images, folder, threshold, save_maps, False, case.case_id, True
            )
            _mark(folder, model_digest, case, threshold, save_maps)
            results[case.case_id] = res
            table = res.table
        table = table.copy()
        table.insert(0, "case_id", case.case_id)
        tables.append(table)
    frames = [t for t in tables if len(t)]
    if frames:
        table = pd.concat(frames, ignore_index=True)
    else:
        table = _empty_table()
        table.insert(0, "case_id", pd.Series(dtype=str))
    atomic_write_text(out / "lesions.csv", csv_text(table))
    add_written(out, ["lesions.csv"])
    return BatchResult(out, table, results)


def _batch_digest(model_digest: str, case: Case, threshold: float, save_maps: bool) -> str:
    return config_digest(
        {
            "model": model_digest,
            "images": [
                [str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in case.images
            ],
            "threshold": float(threshold),
            "save_maps": bool(save_maps),
        }
    )


def _mark(folder: Path, model_digest: str, case: Case, threshold: float, save_maps: bool) -> None:
    digest = _batch_digest(model_digest, case, threshold, save_maps)
    atomic_write_text(folder / ".batch_digest", digest + "\n")
    add_written(folder, [".batch_digest"])


def _previous(
    folder: Path, model_digest: str, case: Case, threshold: float, save_maps: bool
) -> pd.DataFrame | None:
    """The table of an identical earlier prediction in ``folder``, else None."""
    try:
        stored = (folder / ".batch_digest").read_text().strip()
        if stored != _batch_digest(model_digest, case, threshold, save_maps):
            return None
        return pd.read_csv(folder / "lesions.csv")
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------- figures


def _summary_png(
    flair: np.ndarray,
    labels: np.ndarray,
    p_fp: np.ndarray,
    table: pd.DataFrame,
    case_id: str,
    max_panels: int = 4,
) -> bytes:
    """Axial slices through the most doubtful lesions, contours coloured by P(FP).

    Drawn on the preprocessed grid (RAS, isotropic), where axial slices are planes of
    constant z whatever the input orientation.

    Args:
        flair: (X, Y, Z) first sequence, z-scored.
        labels: (X, Y, Z) lesion labels 1..N.
        p_fp: (N,) P(FP) of lesions 1..N.
        table: The lesion table sorted by P(FP) descending.
        case_id: Title.
        max_panels: Number of slices at most.

    Returns:
        PNG bytes.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import colors

    cmap = plt.get_cmap("RdYlGn_r")
    norm = colors.Normalize(0.0, 1.0)
    n = len(p_fp)
    slices: list[int] = []
    if n:
        ids = table["lesion_id"].to_numpy()
        com = ndimage.center_of_mass(labels > 0, labels, ids)
        for c in com:
            z = round(c[2])
            if all(abs(z - s) > 1 for s in slices):
                slices.append(z)
            if len(slices) == max_panels:
                break
    else:
        slices = [flair.shape[2] // 2]
    inside = flair[flair != 0]  # z-scored brain; 0 outside the brain
    lo, hi = np.percentile(inside, [0.5, 99.5]) if inside.size else (0.0, 1.0)
    shown = np.where(flair == 0, lo, flair)  # background black
    fig, axes = plt.subplots(1, len(slices), figsize=(3.6 * len(slices) + 1.0, 4.4), squeeze=False)
    for ax, z in zip(axes[0], slices, strict=True):
        ax.imshow(shown[:, :, z].T, cmap="gray", origin="lower", vmin=lo, vmax=hi)
        lab = labels[:, :, z]
        on_slice = np.unique(lab[lab > 0])
        for k in on_slice:
            colour = cmap(norm(float(p_fp[k - 1])))
            ax.contour((lab == k).T.astype(float), levels=[0.5], colors=[colour], linewidths=1.2)
            xs, ys = np.nonzero(lab == k)
            ax.annotate(
                str(int(k)), (xs.max() + 1.5, ys.max() + 1.5), color=colour, fontsize=8,
                fontweight="bold",
            )  # fmt: skip
        doubtful = sorted(on_slice, key=lambda k: -p_fp[k - 1])[:3]
        names = "\n".join(f"#{k} P(FP) {p_fp[k - 1]:.2f}" for k in doubtful)
        ax.set_title(f"axial z={z}" + (f"\n{names}" if names else ""), fontsize=8)
        ax.text(0.02, 0.02, "R→", transform=ax.transAxes, color="w", fontsize=7)
        ax.set_axis_off()
    if n == 0:
        axes[0][0].set_title("no lesion found", fontsize=10)
    fig.suptitle(f"{case_id}: {n} lesion(s), contours coloured by P(FP)", fontsize=10, y=1.06)
    sm = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
    fig.colorbar(sm, ax=axes[0].tolist(), fraction=0.03, pad=0.02, label="P(FP)")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _report_html(result: PredictResult, png: bytes) -> str:
    """A self-contained HTML page: the summary figure (base64) and the lesion table.

    The page shows the :data:`TABLE_COLUMNS`; the other scorers' ``u_*`` columns are in
    ``lesions.csv`` only.
    """
    table = result.table[list(TABLE_COLUMNS)]
    esc = html.escape
    head = "".join(f"<th>{esc(str(c))}</th>" for c in table.columns)
    rows = []
    for rec in table.itertuples(index=False):
        cells = []
        for c, v in zip(table.columns, rec, strict=True):
            if isinstance(v, bool | np.bool_):
                text = "yes" if v else ""
            elif isinstance(v, float | np.floating):
                text = f"{v:.1f}" if c.startswith("centroid") else f"{v:.3g}"
            else:
                text = str(v)
            cells.append(f"<td>{esc(text)}</td>")
        cls = ' class="review"' if rec.review else ""
        rows.append(f"<tr{cls}>{''.join(cells)}</tr>")
    if not rows:
        body = "<p><b>No lesion found.</b> The segmentation and the maps are empty.</p>"
    else:
        body = f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    img = base64.b64encode(png).decode("ascii")
    scans = "<br>".join(esc(str(p.resolve())) for p in result.images)
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>lesionuq: {esc(result.case_id)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: right; }}
th {{ background: #eee; }}
tr.review td {{ background: #fde0dc; font-weight: bold; }}
.meta td {{ text-align: left; border: none; }}
</style></head><body>
<h1>Lesion-wise uncertainty: {esc(result.case_id)}</h1>
<table class="meta">
<tr><td>scan</td><td>{scans}</td></tr>
<tr><td>model</td><td>{esc(str(result.model.resolve()))}</td></tr>
<tr><td>lesions</td><td>{result.n_lesions}, of which {result.n_review} to review
(P(FP) &ge; {result.threshold:g}, highlighted)</td></tr>
<tr><td>lesionuq</td><td>{esc(__version__)}, {result.seconds:.1f} s</td></tr>
</table>
<p><img alt="summary" src="data:image/png;base64,{img}" style="max-width: 100%"></p>
<h2>Lesions (sorted by P(FP), most doubtful first)</h2>
{body}
<p style="font-size: 0.8em">p_fp: probability that the lesion is a false positive
(gcnn_classif); iou_pred: predicted IoU_adj with the true lesion (gcnn_reg);
entropy/variance/pcs_mean: mean voxel entropy, variance and PCS confidence over the
lesion; volume and centroid (world mm) on the input scan's grid.</p>
</body></html>
"""
