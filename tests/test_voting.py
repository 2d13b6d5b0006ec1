"""Voting and final scores against hand-computed values."""

import pytest

from catts_graph.voting import (
    final_scores,
    majority_vote,
    nmlp_weights,
    pick_answer,
    top_eta_mask,
    vote_shares,
    weighted_vote,
)


def test_majority_vote():
    votes = majority_vote(["a", "b", None, "a"])
    assert votes == {"a": 2.0, "b": 1.0}
    assert list(votes) == ["a", "b"]  # first-seen order
    assert majority_vote([]) == {}
    assert majority_vote([None, None]) == {}


def test_weighted_vote():
    # a: 0.5 + 0.25 = 0.75; b: 2.0; the None sample's 9.0 never votes
    votes = weighted_vote(["a", "b", None, "a"], [0.5, 2.0, 9.0, 0.25])
    assert votes == {"a": 0.75, "b": 2.0}


@pytest.mark.parametrize(
    ("weights", "message"),
    [([1.0], "same length"), ([1.0, -1.0], r"weights\[1\]"), ([float("nan"), 1.0], r"weights\[0\]")],
)
def test_weighted_vote_errors(weights, message):
    with pytest.raises(ValueError, match=message):
        weighted_vote(["a", "b"], weights)


def test_nmlp_weights():
    # 1 / (0.5 + 1e-8) ~ 2; 1 / (0.25 + 1e-8) ~ 4
    assert nmlp_weights([0.5, 0.25]) == pytest.approx([2.0, 4.0], rel=1e-7)
    # eps = 0.5: 1 / (0.5 + 0.5) = 1; 1 / (0.25 + 0.5) = 4/3
    assert nmlp_weights([0.5, 0.25], eps=0.5) == pytest.approx([1.0, 4.0 / 3.0])
    # NMLP 0 (and a rounding-negative one) gives 1 / 1e-8
    assert nmlp_weights([0.0, -1e-12]) == pytest.approx([1e8, 1e8])
    with pytest.raises(ValueError, match=r"nmlps\[1\]"):
        nmlp_weights([0.1, float("nan")])
    with pytest.raises(ValueError, match="eps"):
        nmlp_weights([0.1], eps=0.0)


def test_nmlp_floor_bounds_a_near_certain_sample():
    """One sample at NMLP 0.01 against seven at 0.30 (issue 12)."""
    nmlps = [0.01] + [0.30] * 7
    answers = ["a"] + ["b"] * 7
    # The paper's weight: a gets 1 / (0.01 + 1e-8) ~ 100; b gets 7 / (0.30 + 1e-8) ~ 23.33. a wins.
    paper = weighted_vote(answers, nmlp_weights(nmlps))
    assert paper == pytest.approx({"a": 100.0, "b": 70.0 / 3.0}, rel=1e-6)
    # Floor 0.1: a gets 1 / max(0.01, 0.1) = 10; b still 7 / 0.30 = 23.33. b wins.
    floored = weighted_vote(answers, nmlp_weights(nmlps, floor=0.1))
    assert floored == pytest.approx({"a": 10.0, "b": 70.0 / 3.0})
    # A floor replaces eps: NMLP 0 weighs 1 / floor, and an NMLP above the floor is untouched.
    assert nmlp_weights([0.0, 0.5], floor=0.25) == pytest.approx([4.0, 2.0])
    for bad in (0.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="floor must be finite and > 0"):
            nmlp_weights([0.1], floor=bad)


def test_top_eta_mask():
    conf = [0.1, 0.9, 0.5, 0.3, 0.7]
    # sorted [0.1, 0.3, 0.5, 0.7, 0.9]; q = 0.5 sits at position 0.5 * 4 = 2 -> 0.5
    assert top_eta_mask(conf, eta=0.5) == [False, True, True, False, True]
    # q = 0.9 at position 3.6 -> 0.7 + 0.6 * (0.9 - 0.7) = 0.82: only 0.9
    assert top_eta_mask(conf) == [False, True, False, False, False]
    # q = 0 is the minimum: all kept
    assert top_eta_mask(conf, eta=1.0) == [True] * 5
    assert top_eta_mask([1.0, 1.0, 1.0]) == [True] * 3
    assert top_eta_mask([0.3]) == [True]


@pytest.mark.parametrize(
    ("conf", "eta", "message"),
    [
        ([0.1], 0.0, "eta"),
        ([0.1], 1.5, "eta"),
        ([], 0.1, "confidences"),
        ([0.1, float("nan")], 0.1, "confidences"),
    ],
)
def test_top_eta_mask_errors(conf, eta, message):
    with pytest.raises(ValueError, match=message):
        top_eta_mask(conf, eta=eta)


VOTES = {"a": 3.0, "b": 1.0}
VOTER = {"a": 0.2, "b": 0.8}


def test_final_scores_normalised():
    scores = final_scores(VOTES, voter_probs=VOTER, reflected="b", self_check_winner="c")
    # a: 3/4 + 0.5 * 0.2 = 0.85
    # b: 1/4 + 0.5 * 0.8 + 0.5 = 1.15
    # c: new, only its self-check boost: 0.5
    assert scores == pytest.approx({"a": 0.85, "b": 1.15, "c": 0.5})
    assert list(scores) == ["a", "b", "c"]
    assert final_scores(VOTES) == pytest.approx({"a": 0.75, "b": 0.25})
    assert final_scores({}) == {}


def test_final_scores_literal():
    scores = final_scores(
        VOTES, voter_probs=VOTER, reflected="b", self_check_winner="c", scale="literal", n_samples=5
    )
    # boosts int(0.5 * 5) = 2. a: 3 + 2 * 0.2 = 3.4; b: 1 + 2 * 0.8 + 2 = 4.6; c: 2
    assert scores == pytest.approx({"a": 3.4, "b": 4.6, "c": 2.0})
    # int(0.3 * 5) = int(1.5) = 1
    assert final_scores(VOTES, reflected="a", tau2=0.3, scale="literal", n_samples=5) == {
        "a": 4.0,
        "b": 1.0,
    }


def test_final_scores_candidates():
    # a voter-only answer is a candidate after the vote keys: z = 0.5 * 0.5 = 0.25
    assert final_scores({"a": 1.0}, voter_probs={"a": 0.5, "z": 0.5}) == {"a": 1.25, "z": 0.25}
    # all votes zero: the vote term is 0, boosts still count
    assert final_scores({"a": 0.0, "b": 0.0}, reflected="b") == {"a": 0.0, "b": 0.5}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scale": "raw"}, "scale"),
        ({"scale": "literal"}, "n_samples"),
        ({"scale": "literal", "n_samples": 0}, "n_samples"),
        ({"tau1": -0.5}, "tau1"),
        ({"voter_probs": {"a": float("nan")}}, "voter_probs"),
    ],
)
def test_final_scores_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        final_scores(VOTES, **kwargs)


def test_final_scores_rejects_negative_votes():
    with pytest.raises(ValueError, match="votes"):
        final_scores({"a": -1.0})


def test_pick_answer():
    # 1.15 / (0.85 + 1.15 + 0.5) = 0.46
    answer, confidence = pick_answer({"a": 0.85, "b": 1.15, "c": 0.5}, VOTES)
    assert answer == "b"
    assert confidence == pytest.approx(0.46)


def test_pick_answer_ties():
    # equal S: the higher V wins
    assert pick_answer({"a": 1.0, "b": 1.0}, {"a": 1.0, "b": 2.0}) == ("b", 0.5)
    # equal S and V: the first in scores order
    assert pick_answer({"x": 1.0, "y": 1.0}, {}) == ("x", 0.5)
    # all zero: confidence 1 / 4
    assert pick_answer(dict.fromkeys("abcd", 0.0), {}) == ("a", 0.25)
    assert pick_answer({}, {}) == (None, 0.0)
    with pytest.raises(ValueError, match="scores"):
        pick_answer({"a": -1.0}, {})


def test_vote_shares():
    assert vote_shares(VOTES) == {"a": 0.75, "b": 0.25}
    assert vote_shares({"a": 0.0}) == {"a": 0.0}
    assert vote_shares({}) == {}
