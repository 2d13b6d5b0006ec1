"""The reproduction's results, typed: what each step returns, what ``results.json`` and ``cdrl.json``
hold, and what the renderer (:mod:`~catts_experiments.reproduce.render`) reads.

Plain frozen dataclasses, one per table a step fills; pydantic's ``TypeAdapter`` reads and writes
them (:meth:`Results.from_json`, :meth:`Results.to_json`), so a stored result whose shape changed
fails on load at the field that changed, not deep in the Markdown. Why dataclasses and not pydantic
models: the results are plain records built by the steps and read by the renderer; the adapter
gives the validation and the JSON round trip without making every record a model class.

Every float is a :data:`Number`: NaN in memory for an undefined figure (an AUROC over one class, a
ratio with no drop before: :mod:`catts_graph.metrics`), ``null`` in the JSON
(:func:`~catts_graph.formatting.json_ready`), read back as NaN. A field that a result written before
the field existed lacks has a default (``None``: not measured), so the committed runs still load.
Tables keyed by a name (a method, an organism, a perturbation) keep their order from the JSON.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

from pydantic import BeforeValidator, TypeAdapter

from catts_experiments.reproduce.plan import Plan
from catts_graph.formatting import json_ready

__all__ = [
    "CDRLEffect",
    "CDRLRun",
    "Calibration",
    "ClipLift",
    "CostCell",
    "DropRatio",
    "KindSummary",
    "ModuleAnswers",
    "MMBoundaryProbe",
    "MMBoundaryResults",
    "Number",
    "OrganismSummary",
    "PairedAccuracy",
    "ProbeRow",
    "ReflectionSummary",
    "Effect",
    "HardRegime",
    "Results",
    "Versus",
    "Saving",
    "SignalFit",
    "Slope",
    "StepFloorCell",
    "StepRepair",
    "StepSignals",
    "ThresholdCell",
    "Thresholds",
]


def _nan_for_null(value: Any) -> Any:
    return math.nan if value is None else value


Number = Annotated[float, BeforeValidator(_nan_for_null)]
"""A float that JSON stores as ``null`` when it is undefined (NaN)."""
Interval = tuple[Number, Number]
"""A 95% bootstrap interval ``(low, high)``."""

T = TypeVar("T")


class _Json:
    """``from_json`` / ``to_json`` for a results dataclass, through pydantic's ``TypeAdapter``."""

    @classmethod
    def from_json(cls: type[T], data: Any) -> T:
        """The result that ``data`` (parsed JSON, as :meth:`to_json` writes it) holds."""
        return TypeAdapter(cls).validate_python(data)

    def to_json(self) -> Any:
        """The result as strict JSON data (NaN as None, tuples as lists)."""
        return json_ready(TypeAdapter(type(self)).dump_python(self, mode="json"))


@dataclass(frozen=True)
class KindSummary(_Json):
    """Greedy accuracy and mean confidences of one organism on one question kind (or ``all``)."""

    accuracy: Number
    confidence: Number
    """Mean ``exp(-NMLP)`` of the whole reply."""
    answer_confidence: Number
    """Mean ``exp(-NMLP)`` of the answer's own tokens."""
    n: int
    ci: Interval | None = None


@dataclass(frozen=True)
class OrganismSummary(_Json):
    """One organism: its size, and its accuracy per kind clean, noised and on a fresh seed."""

    parameters: int
    clean: dict[str, KindSummary]
    noise: dict[str, KindSummary]
    fresh: dict[str, KindSummary]


@dataclass(frozen=True)
class ClipLift(_Json):
    """How much relevance mass a CLIP puts on the object a question names, against its area."""

    mass: Number
    area: Number
    lift: Number
    n: int
    kinds: dict[str, Number]


@dataclass(frozen=True)
class CDRLRun(_Json):
    """CDRL's training summary (``cdrl_summary.json`` of ``catts_training``)."""

    seconds: Number
    steps: int
    reward_means: dict[str, Number]
    metric_means: dict[str, Number] = field(default_factory=dict)
    output_dir: str | None = None
    losses: list[Number] | None = None
    shipped_from: str | None = None
    """The shipped organism the step placed instead of training (None: trained in this run)."""


@dataclass(frozen=True)
class ProbeRow(_Json):
    """One cell of the probe (:class:`catts_graph.eval.probe.ProbeSummaryRow`) with its interval."""

    perturb: str
    level: Number
    items: int
    accuracy: Number
    mean_confidence: Number
    mean_nmlp: Number
    confidence_drop: Number
    confidence_drop_nmlp: Number
    ece: Number
    auroc: Number
    accuracy_ci: Interval | None = None


@dataclass(frozen=True)
class ProbePair(_Json):
    """The probe of the base organism before CDRL and after it."""

    before: list[ProbeRow]
    after: list[ProbeRow]


@dataclass(frozen=True)
class DropRatio(_Json):
    """A perturbed cell's confidence drop before and after CDRL and their ratio, in ``exp(-NMLP)``
    (``confidence_*``) and NMLP (``nmlp_*``) units (:func:`catts_graph.metrics.drop_ratio`)."""

    perturb: str
    level: Number
    confidence_drop_before: Number
    confidence_drop_after: Number
    confidence_ratio: Number
    nmlp_drop_before: Number
    nmlp_drop_after: Number
    nmlp_ratio: Number
    confidence_ratio_ci: Interval | None = None
    nmlp_ratio_ci: Interval | None = None


@dataclass(frozen=True)
class Calibration(_Json):
    """ECE and AUROC of ``exp(-NMLP)`` over every probe row; clean accuracy and mean NMLP."""

    rows: int
    ece: Number
    auroc: Number
    clean_accuracy: Number
    clean_nmlp: Number | None = None
    """None: a run from before the clean NMLP was measured."""


@dataclass(frozen=True)
class CalibrationPair(_Json):
    before: Calibration
    after: Calibration


@dataclass(frozen=True)
class CDRLEffect(_Json):
    """CDRL alone (``catts measure cdrl``, ``cdrl.json``): the run and what it did to the drops."""

    plan: Plan
    cdrl: CDRLRun
    ratios: list[DropRatio]
    calibration: CalibrationPair


@dataclass(frozen=True)
class ThresholdCell(_Json):
    """The adaptive policy at one point of the threshold grid (validation)."""

    fast_path_share: Number
    fast_path_confidence: Number
    accuracy: Number
    tokens: Number
    expert_calls: Number
    seconds: Number
    items: int


@dataclass(frozen=True)
class Thresholds(_Json):
    grid: list[ThresholdCell]
    chosen: dict[str, Number]
    """``fast_path_share`` and ``fast_path_confidence`` as chosen."""
    n: int
    items: int


@dataclass(frozen=True)
class CostCell(_Json):
    """A method at one N: accuracy in points with its interval, base tokens and expert calls per item."""

    accuracy: Number
    tokens: Number
    expert_calls: Number
    items: int
    ci: Interval | None = None


@dataclass(frozen=True)
class Slope(_Json):
    """Accuracy gained per doubling of N, and its ratio to majority voting's, with intervals."""

    slope: Number
    ci: Interval
    ratio: Number
    ratio_ci: Interval


@dataclass(frozen=True)
class Saving(_Json):
    """An adaptive policy against majority voting at one N."""

    method: str
    n: int
    accuracy: Number
    reference_accuracy: Number
    difference: Number
    difference_ci: Interval
    tokens: Number
    reference_tokens: Number
    saved: Number
    saved_ci: Interval
    matching_n: int | None
    """The cheapest N at which the policy reaches the reference's accuracy (None: none does)."""
    matching_saved: Number | None


@dataclass(frozen=True)
class ReflectionSummary(_Json):
    """What the base's reflection on the expert organism's critique adds (accuracy as a share)."""

    items: int
    criticised: int
    accuracy_before: Number
    accuracy_after: Number
    accuracy_after_oracle: Number
    fixed: int
    broken: int
    accuracy_before_ci: Interval
    accuracy_after_ci: Interval
    accuracy_after_oracle_ci: Interval
    difference: Number
    difference_ci: Interval


@dataclass(frozen=True)
class ModuleAnswers(_Json):
    """One module's own answers inside the full method's runs, on one question kind (counts of items):
    :func:`~catts_experiments.reproduce.statistics.module_answers`."""

    runs: int
    module_right: int
    leader_right: int
    """The weighted vote's leader, on the same items."""
    final_right: int
    criticised_right: int | None = None
    """The criticised sample's answer (the reflection only)."""


@dataclass(frozen=True)
class StepFloorCell(_Json):
    """The adaptive policy with one step floor (None: off), on validation."""

    step_floor: Number | None
    accuracy: Number
    tokens: Number
    expert_calls: Number
    seconds: Number
    items: int


@dataclass(frozen=True)
class StepRepair(_Json):
    """``step_repair`` in the adaptive policy against the policy without it (test, one N)."""

    grid: list[StepFloorCell]
    chosen: Number | None
    n: int
    rows: dict[str, CostCell]
    difference: Number
    difference_ci: Interval
    repair_difference: Number | None = None
    repair_difference_ci: Interval | None = None


@dataclass(frozen=True)
class SignalFit(_Json):
    """Step ECE (level-mapped) and step AUROC of one step signal or of a fusion."""

    ece: Number
    auroc: Number


@dataclass(frozen=True)
class StepSignals(_Json):
    """Step-level calibration against the step truth
    (:func:`~catts_experiments.step_calibration.measure_step_calibration`)."""

    signals: dict[str, SignalFit]
    steps: dict[str, int]
    fused: SignalFit
    calibrator: dict[str, Any]
    """:meth:`catts_graph.step_confidence.StepCalibrator.to_dict`."""
    step_accuracy: Number
    fused_without_clip: SignalFit | None = None


@dataclass(frozen=True)
class PairedAccuracy(_Json):
    """Answer accuracy minus the base's on the same items, in points, and who alone answers right."""

    difference: Number
    ci: Interval
    fixed: int
    broken: int


@dataclass(frozen=True)
class MMBoundaryProbe(_Json):
    """The figures of one MMBoundary probe (``catts_training.mmboundary.probe``), with the intervals
    the reproduction adds."""

    items: int
    answer_accuracy: Number
    steps: int
    statement_steps: int
    parsed_share: Number
    expressed_counts: list[int]
    expressed_entropy: Number
    level_gap: Number
    step_accuracy: Number
    expressed_ece: Number
    expressed_auroc: Number
    internal_ece: Number
    internal_auroc: Number
    labelled_steps: int
    level_confidence: list[Number] | None = None
    intervals: dict[str, Interval] = field(default_factory=dict)
    accuracy_vs_base: PairedAccuracy | None = None


@dataclass(frozen=True)
class MMBoundaryResults(_Json):
    """MMBoundary on the base organism: the stages' summaries (``catts_training``'s JSON, kept as it
    is) and the probe of each model."""

    data: dict[str, Any]
    probe: dict[str, MMBoundaryProbe]
    sft: dict[str, Any] | None = None
    rl: dict[str, Any] | None = None
    pretrain: dict[str, Any] | None = None


@dataclass(frozen=True)
class Effect(_Json):
    """A paired difference in points on the same items, with its 95% interval."""

    difference: Number
    ci: Interval


@dataclass(frozen=True)
class Versus(_Json):
    """A CA-TTS row against majority voting at the same N, paired over the items (at N = 1 majority
    is a single sample)."""

    method: str
    n: int
    accuracy: Number
    reference_accuracy: Number
    difference: Number
    difference_ci: Interval


@dataclass(frozen=True)
class HardRegime(_Json):
    """The CA-TTS steps on the hard generator level (``plan.level``), where the base organism is
    unsure: thresholds, scaling, slopes, the adaptive saving, CA-TTS against majority, the ablations
    with their paired effects, step repair and the reflection."""

    plan: Plan
    """The reproduction's plan at the hard level (``level`` set)."""
    thresholds: Thresholds
    scaling: dict[str, dict[str, dict[str, CostCell]]]
    slopes: dict[str, Slope]
    savings: list[Saving]
    versus: list[Versus]
    ablations: dict[str, CostCell]
    ablation_effects: dict[str, Effect]
    """Per ablation: the full method's accuracy minus the ablated one's (what the module or boost adds)."""
    reflection: ReflectionSummary
    step_repair: StepRepair
    module_answers: dict[str, dict[str, ModuleAnswers]] | None = None
    """``{module: {kind: counts}}``: what the self-check and the reflection answered in the full
    method's ablation runs (runs before it was measured: None)."""


@dataclass(frozen=True)
class Results(_Json):
    """Everything ``catts reproduce`` measured (``results.json``)."""

    plan: Plan
    models: dict[str, OrganismSummary]
    cdrl: CDRLRun
    probe: ProbePair
    ratios: list[DropRatio]
    calibration: CalibrationPair
    thresholds: Thresholds
    scaling: dict[str, dict[str, dict[str, CostCell]]]
    """``{expert ("self" or "expert"): {method: {N: cell}}}``."""
    slopes: dict[str, Slope]
    """By row label (:func:`~catts_experiments.reproduce.statistics.row_label`)."""
    savings: list[Saving]
    ablations: dict[str, CostCell] | None = None
    """On the mixed levels (runs before the hard regime existed; since, see ``hard``)."""
    clip: dict[str, ClipLift] | None = None
    reflection: ReflectionSummary | None = None
    step_repair: StepRepair | None = None
    step_signals: StepSignals | None = None
    mmboundary: MMBoundaryResults | None = None
    hard: HardRegime | None = None
    seconds: dict[str, Number] = field(default_factory=dict)
    """Compute per step, summed over every invocation on the run folder (both chains)."""
    total_seconds: Number = 0.0
    wall_seconds: Number | None = None
    """Wall time summed over every invocation (runs before it was kept: None); with two workers,
    less than ``total_seconds``."""
