"""The method catalogue: every lesion-scoring method by name, in one table.

Each entry says what the rest of the package needs to know about a method without
building it: its label and plot style (Figure 2, the report, the learning curve),
whether it learns from the validation lesions, what its score is (a P(FP), ``1 -
IoU_hat`` of an IoU regressor, or a plain uncertainty), how long its fit takes, and its
implementation as a ``"module:Class"`` name. The implementation is imported only when a
scorer is built (:func:`lesionuq.scorers.registry.make_scorer`), as nnU-Net resolves its
trainer class by name, so this module (and :mod:`lesionuq.config`, which checks method
names against it) imports neither torch nor any scorer.

Adding a scorer takes one class (a :class:`~lesionuq.scorers.base.LesionScorer`) and one
entry here::

    "toy": MethodSpec("mypackage.toy:ToyScorer", "Toy", ("#17becf", "-", 1.4)),

after which ``methods: [toy]`` is accepted in a config, fitted (and, being learned,
calibrated) and evaluated by the experiment, saved and loaded, and drawn with its label.

Example:
    >>> CATALOGUE["gcnn_classif"].label
    'GCNN classif'
    >>> is_learned("entropy_mean"), outputs_p_fp("metaseg_classif")
    (False, True)
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from lesionuq.errors import did_you_mean

__all__ = [
    "CATALOGUE",
    "METHODS",
    "PREDICT_METHODS",
    "MethodSpec",
    "Output",
    "fit_cost",
    "is_learned",
    "label",
    "learned_methods",
    "method_spec",
    "outputs_p_fp",
    "resolve",
    "style",
]

Output = Literal["p_fp", "iou", "uncertainty"]
"""What a method's score is: ``"p_fp"`` a probability that the lesion is a false
positive, ``"iou"`` ``1 - IoU_hat`` of an IoU_adj regressor, ``"uncertainty"`` any other
score (higher = less trusted)."""


@dataclass(frozen=True)
class MethodSpec:
    """One method of the catalogue.

    Attributes:
        implementation: The scorer class as ``"module:Class"`` (imported when a scorer is
            built; must be a :class:`~lesionuq.scorers.base.LesionScorer` subclass), or
            the class itself (a scorer defined in a script or a test).
        label: Name in Figure 2's legend, the report and the learning curve.
        style: Matplotlib (colour, line style, line width) of its curve.
        learned: Whether it learns from the validation lesions (the class's
            ``requires_fit``): learned methods are cross-fitted and calibrated, refitted
            by the learning curve, and need a fit before scoring.
        output: What its score is (:data:`Output`).
        fit_cost: Relative fit time (a fold of the quality bench); the experiment submits
            the costliest fits first.
        self_calibrated: Whether its score is already a P(FP) fitted on out-of-fold scores
            (the class's ``self_calibrated``): it gets no calibrator of its own.
        kwargs: Constant constructor keyword arguments (besides ``name``).
        settings: Constructor keyword arguments taken from the experiment config, as
            keyword -> dotted attribute path (``{"cfg": "gcnn"}`` passes ``cfg.gcnn``).
        factory: ``"module:function"`` building the unfitted scorer from the experiment
            config, for constructors that a dotted path cannot feed (then ``kwargs`` and
            ``settings`` are unused).
        reads: Sections of the experiment config the scorer is built from besides
            ``settings`` (a ``factory``'s, or the candidates'); with the ``settings``
            paths and the candidates' sections, what its fit depends on.
        candidates: Methods whose unfitted scorers the implementation takes as its
            ``estimators``, a list of (name, scorer) pairs as in scikit-learn's
            ``StackingClassifier(estimators=...)``; the registry builds them from the same
            config (:func:`lesionuq.scorers.registry.make_estimators`).
        needs_location: Whether it reads the lesions' locations (the lesion table's
            ``location`` and MNI columns, added by the graphs stage when
            ``graphs.location`` is on; the config refuses it otherwise).
    """

    implementation: str | type
    label: str
    style: tuple[str, str, float]
    learned: bool = True
    output: Output = "uncertainty"
    fit_cost: float = 0.0
    self_calibrated: bool = False
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    settings: Mapping[str, str] = field(default_factory=dict)
    factory: str | None = None
    reads: tuple[str, ...] = ()
    candidates: tuple[str, ...] = ()
    needs_location: bool = False

    @property
    def cls(self) -> type:
        """The implementation class (its module imported now, on first use)."""
        if isinstance(self.implementation, type):
            return self.implementation
        return resolve(self.implementation)

    @property
    def sections(self) -> tuple[str, ...]:
        """The config sections (or top-level fields) the scorer is built from.

        Its ``reads``, its ``settings``' first path parts, then its candidates' sections,
        each once, in that order.
        """
        paths = [p.split(".")[0] for p in self.settings.values()]
        inner = [s for c in self.candidates for s in method_spec(c).sections]
        return tuple(dict.fromkeys([*self.reads, *paths, *inner]))


def resolve(name: str) -> Any:
    """The object named ``"module:attribute"`` (``importlib``; imported on first use).

    Raises:
        ValueError: The name is not of the form ``module:attribute``, or the module has
            no such attribute.
        ImportError: The module cannot be imported.
    """
    module, sep, attr = name.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"implementation {name!r} must be 'module:attribute'.")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"implementation {name!r}: {module} has no {attr!r}.")
        obj = getattr(obj, part)
    return obj


def _column(column: str, label: str, colour: str, line: str) -> MethodSpec:
    """A voxel-uncertainty aggregate of the lesion table (untrained)."""
    return MethodSpec(
        "lesionuq.scorers.baselines:ColumnScorer",
        label,
        (colour, line, 1.4),
        learned=False,
        kwargs={"column": column},
    )


def _made(
    where: str,
    name: str,
    label: str,
    style: tuple[str, str, float],
    fit_cost: float = 1.0,
    reads: tuple[str, ...] = ("gcnn", "sequences"),
    needs_location: bool = False,
) -> MethodSpec:
    """A P(FP) scorer built by ``make_<name>`` of its module.

    Args:
        where: ``"module:Class"`` of the implementation; the factory is
            ``"module:make_<name>"``.
        name: The method name.
        label: Legend label.
        style: (colour, line style, line width).
        fit_cost: Relative fit time.
        reads: Config sections the factory reads.
        needs_location: Whether it reads the lesions' locations.
    """
    return MethodSpec(
        where,
        label,
        style,
        output="p_fp",
        fit_cost=fit_cost,
        factory=f"{where.split(':')[0]}:make_{name}",
        reads=reads,
        needs_location=needs_location,
    )


def _robust(name: str, label: str, colour: str) -> MethodSpec:
    """A GCNN of ``scorers/robust.py`` (built by its ``make_<name>``)."""
    return _made("lesionuq.scorers.robust:RobustGCNNScorer", name, label, (colour, "-", 2.0))


def _selector(
    cls: str,
    label: str,
    colour: str,
    candidates: tuple[str, ...],
    self_calibrated: bool = False,
    half_fits: bool = False,
) -> MethodSpec:
    """A chooser or stacker of ``scorers/select.py`` over ``candidates``.

    The registry builds the candidates from the run's config and passes them in; the
    selector's inner folds take ``calibration.n_inner`` and ``seed``, a chooser
    (``half_fits``) also ``calibration.half_fits`` and ``calibration.half_splits``.
    ``reads`` names the GCNN settings and the sequences, which its candidates are built
    from, and its own.
    """
    settings = {"n_inner": "calibration.n_inner", "seed": "seed"}
    if half_fits:
        settings["half_fits"] = "calibration.half_fits"
        settings["half_splits"] = "calibration.half_splits"
    return MethodSpec(
        f"lesionuq.scorers.select:{cls}",
        label,
        (colour, "-", 2.6),
        output="p_fp",
        fit_cost=4.0,
        self_calibrated=self_calibrated,
        settings=settings,
        reads=("gcnn", "calibration", "seed", "sequences"),
        candidates=candidates,
    )


_GCNN = "lesionuq.scorers.gcnn:GCNNScorer"
_METASEG = "lesionuq.scorers.baselines:MetaSegScorer"
#: ``gcnn_auto``'s candidates, simplest first (a tie goes to the earlier one): the paper's
#: two learned lesion scorers. MetaSeg is already the fitted linear combination of every
#: voxel-uncertainty aggregate and of size, so the aggregates are not candidates of their
#: own: choosing among 9 noisy validation AUCs picked a worse method more often than it
#: gained (learning curve of the quality bench, docs/benchmarks.md).
_AUTO = ("metaseg_classif", "gcnn_classif")
#: ``gcnn_stack``'s inputs: MetaSeg's four features as the untrained scorers they are
#: (each an uncertainty: the monotone stacking gives none a negative weight, which
#: MetaSeg's unconstrained logistic regression does on small validation sets) and the
#: paper's GCNN; ``gcnn_stack_robust`` has the robust GCNN in its place.
_STACK = ("entropy_mean", "variance_mean", "pcs_mean", "size")
#: ``gcnn_stack_all``'s untrained inputs: every untrained baseline of Table 2, so that the
#: stack spans each method the default-method rule compares against. ``gcnn_stack``'s
#: span misses the logsums (the sum of log u over a lesion: its size times its mean log
#: uncertainty), which an outside bench found best (issue 31). Measured on the family
#: bench, it does not count (-3.6 on family A against the paper's GCNN; docs/benchmarks.md).
_UNTRAINED = (
    *(f"{u}_{agg}" for u in ("entropy", "variance", "pcs") for agg in ("mean", "logsum")),
    "size",
)


def _located_gcnn(name: str, label: str, line: str) -> MethodSpec:
    """A GCNN of ``scorers/located.py`` that reads the lesions' locations."""
    return _made(
        "lesionuq.scorers.located:LocationGCNNScorer",
        name,
        label,
        ("#ff9896", line, 2.0),
        needs_location=True,
    )


def _gcnn(
    label: str, style: tuple[str, str, float], task: str, fit_cost: float = 1.0, **kwargs: Any
) -> MethodSpec:
    """A :class:`~lesionuq.scorers.gcnn.GCNNScorer` of ``task``, built with ``kwargs`` too."""
    return MethodSpec(
        _GCNN,
        label,
        style,
        output="p_fp" if task == "classif" else "iou",
        fit_cost=fit_cost,
        kwargs={"task": task, **kwargs},
        settings={"cfg": "gcnn"},
    )


# (colour, line style, line width): one family per colour, mean solid / logsum dashed
CATALOGUE: dict[str, MethodSpec] = {
    "gcnn_classif": _gcnn("GCNN classif", ("#d62728", "-", 2.6), "classif"),
    "gcnn_reg": _gcnn("GCNN reg", ("#ff7f0e", "--", 2.6), "reg"),
    "entropy_mean": _column("entropy_mean", "Entropy mean", "#1f77b4", "-"),
    "entropy_logsum": _column("entropy_logsum", "Entropy logsum", "#1f77b4", "--"),
    "variance_mean": _column("variance_mean", "Variance mean", "#2ca02c", "-"),
    "variance_logsum": _column("variance_logsum", "Variance logsum", "#2ca02c", "--"),
    "pcs_mean": _column("pcs_mean", "PCS mean", "#9467bd", "-"),
    "pcs_logsum": _column("pcs_logsum", "PCS logsum", "#9467bd", "--"),
    "size": MethodSpec(
        "lesionuq.scorers.baselines:SizeScorer", "Size", ("#000000", ":", 1.8), learned=False
    ),
    "metaseg_classif": MethodSpec(
        _METASEG,
        "MetaSeg classif",
        ("#8c564b", "-.", 1.4),
        output="p_fp",
        kwargs={"task": "classif"},
    ),
    "metaseg_reg": MethodSpec(
        _METASEG, "MetaSeg reg", ("#e377c2", "-.", 1.4), output="iou", kwargs={"task": "reg"}
    ),
    # beyond the paper: a seeded ensemble of hybrid lesion GCNNs (scorers/gcnn_ens.py)
    "gcnn_ens": _made(
        "lesionuq.scorers.gcnn_ens:GCNNEnsembleScorer",
        "gcnn_ens",
        "GCNN ensemble",
        ("#17becf", "-", 2.6),
        fit_cost=5.0,
        reads=("gcnn",),
    ),
    # beyond the paper: the GCNN only where the validation lesions show it helps
    # (scorers/select.py)
    "gcnn_auto": _selector(
        "SelectedScorer", "GCNN or simpler (auto)", "#bcbd22", _AUTO, half_fits=True
    ),
    # beyond the paper: the GCNN and MetaSeg's features weighed by their out-of-fold
    # scores, every weight >= 0 (scorers/select.py)
    "gcnn_stack": _selector(
        "StackedScorer",
        "GCNN + uncertainty means (stacked)",
        "#7f7f7f",
        (*_STACK, "gcnn_classif"),
        self_calibrated=True,
    ),
    # beyond the paper (issue 31): the same stacking over every untrained baseline
    "gcnn_stack_all": _selector(
        "StackedScorer",
        "GCNN + every untrained baseline (stacked)",
        "#969696",
        (*_UNTRAINED, "gcnn_classif"),
        self_calibrated=True,
    ),
    # beyond the paper (issue 31): the paper's two GCNNs, the classifier's P(FP) and the
    # regressor's 1 - IoU_hat, weighed by their out-of-fold scores (both weights >= 0):
    # three numbers fitted on the validation lesions, where gcnn_stack fits six
    "gcnn_pair": _selector(
        "StackedScorer",
        "GCNN classif + GCNN reg (stacked)",
        "#c7c7c7",
        ("gcnn_classif", "gcnn_reg"),
        self_calibrated=True,
    ),
    # beyond the paper (issue 31): GCNNs meant to carry over to other data
    # (scorers/robust.py): intensities relative to each scan's perilesional ring,
    # augmented training graphs, both, and both stacked like gcnn_stack
    "gcnn_nawm": _robust("gcnn_nawm", "GCNN, ring-normalised", "#e7969c"),
    "gcnn_aug": _robust("gcnn_aug", "GCNN, augmented", "#ad494a"),
    "gcnn_robust": _robust("gcnn_robust", "GCNN, ring-normalised + augmented", "#843c39"),
    "gcnn_unc": _robust("gcnn_unc", "GCNN, uncertainty only", "#e6550d"),
    "gcnn_stack_robust": _selector(
        "StackedScorer",
        "Robust GCNN + uncertainty means (stacked)",
        "#525252",
        (*_STACK, "gcnn_robust"),
        self_calibrated=True,
    ),
    # beyond the paper (issue 31): the paper's GCNN with IoU_adj as a second training
    # target (scorers/multitask.py); scores P(FP)
    "gcnn_mt": MethodSpec(
        "lesionuq.scorers.multitask:MultiTaskGCNNScorer",
        "GCNN multi-task (FP + IoU)",
        ("#fdae6b", "-", 2.0),
        output="p_fp",
        fit_cost=1.0,
        settings={"cfg": "gcnn"},
    ),
    # beyond the paper (issue 31): the paper's GCNN whose number of epochs is chosen by
    # 3-fold cross-validation grouped by scan, then refitted on all the validation lesions
    # (the paper's project rule keeps the best epoch on a 20 % held out by lesion)
    "gcnn_scancv": _gcnn(
        "GCNN classif, epochs by scan CV", ("#d62728", ":", 2.0), "classif", 3.0, epoch_cv=3
    ),
    # beyond the paper (issue 31): the mean P(FP) of 5 paper GCNNs that differ only in
    # their seed (scorers/seeds.py); member 0 is gcnn_classif
    "gcnn_seeds": _made(
        "lesionuq.scorers.seeds:SeedEnsembleScorer",
        "gcnn_seeds",
        "GCNN classif, 5 seeds",
        ("#d62728", "-.", 2.0),
        fit_cost=5.0,
        reads=("gcnn",),
    ),
    # beyond the paper (issue 31): gcnn_stack with the 5-seed GCNN in place of the paper's
    "gcnn_stack_seeds": _selector(
        "StackedScorer",
        "GCNN, 5 seeds + uncertainty means (stacked)",
        "#bdbdbd",
        (*_STACK, "gcnn_seeds"),
        self_calibrated=True,
    ),
    # beyond the paper (issue 30, the paper's future work): the lesion's location class
    # (and MNI centroid) as features (scorers/located.py; needs graphs.location: true)
    "gcnn_loc": _located_gcnn("gcnn_loc", "GCNN + location", "-"),
    "gcnn_loc_mni": _located_gcnn("gcnn_loc_mni", "GCNN + location + MNI", "--"),
    "metaseg_loc": MethodSpec(
        "lesionuq.scorers.located:LocationMetaSegScorer",
        "MetaSeg + location",
        ("#c49c94", "-.", 1.4),
        output="p_fp",
        kwargs={"task": "classif"},
        needs_location=True,
    ),
}
"""Method name -> :class:`MethodSpec`; the one table of method names."""

METHODS: tuple[str, ...] = (
    "gcnn_classif",
    "gcnn_reg",
    *_UNTRAINED,
    "metaseg_classif",
    "metaseg_reg",
)
"""The paper's methods, the default of ``ExperimentConfig.methods``; any name of
:data:`CATALOGUE` may be listed."""

PREDICT_METHODS: tuple[str, ...] = ("gcnn_classif", "gcnn_reg")
"""The methods ``lesionuq predict`` reads from a model folder: the P(FP) classifier and
the IoU_adj regressor, in that order."""

_FALLBACK_COLOURS = ("#17becf", "#bcbd22", "#7f7f7f", "#393b79", "#637939", "#843c39")
_FALLBACK_LINES = ("-", "--", "-.", ":")


def method_spec(name: str) -> MethodSpec:
    """The catalogue entry of ``name``.

    Raises:
        ValueError: Unknown name (the message suggests the closest and lists the known).
    """
    if name not in CATALOGUE:
        hint = did_you_mean(name, list(CATALOGUE))
        raise ValueError(f"Unknown scoring method '{name}'{hint} (known: {', '.join(CATALOGUE)}).")
    return CATALOGUE[name]


def label(name: str) -> str:
    """Display label of a method (the name itself when not in the catalogue)."""
    spec = CATALOGUE.get(name)
    return spec.label if spec is not None else name


def style(name: str, i: int) -> tuple[str, str, float]:
    """(colour, line style, line width) of a method's curve.

    Args:
        name: Method name.
        i: Its position among the drawn methods; picks a distinct fallback style for a
            name that is not in the catalogue.
    """
    spec = CATALOGUE.get(name)
    if spec is not None:
        return spec.style
    return (
        _FALLBACK_COLOURS[i % len(_FALLBACK_COLOURS)],
        _FALLBACK_LINES[(i // len(_FALLBACK_COLOURS)) % len(_FALLBACK_LINES)],
        1.4,
    )


def is_learned(name: str) -> bool:
    """Whether method ``name`` learns from the validation lesions.

    Raises:
        ValueError: Unknown name.
    """
    return method_spec(name).learned


def learned_methods() -> tuple[str, ...]:
    """The learned methods of the catalogue, in its order."""
    return tuple(name for name, spec in CATALOGUE.items() if spec.learned)


def outputs_p_fp(name: str) -> bool:
    """Whether method ``name``'s score is a P(FP) in [0, 1] (False when unknown)."""
    spec = CATALOGUE.get(name)
    return spec is not None and spec.output == "p_fp"


def fit_cost(name: str) -> float:
    """Relative fit time of method ``name`` (0 when unknown)."""
    spec = CATALOGUE.get(name)
    return spec.fit_cost if spec is not None else 0.0
