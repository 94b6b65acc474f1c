"""Warn when a new scan is unlike the scans a model was validated on.

A :class:`ScanProfile` summarises one scan with a few numbers that shift P(FP) when they
change:

- ``in_plane`` and ``slice_thickness``: the smallest and the largest voxel spacing of the
  original scan (mm), whatever its orientation;
- ``mean_entropy``: the mean voxel entropy of the MC-dropout prediction over the brain
  (optional: None when not computed);
- ``q01``, ``q05``, ``q95``, ``q99``: quantiles of the brain intensities of the original
  image divided by their median. Brain voxels are those above ``brain_threshold`` and
  above ``floor * (99th percentile of those)`` (``floor = 0.05``), which drops the dim
  background noise and blur tails that a zero threshold lets in. MRI intensities have
  no absolute unit, so only the shape of the histogram (contrast, noise, bias) is
  compared, not the scanner's gain.

A :class:`ShiftReference` is fitted on the validation scans' profiles (n of them).

- **Voxel spacings:** the accepted range is the validation ``[min, max]`` widened on each
  side by ``margin * (max - min) + spacing_tol * |bound|`` (``margin = 0.1``,
  ``spacing_tol = 0.25``): all validation scans at 1 mm accept 0.75-1.25 mm (a 0.9 mm
  scan is no shift once resampled to the model's grid, a 3 mm slice is).
- **Entropy and intensity shape** (the m continuous features present): the union of the
  same widened ``[min, max]`` (with ``rel_tol = 0.1`` instead of ``spacing_tol``) and the
  Student-t prediction interval of one new scan,
  ``mean +- t(1 - alpha / (2m); n - 1) * sd * sqrt(1 + 1/n)`` (``alpha = 0.05``,
  Bonferroni over the m features). A new scan drawn like the validation scans (normal
  features) then warns with probability at most ``alpha``; the min-max range alone makes
  each feature warn with probability ``2 / (n + 1)`` before its widening (a third with 5
  validation scans). The interval needs ``n >= interval_min_scans`` (5): from fewer
  scans the spread is too uncertain (``t`` is 63.7 with 2 scans, 9.9 with 3), the
  interval covers almost any scan, and on the cross-family bench it let 128 of 192 scans
  of another family pass with 2 validation scans (26 with 3, none with 5); below 5 scans,
  or with no spread, only the widened range is used, which warns more often on scans
  like the validation scans (28 of 96 with 2 scans) but misses no shift.

:meth:`ShiftReference.check` returns one human reason per feature outside its range and
:func:`warning_sentence` turns them into the sentence shown to the user.

Example:
    >>> ref = ShiftReference().fit([scan_profile(img, entropy=e, brain=b) for ...])
    >>> warning_sentence(ref.check(scan_profile(new_img)))
    'this scan is unlike the scans this model was validated on (slice thickness 3 mm vs
    1 mm): P(FP) values may be unreliable; `lesionuq refit` on a few labelled scans like
    it adapts the model.'
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Self

import nibabel as nib
import numpy as np
from scipy import stats

from lesionuq.io import InputError, atomic_write_text

__all__ = [
    "INTERVAL_MIN_SCANS",
    "SHIFT_ALPHA",
    "SHIFT_FILE",
    "SHIFT_SENTENCE",
    "ScanProfile",
    "ShiftReference",
    "is_shift_warning",
    "prediction_half_width",
    "scan_profile",
    "warning_sentence",
]

SHIFT_FILE = "shift_reference.json"
"""Name of the reference file saved with a fold model."""

SHIFT_SENTENCE = "this scan is unlike the scans this model was validated on"
"""How the shift warning starts (:func:`warning_sentence`, :func:`is_shift_warning`)."""

SHIFT_ALPHA = 0.05
"""Default false-alarm rate of the continuous features' prediction interval, per scan."""
INTERVAL_MIN_SCANS = 5
"""The fewest validation scans the prediction interval is used with (min-max below)."""

_SPACINGS = ("slice_thickness", "in_plane")
_FEATURES: dict[str, tuple[str, str, str]] = {
    # name -> (label in sentences, unit, number format)
    "slice_thickness": ("slice thickness", " mm", ".2g"),
    "in_plane": ("in-plane voxel size", " mm", ".2g"),
    "mean_entropy": ("mean voxel entropy", "", ".2f"),
    "q01": ("1% brain intensity / median", "", ".3g"),
    "q05": ("5% brain intensity / median", "", ".3g"),
    "q95": ("95% brain intensity / median", "", ".3g"),
    "q99": ("99% brain intensity / median", "", ".3g"),
}


@dataclass(frozen=True)
class ScanProfile:
    """What the shift check compares (see the module docstring).

    Attributes:
        in_plane: Smallest voxel spacing (mm).
        slice_thickness: Largest voxel spacing (mm).
        mean_entropy: Mean brain voxel entropy, or None.
        q01, q05, q95, q99: Brain intensity quantiles divided by the median.
    """

    in_plane: float
    slice_thickness: float
    mean_entropy: float | None
    q01: float
    q05: float
    q95: float
    q99: float

    def to_dict(self) -> dict[str, float | None]:
        """JSON-able dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScanProfile:
        """Rebuild from :meth:`to_dict` output."""
        vals = {f.name: d.get(f.name) for f in fields(cls)}
        kwargs: dict[str, Any] = {k: (None if v is None else float(v)) for k, v in vals.items()}
        return cls(**kwargs)


def scan_profile(
    image: nib.Nifti1Image,
    entropy: np.ndarray | None = None,
    brain: np.ndarray | None = None,
    brain_threshold: float = 0.0,
    floor: float = 0.05,
) -> ScanProfile:
    """Profile one scan.

    Args:
        image: The original first-sequence image (any orientation and voxel size).
        entropy: Voxel entropy map (any grid, e.g. the preprocessed one), or None.
        brain: Bool brain mask on the grid of ``entropy`` (required with ``entropy``);
            on the preprocessed grid it is ``pre.image[0] != 0``.
        brain_threshold: Original voxels with intensity above it are brain (the rule of
            ``preprocess``).
        floor: Brain voxels must also exceed this share of the 99th percentile of the
            voxels above ``brain_threshold``.

    Returns:
        The :class:`ScanProfile`.

    Raises:
        InputError: No brain voxel, or a non-positive median brain intensity.
        ValueError: ``entropy`` without a ``brain`` of the same shape.
    """
    zooms = np.asarray(image.header.get_zooms()[:3], dtype=np.float64)
    data = np.asarray(image.dataobj, dtype=np.float32)
    vals = data[data > brain_threshold].astype(np.float64)
    name = image.get_filename() or "image"
    if vals.size == 0:
        raise InputError(f"{name}: no voxel is above the brain threshold {brain_threshold:g}.")
    vals = vals[vals > floor * np.quantile(vals, 0.99)]
    q = np.quantile(vals, [0.01, 0.05, 0.5, 0.95, 0.99])
    if not q[2] > 0:
        raise InputError(f"{name}: the median brain intensity is not positive.")
    mean_entropy = None
    if entropy is not None:
        e = np.asarray(entropy)
        b = None if brain is None else np.asarray(brain, dtype=bool)
        if b is None or b.shape != e.shape:
            raise ValueError("scan_profile needs a brain mask of the entropy map's shape.")
        mean_entropy = float(e[b].mean()) if b.any() else float(e.mean())
    r = q / q[2]
    return ScanProfile(
        in_plane=float(zooms.min()),
        slice_thickness=float(zooms.max()),
        mean_entropy=mean_entropy,
        q01=float(r[0]),
        q05=float(r[1]),
        q95=float(r[3]),
        q99=float(r[4]),
    )


def _fmt(value: float, spec: str) -> str:
    return format(value, spec)


class ShiftReference:
    """Accepted range of every profile feature, fitted on validation scans.

    Args:
        margin: Widening as a share of the validation range ``max - min``.
        rel_tol: Widening as a share of each bound's absolute value (entropy, intensity).
        spacing_tol: The same for the voxel spacings.
        alpha: Per-scan false-alarm rate of the continuous features' t prediction
            interval (Bonferroni over them), or None for the widened min-max range alone.
        interval_min_scans: The fewest validation scans the interval is used with.

    Attributes:
        lo_, hi_: Feature -> accepted bounds (features missing in every profile are absent).
        min_, max_: Feature -> validation min and max (shown in the reasons).
        n_: Number of validation scans.
    """

    def __init__(
        self,
        margin: float = 0.1,
        rel_tol: float = 0.1,
        spacing_tol: float = 0.25,
        alpha: float | None = SHIFT_ALPHA,
        interval_min_scans: int = INTERVAL_MIN_SCANS,
    ):
        if min(margin, rel_tol, spacing_tol) < 0:
            raise ValueError(
                f"margin, rel_tol and spacing_tol must be >= 0, got {margin}, {rel_tol}, "
                f"{spacing_tol}."
            )
        if alpha is not None and not 0 < alpha < 1:
            raise ValueError(f"alpha must be in (0, 1) or None, got {alpha}.")
        self.margin = float(margin)
        self.rel_tol = float(rel_tol)
        self.spacing_tol = float(spacing_tol)
        if interval_min_scans < 2:
            raise ValueError(f"interval_min_scans must be >= 2, got {interval_min_scans}.")
        self.alpha = None if alpha is None else float(alpha)
        self.interval_min_scans = int(interval_min_scans)

    def fit(self, profiles: Sequence[ScanProfile]) -> Self:
        """Ranges from the validation scans' profiles.

        Raises:
            ValueError: No profile.
        """
        if not profiles:
            raise ValueError("a shift reference needs at least one validation scan.")
        self.lo_: dict[str, float] = {}
        self.hi_: dict[str, float] = {}
        self.min_: dict[str, float] = {}
        self.max_: dict[str, float] = {}
        values = {
            name: np.array(
                [getattr(p, name) for p in profiles if getattr(p, name) is not None], dtype=float
            )
            for name in _FEATURES
        }
        values = {name: v for name, v in values.items() if v.size}
        n_continuous = sum(name not in _SPACINGS for name in values)
        for name, v in values.items():
            lo, hi = float(v.min()), float(v.max())
            width = self.margin * (hi - lo)
            tol = self.spacing_tol if name in _SPACINGS else self.rel_tol
            self.min_[name], self.max_[name] = lo, hi
            self.lo_[name] = lo - width - tol * abs(lo)
            self.hi_[name] = hi + width + tol * abs(hi)
            if (
                name not in _SPACINGS
                and self.alpha is not None
                and v.size >= self.interval_min_scans
            ):
                half = prediction_half_width(v, self.alpha / n_continuous)
                self.lo_[name] = min(self.lo_[name], float(v.mean()) - half)
                self.hi_[name] = max(self.hi_[name], float(v.mean()) + half)
        self.n_ = len(profiles)
        return self

    def check(self, profile: ScanProfile) -> list[str]:
        """One reason per feature of ``profile`` outside its accepted range.

        Returns:
            E.g. ``["slice thickness 3 mm vs 1 mm", "mean voxel entropy 0.62 vs
            0.18-0.31"]``; empty when the scan looks like the validation scans.
        """
        if not hasattr(self, "lo_"):
            raise RuntimeError("ShiftReference is not fitted; call fit() first.")
        reasons = []
        for name, (label, unit, spec) in _FEATURES.items():
            value = getattr(profile, name)
            if value is None or name not in self.lo_:
                continue
            if self.lo_[name] <= value <= self.hi_[name]:
                continue
            lo, hi = _fmt(self.min_[name], spec), _fmt(self.max_[name], spec)
            ref = lo if lo == hi else f"{lo}-{hi}"
            reasons.append(f"{label} {_fmt(value, spec)}{unit} vs {ref}{unit}")
        return reasons

    def to_dict(self) -> dict[str, Any]:
        """JSON-able parameters and ranges."""
        if not hasattr(self, "lo_"):
            raise RuntimeError("ShiftReference is not fitted; call fit() first.")
        return {
            "margin": self.margin,
            "rel_tol": self.rel_tol,
            "spacing_tol": self.spacing_tol,
            "alpha": self.alpha,
            "interval_min_scans": self.interval_min_scans,
            "n": self.n_,
            "features": {
                k: {"lo": self.lo_[k], "hi": self.hi_[k], "min": self.min_[k], "max": self.max_[k]}
                for k in self.lo_
            },
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ShiftReference:
        """Rebuild from :meth:`to_dict` output."""
        # a reference saved before the prediction interval has no alpha: its bounds are
        # the min-max rule's, and they are what check() reads
        ref = cls(
            margin=d["margin"],
            rel_tol=d["rel_tol"],
            spacing_tol=d["spacing_tol"],
            alpha=d.get("alpha"),
            interval_min_scans=d.get("interval_min_scans", INTERVAL_MIN_SCANS),
        )
        feats = d["features"]
        ref.lo_ = {k: float(v["lo"]) for k, v in feats.items()}
        ref.hi_ = {k: float(v["hi"]) for k, v in feats.items()}
        ref.min_ = {k: float(v["min"]) for k, v in feats.items()}
        ref.max_ = {k: float(v["max"]) for k, v in feats.items()}
        ref.n_ = int(d["n"])
        return ref

    def save(self, path: str | Path) -> Path:
        """Write the reference as JSON, atomically (``fold_K/shift_reference.json``)."""
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ShiftReference:
        """Read :meth:`save` output.

        Raises:
            InputError: Missing file, invalid JSON or missing keys.
        """
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: file not found.")
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except json.JSONDecodeError as err:
            raise InputError(f"{path}: not valid JSON ({err.msg}).") from err
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(f"{path}: not a shift reference ({err}).") from err


def prediction_half_width(values: np.ndarray, alpha: float) -> float:
    """Half-width of the two-sided Student-t prediction interval of one new value.

    Args:
        values: (n,) float, n >= 2, the reference values.
        alpha: The interval's miss probability (two-sided).

    Returns:
        ``t(1 - alpha / 2; n - 1) * sd * sqrt(1 + 1/n)``, ``sd`` with ``ddof = 1``; a new
        value drawn from the same normal distribution falls outside ``mean +- half`` with
        probability ``alpha``.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.size < 2:
        raise ValueError(f"a prediction interval needs at least 2 values, got {v.size}.")
    q = float(stats.t.ppf(1 - alpha / 2, v.size - 1))
    return q * float(v.std(ddof=1)) * float(np.sqrt(1 + 1 / v.size))


def warning_sentence(reasons: Sequence[str]) -> str | None:
    """The user-facing warning, or None when there is no reason to warn."""
    if not reasons:
        return None
    return (
        f"{SHIFT_SENTENCE} ({'; '.join(reasons)}): P(FP) values may be unreliable; "
        "`lesionuq refit` on a few labelled scans like it adapts the model."
    )


def is_shift_warning(text: str) -> bool:
    """Whether a scan's warning is the shift warning (whatever its first letter's case)."""
    return text.lower().startswith(SHIFT_SENTENCE)
