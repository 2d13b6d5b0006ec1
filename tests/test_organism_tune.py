"""Choosing DeepConf's window and checking nmlp_floor on replayed samples (tune_voting)."""

from __future__ import annotations

import json

import pytest

from catts_graph.organism.tune import FLOORS, WINDOWS, tune_voting, voting_table
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


def _row(margin: float, lr: float, before: float, after: float, ratio: float) -> dict:
    return {
        "sensitivity_margin": margin,
        "learning_rate": lr,
        "clean_before": before,
        "clean_after": after,
        "pooled_ratio": ratio,
    }


def test_cdrl_choice_takes_the_highest_ratio_that_keeps_clean_accuracy():
    from catts_graph.organism.tune import cdrl_choice

    rows = [
        _row(0.1, 1e-4, 0.90, 0.85, 3.0),  # the best ratio, but loses 5 points: not eligible
        _row(0.25, 1e-4, 0.90, 0.88, 1.5),  # loses exactly 2 points: eligible
        _row(1.0, 2e-5, 0.90, 0.91, 1.2),
    ]
    assert cdrl_choice(rows) is rows[1]
    # Equal ratios: the smaller learning rate, then the smaller margin.
    tied = [_row(0.25, 1e-4, 0.9, 0.9, 1.5), _row(1.0, 2e-5, 0.9, 0.9, 1.5), _row(0.1, 2e-5, 0.9, 0.9, 1.5)]
    assert cdrl_choice(tied) is tied[2]
    assert cdrl_choice([_row(0.1, 1e-4, 0.9, 0.5, 9.0)]) is None


def test_the_cdrl_tuning_table_names_every_setting_and_the_choice():
    from catts_graph.organism.tune import cdrl_tuning_table

    row = {
        **_row(0.25, 1e-4, 0.9, 0.88, 1.5),
        "ece_before": 0.1,
        "ece_after": 0.05,
        "auroc_before": 0.6,
        "auroc_after": 0.7,
        "ratios": {"gaussian 1": 2.0, "occlusion 1": 1.0},
    }
    table = cdrl_tuning_table(
        {
            "items": 10,
            "steps": 5,
            "rows": [row],
            "chosen": {"sensitivity_margin": 0.25, "learning_rate": 1e-4},
        }
    )
    assert (
        "| 0.25 | 0.0001 | 0.900 -> 0.880 | 0.100 -> 0.050 | 0.600 -> 0.700 | 2.000 | 1.000 | 1.500 |"
        in table
    )
    assert "margin 0.25, learning rate 0.0001." in table
