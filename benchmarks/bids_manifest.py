"""Time of ``lesionuq manifest --layout bids`` against the number of subjects.

Each size builds a BIDS tree of N subjects (``sub-XXXXX/anat/sub-XXXXX_{FLAIR,T1w}.nii.gz``
and a lesion mask in ``derivatives/manual``; empty files, which pybids indexes by name)
and times, in the same run:

- ``index``: pybids' ``BIDSLayout`` of the raw and derivatives data sets alone (file
  names, no sidecar metadata, as the layout builds them), the floor any pybids-based
  manifest pays;
- ``manifest``: :func:`lesionuq.datasets.build_manifest` (``bids``, ``flair,t1``), which
  builds the same indexes and then runs one query per suffix;
- ``per-subject queries`` (reference, up to ``--ref-max`` subjects): the earlier
  strategy, three pybids queries per subject after indexing, which rescan the index and
  made the manifest quadratic in the subjects (issue 25 item 14).

Run: ``python benchmarks/bids_manifest.py [--sizes 500,1000,2500,5000,10000]
[--ref-max 1000]``. Needs pybids (``pip install 'lesionuq[bids]'``).

Measured (pybids 0.22, 2 CPU cores shared with other jobs, load average 11-15, so single
timings vary by up to 2x; ``--sizes 250,500,1000,2500,5000,10000 --ref-max 500``):

| subjects | index (s) | manifest (s) | manifest - index (s) | per-subject queries (s) |
|---:|---:|---:|---:|---:|
| 250 | 3.1 | 2.1 | -0.9 | 38.8 |
| 500 | 9.5 | 9.2 | -0.3 | 99.0 |
| 1000 | 8.9 | 7.8 | -1.1 | - |
| 2500 | 17.0 | 37.1 | 20.2 | - |
| 5000 | 111.7 | 41.7 | -70.1 | - |
| 10000 | 62.7 | 76.3 | 13.6 | - |

The manifest costs what pybids' indexing costs (linear); the per-subject reference grows
2.6x from 250 to 500 subjects.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from lesionuq.datasets import build_manifest


def make_tree(root: Path, n: int) -> None:
    """A BIDS data set of ``n`` subjects with a derivatives folder of lesion masks."""
    deriv = root / "derivatives" / "manual"
    deriv.mkdir(parents=True)
    raw = {"Name": "bench", "BIDSVersion": "1.10.0"}
    made = {"DatasetType": "derivative", "GeneratedBy": [{"Name": "Manual"}]}
    for folder, desc in ((root, raw), (deriv, {**raw, **made})):
        (folder / "dataset_description.json").write_text(json.dumps(desc))
    for i in range(n):
        sub = f"sub-{i:05d}"
        anat = root / sub / "anat"
        anat.mkdir(parents=True)
        (anat / f"{sub}_FLAIR.nii.gz").touch()
        (anat / f"{sub}_T1w.nii.gz").touch()
        (deriv / sub / "anat").mkdir(parents=True)
        (deriv / sub / "anat" / f"{sub}_space-orig_label-lesion_mask.nii.gz").touch()


def _layouts(root: Path):
    """The raw and derivatives indexes, built as the bids layout builds them."""
    from bids import BIDSLayout, BIDSLayoutIndexer

    def index(folder: Path, **kwargs):
        indexer = BIDSLayoutIndexer(validate=False, index_metadata=False)
        return BIDSLayout(str(folder), validate=False, indexer=indexer, **kwargs)

    deriv = index(root / "derivatives" / "manual", is_derivative=True)
    return index(root, derivatives=False), deriv


def index_only(root: Path) -> None:
    _layouts(root)


def per_subject_queries(root: Path) -> None:
    """Reference: index, then three queries per subject (the earlier, quadratic loop)."""
    layout, deriv = _layouts(root)
    ext = [".nii.gz", ".nii"]
    for sub in layout.get_subjects():
        query = {"subject": sub, "datatype": "anat", "extension": ext}
        for suffix in ("FLAIR", "T1w"):
            layout.get(suffix=suffix, **query)
        deriv.get(suffix="mask", label="lesion", **query)


def timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="500,1000,2500,5000,10000")
    parser.add_argument("--ref-max", type=int, default=1000)
    args = parser.parse_args()
    print(
        "| subjects | index (s) | manifest (s) | manifest - index (s) | per-subject queries (s) |"
    )
    print("|---:|---:|---:|---:|---:|")
    for n in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp) / "ds"
            make_tree(root, n)
            t_index = timed(index_only, root)
            t_manifest = timed(build_manifest, "bids", root, Path(tmp) / "c.csv", ("flair", "t1"))
            lines = (Path(tmp) / "c.csv").read_text().count("\n") - 1
            assert lines == n, (lines, n)
            t_ref = timed(per_subject_queries, root) if n <= args.ref_max else float("nan")
        ref = f"{t_ref:.1f}" if t_ref == t_ref else "-"
        print(
            f"| {n} | {t_index:.1f} | {t_manifest:.1f} | {t_manifest - t_index:.1f} | {ref} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
