"""Step-level confidence in the graph (issue 13 item 5): every record's steps, the Critic's step,
the fast path's step floor, the ``step_min`` weighting and the ``step_repair`` module.

Expected numbers are worked out by hand in the comments; the scripted tokeniser splits on spaces,
and a whitespace token belongs to the step before it (``confidence.step_tokens``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import numpy as np
import pytest

from catts_graph import CATTSConfig, ConfigError, build_graph
from catts_graph import policy as P
from catts_graph.config import PAPER_REFLECTION
from catts_graph.models.base import Sample
from catts_graph.samples import StepAssessor, describe_repair, describe_sample
from catts_graph.scoring import tally
from catts_graph.step_confidence import StepCalibrator
from catts_graph.task import weakest_step
from catts_graph.testing import Reply, ScriptCall, ScriptedVLM

NO_ENCODER = "no sentence encoder (build_graph(encoder=...))"
NO_CLIP = "no CLIP model (build_graph(clip=...))"

# Three steps: "red circle;" (tokens red, ' ', circle;, ' '), "blue square, but I am unsure of
# this;" (16 tokens, a level-2 statement) and "\boxed{A}" (1 token).
STATED = "red circle; blue square, but I am unsure of this; \\boxed{A}"
STATED_LP = [-0.2] * 4 + [-1.0] * 16 + [-0.05]
STATED_H = [0.5] * 4 + [2.0] * 16 + [0.1]


def scripted_sample(reply: Reply) -> Sample:
    """``reply`` as the scripted base model returns it (tokens, log-probs, entropies)."""
    (sample,) = ScriptedVLM.answering(reply).sample([], "q", 1)
    return sample


def record_of(reply: Reply, index: int = 0, **kwargs: Any) -> dict[str, Any]:
    return dict(describe_sample(scripted_sample(reply), options=None, index=index, wave=0, **kwargs))


def calibrator(probability: list[float], entropy: list[float], weights: dict[str, float]) -> StepCalibrator:
    """A calibrator written by hand: reference confidences (entropy as exp(-H)), the weights,
    cuts at 0.2 / 0.4 / 0.6 / 0.8."""
    return StepCalibrator(
        reference={"probability": sorted(probability), "entropy": sorted(entropy)},
        weights=weights,
        cuts=[0.2, 0.4, 0.6, 0.8],
        level_accuracy=[0.1, 0.3, 0.5, 0.7, 0.9],
        level_counts=[1, 1, 1, 1, 1],
    )


# probability refs 0.3 / 0.5 / 0.9, entropy refs exp(-3) / exp(-2.5) / exp(-0.2); weights 3:1.
STATED_CALIBRATOR = calibrator(
    [0.3, 0.5, 0.9], [math.exp(-3), math.exp(-2.5), math.exp(-0.2)], {"probability": 0.75, "entropy": 0.25}
)


# --- the record's steps -----------------------------------------------------------------------


def test_a_record_carries_its_steps_with_hand_computed_numbers():
    record = record_of(Reply(STATED, STATED_LP, STATED_H))
    none = {"tokensar": None, "clipscore": None}
    assert record["steps"] == [
        {
            "index": 0,
            "text": "red circle;",
            "span": [0, 11],
            "n_tokens": 4,
            "nmlp": 0.2,
            "signals": {"probability": 0.818731, "entropy": 0.5, **none},  # exp(-0.2)
            "fused": 0.818731,  # no calibrator: the probability
            "level": None,
            "expressed": None,
        },
        {
            "index": 1,
            "text": "blue square, but I am unsure of this;",
            "span": [12, 49],
            "n_tokens": 16,
            "nmlp": 1.0,
            "signals": {"probability": 0.367879, "entropy": 2.0, **none},  # exp(-1)
            "fused": 0.367879,
            "level": None,
            "expressed": 2,  # "but I am unsure of this" is a level-2 statement
        },
        {
            "index": 2,
            "text": "\\boxed{A}",
            "span": [50, 59],
            "n_tokens": 1,
            "nmlp": 0.05,
            "signals": {"probability": 0.951229, "entropy": 0.1, **none},  # exp(-0.05)
            "fused": 0.951229,
            "level": None,
            "expressed": None,
        },
    ]
    assert record["step_fusion"] == {
        "calibrated": False,
        "used": ["probability"],
        "dropped": {"entropy": "no step calibrator", "tokensar": NO_ENCODER, "clipscore": NO_CLIP},
    }
    assert record["nmlp"] == pytest.approx((4 * 0.2 + 16 * 1.0 + 0.05) / 21)
    assert json.loads(json.dumps(record)) == record
    assert weakest_step(record)["index"] == weakest_step(record, "nmlp")["index"] == 1


def test_a_calibrator_fuses_the_signals_and_gives_levels():
    record = record_of(Reply(STATED, STATED_LP, STATED_H), steps=StepAssessor(calibrator=STATED_CALIBRATOR))
    # Mid-rank CDFs: step 0 p = 0.819 (2 of 3 refs below: 4/6), exp(-0.5) = 0.607 (2 below: 4/6);
    # step 1 p = 0.368 (1 below: 2/6), exp(-2) = 0.135 (2 below: 4/6), fused .75/3 + .25*2/3;
    # step 2 above every reference: 1 and 1. Levels: 1 + cuts strictly below.
    assert [s["fused"] for s in record["steps"]] == [0.666667, 0.416667, 1.0]
    assert [s["level"] for s in record["steps"]] == [4, 3, 5]
    assert record["step_fusion"] == {
        "calibrated": True,
        "used": ["probability", "entropy"],
        "dropped": {"tokensar": NO_ENCODER, "clipscore": NO_CLIP},
    }
    # Without entropies (an API backend) the calibrator fuses what is left, and says so.
    bare = record_of(Reply(STATED, STATED_LP), steps=StepAssessor(calibrator=STATED_CALIBRATOR))
    assert [s["fused"] for s in bare["steps"]] == [0.666667, 0.333333, 1.0]
    assert bare["step_fusion"]["used"] == ["probability"]
    assert bare["step_fusion"]["dropped"]["entropy"] == "the backend reported no full-vocabulary entropy"


def test_tokensar_costs_one_similarity_call_per_step_and_clip_one_call_per_response():
    seen: dict[str, list[Any]] = {"similarity": [], "clip": []}

    def similarity(text, variants):
        seen["similarity"].append((text, len(variants)))
        return [0.5] * len(variants)  # equal relevance: TokenSAR is the step's mean NLL

    def clip(texts):
        seen["clip"].append(list(texts))
        return [0.3, -0.2, 0.5]

    record = record_of(Reply(STATED, STATED_LP), steps=StepAssessor(similarity=similarity, clip=clip))
    assert seen["similarity"] == [
        ("red circle;", 4),
        ("blue square, but I am unsure of this;", 16),
        ("\\boxed{A}", 1),
    ]
    assert seen["clip"] == [["red circle;", "blue square, but I am unsure of this;", "\\boxed{A}"]]
    assert [s["signals"]["tokensar"] for s in record["steps"]] == [0.2, 1.0, 0.05]
    assert [s["signals"]["clipscore"] for s in record["steps"]] == [0.3, 0.0, 0.5]  # floored at 0
    assert record["step_fusion"]["dropped"] == {
        "entropy": "the backend reported no full-vocabulary entropy",
        "tokensar": "no step calibrator",
        "clipscore": "no step calibrator",
    }


def test_graph_records_use_the_graphs_calibrator_file_and_a_run_may_override_it(image_path, tmp_path):
    path = tmp_path / "steps.json"
    path.write_text(json.dumps(STATED_CALIBRATOR.to_dict()))
    vlm = ScriptedVLM.answering(Reply(STATED, STATED_LP, STATED_H))
    graph = build_graph(vlm, config=CATTSConfig(n_samples=1, max_samples=1, step_calibrator=str(path)))
    result = graph.invoke({"image": image_path, "question": "Which?"})
    assert [s["level"] for s in result["samples"][0]["steps"]] == [4, 3, 5]
    base = next(e for e in result["trace"] if e["module"] == "base_model")
    assert base["inputs"]["weakest_step"] == [0.4167]
    assert base["inputs"]["step_fusion"]["used"] == ["probability", "entropy"]
    plain = graph.invoke({"image": image_path, "question": "Which?"}, context={"step_calibrator": None})
    assert [s["level"] for s in plain["samples"][0]["steps"]] == [None, None, None]


def test_the_graph_passes_its_encoder_and_clip_with_the_runs_image(image_path):
    calls: dict[str, list[Any]] = {"similarity": [], "clip": []}

    class Encoder:
        def encode(self, texts):
            rows = np.array([[1.0, float(len(t) % 7), 0.5] for t in texts])
            return rows / np.linalg.norm(rows, axis=1, keepdims=True)

        def similarity(self, text, variants):
            calls["similarity"].append(text)
            return [0.9] * len(variants)

    def clip(images, texts):
        calls["clip"].append((len(images), images[0].size, len(texts)))
        return [0.25] * len(texts)

    vlm = ScriptedVLM.answering(Reply(STATED, STATED_LP))
    graph = build_graph(vlm, config=CATTSConfig(n_samples=2, max_samples=2), encoder=Encoder(), clip=clip)
    result = graph.invoke({"image": image_path, "question": "Which?"})
    assert len(calls["similarity"]) == 2 * 3  # one per step of each sample
    assert calls["clip"] == [(1, (32, 32), 3)] * 2  # one per sample, with the run's image
    steps = result["samples"][0]["steps"]
    assert all(s["signals"]["tokensar"] is not None and s["signals"]["clipscore"] == 0.25 for s in steps)


# --- the Critic's step ------------------------------------------------------------------------

# Steps: "red circle, but this is only a guess;" (16 tokens, lp -0.1, H 0.2, states level 1),
# "blue square;" (4 tokens, lp -0.7, H 0.1), "\boxed{A}" (lp -0.3, H 2.5).
CRITICISED = "red circle, but this is only a guess; blue square; \\boxed{A}"
CRITICISED_REPLY = Reply(CRITICISED, [-0.1] * 16 + [-0.7] * 4 + [-0.3], [0.2] * 16 + [0.1] * 4 + [2.5])
# Entropy-heavy (1:3). Step 0: p 0.905 -> 4/6, exp(-0.2) = 0.819 -> 4/6: fused 0.667, level 4.
# Step 1: p 0.497 -> 0, exp(-0.1) = 0.905 -> 1: fused 0.75, level 4. Step 2: p 0.741 -> 2/6,
# exp(-2.5) -> 0: fused 0.083, level 1. Weakest by fused: step 2; by NMLP: step 1 (0.7); by the
# stated level: step 0 (level 1).
CRITIC_CALIBRATOR = calibrator(
    [0.6, 0.8, 0.95], [math.exp(-2), math.exp(-0.5), math.exp(-0.15)], {"probability": 0.25, "entropy": 0.75}
)


def critic_run(image_path, scripted_chat, signal: str, reply: Reply = CRITICISED_REPLY) -> tuple[dict, str]:
    def script(call: ScriptCall) -> list[Reply]:
        if "<critique>" in call.prompt:
            return [Reply("\\boxed{B}", -0.1)]
        return [reply, Reply("\\boxed{B}", -0.05)][: call.n]

    expert = scripted_chat(critic=json.dumps({"critique": "Step 3 is wrong.", "verdict": "incorrect"}))
    config = CATTSConfig(
        policy="paper",
        n_samples=2,
        max_samples=2,
        critic_step_signal=signal,
        disabled_modules=("visual_self_check",),
        **PAPER_REFLECTION,  # the least confident sample is criticised
    )
    graph = build_graph(
        ScriptedVLM(script), expert={"critic": expert}, config=config, step_calibrator=CRITIC_CALIBRATOR
    )
    result = graph.invoke({"image": image_path, "question": "Which?"})
    (call,) = [c for c in expert.calls if c["role"] == "critic"]
    text = "\n".join(
        b["text"] for b in call["messages"][0].content if isinstance(b, dict) and b["type"] == "text"
    )
    return result, text


@pytest.mark.parametrize(
    ("signal", "step", "note"),
    [
        (
            "fused",
            "\\boxed{A}",
            "This is step 3 of 3, chosen for the lowest fused confidence of the steps, 0.083; level 1 "
            "of 5, probability 0.741, mean token entropy 2.500 nats.",
        ),
        (
            "nmlp",
            "blue square;",
            "This is step 2 of 3, chosen for the highest NMLP of the steps, 0.700 (mean negative "
            "log-prob of its tokens); fused confidence 0.750, level 4 of 5, probability 0.497, mean "
            "token entropy 0.100 nats.",
        ),
        (
            "expressed",
            "red circle, but this is only a guess;",
            "This is step 1 of 3, chosen for the lowest confidence the model states, level 1 of 5; "
            "fused confidence 0.667, level 4 of 5, probability 0.905, mean token entropy 0.200 nats.",
        ),
    ],
)
def test_the_critic_prompt_names_the_weakest_step_with_its_numbers(
    image_path, scripted_chat, signal, step, note
):
    result, text = critic_run(image_path, scripted_chat, signal)
    assert f"<step>\n{step}\n</step>\n\n{note}\n" in text
    (entry,) = [e for e in result["trace"] if e["module"] == "critic"]
    assert entry["inputs"]["sample"] == 0 and entry["inputs"]["step_signal"] == signal
    assert entry["inputs"]["step"] == {"fused": 2, "nmlp": 1, "expressed": 0}[signal]


def test_the_critic_falls_back_to_fused_when_no_level_is_stated(image_path, scripted_chat):
    plain = Reply(
        "red circle; blue square; \\boxed{A}", [-0.1] * 4 + [-0.7] * 4 + [-0.3], [0.2] * 4 + [0.1] * 4 + [2.5]
    )
    result, text = critic_run(image_path, scripted_chat, "expressed", plain)
    (entry,) = [e for e in result["trace"] if e["module"] == "critic"]
    assert entry["inputs"]["step_signal"] == "fused" and entry["inputs"]["step"] == 2
    assert "states no confidence level" in entry["reason"]
    assert "<step>\n\\boxed{A}\n</step>" in text


# --- the fast path's step floor ---------------------------------------------------------------


def floor_model() -> ScriptedVLM:
    # Four samples of 7; the last one's first step "seven dots;" is unsure: exp(-1.5) = 0.2231.
    sure = Reply("seven dots; \\boxed{7}", -0.05)
    unsure = Reply("seven dots; \\boxed{7}", [-1.5] * 4 + [-0.05])
    return ScriptedVLM.answering(sure, sure, sure, unsure)


@pytest.mark.parametrize(
    ("floor", "route"), [(None, "aggregate"), (0.2, "aggregate"), (0.5, "self_consistency")]
)
def test_the_fast_path_needs_the_leaders_weakest_step_at_the_floor(image_path, floor, route):
    config = CATTSConfig(n_samples=4, max_samples=4, step_floor=floor)
    result = build_graph(floor_model(), config=config).invoke({"image": image_path, "question": "How many?"})
    decision = [e for e in result["trace"] if e["module"] == "planner"][0]
    assert decision["decision"] == f"-> {route}"
    if floor is None:
        assert "leader_weakest_step" not in decision["inputs"]
        return
    assert decision["inputs"]["leader_weakest_step"] == 0.2231
    if route == "aggregate":
        assert decision["reason"].endswith("weakest step 0.22 (>= 0.2)")
    else:
        # Blocked by the floor; the budget is spent, so no repair: the vote goes on.
        assert decision["inputs"]["fast_path_blocked"] == "step_floor"
        assert "step_repair" not in [e["module"] for e in result["trace"]]


# --- step_min ---------------------------------------------------------------------------------


def step_min_replies() -> list[Reply]:
    # Steps "red;" (tokens red;, ' ') and "\boxed{.}": weakest step probabilities
    # min(e^-0.5, e^-0.1) = 0.606531, min(e^-0.2, e^-1) = 0.367879, min(e^-2, e^-0.1) = 0.135335.
    return [
        Reply("red; \\boxed{A}", [-0.5, -0.5, -0.1]),
        Reply("blue; \\boxed{B}", [-0.2, -0.2, -1.0]),
        Reply("red; \\boxed{A}", [-2.0, -2.0, -0.1]),
    ]


def test_step_min_votes_with_the_weakest_steps_fused_confidence(image_path):
    records = [record_of(reply, i) for i, reply in enumerate(step_min_replies())]
    votes = tally(records, CATTSConfig(weighting="step_min")).votes
    assert votes == pytest.approx({"A": 0.606531 + 0.135335, "B": 0.367879}, abs=1e-9)
    config = CATTSConfig(weighting="step_min", n_samples=3, max_samples=3)
    result = build_graph(ScriptedVLM.answering(*step_min_replies()), config=config).invoke(
        {"image": image_path, "question": "Which?"}
    )
    (vote,) = [e for e in result["trace"] if e["module"] == "self_consistency"]
    assert vote["inputs"]["votes"] == {"A": 0.741866, "B": 0.367879}
    total = 0.741866 + 0.367879
    assert result["scores"] == pytest.approx({"A": 0.741866 / total, "B": 0.367879 / total})
    assert "step_min weighting" in vote["reason"]


# --- step_repair ------------------------------------------------------------------------------

# s0 "red; blue; \boxed{A}" with an unsure second step (exp(-2) = 0.1353), NMLP 4.3 / 5 = 0.86;
# s1 the same, sure (NMLP 0.1); s2 "green; \boxed{B}" (NMLP 0.1). Votes 1/0.86 + 10 against 10:
# A leads with 0.527 of the vote (no fast path, not contested at 0.5), its weakest step 0.1353.
WAVE = [
    Reply("red; blue; \\boxed{A}", [-0.1, -0.1, -2.0, -2.0, -0.1]),
    Reply("red; blue; \\boxed{A}", -0.1),
    Reply("green; \\boxed{B}", -0.1),
]
CONTINUATION = Reply(" green; \\boxed{B}", -0.3)


def repair_model(continuation: Reply = CONTINUATION) -> ScriptedVLM:
    def script(call: ScriptCall) -> list[Reply]:
        return [continuation] if call.prefix is not None else WAVE[: call.n]

    return ScriptedVLM(script)


REPAIR_CONFIG = CATTSConfig(
    n_samples=3, max_samples=5, step_floor=0.5, contested_share=0.5, disabled_modules=("visual_self_check",)
)


def test_step_repair_keeps_the_steps_before_the_weakest_and_the_repair_votes(image_path):
    vlm = repair_model()
    result = build_graph(vlm, config=REPAIR_CONFIG).invoke({"image": image_path, "question": "Which?"})
    modules = [e["module"] for e in result["trace"]]
    assert modules == [
        "prepare",
        "base_model",
        "planner",
        "step_repair",
        "planner",
        "self_consistency",
        "planner",
        "aggregate",
    ]
    # Only s0 is below the floor after its first step: it keeps "red;" and is continued once.
    (call,) = [c for c in vlm.calls if c[0] == "continue"]
    assert call[3] == "red;" and call[2] == 1
    repair = result["samples"][3]
    assert repair["source"] == "repair" and repair["repair"] == {"of": 0, "kept_steps": 1, "prefix_chars": 4}
    assert repair["text"] == "red; green; \\boxed{B}" and repair["answer"] == "B"
    assert [(s["index"], s["text"], s["span"], s["n_tokens"], s["nmlp"]) for s in repair["steps"]] == [
        (0, "red;", [0, 4], 2, 0.1),  # kept, as s0 has it
        (1, "green;", [5, 11], 3, 0.3),  # ' ', green;, ' ' at -0.3
        (2, "\\boxed{B}", [12, 21], 1, 0.3),
    ]
    # NMLP over kept and new tokens: (2 * 0.1 + 4 * 0.3) / 6.
    assert repair["nmlp"] == pytest.approx(1.4 / 6) and repair["n_tokens"] == 6
    # The repair votes beside the samples: A = 1/0.86 + 10, B = 10 + 6/1.4.
    votes = {"A": 1 / 0.86 + 10, "B": 10 + 6 / 1.4}
    total = sum(votes.values())
    assert result["answer"] == "B"
    assert result["scores"] == pytest.approx({a: v / total for a, v in votes.items()}, abs=1e-6)
    (entry,) = [e for e in result["trace"] if e["module"] == "step_repair"]
    (done,) = entry["inputs"]["repairs"]
    assert (done["sample"], done["kept_steps"], done["weakest_step_fused"]) == (0, 1, 0.1353)
    assert (done["answer_before"], done["answer_after"]) == ("A", "B")
    assert result["usage"]["base_model_calls"] == 2 and result["usage"]["generated_tokens"] == 5 + 5 + 3 + 4
    planner = [e for e in result["trace"] if e["module"] == "planner"][0]
    assert planner["decision"] == "-> step_repair" and planner["inputs"]["leader_weakest_step"] == 0.1353


@pytest.mark.parametrize(("repair_temperature", "expected"), [(None, 0.7), (0.0, 0.0), (1.3, 1.3)])
def test_step_repair_continues_at_its_own_temperature(image_path, repair_temperature, expected):
    seen: list[tuple[str, float]] = []

    def script(call: ScriptCall) -> list[Reply]:
        seen.append(("continue" if call.prefix is not None else "sample", call.temperature))
        return [CONTINUATION] if call.prefix is not None else WAVE[: call.n]

    config = REPAIR_CONFIG.replace(temperature=0.7, repair_temperature=repair_temperature)
    result = build_graph(ScriptedVLM(script), config=config).invoke(
        {"image": image_path, "question": "Which?"}
    )
    assert seen == [("sample", 0.7), ("continue", expected)]  # the wave keeps the run's temperature
    (entry,) = [e for e in result["trace"] if e["module"] == "step_repair"]
    assert entry["inputs"]["repairs"][0]["temperature"] == expected


def test_step_repair_is_off_by_default_and_respects_the_budget(image_path):
    vlm = repair_model()
    off = CATTSConfig(
        n_samples=3, max_samples=5, contested_share=0.5, disabled_modules=("visual_self_check",)
    )
    result = build_graph(vlm, config=off).invoke({"image": image_path, "question": "Which?"})
    assert "step_repair" not in [e["module"] for e in result["trace"]] and len(result["samples"]) == 3
    # The repairs count against max_samples: with room for none, none is drawn.
    full = REPAIR_CONFIG.replace(max_samples=3)
    result = build_graph(repair_model(), config=full).invoke({"image": image_path, "question": "Which?"})
    assert "step_repair" not in [e["module"] for e in result["trace"]]


class NoContinuation:
    """A backend with sample and score only."""

    def __init__(self, inner: ScriptedVLM) -> None:
        self.inner = inner

    def sample(self, *args: Any, **kwargs: Any) -> list[Sample]:
        return self.inner.sample(*args, **kwargs)

    def score(self, *args: Any, **kwargs: Any) -> Any:
        return self.inner.score(*args, **kwargs)


class RefusingContinuation(ScriptedVLM):
    def continue_reply(self, *args: Any, **kwargs: Any) -> list[Sample]:
        raise NotImplementedError("this server has no continue_final_message")


def test_a_backend_that_cannot_continue_skips_the_module_and_says_why(image_path):
    result = build_graph(NoContinuation(repair_model()), config=REPAIR_CONFIG).invoke(
        {"image": image_path, "question": "Which?"}
    )
    decision = [e for e in result["trace"] if e["module"] == "planner"][0]
    assert decision["decision"] == "-> self_consistency"
    assert (
        decision["inputs"]["step_repair"] == "skipped: the base model cannot continue a reply from a prefix"
    )
    refusing = RefusingContinuation(repair_model().script)
    result = build_graph(refusing, config=REPAIR_CONFIG).invoke({"image": image_path, "question": "Which?"})
    (entry,) = [e for e in result["trace"] if e["module"] == "step_repair"]
    assert entry["decision"] == "skipped"
    assert (
        entry["reason"] == "the base model cannot continue a reply: this server has no continue_final_message"
    )
    assert len(result["samples"]) == 3 and result["answer"] == "A"


def test_plans_skip_step_repair_when_it_cannot_run():
    records = [record_of(reply, i) for i, reply in enumerate(WAVE[:2])]
    situation = P.Situation(
        tally=tally(records, CATTSConfig()),
        drawn=2,
        done=frozenset(),
        disabled=frozenset(),
        score_margin=1.0,
        n_candidates=1,
        has_critic=False,
        can_repair=False,
    )
    decision = P.follow_plan(situation, ["step_repair"], CATTSConfig(), source="expert")
    assert decision.route == "aggregate"
    assert "skipped step_repair (the base model cannot continue a reply from a prefix)" in decision.reason
    able = P.follow_plan(
        dataclasses.replace(situation, can_repair=True),
        ["step_repair"],
        CATTSConfig(),
        source="expert",
    )
    assert able.route == "step_repair"
    assert P.validate_plan(["step_repair", "self_consistency"], policy="expert") == [
        "step_repair",
        "self_consistency",
    ]
    with pytest.raises(ValueError, match="step_repair"):
        P.validate_plan(["step_repair"], policy="paper")


def test_the_planner_expert_is_offered_step_repair_only_when_it_can_run(image_path, scripted_chat):
    plan = json.dumps({"modules": ["step_repair", "self_consistency"], "reason": "a weak step"})
    expert = scripted_chat(planner=plan)
    config = REPAIR_CONFIG.replace(policy="expert", step_floor=None)
    result = build_graph(repair_model(), expert={"planner": expert}, config=config).invoke(
        {"image": image_path, "question": "Which?"}
    )
    text = expert.calls[0]["messages"][0].content
    prompt = "\n".join(b["text"] for b in text if isinstance(b, dict) and b["type"] == "text")
    assert "- step_repair:" in prompt and '"weakest_step": 0.1353' in prompt
    modules = [e["module"] for e in result["trace"]]
    assert modules[2:7] == ["planner", "planner", "step_repair", "planner", "self_consistency"]
    # Without continue_reply the menu leaves it out, and the same plan is refused (adaptive fallback).
    expert = scripted_chat(planner=plan)
    build_graph(NoContinuation(repair_model()), expert={"planner": expert}, config=config).invoke(
        {"image": image_path, "question": "Which?"}
    )
    text = expert.calls[0]["messages"][0].content
    assert "step_repair" not in "\n".join(
        b["text"] for b in text if isinstance(b, dict) and b["type"] == "text"
    )


def test_describe_repair_checks_the_steps_it_keeps():
    original = record_of(WAVE[0])
    continuation = scripted_sample(CONTINUATION)
    with pytest.raises(ValueError, match="kept=0"):
        describe_repair(continuation, original, 0, options=None, index=1, wave=0)
    # The model may stop at once: the repair is the kept text, its NMLP the kept steps'.
    empty = describe_repair(
        Sample(token_ids=[], logprobs=[], tokens=[], text=""), original, 2, options=None, index=1, wave=0
    )
    assert empty["text"] == "red; blue;" and empty["answer"] is None
    assert empty["nmlp"] == pytest.approx((2 * 0.1 + 2 * 2.0) / 4)


def test_step_repair_with_the_real_tiny_model_continuing(image_path, tiny_vlm, tiny_image):
    """Scripted samples (a random model writes no answer), the real model continuing: the repair
    is the kept text followed by the model's own tokens, scored as teacher forcing scores them."""
    scripted = repair_model()
    continued: list[tuple[str, Sample]] = []

    class RealContinuation(NoContinuation):
        def continue_reply(self, images, prompt, prefix, n, params=None, **settings):
            samples = tiny_vlm.continue_reply(
                images, prompt, prefix, n, params, **{**settings, "max_new_tokens": 6}
            )
            continued.extend((prefix, s) for s in samples)
            return samples

    result = build_graph(RealContinuation(scripted), config=REPAIR_CONFIG).invoke(
        {"image": tiny_image, "question": "Which?"}
    )
    ((prefix, sample),) = continued
    repair = result["samples"][3]
    assert prefix == "red;" and repair["text"] == prefix + sample.text
    assert sum(s["n_tokens"] for s in repair["steps"][1:]) == len(sample.token_ids)
    prefix_ids = tiny_vlm.tokenizer(prefix, add_special_tokens=False)["input_ids"]
    prompt = [c for c in scripted.calls if c[0] == "sample"][0][1]
    (forced,) = tiny_vlm.score([tiny_image], prompt, [prefix_ids + sample.token_ids])
    assert forced.logprobs[len(prefix_ids) :] == pytest.approx(sample.logprobs, abs=1e-4)


# --- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"critic_step_signal": "loudest"}, "critic_step_signal"),
        ({"step_floor": 1.5}, "step_floor"),
        ({"step_floor": float("nan")}, "step_floor"),
        ({"repair_samples": 0}, "repair_samples"),
        ({"step_calibrator": ""}, "step_calibrator"),
        ({"step_calibrator": 3}, "step_calibrator"),
        ({"weighting": "step_max"}, "weighting"),
        ({"disabled_modules": ("step_fix",)}, "disabled_modules"),
    ],
)
def test_bad_step_settings_name_the_field(changes, field):
    with pytest.raises(ConfigError, match=field):
        CATTSConfig(**changes)


def test_step_settings_from_the_environment_and_a_bad_calibrator_file(tmp_path):
    config = CATTSConfig.from_env(
        {
            "CATTS_STEP_FLOOR": "0.4",
            "CATTS_CRITIC_STEP_SIGNAL": "expressed",
            "CATTS_WEIGHTING": "step_min",
            "CATTS_DISABLED_MODULES": "step_repair",
            "CATTS_STEP_CALIBRATOR": str(tmp_path / "c.json"),
        }
    )
    assert (config.step_floor, config.critic_step_signal, config.weighting) == (0.4, "expressed", "step_min")
    assert config.disabled_modules == ("step_repair",)
    with pytest.raises(ConfigError, match="CATTS_STEP_FLOOR"):
        CATTSConfig.from_env({"CATTS_STEP_FLOOR": "high"})
    vlm = ScriptedVLM.answering("\\boxed{A}")
    with pytest.raises(ConfigError, match="step_calibrator=.*cannot read"):
        build_graph(vlm, config=config)
    (tmp_path / "c.json").write_text("{not json")
    with pytest.raises(ConfigError, match="step_calibrator=.*not a JSON file"):
        build_graph(vlm, config=config)
    (tmp_path / "c.json").write_text('{"weights": {}}')
    with pytest.raises(ConfigError, match="step_calibrator=.*malformed"):
        build_graph(vlm, config=config)
    (tmp_path / "c.json").write_text(json.dumps(STATED_CALIBRATOR.to_dict()))
    with pytest.raises(ConfigError, match="step_calibrator: given twice"):
        build_graph(vlm, config=config, step_calibrator=STATED_CALIBRATOR)
    assert build_graph(vlm, config=config) is not None


# --- a calibrator is checked whole before any model call (issue 25, item 3) ----------------------

NAN_WEIGHTS = {**STATED_CALIBRATOR.to_dict(), "weights": {"probability": float("nan"), "entropy": 0.25}}


def test_a_bad_calibrator_is_refused_when_the_graph_is_built(tmp_path):
    vlm = ScriptedVLM.answering("\\boxed{A}")
    path = tmp_path / "c.json"
    path.write_text(json.dumps(NAN_WEIGHTS))  # NaN, as Python's json writes it
    with pytest.raises(ConfigError, match=r"step_calibrator=.*c.json.*weights\['probability'\]=nan"):
        build_graph(vlm, config=CATTSConfig(step_calibrator=str(path)))
    ten_cuts = dataclasses.replace(STATED_CALIBRATOR, cuts=[0.1 * k for k in range(10)])
    with pytest.raises(ConfigError, match=r"step_calibrator: cuts=.*expected 4 fused confidences"):
        build_graph(vlm, step_calibrator=ten_cuts)
    assert vlm.calls == []


def test_a_bad_calibrator_a_run_names_is_refused_before_sampling(tmp_path, image_path):
    vlm = ScriptedVLM.answering("\\boxed{A}")
    path = tmp_path / "c.json"
    path.write_text(json.dumps({**STATED_CALIBRATOR.to_dict(), "level_accuracy": [0.5, 0.5]}))
    graph = build_graph(vlm, config=CATTSConfig(n_samples=1, max_samples=1))
    with pytest.raises(ConfigError, match=r"level_accuracy=\[0.5, 0.5\]: expected 5 accuracies"):
        graph.invoke({"image": image_path, "question": "Q"}, context={"step_calibrator": str(path)})
    assert vlm.calls == [], "the base model was not called"


def test_catts_run_refuses_a_bad_calibrator_before_loading_and_prints_json(tmp_path, capsys, monkeypatch):
    from catts_graph.cli import json_text, main

    path = tmp_path / "c.json"
    path.write_text(json.dumps(NAN_WEIGHTS))
    monkeypatch.setenv("CATTS_STEP_CALIBRATOR", str(path))
    args = ["run", "--image", str(image_path_of(tmp_path)), "--question", "Q", "--json"]
    assert main([*args, "--model", "no/such/model"]) == 2  # the model was never loaded
    assert "weights['probability']=nan: expected a finite weight" in capsys.readouterr().err
    text = json_text({"confidence": float("nan"), "steps": [{"fused": float("inf")}, 0.5]})
    assert json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} is not JSON")) == {
        "confidence": None,
        "steps": [{"fused": None}, 0.5],
    }


def image_path_of(folder):
    from PIL import Image

    path = folder / "img.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(path)
    return path
