"""Command-line interface: a thin Typer layer; every command calls one public function."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
import yaml
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lesionuq.config import ConfigError, ExperimentConfig, PhantomConfig
from lesionuq.errors import CasesFailedError, InputWarning, TrainingWarning
from lesionuq.io import InputError, read_manifest
from lesionuq.operating_point import FEW_VALIDATION_LESIONS

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Lesion-wise uncertainty for MS lesion segmentation (MC dropout U-Net + GCNN).",
)
console = Console()
F = TypeVar("F", bound=Callable[..., Any])

RunOpt = Annotated[Path, typer.Option("--run", help="Run directory made by `experiment`.")]
# torchrun's own argument parser reads `--run` as an abbreviation of its `--run-path` and
# stops, so under torchrun the run is given as `--run-dir`
TrainRunOpt = Annotated[
    Path,
    typer.Option(
        "--run",
        "--run-dir",
        help="Run directory made by `experiment` (write --run-dir under torchrun).",
    ),
]
FoldOpt = Annotated[list[int] | None, typer.Option("--fold", help="Only this fold (repeatable).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", help="No progress bars.")]
OverwriteOpt = Annotated[
    bool,
    typer.Option(
        "--overwrite",
        help="Replace an earlier lesionuq output in --out (only files lesionuq wrote).",
    ),
]


SchedulerOpt = Annotated[
    str | None,
    typer.Option(
        "--scheduler",
        metavar="ADDRESS",
        help="Run one task per scan on this Dask scheduler (e.g. tcp://10.0.0.5:8786).",
    ),
]
WorkersOpt = Annotated[
    int | None,
    typer.Option(
        "--workers",
        metavar="N",
        help="Run one task per scan (training: per fold) on a local Dask cluster of N "
        "single-threaded processes.",
    ),
]


class Stage(StrEnum):
    """Stages ``experiment --stop-after`` accepts."""

    preprocess = "preprocess"
    train = "train"
    sample = "sample"
    graphs = "graphs"
    fit = "fit"


def _friendly(fn: F) -> F:
    """Turn bad-input errors into one red sentence and exit code 1 (no traceback).

    The package's own warnings (:class:`~lesionuq.errors.InputWarning`,
    :class:`~lesionuq.errors.TrainingWarning`) print as one yellow sentence each, without
    the source line Python's default format adds; other warnings keep that format.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with warnings.catch_warnings():
                warnings.showwarning = functools.partial(_show_warning, warnings.showwarning)
                return fn(*args, **kwargs)
        except (InputError, ConfigError, FileNotFoundError, CasesFailedError) as exc:
            console.print(f"[bold red]error:[/] {escape(str(exc))}")
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def _show_warning(
    default: Callable[..., None],
    message: Warning | str,
    category: type[Warning],
    *where: Any,
    **kw: Any,
) -> None:
    """``warnings.showwarning`` for the CLI: the package's warnings as one sentence."""
    if issubclass(category, (InputWarning, TrainingWarning)):
        console.print(f"[yellow]warning:[/] {escape(str(message))}")
    else:
        default(message, category, *where, **kw)


def _load_config(config: Path | None, default: str = "demo"):
    # lazy: the demo module loads torch and the pipeline, not loaded for lesionuq --help
    from lesionuq.demo import bundled_config

    if config is None:
        return bundled_config(default)
    if not config.is_file():
        raise InputError(f"{config}: file not found.")
    try:
        return ExperimentConfig.from_yaml(config)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{config}: not valid YAML ({_yaml_where(exc)}).") from None


def _yaml_where(exc: Exception) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or exc.__class__.__name__
    return f"{problem}, line {mark.line + 1}" if mark is not None else str(problem)


def print_tables(result: Any) -> None:
    """Print Table 1 and Table 2 of an :class:`ExperimentResult` as Rich tables."""
    plan = Path(result.run) / "config.yaml"
    cfg = (yaml.safe_load(plan.read_text()) if plan.is_file() else None) or {}
    samples = cfg.get("protocol") == "samples"
    who = "your segmenter's" if samples else "U-Net"
    t1 = Table(title=f"Table 1 - {who} segmentation on the test folds")
    for col in ("fold", "Dice", "# TP lesions", "# FP lesions"):
        t1.add_column(col, justify="right")
    for row in result.table1.itertuples():
        t1.add_row(str(row.fold), f"{row.dice:.3f}", str(row.n_tp), str(row.n_fp))
    console.print(t1)
    t2 = Table(title="Table 2 - lesion uncertainty (mean over folds)")
    t2.add_column("method")
    t2.add_column("AUC (%)", justify="right")
    t2.add_column("Spearman rho", justify="right")
    ci = "auc_lo" in result.table2.columns
    if ci:
        t2.add_column("95 % CI", justify="right")
        t2.add_column("vs gcnn_classif (95 % CI)", justify="right")
    best = result.table2["auc"].max()
    for row in result.table2.itertuples():
        auc = f"{100 * row.auc:.2f}"
        style = "bold green" if row.auc == best else None
        cells = [row.method, auc, f"{row.spearman_rho:.2f}"]
        if ci:
            cells.append(f"{100 * row.auc_lo:.1f}-{100 * row.auc_hi:.1f}")
            d, lo, hi = (
                100 * getattr(row, c) for c in ("diff_vs_gcnn_classif", "diff_lo", "diff_hi")
            )
            cells.append(f"{d:+.1f} ({lo:+.1f}, {hi:+.1f})")
        t2.add_row(*cells, style=style)
    console.print(t2)
    # lazy: the evaluation package loads matplotlib and torch, not loaded for lesionuq --help
    from lesionuq.evaluation.report_sections import validation_summary

    val = validation_summary(result.run)
    if val is not None:
        lo, hi = int(val["lesions"].min()), int(val["lesions"].max())
        scans = f"{int(val['scans'].min())}-{int(val['scans'].max())}"
        line = f"learned scorers fitted on {lo}-{hi} validation lesions per fold ({scans} scans)"
        if lo < FEW_VALIDATION_LESIONS or int(val["scans"].min()) < 2:
            line = f"[yellow]{line}: few (the paper had ~700); see the learning curve[/yellow]"
        console.print(line)
    if samples:
        source = escape(str(cfg.get("samples_source", "")))
        console.print(f"samples protocol (no U-Net): samples from {source}")
    console.print(f"report: [link=file://{result.report}]{result.report}[/link]")


@app.command()
@_friendly
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the phantom data and the run.")] = Path(
        "demo"
    ),
    config: Annotated[
        Path | None,
        typer.Option(help="Config YAML (default: demo_reference, or demo with --full)"),
    ] = None,
    workers: Annotated[
        str,
        typer.Option(
            metavar="N|auto",
            help="Single-threaded worker processes (folds train side by side); auto: one "
            "per CPU core up to the number of folds, with 2+ cores, for CPU work (on a GPU "
            "the U-Net's work stays in this process); 1: everything in this process.",
        ),
    ] = "auto",
    full: Annotated[
        bool,
        typer.Option(
            "--full",
            help="The paper's protocol (a U-Net trained per fold, 2 mm grid) instead of the "
            "default scorer-only protocol with the shipped reference U-Net.",
        ),
    ] = False,
    quiet: QuietOpt = False,
) -> None:
    """Make a phantom data set, run the method on it, print Tables 1 and 2.

    Default: the scorer-only protocol with the shipped reference U-Net (each scan
    MC-sampled once, every fold's scorers learn from all non-test scans); --full: the
    paper's protocol with a U-Net trained per fold.
    """
    # lazy: the demo module loads torch and the pipeline, not loaded for lesionuq --help
    from lesionuq.demo import run_demo

    cfg = _load_config(config) if config is not None else None
    result = run_demo(out, cfg, progress=not quiet, workers=workers, full=full)
    print_tables(result)


@app.command()
@_friendly
def phantom(
    out: Annotated[Path, typer.Option(help="Output folder (cases.csv + one folder per case).")],
    cases: Annotated[int, typer.Option(help="Number of cases.")] = 20,
    seed: Annotated[int, typer.Option(help="Master seed.")] = 0,
    shape: Annotated[
        tuple[int, int, int] | None, typer.Option(help="Grid shape X Y Z (default: template FOV).")
    ] = None,
    spacing: Annotated[float, typer.Option(help="Voxel size in mm.")] = 1.0,
    preview: Annotated[bool, typer.Option(help="Write preview.png.")] = False,
    family: Annotated[
        str,
        typer.Option(
            help="Generator: a (MNI152, the default), b (fsaverage, other rules) or "
            "c (procedural, no template)."
        ),
    ] = "a",
    max_lesions: Annotated[int, typer.Option(help="Lesion-load scale.")] = 40,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Generate a synthetic MS data set (family a: MNI152; b: fsaverage; c: procedural)."""
    # lazy: the phantom generators load torch, not loaded for lesionuq --help
    from lesionuq.data.families import make_dataset

    cfg = PhantomConfig(
        n_cases=cases,
        seed=seed,
        shape=shape,
        spacing=spacing,
        family=family,
        max_lesions=max_lesions,
    )
    path = make_dataset(out, cfg, preview=preview, progress=not quiet, overwrite=overwrite)
    console.print(f"wrote {cases} cases: {path}")


@app.command()
@_friendly
def experiment(
    data: Annotated[Path, typer.Option(help="The data set manifest cases.csv.")],
    out: Annotated[Path, typer.Option(help="Run directory (an existing run resumes).")],
    config: Annotated[Path | None, typer.Option(help="Config YAML (default: demo).")] = None,
    folds: Annotated[int | None, typer.Option(help="Number of folds (overrides config).")] = None,
    stop_after: Annotated[Stage | None, typer.Option(help="Stop after this stage.")] = None,
    scheduler: SchedulerOpt = None,
    workers: WorkersOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Run the paper's k-fold protocol on your own data."""
    # lazy: the pipeline loads torch, not loaded for lesionuq --help
    from lesionuq.pipeline.experiment import run_experiment

    cfg = _load_config(config)
    if folds is not None:
        cfg = cfg.replace(folds=folds)
    stage = stop_after.value if stop_after is not None else None
    result = run_experiment(
        data,
        out,
        cfg,
        progress=not quiet,
        stop_after=stage,
        scheduler=scheduler,
        workers=workers,
    )
    if result is None:
        console.print(f"stopped after {stage}; resume with the same command.")
    else:
        print_tables(result)


@app.command()
@_friendly
def train(
    run: TrainRunOpt, fold: FoldOpt = None, workers: WorkersOpt = None, quiet: QuietOpt = False
) -> None:
    """Stage: train each fold's U-Net (preprocessing first if needed).

    Multi-GPU (DDP): torchrun --nproc_per_node K -m lesionuq train --run-dir RUN
    """
    # lazy: the pipeline loads torch, not loaded for lesionuq --help
    from lesionuq.pipeline.train import train_run

    train_run(run, fold, progress=not quiet, workers=workers)


@app.command()
@_friendly
def sample(
    run: Annotated[Path | None, typer.Option("--run", help="Run directory.")] = None,
    fold: FoldOpt = None,
    stack: Annotated[
        Path | None,
        typer.Option(help="Your own T probability maps: a folder of NIfTI or one 4-D NIfTI."),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder for --stack.")] = None,
    overwrite: OverwriteOpt = False,
    scheduler: SchedulerOpt = None,
    workers: WorkersOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Stage: MC-dropout maps for val/test cases, or maps from your own sample stack."""
    if stack is not None:
        # lazy: the sample-stack reader loads torch, not loaded for lesionuq --help
        from lesionuq.samples import maps_from_stack

        if out is None:
            raise InputError("--out is required with --stack.")
        maps_from_stack(stack, out, overwrite=overwrite)
        console.print(f"wrote prob/seg/entropy/variance/pcs to {out}")
        return
    if run is None:
        raise InputError("give --run RUN (a run directory) or --stack PATH --out DIR.")
    # lazy: the pipeline loads torch, not loaded for lesionuq --help
    from lesionuq.pipeline.sample import stage_sample

    stage_sample(run, fold, progress=not quiet, scheduler=scheduler, workers=workers)


@app.command()
@_friendly
def graphs(
    run: RunOpt,
    fold: FoldOpt = None,
    scheduler: SchedulerOpt = None,
    workers: WorkersOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Stage: lesions, IoU_adj, TP/FP and lesion graphs for val/test cases."""
    # lazy: the pipeline loads torch, not loaded for lesionuq --help
    from lesionuq.pipeline.graphs import stage_graphs

    stage_graphs(run, fold, progress=not quiet, scheduler=scheduler, workers=workers)


@app.command()
@_friendly
def fit(
    run: RunOpt,
    fold: FoldOpt = None,
    method: Annotated[list[str] | None, typer.Option(help="Only this method.")] = None,
    scheduler: SchedulerOpt = None,
    workers: WorkersOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Stage: fit the GCNNs and baselines on each fold's validation lesions."""
    # lazy: the pipeline loads torch, not loaded for lesionuq --help
    from lesionuq.pipeline.fit import stage_fit

    stage_fit(run, fold, method, progress=not quiet, scheduler=scheduler, workers=workers)


@app.command()
@_friendly
def evaluate(run: RunOpt, quiet: QuietOpt = False) -> None:
    """Stage: score test lesions, write tables, Figure 2 and the HTML report."""
    # lazy: the pipeline loads torch, not loaded for lesionuq --help
    from lesionuq.pipeline.evaluate import stage_evaluate

    print_tables(stage_evaluate(run, progress=not quiet))


@app.command("learning-curve")
@_friendly
def learning_curve_cmd(
    run: RunOpt,
    sizes: Annotated[
        str, typer.Option(help="Training sizes (validation lesions), comma-separated; 'all'.")
    ] = "25,50,100,200,400,all",
    repeats: Annotated[int, typer.Option(help="Seeded subsamples per size.")] = 5,
    method: Annotated[
        list[str] | None, typer.Option(help="Only this learned method (repeatable).")
    ] = None,
    scheduler: SchedulerOpt = None,
    workers: WorkersOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Refit the learned scorers on subsamples of the validation lesions (learning curve)."""
    # lazy: the evaluation package loads matplotlib and torch, not loaded for lesionuq --help
    from lesionuq.evaluation.metrics import summarize_learning_curve

    # lazy: the pipeline loads torch, not loaded for lesionuq --help
    from lesionuq.pipeline.learning_curve import learning_curve

    curve = learning_curve(
        run, sizes, repeats, method, progress=not quiet, scheduler=scheduler, workers=workers
    )
    summary = summarize_learning_curve(curve)
    table = Table(title="Learning curve - test AUC (%) vs training lesions (mean over folds)")
    for col in ("method", "size", "lesions", "AUC (%)", "SD over repeats"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for r in summary.itertuples():
        table.add_row(
            r.method,
            str(r.size),
            f"{r.n_train:.0f}",
            f"{100 * r.auc_mean:.1f}",
            f"{100 * r.auc_std:.1f}",
        )
    console.print(table)
    console.print(f"wrote {Path(run) / 'results' / 'learning_curve.csv'} and learning_curve.png")


@app.command()
@_friendly
def predict(
    model: Annotated[Path, typer.Option(help="A fitted model folder, e.g. RUN/fold_0.")],
    out: Annotated[Path, typer.Option(help="Output folder.")],
    image: Annotated[
        list[Path] | None, typer.Option(help="Input scan, one per sequence, in config order.")
    ] = None,
    cases: Annotated[Path | None, typer.Option(help="Or a cases.csv to predict in batch.")] = None,
    threshold: Annotated[
        float | None,
        typer.Option(help="P(FP) at or above which to review (overrides --review-target)."),
    ] = None,
    review_target: Annotated[
        str | None,
        typer.Option(
            help="Choose the review threshold on the validation lesions: tp:0.95 keeps 95 % "
            "of true lesions unflagged, fp:0.5 flags half the false positives "
            "(default: the model's stored operating point)."
        ),
    ] = None,
    maps: Annotated[bool, typer.Option(help="Also write prob/entropy/variance/pcs.")] = False,
    bids_out: Annotated[
        Path | None,
        typer.Option(
            help="Also add each scan to this BIDS-derivatives folder (BIDS-named inputs)."
        ),
    ] = None,
    samples: Annotated[
        Path | None,
        typer.Option(
            help="Your segmenter's T probability maps of the scan (4-D NIfTI, last axis = "
            "sample, or a folder of 3-D maps); with --image. In batch: a samples column."
        ),
    ] = None,
    location: Annotated[
        bool,
        typer.Option(
            help="Also locate each lesion (registration to MNI152, ~10 s per scan): location "
            "and MNI columns, counts per region, dissemination in space with P(DIS); with "
            "--cases also dis.csv, one row per case."
        ),
    ] = False,
    overwrite: OverwriteOpt = False,
    scheduler: SchedulerOpt = None,
    workers: WorkersOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Segment a new scan and score each lesion's uncertainty, in the scan's own space."""
    # lazy: predict loads torch, the U-Net and the scorers, not loaded for lesionuq --help
    from lesionuq.predict import predict_manifest, predict_scan

    if (image is None) == (cases is None):
        raise InputError("give either --image (one per sequence) or --cases CSV.")
    if samples is not None and cases is not None:
        raise InputError("--samples goes with --image; with --cases give a samples column.")
    if image is not None and (scheduler is not None or workers is not None):
        raise InputError("--scheduler and --workers spread a batch: use them with --cases CSV.")
    common: dict[str, Any] = {
        "threshold": threshold,
        "save_maps": maps,
        "progress": not quiet,
        "overwrite": overwrite,
        "bids_out": bids_out,
        "review_target": review_target,
        "location": location,
    }
    if image is not None:
        res = predict_scan(model, image, out, samples=samples, **common)
        for warning in res.warnings:
            console.print(f"[yellow]warning: {escape(warning)}[/yellow]")
        console.print(res.summary())
    elif cases is not None:
        batch = predict_manifest(model, cases, out, scheduler=scheduler, workers=workers, **common)
        for case_id, warnings in batch.warnings.items():
            for warning in warnings:
                console.print(f"[yellow]warning ({escape(case_id)}): {escape(warning)}[/yellow]")
        if (cohort := batch.cohort_warning()) is not None:
            console.print(f"[yellow]warning: {escape(cohort)}[/yellow]")
        console.print(escape(batch.summary()))


@app.command()
@_friendly
def refit(
    model: Annotated[Path, typer.Option(help="A fitted model folder, e.g. RUN/fold_0.")],
    cases: Annotated[
        Path,
        typer.Option(help="cases.csv of at least 2 labelled scans of the new site (with masks)."),
    ],
    out: Annotated[Path, typer.Option(help="The new model folder.")],
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Refit a model folder's lesion scorers on a few labelled scans of a new site."""
    # lazy: refitting loads torch, the U-Net and the scorers, not loaded for lesionuq --help
    from lesionuq.predict.refit import refit_model

    result = refit_model(model, cases, out, overwrite=overwrite, progress=not quiet)
    console.print(escape(result.summary()))


@app.command()
@_friendly
def manifest(
    layout: Annotated[
        str, typer.Option(help="msseg2016, mslub, isbi2015, shifts, wmh2017 or bids.")
    ],
    root: Annotated[Path, typer.Option(help="The data set's download folder.")],
    out: Annotated[Path, typer.Option(help="The cases.csv to write.")] = Path("cases.csv"),
    sequences: Annotated[str, typer.Option(help="Comma-separated, e.g. flair,t1.")] = "flair",
    rater: Annotated[
        str | None,
        typer.Option(help="Default: the layout's reference (isbi2015: 1, 2, union, intersection)."),
    ] = None,
    split: Annotated[
        str | None, typer.Option(help="shifts: comma-separated split folders, e.g. train,dev_in.")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace derived masks made with other settings.")
    ] = False,
) -> None:
    """Write cases.csv for a public data set as distributed (paths relative to the CSV)."""
    # lazy: the data set layouts add ~20 ms that lesionuq --help does not need
    from lesionuq.datasets import build_manifest

    seqs = tuple(s.strip() for s in sequences.split(",") if s.strip())
    path = build_manifest(
        layout, root, out, sequences=seqs, rater=rater, split=split, overwrite=overwrite
    )
    n = len(read_manifest(path, seqs, require_mask=False))
    console.print(f"wrote {n} case(s) to {path}")


samples_from = typer.Typer(
    no_args_is_help=True, help="Write sample stacks (and a manifest fragment) from another tool."
)
app.add_typer(samples_from, name="samples-from")


@samples_from.command("nnunet")
@_friendly
def samples_from_nnunet(
    fold_dirs: Annotated[
        list[Path],
        typer.Argument(help="nnUNetv2_predict -f K --save_probabilities output folders."),
    ],
    out: Annotated[Path, typer.Option(help="Folder for CASE.nii.gz stacks and samples.csv.")],
    label: Annotated[int, typer.Option(help="The foreground label (class index).")] = 1,
    cases: Annotated[
        Path | None,
        typer.Option(help="Your cases.csv: also write OUT/cases.csv with a samples column."),
    ] = None,
    sequences: Annotated[str, typer.Option(help="Image columns of --cases, e.g. flair,t1.")] = (
        "flair"
    ),
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """nnU-Net v2 folds -> one 4-D stack per case (T = folds) and a manifest."""
    # lazy: the nnU-Net reader loads torch, not loaded for lesionuq --help
    from lesionuq.nnunet import stacks_from_nnunet

    seqs = tuple(s.strip() for s in sequences.split(",") if s.strip())
    csv = stacks_from_nnunet(
        fold_dirs, out, label, overwrite, not quiet, cases=cases, sequences=seqs
    )
    console.print(f"wrote the sample stacks and {csv}")
