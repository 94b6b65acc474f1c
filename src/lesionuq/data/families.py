"""The phantom families behind one entry point: ``phantom.family`` picks the generator.

All write the same files (``case_XXX/flair.nii.gz``, ``case_XXX/mask.nii.gz``,
``phantom.json``, ``cases.csv`` last), so the whole pipeline runs unchanged on either.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from lesionuq.data.family_b import make_family_b_dataset
from lesionuq.data.family_c import make_family_c_dataset
from lesionuq.data.phantom import make_phantom_dataset

if TYPE_CHECKING:
    from lesionuq.config import PhantomConfig

__all__ = ["FAMILIES", "make_dataset"]

FAMILIES = {
    "a": "MNI152 2009 template and tissue maps, lesion blobs, signal equation "
    "(lesionuq.data.phantom)",
    "b": "fsaverage5 surfaces, sphere-union lesions, other mimics and scanner "
    "(lesionuq.data.family_b)",
    "c": "procedural anatomy (no template), random-field lesions, k-space scanner "
    "(lesionuq.data.family_c)",
}
"""Family name -> one-line description."""


def make_dataset(
    out_dir: Path,
    cfg: PhantomConfig,
    preview: bool = False,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Generate the phantom data set of ``cfg.family`` under ``out_dir``.

    Every family follows the output-folder rule (:mod:`lesionuq.outputs`): ``out_dir`` is
    new, empty, or a phantom data set lesionuq wrote.

    Args:
        out_dir: Output folder.
        cfg: The data set config (``cfg.family``: ``"a"``, ``"b"`` or ``"c"``).
        preview: Also write ``preview.png``.
        progress: Show a progress bar.
        overwrite: Replace an earlier phantom data set made with other settings.

    Returns:
        The manifest path ``out_dir/cases.csv``.
    """
    if cfg.family == "a":
        return make_phantom_dataset(
            out_dir, cfg, preview=preview, progress=progress, overwrite=overwrite
        )
    if cfg.family == "b":
        return make_family_b_dataset(
            out_dir, cfg, preview=preview, progress=progress, overwrite=overwrite
        )
    return make_family_c_dataset(
        out_dir, cfg, preview=preview, progress=progress, overwrite=overwrite
    )
