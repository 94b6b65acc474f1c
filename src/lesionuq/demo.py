"""``lesionuq demo``: a phantom data set and the paper's whole protocol on it, on a CPU."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from lesionuq.config import ExperimentConfig, config_digest
from lesionuq.experiment import ExperimentResult, run_experiment
from lesionuq.rundir import read_stamp, write_stamp

__all__ = ["bundled_config", "run_demo"]


def bundled_config(name: str = "demo") -> ExperimentConfig:
    """A config shipped with the package: ``"demo"``, ``"quality"`` or ``"paper"``."""
    ref = resources.files("lesionuq") / "configs" / f"{name}.yaml"
    if not ref.is_file():
        raise ValueError(f"no bundled config {name!r} (available: demo, quality, paper).")
    with resources.as_file(ref) as path:
        return ExperimentConfig.from_yaml(path)


def run_demo(
    out: Path = Path("demo"), cfg: ExperimentConfig | None = None, progress: bool = True
) -> ExperimentResult:
    """Generate the phantom data set (``OUT/data``) and run the experiment (``OUT/run``).

    Both steps are skipped when their outputs already exist for the same settings, so a
    second call only re-evaluates.

    Args:
        out: Folder for the data and the run.
        cfg: The config; default the bundled ``demo.yaml``.
        progress: Show progress bars.

    Returns:
        The experiment's result (tables and report path).
    """
    from lesionuq.data.phantom import make_phantom_dataset

    cfg = cfg or bundled_config("demo")
    data_dir = Path(out) / "data"
    stamp = data_dir / "stamp.json"
    digest = config_digest(cfg.phantom)
    stamp_content = read_stamp(stamp)
    if stamp_content is None or stamp_content.get("digest") != digest:
        make_phantom_dataset(data_dir, cfg.phantom, preview=True, progress=progress)
        write_stamp(stamp, digest)
    result = run_experiment(data_dir / "cases.csv", Path(out) / "run", cfg, progress=progress)
    assert result is not None
    return result
