"""The organism reproduction's arithmetic and report, by hand (the full run is in test_organism), and
the committed results: their tables render from their stored JSON byte for byte."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from catts_experiments.reproduce import CDRLEffect, Plan, Results
from catts_experiments.reproduce.plan import CDRL_CONFIG, MMBOUNDARY_CONFIG, check_plan
from catts_experiments.reproduce.render import cdrl_section, render_markdown
from catts_experiments.reproduce.statistics import (
    ablation_effects,
    drop_ratios,
    module_answers,
    paired_accuracy,
    pooled_calibration,
    probe_intervals,
    ratio_intervals,
    savings,
    slopes,
    versus_majority,
)
from catts_experiments.reproduce.training import training_config

ROOT = Path(__file__).resolve().parents[1]


def probe_row(perturb: str, level: float, drop: float, drop_nmlp: float) -> dict:
    return {
        "perturb": perturb,
        "level": level,
        "items": 10,
        "accuracy": 0.5,
        "mean_confidence": 0.8 + drop,
        "mean_nmlp": 0.2,
        "confidence_drop": drop,
        "confidence_drop_nmlp": drop_nmlp,
        "ece": 0.1,
        "auroc": 0.7,
    }


def test_drop_ratios_per_perturbation_and_level() -> None:
    before = [
        probe_row("clean", 0.0, 0.0, 0.0),
        probe_row("gaussian", 0.5, -0.01, 0.0),
        probe_row("gaussian", 1.0, -0.05, -0.10),
        probe_row("occlusion", 1.0, -0.02, -0.04),
    ]
    after = [
        probe_row("clean", 0.0, 0.0, 0.0),
        probe_row("gaussian", 0.5, -0.03, -0.05),
        probe_row("gaussian", 1.0, -0.20, -0.43),
        probe_row("occlusion", 1.0, -0.02, -0.02),
    ]
    ratios = {(r["perturb"], r["level"]): r for r in drop_ratios(before, after)}
    assert set(ratios) == {("gaussian", 0.5), ("gaussian", 1.0), ("occlusion", 1.0)}
    assert ratios["gaussian", 1.0]["confidence_ratio"] == pytest.approx(4.0)
    assert ratios["gaussian", 1.0]["nmlp_ratio"] == pytest.approx(4.3)
    assert ratios["gaussian", 0.5]["confidence_ratio"] == pytest.approx(3.0)
    assert math.isnan(ratios["gaussian", 0.5]["nmlp_ratio"])  # no drop before: no ratio
    assert ratios["occlusion", 1.0]["confidence_ratio"] == pytest.approx(1.0)
    assert ratios["occlusion", 1.0]["nmlp_drop_after"] == -0.02


def per_n(columns: dict[int, list[float]], tokens: float = 10.0) -> dict[str, dict[str, list[float]]]:
    return {
        str(n): {"correct": c, "tokens": [tokens * n] * len(c), "expert_calls": [0.0] * len(c)}
        for n, c in columns.items()
    }


def test_slopes_are_points_per_doubling_with_joint_intervals() -> None:
    plan = Plan(n_boot=200)
    # Majority: every item (subset-averaged) gains 0.25 per doubling: 25 points per doubling.
    majority = per_n({1: [0.0, 0.5], 2: [0.25, 0.75], 4: [0.5, 1.0]})
    # "a": every item gains 0.5 per doubling: 50 points, twice majority's in every resample.
    steady = per_n({1: [0.0, 0.0], 2: [0.5, 0.5], 4: [1.0, 1.0]})
    # "c": one item gains, one does not: the slope depends on which items a resample draws.
    mixed = per_n({1: [0.0, 1.0], 2: [1.0, 1.0], 4: [1.0, 1.0]})
    result = slopes({"majority": majority, "a": steady, "c": mixed, "b": per_n({8: [1, 0]})}, plan)
    assert result["majority"]["slope"] == pytest.approx(25.0)
    assert result["a"]["slope"] == pytest.approx(50.0) and result["a"]["ci"] == pytest.approx([50.0, 50.0])
    assert result["a"]["ratio"] == pytest.approx(2.0) and result["a"]["ratio_ci"] == pytest.approx([2.0, 2.0])
    assert result["majority"]["ratio"] == pytest.approx(1.0)
    # "c" at 50, 100, 100: slope sum dx*dy / sum dx^2 = (-1)(-33.3) + 0 + (1)(16.7) over 2 = 25.
    assert result["c"]["slope"] == pytest.approx(25.0)
    low, high = result["c"]["ci"]
    assert low < 25.0 < high  # resamples of two copies of either item give 0 or 50
    assert math.isnan(result["b"]["slope"])  # one N has no slope


def test_savings_compare_adaptive_with_majority_at_n8() -> None:
    plan = Plan(ablation_n=8, n_boot=200)
    majority = per_n({4: [1, 0, 0, 0], 8: [1, 1, 0, 0]}, tokens=10.0)  # 80 tokens at N=8
    adaptive = per_n({4: [1, 1, 0, 0], 8: [1, 1, 1, 0]}, tokens=6.0)  # 24 and 48 tokens
    (row,) = savings(
        {"majority": majority, "catts_adaptive (x)": adaptive, "catts_paper (x)": adaptive}, plan
    )
    assert row["method"] == "catts_adaptive (x)"
    assert (row["accuracy"], row["reference_accuracy"], row["difference"]) == (75.0, 50.0, 25.0)
    assert row["saved"] == pytest.approx(1 - 48 / 80) and row["saved_ci"] == pytest.approx([0.4, 0.4])
    # Adaptive reaches majority's 50% at N=4, with 24 tokens against 80.
    assert row["matching_n"] == 4 and row["matching_saved"] == pytest.approx(1 - 24 / 80)


def test_versus_majority_pairs_each_catts_row_with_majority_at_the_same_n() -> None:
    plan = Plan(n_boot=200)
    majority = per_n({1: [1, 0, 0, 0], 8: [1, 1, 0, 0]}, tokens=10.0)
    catts = per_n({1: [1, 0, 0, 0], 8: [1, 1, 1, 0]}, tokens=10.0)
    rows = versus_majority({"majority": majority, "catts_paper (x)": catts, "deepconf": catts}, plan, [1, 8])
    assert [(r["method"], r["n"]) for r in rows] == [("catts_paper (x)", 1), ("catts_paper (x)", 8)]
    at_one, at_eight = rows
    # Identical answers at N=1: a difference of 0 whatever the resample.
    assert (at_one["difference"], at_one["difference_ci"]) == (0.0, [0.0, 0.0])
    assert at_eight["accuracy"] == 75.0 and at_eight["reference_accuracy"] == 50.0
    assert at_eight["difference"] == 25.0
    # Only the third item differs (+100 points there): a resample's difference is 100 x its share.
    low, high = at_eight["difference_ci"]
    assert 0.0 <= low <= 25.0 <= high <= 100.0


def test_ablation_effects_are_the_full_method_minus_each_ablation_paired() -> None:
    plan = Plan(n_boot=200)
    cell = {"tokens": [1.0] * 4, "expert_calls": [1.0] * 4}
    cells = {
        "catts_paper": {"correct": [1, 1, 1, 0], **cell},
        "catts_paper-no_voter_boost": {"correct": [1, 1, 1, 0], **cell},
        "catts_paper-no_self_reflection": {"correct": [0, 0, 1, 0], **cell},
    }
    effects = ablation_effects(cells, plan, full="catts_paper")
    assert set(effects) == {"catts_paper-no_voter_boost", "catts_paper-no_self_reflection"}
    assert effects["catts_paper-no_voter_boost"] == {"difference": 0.0, "ci": [0.0, 0.0]}
    reflection = effects["catts_paper-no_self_reflection"]
    assert reflection["difference"] == 50.0  # two items of four fixed by the module
    assert 0.0 <= reflection["ci"][0] <= 50.0 <= reflection["ci"][1] <= 100.0


def test_module_answers_count_each_modules_own_answer_against_the_vote_by_hand(tmp_path: Path) -> None:
    from catts_graph.eval.store import ResultStore
    from catts_graph.task import Item

    def item(id: str, category: str, answer: str) -> Item:
        return Item(id, "synthetic", ["scene.png"], "How many?", None, answer, "integer", category)

    # Three items (gold '3', '4', '5'); each trace: the weighted votes, the Critic's criticised
    # answer, and what aggregate read: the reflected answer and the self-check's winner.
    items = [
        item("a", "count", "3"),
        item("b", "count", "4"),
        item("c", "digits", "5"),
    ]
    traces = {
        # leader 3 (right); criticised 2, reflected 3 (right); winner 2 (wrong); final right
        "a": ({"3": 5.0, "2": 1.0}, "2", "3", "2", True),
        # leader 5 (wrong); criticised 5, reflected 4 (right); no self-check winner; final wrong
        "b": ({"5": 3.0, "4": 2.0}, "5", "4", None, False),
        # leader 5 (right); no reflection; winner 5 (right); final right
        "c": ({"5": 4.0}, None, None, "5", True),
    }
    path = tmp_path / "results.sqlite"
    with ResultStore(path) as store:
        for it in items:
            votes, criticised, reflected, winner, correct = traces[it.id]
            trace = [
                {"module": "self_consistency", "inputs": {"votes": votes}},
                {"module": "aggregate", "inputs": {"reflected": reflected, "self_check_winner": winner}},
            ]
            if criticised is not None:
                trace.insert(1, {"module": "critic", "inputs": {"sample_answer": criticised}})
            for method, n in (("catts_paper", 8), ("catts_paper", 4), ("majority", 8)):
                store.put_result(
                    item_id=it.id, method=method, n=n, answer="x", gold=it.answer,
                    correct=correct if (method, n) == ("catts_paper", 8) else not correct,
                    confidence=1.0, category=it.category, tokens=1, expert_calls=1, seconds=0.0,
                    trace=trace,
                )  # fmt: skip
    result = module_answers(path, items, "catts_paper", 8)
    assert list(result["visual_self_check"]) == ["count", "digits", "all"]
    assert result["visual_self_check"]["count"] == {
        "runs": 1, "module_right": 0, "leader_right": 1, "final_right": 1, "criticised_right": None,
    }  # fmt: skip
    assert result["visual_self_check"]["all"] == {
        "runs": 2, "module_right": 1, "leader_right": 2, "final_right": 2, "criticised_right": None,
    }  # fmt: skip
    assert result["self_reflection"] == {
        "count": {"runs": 2, "module_right": 2, "leader_right": 1, "final_right": 1, "criticised_right": 0},
        "all": {"runs": 2, "module_right": 2, "leader_right": 1, "final_right": 1, "criticised_right": 0},
    }


def test_the_hard_regime_renders_after_the_mixed_tables() -> None:
    data = minimal_results()
    cell = {"accuracy": 60.0, "tokens": 100.0, "expert_calls": 1.0, "items": 10, "ci": [40.0, 80.0]}
    data["hard"] = {
        "plan": {**data["plan"], "level": 4},
        "thresholds": data["thresholds"],
        "scaling": data["scaling"],
        "slopes": data["slopes"],
        "savings": [],
        "versus": [
            {
                "method": "catts_paper (expert organism)",
                "n": 8,
                "accuracy": 87.0,
                "reference_accuracy": 80.0,
                "difference": 7.0,
                "difference_ci": [4.0, 10.0],
            }
        ],
        "ablations": {"catts_paper": cell, "catts_paper-no_self_reflection": cell},
        "ablation_effects": {"catts_paper-no_self_reflection": {"difference": 2.5, "ci": [0.5, 4.5]}},
        "reflection": {
            "items": 10,
            "criticised": 3,
            "accuracy_before": 0.6,
            "accuracy_after": 0.7,
            "accuracy_after_oracle": 0.8,
            "fixed": 2,
            "broken": 1,
            "accuracy_before_ci": [0.3, 0.9],
            "accuracy_after_ci": [0.4, 0.9],
            "accuracy_after_oracle_ci": [0.5, 1.0],
            "difference": 0.1,
            "difference_ci": [0.0, 0.2],
        },
        "step_repair": {
            "grid": [],
            "chosen": 0.9,
            "n": 8,
            "rows": {"adaptive": cell},
            "difference": 2.0,
            "difference_ci": [0.0, 4.0],
        },
        "module_answers": {
            "visual_self_check": {
                "all": {
                    "runs": 8,
                    "module_right": 3,
                    "leader_right": 6,
                    "final_right": 5,
                    "criticised_right": None,
                }
            }
        },
    }
    del data["ablations"]
    text = render_markdown(Results.from_json(data))
    mixed, hard = text.split("## The hard regime (generator level 4: the base organism unsure)")
    assert "Ablations" not in mixed and "Step repair" not in mixed
    assert "| catts_paper (expert organism) | 8 | 87.0 | 80.0 | 7.0 [4.0, 10.0] |" in hard
    assert "| catts_paper-no_self_reflection | 60.0 [40.0, 80.0] | 100 | 1.00 | 2.5 [0.5, 4.5] |" in hard
    assert "| catts_paper | 60.0 [40.0, 80.0] | 100 | 1.00 |  |" in hard
    assert "Step repair in the adaptive policy" in hard and "Self-reflection" in hard
    assert "| visual self-check (its winner) | all | 8 | 37.5 (3) |  | 75.0 (6) | 62.5 (5) |" in hard
    assert Results.from_json(json.loads(json.dumps(Results.from_json(data).to_json()))).hard is not None


def test_ratio_intervals_resample_items_jointly() -> None:
    def cells(clean: list[float], noised: list[float]) -> dict:
        row = lambda c: {"confidence": c, "nmlp": -math.log(c), "correct": True}  # noqa: E731
        return {
            ("clean", 0.0): {f"q{i}": row(c) for i, c in enumerate(clean)},
            ("gaussian", 1.0): {f"q{i}": row(c) for i, c in enumerate(noised)},
        }

    # Every item drops by 0.1 before and by 0.3 after: every resample has the ratio 3.
    before = cells([0.9, 0.8, 0.7], [0.8, 0.7, 0.6])
    after = cells([0.9, 0.8, 0.7], [0.6, 0.5, 0.4])
    ratios = [{"perturb": "gaussian", "level": 1.0, "confidence_ratio": 3.0, "nmlp_ratio": 0.0}]
    (entry,) = ratio_intervals(ratios, before, after, Plan(n_boot=100))
    assert entry["confidence_ratio_ci"] == pytest.approx([3.0, 3.0])
    low, high = entry["nmlp_ratio_ci"]
    assert 1.0 < low <= high  # NMLP rises further after: a ratio above 1 in every resample


def test_pooled_calibration_reads_every_probe_row(tmp_path: Path) -> None:
    from catts_graph.eval.store import ResultStore

    path = tmp_path / "probe.sqlite"
    with ResultStore(path) as store:
        for i, (level, correct, confidence) in enumerate(
            [(0.0, True, 0.9), (0.0, False, 0.6), (1.0, True, 0.8), (1.0, False, 0.7)]
        ):
            store.put_probe(
                item_id=f"q{i}",
                perturb="gaussian",
                level=level,
                answer="A",
                gold="A" if correct else "B",
                correct=correct,
                confidence=confidence,
                nmlp=0.1,
                category=None,
            )
    result = pooled_calibration(path)
    assert result["rows"] == 4
    assert result["clean_accuracy"] == 0.5
    # Right answers carry 0.9 and 0.8, wrong ones 0.6 and 0.7: every right one ranks above.
    assert result["auroc"] == 1.0
    # 15 bins, one row per bin: |0.9-1| + |0.6-0| + |0.8-1| + |0.7-0| over 4.
    assert result["ece"] == pytest.approx((0.1 + 0.6 + 0.2 + 0.7) / 4)


def minimal_results() -> dict:
    """A results.json with every required section, small."""
    kinds = {
        "all": {"accuracy": 0.6, "confidence": 0.9, "answer_confidence": 0.7, "n": 10, "ci": [0.3, 0.9]},
        "count": {"accuracy": 0.5, "confidence": 0.8, "answer_confidence": 0.6, "n": 5, "ci": [0.1, 0.9]},
    }
    rows = [probe_row("clean", 0.0, 0.0, 0.0), probe_row("gaussian", 1.0, -0.05, -0.1)]
    cell = {"accuracy": 60.0, "tokens": 100.0, "expert_calls": 1.0, "seconds": 0.1, "items": 10}
    plan = {
        "ablation_n": 8,
        "model_items": 10,
        "fresh_seed": 1,
        "probe_items": 10,
        "test_items": 10,
        "subsets": 4,
    }
    results = {
        "plan": plan,
        "models": {"base": {"parameters": 1_830_000, "clean": kinds, "noise": kinds, "fresh": kinds}},
        "probe": {"before": rows, "after": rows},
        "ratios": drop_ratios(rows, rows),
        "calibration": {
            "before": {"rows": 2, "ece": 0.1, "auroc": None, "clean_accuracy": 0.5},
            "after": {"rows": 2, "ece": 0.05, "auroc": 0.8, "clean_accuracy": 0.5},
        },
        "cdrl": {
            "steps": 60,
            "seconds": 300.0,
            "reward_means": {"accuracy": 0.5},
            "metric_means": {"cdrl/confidence_drop": -0.125},
        },
        "thresholds": {
            "grid": [{"fast_path_share": 0.8, "fast_path_confidence": 0.5, **cell}],
            "chosen": {"fast_path_share": 0.8, "fast_path_confidence": 0.5},
            "n": 8,
            "items": 10,
        },
        "scaling": {
            "self": {"majority": {"1": {**cell, "ci": [50.0, 70.0]}, "2": {**cell, "ci": [50.0, 70.0]}}}
        },
        "slopes": {"majority": {"slope": 0.0, "ci": [-1.0, 1.0], "ratio": 1.0, "ratio_ci": [1.0, 1.0]}},
        "savings": [],
        "ablations": {"catts_paper": {**cell, "ci": [40.0, 80.0]}},
    }
    return results


def test_the_markdown_report_shows_every_section() -> None:
    results = Results.from_json(minimal_results())
    text = render_markdown(results)
    for heading in (
        "The organisms",
        "Probe",
        "confidence-drop ratio",
        "calibration",
        "thresholds",
        "scaling",
        "Ablations",
    ):
        assert heading in text
    assert "| base | 1.83M | 0.600 [0.300, 0.900] | 0.600 [0.300, 0.900] | 0.900 | 0.700 |" in text
    assert "| base | 0.50 [0.10, 0.90]; 0.60 |" in text  # per kind: accuracy [interval]; answer confidence
    assert (
        "| majority | 60.0 [50.0, 70.0] | 60.0 [50.0, 70.0] | 0.00 [-1.00, 1.00] | 1.00 [1.00, 1.00] |"
        in text
    )
    assert "| catts_paper | 60.0 [40.0, 80.0] | 100 | 1.00 |" in text
    assert "| base | 0.500 | n/a | 0.100 | n/a | 2 |" in text  # a missing clean NMLP, AUROC read n/a
    assert "Chosen: fast_path_share = 0.8, fast_path_confidence = 0.5" in text
    assert "Logged during training (means over steps): cdrl/confidence_drop -0.125" in text
    assert "\n".join(cdrl_section(results)) in text  # `catts measure cdrl` prints the same tables
    assert "MMBoundary" not in text and "Step repair" not in text  # an older run without these steps


def test_the_quick_plan_is_small_everywhere() -> None:
    quick, full = Plan.quick(), Plan()
    assert quick.test_items < 10 and quick.cdrl_steps == 1 and max(quick.ns) <= 2
    assert full.ns == (1, 2, 4, 8, 16, 32) and full.cdrl_steps is None


def _step(item: str, expressed: int | None, internal: int, fused: float, correct: bool) -> dict:
    return {
        "item": item,
        "is_answer": False,
        "expressed": expressed,
        "internal": internal,
        "fused": fused,
        "correct": correct,
    }


def test_mmboundary_intervals_resample_whole_items() -> None:
    from catts_graph.metrics import auroc, expected_calibration_error

    confidence = [0.1, 0.3, 0.5, 0.7, 0.9]
    figures = {
        "answer_accuracy": 1.0,
        "expressed_ece": 0.0,
        "expressed_auroc": 1.0,
        "level_confidence": confidence,
    }
    # Every item alike: each resample is the sample itself, so each interval is the point value.
    rows = [r for k in range(6) for r in (_step(f"i{k}", 5, 5, 0.9, True), _step(f"i{k}", 1, 1, 0.1, False))]
    answers = {f"i{k}": True for k in range(6)}
    plan = Plan(n_boot=200)
    same = probe_intervals(rows, answers, {**figures, "internal_ece": 0.0}, plan)
    ece = expected_calibration_error([0.9, 0.1], [True, False])
    assert same["answer_accuracy"] == [1.0, 1.0]
    assert same["expressed_ece"] == pytest.approx([ece, ece]) and same["internal_ece"] == pytest.approx(
        [ece, ece]
    )
    assert same["expressed_auroc"] == [1.0, 1.0]
    assert "internal_auroc" not in same  # no figure, no interval
    # Mixed items: the intervals bracket the whole-sample values.
    rows = [
        _step("a", 5, 4, 0.8, True),
        _step("a", 2, 2, 0.3, False),
        _step("b", 4, 4, 0.7, False),
        _step("c", 1, 1, 0.2, True),
        _step("c", 3, 5, 0.9, True),
        _step("d", None, 2, 0.4, False),
    ]
    answers = {"a": True, "b": False, "c": True, "d": False}
    parsed = [r for r in rows if r["expressed"] is not None]
    point = {
        "answer_accuracy": 0.5,
        "expressed_ece": expected_calibration_error(
            [confidence[r["expressed"] - 1] for r in parsed], [r["correct"] for r in parsed]
        ),
        "expressed_auroc": auroc([r["expressed"] for r in parsed], [r["correct"] for r in parsed]),
        "internal_auroc": auroc([r["fused"] for r in rows], [r["correct"] for r in rows]),
        "level_confidence": confidence,
    }
    spread = probe_intervals(rows, answers, point, Plan(n_boot=500))
    for name in ("answer_accuracy", "expressed_ece", "expressed_auroc", "internal_auroc"):
        low, high = spread[name]
        assert low <= point[name] <= high and low < high, name


def test_paired_accuracy_against_the_base_by_hand() -> None:
    base = {"a": True, "b": True, "c": False, "d": True}
    model = {"a": True, "b": False, "c": True, "d": False}  # one fixed, two broken: -1/4
    paired = paired_accuracy(model, base, Plan(n_boot=200))
    assert paired["difference"] == -25.0
    assert (paired["fixed"], paired["broken"]) == (1, 2)
    low, high = paired["ci"]
    assert -100.0 <= low <= -25.0 <= high <= 50.0
    assert paired_accuracy(base, base, Plan(n_boot=50))["ci"] == [0.0, 0.0]
    with pytest.raises(ValueError, match="different items"):
        paired_accuracy({"a": True}, base, Plan(n_boot=50))


def test_the_mmboundary_section_shows_signals_and_each_stage() -> None:
    figures = {
        "answer_accuracy": 0.9,
        "step_accuracy": 0.95,
        "parsed_share": 1.0,
        "statement_steps": 10,
        "expressed_entropy": 1.2,
        "expressed_counts": [1, 2, 3, 4, 0],
        "expressed_ece": 0.1,
        "expressed_auroc": 0.7,
        "internal_ece": 0.02,
        "internal_auroc": 0.95,
        "intervals": {"answer_accuracy": [0.85, 0.95]},
        "items": 10,
        "steps": 12,
        "level_gap": 0.5,
        "labelled_steps": 10,
    }
    base = {**figures, "parsed_share": 0.0, "expressed_counts": [0, 0, 0, 0, 0], "expressed_ece": None}
    results = {
        **minimal_results(),
        "step_signals": {
            "signals": {"probability": {"ece": 0.05, "auroc": 0.9}},
            "fused": {"ece": 0.02, "auroc": 0.95},
            "fused_without_clip": {"ece": 0.03, "auroc": 0.94},
            "calibrator": {"weights": {"probability": 1.0}},
            "steps": {"validation": 20, "test": 30},
            "step_accuracy": 0.9,
        },
        "mmboundary": {
            "data": {"examples": 40},
            "pretrain": {"steps": 800, "seconds": 600.4, "level_counts": [5, 4, 3, 2, 1]},
            "sft": {"steps": 200, "seconds": 60.0},
            "rl": {"steps": 100, "seconds": 240.0},
            "probe": {
                "base": base,
                "pretrained": {**figures, "answer_accuracy": 0.8},
                "sft": figures,
                "rl": {
                    **figures,
                    "accuracy_vs_base": {"difference": -1.25, "ci": [-3.0, 0.5], "fixed": 1, "broken": 2},
                },
            },
        },
        "step_repair": {
            "grid": [
                {
                    "step_floor": floor,
                    "accuracy": accuracy,
                    "tokens": 1.0,
                    "expert_calls": 0.0,
                    "seconds": 1.0,
                    "items": 9,
                }
                for floor, accuracy in ((None, 90.0), (0.8, 91.0))
            ],
            "chosen": 0.8,
            "n": 8,
            "rows": {
                "adaptive": {
                    "accuracy": 90.0,
                    "ci": [88.0, 92.0],
                    "tokens": 300.0,
                    "expert_calls": 0.1,
                    "items": 9,
                },
                "adaptive + step_repair": {
                    "accuracy": 91.0,
                    "ci": [89.0, 93.0],
                    "tokens": 320.0,
                    "expert_calls": 0.1,
                    "items": 9,
                },
            },
            "difference": 1.0,
            "difference_ci": [-0.5, 2.5],
            "repair_difference": 0.5,
            "repair_difference_ci": [-0.2, 1.2],
        },
    }
    text = render_markdown(Results.from_json(results))
    assert "| adaptive + step_repair | 91.0 [89.0, 93.0] | 320 | 0.10 |" in text
    assert (
        "(accuracy by floor: off 90.0, 0.80 91.0); step_repair minus adaptive: 1.0 [-0.5, 2.5] points" in text
    )
    assert "| probability | 0.050 | 0.900 |" in text
    assert "| fused (probability 1.00) | 0.020 | 0.950 |" in text
    assert "| fused without clipscore | 0.030 | 0.940 |" in text
    assert "| base organism | 0.900 [0.850, 0.950] | n/a | 0.950 | n/a | n/a | n/a | n/a |" in text
    assert (
        "| + SFT + RL | 0.900 [0.850, 0.950] | -1.2 [-3.0, 0.5] | 0.950 | 1.000 | 1.200 | 1 / 2 / 3 / 4 / 0 "
        "| 0.100 | 0.700 |" in text
    )
    assert "| + statement pre-training | 0.800 [0.850, 0.950] |" in text
    assert text.index("| base organism") < text.index("| + statement pre-training") < text.index("| + SFT |")
    assert (
        "statement pre-training 800 steps (600 s, levels 1..5 stated 5 / 4 / 3 / 2 / 1), 40 stated "
        "replies; SFT 200 steps (60 s), RL 100 steps (240 s)" in text
    )


def test_a_run_is_resumed_only_under_its_own_plan(tmp_path: Path) -> None:
    import dataclasses

    plan = Plan.quick()
    check_plan(tmp_path, plan)
    check_plan(tmp_path, plan)  # the same plan resumes
    stored = json.loads((tmp_path / "plan.json").read_text())
    # A run started before a field was added to Plan: the field reads as its default there.
    del stored["mmboundary_pretrain_steps"]
    (tmp_path / "plan.json").write_text(json.dumps(stored))
    check_plan(tmp_path, dataclasses.replace(plan, mmboundary_pretrain_steps=None))
    with pytest.raises(ValueError, match=r"differs in \['mmboundary_pretrain_steps'\]"):
        check_plan(tmp_path, plan)  # quick() sets it to 1, not the default
    with pytest.raises(ValueError, match=r"differs in \['test_items'\]"):
        check_plan(tmp_path, dataclasses.replace(plan, mmboundary_pretrain_steps=None, test_items=4))


def test_the_plan_s_training_configs_are_found_beside_the_training_package(tmp_path: Path) -> None:
    """In a source checkout, ``training/configs/NAME`` is the checkout's file whatever the working
    directory (the wheel install is checked in test_packaging); other paths are read as given."""
    assert training_config(CDRL_CONFIG) == ROOT / "training" / "configs" / "organism_cdrl.yaml"
    assert training_config(MMBOUNDARY_CONFIG) == ROOT / "training" / "configs" / "mmboundary_organism.yaml"
    assert training_config(tmp_path / "mine.yaml") == tmp_path / "mine.yaml"
    assert training_config("configs/mine.yaml") == Path("configs/mine.yaml")
    with pytest.raises(FileNotFoundError, match=r"training/configs/nope.yaml: not among the configs"):
        training_config("training/configs/nope.yaml")


def test_the_shipped_cdrl_organism_stands_in_only_for_the_run_that_trains_it(tmp_path: Path) -> None:
    """The CDRL step places the shipped organism when its record names the plan's CDRL config and the
    shipped base's weights; any other config, a step override or ``cdrl_shipped=False`` trains."""
    import dataclasses

    import yaml

    from catts_experiments.reproduce.results import CDRLRun
    from catts_experiments.reproduce.training import shipped_cdrl, step_cdrl
    from catts_graph.organism import organism_path

    plan = Plan()
    shipped = organism_path("base-cdrl")
    assert shipped_cdrl(plan) == shipped
    assert shipped_cdrl(dataclasses.replace(plan, cdrl_shipped=False)) is None
    assert shipped_cdrl(dataclasses.replace(plan, cdrl_steps=240)) is None
    config = yaml.safe_load(training_config(CDRL_CONFIG).read_text())
    config["confidence_loss"]["clean_kl"] = 0.5
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(config))
    assert shipped_cdrl(dataclasses.replace(plan, cdrl_config=str(other))) is None

    summary = step_cdrl(tmp_path / "run", plan)  # placed: no training process runs
    placed = tmp_path / "run" / "cdrl"
    for name in ("model.safetensors", "tokenizer.json", "catts.json", "organism.json"):
        assert (placed / name).read_bytes() == (shipped / name).read_bytes()
    record = json.loads((shipped / "organism.json").read_text())
    run = CDRLRun.from_json(summary)
    assert (run.shipped_from, run.steps, run.output_dir) == ("base-cdrl", 240, str(placed))
    assert run.reward_means == record["training"]["reward_means"]
    assert step_cdrl(tmp_path / "run", plan) == summary  # resumed: read back, not placed again


DOCS = ROOT / "docs" / "organism"


def test_the_committed_results_render_from_their_json_byte_for_byte() -> None:
    """docs/organism/results.md and cdrl.md are what the renderer writes from the stored results.json
    and cdrl.json (docs/organism.md and docs/mechanics.md quote them, tests/test_docs.py)."""
    results = Results.from_json(json.loads((DOCS / "results.json").read_text()))
    assert render_markdown(results) == (DOCS / "results.md").read_text()
    effect = CDRLEffect.from_json(json.loads((DOCS / "cdrl.json").read_text()))
    assert "\n".join(cdrl_section(effect)) + "\n" == (DOCS / "cdrl.md").read_text()


@pytest.mark.parametrize("name", ["results", "cdrl"])
def test_the_stored_results_round_trip(name: str) -> None:
    """Every stored field is read (a typed result keeps it), and what is written reads back the same."""
    stored = json.loads((DOCS / f"{name}.json").read_text())
    kind = Results if name == "results" else CDRLEffect
    written = kind.from_json(stored).to_json()
    _assert_holds(written, stored)
    assert kind.from_json(written).to_json() == written


def _assert_holds(full: object, part: object, path: str = "") -> None:
    """``full`` holds every key and value of ``part`` (and may hold fields added since)."""
    if isinstance(part, dict):
        assert isinstance(full, dict), path
        for key, value in part.items():
            assert key in full, f"{path}.{key} dropped"
            _assert_holds(full[key], value, f"{path}.{key}")
    elif isinstance(part, list):
        assert isinstance(full, list) and len(full) == len(part), path
        for i, (a, b) in enumerate(zip(full, part, strict=True)):
            _assert_holds(a, b, f"{path}[{i}]")
    else:
        assert full == part, f"{path}: {full!r} != {part!r}"


def test_a_result_of_another_shape_fails_on_load_at_its_field() -> None:
    stored = minimal_results()
    del stored["thresholds"]["chosen"]
    with pytest.raises(ValueError, match="thresholds.chosen"):
        Results.from_json(stored)
