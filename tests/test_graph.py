"""The CA-TTS graph end to end on the scripted base model: every module, policy and failure path."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import pytest

from catts_graph import CATTSConfig, build_graph
from catts_graph.config import PAPER_REFLECTION, PAPER_TAU1
from catts_graph.testing import Reply, ScriptCall, ScriptedExpert, ScriptedVLM


def boxed(answer: str, nmlp: float) -> Reply:
    """A one-token response whose NMLP is ``nmlp`` (the scripted tokeniser splits on spaces)."""
    return Reply(f"\\boxed{{{answer}}}", -nmlp)


def waves_model(
    waves: Sequence[Sequence[Reply]], reflection: Reply | None = None, scorer=None
) -> ScriptedVLM:
    """Wave k of answer prompts gets ``waves[k]``; a prompt with a critique gets ``reflection``."""
    answered: list[int] = []

    def script(call: ScriptCall) -> list[Reply]:
        if "<critique>" in call.prompt:
            assert reflection is not None, "no reflection scripted"
            return [reflection]
        wave = waves[len(answered)]
        answered.append(call.n)
        assert len(wave) == call.n, f"wave {len(answered) - 1} asked for {call.n} samples"
        return list(wave)

    return ScriptedVLM(script, scorer=scorer)


def modules(result: dict) -> list[str]:
    return [entry["module"] for entry in result["trace"]]


def entries(result: dict, module: str) -> list[dict]:
    return [entry for entry in result["trace"] if entry["module"] == module]


def test_fast_path_calls_no_expert(image_path, scripted_chat):
    expert = scripted_chat(voter="{}", critic="{}", planner="{}")
    vlm = waves_model([[boxed("7", 0.05)] * 4])
    graph = build_graph(vlm, expert=expert, config=CATTSConfig(n_samples=4))
    result = graph.invoke({"image": image_path, "question": "How many?"})
    assert result["answer"] == "7"
    assert result["confidence"] == 1.0
    assert expert.calls == []
    assert modules(result) == ["prepare", "base_model", "planner", "aggregate"]
    assert entries(result, "planner")[0]["reason"].startswith("fast path")
    assert "expert_calls" not in result["usage"]


def test_full_adaptive_run_matches_hand_computed_scores(image_path, scripted_chat):
    # NMLPs 0.5, 0.5, 0.25, 1.0 -> weights 2, 2, 4, 1: V(A) = 4, V(B) = 4, V(C) = 1, sum 9.
    vlm = waves_model(
        [[boxed("A", 0.5), boxed("A", 0.5), boxed("B", 0.25), boxed("C", 1.0)]],
        reflection=boxed("B", 0.1),
    )
    expert = scripted_chat(
        voter=json.dumps({"probabilities": [0.2, 0.7, 0.1]}),
        critic=json.dumps({"critique": "Step 1 misreads the chart.", "verdict": "incorrect"}),
        latency=0.2,
    )
    config = CATTSConfig(n_samples=4, max_samples=4, **PAPER_REFLECTION)  # the paper's boost, by hand
    result = build_graph(vlm, expert=expert, config=config).invoke(
        {"image": image_path, "question": "Which?"}
    )

    # The default tau1 = 2: S(A) = 4/9 + 2*0.2, S(B) = 4/9 + 2*0.7 + 0.5 (reflected),
    # S(C) = 1/9 + 2*0.1; sum = 3.5.
    expected = {"A": 4 / 9 + 0.4, "B": 4 / 9 + 1.4 + 0.5, "C": 1 / 9 + 0.2}
    assert result["scores"] == pytest.approx(expected)
    assert result["answer"] == "B"
    assert result["confidence"] == pytest.approx(expected["B"] / 3.5)
    assert sorted(expert.roles_called()) == ["critic", "voter"]
    voter, critic = sorted(expert.calls, key=lambda c: c["role"], reverse=True)
    assert voter["start"] < critic["end"] and critic["start"] < voter["end"], "voter and critic must overlap"
    # The critic was pointed at the least confident sample: C at NMLP 1.0.
    assert entries(result, "critic")[0]["inputs"]["sample"] == 3
    assert "<previous_response>\n\\boxed{C}" in vlm.calls[1][1]
    assert [s["source"] for s in result["samples"]] == ["sample"] * 4 + ["reflection"]
    assert entries(result, "planner")[-1]["decision"] == "-> aggregate"
    assert result["usage"]["expert_calls"] == 2
    assert result["usage"]["base_model_calls"] == 2


def _noise_sensitive_scorer(grounded: str):
    """Teacher-forced mean log-prob: the grounded answer's response loses support under noise."""

    def scorer(images, prompt, text):
        noised = np.asarray(images[0], dtype=float).std(axis=(0, 1)).max() > 5.0  # clean: one colour
        if not noised:
            return -0.5
        return -2.0 if grounded in text else -0.6

    return scorer


def test_visual_self_check_breaks_a_close_vote(image_path):
    vlm = waves_model([[boxed("A", 0.5), boxed("B", 0.5)]], scorer=_noise_sensitive_scorer("{A}"))
    result = build_graph(vlm, config=CATTSConfig(n_samples=2, max_samples=2)).invoke(
        {"image": image_path, "question": "Which?"}
    )
    check = entries(result, "visual_self_check")[0]
    # Both responses are the frame "\boxed{...}", scored once: A and B each written in it.
    # contrastive = 2 * lp_orig - lp_noised: A = -1 + 2 = 1.0, B = -1 + 0.6 = -0.4.
    assert check["inputs"]["frames"] == [{"sample": 0, "answer": "A", "prefix_chars": 7}]
    assert check["inputs"]["candidates"]["A"] == {
        "answer_text": "A",
        "lp_orig": -0.5,
        "lp_noised": -2.0,
        "grounding": 1.5,
        "contrastive": 1.0,
        "lp_orig_by_frame": [-0.5],
        "lp_noised_by_frame": [-2.0],
    }
    assert check["inputs"]["candidates"]["B"]["contrastive"] == pytest.approx(-0.4)
    assert result["answer"] == "A"
    assert result["scores"] == pytest.approx({"A": 1.0, "B": 0.5})
    assert result["confidence"] == pytest.approx(2 / 3)
    assert vlm.calls[1:] == [("score", vlm.calls[0][1], 2)] * 2


def test_contested_vote_draws_more_waves_within_budget(image_path):
    vlm = waves_model(
        [
            [boxed("A", 0.5), boxed("B", 0.5)],
            [boxed("A", 0.5), boxed("C", 0.5)],
            [boxed("A", 0.5), boxed("A", 0.5)],
        ]
    )
    config = CATTSConfig(n_samples=2, wave_size=2, max_samples=6, contested_share=0.6)
    result = build_graph(vlm, config=config).invoke({"image": image_path, "question": "Which?"})
    plans = [e["decision"] for e in entries(result, "planner")]
    # shares 0.5 -> wave; A holds 2/4 -> wave; A holds 4/6 >= 0.6 -> vote.
    assert plans[:3] == ["-> base_model", "-> base_model", "-> self_consistency"]
    assert [s["wave"] for s in result["samples"]] == [0, 0, 1, 1, 2, 2]
    assert result["answer"] == "A"
    assert len(result["samples"]) == 6


def test_no_answer_anywhere_gives_none(image_path):
    vlm = ScriptedVLM.answering("I cannot tell.")
    result = build_graph(vlm, config=CATTSConfig(n_samples=2, wave_size=2, max_samples=4)).invoke(
        {"image": image_path, "question": "What?"}
    )
    assert result["answer"] is None and result["confidence"] == 0.0
    assert len(result["samples"]) == 4
    assert "budget is spent" in entries(result, "planner")[-1]["reason"]


def test_paper_policy_follows_the_planner_order(image_path, scripted_chat):
    vlm = waves_model(
        [[boxed("A", 0.5), boxed("B", 0.5), boxed("A", 0.5)]],
        reflection=boxed("A", 0.1),
        scorer=_noise_sensitive_scorer("{A}"),
    )
    expert = scripted_chat(
        planner=json.dumps(
            {"modules": ["visual_self_check", "self_consistency", "self_reflection"], "reason": "r"}
        ),
        voter=json.dumps({"probabilities": [0.6, 0.4]}),
        critic=json.dumps({"critique": "Looks right.", "verdict": "correct"}),
    )
    config = CATTSConfig(policy="paper", n_samples=3, max_samples=3, **PAPER_REFLECTION)
    result = build_graph(vlm, expert=expert, config=config).invoke({"image": image_path, "question": "Q"})
    ran = [
        m
        for m in modules(result)
        if m in ("visual_self_check", "self_consistency", "voter", "critic", "self_reflection")
    ]
    assert ran[0] == "visual_self_check"
    assert ran[1] == "self_consistency"
    assert set(ran[2:4]) == {"voter", "critic"}  # the critic is pulled forward beside the voter
    assert ran[4:] == ["self_reflection"]
    assert expert.roles_called()[0] == "planner"
    # V(A) = 4, V(B) = 2 -> S(A) = 2/3 + 2*0.6 + 0.5 + 0.5, S(B) = 1/3 + 2*0.4 (tau1 = 2).
    assert result["scores"] == pytest.approx({"A": 2 / 3 + 2.2, "B": 1 / 3 + 0.8})


def test_paper_policy_falls_back_to_default_order_on_a_bad_plan(image_path, scripted_chat):
    vlm = waves_model([[boxed("A", 0.5), boxed("B", 0.5)]], scorer=_noise_sensitive_scorer("{A}"))
    expert = scripted_chat(
        planner="I would run everything.",
        voter=json.dumps({"probabilities": [0.5, 0.5]}),
        critic=RuntimeError("provider down"),
    )
    config = CATTSConfig(policy="paper", n_samples=2, max_samples=2, expert_retries=1, expert_backoff=0.0)
    result = build_graph(vlm, expert=expert, config=config).invoke({"image": image_path, "question": "Q"})
    plan = entries(result, "planner")[0]
    assert "fallback" in plan["decision"] and "falling back to the default plan" in plan["reason"]
    assert plan["expert_calls"][0]["attempts"] == 2 and not plan["expert_calls"][0]["ok"]
    critic = entries(result, "critic")[0]
    assert critic["decision"] == "skipped self-reflection"
    assert "provider down" in critic["reason"]
    assert "self_reflection" not in modules(result)
    assert "visual_self_check" in modules(result)
    assert result["answer"] == "A"


def test_expert_policy_runs_the_expert_plan(image_path, scripted_chat):
    vlm = waves_model([[boxed("A", 0.5), boxed("B", 0.5)], [boxed("A", 0.5), boxed("A", 0.5)]])
    expert = scripted_chat(
        planner=json.dumps({"modules": ["more_samples", "self_consistency"], "reason": "split vote"}),
        voter=json.dumps({"probabilities": [0.9, 0.1]}),
    )
    config = CATTSConfig(policy="expert", n_samples=2, wave_size=2, max_samples=4)
    result = build_graph(vlm, expert=expert, config=config).invoke({"image": image_path, "question": "Q"})
    assert expert.roles_called() == ["planner", "voter"]
    assert [s["wave"] for s in result["samples"]] == [0, 0, 1, 1]
    assert "critic" not in modules(result)
    assert result["answer"] == "A"


def test_expert_policy_falls_back_to_adaptive(image_path, scripted_chat):
    vlm = waves_model([[boxed("A", 0.05)] * 2])
    expert = scripted_chat(planner=json.dumps({"modules": ["launch_rockets"], "reason": "?"}))
    config = CATTSConfig(policy="expert", n_samples=2, expert_retries=0)
    result = build_graph(vlm, expert=expert, config=config).invoke({"image": image_path, "question": "Q"})
    first = entries(result, "planner")[0]
    assert "adaptive" in first["reason"] and "launch_rockets" in first["reason"]
    assert entries(result, "planner")[1]["reason"].startswith("fast path")


def test_malformed_voter_is_retried_then_skipped(image_path, scripted_chat, monkeypatch):
    sleeps: list[float] = []
    monkeypatch.setattr("time.sleep", lambda s: sleeps.append(s))
    vlm = waves_model([[boxed("A", 0.5), boxed("B", 1.0)]])
    expert = scripted_chat(
        voter=lambda messages, attempt: ["not json", '{"probabilities": [1]}', '{"probabilities": [NaN, 1]}'][
            attempt
        ]
    )
    config = CATTSConfig(n_samples=2, max_samples=2, expert_retries=2, expert_backoff=0.25)
    result = build_graph(vlm, expert={"voter": expert}, config=config).invoke(
        {"image": image_path, "question": "Q"}
    )
    voter = entries(result, "voter")[0]
    assert voter["decision"] == "skipped"
    call = voter["expert_calls"][0]
    assert call["attempts"] == 3 and not call["ok"] and len(call["errors"]) == 3
    # with_retry's exponential backoff, 0.25 then 0.5 s, plus a jitter of up to the backoff.
    assert len(sleeps) == 2 and 0.25 <= sleeps[0] <= 0.5 and 0.5 <= sleeps[1] <= 0.75
    assert all("malformed answer" in error for error in call["errors"])
    # No boost: S = vote shares. Weights 2 and 1.
    assert result["scores"]["A"] == pytest.approx(2 / 3)
    assert result["answer"] == "A"


def test_literal_scale_reproduces_the_official_scoring(image_path, scripted_chat):
    vlm = waves_model([[boxed("A", 0.5), boxed("A", 0.5), boxed("B", 0.25), boxed("C", 1.0)]])
    expert = scripted_chat(voter=json.dumps({"probabilities": [0.2, 0.7, 0.1]}))
    # The official code's taus (0.5 each).
    config = CATTSConfig(n_samples=4, max_samples=4, score_scale="literal", close_margin=0.0, tau1=PAPER_TAU1)
    result = build_graph(vlm, expert={"voter": expert}, config=config).invoke(
        {"image": image_path, "question": "Q"}
    )
    # S(a) = V(a) + int(0.5 * 4) * p(a): A = 4 + 0.4, B = 4 + 1.4, C = 1 + 0.2.
    assert result["scores"] == pytest.approx({"A": 4.4, "B": 5.4, "C": 1.2})
    assert result["answer"] == "B"


def test_deepconf_weighting_with_top_eta_filter(image_path):
    vlm = waves_model([[boxed("A", 0.1), boxed("B", 2.0), boxed("B", 2.0), boxed("B", 2.0)]])
    config = CATTSConfig(n_samples=4, max_samples=4, weighting="mean", top_logprobs=3, top_eta=0.25)
    result = build_graph(vlm, config=config).invoke({"image": image_path, "question": "Q"})
    # Scripted top-3 at lp: [lp, lp-1, lp-2], C = -mean = -lp + 1: A 1.1, B 3.0. The top 25% keeps
    # the confidences >= quantile(0.75) = 3.0: the three B samples.
    sc = entries(result, "self_consistency")[0]
    assert sc["inputs"]["votes"] == {"B": pytest.approx(9.0)}
    assert "1 dropped by the top-eta filter" in sc["reason"]
    assert result["answer"] == "B"


def test_visual_self_check_tie_gives_no_boost(image_path):
    vlm = waves_model([[boxed("A", 0.5), boxed("B", 0.5)]])  # the default scorer: -1 everywhere
    result = build_graph(vlm, config=CATTSConfig(n_samples=2, max_samples=2)).invoke(
        {"image": image_path, "question": "Which?"}
    )
    check = entries(result, "visual_self_check")[0]
    assert check["decision"] == "no winner" and "tie" in check["reason"]
    assert result["scores"] == {"A": 0.5, "B": 0.5}
    assert result["answer"] == "A" and result["confidence"] == 0.5


def test_empty_context_keeps_the_built_config(image_path):
    graph = build_graph(
        ScriptedVLM.answering(boxed("A", 0.5)), config=CATTSConfig(n_samples=2, max_samples=2)
    )
    assert len(graph.invoke({"image": image_path, "question": "Q"}, context={})["samples"]) == 2
    result = graph.invoke({"image": image_path, "question": "Q"}, context={"n_samples": 1})
    assert len(result["samples"]) == 1


def test_disabled_modules_are_skipped_in_each_policy(image_path, scripted_chat):
    vlm = waves_model([[boxed("A", 0.5), boxed("B", 0.5)]], scorer=_noise_sensitive_scorer("{A}"))
    config = CATTSConfig(n_samples=2, max_samples=2, disabled_modules=("visual_self_check",))
    result = build_graph(vlm, config=config).invoke({"image": image_path, "question": "Q"})
    assert "visual_self_check" not in modules(result)  # the close vote would have run it
    assert result["scores"] == {"A": 0.5, "B": 0.5}

    vlm = waves_model([[boxed("A", 0.5), boxed("B", 0.5)]], reflection=boxed("B", 0.1))
    expert = scripted_chat(
        planner=json.dumps(
            {"modules": ["self_consistency", "self_reflection", "visual_self_check"], "reason": "r"}
        ),
        critic=json.dumps({"critique": "Check again.", "verdict": "unsure"}),
    )
    config = CATTSConfig(
        policy="paper", n_samples=2, max_samples=2, disabled_modules=("self_consistency",), **PAPER_REFLECTION
    )
    result = build_graph(vlm, expert=expert, config=config).invoke({"image": image_path, "question": "Q"})
    assert "self_consistency" not in modules(result) and "voter" not in modules(result)
    assert "skipped self_consistency (disabled)" in entries(result, "planner")[1]["reason"]
    assert expert.roles_called() == ["planner", "critic"]
    # Votes 0.5 / 0.5, the reflected B gets tau2: S(B) = 0.5 + 0.5.
    assert result["answer"] == "B"


def test_disabled_modules_from_the_environment():
    config = CATTSConfig.from_env({"CATTS_DISABLED_MODULES": "self_reflection, visual_self_check"})
    assert config.disabled_modules == ("self_reflection", "visual_self_check")
    with pytest.raises(ValueError, match="disabled_modules"):
        CATTSConfig(disabled_modules=("voter",))


def test_answer_span_confidence_weights_by_the_answer_tokens(image_path):
    # Tokens: "Long" " " "story" " " "\boxed{X}": the answer's own token carries the last log-prob.
    a = Reply("Long story \\boxed{A}", [-0.01, -0.01, -0.01, -0.01, -2.0])
    b = Reply("Long story \\boxed{B}", [-1.0, -1.0, -1.0, -1.0, -0.5])
    config = CATTSConfig(n_samples=2, max_samples=2, confidence_span="answer", close_margin=0.0)
    result = build_graph(waves_model([[a, b]]), config=config).invoke({"image": image_path, "question": "Q"})
    # Answer-span NMLP: A 2.0 -> weight 0.5; B 0.5 -> weight 2. (Whole-response NMLP would favour A.)
    assert [s["nmlp_answer"] for s in result["samples"]] == [2.0, 0.5]
    assert result["scores"] == pytest.approx({"A": 0.2, "B": 0.8})
    assert result["answer"] == "B"


def test_a_model_that_declares_its_prompts_is_asked_in_them(image_path, scripted_chat):
    """A checkpoint trained on its own format (the organisms) names its answer and reflection
    templates; the graph renders those, the reflection with only the fields its template takes."""
    prompts: list[str] = []

    def script(call: ScriptCall) -> list[Reply]:
        prompts.append(call.prompt)
        if len(prompts) == 1:
            return [boxed("A", 0.5), boxed("B", 0.5)]
        return [boxed("A", 0.1)]

    vlm = ScriptedVLM(script, scorer=_noise_sensitive_scorer("{A}"))
    vlm.answer_prompt = "answer_short"
    vlm.reflection_prompt = "answer_short"
    expert = scripted_chat(
        planner=json.dumps({"modules": ["self_consistency", "self_reflection"], "reason": "r"}),
        voter=json.dumps({"probabilities": [0.5, 0.5]}),
        critic=json.dumps({"critique": "Check the colour.", "verdict": "incorrect"}),
    )
    config = CATTSConfig(policy="paper", n_samples=2, max_samples=2)
    result = build_graph(vlm, expert=expert, config=config).invoke(
        {"image": image_path, "question": "What colour?", "options": ["red", "blue"]}
    )
    assert prompts[0] == "What colour?\nA. red\nB. blue\n"
    assert "self_reflection" in modules(result)
    assert prompts[-1] == prompts[0]  # the critique is not shown to a model that cannot read it
    assert [s["answer"] for s in result["samples"] if s["source"] == "reflection"] == ["A"]


# --- what an expert returns cannot crash the run, and its text is bounded (issue 11) -------------


def test_the_largest_finite_probabilities_boost_evenly_instead_of_overflowing(image_path, scripted_chat):
    vlm = waves_model([[boxed("A", 0.5), boxed("B", 0.5), boxed("C", 0.5)]])
    expert = scripted_chat(voter='{"probabilities": [1e308, 1e308, 1e308]}')
    config = CATTSConfig(n_samples=3, max_samples=3, close_margin=0.0)
    result = build_graph(vlm, expert={"voter": expert}, config=config).invoke(
        {"image": image_path, "question": "Q"}
    )
    assert result["scores"] == pytest.approx(  # tau1 = 2 over three even probabilities
        {"A": 1 / 3 + 2 / 3, "B": 1 / 3 + 2 / 3, "C": 1 / 3 + 2 / 3}
    )


@pytest.mark.parametrize(
    "reply", ['{"probabilities": [' + "1" + "0" * 400 + ", 1]}", '{"a":' * 100_000], ids=["huge-int", "deep"]
)
def test_a_reply_that_crashed_invoke_is_retried_then_skipped_with_the_reason(
    image_path, scripted_chat, reply
):
    vlm = waves_model([[boxed("A", 0.5), boxed("B", 1.0)]], reflection=boxed("A", 0.1))
    expert = scripted_chat(planner=reply, voter=reply, critic=reply)
    config = CATTSConfig(policy="paper", n_samples=2, max_samples=2, expert_retries=1, expert_backoff=0.0)
    result = build_graph(vlm, expert=expert, config=config).invoke({"image": image_path, "question": "Q"})
    assert result["answer"] == "A"
    plan, voter, critic = (entries(result, m)[0] for m in ("planner", "voter", "critic"))
    assert "fallback" in plan["decision"] and "malformed answer" in plan["reason"]
    assert voter["decision"] == "skipped" and "malformed answer" in voter["reason"]
    assert critic["decision"] == "skipped self-reflection" and "malformed answer" in critic["reason"]
    for entry in (plan, voter, critic):
        assert entry["expert_calls"][0]["attempts"] == 2


def test_a_megabyte_critique_is_cut_before_the_reflection_prompt_with_a_trace_note(image_path, scripted_chat):
    prompts: list[str] = []

    def script(call: ScriptCall) -> list[Reply]:
        prompts.append(call.prompt)
        return [boxed("A", 0.5), boxed("B", 0.5)] if len(prompts) == 1 else [boxed("A", 0.1)]

    critique = "Step 1 is wrong. " + "x" * 1_000_000 + " So the answer is A."
    expert = scripted_chat(critic=json.dumps({"critique": critique, "verdict": "incorrect"}))
    config = CATTSConfig(
        n_samples=2, max_samples=2, max_expert_reply_chars=2_000_000, max_expert_text_chars=5_000
    )
    result = build_graph(ScriptedVLM(script), expert={"critic": expert}, config=config).invoke(
        {"image": image_path, "question": "Q"}
    )
    reflection = prompts[-1]
    assert "Step 1 is wrong." in reflection and "So the answer is A." in reflection
    assert len(reflection) < 10_000
    note = entries(result, "critic")[0]["reason"]
    assert re.search(r"critique cut from 10000\d\d to 5000 characters \(max_expert_text_chars\)", note)


class NoPlannerChat(ScriptedExpert):
    """A chat model that declares it plays only the Voter and the Critic, as the organism expert does."""

    supported_roles: ClassVar[tuple[str, ...]] = ("voter", "critic")


def test_an_expert_without_a_planner_is_never_asked_to_plan(image_path):
    vlm = waves_model([[boxed("A", 0.5), boxed("B", 1.0)]], reflection=boxed("A", 0.1))
    expert = NoPlannerChat(
        replies={
            "voter": json.dumps({"probabilities": [0.6, 0.4]}),
            "critic": json.dumps({"critique": "Fine.", "verdict": "correct"}),
        }
    )
    config = CATTSConfig(policy="paper", n_samples=2, max_samples=2)
    result = build_graph(vlm, expert=expert, config=config).invoke({"image": image_path, "question": "Q"})
    assert "planner" not in expert.roles_called()
    assert entries(result, "planner")[0]["reason"] == "no planner expert; default plan"
    with pytest.raises(ValueError, match="policy='expert' needs a planner expert"):
        build_graph(vlm, expert=expert, config=CATTSConfig(policy="expert"))


def test_the_organism_expert_declares_it_has_no_planner():
    from catts_graph.experts import resolve_experts
    from catts_graph.organism.expert import OrganismExpert

    assert OrganismExpert.supported_roles == ("voter", "critic")
    expert = NoPlannerChat(replies={})
    assert resolve_experts(expert) == {"planner": None, "voter": expert, "critic": expert}
    with pytest.raises(ValueError, match=r"expert\['planner'\]: NoPlannerChat does not play the planner"):
        resolve_experts({"planner": expert})


# --- expert nodes are native async under ainvoke / abatch (issue 10) -----------------------------


def test_abatch_awaits_every_expert_call_at_once(image_path, scripted_chat):
    """16 questions, each with a Voter and a Critic call: all 32 calls are in flight together, where
    sync nodes would queue them in the event loop's few executor threads."""
    expert = scripted_chat(
        voter=json.dumps({"probabilities": [0.5, 0.5]}),
        critic=json.dumps({"critique": "Look again.", "verdict": "unsure"}),
        planner=json.dumps({"modules": ["self_consistency", "self_reflection"], "reason": "r"}),
        latency=0.5,
    )
    vlm = ScriptedVLM.answering(boxed("A", 0.5), boxed("B", 1.0))
    graph = build_graph(vlm, expert=expert, config=CATTSConfig(n_samples=2, max_samples=2))
    inputs = [{"image": image_path, "question": f"Q{i}"} for i in range(16)]
    results = asyncio.run(graph.abatch(inputs))
    assert all(r["answer"] == "A" for r in results)
    calls = [c for c in expert.calls if c["role"] in ("voter", "critic")]
    assert len(calls) == 32
    assert max(c["start"] for c in calls) < min(c["end"] for c in calls), "expert calls queued"


def test_ainvoke_with_experts_and_a_checkpointer_matches_invoke(image_path, scripted_chat):
    from langgraph.checkpoint.memory import InMemorySaver

    replies = {
        "planner": json.dumps({"modules": ["self_consistency", "self_reflection"], "reason": "r"}),
        "voter": json.dumps({"probabilities": [0.3, 0.7]}),
        "critic": json.dumps({"critique": "Look again.", "verdict": "incorrect"}),
    }
    results = []
    for run in (lambda g, i, c: g.invoke(i, c), lambda g, i, c: asyncio.run(g.ainvoke(i, c))):
        vlm = waves_model([[boxed("A", 0.5), boxed("B", 1.0)]], reflection=boxed("B", 0.1))
        graph = build_graph(
            vlm,
            expert=scripted_chat(**replies),
            config=CATTSConfig(policy="paper", n_samples=2, max_samples=2),
            checkpointer=InMemorySaver(),
        )
        results.append(
            run(graph, {"image": image_path, "question": "Q"}, {"configurable": {"thread_id": "t"}})
        )
    sync, asynchronous = results
    assert asynchronous["answer"] == sync["answer"] == "B"
    assert asynchronous["scores"] == sync["scores"]
    assert modules(asynchronous) == modules(sync)


def test_the_vote_is_counted_once_per_wave(image_path, scripted_chat, monkeypatch):
    from catts_graph import scoring

    counted: list[int] = []
    tally = scoring.tally
    monkeypatch.setattr(
        scoring, "tally", lambda samples, config: counted.append(len(samples)) or tally(samples, config)
    )
    vlm = waves_model([[boxed("A", 0.5), boxed("B", 1.0)]], reflection=boxed("B", 0.1))
    expert = scripted_chat(
        voter=json.dumps({"probabilities": [0.4, 0.6]}),
        critic=json.dumps({"critique": "Look again.", "verdict": "incorrect"}),
        planner=json.dumps(
            {"modules": ["self_consistency", "self_reflection", "visual_self_check"], "reason": "r"}
        ),
    )
    config = CATTSConfig(policy="paper", n_samples=2, max_samples=2)
    result = build_graph(vlm, expert=expert, config=config).invoke({"image": image_path, "question": "Q"})
    assert {"voter", "self_reflection", "visual_self_check", "aggregate"} <= set(modules(result))
    assert counted == [2]  # by base_model; the reflected sample does not vote, so nothing recounts


def test_a_stored_tally_is_recounted_under_other_voting_settings():
    from catts_graph import scoring

    samples = [
        {"index": 0, "answer": "A", "nmlp": 0.5, "confidence": 0.6, "source": "sample"},
        {"index": 1, "answer": "B", "nmlp": 0.25, "confidence": 0.8, "source": "sample"},
    ]
    paper = CATTSConfig()
    state = {"samples": samples, "tally": scoring.stored_tally(samples, paper)}
    assert scoring.run_tally(state, paper) == scoring.tally(samples, paper)
    majority = CATTSConfig(weighting="majority")
    assert scoring.run_tally(state, majority).votes == {"A": 1.0, "B": 1.0}
    more = {**state, "samples": [*samples, {**samples[0], "index": 2}]}
    assert scoring.run_tally(more, paper).counts == {"A": 2, "B": 1}
    # A floor changes the weights, so the stored tally is counted again: 1 / max(0.25, 0.4) = 2.5.
    floored = CATTSConfig(nmlp_floor=0.4)
    assert scoring.run_tally(state, floored).votes == pytest.approx({"B": 2.5, "A": 2.0})


def test_the_input_channel_replaced_is_the_one_the_input_goes_through() -> None:
    """``with_storable_input`` replaces LangGraph's input channel (its internals): if LangGraph renames
    or reshapes it, this fails here rather than as a msgpack error in a checkpointer."""
    from langgraph.channels import EphemeralValue
    from langgraph.graph import START
    from PIL import Image

    from catts_graph.graph import StorableInput

    graph = build_graph(ScriptedVLM([]), config=CATTSConfig(n_samples=1))
    channel = graph.channels[START]
    assert type(channel) is StorableInput and isinstance(channel, EphemeralValue)
    assert (
        START in graph.input_channels
        if isinstance(graph.input_channels, list)
        else graph.input_channels == START
    )
    fresh = channel.copy()
    fresh.update([{"image": Image.new("RGB", (2, 2)), "images": [Image.new("RGB", (2, 2))], "question": "Q"}])
    stored = fresh.get()
    assert stored["image"].startswith("data:image/png;base64,") and stored["question"] == "Q"
    assert stored["images"][0].startswith("data:image/png;base64,")
