"""The organism reproduction's arithmetic and report, by hand (the full run is in test_organism)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from catts_graph.organism.reproduce import (
    Plan,
    cdrl_section,
    drop_ratios,
    pooled_calibration,
    render_markdown,
    slopes,
)


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


def test_slopes_are_points_per_doubling() -> None:
    table = {
        "a": {1: {"accuracy": 30.0}, 2: {"accuracy": 33.65}, 4: {"accuracy": 37.3}},
        "b": {8: {"accuracy": 50.0}},
    }
    result = slopes(table)
    assert result["a"] == pytest.approx(3.65)
    assert result["b"] != result["b"]  # NaN: one N has no slope


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


def test_the_markdown_report_shows_every_section() -> None:
    kinds = {
        "all": {"accuracy": 0.6, "confidence": 0.9, "n": 10},
        "count": {"accuracy": 0.5, "confidence": 0.8, "n": 5},
    }
    rows = [probe_row("clean", 0.0, 0.0, 0.0), probe_row("gaussian", 1.0, -0.05, -0.1)]
    cell = {"accuracy": 60.0, "tokens": 100.0, "expert_calls": 1.0, "seconds": 0.1, "items": 10}
    results = {
        "plan": {"ablation_n": 8},
        "models": {"base": {"parameters": 1_830_000, "clean": kinds, "noise": kinds}},
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
        "scaling": {"self": {"majority": {"1": cell, "2": cell}}},
        "slopes": {"self": {"majority": 0.0}},
        "ablations": {"catts_paper": cell},
    }
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
    assert "| base | 1.83M | 0.600 | 0.500 | 0.900 | 0.600 | 0.900 |" in text
    assert "| majority | 60.0 | 60.0 | 0.00 |" in text
    assert "| base | 0.500 | 0.100 | n/a | 2 |" in text  # a missing AUROC reads n/a
    assert "Chosen: fast_path_share = 0.8, fast_path_confidence = 0.5" in text
    assert "Logged during training (means over steps): cdrl/confidence_drop -0.125" in text
    assert "\n".join(cdrl_section(results)) in text  # `catts organism cdrl` prints the same tables


def test_the_quick_plan_is_small_everywhere() -> None:
    quick, full = Plan.quick(), Plan()
    assert quick.test_items < 10 and quick.cdrl_steps == 1 and max(quick.ns) <= 2
    assert full.ns == (1, 2, 4, 8, 16, 32) and full.cdrl_steps is None
