"""Lesion location of the U-Net's true positives against the phantom's drawn kinds (issue 30).

``benchmarks/location.py`` classifies the *drawn* lesions (a perfect segmenter's). This
bench asks the issue's question on what a user gets: the lesions the U-Net of a run found
and that are true positives, located by the run's graphs stage (``graphs.location: true``:
each preprocessed scan registered to MNI152 with SimpleITK, then the rules of
:mod:`lesionuq.location.classify`). Each case of the run's family-A phantom data set is
drawn again from its seed (the draw record holds each lesion's kind); the drawn lesion
label map is brought onto the run's grid (nearest neighbour), and each TP lesion takes the
kind of the drawn lesion it overlaps most. Scans whose registration was not trusted give
``unknown`` and are counted as disagreements.

Prints the confusion matrix (rows: drawn kind, columns: predicted class) over every fold's
test lesions and one line:

    RESULT location_tp agreement <a> n <n> unknown <u>

With ``--drawn``, the drawn lesions themselves are also located on the same grid (the
run's preprocessed FLAIR registered again): the agreement a perfect segmenter would get
on this grid, which separates what the U-Net's masks cost from what the grid costs.

Registrations are read from the run's cache (``RUN/registrations/CASE``, made there when
missing); ``--relocate`` classifies the test lesions again with the current code instead
of reading the run's stored ``location`` column.

Families B and C render no per-lesion label map; with ``--phantom-json DATA/phantom.json``
each TP lesion takes the kind of the largest drawn lesion whose centre (world mm, from the
draw record) lies inside it, else of the drawn lesion whose centre is nearest its
centroid (an approximation: merged lesions take one kind). The preprocessed grid keeps
the phantom's world coordinates.

With ``--own-maps`` (family C only), each TP lesion is also classified by the same rules
(:func:`~lesionuq.location.classify.classify_from_maps`) on the phantom's *own* tissue maps
(cortex = its grey-matter fraction > 0.5, the lateral ventricles, brainstem and
cerebellum) evaluated on the run's grid: what the rules give when the region maps fit the
scan, against the registered template's.

Usage:
    python benchmarks/location_tp.py --run runs/families/famA/run
    python benchmarks/location_tp.py --run runs/families/famC/run \
        --phantom-json runs/families/famC/data/phantom.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from nilearn.image import resample_to_img
from scipy import ndimage as ndi

from lesionuq.data.family_c.anatomy import reference_points, tissue_maps
from lesionuq.data.family_c.case import draw_case_c
from lesionuq.data.phantom import generate_case
from lesionuq.data.phantom.dataset import case_seed
from lesionuq.lesions.dataset import LesionSet
from lesionuq.location.classify import classify_from_maps
from lesionuq.location.features import locate_lesions
from lesionuq.location.register import cached_registration
from lesionuq.pipeline.stages import load_preprocessed
from lesionuq.rundir import RunDir

KINDS = ("periventricular", "juxtacortical", "infratentorial", "deep")


def drawn_on_grid(seed: int, spacing: float, max_lesions: int, grid: nib.Nifti1Image):
    """The drawn lesion labels of case ``seed`` on ``grid`` and their kinds (label k -> k-1)."""
    case = generate_case(seed, spacing, None, max_lesions)
    labels = nib.Nifti1Image(
        np.asarray(case.info["lesion_labels"], dtype=np.int32), case.flair.affine
    )
    on_grid = resample_to_img(labels, grid, interpolation="nearest", force_resample=True)
    kinds = [item["kind"] for item in case.info["lesions"]]
    return np.asarray(on_grid.dataobj).astype(np.int64), kinds


def drawn_by_centre(record: dict, pred: np.ndarray, affine: np.ndarray) -> dict[int, str]:
    """Kind of each predicted lesion label from the drawn centres (families B and C).

    Args:
        record: One case of ``phantom.json`` (``draw.lesions``: ``kind``, ``centre`` in
            world mm, ``volume_mm3``).
        pred: (X, Y, Z) predicted lesion labels.
        affine: (4, 4) RAS affine of ``pred``.

    Returns:
        Label -> drawn kind, for every label of ``pred``.
    """
    lesions = record["draw"]["lesions"]
    centres = np.array([item["centre"] for item in lesions], dtype=np.float64).reshape(-1, 3)
    inv = np.linalg.inv(affine)
    vox = np.rint(centres @ inv[:3, :3].T + inv[:3, 3]).astype(int)
    inside = np.all((vox >= 0) & (vox < np.array(pred.shape)), axis=1)
    at = np.zeros(len(lesions), dtype=np.int64)
    at[inside] = pred[tuple(vox[inside].T)]
    out: dict[int, str] = {}
    for label in np.unique(pred[pred > 0]):
        hits = np.flatnonzero(at == label)
        if hits.size:
            best = max(hits, key=lambda i: lesions[i]["volume_mm3"])
        else:
            centroid = np.argwhere(pred == label).mean(axis=0) @ affine[:3, :3].T + affine[:3, 3]
            best = int(np.argmin(np.linalg.norm(centres - centroid, axis=1)))
        out[int(label)] = str(lesions[best]["kind"])
    return out


def own_map_classes(seed: int, max_lesions: int, pred: np.ndarray, affine: np.ndarray):
    """Classes of the predicted lesions from a family-C phantom's own tissue maps.

    Args:
        seed: The case seed.
        max_lesions: The data set's ``max_lesions`` (the draw depends on it).
        pred: (X, Y, Z) predicted lesion labels on the run's grid.
        affine: (4, 4) RAS affine of ``pred``.

    Returns:
        (N,) class names of labels 1..N.
    """
    draw = draw_case_c(seed, max_lesions)
    ijk = np.indices(pred.shape).reshape(3, -1).T
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    t = tissue_maps(draw.subject, reference_points(draw.subject, world), float(spacing.min()))
    shape = pred.shape
    cortex = t["gm"].reshape(shape) > 0.5
    lateral = (t["vent"] - t["third"] - t["fourth"]).reshape(shape) > 0.5
    infra = (t["stem"] + t["cb_wm"] + t["cb_gm"]).reshape(shape)
    vdist = ndi.distance_transform_edt(~lateral, sampling=spacing)
    cdist = ndi.distance_transform_edt(~cortex, sampling=spacing)
    return classify_from_maps(pred, vdist, cdist, infra)[0]


def locate_table(
    run: Path, rd: RunDir, fold: int, cases: tuple[str, ...], table: pd.DataFrame, seqs
) -> pd.DataFrame:
    """The test table with the location column, as the graphs stage would add it.

    Each scan's registration is read from (or saved to) ``RUN/registrations/CASE``, the
    graphs stage's cache, so a rerun with other rules registers nothing.
    """
    parts = []
    for case_id in cases:
        image, _, affine = load_preprocessed(run, case_id, seqs)
        img = nib.load(rd.case_dir(fold, "test", case_id) / "lesions.nii.gz")
        reg = cached_registration(run / "registrations" / case_id, image[0], affine)
        labels = np.asarray(img.dataobj).astype(np.int64)
        located, _ = locate_lesions(image[0], affine, labels, registration=reg)
        part = table[table["case_id"] == case_id].copy()
        part["location"] = located["location"].to_numpy()[part["lesion_id"].to_numpy() - 1]
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def cfg_family(run: Path) -> str:
    """The phantom family of a run (its plan's ``phantom.family``)."""
    return RunDir(run).read_plan()[0].phantom.family


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/families/famA/run"))
    parser.add_argument("--drawn", action="store_true", help="also locate the drawn lesions")
    parser.add_argument(
        "--phantom-json", type=Path, help="a family-B/C data set's phantom.json (draw record)"
    )
    parser.add_argument(
        "--own-maps", action="store_true", help="family C: also classify with its own maps"
    )
    parser.add_argument(
        "--relocate",
        action="store_true",
        help="locate the lesions again with the current code, not the run's stored classes",
    )
    args = parser.parse_args()
    if args.own_maps and cfg_family(args.run) != "c":
        raise SystemExit("--own-maps needs a run on family-C phantom data")
    rd = RunDir(args.run)
    cfg, _, splits = rd.read_plan()
    records = None
    if args.phantom_json is not None:
        records = {c["case_id"]: c for c in json.loads(args.phantom_json.read_text())["cases"]}
        if args.drawn:
            raise SystemExit("--drawn needs a family-A run (per-lesion label maps)")
    elif cfg.phantom.family != "a":
        raise SystemExit("a run on family B or C needs --phantom-json DATA/phantom.json")
    ids = sorted({c for s in splits for c in s.test})
    cache: dict[str, tuple[np.ndarray, list[str]]] = {}
    rows = []
    for split in splits:
        table = LesionSet.load(rd.lesion_set(split.fold, "test")).table
        if args.relocate or "location" not in table:  # locate here, with the current rules
            table = locate_table(args.run, rd, split.fold, split.test, table, cfg.sequences)
        for case_id in split.test:
            pred_img = nib.load(rd.case_dir(split.fold, "test", case_id) / "lesions.nii.gz")
            pred = np.asarray(pred_img.dataobj).astype(np.int64)
            if records is not None:
                kind_of = drawn_by_centre(records[case_id], pred, pred_img.affine)
                tps = table[(table["case_id"] == case_id) & table["is_tp"].astype(bool)]
                own = None
                if args.own_maps:
                    index = int(case_id.split("_")[-1])
                    seed = case_seed(cfg.phantom.seed, index)
                    own = own_map_classes(seed, cfg.phantom.max_lesions, pred, pred_img.affine)
                rows += [
                    {
                        "fold": split.fold,
                        "case_id": case_id,
                        "drawn": kind_of[int(r.lesion_id)],
                        "predicted": str(r.location),
                        **({"own": str(own[int(r.lesion_id) - 1])} if own is not None else {}),
                    }
                    for r in tps.itertuples()
                    if int(r.lesion_id) in kind_of
                ]
                continue
            if case_id not in cache:
                index = int(case_id.split("_")[-1])
                cache[case_id] = drawn_on_grid(
                    case_seed(cfg.phantom.seed, index),
                    cfg.phantom.spacing,
                    cfg.phantom.max_lesions,
                    pred_img,
                )
            drawn, kinds = cache[case_id]
            tps = table[(table["case_id"] == case_id) & table["is_tp"].astype(bool)]
            for r in tps.itertuples():
                under = drawn[pred == int(r.lesion_id)]
                under = under[under > 0]
                if under.size == 0:
                    continue  # a TP by IoU_adj whose drawn lesion vanished on the grid
                label = int(np.bincount(under).argmax())
                rows.append(
                    {
                        "fold": split.fold,
                        "case_id": case_id,
                        "drawn": kinds[label - 1],
                        "predicted": str(r.location),
                    }
                )
    df = pd.DataFrame(rows)
    print(f"{len(ids)} test scans, {len(df)} true-positive lesions matched to a drawn lesion")
    confusion = pd.crosstab(df["drawn"], df["predicted"]).reindex(
        index=list(KINDS), columns=[*KINDS, "unknown"], fill_value=0
    )
    print(confusion.to_string())
    agree = float((df["drawn"] == df["predicted"]).mean())
    per_kind = df.assign(ok=df["drawn"] == df["predicted"]).groupby("drawn")["ok"].mean()
    print("agreement per drawn kind:", per_kind.round(3).to_dict())
    n_unknown = int((df["predicted"] == "unknown").sum())
    print(f"RESULT location_tp agreement {agree:.3f} n {len(df)} unknown {n_unknown}")
    if "own" in df:
        own = pd.crosstab(df["drawn"], df["own"]).reindex(
            index=list(KINDS), columns=list(KINDS), fill_value=0
        )
        print("with the phantom's own tissue maps:")
        print(own.to_string())
        a = float((df["drawn"] == df["own"]).mean())
        print(f"RESULT location_tp_own_maps agreement {a:.3f} n {len(df)}")
    if args.drawn:
        drawn_rows = []
        for case_id, (drawn, kinds) in sorted(cache.items()):
            image, _, affine = load_preprocessed(args.run, case_id, cfg.sequences)
            present = np.unique(drawn[drawn > 0])
            lut = np.zeros(int(drawn.max()) + 1, np.int64)
            lut[present] = np.arange(1, len(present) + 1)
            reg = cached_registration(args.run / "registrations" / case_id, image[0], affine)
            located, _ = locate_lesions(image[0], affine, lut[drawn], registration=reg)
            for k, loc in zip(present, located["location"], strict=True):
                drawn_rows.append({"drawn": kinds[int(k) - 1], "predicted": str(loc)})
        dd = pd.DataFrame(drawn_rows)
        print(pd.crosstab(dd["drawn"], dd["predicted"]).to_string())
        a = float((dd["drawn"] == dd["predicted"]).mean())
        print(f"RESULT location_drawn_same_grid agreement {a:.3f} n {len(dd)}")


if __name__ == "__main__":
    main()
