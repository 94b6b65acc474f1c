"""What one scan's prediction gives back: :class:`PredictResult`.

Built by the writers (:mod:`lesionuq.predict.write`) once the output folder is complete
and returned by :func:`lesionuq.predict.scan.predict_scan`; :meth:`PredictResult.summary`
is what the CLI prints.

Example:
    >>> res = predict_scan("runs/demo/fold_0", ["flair.nii.gz"], "pred/")
    >>> print(res.summary())
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from lesionuq.evaluation.render import plain_text
from lesionuq.predict.model import ReviewRule

__all__ = ["PredictResult"]


@dataclass
class PredictResult:
    """What :func:`~lesionuq.predict.scan.predict_scan` wrote.

    Attributes:
        out: The output folder.
        table: ``lesions.csv`` as a DataFrame (sorted by ``p_fp`` descending).
        threshold: P(FP) at or above which a lesion is flagged for review.
        model: The model folder.
        images: The input scans.
        case_id: Name of the case (default: the first image's file name).
        seconds: Wall time of the prediction.
        warnings: Sentences for the user: the shift warning (the scan is unlike the
            validation scans) and the note of an uncalibrated model folder.
        rule: How the review threshold was chosen.
        location: With ``location``: the ``location`` entry of ``lesions.json``
            (registration, rules, counts per region, DIS verdicts); None without.
    """

    out: Path
    table: pd.DataFrame
    threshold: float
    model: Path
    images: tuple[Path, ...]
    case_id: str
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    rule: ReviewRule | None = None
    location: dict[str, object] | None = None

    @property
    def n_lesions(self) -> int:
        """Number of lesions found."""
        return len(self.table)

    @property
    def n_review(self) -> int:
        """Number of lesions with ``p_fp >= threshold``."""
        return int(self.table["review"].sum()) if len(self.table) else 0

    def summary(self, max_rows: int = 10) -> str:
        """A few lines for the terminal: counts, the most doubtful lesions, the folder."""
        name = plain_text(self.case_id)  # a Latin-1 file name prints as text
        if self.n_lesions == 0:
            return (
                f"{name}: no lesion found; wrote an empty table and zero maps to "
                f"{self.out} ({self.seconds:.1f} s)."
            )
        head = (
            f"{name}: {self.n_lesions} lesion(s), {self.n_review} to review "
            f"(P(FP) >= {self.threshold:g}); wrote {self.out} ({self.seconds:.1f} s)."
        )
        shown = self.table.head(max_rows)[
            ["lesion_id", "volume_ml", "p_fp", "iou_pred", "review"]
        ].to_string(index=False, float_format=lambda v: f"{v:.3f}")
        more = (
            f"\n... {self.n_lesions - max_rows} more in lesions.csv"
            if (self.n_lesions > max_rows)
            else ""
        )
        dis = self.location.get("dis") if self.location else None
        tail = f"\n{dis['sentence']}" if isinstance(dis, dict) else ""
        return f"{head}\n{shown}{more}{tail}"
