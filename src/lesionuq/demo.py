"""``lesionuq demo``: a phantom data set and the paper's whole protocol on it, on a CPU."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import torch

from lesionuq.config import ExperimentConfig, config_digest
from lesionuq.errors import InputError
from lesionuq.experiment import ExperimentResult, run_experiment
from lesionuq.outputs import add_written
from lesionuq.rundir import read_stamp, write_stamp

__all__ = ["bundled_config", "demo_workers", "run_demo"]


def bundled_config(name: str = "demo") -> ExperimentConfig:
    """A config shipped with the package: ``"demo"``, ``"quality"`` or ``"paper"``."""
    ref = resources.files("lesionuq") / "configs" / f"{name}.yaml"
    if not ref.is_file():
        raise ValueError(f"no bundled config {name!r} (available: demo, quality, paper).")
    with resources.as_file(ref) as path:
        return ExperimentConfig.from_yaml(path)


def demo_workers(
    workers: int | str | None,
    cfg: ExperimentConfig,
    cpus: int | None = None,
    cuda: bool | None = None,
) -> int | None:
    """How many single-threaded worker processes the demo uses (None: this process).

    ``"auto"`` gives one per CPU core, at most one per fold, when the machine has at
    least 2 cores and the run is on a CPU (``cfg.device`` "cpu", or "auto" without
    CUDA); on a GPU, or on 1 core, everything runs in this process.
    On a 2-core AVX2 CPU two folds side by side, one thread each, trained 1.14x faster
    than one fold on both threads, and the scorer fits ran 2 at a time (the demo took
    13 min 46 s there; see :func:`lesionuq.experiment.stage_train`).

    Args:
        workers: ``"auto"``, a count (1 or None: no workers), or its text (``"2"``).
        cfg: The demo's config (folds, device).
        cpus: Cores to plan for (default ``os.cpu_count()``).
        cuda: Whether CUDA is available (default: ask torch).

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
    on_gpu = cfg.device == "cuda" or (cfg.device == "auto" and cuda)
    n = min(cpus or os.cpu_count() or 1, cfg.folds)
    return n if n > 1 and not on_gpu else None


def run_demo(
    out: Path = Path("demo"),
    cfg: ExperimentConfig | None = None,
    progress: bool = True,
    workers: int | str | None = "auto",
) -> ExperimentResult:
    """Generate the phantom data set (``OUT/data``) and run the experiment (``OUT/run``).

    Both steps are skipped when their outputs already exist for the same settings, so a
    second call only re-evaluates.

    Args:
        out: Folder for the data and the run.
        cfg: The config; default the bundled ``demo.yaml``.
        progress: Show progress bars.
        workers: Worker processes of a local Dask cluster for the per-scan stages, the
            folds' training and the scorer fits (:func:`demo_workers`; default
            ``"auto"``: one per core on a CPU-only machine). The results do not depend
            on it, up to the float rounding of multi-threaded convolutions.

    Returns:
        The experiment's result (tables and report path).
    """
    # lazy: the phantom loads nilearn's MNI templates (seconds), and every CLI command
    # imports this module for bundled_config
    from lesionuq.data.phantom import make_phantom_dataset

    cfg = cfg or bundled_config("demo")
    n_workers = demo_workers(workers, cfg)
    data_dir = Path(out) / "data"
    stamp = data_dir / "stamp.json"
    digest = config_digest(cfg.phantom)
    stamp_content = read_stamp(stamp)
    if stamp_content is None or stamp_content.get("digest") != digest:
        make_phantom_dataset(
            data_dir, cfg.phantom, preview=True, progress=progress, overwrite=True
        )  # the demo's own data folder: an earlier demo's data is replaced
        write_stamp(stamp, digest)
        add_written(data_dir, [stamp.name])
    result = run_experiment(
        data_dir / "cases.csv", Path(out) / "run", cfg, progress=progress, workers=n_workers
    )
    assert result is not None
    return result
