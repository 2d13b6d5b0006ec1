"""Step-level confidence (MMBoundary's signals, fusion and levels) against hand-computed values."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from catts_graph.step_confidence import (
    LEVELS,
    SIGNALS,
    StepCalibrator,
    as_confidence,
    fit_fusion_weights,
    logistic_coefficients,
    step_signals,
    token_relevance,
    token_sar,
)


def fixed_similarity(values):
    def similarity(text, variants):
        assert len(variants) == len(values)
        return values

    return similarity


def test_token_relevance_by_hand():
    seen = {}

    def similarity(text, variants):
        seen["text"], seen["variants"] = text, list(variants)
        return [0.9, 0.5, 1.2]

    relevance = token_relevance("red big circle", ["red", " big", " circle"], similarity)
    assert seen["variants"] == [" big circle", "red circle", "red big"]
    assert relevance == pytest.approx([0.1 / 0.6, 0.5 / 0.6, 0.0])


def test_all_zero_relevance_is_uniform_and_bad_similarity_is_refused():
    assert token_relevance("a b", ["a", " b"], fixed_similarity([1.0, 1.0])) == pytest.approx([0.5, 0.5])
    with pytest.raises(ValueError, match="expected 2 finite values"):
        token_relevance("a b", ["a", " b"], fixed_similarity([1.0, math.nan]))
    with pytest.raises(ValueError, match="pieces"):
        token_relevance("", [], fixed_similarity([]))


def test_token_sar_by_hand():
    assert token_sar([-1.0, -2.0, -3.0], [0.5, 0.5, 0.0]) == pytest.approx(1.5)
    # Unnormalised relevance is normalised: weights 1:3 over NLLs 1 and 2.
    assert token_sar([-1.0, -2.0], [1.0, 3.0]) == pytest.approx(0.25 * 1 + 0.75 * 2)
    with pytest.raises(ValueError, match="non-negative"):
        token_sar([-1.0], [0.0])


def test_step_signals_split_the_organism_clauses_by_hand():
    tokens = ["red", " circle", ";", " blue", " square", "."]
    logprobs = [-0.1, -0.3, -0.2, -1.0, -2.0, -0.0]
    entropies = [0.5, 1.0, 0.3, 2.0, 1.0, 0.0]
    steps = step_signals(
        tokens,
        logprobs,
        entropies,
        similarity=lambda text, variants: [0.5] * len(variants),
        clip=lambda text: -0.2 if "blue" in text else 0.3,
    )
    assert [s.text for s in steps] == ["red circle;", "blue square."]
    first, second = steps
    assert first.n_tokens == 3 and second.n_tokens == 3
    assert first.probability == pytest.approx(math.exp(-0.6 / 3))
    assert second.probability == pytest.approx(math.exp(-3.0 / 3))
    assert first.entropy == pytest.approx(1.8 / 3)
    assert second.entropy == pytest.approx(1.0)
    assert first.tokensar == pytest.approx(0.6 / 3)  # equal relevance: the mean NLL
    assert first.clipscore == pytest.approx(0.3)
    assert second.clipscore == 0.0  # floored at 0
    bare = step_signals(tokens, logprobs)
    assert bare[0].entropy is None and bare[0].tokensar is None and bare[0].clipscore is None


def test_step_signals_refuse_mismatched_inputs():
    with pytest.raises(ValueError, match="tokens and logprobs"):
        step_signals(["a"], [])
    with pytest.raises(ValueError, match="entropies"):
        step_signals(["a"], [-1.0], [0.1, 0.2])


def test_as_confidence():
    assert as_confidence("entropy", 2.0) == pytest.approx(math.exp(-2))
    assert as_confidence("tokensar", 0.5) == pytest.approx(math.exp(-0.5))
    assert as_confidence("probability", 0.7) == 0.7
    with pytest.raises(ValueError, match="signal 'nmlp'"):
        as_confidence("nmlp", 1.0)


def test_fusion_weights_favour_the_informative_signal_at_the_regularised_optimum():
    rng = np.random.default_rng(0)
    y = rng.random(400) < 0.5
    informative = np.clip(0.5 + 0.3 * (y - 0.5) + 0.1 * rng.standard_normal(400), 0, 1)
    noise = rng.random(400)
    x = np.column_stack([informative, noise])
    weights = fit_fusion_weights(x, y, l2=1.0)
    assert weights.sum() == pytest.approx(1.0) and weights[0] > 0.9


def test_logistic_coefficients_match_plain_gradient_ascent():
    rng = np.random.default_rng(3)
    x = rng.random((200, 2))
    y = rng.random(200) < 0.2 + 0.6 * x[:, 0]
    beta = logistic_coefficients(x, y, l2=0.5)
    # An independent optimiser: many small gradient steps on the same penalised log-likelihood.
    design = np.column_stack([x - 0.5, np.ones(200)])
    b = np.zeros(3)
    for _ in range(20000):
        p = 1 / (1 + np.exp(-design @ b))
        b += 0.01 * (design.T @ (y - p) - np.array([0.5, 0.5, 0.0]) * b)
    assert beta == pytest.approx(b, abs=1e-4)


def test_fusion_weights_are_equal_with_one_class_or_no_positive_coefficient():
    x = np.random.default_rng(1).random((10, 3))
    assert fit_fusion_weights(x, [True] * 10) == pytest.approx([1 / 3] * 3)
    y = np.array([True] * 5 + [False] * 5)
    anti = np.column_stack([1.0 - y, 1.0 - y])  # both signals point the wrong way
    assert fit_fusion_weights(anti, y) == pytest.approx([0.5, 0.5])


def test_normalise_is_the_mid_rank_cdf_by_hand():
    rows = [{"probability": p} for p in (0.1, 0.2, 0.2, 0.4)]
    calibrator = StepCalibrator.fit(rows)
    assert calibrator.normalise("probability", 0.2) == pytest.approx((1 + 3) / 8)
    assert calibrator.normalise("probability", 0.05) == 0.0
    assert calibrator.normalise("probability", 0.5) == 1.0
    assert list(calibrator.weights) == ["probability"]


def test_fuse_renormalises_over_the_present_signals_and_names_the_missing():
    rows = [
        {"probability": p, "entropy": e, "clipscore": c} for p, e, c in [(0.2, 1.0, 0.1), (0.8, 0.2, 0.3)]
    ]
    calibrator = StepCalibrator.fit(rows)
    calibrator.weights = {"probability": 0.5, "entropy": 0.25, "clipscore": 0.25}
    row = {"probability": 0.8, "entropy": 1.0, "clipscore": None}
    fused, missing = calibrator.fuse(row)
    expected = (
        0.5 * calibrator.normalise("probability", 0.8) + 0.25 * calibrator.normalise("entropy", 1.0)
    ) / 0.75
    assert fused == pytest.approx(expected) and missing == ["clipscore"]
    with pytest.raises(ValueError, match="none of the signals"):
        calibrator.fuse({"tokensar": 1.0})


def test_levels_are_quintiles_with_their_validation_accuracy():
    rng = np.random.default_rng(2)
    p = rng.random(500)
    correct = rng.random(500) < p  # the probability signal is calibrated
    rows = [{"probability": float(v), "entropy": float(rng.random())} for v in p]
    calibrator = StepCalibrator.fit(rows, correct)
    assert calibrator.level_counts == [100] * LEVELS
    accuracies = calibrator.level_accuracy
    assert all(a < b for a, b in zip(accuracies, accuracies[1:], strict=False))
    levels = np.array([calibrator.assess(row)["level"] for row in rows])
    for k in range(1, LEVELS + 1):
        assert accuracies[k - 1] == pytest.approx(correct[levels == k].mean())
    # Level-mapped confidence is calibrated on the fitting steps by construction.
    confidences = np.array([calibrator.assess(row)["confidence"] for row in rows])
    ece = sum(
        (levels == k).mean() * abs(correct[levels == k].mean() - accuracies[k - 1]) for k in range(1, 6)
    )
    assert ece == pytest.approx(0.0, abs=1e-12)
    assert confidences.min() == accuracies[0]
    assert calibrator.weights["probability"] > calibrator.weights["entropy"]


def test_calibrator_round_trips_through_json_and_refuses_malformed_data():
    rows = [{"probability": v} for v in (0.1, 0.5, 0.9, 0.3, 0.7)]
    calibrator = StepCalibrator.fit(rows, [False, True, True, False, True])
    again = StepCalibrator.from_dict(json.loads(json.dumps(calibrator.to_dict())))
    for row in rows:
        assert again.assess(row) == calibrator.assess(row)
    with pytest.raises(ValueError, match="malformed"):
        StepCalibrator.from_dict({"weights": {}})
    unlabelled = StepCalibrator.fit(rows)
    assert math.isnan(unlabelled.assess(rows[0])["confidence"])
    json.dumps(unlabelled.to_dict())


# --- a calibrator is checked whole when it is loaded (issue 25, item 3) --------------------------

GOOD: dict[str, Any] = {
    "reference": {"probability": [0.1, 0.5, 0.9], "entropy": [0.2, 0.4]},
    "weights": {"probability": 0.75, "entropy": 0.25},
    "cuts": [0.2, 0.4, 0.6, 0.8],
    "level_accuracy": [0.1, 0.3, None, 0.7, 0.9],
    "level_counts": [1, 1, 0, 1, 1],
}
NAN, INF = float("nan"), float("inf")
BAD_FIELDS: list[tuple[str, Any, str]] = [
    *[
        ("weights", {"probability": v, "entropy": 0.25}, "weights['probability']")
        for v in (NAN, INF, -0.5, "x", True, None)
    ],
    ("weights", {"probability": 0.5, "clipscore": 0.5}, "weights['clipscore']: the signal has no reference"),
    ("weights", {"loudness": 1.0}, "weights: unknown signal 'loudness'"),
    ("weights", {}, "weights={}"),
    ("weights", [0.5, 0.5], "weights="),
    *[("cuts", v, "cuts") for v in ([0.2, 0.5, 0.8], [0.1 * k for k in range(10)], [0.8, 0.6, 0.4, 0.2])],
    *[
        ("cuts", v, "cuts")
        for v in ([NAN, 0.4, 0.6, 0.8], [0.2, 0.4, 0.6, 1.5], [0.2, 0.4, 0.6, INF], "x", None)
    ],
    *[
        ("level_accuracy", v, "level_accuracy")
        for v in ([0.5, 0.5], [0.1] * 6, [1.5] * 5, ["x"] * 5, [INF] * 5)
    ],
    *[("level_counts", v, "level_counts") for v in ([1] * 4, [-1] * 5, [1.5] * 5, [True] * 5, "5")],
    ("reference", {"probability": [], "entropy": [0.2]}, "reference['probability']"),
    (
        "reference",
        {"probability": [0.9, 0.1], "entropy": [0.2]},
        "reference['probability']: expected the values in ascending",
    ),
    ("reference", {"probability": [NAN], "entropy": [0.2]}, "reference['probability'][0]=nan"),
    ("reference", {"probability": [1.5], "entropy": [0.2]}, "reference['probability'][0]=1.5"),
    ("reference", {"probability": [0.5], "entropy": [0.2], "loudness": [0.5]}, "reference: unknown signal"),
    ("reference", {}, "reference={}"),
]


@pytest.mark.parametrize(("field", "value", "named"), BAD_FIELDS)
def test_every_calibrator_field_is_checked_when_loaded(field: str, value: Any, named: str) -> None:
    with pytest.raises(ValueError, match=re.escape(named)) as caught:
        StepCalibrator.from_dict({**GOOD, field: value})
    assert str(caught.value).startswith("step calibrator: ")


def test_a_calibrator_with_a_missing_or_unknown_field_is_named() -> None:
    with pytest.raises(ValueError, match="missing cuts; unknown cut"):
        StepCalibrator.from_dict({**{k: v for k, v in GOOD.items() if k != "cuts"}, "cut": [0.5]})
    with pytest.raises(ValueError, match="expected an object with reference, weights"):
        StepCalibrator.from_dict([GOOD])  # type: ignore[arg-type]


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_subnormal=False) | st.text(max_size=6),
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.sampled_from([*SIGNALS, "x"]), children)
    ),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(list(GOOD)),
    JSON_VALUES,
    st.lists(st.floats(0, 1, allow_subnormal=False), min_size=2, max_size=2),
)
def test_any_value_in_any_field_is_refused_or_gives_levels(
    field: str, value: Any, signals: list[float]
) -> None:
    try:
        calibrator = StepCalibrator.from_dict({**GOOD, field: value})
    except ValueError as error:
        assert str(error).startswith("step calibrator: ")
        return
    assessed = calibrator.assess({"probability": signals[0], "entropy": signals[1]})
    assert 0 <= assessed["fused"] <= 1 and assessed["level"] in range(1, LEVELS + 1)
