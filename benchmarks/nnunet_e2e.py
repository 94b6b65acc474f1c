"""nnU-Net v2 end to end into the samples protocol (not CI; needs `pip install 'lesionuq[nnunet]'`).

Steps, each timed:

1. phantom cases (``lesionuq phantom``) written in nnU-Net's raw layout: the first
   ``--cases - --test`` cases in ``imagesTr``/``labelsTr``, the rest held out as test;
2. nnU-Net's own fingerprint, planning and preprocessing (``nnUNetv2_plan_and_preprocess
   -c 3d_fullres``);
3. a short 5-fold training on the CPU: nnU-Net's ``nnUNetTrainer_1epoch`` variant (so
   that ``nnUNetPredictor`` finds the class by name) with its iterations per epoch cut
   to ``--iterations`` (nnU-Net's default is 1000 epochs of 250);
4. each fold predicts, with ``--save_probabilities``, the pool cases it did not train on
   (its validation cases in nnU-Net's ``splits_final.json``) plus the held-out test
   cases: a pool case gets T = 1 sample, a test case T = 5;
5. ``lesionuq samples-from nnunet`` (:func:`lesionuq.nnunet.stacks_from_nnunet`);
6. ``lesionuq experiment`` in the samples protocol on all cases.

Prints the wall time per step, each nnU-Net fold's Dice on its validation cases, Table 1
(lesions per lesionuq fold) and Table 2 with bootstrap intervals.

nnU-Net is configured by its own environment variables (``nnUNet_raw``,
``nnUNet_preprocessed``, ``nnUNet_results``, ``nnUNet_n_proc_DA``); they are set here,
for this process and its children, to folders inside ``--out``.

    python benchmarks/nnunet_e2e.py --out /tmp/nnunet_e2e --cases 20 --test 5
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

DATASET_ID = 501
DATASET = f"Dataset{DATASET_ID}_LesionuqPhantom"


def _timed(name: str, times: dict[str, float]):
    class _T:
        def __enter__(self):
            self.t0 = time.perf_counter()
            print(f"-- {name}", flush=True)

        def __exit__(self, *exc):
            times[name] = time.perf_counter() - self.t0
            print(f"   {name}: {times[name]:.1f} s", flush=True)

    return _T()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--cases", type=int, default=20)
    ap.add_argument("--test", type=int, default=5)
    ap.add_argument("--iterations", type=int, default=25, help="training iterations per fold")
    ap.add_argument("--spacing", type=float, default=4.0, help="phantom voxel size (mm)")
    ap.add_argument("--folds", type=int, default=5, help="lesionuq experiment folds")
    args = ap.parse_args()

    import nibabel as nib
    import pandas as pd
    import torch

    from lesionuq.config import PhantomConfig
    from lesionuq.data.phantom import make_phantom_dataset
    from lesionuq.demo import bundled_config
    from lesionuq.evaluation.metrics import dice
    from lesionuq.io import read_manifest
    from lesionuq.nnunet import stacks_from_nnunet
    from lesionuq.pipeline.experiment import run_experiment

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = {
        "nnUNet_raw": str(out / "nnUNet_raw"),
        "nnUNet_preprocessed": str(out / "nnUNet_preprocessed"),
        "nnUNet_results": str(out / "nnUNet_results"),
        "nnUNet_n_proc_DA": "1",  # 0 breaks its planner (set_num_threads(0))
    }
    os.environ.update(env)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    times: dict[str, float] = {}

    with _timed("phantom", times):
        csv = out / "phantom" / "cases.csv"
        if not csv.is_file():  # a rerun in the same --out keeps the phantom
            csv = make_phantom_dataset(
                out / "phantom",
                PhantomConfig(n_cases=args.cases, seed=7, spacing=args.spacing),
                progress=False,
            )
        cases = read_manifest(csv)
        pool, test = cases[: args.cases - args.test], cases[args.cases - args.test :]
        raw = out / "nnUNet_raw" / DATASET
        for sub in ("imagesTr", "labelsTr", "imagesTs"):
            (raw / sub).mkdir(parents=True, exist_ok=True)
        for c in pool:
            shutil.copy(c.images[0], raw / "imagesTr" / f"{c.case_id}_0000.nii.gz")
            mask = nib.load(c.mask)
            nib.save(
                nib.Nifti1Image(np.asarray(mask.dataobj).astype(np.uint8), mask.affine),
                raw / "labelsTr" / f"{c.case_id}.nii.gz",
            )
        for c in test:
            shutil.copy(c.images[0], raw / "imagesTs" / f"{c.case_id}_0000.nii.gz")
        ds = {
            "channel_names": {"0": "FLAIR"},
            "labels": {"background": 0, "lesion": 1},
            "numTraining": len(pool),
            "file_ending": ".nii.gz",
        }
        (raw / "dataset.json").write_text(json.dumps(ds, indent=1))

    planned = out / "nnUNet_preprocessed" / DATASET / "nnUNetPlans.json"
    with _timed("nnU-Net plan + preprocess", times):
        bindir = Path(sys.executable).parent
        if planned.is_file():  # a rerun in the same --out: nnU-Net's plans are kept
            print("   (kept from an earlier run)")
        else:
            _plan(bindir, env)

    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.training.nnUNetTrainer.variants.training_length.nnUNetTrainer_Xepochs import (
        nnUNetTrainer_1epoch,
    )

    pre = out / "nnUNet_preprocessed" / DATASET
    plans = load_json(str(pre / "nnUNetPlans.json"))
    dataset_json = load_json(str(pre / "dataset.json"))
    pred_dirs = []
    fold_rows = []
    by_id = {c.case_id: c for c in cases}
    for k in range(5):
        with _timed(f"nnU-Net train fold {k}", times):
            fold_plans = {**plans, "continue_training": False}  # what nnUNetv2_train adds
            trainer = nnUNetTrainer_1epoch(
                fold_plans, "3d_fullres", k, dataset_json, device=torch.device("cpu")
            )
            trainer.num_iterations_per_epoch = args.iterations
            trainer.num_val_iterations_per_epoch = max(1, args.iterations // 5)
            final = Path(trainer.output_folder) / "checkpoint_final.pth"
            if final.is_file():  # trained by an earlier run in this --out (its own file)
                trainer.load_checkpoint(str(final))
            else:
                trainer.run_training()
        splits = load_json(str(pre / "splits_final.json"))
        val_ids = list(splits[k]["val"])
        with _timed(f"nnU-Net predict fold {k}", times):
            predictor = nnUNetPredictor(
                tile_step_size=0.5,
                use_mirroring=False,
                perform_everything_on_device=False,
                device=torch.device("cpu"),
                allow_tqdm=False,
            )
            # the trained network in hand (initialize_from_trained_model_folder looks the
            # trainer class up by importing every trainer module, which pulls in timm and
            # torchvision; torchvision's PyPI wheel does not load with a CPU-only torch)
            trainer.set_deep_supervision_enabled(False)  # as nnU-Net's own final validation
            trainer.network.eval()
            predictor.manual_initialization(
                trainer.network,
                trainer.plans_manager,
                trainer.configuration_manager,
                [trainer.network.state_dict()],
                trainer.dataset_json,
                type(trainer).__name__,
                trainer.inference_allowed_mirroring_axes,
            )
            folder = out / "pred" / f"fold_{k}"
            folder.mkdir(parents=True, exist_ok=True)
            todo = [*val_ids, *(c.case_id for c in test)]
            predictor.predict_from_files_sequential(
                [[str(by_id[c].images[0])] for c in todo],
                [str(folder / c) for c in todo],  # truncated output names: CASE.{npz,nii.gz}
                save_probabilities=True,
                overwrite=True,
            )
            pred_dirs.append(folder)
        segs = [np.asarray(nib.load(folder / f"{c}.nii.gz").dataobj) > 0 for c in val_ids]
        masks = [np.asarray(nib.load(by_id[c].mask).dataobj) > 0 for c in val_ids]
        p_max = 0.0
        for c in val_ids:
            with np.load(folder / f"{c}.npz", allow_pickle=False) as z:
                p_max = max(p_max, float(z["probabilities"][1].max()))
        fold_rows.append(
            {
                "fold": k,
                "val_cases": len(val_ids),
                "dice_val": float(np.mean([dice(a, b) for a, b in zip(segs, masks, strict=True)])),
                "lesion_voxels_pred": int(sum(a.sum() for a in segs)),
                "lesion_voxels_true": int(sum(b.sum() for b in masks)),
                "max_p_lesion": round(p_max, 3),
            }
        )

    with _timed("lesionuq samples-from nnunet", times):
        manifest = stacks_from_nnunet(
            pred_dirs, out / "stacks", progress=False, cases=csv, overwrite=True
        )
    result, failed = None, None
    with _timed("lesionuq experiment (samples protocol)", times):
        cfg = bundled_config("demo").replace(folds=args.folds)
        try:
            result = run_experiment(manifest, out / "run", cfg, progress=False)
        except Exception as exc:  # reported below with the steps that ran
            failed = f"{exc.__class__.__name__}: {exc}"

    pd.set_option("display.width", 160)
    print("\nwall time per step (s)")
    print(pd.Series(times).round(1).to_string())
    print("\nnnU-Net folds (each fold's validation cases)")
    print(pd.DataFrame(fold_rows).round(3).to_string(index=False))
    if result is None:
        print(f"\nlesionuq experiment did not finish: {failed}")
        return
    print("\nTable 1 (lesionuq folds, samples protocol)")
    print(result.table1.round(3).to_string(index=False))
    print("\nTable 2")
    cols = [c for c in ("method", "auc", "auc_lo", "auc_hi", "spearman_rho") if c in result.table2]
    print(result.table2[cols].round(3).to_string(index=False))


def _plan(bindir: Path, env: dict[str, str]) -> None:
    """nnU-Net's fingerprint, planning and preprocessing (3d_fullres), by its own command."""
    subprocess.run(
        [
            str(bindir / "nnUNetv2_plan_and_preprocess"),
            "-d",
            str(DATASET_ID),
            "-c",
            "3d_fullres",
            "-np",
            "1",
            "--verify_dataset_integrity",
        ],
        check=True,
        env={**os.environ, **env},
    )


if __name__ == "__main__":
    main()
