"""``lesionuq demo``: a phantom data set and the method on it, on a CPU, in <= 15 minutes.

Two modes (:func:`demo_plan`):

- default, the *scorer-only* protocol with the shipped reference U-Net
  (:mod:`lesionuq.segmentation.reference`, config ``demo_reference.yaml``): phantom cases
  on the 1.5 mm grid with the quality bench's lesion load (``OUT/data``), each
  MC-sampled once with the reference U-Net into a 4-D stack of T probability maps
  (``OUT/samples``: one ``CASE.nii.gz`` per case and a manifest with a ``samples``
  column, :func:`sample_with_reference`), then the samples protocol of
  :mod:`lesionuq.samples` (``OUT/run``): no U-Net is trained, every fold's scorers learn
  from all its non-test cases. Each fold's model folder then receives the reference
  U-Net as its ``segmenter.pt``, so ``lesionuq predict --model OUT/run/fold_K --image
  SCAN`` segments and scores a new scan out of the box.
- ``full``: the paper's protocol (config ``demo.yaml``: a U-Net trained per fold on the
  2 mm grid, ``OUT/full/data`` and ``OUT/full/run``), the demo of earlier releases.

Why the default differs from the paper: 15 CPU minutes train a U-Net to a Dice of ~0.44
only, and each fold's scorers then learn from ~50 lesions, far from the regime where the
GCNN earns its place (hundreds of validation lesions, Dice >= 0.65), which the paper's
protocol reaches on a CPU in ~2 h (``benchmarks/quality.py``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np
import torch

from lesionuq.config import ExperimentConfig, PreprocessConfig, SamplingConfig, config_digest
from lesionuq.data import phantom  # through the module: tests replace make_phantom_dataset there
from lesionuq.data.preprocess import preprocess
from lesionuq.errors import ConfigError, InputError
from lesionuq.io import Case, load_case, read_manifest, write_manifest
from lesionuq.outputs import add_written, check_output_dir, output_dir
from lesionuq.parallel import map_cases
from lesionuq.pipeline.evaluate import ExperimentResult
from lesionuq.pipeline.experiment import run_experiment
from lesionuq.rundir import digest_of, read_stamp, write_stamp
from lesionuq.segmentation.reference import (
    load_reference_unet,
    reference_preprocess,
    reference_weights_path,
)
from lesionuq.segmentation.sampling import mc_samples

if TYPE_CHECKING:
    from lesionuq.segmentation.unet import UNet3D

__all__ = [
    "DemoPlan",
    "bundled_config",
    "demo_plan",
    "demo_workers",
    "run_demo",
    "sample_with_reference",
]

#: Bundled config of each demo mode.
DEMO_CONFIGS = {"samples": "demo_reference", "unet": "demo"}


def bundled_config(name: str = "demo") -> ExperimentConfig:
    """A config shipped with the package.

    Args:
        name: ``"demo"`` (the paper's protocol on a CPU: ``demo --full`` and the default
            of ``experiment``), ``"demo_reference"`` (the default demo: scorer-only with
            the reference U-Net), ``"quality"``, ``"paper"`` or ``"families"``.
    """
    ref = resources.files("lesionuq") / "configs" / f"{name}.yaml"
    if not ref.is_file():
        raise ValueError(
            f"no bundled config {name!r} (available: demo, demo_reference, quality, paper)."
        )
    with resources.as_file(ref) as path:
        return ExperimentConfig.from_yaml(path)


@dataclass(frozen=True)
class DemoPlan:
    """What a demo run does and where it writes.

    Attributes:
        protocol: ``"samples"`` (default: the reference U-Net samples each case once, the
            scorers of every fold learn from all non-test cases) or ``"unet"`` (``full``:
            the paper's protocol, a U-Net trained per fold).
        cfg: The config.
        data: Folder of the phantom data set.
        samples: Folder of the sample stacks and their manifest (``"samples"`` only).
        run: The run directory.
    """

    protocol: str
    cfg: ExperimentConfig
    data: Path
    samples: Path | None
    run: Path


def demo_plan(
    out: Path = Path("demo"), full: bool = False, cfg: ExperimentConfig | None = None
) -> DemoPlan:
    """The demo's protocol, config and folders (nothing is written).

    Args:
        out: The demo's folder.
        full: The paper's protocol (U-Net per fold) instead of the scorer-only default.
        cfg: A config replacing the mode's bundled one (``demo_reference.yaml`` by
            default, ``demo.yaml`` with ``full``).

    Raises:
        ConfigError: The scorer-only mode with a config whose grid or sequences are not
            the reference U-Net's (1.5 mm, 112 x 128 x 112, FLAIR).
    """
    out = Path(out)
    protocol = "unet" if full else "samples"
    cfg = cfg or bundled_config(DEMO_CONFIGS[protocol])
    if full:
        return DemoPlan(protocol, cfg, out / "full" / "data", None, out / "full" / "run")
    ref = reference_preprocess()
    if tuple(cfg.sequences) != ("flair",) or cfg.preprocess != ref:
        raise ConfigError(
            "the demo's scorer-only mode samples with the reference U-Net, which takes FLAIR "
            f"on a {ref.spacing[0]} mm grid of {'x'.join(map(str, ref.shape))} voxels; this "
            f"config has sequences {list(cfg.sequences)} and preprocess spacing "
            f"{list(cfg.preprocess.spacing)}, shape {list(cfg.preprocess.shape)} (use "
            "--full for another grid)."
        )
    return DemoPlan(protocol, cfg, out / "data", out / "samples", out / "run")


def demo_workers(
    workers: int | str | None,
    cfg: ExperimentConfig,
    cpus: int | None = None,
    cuda: bool | None = None,
    cpu_only: bool = False,
) -> int | None:
    """How many single-threaded worker processes the demo uses (None: this process).

    ``"auto"`` gives one per CPU core, at most one per fold, when the machine has at
    least 2 cores and the run is on a CPU (``cfg.device`` "cpu", or "auto" without
    CUDA); on a GPU, or on 1 core, everything runs in this process. Work that runs on
    the CPU whatever the device (``cpu_only``: the samples protocol's stages, whose
    scorer fits are most of the demo) gets the CPU workers on a GPU machine too: on an
    H200 machine with 16 cores the demo's fits otherwise ran one after another.
    On a 2-core AVX2 CPU two folds side by side, one thread each, trained 1.14x faster
    than one fold on both threads, and the scorer fits ran 2 at a time (the demo took
    13 min 46 s there; see :func:`lesionuq.pipeline.train.stage_train`).

    Args:
        workers: ``"auto"``, a count (1 or None: no workers), or its text (``"2"``).
        cfg: The demo's config (folds, device).
        cpus: Cores to plan for (default ``os.cpu_count()``).
        cuda: Whether CUDA is available (default: ask torch).
        cpu_only: The work runs on the CPU whatever ``cfg.device``.

    Raises:
        InputError: ``workers`` is neither "auto" nor a positive whole number.
    """
    if workers is None:
        return None
    if isinstance(workers, str) and workers.strip().lower() != "auto":
        try:
            workers = int(workers)
        except ValueError:
            raise InputError(
                f"workers must be 'auto' or a whole number, got {workers!r}."
            ) from None
    if isinstance(workers, int):
        if workers < 1:
            raise InputError(f"workers must be at least 1, got {workers}.")
        return workers if workers > 1 else None
    if cuda is None:
        cuda = torch.cuda.is_available()
    on_gpu = not cpu_only and (cfg.device == "cuda" or (cfg.device == "auto" and cuda))
    n = min(cpus or os.cpu_count() or 1, cfg.folds)
    return n if n > 1 and not on_gpu else None


def run_demo(
    out: Path = Path("demo"),
    cfg: ExperimentConfig | None = None,
    progress: bool = True,
    workers: int | str | None = "auto",
    full: bool = False,
) -> ExperimentResult:
    """Generate the phantom data set and run the demo's protocol on it (:func:`demo_plan`).

    Default: phantom cases (``OUT/data``), one MC sampling of each with the reference
    U-Net (``OUT/samples``, :func:`sample_with_reference`), the samples protocol
    (``OUT/run``), and the reference U-Net copied into each fold as ``segmenter.pt``
    (``predict`` then works on a new scan). ``full``: the paper's protocol with a U-Net
    trained per fold (``OUT/full/data``, ``OUT/full/run``). Every step is skipped when
    its outputs exist for the same settings, so a second call only re-evaluates.

    Args:
        out: Folder for the data and the run.
        cfg: The config; default the mode's bundled one (:func:`demo_plan`).
        progress: Show progress bars.
        workers: Worker processes of a local Dask cluster for the per-scan stages, the
            folds' training and the scorer fits (:func:`demo_workers`; default
            ``"auto"``: one per core on a CPU-only machine). The results do not depend
            on it, up to the float rounding of multi-threaded convolutions.
        full: Run the paper's protocol instead of the scorer-only default.

    Returns:
        The experiment's result (tables and report path).
    """
    plan = demo_plan(out, full, cfg)
    n_workers = demo_workers(workers, plan.cfg)
    stamp = plan.data / "stamp.json"
    digest = config_digest(plan.cfg.phantom)
    stamp_content = read_stamp(stamp)
    if stamp_content is None or stamp_content.get("digest") != digest:
        phantom.make_phantom_dataset(
            plan.data, plan.cfg.phantom, preview=True, progress=progress, overwrite=True
        )  # the demo's own data folder: an earlier demo's data is replaced
        write_stamp(stamp, digest)
        add_written(plan.data, [stamp.name])
    manifest = plan.data / "cases.csv"
    if plan.samples is not None:
        manifest = sample_with_reference(
            manifest, plan.samples, plan.cfg, progress=progress, workers=n_workers
        )
        # the samples protocol's stages (maps onto the grid, graphs, scorer fits) are CPU work
        n_workers = demo_workers(workers, plan.cfg, cpu_only=True)
    result = run_experiment(manifest, plan.run, plan.cfg, progress=progress, workers=n_workers)
    assert result is not None
    if plan.samples is not None:
        _install_reference_unet(plan.run, plan.cfg.folds)
    return result


def _install_reference_unet(run: Path, folds: int) -> None:
    """Copy the reference U-Net into every fold as ``segmenter.pt`` (predict uses it)."""
    src = reference_weights_path()
    written = []
    for k in range(folds):
        dest = Path(run) / f"fold_{k}" / "segmenter.pt"
        if not dest.is_file() or dest.read_bytes() != src.read_bytes():
            tmp = dest.with_name(".tmp-segmenter.pt")
            shutil.copyfile(src, tmp)
            os.replace(tmp, dest)
        written.append(f"fold_{k}/segmenter.pt")
    add_written(run, written)


@dataclass(frozen=True)
class _SampleJob:
    """One case of :func:`sample_with_reference`: the case, its stack, the settings."""

    case: Case
    dest: Path
    preprocess: PreprocessConfig
    sampling: SamplingConfig
    device: str


def sample_with_reference(
    data: Path,
    out: Path,
    cfg: ExperimentConfig,
    progress: bool = True,
    workers: int | None = None,
) -> Path:
    """MC-sample every case of a manifest once with the reference U-Net.

    Each case is preprocessed onto the reference grid (``cfg.preprocess``), sampled
    ``cfg.sampling.n_samples`` times (:func:`lesionuq.segmentation.sampling.mc_samples`,
    dropout masks from ``cfg.sampling.seed``) and written as ``out/CASE.nii.gz``, a 4-D
    stack (X, Y, Z, T) of foreground probabilities on the preprocessed grid, stored as
    16-bit integers with a NIfTI scale factor (steps of 1/65535 of the stack's range;
    float32 stacks took ~8x longer to compress). ``out/cases.csv`` lists the cases with
    their image, mask and ``samples`` columns, ready for the samples protocol.

    Skipped when ``out`` already holds the stacks of the same data, weights and
    settings; ``out`` follows the output-folder rule (:mod:`lesionuq.outputs`).

    Args:
        data: The phantom manifest (``cases.csv``).
        out: Folder of the stacks and their manifest.
        cfg: The demo config (``preprocess``, ``sampling``, ``device``).
        progress: Show a progress bar.
        workers: Single-threaded worker processes (None: this process).

    Returns:
        The manifest with the ``samples`` column (``out/cases.csv``).
    """
    cases = read_manifest(data, cfg.sequences, require_mask=True)
    weights = hashlib.sha256(reference_weights_path().read_bytes()).hexdigest()
    key = digest_of(
        [(c.case_id, *map(str, c.images), str(c.mask)) for c in cases],
        (read_stamp(Path(data).parent / "stamp.json") or {}).get("digest"),
        weights,
        cfg.preprocess,
        cfg.sampling,
    )
    out = Path(out)
    manifest = out / "cases.csv"
    if (read_stamp(out / "stamp.json") or {}).get("digest") == key and manifest.is_file():
        return manifest
    check_output_dir(out, "samples", overwrite=True, inputs=[data], key=key)
    with output_dir(out, "samples", key) as tmp:
        jobs = {
            c.case_id: _SampleJob(c, tmp / f"{c.case_id}.nii.gz", cfg.preprocess, cfg.sampling,
                                  cfg.device)
            for c in cases
        }  # fmt: skip
        map_cases(
            _sample_case, jobs, workers=workers, progress=progress, desc="reference U-Net, MC"
        ).raise_failed("case")
    final = [
        Case(c.case_id, c.images, c.mask, c.ignore, c.extra, out / f"{c.case_id}.nii.gz")
        for c in cases
    ]
    write_manifest(manifest, final, cfg.sequences)  # paths relative to ``out``
    write_stamp(out / "stamp.json", key)  # last: the stacks and manifest are complete
    add_written(out, [manifest.name, "stamp.json"])
    return manifest


def _sample_case(job: _SampleJob) -> None:
    """Preprocess, MC-sample with the reference U-Net and write one stack (a map_cases task)."""
    images, mask = load_case(job.case)
    pre = preprocess(images, mask, job.preprocess)
    model = _reference_unet(job.device)
    batches = [b.float().cpu().numpy() for b in mc_samples(model, pre.image, job.sampling,
                                                            job.device)]  # fmt: skip
    stack = np.moveaxis(np.concatenate(batches, axis=0), 0, -1)  # (X, Y, Z, T)
    img = nib.Nifti1Image(np.clip(stack, 0.0, 1.0), pre.affine)
    img.set_data_dtype(np.uint16)  # nibabel scales [min, max] onto 0..65535
    img.header.set_xyzt_units("mm")
    img.set_qform(pre.affine, code=1)
    img.set_sform(pre.affine, code=1)
    part = job.dest.with_name(f".tmp-{job.dest.name}")
    nib.save(img, part)
    os.replace(part, job.dest)


_MODELS: dict[str, UNet3D] = {}


def _reference_unet(device: str) -> UNet3D:
    """The reference U-Net, loaded once per process."""
    if device not in _MODELS:
        _MODELS[device] = load_reference_unet(device)
    return _MODELS[device]
