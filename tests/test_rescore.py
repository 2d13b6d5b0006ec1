"""Re-scoring stored traces under another aggregate rule (catts_experiments.rescore)."""

from __future__ import annotations

from types import SimpleNamespace

from catts_experiments.rescore import aggregate_inputs, rescore, rescore_rows


def trace(voter: str, *, boosted: bool, winner: str | None = "A") -> list[dict]:
    return [
        {"module": "self_consistency", "decision": "", "inputs": {"votes": {"A": 3.0, "B": 1.0}}},
        {"module": "voter", "decision": voter, "inputs": {"candidates": ["A", "B"]}},
        {"module": "critic", "decision": "", "inputs": {"sample_answer": "A", "verdict": "incorrect"}},
        {
            "module": "aggregate",
            "decision": "",
            "inputs": {"reflected": "C", "reflection_boosted": boosted, "self_check_winner": winner},
        },
    ]


def test_the_inputs_are_read_back_from_the_trace_quotes_and_all() -> None:
    inputs = aggregate_inputs(trace("p = 'A': 0.000, \"B's\": 1.000", boosted=True))
    assert inputs == {
        "votes": {"A": 3.0, "B": 1.0},
        "voter_probs": {"A": 0.0, "B's": 1.0},
        "criticised": "A",
        "reflected": "C",
        "boosted": True,
        "self_check_winner": "A",
    }
    assert aggregate_inputs([{"module": "aggregate", "inputs": {}}]) is None  # no vote taken


def test_rescore_follows_the_hand_computed_scores() -> None:
    sure = aggregate_inputs(trace("p = 'A': 0.000, 'B': 1.000", boosted=False))
    # tau1 = 0.5: A 0.75 + 0.5 (self-check) = 1.25 against B 0.25 + 0.5; tau1 = 2: B 2.25.
    assert rescore(sure, tau1=0.5) == "A" and rescore(sure, tau1=2.0) == "B"
    hedging = aggregate_inputs(trace("p = 'A': 0.450, 'B': 0.550", boosted=True))
    # A leads (0.75 + 0.9 + 0.5) and is the criticised answer: the override hands C the lead.
    assert rescore(hedging, tau1=2.0) == "C" and rescore(hedging, tau1=2.0, override=False) == "A"


def stored(item_id: str, n: int, answer: str, voter: str, *, boosted: bool) -> dict:
    """A stored wrong answer's row, its trace as :func:`trace` writes it."""
    return {
        "item_id": item_id,
        "n": n,
        "answer": answer,
        "correct": False,
        "trace": trace(voter, boosted=boosted),
    }


def test_the_counts_per_n_name_what_the_other_rule_changes() -> None:
    items = {"i0": SimpleNamespace(answer="A", metadata={}, answer_type="text", precision=None)}
    rows = [
        # Stored under the override: C (wrong). Without it: A (right): one answer changed, fixed.
        stored("i0", 2, "C", "p = 'A': 0.450, 'B': 0.550", boosted=True),
        # A stored answer the run's rule does not give back counts as not reproduced.
        stored("i0", 4, "B", "p = 'A': 1.000, 'B': 0.000", boosted=False),
        {"item_id": "i0", "n": 1, "answer": "A", "correct": True, "trace": []},  # no vote: skipped
    ]
    counts = rescore_rows(rows, items, run={"tau1": 2.0}, other={"tau1": 2.0, "override": False})
    assert counts == {
        # The Voter's most probable answer: B at N = 2 (wrong), A at N = 4 (right).
        2: {"rows": 1, "reproduced": 1, "changed": 1, "fixed": 1, "broken": 0, "voter": 1, "voter_right": 0},
        4: {"rows": 1, "reproduced": 0, "changed": 1, "fixed": 1, "broken": 0, "voter": 1, "voter_right": 1},
    }


def test_each_modules_part_removed_per_n_with_hand_computed_answers() -> None:
    from catts_experiments.rescore import ABLATED, ablation_rows

    gold_a = SimpleNamespace(answer="A", metadata={}, answer_type="text", precision=None)
    items = {"i0": gold_a, "i1": gold_a}
    rows = [
        # Votes A 3, B 1 (shares 0.75, 0.25), tau1 = 2, tau3 = 0.5 on A. i0: A 0.75 + 0.9 + 0.5 leads
        # and is criticised: the override hands C the lead (wrong). Without the Voter A still leads
        # (1.25): C. Without the reflection: A (right). Without the self-check A 1.65 > B 1.35: C.
        stored("i0", 2, "C", "p = 'A': 0.450, 'B': 0.550", boosted=True),
        # i1: a sure Voter on B: B 2.25 against A 1.25 (wrong). Without the Voter A (right); without
        # the reflection (not boosted) B; without the self-check B.
        stored("i1", 2, "B", "p = 'A': 0.000, 'B': 1.000", boosted=False),
        {"item_id": "i0", "n": 1, "answer": "A", "correct": True, "trace": []},  # no vote: skipped
    ]
    check = {"no_voter_boost": {"i0": {"n": 2, "answer": "C"}, "i1": {"n": 2, "answer": "B"}}}
    table = ablation_rows(rows, items, run={"tau1": 2.0}, n_boot=50, check=check)
    assert list(table) == [2] and table[2]["rows"] == 2 and table[2]["reproduced"] == 2
    voter, reflection, check_ = (table[2][module] for module in ABLATED)
    assert (voter["difference"], voter["fixed"], voter["broken"]) == (-50.0, 0, 1)
    assert (reflection["difference"], reflection["fixed"], reflection["broken"]) == (-50.0, 0, 1)
    assert (check_["difference"], check_["fixed"], check_["broken"], check_["ci"]) == (0.0, 0, 0, [0.0, 0.0])
    assert (voter["agree"], voter["checked"]) == (1, 2)  # i1 re-scored A, the stored ablated run B
    assert "agree" not in reflection
