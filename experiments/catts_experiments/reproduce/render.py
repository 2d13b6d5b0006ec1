"""The reproduction's tables in Markdown (``results.md``, quoted in ``docs/organism.md``), from the
typed results (:mod:`~catts_experiments.reproduce.results`): a renamed or missing field fails when
the results load, not here. Brackets are 95% bootstrap intervals over the items."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

from catts_experiments.reproduce.plan import Plan
from catts_experiments.reproduce.results import (
    CalibrationPair,
    CDRLRun,
    CostCell,
    DropRatio,
    HardRegime,
    MMBoundaryResults,
    Results,
    StepRepair,
    StepSignals,
)
from catts_experiments.reproduce.statistics import row_label
from catts_graph.formatting import markdown_table, number, with_interval

__all__ = ["cdrl_section", "hard_section", "render_markdown"]


def _md(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    return [*markdown_table(headers, rows).splitlines(), ""]


def _cost_table(headers: Sequence[str], cells: dict[str, CostCell]) -> list[str]:
    """One row per method: accuracy (points) with its interval, tokens and expert calls per item."""
    return _md(
        headers,
        [
            [name, with_interval(c.accuracy, c.ci, 1), number(c.tokens, 0), number(c.expert_calls, 2)]
            for name, c in cells.items()
        ],
    )


def render_markdown(results: Results) -> str:
    """The result tables of ``docs/organism.md``."""
    lines = _models_section(results)
    lines += _clip_section(results)
    lines += _probe_section(results)
    lines += cdrl_section(results)
    lines.append("")
    lines += _thresholds_section(results)
    lines += _scaling_section(results)
    lines += _savings_section(results)
    plan = results.plan
    if results.ablations:
        lines.append(f"### Ablations (expert organism, N={plan.ablation_n}, {plan.test_items} test items)")
        lines += _cost_table(["method", "accuracy", "tokens", "expert calls"], results.ablations)
    lines += _reflection_section(results)
    if results.step_signals:
        lines += _signals_section(results.step_signals, plan)
    if results.mmboundary:
        lines += _mmboundary_section(results.mmboundary, plan)
    if results.step_repair:
        lines += _step_repair_section(results.step_repair, plan)
    if results.hard:
        lines += hard_section(results.hard)
    return "\n".join(lines).rstrip() + "\n"


def hard_section(hard: HardRegime) -> list[str]:
    """The CA-TTS tables again on the hard generator level, headed by the level; then CA-TTS against
    majority at the same N and the ablations' paired effects."""
    plan = hard.plan
    lines = [
        f"## The hard regime (generator level {plan.level}: the base organism unsure)",
        "",
    ]
    lines += _thresholds_section(hard)
    lines += _scaling_section(hard)
    lines += _savings_section(hard)
    lines.append("### CA-TTS against majority voting at the same N (paired; at N=1 majority is one sample)")
    lines += _md(
        ["method", "N", "accuracy", "majority", "difference (pts)"],
        [
            [
                v.method,
                str(v.n),
                number(v.accuracy, 1),
                number(v.reference_accuracy, 1),
                with_interval(v.difference, v.difference_ci, 1),
            ]
            for v in hard.versus
        ],
    )
    lines.append(f"### Ablations (expert organism, N={plan.ablation_n}, {plan.test_items} test items)")
    lines += _md(
        ["method", "accuracy", "tokens", "expert calls", "full method minus this (pts, paired)"],
        [
            [
                name,
                with_interval(c.accuracy, c.ci, 1),
                number(c.tokens, 0),
                number(c.expert_calls, 2),
                with_interval(hard.ablation_effects[name].difference, hard.ablation_effects[name].ci, 1)
                if name in hard.ablation_effects
                else "",
            ]
            for name, c in hard.ablations.items()
        ],
    )
    lines += _module_answers_section(hard)
    lines += _reflection_section(hard)
    lines += _step_repair_section(hard.step_repair, plan)
    return lines


_MODULE_LABELS = {"visual_self_check": "visual self-check (its winner)", "self_reflection": "reflection"}


def _module_answers_section(hard: HardRegime) -> list[str]:
    """What the self-check and the reflection answered inside the full method, against the vote."""
    if not hard.module_answers:
        return []

    def share(right: int | None, runs: int) -> str:
        return "" if right is None else f"{100.0 * right / runs:.1f} ({right})" if runs else "n/a"

    rows = [
        [
            _MODULE_LABELS.get(module, module),
            kind,
            str(c.runs),
            share(c.module_right, c.runs),
            share(c.criticised_right, c.runs),
            share(c.leader_right, c.runs),
            share(c.final_right, c.runs),
        ]
        for module, by_kind in hard.module_answers.items()
        for kind, c in by_kind.items()
    ]
    return [
        f"### What the modules answer inside the full method (catts_paper, expert organism, "
        f"N={hard.plan.ablation_n}): % right (items) where each gave an answer",
        *_md(
            ["module", "kind", "runs", "its answer", "criticised sample", "vote leader", "final answer"],
            rows,
        ),
    ]


def _models_section(results: Results) -> list[str]:
    plan, models = results.plan, results.models
    kinds = [k for k in models["base"].clean if k != "all"]
    lines = [f"### The organisms (greedy, {plan.model_items} test items; fresh: seed {plan.fresh_seed})"]
    lines += _md(
        [
            "model",
            "params",
            "clean acc",
            "fresh-seed acc",
            "conf (reply)",
            "conf (answer)",
            "noised acc",
            "noised conf (reply)",
            "noised conf (answer)",
        ],
        [
            [
                which,
                f"{row.parameters / 1e6:.2f}M",
                with_interval(row.clean["all"].accuracy, row.clean["all"].ci),
                with_interval(row.fresh["all"].accuracy, row.fresh["all"].ci),
                number(row.clean["all"].confidence),
                number(row.clean["all"].answer_confidence),
                with_interval(row.noise["all"].accuracy, row.noise["all"].ci),
                number(row.noise["all"].confidence),
                number(row.noise["all"].answer_confidence),
            ]
            for which, row in models.items()
        ],
    )
    lines.append("Per question kind (clean accuracy; answer-span confidence):")
    lines.append("")
    lines += _md(
        ["model", *kinds],
        [
            [
                which,
                *(
                    f"{with_interval(row.clean[k].accuracy, row.clean[k].ci, 2)}; "
                    f"{number(row.clean[k].answer_confidence, 2)}"
                    for k in kinds
                ),
            ]
            for which, row in models.items()
        ],
    )
    return lines


def _clip_section(results: Results) -> list[str]:
    if results.clip is None:
        return []
    kinds = ("colour", "count", "position")
    return [
        f"### CLIP relevance on the named object ({results.plan.probe_items} test items: colour, count "
        "and position questions)",
        *_md(
            ["CLIP", "mass on the object", "object's area", "lift (mass / area per item)", *kinds],
            [
                [
                    name,
                    number(row.mass),
                    number(row.area),
                    number(row.lift, 2),
                    *(number(row.kinds.get(kind, math.nan), 2) for kind in kinds),
                ]
                for name, row in results.clip.items()
            ],
        ),
    ]


def _probe_section(results: Results) -> list[str]:
    rows = [
        [
            model,
            row.perturb,
            number(row.level, 2),
            with_interval(row.accuracy, row.accuracy_ci),
            number(row.mean_confidence),
            number(row.confidence_drop),
            number(row.confidence_drop_nmlp),
        ]
        for model, probe in (("base", results.probe.before), ("base + CDRL", results.probe.after))
        for row in probe
    ]
    return [
        f"### Probe: accuracy and confidence as the image is taken away ({results.plan.probe_items} test "
        "items)",
        *_md(["model", "perturbation", "level", "accuracy", "confidence", "drop", "drop (NMLP)"], rows),
    ]


class CDRLTables(Protocol):
    """What :func:`cdrl_section` reads: a :class:`Results` or a :class:`CDRLEffect`."""

    @property
    def ratios(self) -> list[DropRatio]: ...
    @property
    def calibration(self) -> CalibrationPair: ...
    @property
    def cdrl(self) -> CDRLRun: ...


def cdrl_section(results: CDRLTables) -> list[str]:
    """The CDRL tables: confidence-drop ratios and calibration before/after, and the run's rewards
    (of the whole reproduction, or of ``catts measure cdrl``)."""
    ratios, calibration, cdrl = results.ratios, results.calibration, results.cdrl
    lines = ["### CDRL: confidence-drop ratio (drop after / drop before, each on the model's own answers)"]
    lines += _md(
        [
            "perturbation",
            "level",
            "NMLP drop before",
            "NMLP drop after",
            "NMLP ratio",
            "exp(-NMLP) drop before",
            "exp(-NMLP) drop after",
            "exp(-NMLP) ratio",
        ],
        [
            [
                r.perturb,
                number(r.level, 2),
                number(r.nmlp_drop_before),
                number(r.nmlp_drop_after),
                with_interval(r.nmlp_ratio, r.nmlp_ratio_ci, 2),
                number(r.confidence_drop_before),
                number(r.confidence_drop_after),
                with_interval(r.confidence_ratio, r.confidence_ratio_ci, 2),
            ]
            for r in ratios
        ],
    )
    lines.append("### CDRL: calibration over every probe row")
    lines += _md(
        ["model", "clean accuracy", "clean NMLP", "ECE", "AUROC", "rows"],
        [
            [label, number(c.clean_accuracy), number(c.clean_nmlp), number(c.ece), number(c.auroc), c.rows]
            for label, c in (("base", calibration.before), ("base + CDRL", calibration.after))
        ],
    )
    trained = f"{cdrl.steps} GRPO steps in {cdrl.seconds:.0f} s"
    if cdrl.shipped_from is not None:
        trained = (
            f"the shipped `{cdrl.shipped_from}` organism, trained from this config and the shipped base "
            f"({trained}; `--train-cdrl` trains it again)"
        )
    lines.append(
        f"CDRL: {trained}; mean rewards " + ", ".join(f"{k} {v:.4g}" for k, v in cdrl.reward_means.items())
    )
    if cdrl.metric_means:
        lines.append("")
        lines.append(
            "Logged during training (means over steps): "
            + ", ".join(f"{k} {v:.4g}" for k, v in cdrl.metric_means.items())
        )
    return lines


def _thresholds_section(results: Results | HardRegime) -> list[str]:
    thresholds = results.thresholds
    chosen = thresholds.chosen
    return [
        f"### Adaptive thresholds (validation split, {thresholds.items} items, N={thresholds.n}, "
        "expert organism)",
        *_md(
            ["fast_path_share", "fast_path_confidence", "accuracy", "tokens", "expert calls"],
            [
                [
                    number(c.fast_path_share, 2),
                    number(c.fast_path_confidence, 2),
                    number(c.accuracy, 1),
                    number(c.tokens, 0),
                    number(c.expert_calls, 2),
                ]
                for c in thresholds.grid
            ],
        ),
        f"Chosen: fast_path_share = {chosen['fast_path_share']:g}, "
        f"fast_path_confidence = {chosen['fast_path_confidence']:g}",
        "",
    ]


def _scaling_section(results: Results | HardRegime) -> list[str]:
    plan = results.plan
    lines = [
        f"### Test-time scaling ({plan.test_items} test items, accuracy %; majority and DeepConf "
        f"averaged over {plan.subsets} random size-N subsets of each item's 32 samples)"
    ]
    ns = sorted(
        {n for table in results.scaling.values() for per_n in table.values() for n in map(int, per_n)}
    )
    scaling_rows, cost_rows = [], []
    for expert, table in results.scaling.items():
        for method, per_n in table.items():
            label = row_label(method, expert)
            fitted = results.slopes[label]
            scaling_rows.append(
                [
                    label,
                    *(
                        with_interval(per_n[str(n)].accuracy, per_n[str(n)].ci, 1)
                        if str(n) in per_n
                        else "n/a"
                        for n in ns
                    ),
                    with_interval(fitted.slope, fitted.ci, 2),
                    with_interval(fitted.ratio, fitted.ratio_ci, 2),
                ]
            )
            cost_rows.append(
                [
                    label,
                    *(
                        f"{number(per_n[str(n)].tokens, 0)} / {number(per_n[str(n)].expert_calls, 1)}"
                        for n in ns
                    ),
                ]
            )
    lines += _md(
        ["method", *(f"N={n}" for n in ns), "slope (pts / doubling)", "slope / majority's"], scaling_rows
    )
    lines.append("### Cost: mean base-model tokens and expert calls per item")
    lines += _md(["method", *(f"N={n}" for n in ns)], cost_rows)
    return lines


def _savings_section(results: Results | HardRegime) -> list[str]:
    if not results.savings:
        return []
    n = results.savings[0].n
    return [
        f"### The adaptive policy against majority voting at N={n}",
        *_md(
            [
                "method",
                "accuracy",
                f"majority N={n}",
                "difference (pts)",
                "tokens",
                f"majority N={n} tokens",
                "tokens saved",
                "cheapest N reaching majority's accuracy (tokens saved)",
            ],
            [
                [
                    s.method,
                    number(s.accuracy, 1),
                    number(s.reference_accuracy, 1),
                    with_interval(s.difference, s.difference_ci, 1),
                    number(s.tokens, 0),
                    number(s.reference_tokens, 0),
                    with_interval(s.saved, s.saved_ci, 2),
                    "none" if s.matching_n is None else f"N={s.matching_n} ({number(s.matching_saved, 2)})",
                ]
                for s in results.savings
            ],
        ),
    ]


def _reflection_section(results: Results | HardRegime) -> list[str]:
    """The base organism's reflection on the expert organism's critiques."""
    effect = results.reflection
    if not effect:
        return []
    return [
        f"### Self-reflection on the expert's critique ({effect.items} test items, greedy)",
        *_md(
            ["", "accuracy", "criticised", "fixed", "broken"],
            [
                [
                    "base organism",
                    with_interval(effect.accuracy_before, effect.accuracy_before_ci),
                    "",
                    "",
                    "",
                ],
                [
                    "after reflecting on the expert organism's critique",
                    with_interval(effect.accuracy_after, effect.accuracy_after_ci),
                    str(effect.criticised),
                    str(effect.fixed),
                    str(effect.broken),
                ],
                [
                    "the same with the true wrong step named (oracle critic)",
                    with_interval(effect.accuracy_after_oracle, effect.accuracy_after_oracle_ci),
                    "",
                    "",
                    "",
                ],
            ],
        ),
        f"Reflection minus base: {with_interval(effect.difference, effect.difference_ci)} (paired).",
        "",
    ]


def _signals_section(signals: StepSignals, plan: Plan) -> list[str]:
    """Each step signal of the base organism against the step truth, and their fusion."""
    weights = ", ".join(f"{k} {v:.2f}" for k, v in signals.calibrator["weights"].items())
    rows = [[name, number(v.ece), number(v.auroc)] for name, v in signals.signals.items()]
    rows.append([f"fused ({weights})", number(signals.fused.ece), number(signals.fused.auroc)])
    if signals.fused_without_clip is not None:
        without = signals.fused_without_clip
        rows.append(["fused without clipscore", number(without.ece), number(without.auroc)])
    return [
        f"### Step signals of the base organism against the step truth ({signals.steps['test']} "
        f"test steps of {plan.probe_items} items; levels fitted on {signals.steps['validation']} "
        f"validation steps)",
        *_md(["signal", "step ECE (level-mapped)", "step AUROC"], rows),
        f"Test step accuracy {number(signals.step_accuracy)}.",
        "",
    ]


_MMBOUNDARY_MODELS = (
    ("base", "base organism"),
    ("pretrained", "+ statement pre-training"),
    ("sft", "+ SFT"),
    ("rl", "+ SFT + RL"),
)


def _mmboundary_section(mmb: MMBoundaryResults, plan: Plan) -> list[str]:
    """The MMBoundary probe of the base, pre-trained, SFT and RL models, and the training's cost."""
    rows = []
    for name, label in _MMBOUNDARY_MODELS:
        f = mmb.probe.get(name)
        if f is None:
            continue
        ci = f.intervals
        counts = f.expressed_counts
        paired = f.accuracy_vs_base
        rows.append(
            [
                label,
                with_interval(f.answer_accuracy, ci.get("answer_accuracy")),
                "n/a" if paired is None else with_interval(paired.difference, paired.ci, 1),
                number(f.step_accuracy),
                number(f.parsed_share) if f.statement_steps and name != "base" else "n/a",
                number(f.expressed_entropy) if any(counts) else "n/a",
                " / ".join(str(c) for c in counts) if any(counts) else "n/a",
                with_interval(f.expressed_ece, ci.get("expressed_ece")),
                with_interval(f.expressed_auroc, ci.get("expressed_auroc")),
                with_interval(f.internal_ece, ci.get("internal_ece")),
                with_interval(f.internal_auroc, ci.get("internal_auroc")),
            ]
        )
    lines = [
        f"### MMBoundary: stated step confidence ({plan.probe_items} {plan.probe_split} items, "
        "greedy; levels' confidences measured on validation)"
    ]
    lines += _md(
        [
            "model",
            "answer accuracy",
            "vs base (points, paired)",
            "step accuracy",
            "parsed",
            "level entropy (nats)",
            "levels 1..5",
            "expressed ECE",
            "expressed AUROC",
            "internal ECE",
            "internal AUROC",
        ],
        rows,
    )
    sft, rl, pretrain = mmb.sft or {}, mmb.rl or {}, mmb.pretrain
    before = (
        f"statement pre-training {pretrain['steps']} steps ({number(pretrain['seconds'], 0)} s, "
        f"levels 1..5 stated {' / '.join(str(c) for c in pretrain['level_counts'])}), "
        if pretrain
        else ""
    )
    lines.append(
        f"Training: {before}{mmb.data['examples']} stated replies; SFT {sft.get('steps')} steps "
        f"({number(sft.get('seconds', math.nan), 0)} s), RL {rl.get('steps')} steps "
        f"({number(rl.get('seconds', math.nan), 0)} s)."
    )
    lines.append("")
    return lines


def _step_repair_section(repair: StepRepair, plan: Plan) -> list[str]:
    """``step_repair`` in the adaptive policy against the policy without it."""
    searched = ", ".join(
        f"{'off' if c.step_floor is None else number(c.step_floor, 2)} {number(c.accuracy, 1)}"
        for c in repair.grid
    )
    own = (
        "; minus the same floor without the repair (the same routing): "
        f"{with_interval(repair.repair_difference, repair.repair_difference_ci, 1)} points."
        if repair.repair_difference is not None
        else "."
    )
    return [
        f"### Step repair in the adaptive policy (expert organism, N={repair.n}, "
        f"{plan.test_items} test items)",
        *_cost_table(["policy", "accuracy", "base tokens", "expert calls"], repair.rows),
        f"Step floor chosen on validation: {number(repair.chosen, 2)} (accuracy by floor: "
        f"{searched}); step_repair minus adaptive: "
        f"{with_interval(repair.difference, repair.difference_ci, 1)} points" + own,
        "",
    ]
