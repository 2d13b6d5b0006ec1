"""Choosing DeepConf's window and checking nmlp_floor on replayed samples (tune_voting)."""

from __future__ import annotations

import json

import pytest

from catts_experiments.tune import FLOORS, WINDOWS, tune_voting, voting_table
from catts_graph.testing import Reply, ScriptCall, ScriptedVLM


def script(call: ScriptCall) -> list[Reply]:
    # Two answers; the wrong one is confident only at its start, so short windows can tell them apart.
    text = "a b c d e f g h \\boxed{%s}"
    right = Reply(text % 4, -0.1)
    wrong = Reply(text % 5, [-0.01] * 4 + [-3.0] * 8 + [-0.01] * 5)
    return [right if i % 3 else wrong for i in range(call.n)]


@pytest.fixture(scope="module")
def result():
    return tune_voting(ScriptedVLM(script), validation=2, test=2, n=6)


def test_every_window_and_floor_is_reported_and_the_choice_is_a_window(result):
    assert list(result["validation"]["window"]) == [str(w) for w in WINDOWS]
    assert result["chosen_window"] in WINDOWS
    assert set(result["test"]["window"]) == {str(result["chosen_window"]), "2048"}
    json.dumps(result, sort_keys=True)
    assert len(result["validation"]["floor"]) == len(FLOORS)
    table = voting_table(result)
    assert "Chosen window (validation)" in table and "nmlp_floor" in table


def test_a_window_longer_than_the_trace_makes_every_weighting_the_mean(result):
    row = result["validation"]["window"]["2048"]
    assert row["mean"] == row["tail"] == row["bottom_percent"] == row["lowest_group"]
    assert row["online_tokens_saved"][0] == 0.0  # a single group is only known at the end


def test_online_saves_tokens_with_a_short_window(result):
    assert result["validation"]["window"]["4"]["online_tokens_saved"][0] > 0.0


def _row(variant: str, before: float, after: float, goal: float) -> dict:
    return {"variant": variant, "clean_before": before, "clean_after": after, "goal_ratio": goal}


def test_cdrl_choice_takes_the_highest_smallest_goal_ratio_that_keeps_clean_accuracy():
    from catts_experiments.tune import cdrl_choice

    rows = [
        _row("a", 0.90, 0.85, 3.0),  # the best ratio, but loses 5 points: not eligible
        _row("b", 0.90, 0.88, 1.5),  # loses exactly 2 points: eligible
        _row("c", 0.90, 0.91, 1.2),
        _row("d", 0.90, 0.91, float("nan")),  # no drop before in some cell: never chosen over a number
    ]
    assert cdrl_choice(rows) is rows[1]
    tied = [_row("x", 0.9, 0.9, 1.5), _row("y", 0.9, 0.9, 1.5)]
    assert cdrl_choice(tied) is tied[0]  # ties: the first listed
    assert cdrl_choice([_row("z", 0.9, 0.5, 9.0)]) is None


def test_cdrl_row_reads_nmlp_ratios_and_the_goal_cells():
    from catts_experiments.tune import cdrl_row

    def cell(perturb: str, level: float, ratio: float) -> dict:
        return {
            "perturb": perturb,
            "level": level,
            "nmlp_ratio": ratio,
            "nmlp_ratio_ci": [ratio - 0.5, ratio + 0.5],
            "nmlp_drop_before": -0.1,
            "nmlp_drop_after": -0.1 * ratio,
            "confidence_ratio": ratio / 2,
        }

    side = {"clean_accuracy": 0.9, "clean_nmlp": 0.02, "ece": 0.3, "auroc": 0.8}
    row = cdrl_row(
        "v",
        {
            "cdrl": {"seconds": 12.0},
            "ratios": [cell("gaussian", 0.5, 2.5), cell("occlusion", 1.0, 1.7), cell("blur", 1.0, 0.4)],
            "calibration": {"before": side, "after": {**side, "clean_nmlp": 0.03}},
        },
    )
    assert row["goal_ratio"] == 1.7  # the blur cell (an unseen kind) is reported, not chosen on
    assert row["clean_nmlp_before"] == 0.02 and row["clean_nmlp_after"] == 0.03
    assert row["cells"]["blur 1"]["nmlp_ratio"] == 0.4


def test_the_cdrl_tuning_table_names_every_variant_and_the_choice():
    from catts_experiments.tune import cdrl_tuning_table

    row = {
        **_row("entropy+mix", 0.9, 0.88, 1.5),
        "clean_nmlp_before": 0.02,
        "clean_nmlp_after": 0.025,
        "ece_before": 0.1,
        "ece_after": 0.05,
        "auroc_before": 0.6,
        "auroc_after": 0.7,
        "seconds": 61.0,
        "cells": {
            "gaussian 1": {"nmlp_ratio": 2.0, "nmlp_ratio_ci": [1.5, 2.5], "nmlp_drop_before": -0.07},
            "occlusion 1": {"nmlp_ratio": 1.0, "nmlp_ratio_ci": None, "nmlp_drop_before": -0.4},
        },
    }
    table = cdrl_tuning_table(
        {"items": 10, "split": "validation", "seed": 0, "steps": 5, "rows": [row], "chosen": "entropy+mix"}
    )
    assert "| entropy+mix (chosen) | 2.00 [1.50, 2.50] | 1.00 |" in table
    assert "| entropy+mix | 0.900 -> 0.880 | 0.020 -> 0.025 | 0.100 -> 0.050 | 0.600 -> 0.700 | 61 |" in table
    assert "gaussian 1 -0.070, occlusion 1 -0.400" in table
    assert "within 2 points): entropy+mix." in table
