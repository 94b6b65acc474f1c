"""Write a family-C data set: the same files and output-folder rule as families A and B."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lesionuq.data.family_c.anatomy import BOX_MM
from lesionuq.data.family_c.case import PhantomCaseC, draw_case_c, render_case_c, render_factor
from lesionuq.data.phantom.dataset import write_drawn_dataset

if TYPE_CHECKING:
    from lesionuq.config import PhantomConfig

__all__ = ["estimate_case_memory_c", "make_family_c_dataset"]

_BYTES_PER_FINE_VOXEL = 320  # points, reference points, tissue maps, lesion maps, FFT
_BYTES_PER_OUTPUT_VOXEL = 400  # the output-grid maps and the k-space copy
_BASE_BYTES = 0.3 * 2**30  # lattice fields and lesion fields


def estimate_case_memory_c(spacing: float, shape: tuple[int, int, int] | None = None) -> float:
    """Peak memory (bytes) of rendering one family-C case, an upper estimate.

    Args:
        spacing: Output voxel size (mm), > 0.
        shape: Output grid (X, Y, Z), or None for the whole box.

    Returns:
        Estimated bytes.
    """
    dims = (
        tuple(math.floor((hi - lo) / spacing + 0.5) for lo, hi in BOX_MM)
        if shape is None
        else shape
    )
    n_out = math.prod(int(d) for d in dims)
    n_fine = n_out * render_factor(spacing) ** 3
    return _BASE_BYTES + _BYTES_PER_FINE_VOXEL * n_fine + _BYTES_PER_OUTPUT_VOXEL * n_out


def make_family_c_dataset(
    out_dir: Path,
    cfg: PhantomConfig,
    preview: bool = False,
    progress: bool = True,
    memory_limit_gib: float | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``cfg.n_cases`` family-C cases under ``out_dir``, the same files as family A.

    Case ``i`` is ``case_{i:03d}`` with seed ``case_seed(cfg.seed, i)`` (family A's seed
    rule). ``out_dir`` follows the output-folder rule (:mod:`lesionuq.outputs`): new,
    empty, or a phantom data set lesionuq wrote; the data set is built in a temporary
    folder and moved into place when complete: the case folders, ``phantom.json``
    (config and every draw) and ``cases.csv`` (written last).

    Args:
        out_dir: Output folder.
        cfg: The data set config (``params`` must be empty: family C has no overrides).
        preview: Also write ``preview.png``.
        progress: Show a progress bar.
        memory_limit_gib: Refuse when one case needs more memory (GiB); default half of
            the available memory.
        overwrite: Replace an earlier phantom data set made with other settings.

    Returns:
        The manifest path ``out_dir/cases.csv``.

    Raises:
        InputError: ``out_dir`` is refused by the output-folder rule (nothing written).
        ConfigError: ``cfg.params`` is set (they are family A's parameters), the config
            is invalid, or one case needs more memory than the limit (nothing written).
    """

    def make_case(seed: int) -> tuple[PhantomCaseC, dict[str, Any]]:
        draw = draw_case_c(seed, cfg.max_lesions)
        return render_case_c(draw, cfg.spacing, cfg.shape), draw.to_dict()

    return write_drawn_dataset(
        Path(out_dir),
        cfg,
        "c",
        make_case,
        preview=preview,
        progress=progress,
        memory_limit_gib=memory_limit_gib,
        overwrite=overwrite,
        need_bytes=estimate_case_memory_c(cfg.spacing, cfg.shape),
    )
