"""Synthetic MS FLAIR data set on real anatomy: the project's default data.

Each case starts from the MNI152 2009 template and its grey/white-matter probability maps
shipped inside nilearn (``load_mni152_template``, ``load_mni152_gm_template``,
``load_mni152_wm_template``; no download). CSF is the skull-stripped template's support
minus GM minus WM; the lateral ventricles are its large deep CSF components.

Per case (all random draws come from one seeded generator and do not depend on the output
spacing, so a seed gives the same subject at 1 mm and at 2 mm, only rasterised differently):

1. Anatomy: a small random affine (rotation, per-axis scale) and a smooth random
   displacement field (Gaussian radial-basis field, a few mm) move the tissue maps.
2. Lesions (the ground truth): a count ``round(max_lesions * Beta(a, b))`` (0 to
   ``max_lesions``, skewed low), log-normal volumes in mm3 (most below 1000 mm3; large ones
   become confluent unions of 2-5 blobs), placed periventricular (half; ovoid, long axis
   perpendicular to the ventricle wall like Dawson's fingers), juxtacortical (a quarter)
   or deep / infratentorial white matter (the rest). Each blob is an ellipsoid with an
   irregular, direction-dependent radius and a soft (erf) edge, drawn in mm and rasterised
   at the output spacing with the voxel's partial-volume width. A lesion replaces the
   parenchyma (GM+WM) fraction of a voxel, never CSF.
3. Mimics (NOT in the ground truth, at lesion-like intensity): periventricular caps at the
   frontal and occipital horns, a thin periventricular rim, bright cortical spots, small
   flow artefacts in CSF spaces, and diffuse faint "dirty-appearing white matter"
   patches. A discrete mimic is dropped when it would come within 1 mm of a lesion, so
   mimics never overlap the ground truth.
4. FLAIR contrast from the inversion-recovery signal equation

       S = PD * |1 - 2 exp(-TI/T1) + exp(-TR/T1)| * exp(-TE/T2),

   TI nulling CSF (``TI = T1_csf ln(2 / (1 + exp(-TR/T1_csf)))``, jittered a little so CSF
   is not perfectly suppressed), mixed by tissue fraction (partial volume). A lesion's
   (T1, T2, PD) lies on the line from white matter to the nominal lesion values, at the
   point that gives its drawn lesion/WM signal ratio (uniform, 1.1 to 2.0).
5. Scanner: Gaussian blur (FWHM 1-1.5 mm), sometimes thick slices along one axis (Gaussian
   slice profile), a smooth multiplicative bias field, Rician noise, a random gain; the
   image is skull-stripped (0 outside the deformed brain, >= 1 inside) and stored as int16.

The ground truth is ``lesion fraction > 0.5`` on the output grid.

Parameters (:class:`PhantomParams`; ranges are uniform unless said otherwise):

=========================  ==================================================================
parameter                  value
=========================  ==================================================================
TR / TE / TI               9000 ms / 120 ms / CSF-nulling (1705 ms) x (1 +- 3 %)
T1 / T2 / PD               CSF 2569/329/1.0, GM 833/83/0.86, WM 500/70/0.77,
                           lesion 1100/180/0.9 (GM/WM signal ratio 1.16)
tissue maps                MNI152 GM/WM/CSF probabilities sharpened p^2 (renormalised)
deformation                rotation +-4 deg, scale +-5 % per axis, displacement std 2.5 mm
                           (radial-basis length 20 mm)
lesion count               round(max_lesions x Beta(1.3, 2.2)), mean ~ 0.37 max_lesions
lesion volume              log-normal, median 70 mm3, sigma 1.1, clipped to 12-6000 mm3;
                           > 700 mm3 -> confluent (2-5 blobs)
placement                  periventricular 0.50, juxtacortical 0.25, deep WM 0.15,
                           infratentorial 0.10
shape                      Dawson elongation 1.5-3 (periventricular), 1-1.6 otherwise;
                           radius irregularity <= 25 %; edge width 0.3-0.8 mm
lesion/WM signal ratio     1.1-2.0 (mean 1.55)
caps                       each of 4 horn tips with prob. 0.7; 30-200 mm3; ratio 1.15-1.6
rim                        thickness 0.6-1.6 mm, peak fraction 0.3-0.9; ratio 1.1-1.4
cortical spots             Poisson(6); 10-100 mm3 (log-uniform); ratio 1.3-1.9 (in GM)
flow artefacts             Poisson(4); 5-80 mm3 (log-uniform); ratio 1.4-2.2 (CSF spaces)
dirty-appearing WM         Poisson(2); 300-3000 mm3 (log-uniform), edge 2-3.5 mm;
                           ratio 1.05-1.2 (deep WM)
blur                       FWHM 1.0-1.5 mm
thick slices               prob. 0.3, 3-5 mm, axis z (0.6) / x / y (0.2 each)
bias field                 max deviation 10-20 %, radial-basis length 80 mm
Rician noise               sigma 2-5 % of the WM signal
gain                       WM ~ 1000 x (0.8-1.25)
=========================  ==================================================================

What it is not: no T1/T2/PD sequences besides FLAIR, no atrophy, no skull, no motion or
Gibbs ringing, one template anatomy (deformed) for all subjects, lesion shapes are
parametric blobs.

Example:
    >>> case = generate_case(seed=0, spacing=2.0)
    >>> case.flair.shape, int(case.mask.get_fdata().sum()) > 0
    ((99, 117, 95), True)
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi
from scipy.special import erfc

from lesionuq.config import PhantomConfig
from lesionuq.io import (
    Case,
    atomic_write_bytes,
    atomic_write_text,
    read_manifest,
    save_nifti,
    write_manifest,
)
from lesionuq.utils import track

__all__ = [
    "DEFAULT_PARAMS",
    "PhantomCase",
    "PhantomParams",
    "case_seed",
    "csf_null_ti",
    "flair_signal",
    "generate_case",
    "make_phantom_dataset",
    "write_preview",
]

_TISSUES = ("csf", "gm", "wm", "lesion")


@dataclass(frozen=True)
class PhantomParams:
    """Every physical parameter of the phantom (see the module docstring's table).

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

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of the parameters."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


DEFAULT_PARAMS = PhantomParams()


@dataclass
class PhantomCase:
    """One generated case.

    Attributes:
        flair: The FLAIR image, int16, RAS, isotropic ``spacing`` mm.
        mask: The ground-truth lesion mask (uint8, same grid).
        info: What was drawn. Keys: ``seed``, ``spacing``, ``ti_ms``, ``wm_signal`` (mean
            noiseless WM intensity after gain), ``tissue`` (dict ``csf``/``gm``/``wm`` of
            (X, Y, Z) float32 deformed tissue fractions), ``brain`` ((X, Y, Z) bool),
            ``lesion_fraction`` and ``mimic_fraction`` ((X, Y, Z) float32 volume fractions),
            ``lesion_labels`` / ``mimic_labels`` ((X, Y, Z) int16, k+1 where lesion/mimic k
            dominates and its fraction > 0.5), ``lesions`` and ``mimics`` (one dict per
            lesion/mimic: kind, volume_mm3 (drawn), n_voxels (rasterised), ratio (signal
            ratio to WM), centre_mm (template space), n_blobs), ``scanner`` (dict).
    """

    flair: nib.Nifti1Image
    mask: nib.Nifti1Image
    info: dict[str, Any]


# --------------------------------------------------------------------------- physics


def flair_signal(
    t1: np.ndarray | float,
    t2: np.ndarray | float,
    pd: np.ndarray | float,
    tr: float = 9000.0,
    te: float = 120.0,
    ti: float | None = None,
) -> np.ndarray | float:
    """Inversion-recovery (FLAIR) magnitude signal.

    ``S = PD * |1 - 2 exp(-TI/T1) + exp(-TR/T1)| * exp(-TE/T2)``.

    Args:
        t1: Longitudinal relaxation time (ms), any shape.
        t2: Transverse relaxation time (ms), broadcastable with ``t1``.
        pd: Proton density (relative), broadcastable.
        tr: Repetition time (ms).
        te: Echo time (ms).
        ti: Inversion time (ms); default the CSF-nulling TI of :data:`DEFAULT_PARAMS`.

    Returns:
        The signal, broadcast shape of the inputs.
    """
    if ti is None:
        ti = csf_null_ti(DEFAULT_PARAMS.tissue["csf"][0], tr)
    t1 = np.asarray(t1, dtype=np.float64)
    return pd * np.abs(1.0 - 2.0 * np.exp(-ti / t1) + np.exp(-tr / t1)) * np.exp(-te / t2)


def csf_null_ti(t1_csf: float, tr: float) -> float:
    """Inversion time that nulls a tissue of longitudinal relaxation ``t1_csf``.

    Solves ``1 - 2 exp(-TI/T1) + exp(-TR/T1) = 0``: ``TI = T1 ln(2 / (1 + exp(-TR/T1)))``.
    """
    return float(t1_csf * math.log(2.0 / (1.0 + math.exp(-tr / t1_csf))))


class _Contrast:
    """Tissue signals at one TI and the inverse map lesion/WM ratio -> signal."""

    def __init__(self, params: PhantomParams, ti: float):
        self.ti = ti
        t = params.tissue
        sig = {
            k: float(flair_signal(*t[k], tr=params.tr_ms, te=params.te_ms, ti=ti)) for k in _TISSUES
        }
        self.signal = sig
        wm, les = np.array(t["wm"]), np.array(t["lesion"])
        s = np.linspace(0.0, 1.0, 201)
        p = wm[None] + s[:, None] * (les - wm)[None]
        ratio = flair_signal(p[:, 0], p[:, 1], p[:, 2], params.tr_ms, params.te_ms, ti)
        ratio = ratio / sig["wm"]
        stop = int(np.argmax(ratio)) + 1  # monotone part of the white-matter -> lesion line
        self._ratio, self._signal = ratio[:stop], ratio[:stop] * sig["wm"]

    def lesion_signal(self, ratio: float) -> float:
        """Signal of lesion-like tissue whose (T1, T2, PD) gives ``ratio`` x WM signal.

        Ratios above the line's maximum take the maximum; ratios are otherwise exact.
        """
        return float(np.interp(ratio, self._ratio, self._signal))


# --------------------------------------------------------------------------- template


@dataclass(frozen=True)
class _Template:
    """MNI152 maps at 1 mm and what lesion placement needs (template voxel = mm)."""

    gm: np.ndarray  # (197, 233, 189) float32 fractions
    wm: np.ndarray
    csf: np.ndarray
    vdist: np.ndarray  # distance to the lateral ventricles (mm), float32
    origin: np.ndarray  # (3,) world mm of voxel 0
    brain_lo: np.ndarray  # (3,) template index bounding box of the brain
    brain_hi: np.ndarray
    vent_lo: np.ndarray  # (3,) template index bounding box of the lateral ventricles
    vent_hi: np.ndarray
    seeds: dict[str, np.ndarray]  # name -> (N, 3) int32 template indices
    tips: tuple[tuple[np.ndarray, np.ndarray], ...]  # horn tip (index) and outward direction


@functools.lru_cache(maxsize=1)
def _template() -> _Template:
    from nilearn import datasets

    t1 = datasets.load_mni152_template(resolution=1)
    gm = datasets.load_mni152_gm_template(resolution=1).get_fdata(dtype=np.float32)
    wm = datasets.load_mni152_wm_template(resolution=1).get_fdata(dtype=np.float32)
    inside = t1.get_fdata(dtype=np.float32) > 0
    origin = t1.affine[:3, 3].astype(np.float64)
    if not np.allclose(t1.affine[:3, :3], np.eye(3)):
        raise RuntimeError("unexpected MNI152 template affine (expected 1 mm RAS).")
    gm, wm = gm * inside, wm * inside
    csf = np.clip(inside.astype(np.float32) - gm - wm, 0.0, 1.0)

    box = ndi.find_objects(inside.astype(np.uint8))[0]
    lo = np.array([s.start for s in box])
    hi = np.array([s.stop for s in box])
    sub = tuple(box)
    depth = np.zeros(inside.shape, np.float32)
    depth[sub] = ndi.distance_transform_edt(np.pad(inside[sub], 1))[1:-1, 1:-1, 1:-1]

    # lateral ventricles: deep CSF, off the midline, in a generous anatomical box (mm)
    x, y, z = (np.arange(n) + o for n, o in zip(inside.shape, origin, strict=True))
    xx, yy, zz = np.ix_(x, y, z)
    lat_box = (np.abs(xx) >= 3) & (np.abs(xx) <= 38) & (yy >= -65) & (yy <= 40)
    lat_box = lat_box & (zz >= -5) & (zz <= 40)
    cand = (csf > 0.5) & (depth > 15) & lat_box
    lab, n = ndi.label(cand)
    sizes = ndi.sum_labels(cand, lab, np.arange(1, n + 1))
    keep = np.argsort(sizes)[::-1][:2] + 1
    vent = np.isin(lab, keep)
    vdist = np.full(inside.shape, 100.0, np.float32)
    vdist[sub] = ndi.distance_transform_edt(~vent[sub])
    gmdist = np.zeros(inside.shape, np.float32)
    gmdist[sub] = ndi.distance_transform_edt(~(gm[sub] > 0.5))

    infra = (np.abs(xx) <= 30) & (yy >= -80) & (yy <= -15) & (zz <= -12)
    seeds = {
        "periventricular": (vdist > 0.5) & (vdist <= 2.0) & (wm > 0.5),
        "juxtacortical": (wm > 0.5)
        & (gmdist > 0)
        & (gmdist <= 2.0)
        & (vdist > 10)
        & ~infra
        & (depth > 4)
        & (depth <= 22),  # cortex, not the deep grey nuclei
        "deep": (wm > 0.85) & (vdist > 8) & (gmdist > 5) & ~infra,
        "infratentorial": (wm > 0.6) & (gmdist > 1.5) & infra,
        "cortical": (gm > 0.6) & (vdist > 10) & (depth > 2) & (depth <= 22),
        "artefact": (csf > 0.5) & (depth > 5),
    }
    seeds = {k: np.argwhere(v).astype(np.int32) for k, v in seeds.items()}

    tips = []
    for k in keep:
        idx = np.argwhere(lab == k)
        for end in (idx[:, 1].argmax(), idx[:, 1].argmin()):  # frontal and occipital horns
            p = idx[end].astype(np.float64)
            tips.append((p, _gradient(vdist, p)))
    vidx = np.argwhere(vent)
    return _Template(
        gm, wm, csf, vdist, origin, lo, hi, vidx.min(0), vidx.max(0), seeds, tuple(tips)
    )


def _gradient(vol: np.ndarray, p: np.ndarray, h: int = 2) -> np.ndarray:
    """Unit gradient of ``vol`` at index ``p`` by central differences of step ``h``."""
    i = np.clip(np.rint(p).astype(int), h, np.array(vol.shape) - h - 1)
    g = np.zeros(3)
    for a in range(3):
        e = np.zeros(3, int)
        e[a] = h
        g[a] = float(vol[tuple(i + e)]) - float(vol[tuple(i - e)])
    norm = np.linalg.norm(g)
    return g / norm if norm > 0 else np.array([0.0, 0.0, 1.0])


@functools.lru_cache(maxsize=4)
def _template_at(spacing: float, sharpen: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSF, GM, WM fractions at 1 mm for rendering at ``spacing``.

    The population-average probability maps are blurrier than one subject's anatomy, so
    they are sharpened, ``p_t^g / sum_s p_s^g`` within the brain (g = ``sharpen``). A voxel
    of side s averages the continuous map over a box of std s/sqrt(12); the 1 mm maps
    already have 1/sqrt(12), so the maps are then smoothed by the remaining Gaussian std
    sqrt(s^2 - 1)/sqrt(12) mm.
    """
    t = _template()
    maps = np.stack([t.csf, t.gm, t.wm])
    if sharpen != 1.0:
        total = maps.sum(axis=0)
        powered = maps**sharpen
        norm = powered.sum(axis=0)
        maps = np.where(norm > 0, powered * (total / np.maximum(norm, 1e-12)), 0.0)
        maps = maps.astype(np.float32)
    if spacing > 1.0:
        sigma = math.sqrt(spacing**2 - 1.0) / math.sqrt(12.0)
        maps = np.stack([ndi.gaussian_filter(m, sigma, mode="constant") for m in maps])
    return maps[0], maps[1], maps[2]


# --------------------------------------------------------------------------- random fields


def _rbf_field(
    rng: np.random.Generator,
    axes: Sequence[np.ndarray],
    bounds: Sequence[tuple[float, float]],
    length: float,
    n_fields: int = 1,
) -> list[np.ndarray]:
    """Smooth random fields of unit variance, evaluated on a separable grid.

    ``f(x) = sum_j c_j prod_a B_a(x_a - p_ja)`` with Gaussian bumps ``B`` of width
    ``length`` on control points every ``length`` mm over ``bounds`` and ``c_j ~ N(0, 1)``;
    each row of the per-axis bases is normalised so that Var f(x) = 1. The coefficients
    depend only on ``bounds`` and ``length``, not on the evaluation grid.

    Args:
        rng: Generator.
        axes: Three 1-D arrays of positions (mm) along x, y, z.
        bounds: (lo, hi) mm per axis over which the control points lie.
        length: Correlation length (mm).
        n_fields: Number of independent fields.

    Returns:
        ``n_fields`` arrays of shape (len(x), len(y), len(z)) float32.
    """
    bases = []
    for pos, (lo, hi) in zip(axes, bounds, strict=True):
        ctrl = np.arange(lo - 2 * length, hi + 2 * length + 1e-6, length)
        b = np.exp(-0.5 * ((pos[:, None] - ctrl[None]) / length) ** 2)
        bases.append(b / np.linalg.norm(b, axis=1, keepdims=True))
    shape = tuple(b.shape[1] for b in bases)
    out = []
    for _ in range(n_fields):
        c = rng.standard_normal(shape)
        f = np.einsum("ia,abc->ibc", bases[0], c)
        f = np.einsum("jb,ibc->ijc", bases[1], f)
        f = np.einsum("kc,ijc->ijk", bases[2], f)
        out.append(f.astype(np.float32))
    return out


# --------------------------------------------------------------------------- blobs

_FIB = None


def _fibonacci(n: int = 256) -> np.ndarray:
    global _FIB
    if _FIB is None:
        i = np.arange(n) + 0.5
        phi = np.arccos(1 - 2 * i / n)
        theta = math.pi * (1 + 5**0.5) * i
        _FIB = np.stack(
            [np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)], axis=1
        )
    return _FIB


@dataclass
class _Blob:
    """An irregular soft ellipsoid in template space (mm).

    The surface radius along unit direction u (blob frame) is
    ``R(u) = (1 + g(u)) / sqrt(sum_i (u_i / a_i)^2)`` with
    ``g(u) = sum_k alpha_k cos(f_k w_k . u + phi_k)``; the fraction at a point at distance
    r along u is ``Phi((R(u) - r) / sigma)``.
    """

    centre: np.ndarray  # (3,) template index (= mm)
    rot: np.ndarray  # (3, 3) columns = principal axes
    axes: np.ndarray  # (3,) semi-axes mm
    edge: float  # intrinsic edge std (mm)
    w: np.ndarray  # (K, 3)
    f: np.ndarray  # (K,)
    phi: np.ndarray  # (K,)
    alpha: np.ndarray  # (K,)

    def radius(self, u: np.ndarray) -> np.ndarray:
        """Surface radius (mm) along unit directions ``u`` (..., 3) in the blob frame."""
        base = 1.0 / np.sqrt(np.sum((u / self.axes) ** 2, axis=-1))
        g = np.cos(u @ (self.w * self.f[:, None]).T + self.phi) @ self.alpha
        return base * (1.0 + g)

    @property
    def extent(self) -> float:
        """Radius (mm) of a ball around the centre that holds every fraction > 0.5."""
        return float(self.axes.max() * (1.0 + self.alpha.sum()))

    def fraction(self, d: np.ndarray, sigma: float) -> np.ndarray:
        """Volume fraction at offsets ``d`` (3, ...) float32 mm from the centre."""
        q = np.tensordot(self.rot.T.astype(np.float32), d, axes=1)
        q[0] += np.float32(1e-4)  # no point exactly at the centre (direction undefined)
        r = np.sqrt(np.sum(q * q, axis=0))
        u = np.moveaxis(q / r, 0, -1)
        dist = self.radius(u).astype(np.float32) - r
        return (0.5 * erfc(-dist / np.float32(sigma * math.sqrt(2.0)))).astype(np.float32)


def _make_blob(
    rng: np.random.Generator,
    centre: np.ndarray,
    volume: float,
    elongation: float,
    axis: np.ndarray | None,
    edge: float,
    irregularity: float,
    flat: bool = False,
) -> _Blob:
    """Draw a blob of the given volume (mm3 of its 0.5 level set).

    Args:
        rng: Generator.
        centre: (3,) template index.
        volume: Target volume in mm3.
        elongation: Ratio of the long axis to the others (``flat``: of the others to it).
        axis: Direction of the long (``flat``: short) axis, or None for random.
        edge: Edge std in mm.
        irregularity: Total amplitude of the radius perturbation.
        flat: Make an oblate blob (short axis along ``axis``), e.g. a cap.
    """
    if axis is None:
        axis = rng.standard_normal(3)
    axis = axis / np.linalg.norm(axis)
    rot, _ = np.linalg.qr(np.column_stack([axis, rng.standard_normal((3, 2))]))
    rot[:, 0] = axis  # qr may flip the sign
    minor = rng.uniform(0.8, 1.0)
    axes = (
        np.array([elongation, 1.0, minor])
        if not flat
        else np.array([1.0, elongation, minor * elongation])
    )
    k = 4
    w = rng.standard_normal((k, 3))
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    f = rng.uniform(1.5, 4.0, k)
    phi = rng.uniform(0, 2 * math.pi, k)
    alpha = rng.dirichlet(np.ones(k)) * irregularity * rng.uniform(0.5, 1.0)
    blob = _Blob(centre.astype(np.float64), rot, axes, edge, w, f, phi, alpha)
    v_unit = 4.0 * math.pi / 3.0 * float(np.mean(blob.radius(_fibonacci()) ** 3))
    blob.axes = axes * (volume / v_unit) ** (1.0 / 3.0)
    return blob


@dataclass
class _Item:
    """A lesion or mimic: one or more blobs with one signal."""

    kind: str
    volume: float
    ratio: float
    blobs: list[_Blob]
    parenchymal: bool = True
    info: dict[str, Any] = field(default_factory=dict)


def _seed_point(rng: np.random.Generator, t: _Template, kind: str) -> np.ndarray:
    pts = t.seeds[kind]
    return pts[rng.integers(len(pts))].astype(np.float64) + rng.uniform(-0.5, 0.5, 3)


def _wm_at(t: _Template, p: np.ndarray) -> float:
    i = np.clip(np.rint(p).astype(int), 0, np.array(t.wm.shape) - 1)
    return float(t.wm[tuple(i)])


def _draw_lesion(rng: np.random.Generator, t: _Template, p: PhantomParams) -> _Item:
    kinds = list(p.placement)
    probs = np.array([p.placement[k] for k in kinds])
    kind = kinds[rng.choice(len(kinds), p=probs / probs.sum())]
    lo, hi = p.volume_range_mm3
    volume = float(
        np.clip(p.volume_median_mm3 * math.exp(p.volume_sigma * rng.standard_normal()), lo, hi)
    )
    ratio = p.ratio_range[0] + (p.ratio_range[1] - p.ratio_range[0]) * rng.beta(*p.ratio_beta)
    edge = rng.uniform(*p.edge_mm)
    n_blobs = int(rng.integers(2, 6)) if volume > p.confluent_mm3 else 1
    parts = rng.dirichlet(np.full(n_blobs, 4.0)) * volume * (1.25 if n_blobs > 1 else 1.0)
    blobs: list[_Blob] = []
    for _ in range(50):  # retry until the centre is in white matter
        seed = _seed_point(rng, t, kind)
        if kind == "periventricular":
            normal = _gradient(t.vdist, seed)
            elong = rng.uniform(*p.dawson_elongation)
            r0 = (3.0 * parts[0] / (4.0 * math.pi)) ** (1 / 3) * elong ** (2 / 3)
            centre = seed + normal * r0 * rng.uniform(0.4, 0.8)
        else:
            normal, elong = None, rng.uniform(*p.elongation)
            centre = seed
        if _wm_at(t, centre) > 0.4:
            break
    first = _make_blob(rng, centre, parts[0], elong, normal, edge, p.irregularity)
    blobs.append(first)
    for part in parts[1:]:  # confluent: neighbours along the wall / around the first blob
        prev = blobs[int(rng.integers(len(blobs)))]
        step = rng.standard_normal(3)
        if normal is not None:
            step -= normal * (step @ normal)
        step /= np.linalg.norm(step)
        r = (3.0 * part / (4.0 * math.pi)) ** (1 / 3)
        c = prev.centre + step * (prev.axes.min() + r) * rng.uniform(0.6, 0.9)
        blobs.append(_make_blob(rng, c, part, elong, normal, edge, p.irregularity))
    return _Item(kind, volume, float(ratio), blobs, info={"n_blobs": n_blobs})


def _far_from(blobs: Sequence[_Blob], lesions: Sequence[_Item], margin: float = 1.0) -> bool:
    for b in blobs:
        for item in lesions:
            for lb in item.blobs:
                gap = np.linalg.norm(b.centre - lb.centre) - b.extent - lb.extent
                if gap < margin:
                    return False
    return True


def _draw_mimics(
    rng: np.random.Generator, t: _Template, p: PhantomParams, lesions: Sequence[_Item]
) -> list[_Item]:
    mimics: list[_Item] = []

    def add(item: _Item) -> None:
        if _far_from(item.blobs, lesions):
            mimics.append(item)

    for tip, out in t.tips:
        present = rng.random() < p.cap_prob
        vol = rng.uniform(*p.cap_mm3)
        ratio = rng.uniform(*p.cap_ratio)
        thick = rng.uniform(1.8, 3.0)
        centre = tip + out * rng.uniform(1.0, 2.5)
        blob = _make_blob(rng, centre, vol, thick, out, rng.uniform(0.6, 1.2), 0.15, flat=True)
        if present:
            add(_Item("cap", vol, ratio, [blob]))
    specs = (
        ("cortical", p.cortical_mean, p.cortical_mm3, p.cortical_ratio, "cortical", True),
        ("artefact", p.artefact_mean, p.artefact_mm3, p.artefact_ratio, "artefact", False),
        ("dawm", p.dawm_mean, p.dawm_mm3, p.dawm_ratio, "deep", True),
    )
    for kind, mean, vols, ratios, where, parenchymal in specs:
        for _ in range(int(rng.poisson(mean))):
            vol = math.exp(rng.uniform(math.log(vols[0]), math.log(vols[1])))
            ratio = rng.uniform(*ratios)
            edge = rng.uniform(*p.dawm_edge_mm) if kind == "dawm" else rng.uniform(*p.edge_mm)
            blob = _make_blob(
                rng, _seed_point(rng, t, where), vol, rng.uniform(1.0, 1.8), None, edge, 0.25
            )
            add(_Item(kind, vol, ratio, [blob], parenchymal=parenchymal))
    return mimics


# --------------------------------------------------------------------------- geometry


def _output_grid(
    spacing: float, shape: tuple[int, int, int] | None
) -> tuple[tuple[int, ...], np.ndarray]:
    t = _template()
    n_t = np.array(t.gm.shape)
    centre = t.origin + (n_t - 1) / 2.0
    if shape is None:
        shape = tuple(math.floor(n / spacing + 0.5) for n in n_t)
    shape = tuple(int(s) for s in shape)
    affine = np.eye(4)
    affine[:3, :3] *= spacing
    affine[:3, 3] = centre - spacing * (np.array(shape) - 1) / 2.0
    return shape, affine


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    rot = np.eye(3)
    for a in range(3):
        ang = math.radians(rng.uniform(-max_deg, max_deg))
        c, s = math.cos(ang), math.sin(ang)
        i, j = [k for k in range(3) if k != a]
        r = np.eye(3)
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        rot = rot @ r
    return rot


# --------------------------------------------------------------------------- the case


def generate_case(
    seed: int,
    spacing: float = 1.0,
    shape: tuple[int, int, int] | None = None,
    max_lesions: int = 40,
    params: PhantomParams = DEFAULT_PARAMS,
) -> PhantomCase:
    """Generate one phantom case (see the module docstring for the model).

    Args:
        seed: Seed of every random draw; the same seed gives the same bytes.
        spacing: Isotropic output voxel size (mm).
        shape: Output grid (X, Y, Z), cropping/padding the template's field of view around
            its centre; None keeps the whole field of view (197 x 233 x 189 mm).
        max_lesions: Upper bound of the lesion count.
        params: Physical parameters.

    Returns:
        The case: FLAIR (X, Y, Z) int16, mask (X, Y, Z) uint8 and ``info``.
    """
    rng = np.random.default_rng(seed)
    t = _template()
    p = params
    out_shape, out_affine = _output_grid(spacing, shape)

    # ---- draws that do not depend on the grid
    ti = csf_null_ti(p.tissue["csf"][0], p.tr_ms) * (1.0 + rng.uniform(-p.ti_jitter, p.ti_jitter))
    contrast = _Contrast(p, ti)
    rot = _rotation(rng, p.rotation_deg)
    lin = rot @ np.diag(1.0 + rng.uniform(-p.scale, p.scale, 3))
    n_les = round(max_lesions * rng.beta(*p.count_beta))
    lesions = [_draw_lesion(rng, t, p) for _ in range(n_les)]
    mimics = _draw_mimics(rng, t, p, lesions)
    rim_mm = rng.uniform(*p.rim_mm)
    rim_frac = rng.uniform(*p.rim_fraction)
    rim_ratio = rng.uniform(*p.rim_ratio)
    fwhm = rng.uniform(*p.fwhm_mm)
    thick_axis, thick = -1, 0.0
    if rng.random() < p.thick_prob:
        thick_axis = int(rng.choice(3, p=np.array(p.thick_axis_prob)))
        thick = rng.uniform(*p.thick_mm)
    bias_amp = rng.uniform(*p.bias)
    noise = rng.uniform(*p.noise)
    gain = p.wm_level / contrast.signal["wm"] * rng.uniform(*p.gain)

    # ---- the working box of the output grid that can contain brain
    centre_w = t.origin + (t.brain_lo + t.brain_hi - 1) / 2.0  # brain centre (world mm)
    bounds = list(zip(t.origin, t.origin + np.array(t.gm.shape) - 1, strict=True))
    inv = np.linalg.inv(lin)
    min_scale = float(min(np.linalg.svd(lin, compute_uv=False)))

    def out_box(lo_t: np.ndarray, hi_t: np.ndarray, pad_mm: float, start: np.ndarray) -> tuple:
        # index box (from ``start``) of the output voxels whose template point can fall in
        # the template-index box [lo_t, hi_t] when the displacement is at most pad_mm
        corners = np.array(
            [[(lo_t, hi_t)[c][a] for a, c in enumerate(bits)] for bits in np.ndindex(2, 2, 2)]
        )
        mapped = (corners + t.origin - centre_w) @ inv.T + centre_w
        margin = pad_mm / min_scale + spacing
        lo = np.floor((mapped.min(0) - margin - start) / spacing).astype(int)
        hi = np.ceil((mapped.max(0) + margin - start) / spacing).astype(int) + 1
        return lo, hi

    # the field's components have unit variance: 4.5 sd per component bounds the working box
    lo_i, hi_i = out_box(
        t.brain_lo, t.brain_hi - 1, 4.5 * math.sqrt(3.0) * p.deform_mm, out_affine[:3, 3]
    )
    lo_i, hi_i = np.clip(lo_i, 0, out_shape), np.clip(hi_i, 0, out_shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo_i, hi_i, strict=True))
    axes_w = [out_affine[a, 3] + spacing * np.arange(lo_i[a], hi_i[a]) for a in range(3)]
    base = np.array([ax[0] if len(ax) else 0.0 for ax in axes_w])
    bshape = tuple(len(a) for a in axes_w)

    # ---- deformation: template index P(x) = lin (x - c) + c + u(x) - origin
    disp = _rbf_field(rng, axes_w, bounds, p.deform_length_mm, 3)
    bias_f = _rbf_field(rng, axes_w, bounds, p.bias_length_mm, 1)[0]
    rim_mod = _rbf_field(rng, axes_w, bounds, 15.0, 1)[0]
    u_max = p.deform_mm * float(np.sqrt((disp[0] ** 2 + disp[1] ** 2 + disp[2] ** 2).max()))
    coords = np.empty((3, *bshape), np.float32)
    for i in range(3):
        acc = np.float32(centre_w[i] - t.origin[i]) + p.deform_mm * disp[i]
        for j in range(3):
            v = (lin[i, j] * (axes_w[j] - centre_w[j])).astype(np.float32)
            acc = acc + v.reshape([-1 if k == j else 1 for k in range(3)])
        coords[i] = acc
    del disp

    def sub_box(lo_t: np.ndarray, hi_t: np.ndarray) -> tuple[slice, ...] | None:
        lo, hi = out_box(lo_t, hi_t, u_max, base)
        lo, hi = np.maximum(lo, 0), np.minimum(hi, bshape)
        if np.any(hi <= lo):
            return None
        return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))

    csf_t, gm_t, wm_t = _template_at(float(spacing), float(p.tissue_sharpen))
    gm = ndi.map_coordinates(gm_t, coords, order=1, cval=0.0, output=np.float32)
    wm = ndi.map_coordinates(wm_t, coords, order=1, cval=0.0, output=np.float32)
    csf = ndi.map_coordinates(csf_t, coords, order=1, cval=0.0, output=np.float32)
    par = gm + wm

    # ---- lesions and mimics, rendered in their boxes
    sig_pv = spacing / math.sqrt(12.0)
    lam = np.zeros(bshape, np.float32)  # lesion fraction of the parenchyma (max over blobs)
    lab = np.zeros(bshape, np.int16)
    mlam = np.zeros(bshape, np.float32)
    mlab = np.zeros(bshape, np.int16)
    num = np.zeros(bshape, np.float32)  # sum_k w_k S_k over parenchymal abnormalities
    den = np.zeros(bshape, np.float32)
    art = np.zeros(bshape, np.float32)  # whole-voxel artefact fraction
    art_num = np.zeros(bshape, np.float32)
    art_den = np.zeros(bshape, np.float32)

    def render(item: _Item, k: int, frac: np.ndarray, labels: np.ndarray) -> None:
        s_k = np.float32(contrast.lesion_signal(item.ratio))
        for blob in item.blobs:
            reach = blob.extent + 4.0 * math.hypot(blob.edge, sig_pv)
            sl = sub_box(blob.centre - reach, blob.centre + reach)
            if sl is None:
                continue
            d = coords[(slice(None), *sl)] - (blob.centre[:, None, None, None]).astype(np.float32)
            f = blob.fraction(d, math.hypot(blob.edge, sig_pv))
            if item.parenchymal:
                num[sl] += f * s_k
                den[sl] += f
                vis = f * par[sl]
                labels[sl][(vis > 0.5) & (vis > frac[sl] * par[sl])] = k + 1
                np.maximum(frac[sl], f, out=frac[sl])
            else:
                art_num[sl] += f * s_k
                art_den[sl] += f
                np.maximum(art[sl], f, out=art[sl])
                labels[sl][(f > 0.5) & (f > frac[sl])] = k + 1
                np.maximum(frac[sl], f, out=frac[sl])

    les_info = []
    for k, item in enumerate(lesions):
        render(item, k, lam, lab)
    for k, item in enumerate(mimics):
        render(item, k, mlam, mlab)
    # the periventricular rim: thin, modulated band of lesion-like tissue near the ventricles
    rim = np.zeros(bshape, np.float32)
    vsl = sub_box(t.vent_lo - 15.0, t.vent_hi + 15.0)
    if vsl is not None:
        vdist = ndi.map_coordinates(t.vdist, coords[(slice(None), *vsl)], order=1, cval=100.0)
        r = rim_frac * np.exp(-vdist / rim_mm) / (1.0 + np.exp(-2.0 * rim_mod[vsl]))
        rim[vsl] = np.where(vdist > 0.2, r, 0.0)
    s_rim = np.float32(contrast.lesion_signal(rim_ratio))
    num += rim * s_rim
    den += rim
    ab = np.maximum(lam, np.maximum(mlam, rim))  # abnormal fraction of parenchyma
    mask_box = (lam * par) > 0.5
    lab[~mask_box] = 0
    s_ab = np.where(den > 0, num / np.maximum(den, 1e-12), 0.0).astype(np.float32)
    sig = contrast.signal
    clean = (
        csf * np.float32(sig["csf"])
        + (1.0 - ab) * (gm * np.float32(sig["gm"]) + wm * np.float32(sig["wm"]))
        + ab * par * s_ab
    )
    art_s = np.where(art_den > 0, art_num / np.maximum(art_den, 1e-12), 0.0)
    clean = ((1.0 - art) * clean + art * art_s).astype(np.float32)
    mimic_frac = np.maximum(np.maximum(mlam, rim) * par, art)

    # ---- scanner: blur (PSF + slice profile), bias, gain, Rician noise, skull strip
    sig_mm = np.full(3, fwhm / (2.0 * math.sqrt(2.0 * math.log(2.0))))
    if thick_axis >= 0:
        sig_mm[thick_axis] = math.hypot(sig_mm[thick_axis], thick / 2.3548)
    img = ndi.gaussian_filter(clean, sig_mm / spacing, mode="constant")
    brain = (gm + wm + csf) > 0.5
    bias = 1.0 + bias_amp * bias_f / max(float(np.abs(bias_f[brain]).max()), 1e-6)
    img *= (gain * bias).astype(np.float32)
    sd = np.float32(noise * gain * sig["wm"])
    n1 = rng.standard_normal(bshape, dtype=np.float32)
    n2 = rng.standard_normal(bshape, dtype=np.float32)
    img = np.sqrt((img + sd * n1) ** 2 + (sd * n2) ** 2)
    img = np.where(brain, np.maximum(np.rint(img), 1.0), 0.0)

    def full(a: np.ndarray, dtype: Any) -> np.ndarray:
        out = np.zeros(out_shape, dtype)
        out[box] = a
        return out

    flair = full(np.minimum(img, 32767), np.int16)
    mask = full(mask_box, np.uint8)
    lab_full = full(lab, np.int16)
    mlab_full = full(mlab, np.int16)
    counts = np.bincount(lab_full.ravel(), minlength=len(lesions) + 1)
    mcounts = np.bincount(mlab_full.ravel(), minlength=len(mimics) + 1)
    for k, item in enumerate(lesions):
        les_info.append(_item_info(item, int(counts[k + 1]), t))
    mim_info = [_item_info(m, int(mcounts[k + 1]), t) for k, m in enumerate(mimics)]
    mim_info.append(
        {
            "kind": "rim",
            "thickness_mm": float(rim_mm),
            "fraction": float(rim_frac),
            "ratio": float(rim_ratio),
        }
    )
    info = {
        "seed": int(seed),
        "spacing": float(spacing),
        "affine": out_affine,
        "ti_ms": float(ti),
        "wm_signal": float(gain * sig["wm"]),
        "tissue": {
            "csf": full(csf, np.float32),
            "gm": full(gm, np.float32),
            "wm": full(wm, np.float32),
        },
        "brain": full(brain, bool),
        "lesion_fraction": full(lam * par, np.float32),
        "mimic_fraction": full(mimic_frac, np.float32),
        "lesion_labels": lab_full,
        "mimic_labels": mlab_full,
        "lesions": les_info,
        "mimics": mim_info,
        "scanner": {
            "fwhm_mm": float(fwhm),
            "thick_axis": int(thick_axis),
            "thick_mm": float(thick),
            "bias": float(bias_amp),
            "noise": float(noise),
            "gain": float(gain),
        },
    }
    return PhantomCase(flair=_nifti(flair, out_affine), mask=_nifti(mask, out_affine), info=info)


def _item_info(item: _Item, n_voxels: int, t: _Template) -> dict[str, Any]:
    c = item.blobs[0].centre + t.origin
    return {
        "kind": item.kind,
        "volume_mm3": float(item.volume),
        "n_voxels": n_voxels,
        "ratio": float(item.ratio),
        "centre_mm": [float(v) for v in c],
        "n_blobs": len(item.blobs),
    }


def _nifti(data: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    img = nib.Nifti1Image(data, affine)
    img.set_data_dtype(data.dtype)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return img


# --------------------------------------------------------------------------- data set


def case_seed(seed: int, index: int) -> int:
    """Seed of case ``index`` of a data set with master ``seed`` (NumPy ``SeedSequence``)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def make_phantom_dataset(
    out_dir: Path, cfg: PhantomConfig, preview: bool = False, progress: bool = True
) -> Path:
    """Generate ``cfg.n_cases`` cases under ``out_dir`` and their manifest.

    Writes ``out_dir/<case_id>/flair.nii.gz`` and ``mask.nii.gz`` (each atomically),
    ``out_dir/phantom.json`` (config, parameters and per-case summary), then
    ``out_dir/cases.csv`` last, so an interrupted run never lists a half-written case;
    with ``preview`` also ``out_dir/preview.png`` (:func:`write_preview`).

    Args:
        out_dir: Output folder (created; other files in it are left alone).
        cfg: Number of cases, master seed, grid and lesion bound. Case ``i`` is
            ``case_{i:03d}`` with seed :func:`case_seed` (cfg.seed, i).
        preview: Also write the preview picture.
        progress: Show a progress bar.

    Returns:
        The manifest path ``out_dir/cases.csv``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cases, summary = [], []
    for i in track(range(cfg.n_cases), "phantom cases", enabled=progress):
        cid = f"case_{i:03d}"
        s = case_seed(cfg.seed, i)
        case = generate_case(s, cfg.spacing, cfg.shape, cfg.max_lesions)
        flair = save_nifti(
            out_dir / cid / "flair.nii.gz", case.flair.dataobj, case.flair.affine, dtype=np.int16
        )
        mask = save_nifti(
            out_dir / cid / "mask.nii.gz", case.mask.dataobj, case.mask.affine, dtype=np.uint8
        )
        cases.append(Case(cid, (flair,), mask))
        info = case.info
        summary.append(
            {
                "case_id": cid,
                "seed": s,
                "lesions": info["lesions"],
                "mimics": info["mimics"],
                "scanner": info["scanner"],
                "ti_ms": info["ti_ms"],
            }
        )
    meta = {
        "config": dataclasses.asdict(cfg),
        "params": DEFAULT_PARAMS.to_dict(),
        "cases": summary,
    }
    atomic_write_text(out_dir / "phantom.json", json.dumps(meta, indent=1))
    csv_path = out_dir / "cases.csv"
    write_manifest(csv_path, cases)
    if preview:
        write_preview(csv_path, out_dir / "preview.png")
    return csv_path


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    csv_path = Path(csv_path)
    out_png = Path(out_png) if out_png is not None else csv_path.parent / "preview.png"
    cases = read_manifest(csv_path, ("flair",), require_mask=False)[:max_cases]
    n = len(cases)
    cols = min(columns, n)
    rows = math.ceil(n / cols)
    fig, axs = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.6 * rows), squeeze=False)
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
        ax.set_title(f"{title} (z={z})", fontsize=8)
    fig.suptitle(
        "FLAIR (window 0 to 2 x brain median), axial slice with the most lesion voxels; "
        "red: ground-truth contour",
        fontsize=9,
    )
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=90, format="png")
    plt.close(fig)
    return atomic_write_bytes(out_png, buffer.getvalue())
