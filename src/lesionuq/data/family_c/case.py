"""Draw and render one family-C case.

Contrast: a per-scan latent protocol vector ``(te, ti, tr)`` ~ U(0, 1)^3 sets the tissue
means relative to white matter (grey matter ``1.12 + 0.22 te - 0.06 tr``, deep grey
``1 + 0.14 te``, brainstem ``1 + 0.06 te``, cerebellar cortex ``gm (0.94 + 0.06 tr)``,
hippocampus ``0.98 gm``, CSF ``0.02 + 0.25 (1 - ti)^2``: imperfect, varying
suppression) and the lesion contrast gain ``0.75 + 0.5 te`` (a lesion of ratio ``r``
shows ``1 + gain (r - 1)``). Each tissue's intensity is a two-component Gaussian
mixture in space: a smooth selector field (3 mm) picks the component (weight 0.3-0.7,
means 2-6 % apart), and a finer texture field (1.5 mm) adds 1-3 % within it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi
from scipy.special import ndtri

from lesionuq.data.family_c.anatomy import (
    BOX_MM,
    SubjectC,
    draw_subject,
    reference_points,
    tissue_maps,
)
from lesionuq.data.family_c.fields import LatticeField, bandpass_field
from lesionuq.data.family_c.lesions import (
    LesionC,
    MimicC,
    draw_lesion_count,
    draw_lesions,
    draw_mimics,
    lesion_maps,
    mimic_maps,
)
from lesionuq.data.family_c.scanner import acquire, bias_lattice, draw_scanner

__all__ = ["CaseDrawC", "PhantomCaseC", "draw_case_c", "render_case_c", "render_factor"]

TISSUES = ("wm", "gm", "deep", "hippo_l", "hippo_r", "stem", "cb_wm", "cb_gm", "csf")
"""The tissue fractions of :func:`~lesionuq.data.family_c.anatomy.tissue_maps` that
carry signal."""

_ALLOWED = {
    "periventricular": ("wm",),
    "deep": ("wm",),
    "juxtacortical": ("wm", "gm"),
    "infratentorial": ("stem", "cb_wm", "cb_gm"),
}
_TEXTURE_BOX = ((-88.0, 88.0), (-114.0, 90.0), (-86.0, 94.0))


@dataclass
class CaseDrawC:
    """Every random choice of one family-C case (rendering is deterministic given it).

    Attributes:
        seed: The case's seed.
        subject: The procedural anatomy.
        protocol: Latent protocol ``te``, ``ti``, ``tr`` in [0, 1].
        means: Tissue mean signal relative to white matter (keys of :data:`TISSUES`).
        mixture: Per tissue ``(weight, separation, texture)`` of its intensity mixture.
        lesion_gain: Lesion contrast gain of the protocol.
        selector: Smooth field choosing the mixture component.
        texture: Fine texture field.
        lesions: The ground-truth lesions.
        mimics: The mimics (not in the ground truth).
        n_drawn: The lesion count drawn (before placements that failed).
        scanner: The acquisition (:func:`~lesionuq.data.family_c.scanner.draw_scanner`).
    """

    seed: int
    subject: SubjectC
    protocol: dict[str, float]
    means: dict[str, float]
    mixture: dict[str, tuple[float, float, float]]
    lesion_gain: float
    selector: LatticeField
    texture: LatticeField
    lesions: list[LesionC]
    mimics: list[MimicC]
    n_drawn: int
    scanner: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able record of the draw (what ``phantom.json`` stores per case)."""
        return {
            "seed": self.seed,
            "subject": self.subject.summary(),
            "protocol": {k: round(v, 4) for k, v in self.protocol.items()},
            "means": {k: round(v, 4) for k, v in self.means.items()},
            "lesion_gain": round(self.lesion_gain, 4),
            "n_drawn": self.n_drawn,
            "lesions": [les.to_dict() for les in self.lesions],
            "mimics": [m.to_dict() for m in self.mimics],
            "scanner": self.scanner,
        }


def draw_case_c(seed: int, max_lesions: int = 40) -> CaseDrawC:
    """Draw every random choice of one family-C case (in mm, independent of spacing).

    Args:
        seed: Case seed.
        max_lesions: Lesion-load scale (:func:`~lesionuq.data.family_c.lesions.draw_lesion_count`:
            mean ``0.35 max_lesions``).

    Returns:
        The draw.
    """
    rng = np.random.default_rng(seed)
    subject = draw_subject(rng)
    te, ti, tr = (float(v) for v in rng.uniform(0.0, 1.0, size=3))
    gm = 1.12 + 0.22 * te - 0.06 * tr
    means = {
        "wm": 1.0,
        "gm": gm,
        "deep": 1.0 + 0.14 * te,
        "hippo_l": 0.98 * gm,
        "hippo_r": 0.98 * gm,
        "stem": 1.0 + 0.06 * te,
        "cb_wm": 1.0,
        "cb_gm": gm * (0.94 + 0.06 * tr),
        "csf": 0.02 + 0.25 * (1.0 - ti) ** 2,
    }
    mixture = {
        t: (
            float(rng.uniform(0.3, 0.7)),
            float(rng.uniform(0.02, 0.06)),
            float(rng.uniform(0.01, 0.03)),
        )
        for t in TISSUES
    }
    selector = bandpass_field(rng, _TEXTURE_BOX, 2.0, 3.0)
    texture = bandpass_field(rng, _TEXTURE_BOX, 1.0, 1.5)
    n_drawn = draw_lesion_count(rng, max_lesions)
    lesions = draw_lesions(rng, subject, n_drawn)
    mimics = draw_mimics(rng, subject, lesions)
    scanner = draw_scanner(rng)
    return CaseDrawC(
        seed=int(seed),
        subject=subject,
        protocol={"te": te, "ti": ti, "tr": tr},
        means=means,
        mixture=mixture,
        lesion_gain=0.75 + 0.5 * te,
        selector=selector,
        texture=texture,
        lesions=lesions,
        mimics=mimics,
        n_drawn=n_drawn,
        scanner=scanner,
    )


@dataclass
class PhantomCaseC:
    """One rendered family-C case.

    Attributes:
        flair: FLAIR image (X, Y, Z), int16 values, RAS affine.
        mask: Ground truth (X, Y, Z), uint8 (lesion fraction > 0.5).
        info: Summary: ``lesions`` (connected components of the mask),
            ``drawn_lesions``, ``kinds``, ``mimics`` (count per kind), ``brain_cm3``,
            ``lesion_mm3``, ``scanner``.
        maps: Output-grid fractions (X, Y, Z), float32: ``brain``, ``wm``, ``vent``,
            ``infra`` (brainstem and cerebellum), ``mimic`` (the largest mimic
            fraction), ``lesion``.
    """

    flair: nib.Nifti1Image
    mask: nib.Nifti1Image
    info: dict[str, Any]
    maps: dict[str, np.ndarray]


def render_factor(spacing: float) -> int:
    """Fine-rendering factor: the object is drawn at ``spacing / factor`` (2 above 1 mm)."""
    return 2 if spacing > 1.0 else 1


def _grid(spacing: float, shape: tuple[int, int, int] | None) -> tuple[np.ndarray, np.ndarray]:
    lo = np.array([b[0] for b in BOX_MM])
    hi = np.array([b[1] for b in BOX_MM])
    full = np.floor((hi - lo) / spacing + 0.5).astype(int)
    grid = full if shape is None else np.array(shape, dtype=int)
    origin = (lo + hi) / 2.0 - (grid - 1) / 2.0 * spacing
    return grid, origin


def _points(
    origin: np.ndarray, step: float, grid: np.ndarray
) -> tuple[list[np.ndarray], np.ndarray]:
    axes = [origin[a] + step * np.arange(grid[a]) for a in range(3)]
    world = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).astype(np.float32)
    return axes, world.reshape(-1, 3)


def _signal(draw: CaseDrawC, u: np.ndarray, tissue: dict[str, np.ndarray]) -> np.ndarray:
    """Tissue signal (N,) relative to white matter, with each tissue's intensity mixture."""
    sel = draw.selector(u)
    tex = draw.texture(u)
    out = np.zeros(len(u), dtype=np.float32)
    for t in TISSUES:
        weight, sep, rough = draw.mixture[t]
        threshold = float(ndtri(1.0 - weight))  # the upper component has probability weight
        upper = np.clip((sel - threshold) / 0.3 + 0.5, 0.0, 1.0)
        level = 1.0 - sep * weight + sep * upper  # mean over space ~ 1
        out += tissue[t] * (draw.means[t] * level * (1.0 + rough * tex))
    return out


def _allowed(
    tissue: dict[str, np.ndarray],
    lesions: list[LesionC],
    owner: np.ndarray,
    means: dict[str, float] | None = None,
) -> np.ndarray:
    """The tissue (N,) each voxel's owning lesion may replace (its kind's tissues).

    Args:
        tissue: Tissue fractions (N,) by name.
        lesions: The lesions.
        owner: Index (N,) of the lesion owning each voxel (-1: none).
        means: Weigh each tissue by its mean signal (the signal replaced); None for the
            plain fraction.

    Returns:
        ``sum_t w_t tissue_t`` over the owner's tissues (0 where no lesion), float32.
    """
    out = np.zeros(owner.shape, dtype=np.float32)
    kinds = np.array([list(_ALLOWED).index(les.kind) for les in lesions] + [-1])
    kind_of = kinds[owner]
    for k, names in enumerate(_ALLOWED.values()):
        sel = kind_of == k
        if sel.any():
            for n in names:
                w = 1.0 if means is None else means[n]
                out[sel] += np.float32(w) * tissue[n][sel]
    return out


def render_case_c(
    draw: CaseDrawC, spacing: float = 1.0, shape: tuple[int, int, int] | None = None
) -> PhantomCaseC:
    """Render a family-C draw on an isotropic output grid (deterministic).

    The object is rendered at ``spacing / render_factor(spacing)`` and acquired through
    k-space onto the output grid (:func:`~lesionuq.data.family_c.scanner.acquire`); the
    ground truth and the brain mask are rasterised directly on the output grid.

    Args:
        draw: The case's draw (:func:`draw_case_c`).
        spacing: Output voxel size (mm).
        shape: Output grid (X, Y, Z), centred on the box; None for the whole box.

    Returns:
        The case.
    """
    subject = draw.subject
    grid, origin = _grid(spacing, shape)
    f = render_factor(spacing)
    fine = spacing / f
    # --- the object, on the fine grid
    axes, world = _points(origin, fine, grid * f)
    u = reference_points(subject, world)
    full = tissue_maps(subject, u, fine)
    sub = np.flatnonzero(full["envelope"] > 0)  # the object is 0 elsewhere
    tissue = {k: v[sub] for k, v in full.items()}
    del full
    signal = _signal(draw, u[sub], tissue)
    for m, frac in zip(draw.mimics, mimic_maps(draw.mimics, u[sub], tissue, fine), strict=True):
        if m.kind == "hippocampus":
            base = np.float32(draw.means["hippo_r" if m.side else "hippo_l"])
        elif m.kind == "septum":
            wm, vent = tissue["wm"], tissue["vent"]
            base = (wm + vent * draw.means["csf"]) / np.maximum(wm + vent, 1e-6)
        else:
            base = np.float32(draw.means["csf"])
        signal += frac * (np.float32(m.ratio) - base)
    fine_shape = tuple(int(n) for n in grid * f)
    lfrac, factor, owner = lesion_maps(draw.lesions, u.reshape(*fine_shape, 3), axes, fine)
    lfrac, factor, owner = lfrac.ravel()[sub], factor.ravel()[sub], owner.ravel()[sub]
    hit = lfrac > 0
    if hit.any():
        # the lesion replaces its fraction of its kind's tissue (their mean signal)
        own = {t: tissue[t][hit] for t in TISSUES}
        allowed = _allowed(own, draw.lesions, owner[hit])
        replaced = _allowed(own, draw.lesions, owner[hit], draw.means)
        contrast = 1.0 + draw.lesion_gain * (factor[hit] - 1.0)
        les_signal = contrast * (1.0 + 0.03 * draw.texture(u[sub][hit]))
        signal[hit] += lfrac[hit] * (allowed * les_signal - replaced)
    signal *= bias_lattice(draw.scanner["bias"], BOX_MM)(world[sub])
    obj = np.zeros(len(u), dtype=np.float32)
    obj[sub] = signal
    del u, world, tissue, signal
    sc = draw.scanner
    magnitude = acquire(
        obj.reshape(fine_shape),
        f,
        spacing,
        sc["resolution_mm"],
        1.0 / sc["snr"],
        sc["noise_seed"],
    )
    image = sc["gain"] * np.power(np.maximum(magnitude, 0.0), sc["gamma"])

    # --- ground truth and brain mask, on the output grid
    out_axes, out_world = _points(origin, spacing, grid)
    u_out = reference_points(subject, out_world)
    t_out = tissue_maps(subject, u_out, spacing)
    out_shape = tuple(int(n) for n in grid)
    lf_out, _, owner_out = lesion_maps(
        draw.lesions, u_out.reshape(*out_shape, 3), out_axes, spacing
    )
    lesion = (lf_out.ravel() * _allowed(t_out, draw.lesions, owner_out.ravel())).reshape(out_shape)
    brain = t_out["envelope"].reshape(out_shape) > 0.5
    mask = ((lesion > 0.5) & brain).astype(np.uint8)
    mimic_list = mimic_maps(draw.mimics, u_out, t_out, spacing)
    mimic = np.max(mimic_list, axis=0) if mimic_list else np.zeros(len(u_out), np.float32)
    image = np.where(brain, np.maximum(image, 1.0), 0.0)

    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = origin
    flair = nib.Nifti1Image(np.rint(np.clip(image, 0, 32767)).astype(np.int16), affine)
    mask_img = nib.Nifti1Image(mask, affine)
    kinds: dict[str, int] = {}
    for les in draw.lesions:
        kinds[les.kind] = kinds.get(les.kind, 0) + 1
    mimics: dict[str, int] = {}
    for m in draw.mimics:
        mimics[m.kind] = mimics.get(m.kind, 0) + 1
    voxel = spacing**3
    info = {
        "lesions": int(ndi.label(mask, structure=np.ones((3, 3, 3)))[1]),
        "drawn_lesions": len(draw.lesions),
        "kinds": kinds,
        "mimics": mimics,
        "brain_cm3": round(float(brain.sum()) * voxel / 1000.0, 2),
        "lesion_mm3": round(float(mask.sum()) * voxel, 1),
        "scanner": {k: v for k, v in sc.items() if k not in ("bias", "noise_seed")},
    }
    maps = {
        "brain": t_out["envelope"].reshape(out_shape),
        "wm": t_out["wm"].reshape(out_shape),
        "vent": t_out["vent"].reshape(out_shape),
        "infra": (t_out["stem"] + t_out["cb_wm"] + t_out["cb_gm"]).reshape(out_shape),
        "mimic": mimic.reshape(out_shape),
        "lesion": lesion,
    }
    return PhantomCaseC(flair=flair, mask=mask_img, info=info, maps=maps)
