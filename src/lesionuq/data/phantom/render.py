"""Render a :class:`~lesionuq.data.phantom.draw.CaseDraw` into a FLAIR image and its mask.

Nothing here is random except through the draw's recorded generator state: the smooth
fields and the Rician noise are drawn from ``draw.field_generator()`` in a fixed order, so
``render_case(draw, spacing)`` gives the same bytes each time.

Rendering works on the *working box*: the part of the output grid that can hold brain
after the deformation. Every map is computed there and placed into the full grid at the
end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from lesionuq.data.phantom.anatomy import Template, load_template, output_grid, tissue_maps_at
from lesionuq.data.phantom.draw import Abnormality, CaseDraw, draw_case
from lesionuq.data.phantom.params import DEFAULT_PARAMS, PhantomParams
from lesionuq.data.phantom.physics import Contrast
from lesionuq.data.phantom.shapes import rbf_field

__all__ = ["PhantomCase", "generate_case", "render_case"]

RIM_MODULATION_MM = 15.0
"""Correlation length (mm) of the field that modulates the periventricular rim."""


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


def generate_case(
    seed: int,
    spacing: float = 1.0,
    shape: tuple[int, int, int] | None = None,
    max_lesions: int = 40,
    params: PhantomParams = DEFAULT_PARAMS,
) -> PhantomCase:
    """Generate one phantom case: ``render_case(draw_case(seed, ...), spacing, shape)``.

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
    return render_case(draw_case(seed, params, max_lesions), spacing, shape)


@dataclass(frozen=True)
class _BoxMapper:
    """Output-grid index boxes that can hold a template-index box after the deformation.

    The deformation maps output point x (world mm) to template index
    ``linear (x - centre) + centre + u(x) - origin``; its inverse stretches a box by at
    most ``pad_mm / min_scale`` for a displacement ``|u| <= pad_mm``.
    """

    origin: np.ndarray  # (3,) world mm of template voxel 0
    centre: np.ndarray  # (3,) world mm, the fixed point of the linear part (brain centre)
    inverse: np.ndarray  # (3, 3) inverse of the linear part
    min_scale: float  # smallest singular value of the linear part
    spacing: float  # output voxel size (mm)

    def index_box(
        self, lo_t: np.ndarray, hi_t: np.ndarray, pad_mm: float, start: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Index box [lo, hi) counted from world point ``start`` (3,) holding [lo_t, hi_t]."""
        corners = np.array(
            [[(lo_t, hi_t)[c][a] for a, c in enumerate(bits)] for bits in np.ndindex(2, 2, 2)]
        )
        mapped = (corners + self.origin - self.centre) @ self.inverse.T + self.centre
        margin = pad_mm / self.min_scale + self.spacing
        lo = np.floor((mapped.min(0) - margin - start) / self.spacing).astype(int)
        hi = np.ceil((mapped.max(0) + margin - start) / self.spacing).astype(int) + 1
        return lo, hi


@dataclass(frozen=True)
class _WorkingBox:
    """The working box: where in it a template-space box can land once deformed."""

    mapper: _BoxMapper
    start: np.ndarray  # (3,) world mm of the box's first voxel
    shape: tuple[int, int, int]
    max_displacement_mm: float

    def slices(self, lo_t: np.ndarray, hi_t: np.ndarray) -> tuple[slice, ...] | None:
        """Slices of the box that can hold template indices [lo_t, hi_t]; None if none."""
        lo, hi = self.mapper.index_box(lo_t, hi_t, self.max_displacement_mm, self.start)
        lo, hi = np.maximum(lo, 0), np.minimum(hi, self.shape)
        if np.any(hi <= lo):
            return None
        return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


class _Canvas:
    """Lesions, mimics and artefacts painted on the working box.

    Per voxel: the lesion and mimic fractions of the parenchyma (max over blobs), the label
    of the dominating visible lesion/mimic, the blob-weighted signal sums of parenchymal
    abnormalities (``signal_sum / weight_sum`` is their mean signal) and the whole-voxel
    fraction and signal sums of flow artefacts.
    """

    def __init__(
        self,
        coords: np.ndarray,
        parenchyma: np.ndarray,
        box: _WorkingBox,
        contrast: Contrast,
        spacing: float,
    ):
        shape = parenchyma.shape
        self.coords = coords  # (3, *shape) float32 template index of each voxel
        self.parenchyma = parenchyma  # GM + WM fraction
        self.box = box
        self.contrast = contrast
        self.partial_volume_sd = spacing / math.sqrt(12.0)  # a voxel's box profile (mm)
        self.lesion_fraction = np.zeros(shape, np.float32)
        self.lesion_labels = np.zeros(shape, np.int16)
        self.mimic_fraction = np.zeros(shape, np.float32)
        self.mimic_labels = np.zeros(shape, np.int16)
        self.signal_sum = np.zeros(shape, np.float32)
        self.weight_sum = np.zeros(shape, np.float32)
        self.artefact_fraction = np.zeros(shape, np.float32)
        self.artefact_signal_sum = np.zeros(shape, np.float32)
        self.artefact_weight_sum = np.zeros(shape, np.float32)

    def paint(self, item: Abnormality, label: int, lesion: bool) -> None:
        """Add ``item``'s blobs as ``label`` to the lesion (``lesion``) or mimic maps."""
        fraction = self.lesion_fraction if lesion else self.mimic_fraction
        labels = self.lesion_labels if lesion else self.mimic_labels
        signal = np.float32(self.contrast.lesion_signal(item.ratio))
        for blob in item.blobs:
            sd = math.hypot(blob.edge, self.partial_volume_sd)
            reach = blob.extent + 4.0 * sd
            sl = self.box.slices(blob.centre - reach, blob.centre + reach)
            if sl is None:
                continue
            offset = self.coords[(slice(None), *sl)] - blob.centre[:, None, None, None].astype(
                np.float32
            )
            f = blob.fraction(offset, sd)
            if item.parenchymal:
                self.signal_sum[sl] += f * signal
                self.weight_sum[sl] += f
                visible = f * self.parenchyma[sl]
                labels[sl][(visible > 0.5) & (visible > fraction[sl] * self.parenchyma[sl])] = label
            else:
                self.artefact_signal_sum[sl] += f * signal
                self.artefact_weight_sum[sl] += f
                np.maximum(self.artefact_fraction[sl], f, out=self.artefact_fraction[sl])
                labels[sl][(f > 0.5) & (f > fraction[sl])] = label
            np.maximum(fraction[sl], f, out=fraction[sl])


def render_case(
    draw: CaseDraw,
    spacing: float = 1.0,
    shape: tuple[int, int, int] | None = None,
) -> PhantomCase:
    """Render a draw on an isotropic grid (deterministic: same draw, same bytes).

    Args:
        draw: The case's random parameters (:func:`draw_case`).
        spacing: Isotropic output voxel size (mm).
        shape: Output grid (X, Y, Z) around the template's centre; None for its whole
            field of view.

    Returns:
        The case: FLAIR (X, Y, Z) int16, mask (X, Y, Z) uint8 and ``info``.
    """
    t = load_template()
    p = draw.params
    rng = draw.field_generator()
    out_shape, out_affine = output_grid(spacing, shape)
    contrast = Contrast(p, draw.ti_ms)

    # ---- the working box of the output grid that can contain brain
    brain_centre = t.origin + (t.brain_lo + t.brain_hi - 1) / 2.0
    bounds = list(zip(t.origin, t.origin + np.array(t.gm.shape) - 1, strict=True))
    mapper = _BoxMapper(
        origin=t.origin,
        centre=brain_centre,
        inverse=np.linalg.inv(draw.linear),
        min_scale=float(min(np.linalg.svd(draw.linear, compute_uv=False))),
        spacing=spacing,
    )
    # the field's components have unit variance: 4.5 sd per component bounds the working box
    lo_i, hi_i = mapper.index_box(
        t.brain_lo, t.brain_hi - 1, 4.5 * math.sqrt(3.0) * p.deform_mm, out_affine[:3, 3]
    )
    lo_i, hi_i = np.clip(lo_i, 0, out_shape), np.clip(hi_i, 0, out_shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo_i, hi_i, strict=True))
    axes_w = [out_affine[a, 3] + spacing * np.arange(lo_i[a], hi_i[a]) for a in range(3)]
    start = np.array([ax[0] if len(ax) else 0.0 for ax in axes_w])
    box_shape = (len(axes_w[0]), len(axes_w[1]), len(axes_w[2]))

    # ---- deformation: template index P(x) = linear (x - c) + c + u(x) - origin
    displacement = rbf_field(rng, axes_w, bounds, p.deform_length_mm, 3)
    bias_field = rbf_field(rng, axes_w, bounds, p.bias_length_mm, 1)[0]
    rim_modulation = rbf_field(rng, axes_w, bounds, RIM_MODULATION_MM, 1)[0]
    coords = _deformed_coordinates(draw.linear, displacement, axes_w, brain_centre, t.origin, p)
    ux, uy, uz = displacement
    u_max = p.deform_mm * float(np.sqrt((ux**2 + uy**2 + uz**2).max()))
    del displacement, ux, uy, uz
    working = _WorkingBox(mapper, start, box_shape, u_max)

    csf_t, gm_t, wm_t = tissue_maps_at(float(spacing), float(p.tissue_sharpen))
    gm = ndi.map_coordinates(gm_t, coords, order=1, cval=0.0, output=np.float32)
    wm = ndi.map_coordinates(wm_t, coords, order=1, cval=0.0, output=np.float32)
    csf = ndi.map_coordinates(csf_t, coords, order=1, cval=0.0, output=np.float32)
    parenchyma = gm + wm

    # ---- lesions and mimics, rendered in their boxes
    canvas = _Canvas(coords, parenchyma, working, contrast, spacing)
    for k, item in enumerate(draw.lesions):
        canvas.paint(item, k + 1, lesion=True)
    for k, item in enumerate(draw.mimics):
        canvas.paint(item, k + 1, lesion=False)
    rim = _rim_fraction(draw, t, coords, working, rim_modulation)
    rim_signal = np.float32(contrast.lesion_signal(draw.rim_ratio))
    canvas.signal_sum += rim * rim_signal
    canvas.weight_sum += rim

    # ---- noiseless FLAIR: tissue mixture, abnormal parenchyma, then flow artefacts
    abnormal = np.maximum(canvas.lesion_fraction, np.maximum(canvas.mimic_fraction, rim))
    mask_box = (canvas.lesion_fraction * parenchyma) > 0.5
    canvas.lesion_labels[~mask_box] = 0
    abnormal_signal = np.where(
        canvas.weight_sum > 0, canvas.signal_sum / np.maximum(canvas.weight_sum, 1e-12), 0.0
    ).astype(np.float32)
    sig = contrast.signal
    clean = (
        csf * np.float32(sig["csf"])
        + (1.0 - abnormal) * (gm * np.float32(sig["gm"]) + wm * np.float32(sig["wm"]))
        + abnormal * parenchyma * abnormal_signal
    )
    artefact_signal = np.where(
        canvas.artefact_weight_sum > 0,
        canvas.artefact_signal_sum / np.maximum(canvas.artefact_weight_sum, 1e-12),
        0.0,
    )
    artefact = canvas.artefact_fraction
    clean = ((1.0 - artefact) * clean + artefact * artefact_signal).astype(np.float32)
    mimic_fraction = np.maximum(np.maximum(canvas.mimic_fraction, rim) * parenchyma, artefact)

    # ---- scanner
    brain = (gm + wm + csf) > 0.5
    img = _scanner(clean, brain, bias_field, draw, spacing, sig["wm"], rng)

    def full(a: np.ndarray, dtype: Any) -> np.ndarray:
        out = np.zeros(out_shape, dtype)
        out[box] = a
        return out

    flair = full(np.minimum(img, 32767), np.int16)
    mask = full(mask_box, np.uint8)
    lesion_labels = full(canvas.lesion_labels, np.int16)
    mimic_labels = full(canvas.mimic_labels, np.int16)
    counts = np.bincount(lesion_labels.ravel(), minlength=len(draw.lesions) + 1)
    mimic_counts = np.bincount(mimic_labels.ravel(), minlength=len(draw.mimics) + 1)
    lesions_info = [_item_info(item, int(counts[k + 1]), t) for k, item in enumerate(draw.lesions)]
    mimics_info = [
        _item_info(item, int(mimic_counts[k + 1]), t) for k, item in enumerate(draw.mimics)
    ]
    mimics_info.append(
        {
            "kind": "rim",
            "thickness_mm": float(draw.rim_mm),
            "fraction": float(draw.rim_fraction),
            "ratio": float(draw.rim_ratio),
        }
    )
    info = {
        "seed": draw.seed,
        "spacing": float(spacing),
        "affine": out_affine,
        "ti_ms": float(draw.ti_ms),
        "wm_signal": float(draw.gain * sig["wm"]),
        "tissue": {
            "csf": full(csf, np.float32),
            "gm": full(gm, np.float32),
            "wm": full(wm, np.float32),
        },
        "brain": full(brain, bool),
        "lesion_fraction": full(canvas.lesion_fraction * parenchyma, np.float32),
        "mimic_fraction": full(mimic_fraction, np.float32),
        "lesion_labels": lesion_labels,
        "mimic_labels": mimic_labels,
        "lesions": lesions_info,
        "mimics": mimics_info,
        "scanner": {
            "fwhm_mm": float(draw.fwhm_mm),
            "thick_axis": int(draw.thick_axis),
            "thick_mm": float(draw.thick_mm),
            "bias": float(draw.bias),
            "noise": float(draw.noise),
            "gain": float(draw.gain),
        },
    }
    return PhantomCase(flair=_nifti(flair, out_affine), mask=_nifti(mask, out_affine), info=info)


def _deformed_coordinates(
    linear: np.ndarray,
    displacement: list[np.ndarray],
    axes_w: list[np.ndarray],
    centre: np.ndarray,
    origin: np.ndarray,
    p: PhantomParams,
) -> np.ndarray:
    """Template index of each working-box voxel, shape (3, X, Y, Z) float32.

    ``P(x) = linear (x - centre) + centre + deform_mm * u(x) - origin`` with ``u`` the
    unit-variance ``displacement`` (3 arrays (X, Y, Z)) and ``x`` on the grid ``axes_w``.
    """
    box_shape = tuple(len(a) for a in axes_w)
    coords = np.empty((3, *box_shape), np.float32)
    for i in range(3):
        acc = np.float32(centre[i] - origin[i]) + p.deform_mm * displacement[i]
        for j in range(3):
            v = (linear[i, j] * (axes_w[j] - centre[j])).astype(np.float32)
            acc = acc + v.reshape([-1 if k == j else 1 for k in range(3)])
        coords[i] = acc
    return coords


def _rim_fraction(
    draw: CaseDraw,
    t: Template,
    coords: np.ndarray,
    working: _WorkingBox,
    modulation: np.ndarray,
) -> np.ndarray:
    """The periventricular rim: a thin band of lesion-like tissue along the ventricles.

    Its fraction decays as ``exp(-d / rim_mm)`` with the distance ``d`` to the ventricles
    and is modulated by a smooth logistic field; (X, Y, Z) float32 on the working box.
    """
    rim = np.zeros(working.shape, np.float32)
    sl = working.slices(t.vent_lo - 15.0, t.vent_hi + 15.0)
    if sl is not None:
        vdist = ndi.map_coordinates(t.vdist, coords[(slice(None), *sl)], order=1, cval=100.0)
        band = draw.rim_fraction * np.exp(-vdist / draw.rim_mm)
        band = band / (1.0 + np.exp(-2.0 * modulation[sl]))
        rim[sl] = np.where(vdist > 0.2, band, 0.0)
    return rim


def _scanner(
    clean: np.ndarray,
    brain: np.ndarray,
    bias_field: np.ndarray,
    draw: CaseDraw,
    spacing: float,
    wm_signal: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Blur (PSF and slice profile), bias, gain, Rician noise and skull strip.

    Args:
        clean: (X, Y, Z) float32 noiseless image.
        brain: (X, Y, Z) bool brain support; outside it the image is 0, inside >= 1.
        bias_field: (X, Y, Z) float32 unit-variance smooth field.
        draw: The scanner draws (``fwhm_mm``, ``thick_*``, ``bias``, ``gain``, ``noise``).
        spacing: Voxel size (mm).
        wm_signal: Noiseless white-matter signal before gain.
        rng: The generator of the noise (after the smooth fields).

    Returns:
        (X, Y, Z) float image with integer values.
    """
    sigma_mm = np.full(3, draw.fwhm_mm / (2.0 * math.sqrt(2.0 * math.log(2.0))))
    if draw.thick_axis >= 0:
        sigma_mm[draw.thick_axis] = math.hypot(sigma_mm[draw.thick_axis], draw.thick_mm / 2.3548)
    img = ndi.gaussian_filter(clean, sigma_mm / spacing, mode="constant")
    scale = max(float(np.abs(bias_field[brain]).max()), 1e-6)
    bias = 1.0 + draw.bias * bias_field / scale
    img *= (draw.gain * bias).astype(np.float32)
    sd = np.float32(draw.noise * draw.gain * wm_signal)
    n1 = rng.standard_normal(clean.shape, dtype=np.float32)
    n2 = rng.standard_normal(clean.shape, dtype=np.float32)
    img = np.sqrt((img + sd * n1) ** 2 + (sd * n2) ** 2)
    return np.where(brain, np.maximum(np.rint(img), 1.0), 0.0)


def _item_info(item: Abnormality, n_voxels: int, t: Template) -> dict[str, Any]:
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
