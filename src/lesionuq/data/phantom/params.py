"""The phantom's physical parameters (:class:`PhantomParams`), settable from YAML."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from lesionuq.config import ConfigError, config_from_dict

__all__ = ["DEFAULT_PARAMS", "LESION_KINDS", "TISSUES", "PhantomParams"]

TISSUES = ("csf", "gm", "wm", "lesion")
"""Tissue names of :attr:`PhantomParams.tissue`, in the order the signals are computed."""

LESION_KINDS = ("periventricular", "juxtacortical", "deep", "infratentorial")
"""Lesion placements that :attr:`PhantomParams.placement` may weight."""


@dataclass(frozen=True)
class PhantomParams:
    """Every physical parameter of the phantom (see the table in :mod:`lesionuq.data.phantom`).

    Pairs ``(lo, hi)`` are uniform ranges. Tissue triples are (T1 ms, T2 ms, PD).
    """

    tr_ms: float = 9000.0
    te_ms: float = 120.0
    ti_jitter: float = 0.03
    tissue: dict[str, tuple[float, float, float]] = field(
        default_factory=lambda: {
            "csf": (2569.0, 329.0, 1.0),
            "gm": (833.0, 83.0, 0.86),
            "wm": (500.0, 70.0, 0.77),
            "lesion": (1100.0, 180.0, 0.9),
        }
    )
    # anatomy
    tissue_sharpen: float = 2.0
    rotation_deg: float = 4.0
    scale: float = 0.05
    deform_mm: float = 2.5
    deform_length_mm: float = 20.0
    # lesions
    count_beta: tuple[float, float] = (1.3, 2.2)
    volume_median_mm3: float = 70.0
    volume_sigma: float = 1.1
    volume_range_mm3: tuple[float, float] = (12.0, 6000.0)
    confluent_mm3: float = 700.0
    placement: dict[str, float] = field(
        default_factory=lambda: {
            "periventricular": 0.50,
            "juxtacortical": 0.25,
            "deep": 0.15,
            "infratentorial": 0.10,
        }
    )
    dawson_elongation: tuple[float, float] = (1.5, 3.0)
    elongation: tuple[float, float] = (1.0, 1.6)
    irregularity: float = 0.25
    edge_mm: tuple[float, float] = (0.3, 0.8)
    ratio_range: tuple[float, float] = (1.1, 2.0)
    ratio_beta: tuple[float, float] = (1.0, 1.0)
    # mimics (not in the ground truth)
    cap_prob: float = 0.7
    cap_mm3: tuple[float, float] = (30.0, 200.0)
    cap_ratio: tuple[float, float] = (1.15, 1.6)
    rim_mm: tuple[float, float] = (0.6, 1.6)
    rim_fraction: tuple[float, float] = (0.3, 0.9)
    rim_ratio: tuple[float, float] = (1.1, 1.4)
    cortical_mean: float = 6.0
    cortical_mm3: tuple[float, float] = (10.0, 100.0)
    cortical_ratio: tuple[float, float] = (1.3, 1.9)
    artefact_mean: float = 4.0
    artefact_mm3: tuple[float, float] = (5.0, 80.0)
    artefact_ratio: tuple[float, float] = (1.4, 2.2)
    dawm_mean: float = 2.0
    dawm_mm3: tuple[float, float] = (300.0, 3000.0)
    dawm_edge_mm: tuple[float, float] = (2.0, 3.5)
    dawm_ratio: tuple[float, float] = (1.05, 1.2)
    # scanner
    fwhm_mm: tuple[float, float] = (1.0, 1.5)
    thick_prob: float = 0.3
    thick_mm: tuple[float, float] = (3.0, 5.0)
    thick_axis_prob: tuple[float, float, float] = (0.2, 0.2, 0.6)
    bias: tuple[float, float] = (0.10, 0.20)
    bias_length_mm: float = 80.0
    noise: tuple[float, float] = (0.02, 0.05)
    wm_level: float = 1000.0
    gain: tuple[float, float] = (0.8, 1.25)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            numbers = value if isinstance(value, tuple) else (value,)
            if isinstance(value, dict):
                continue
            if not all(math.isfinite(v) for v in numbers):
                raise ConfigError(f"phantom.params.{f.name} must be finite, got {value!r}.")
            if isinstance(value, tuple) and len(value) == 2 and value[0] > value[1]:
                raise ConfigError(f"phantom.params.{f.name} must be (lo, hi), got {value!r}.")
        if set(self.tissue) != set(TISSUES):
            raise ConfigError(
                f"phantom.params.tissue must name {', '.join(TISSUES)}, got {sorted(self.tissue)}."
            )
        unknown = sorted(set(self.placement) - set(LESION_KINDS))
        if unknown or not self.placement:
            raise ConfigError(
                f"phantom.params.placement keys must be among {', '.join(LESION_KINDS)}, "
                f"got {sorted(self.placement)}."
            )
        if min(self.placement.values()) < 0 or sum(self.placement.values()) <= 0:
            raise ConfigError("phantom.params.placement weights must be >= 0 with a positive sum.")
        for name in ("cap_prob", "thick_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"phantom.params.{name} must be in [0, 1].")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of the parameters."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> PhantomParams:
        """Parameters from a (YAML/JSON) mapping; keys not given keep their default.

        A dict-valued parameter (``tissue``, ``placement``) given is replaced as a whole.

        Args:
            data: Mapping of field name to value (lists for tuples), or None for defaults.

        Returns:
            The parameters.

        Raises:
            ConfigError: Unknown key, wrong type or out-of-range value (one sentence).
        """
        data = dict(data or {})
        where = "phantom.params"
        if "tissue" in data:
            tissue = data["tissue"]
            if not isinstance(tissue, dict) or not all(
                isinstance(v, list | tuple) and len(v) == 3 for v in tissue.values()
            ):
                raise ConfigError(f"{where}.tissue must map tissue to [T1, T2, PD].")
            data["tissue"] = {k: tuple(float(x) for x in v) for k, v in tissue.items()}
        if "placement" in data:
            if not isinstance(data["placement"], dict):
                raise ConfigError(f"{where}.placement must map a lesion kind to a weight.")
            data["placement"] = {k: float(v) for k, v in data["placement"].items()}
        return config_from_dict(cls, data, where)


DEFAULT_PARAMS = PhantomParams()
