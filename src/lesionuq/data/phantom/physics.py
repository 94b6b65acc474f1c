"""FLAIR contrast: the inversion-recovery signal equation and lesion contrast inversion."""

from __future__ import annotations

import math

import numpy as np

from lesionuq.data.phantom.params import DEFAULT_PARAMS, TISSUES, PhantomParams

__all__ = ["Contrast", "csf_null_ti", "flair_signal"]


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


class Contrast:
    """Tissue signals at one TI and the inverse map lesion/WM ratio -> signal.

    A lesion's (T1, T2, PD) lies on the line from white matter to the nominal lesion
    values; :meth:`lesion_signal` picks the point of that line with the requested
    lesion/WM signal ratio.

    Args:
        params: The physical parameters (TR, TE, tissue relaxation times).
        ti: Inversion time (ms).

    Attributes:
        ti: The inversion time (ms).
        signal: Noiseless signal per tissue (``csf``, ``gm``, ``wm``, ``lesion``).
    """

    def __init__(self, params: PhantomParams, ti: float):
        self.ti = ti
        tissue = params.tissue
        self.signal = {
            k: float(flair_signal(*tissue[k], tr=params.tr_ms, te=params.te_ms, ti=ti))
            for k in TISSUES
        }
        wm, lesion = np.array(tissue["wm"]), np.array(tissue["lesion"])
        s = np.linspace(0.0, 1.0, 201)
        line = wm[None] + s[:, None] * (lesion - wm)[None]  # (201, 3) (T1, T2, PD)
        ratio = flair_signal(line[:, 0], line[:, 1], line[:, 2], params.tr_ms, params.te_ms, ti)
        ratio = np.asarray(ratio) / self.signal["wm"]  # (201,): array in, array out
        stop = int(np.argmax(ratio)) + 1  # monotone part of the white-matter -> lesion line
        self._ratio, self._signal = ratio[:stop], ratio[:stop] * self.signal["wm"]

    def lesion_signal(self, ratio: float) -> float:
        """Signal of lesion-like tissue whose (T1, T2, PD) gives ``ratio`` x WM signal.

        Ratios above the line's maximum take the maximum; ratios are otherwise exact.
        """
        return float(np.interp(ratio, self._ratio, self._signal))
