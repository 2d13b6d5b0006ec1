"""Confidence estimators against hand-computed values."""

import math

import numpy as np
import pytest

from catts_graph.confidence import (
    StepConfidence,
    bottom_percent_confidence,
    confidence_from_nmlp,
    group_confidence,
    least_confident_step,
    lowest_group_confidence,
    mean_confidence,
    mean_entropy,
    mean_token_entropy,
    nmlp,
    span_nmlp,
    split_steps,
    step_confidences,
    tail_confidence,
    token_confidence,
    token_entropy,
)


def test_nmlp():
    # -(1/2) * (-0.1 - 0.3) = 0.2
    assert nmlp([-0.1, -0.3]) == pytest.approx(0.2)
    assert nmlp([-1.0]) == 1.0
    assert nmlp([0.0, 0.0]) == 0.0


@pytest.mark.parametrize("bad", [[], [float("nan")], [-0.1, float("-inf")]])
def test_nmlp_rejects_empty_and_non_finite(bad):
    with pytest.raises(ValueError, match="token_logprobs"):
        nmlp(bad)


def test_confidence_from_nmlp():
    assert confidence_from_nmlp(0.0) == 1.0
    # exp(-ln 2) = 0.5
    assert confidence_from_nmlp(math.log(2)) == pytest.approx(0.5)
    # A rounding-negative NMLP still gives a confidence in (0, 1].
    assert confidence_from_nmlp(-1e-9) == 1.0
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="value"):
            confidence_from_nmlp(bad)


def test_token_confidence():
    top = [[-0.1, -0.2, -0.6], [-1.0]]
    # k=2: step 0 -> -(-0.1 - 0.2) / 2 = 0.15; step 1 has one entry -> 1.0
    assert token_confidence(top, k=2) == pytest.approx([0.15, 1.0])
    # k=20 uses all three entries: -(-0.9) / 3 = 0.3
    assert token_confidence(top) == pytest.approx([0.3, 1.0])
    assert token_confidence([]) == []


def test_token_confidence_counts_the_sampled_token_outside_the_top_k():
    """DeepConf's reference averages every log-prob vLLM lists: the top-k, plus the sampled token
    when it is not among them."""
    top = [[-0.1, -0.5], [-0.2, -1.0]]
    # Step 0: the sampled token (-0.5) is the 2nd of the top-2 -> -(-0.1 - 0.5) / 2 = 0.3.
    # Step 1: the sampled token (-3.0) is below the top-2 -> -(-0.2 - 1.0 - 3.0) / 3 = 1.4.
    assert token_confidence(top, k=2, chosen_logprobs=[-0.5, -3.0]) == pytest.approx([0.3, 1.4])
    # Without the sampled log-probs, the top-k only: 0.3, 0.6.
    assert token_confidence(top, k=2) == pytest.approx([0.3, 0.6])
    # vLLM's own listing (top-2 plus the sampled token) gives the same number through k = 2.
    assert token_confidence([[-0.2, -1.0, -3.0]], k=2, chosen_logprobs=[-3.0]) == pytest.approx([1.4])
    # A sampled token tied with the k-th log-prob is inside the top-k: nothing is added.
    assert token_confidence([[-0.2, -1.0]], k=2, chosen_logprobs=[-1.0]) == pytest.approx([0.6])


def test_token_confidence_errors():
    with pytest.raises(ValueError, match=r"top_logprobs\[1\] is empty"):
        token_confidence([[-0.1], []])
    with pytest.raises(ValueError, match="k must be >= 1"):
        token_confidence([[-0.1]], k=0)
    with pytest.raises(ValueError, match=r"top_logprobs\[0\]"):
        token_confidence([[float("nan")]])
    with pytest.raises(ValueError, match="chosen_logprobs must hold one log-prob per step"):
        token_confidence([[-0.1], [-0.2]], chosen_logprobs=[-0.1])
    with pytest.raises(ValueError, match=r"chosen_logprobs\[1\] must be finite"):
        token_confidence([[-0.1], [-0.2]], chosen_logprobs=[-0.1, float("-inf")])


def test_group_confidence():
    # windows of 2: (1+2)/2, (2+3)/2, (3+4)/2
    assert group_confidence([1.0, 2.0, 3.0, 4.0], window=2) == pytest.approx([1.5, 2.5, 3.5])
    # window longer than T is shortened to T = 4: one group, (1+2+3+4)/4
    assert group_confidence([1.0, 2.0, 3.0, 4.0], window=10) == pytest.approx([2.5])
    assert group_confidence([1.0, 2.0], window=1) == pytest.approx([1.0, 2.0])


def test_group_confidence_matches_naive_windows():
    conf = np.random.default_rng(0).uniform(0.0, 5.0, size=50)
    naive = [conf[i : i + 7].mean() for i in range(50 - 7 + 1)]
    assert group_confidence(conf.tolist(), window=7) == pytest.approx(naive)


def test_group_confidence_errors():
    with pytest.raises(ValueError, match="token_conf"):
        group_confidence([])
    with pytest.raises(ValueError, match="window must be >= 1"):
        group_confidence([1.0], window=0)


def test_lowest_group_confidence():
    # groups [1.5, 2.5, 3.5]
    assert lowest_group_confidence([1.0, 2.0, 3.0, 4.0], window=2) == pytest.approx(1.5)


def test_bottom_percent_confidence():
    conf = [5.0, 1.0, 4.0, 2.0, 3.0, 6.0, 0.0, 7.0, 8.0, 9.0, 10.0, 11.0]
    # window 1: 12 groups = the values. 25%: floor(12 * 0.25) = 3 -> mean(0, 1, 2) = 1.0
    assert bottom_percent_confidence(conf, window=1, percent=25.0) == pytest.approx(1.0)
    # 10%: floor(1.2) = 1 -> the lowest, 0.0; 1%: max(1, floor(0.12)) = 1 -> 0.0
    assert bottom_percent_confidence(conf, window=1) == 0.0
    assert bottom_percent_confidence(conf, window=1, percent=1.0) == 0.0
    # groups [1.5, 2.5, 3.5]: 100% -> mean 2.5; 50%: floor(1.5) = 1 -> 1.5
    assert bottom_percent_confidence([1.0, 2.0, 3.0, 4.0], window=2, percent=100.0) == 2.5
    assert bottom_percent_confidence([1.0, 2.0, 3.0, 4.0], window=2, percent=50.0) == 1.5


@pytest.mark.parametrize("percent", [0.0, -5.0, 100.5])
def test_bottom_percent_confidence_rejects_percent(percent):
    with pytest.raises(ValueError, match="percent"):
        bottom_percent_confidence([1.0], percent=percent)


def test_tail_and_mean_confidence():
    conf = [1.0, 2.0, 3.0, 4.0]
    assert tail_confidence(conf, tail=2) == 3.5  # (3 + 4) / 2
    assert tail_confidence(conf, tail=10) == 2.5  # all four
    assert mean_confidence(conf) == 2.5
    with pytest.raises(ValueError, match="tail must be >= 1"):
        tail_confidence(conf, tail=0)
    with pytest.raises(ValueError, match="token_conf"):
        mean_confidence([])


def test_token_entropy():
    # uniform over 4: ln 4
    assert token_entropy([math.log(0.25)] * 4) == pytest.approx(math.log(4))
    # unnormalised [0, 0] renormalises to (0.5, 0.5): ln 2
    assert token_entropy([0.0, 0.0]) == pytest.approx(math.log(2))
    # truncated top-2 (0.3, 0.1) -> (0.75, 0.25): -(0.75 ln 0.75 + 0.25 ln 0.25) = 0.5623351446
    assert token_entropy([math.log(0.3), math.log(0.1)]) == pytest.approx(0.5623351446)
    # a zero-probability token adds nothing
    assert token_entropy([math.log(0.5), math.log(0.5), float("-inf")]) == pytest.approx(math.log(2))
    assert token_entropy([0.0]) == 0.0


@pytest.mark.parametrize("bad", [[], [float("nan")], [float("inf")], [float("-inf")]])
def test_token_entropy_errors(bad):
    with pytest.raises(ValueError, match="step_logprobs"):
        token_entropy(bad)


def test_mean_token_entropy():
    # (ln 2 + 0) / 2 = 0.3465735903
    steps = [[math.log(0.5), math.log(0.5)], [0.0]]
    assert mean_token_entropy(steps) == pytest.approx(0.3465735903)
    with pytest.raises(ValueError, match="per_step_logprobs"):
        mean_token_entropy([])


@pytest.mark.parametrize(
    ("text", "spans"),
    [
        ("First step. Second step!\nThird? yes", [(0, 11), (12, 24), (25, 31), (32, 35)]),
        ("x = 3.5 and y = 2.25.", [(0, 21)]),  # points inside numbers never cut
        ("1. Compute x.\n2. Done.", [(0, 13), (14, 22)]),  # list markers stay with their step
        ("Wait...  really? Yes.", [(0, 7), (9, 16), (17, 21)]),
        ("  \n\n  ", []),
        ("", []),
        ("Hello", [(0, 5)]),
    ],
)
def test_split_steps(text, spans):
    assert split_steps(text) == spans


def test_step_confidences():
    tokens = ["First", " step", ".", " Second", " one", ".", "\n"]
    logprobs = [-0.25, -0.5, -0.75, -1.0, -2.0, -3.0, -0.5]
    # "First step." gets 3 tokens: (0.25 + 0.5 + 0.75) / 3 = 0.5
    # "Second one." gets 3 tokens plus the trailing "\n": (1 + 2 + 3 + 0.5) / 4 = 1.625
    assert step_confidences(tokens, logprobs) == [
        StepConfidence(index=0, text="First step.", start=0, end=11, n_tokens=3, nmlp=0.5),
        StepConfidence(index=1, text="Second one.", start=12, end=23, n_tokens=4, nmlp=1.625),
    ]
    assert least_confident_step(tokens, logprobs).index == 1


def test_step_confidences_leading_whitespace_joins_next_step():
    # "\n" precedes every step, so it joins the first: (0.4 + 0.2 + 0.3) / 3 = 0.3
    (step,) = step_confidences(["\n", "Hi", "."], [-0.4, -0.2, -0.3])
    assert (step.text, step.start, step.end, step.n_tokens) == ("Hi.", 1, 4, 3)
    assert step.nmlp == pytest.approx(0.3)


def test_step_confidences_drops_steps_without_tokens():
    # "A. B. C D" has steps "A.", "B.", "C D"; the token ". B. C" starts in step 0, so step 1
    # receives no token and is dropped; indices stay those of split_steps.
    steps = step_confidences(["A", ". B. C", " D"], [-1.0, -2.0, -4.0])
    assert [(s.index, s.text, s.n_tokens) for s in steps] == [(0, "A.", 2), (2, "C D", 1)]
    assert [s.nmlp for s in steps] == pytest.approx([1.5, 4.0])  # (1 + 2) / 2; 4


def test_least_confident_step_ties_and_empty():
    assert least_confident_step(["A.", " B."], [-1.0, -1.0]).index == 0
    assert least_confident_step([" ", "\n"], [-1.0, -1.0]) is None
    assert step_confidences([], []) == []


def test_step_confidences_rejects_length_mismatch():
    with pytest.raises(ValueError, match="tokens and token_logprobs"):
        step_confidences(["a"], [])


def test_span_nmlp():
    tokens = ["The", " answer", " is", " 4", "2", "."]
    logprobs = [-0.1, -0.2, -0.3, -0.4, -0.6, -0.9]
    # "The answer is 42.": " 4" is [13, 15), "2" is [15, 16); "42" is [14, 16)
    assert span_nmlp(tokens, logprobs, 14, 16) == pytest.approx(0.5)  # (0.4 + 0.6) / 2
    assert span_nmlp(tokens, logprobs, 13, 14) == pytest.approx(0.4)  # the space of " 4"
    assert span_nmlp(tokens, logprobs, 0, 17) == pytest.approx(2.5 / 6)
    for start, end in [(16, 16), (20, 25)]:
        with pytest.raises(ValueError, match="no token overlaps"):
            span_nmlp(tokens, logprobs, start, end)
    with pytest.raises(ValueError, match="tokens and token_logprobs"):
        span_nmlp(tokens, logprobs[:-1], 0, 1)


def test_mean_entropy_of_full_vocabulary_entropies():
    # (ln 4 + 0 + ln 2) / 3 = ln(8) / 3
    assert mean_entropy([math.log(4), 0.0, math.log(2)]) == pytest.approx(math.log(8) / 3)
    for bad, match in (([], "non-empty"), ([0.1, float("nan")], "finite"), ([0.1, -0.2], ">= 0")):
        with pytest.raises(ValueError, match=match):
            mean_entropy(bad)
