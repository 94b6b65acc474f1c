"""Draw every random parameter of a case: a recorded, replayable :class:`CaseDraw`.

As TorchIO splits a random transform into ``get_params`` and a deterministic ``apply``,
:func:`draw_case` makes every random choice of a case (contrast, anatomy deformation,
lesions, mimics, scanner) and :func:`lesionuq.data.phantom.render.render_case` turns the
draw into images without drawing anything new. The draws do not depend on the output grid,
so one draw is the same subject at any spacing or field of view.

The smooth random fields (displacement, bias, rim modulation) and the Rician noise are
large arrays, the noise's size depends on the grid; the draw records the generator state
they come from (``field_state``) instead of the arrays, so a draw stays a small JSON value
that replays exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lesionuq.data.phantom.anatomy import Template, gradient, load_template
from lesionuq.data.phantom.params import DEFAULT_PARAMS, PhantomParams
from lesionuq.data.phantom.physics import Contrast, csf_null_ti
from lesionuq.data.phantom.shapes import Blob, make_blob

__all__ = ["Abnormality", "CaseDraw", "draw_case"]


@dataclass
class Abnormality:
    """A lesion or mimic: one or more blobs with one signal.

    Attributes:
        kind: ``periventricular``, ``juxtacortical``, ``deep``, ``infratentorial``
            (lesions) or ``cap``, ``cortical``, ``artefact``, ``dawm`` (mimics).
        volume: Drawn volume (mm3).
        ratio: Signal ratio to white matter.
        blobs: Its blobs (several for a confluent lesion).
        parenchymal: True when it replaces parenchyma (GM+WM); False for a flow artefact,
            which replaces the whole voxel.
    """

    kind: str
    volume: float
    ratio: float
    blobs: list[Blob]
    parenchymal: bool = True

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        return {
            "kind": self.kind,
            "volume": float(self.volume),
            "ratio": float(self.ratio),
            "blobs": [b.to_dict() for b in self.blobs],
            "parenchymal": bool(self.parenchymal),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Abnormality:
        """Inverse of :meth:`to_dict`."""
        blobs = [Blob.from_dict(b) for b in data["blobs"]]
        return cls(
            data["kind"],
            float(data["volume"]),
            float(data["ratio"]),
            blobs,
            bool(data["parenchymal"]),
        )


@dataclass
class CaseDraw:
    """Every random choice of one case; :func:`render_case` makes the images from it.

    Attributes:
        params: The physical parameters drawn from (rendering uses them too).
        seed: The integer seed, when the draw came from one (recorded in ``info``).
        ti_ms: Inversion time (ms), the CSF-nulling TI with its jitter.
        linear: (3, 3) linear part of the template deformation (rotation x scale).
        lesions: The ground-truth lesions.
        mimics: The discrete mimics that survived the 1 mm distance rule.
        rim_mm: Periventricular rim thickness (mm); ``rim_fraction`` its peak fraction,
            ``rim_ratio`` its signal ratio to white matter.
        fwhm_mm: In-plane blur FWHM (mm).
        thick_axis: Thick-slice axis (0, 1, 2) or -1 for none; ``thick_mm`` the slice
            thickness (0 for none).
        bias: Maximum relative deviation of the bias field.
        noise: Rician noise std as a fraction of the WM signal.
        gain: Intensity gain (WM signal ~ ``params.wm_level`` x gain factor).
        field_state: Bit-generator state the smooth fields and the noise are drawn from.
    """

    params: PhantomParams
    seed: int | None
    ti_ms: float
    linear: np.ndarray
    lesions: list[Abnormality]
    mimics: list[Abnormality]
    rim_mm: float
    rim_fraction: float
    rim_ratio: float
    fwhm_mm: float
    thick_axis: int
    thick_mm: float
    bias: float
    noise: float
    gain: float
    field_state: dict[str, Any] = field(repr=False)

    def field_generator(self) -> np.random.Generator:
        """A generator at :attr:`field_state` (a fresh one on each call)."""
        bit_generator = getattr(np.random, self.field_state["bit_generator"])()
        bit_generator.state = self.field_state
        return np.random.Generator(bit_generator)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict; :meth:`from_dict` gives back an equal draw (floats exactly)."""
        scalars = (
            "ti_ms",
            "rim_mm",
            "rim_fraction",
            "rim_ratio",
            "fwhm_mm",
            "thick_mm",
            "bias",
            "noise",
            "gain",
        )
        return {
            "params": self.params.to_dict(),
            "seed": self.seed,
            **{k: float(getattr(self, k)) for k in scalars},
            "thick_axis": int(self.thick_axis),
            "linear": self.linear.tolist(),
            "lesions": [a.to_dict() for a in self.lesions],
            "mimics": [a.to_dict() for a in self.mimics],
            "field_state": self.field_state,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CaseDraw:
        """Inverse of :meth:`to_dict`."""
        data = dict(data)
        data["params"] = PhantomParams.from_dict(data["params"])
        data["linear"] = np.asarray(data["linear"], dtype=np.float64)
        data["lesions"] = [Abnormality.from_dict(a) for a in data["lesions"]]
        data["mimics"] = [Abnormality.from_dict(a) for a in data["mimics"]]
        return cls(**data)


def draw_case(
    rng: np.random.Generator | int,
    params: PhantomParams = DEFAULT_PARAMS,
    max_lesions: int = 40,
) -> CaseDraw:
    """Draw every random parameter of one case (nothing grid-dependent).

    Args:
        rng: Generator, or an integer seed for ``np.random.default_rng``.
        params: Physical parameters.
        max_lesions: Upper bound of the lesion count ``round(max_lesions x Beta)``.

    Returns:
        The draw. Its fields and noise continue ``rng``'s stream from where the draw ends
        (``field_state``), so give each case its own generator (as :func:`generate_case`
        does with one seed per case).
    """
    seed = None
    if not isinstance(rng, np.random.Generator):
        seed = int(rng)
        rng = np.random.default_rng(seed)
    t = load_template()
    p = params
    ti = csf_null_ti(p.tissue["csf"][0], p.tr_ms) * (1.0 + rng.uniform(-p.ti_jitter, p.ti_jitter))
    contrast = Contrast(p, ti)
    rot = _rotation(rng, p.rotation_deg)
    linear = rot @ np.diag(1.0 + rng.uniform(-p.scale, p.scale, 3))
    n_lesions = round(max_lesions * rng.beta(*p.count_beta))
    lesions = [_draw_lesion(rng, t, p) for _ in range(n_lesions)]
    mimics = _draw_mimics(rng, t, p, lesions)
    rim_mm = rng.uniform(*p.rim_mm)
    rim_fraction = rng.uniform(*p.rim_fraction)
    rim_ratio = rng.uniform(*p.rim_ratio)
    fwhm = rng.uniform(*p.fwhm_mm)
    thick_axis, thick = -1, 0.0
    if rng.random() < p.thick_prob:
        thick_axis = int(rng.choice(3, p=np.array(p.thick_axis_prob)))
        thick = rng.uniform(*p.thick_mm)
    bias = rng.uniform(*p.bias)
    noise = rng.uniform(*p.noise)
    gain = p.wm_level / contrast.signal["wm"] * rng.uniform(*p.gain)
    field_state = dict(rng.bit_generator.state)
    return CaseDraw(
        params=p,
        seed=seed,
        ti_ms=ti,
        linear=linear,
        lesions=lesions,
        mimics=mimics,
        rim_mm=rim_mm,
        rim_fraction=rim_fraction,
        rim_ratio=rim_ratio,
        fwhm_mm=fwhm,
        thick_axis=thick_axis,
        thick_mm=thick,
        bias=bias,
        noise=noise,
        gain=gain,
        field_state=field_state,
    )


def _seed_point(rng: np.random.Generator, t: Template, kind: str) -> np.ndarray:
    pts = t.seeds[kind]
    return pts[rng.integers(len(pts))].astype(np.float64) + rng.uniform(-0.5, 0.5, 3)


def _wm_at(t: Template, p: np.ndarray) -> float:
    i = np.clip(np.rint(p).astype(int), 0, np.array(t.wm.shape) - 1)
    return float(t.wm[tuple(i)])


def _draw_lesion(rng: np.random.Generator, t: Template, p: PhantomParams) -> Abnormality:
    """One lesion: placement, volume (confluent when large), contrast and blobs."""
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
    blobs: list[Blob] = []
    for _ in range(50):  # retry until the centre is in white matter
        anchor = _seed_point(rng, t, kind)
        if kind == "periventricular":
            normal = gradient(t.vdist, anchor)
            elongation = rng.uniform(*p.dawson_elongation)
            r0 = (3.0 * parts[0] / (4.0 * math.pi)) ** (1 / 3) * elongation ** (2 / 3)
            centre = anchor + normal * r0 * rng.uniform(0.4, 0.8)
        else:
            normal, elongation = None, rng.uniform(*p.elongation)
            centre = anchor
        if _wm_at(t, centre) > 0.4:
            break
    first = make_blob(rng, centre, parts[0], elongation, normal, edge, p.irregularity)
    blobs.append(first)
    for part in parts[1:]:  # confluent: neighbours along the wall / around the first blob
        prev = blobs[int(rng.integers(len(blobs)))]
        step = rng.standard_normal(3)
        if normal is not None:
            step -= normal * (step @ normal)
        step /= np.linalg.norm(step)
        r = (3.0 * part / (4.0 * math.pi)) ** (1 / 3)
        neighbour = prev.centre + step * (prev.axes.min() + r) * rng.uniform(0.6, 0.9)
        blobs.append(make_blob(rng, neighbour, part, elongation, normal, edge, p.irregularity))
    return Abnormality(kind, volume, float(ratio), blobs)


def _far_from(blobs: Sequence[Blob], lesions: Sequence[Abnormality], margin: float = 1.0) -> bool:
    for b in blobs:
        for item in lesions:
            for lb in item.blobs:
                gap = np.linalg.norm(b.centre - lb.centre) - b.extent - lb.extent
                if gap < margin:
                    return False
    return True


def _draw_mimics(
    rng: np.random.Generator, t: Template, p: PhantomParams, lesions: Sequence[Abnormality]
) -> list[Abnormality]:
    """Caps, cortical spots, flow artefacts and dirty-appearing WM, none near a lesion.

    Every candidate is drawn (so the draws that follow do not depend on which survive);
    one within 1 mm of a lesion, or a cap that is absent, is dropped.
    """
    candidates: list[Abnormality] = []
    for tip, outward in t.tips:
        present = rng.random() < p.cap_prob
        volume = rng.uniform(*p.cap_mm3)
        ratio = rng.uniform(*p.cap_ratio)
        flatness = rng.uniform(1.8, 3.0)
        centre = tip + outward * rng.uniform(1.0, 2.5)
        edge = rng.uniform(0.6, 1.2)
        blob = make_blob(rng, centre, volume, flatness, outward, edge, 0.15, flat=True)
        if present:
            candidates.append(Abnormality("cap", volume, ratio, [blob]))
    specs = (
        ("cortical", p.cortical_mean, p.cortical_mm3, p.cortical_ratio, "cortical", True),
        ("artefact", p.artefact_mean, p.artefact_mm3, p.artefact_ratio, "artefact", False),
        ("dawm", p.dawm_mean, p.dawm_mm3, p.dawm_ratio, "deep", True),
    )
    for kind, mean, volumes, ratios, region, parenchymal in specs:
        for _ in range(int(rng.poisson(mean))):
            volume = math.exp(rng.uniform(math.log(volumes[0]), math.log(volumes[1])))
            ratio = rng.uniform(*ratios)
            edge = rng.uniform(*p.dawm_edge_mm) if kind == "dawm" else rng.uniform(*p.edge_mm)
            centre = _seed_point(rng, t, region)
            blob = make_blob(rng, centre, volume, rng.uniform(1.0, 1.8), None, edge, 0.25)
            candidates.append(Abnormality(kind, volume, ratio, [blob], parenchymal=parenchymal))
    mimics = [m for m in candidates if _far_from(m.blobs, lesions)]
    return mimics


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
