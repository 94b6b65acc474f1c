"""Deprecated alias, moved to :mod:`lesionuq.pipeline` (one module per concern).

For one release the old names still resolve here, each with a ``DeprecationWarning``
naming its new home:

- :mod:`lesionuq.pipeline.experiment`: ``run_experiment``, ``validate_run``,
  ``resolve_protocol``, ``prepare_run``, ``STAGES``;
- :mod:`lesionuq.pipeline.preprocess`: ``stage_preprocess``;
- :mod:`lesionuq.pipeline.train`: ``stage_train``, ``train_fold``, ``train_run``;
- :mod:`lesionuq.pipeline.sample`: ``stage_sample``;
- :mod:`lesionuq.pipeline.graphs`: ``stage_graphs``;
- :mod:`lesionuq.pipeline.stages`: ``load_preprocessed``, ``load_preprocessed_ignore``;
- :mod:`lesionuq.pipeline.fit`: ``stage_fit``, ``is_calibrated``;
- :mod:`lesionuq.pipeline.evaluate`: ``stage_evaluate``, ``ExperimentResult``,
  ``score_fold``, ``calibrate_fold``, ``detection_cases``;
- ``calibration_table`` and ``plot_calibration`` (:mod:`lesionuq.evaluation.calibration_metrics`)
  and ``maps_from_stack`` (:mod:`lesionuq.samples`), which this module only re-exported.
"""

from __future__ import annotations

import warnings
from types import ModuleType
from typing import Any

from lesionuq import samples
from lesionuq.evaluation import calibration_metrics
from lesionuq.pipeline import (
    evaluate,
    experiment,
    fit,
    graphs,
    preprocess,
    sample,
    stages,
    train,
)

_MOVED: dict[str, ModuleType] = {
    **dict.fromkeys(
        ("run_experiment", "validate_run", "resolve_protocol", "prepare_run", "STAGES"),
        experiment,
    ),
    "stage_preprocess": preprocess,
    **dict.fromkeys(("stage_train", "train_fold", "train_run"), train),
    "stage_sample": sample,
    "stage_graphs": graphs,
    **dict.fromkeys(("load_preprocessed", "load_preprocessed_ignore"), stages),
    **dict.fromkeys(("stage_fit", "is_calibrated"), fit),
    **dict.fromkeys(
        ("stage_evaluate", "ExperimentResult", "score_fold", "calibrate_fold", "detection_cases"),
        evaluate,
    ),
    **dict.fromkeys(("calibration_table", "plot_calibration"), calibration_metrics),
    "maps_from_stack": samples,
}


def __getattr__(name: str) -> Any:
    """The moved name, with a ``DeprecationWarning`` naming its new module (PEP 562)."""
    module = _MOVED.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(
        f"lesionuq.experiment.{name} moved to {module.__name__}.{name}.",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(module, name)


def __dir__() -> list[str]:
    """The moved names too (for completion and ``dir()``)."""
    return sorted([*globals(), *_MOVED])
