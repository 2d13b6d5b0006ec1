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
