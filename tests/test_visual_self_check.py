"""The visual self-check node: every candidate scored on the same frames, only the answer counts.

The fake base model gives each token a log-prob that depends on the text and on whether the image is
noised; reasoning tokens follow the response's quality q (its sampled confidence, so the most
confident response of a candidate also scores best teacher-forced, as with a real model), the
answer token follows the answer, the image and the frame. Before common frames, the node scored each
candidate's most confident response whole, so the majority's best-of-more won at equal grounding
(:func:`whole_response_contrast` is that rule, to show each case would have gone the other way).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from catts_graph import CATTSConfig
from catts_graph.images import to_reference
from catts_graph.models.base import TokenLogprobs
from catts_graph.nodes.common import Deps
from catts_graph.nodes.visual_self_check import make_visual_self_check
from catts_graph.testing import ScriptedVLM, tokenize

IMAGE = to_reference(Image.new("RGB", (32, 32), (200, 30, 30)))
PROMPT = "Which?"
PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_BOXED = re.compile(r"\\boxed\{(.+)\}")


def record(index: int, text: str, answer: str | None, nmlp: float) -> dict:
    """A sample record as ``base_model`` keeps it (only the fields the vote and the check read)."""
    return {
        "index": index,
        "wave": 0,
        "source": "sample",
        "image": "original",
        "text": text,
        "answer": answer,
        "nmlp": nmlp,
        "confidence": math.exp(-nmlp),
    }


def members(answer: str, qualities: Sequence[float], first: int = 0) -> list[dict]:
    """One response per quality q (NMLP -q), each with its own reasoning, all boxing ``answer``."""
    return [
        record(first + i, f"Response {first + i} reads the image closely. \\boxed{{{answer}}}", answer, -q)
        for i, q in enumerate(qualities)
    ]


def token_logprobs(
    text: str, noised: bool, answer_lp: Mapping[tuple[str, bool], float], quality: Mapping[str, float]
) -> list[float]:
    """Reasoning tokens: q, q - 0.5 noised. The answer token: ``answer_lp[answer, noised] + 0.1 q``,
    where q is the quality of the frame's reasoning (the same shift for every answer in a frame)."""
    reasoning = text.rsplit(" \\boxed{", 1)[0]
    q = quality[reasoning]
    lps = []
    for token in tokenize(text):
        if match := _BOXED.fullmatch(token):
            lps.append(answer_lp[match.group(1), noised] + 0.1 * q)
        else:
            lps.append(q - 0.5 if noised else q)
    return lps


def qualities(samples: Sequence[Mapping]) -> dict[str, float]:
    """The quality q of each response's reasoning: -NMLP."""
    return {s["text"].rsplit(" \\boxed{", 1)[0]: -s["nmlp"] for s in samples}


def fake_model(samples: Sequence[Mapping], answer_lp: Mapping[tuple[str, bool], float]) -> ScriptedVLM:
    quality = qualities(samples)

    def scorer(images, prompt, text):
        noised = np.asarray(images[0], dtype=float).std(axis=(0, 1)).max() > 5.0  # clean: one colour
        return token_logprobs(text, noised, answer_lp, quality)

    return ScriptedVLM(lambda call: [], scorer=scorer)


def whole_response_contrast(samples: Sequence[Mapping], answer: str, answer_lp) -> float:
    """The rule before common frames: the candidate's most confident response, scored whole,
    ``2 * mean_lp_orig - mean_lp_noised``."""
    best = min((s for s in samples if s["answer"] == answer), key=lambda s: s["nmlp"])
    orig = token_logprobs(best["text"], False, answer_lp, qualities(samples))
    noised = token_logprobs(best["text"], True, answer_lp, qualities(samples))
    return 2 * sum(orig) / len(orig) - sum(noised) / len(noised)


def recording(seen: list[str]) -> ScriptedVLM:
    """A model that scores every token -1 and keeps each continuation it is given in ``seen``."""

    def scorer(images, prompt, text):
        seen.append(text)
        return -1.0

    return ScriptedVLM(lambda call: [], scorer=scorer)


def run_check(model, samples, options=None, **config):
    deps = Deps(model, None, None, None, CATTSConfig(**config))
    state = {"samples": list(samples), "image_refs": [IMAGE], "prompt": PROMPT, "options": options}
    update = make_visual_self_check(deps)(state, None)
    (entry,) = update["trace"]
    return update, entry


EQUAL = {("A", False): -0.2, ("A", True): -0.9, ("B", False): -0.2, ("B", True): -0.9}


def test_equal_grounding_gives_more_members_no_advantage():
    # A: 6 members, the best at q = -0.1; B: 2 members, the best at q = -0.3.
    samples = members("A", [-0.1, -0.4, -0.5, -0.6, -0.7, -0.8]) + members("B", [-0.3, -0.9], first=6)
    model = fake_model(samples, EQUAL)
    assert whole_response_contrast(samples, "A", EQUAL) > whole_response_contrast(samples, "B", EQUAL), (
        "the old rule would pick the majority"
    )

    update, entry = run_check(model, samples)

    assert update["self_check_winner"] is None
    assert entry["decision"] == "no winner" and "tie" in entry["reason"]
    # Frames: A's best (q = -0.1) and B's best (q = -0.3); shift 0.1 q, mean -0.02 over the two.
    # lp_orig = -0.2 - 0.02 = -0.22, lp_noised = -0.92, g = 0.7, contrastive = -0.44 + 0.92 = 0.48.
    rows = entry["inputs"]["candidates"]
    for answer in ("A", "B"):
        assert rows[answer]["lp_orig"] == pytest.approx(-0.22)
        assert rows[answer]["lp_noised"] == pytest.approx(-0.92)
        assert rows[answer]["grounding"] == pytest.approx(0.7)
        assert rows[answer]["contrastive"] == pytest.approx(0.48)
        assert rows[answer]["lp_orig_by_frame"] == pytest.approx([-0.21, -0.23])
    assert [f["sample"] for f in entry["inputs"]["frames"]] == [0, 6]


def test_the_more_grounded_minority_wins():
    answer_lp = {("A", False): -0.2, ("A", True): -0.4, ("B", False): -0.3, ("B", True): -1.5}
    samples = members("A", [-0.1, -0.4, -0.5, -0.6, -0.7, -0.8]) + members("B", [-0.3, -0.9], first=6)
    model = fake_model(samples, answer_lp)
    assert whole_response_contrast(samples, "A", answer_lp) > whole_response_contrast(
        samples, "B", answer_lp
    ), "the old rule would pick the majority"

    update, entry = run_check(model, samples)

    # Frame shift mean -0.02. A: -0.22, -0.42, g 0.2, 2 * -0.22 + 0.42 = -0.02.
    # B: -0.32, -1.52, g 1.2, 2 * -0.32 + 1.52 = 0.88.
    assert update["self_check_winner"] == "B"
    assert entry["decision"] == "winner 'B'"
    rows = entry["inputs"]["candidates"]
    assert rows["A"]["contrastive"] == pytest.approx(-0.02)
    assert rows["B"]["grounding"] == pytest.approx(1.2)
    assert rows["B"]["contrastive"] == pytest.approx(0.88)
    assert "in 2 common frames" in entry["reason"]


member_qualities = st.lists(st.floats(-2.0, -0.01), min_size=1, max_size=8)


@PROPERTY
@given(a=member_qualities, b=member_qualities)
def test_vote_counts_never_decide_at_equal_grounding(a, b):
    samples = members("A", a) + members("B", b, first=len(a))
    update, entry = run_check(fake_model(samples, EQUAL), samples)
    assert update["self_check_winner"] is None
    rows = entry["inputs"]["candidates"]
    assert rows["A"] == {**rows["B"], "answer_text": "A"}


@PROPERTY
@given(a=member_qualities, b=member_qualities)
def test_the_grounded_answer_wins_whatever_the_counts(a, b):
    # B loses 1.5 nats under noise, A 0.5: B's contrastive is higher by 1.0 in every frame.
    answer_lp = {("A", False): -0.2, ("A", True): -0.7, ("B", False): -0.2, ("B", True): -1.7}
    samples = members("A", a) + members("B", b, first=len(a))
    update, _ = run_check(fake_model(samples, answer_lp), samples)
    assert update["self_check_winner"] == "B"


def test_one_batched_call_per_image_set_with_every_candidate_in_every_frame():
    options = ["red", "blue", "green"]
    samples = [
        record(0, "The square is red. \\boxed{red}", "A", 0.2),  # the option's text, boxed
        record(1, "I see blue. \\boxed{B}.", "B", 0.5),  # the letter
        record(2, "It looks green; the answer is green.", "C", 1.0),  # no box
    ]
    seen: list[str] = []
    model = recording(seen)

    update, entry = run_check(model, samples, options=options)

    frames = [
        ("The square is red. \\boxed{", "}"),
        ("I see blue. \\boxed{", "}."),
        ("It looks green; the answer is ", "."),
    ]
    expected = [prefix + written + suffix for written in ("red", "B", "green") for prefix, suffix in frames]
    assert model.calls == [("score", PROMPT, 9), ("score", PROMPT, 9)]
    assert seen == expected + expected
    assert expected[0] == samples[0]["text"] and expected[4] == samples[1]["text"]
    assert update["usage"]["score_calls"] == 2
    assert {a: row["answer_text"] for a, row in entry["inputs"]["candidates"].items()} == {
        "A": "red",
        "B": "B",
        "C": "green",
    }
    assert entry["inputs"]["frames"] == [
        {"sample": 0, "answer": "A", "prefix_chars": 26},
        {"sample": 1, "answer": "B", "prefix_chars": 19},
        {"sample": 2, "answer": "C", "prefix_chars": 30},
    ]
    # Every token scores -1; the scripted tokeniser writes "green" and what closes it as one token.
    assert entry["inputs"]["candidates"]["C"]["lp_orig_by_frame"] == [-1.0, -1.0, -1.0]


def test_frames_two_responses_share_are_scored_once():
    samples = [record(0, "\\boxed{A}", "A", 0.5), record(1, "\\boxed{B}", "B", 0.5)]
    model = ScriptedVLM(lambda call: [])
    update, entry = run_check(model, samples)
    assert model.calls == [("score", PROMPT, 2), ("score", PROMPT, 2)]
    assert entry["inputs"]["frames"] == [{"sample": 0, "answer": "A", "prefix_chars": 7}]


def test_a_response_without_an_answer_span_gives_the_bare_boxed_frame():
    # A record whose text has no answer the extractor finds (written outside the graph).
    samples = [
        record(0, "Clearly red. \\boxed{A}", "A", 0.2),
        record(1, "I would say the second one", "B", 0.5),
    ]
    seen: list[str] = []
    _, entry = run_check(recording(seen), samples)

    assert seen[:4] == ["Clearly red. \\boxed{A}", "\\boxed{A}", "Clearly red. \\boxed{B}", "\\boxed{B}"]
    assert entry["inputs"]["frames"][1] == {
        "sample": 1,
        "answer": "B",
        "template": "the response has no answer span: the bare \\boxed{} frame",
    }
    assert entry["inputs"]["candidates"]["B"]["answer_text"] == "B"


class WithoutTokens:
    """Scores like ``inner`` but returns no token strings for continuations containing ``marker``."""

    def __init__(self, inner: ScriptedVLM, marker: str) -> None:
        self.inner, self.marker = inner, marker

    def score(self, images, prompt, continuations):
        scored = self.inner.score(images, prompt, continuations)
        return [
            TokenLogprobs(s.token_ids, s.logprobs, None if self.marker in text else s.tokens)
            for s, text in zip(scored, continuations, strict=True)
        ]


def test_a_frame_some_candidate_cannot_be_scored_in_is_dropped_for_all():
    samples = [record(0, "Red. \\boxed{A}", "A", 0.2), record(1, "Blue. \\boxed{B}", "B", 0.5)]
    model = WithoutTokens(ScriptedVLM(lambda call: []), marker="Blue. \\boxed{A}")
    update, entry = run_check(model, samples)
    assert [f["sample"] for f in entry["inputs"]["frames"]] == [0]
    assert entry["inputs"]["unscored_frames"] == [{"sample": 1, "answer": "B", "prefix_chars": 13}]
    assert entry["inputs"]["candidates"]["B"]["lp_orig_by_frame"] == [-1.0]

    model = WithoutTokens(ScriptedVLM(lambda call: []), marker="\\boxed{A}")
    update, entry = run_check(model, samples)
    assert update["self_check_winner"] is None
    assert entry["reason"] == "no frame in which every candidate could be scored"
    assert entry["inputs"]["candidates"] == {}
