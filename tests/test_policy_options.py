"""The policy options of issue 23 (reflection boost by verdict, the Critic's target, no modules at
one sample): the rules on hand-built states, in the graph with counted expert calls, and the
measurement's arithmetic."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from catts_experiments.policy_options import (
    ARMS,
    LIBRARY_RULES,
    OPTIONS,
    choose,
    paired,
    render_markdown,
    summarise,
)
from catts_graph import CATTSConfig, build_graph, policy, scoring
from catts_graph.config import PAPER_TAU1, ConfigError
from catts_graph.experts import critique_verdict, parse_critique
from catts_graph.nodes.critic import leader_sample, least_confident_sample
from catts_graph.testing import Reply, ScriptCall, ScriptedVLM

ROOT = Path(__file__).resolve().parents[1]


def record(index: int, answer: str | None, nmlp: float, source: str = "sample") -> dict:
    return {
        "index": index,
        "text": f"reply {index} \\boxed{{{answer}}}",
        "answer": answer,
        "nmlp": nmlp,
        "confidence": math.exp(-nmlp),
        "source": source,
    }


def boxed(answer: str, nmlp: float) -> Reply:
    return Reply(f"\\boxed{{{answer}}}", -nmlp)


def scripted_model(samples: list[Reply], reflection: Reply) -> ScriptedVLM:
    def script(call: ScriptCall) -> list[Reply]:
        if "<critique>" in call.prompt:
            return [reflection]
        assert call.n == len(samples), f"asked for {call.n} samples, scripted {len(samples)}"
        return list(samples)

    return ScriptedVLM(script)


def entries(result: dict, module: str) -> list[dict]:
    return [entry for entry in result["trace"] if entry["module"] == module]


# -- 1. the reflection boost by the Critic's verdict ----------------------------------------------

# Weights 1/NMLP: A 2 + 2 = 4, B 4, C 1 (sum 9); C's sample (index 3) is the least confident.
SAMPLES = [record(0, "A", 0.5), record(1, "A", 0.5), record(2, "B", 0.25), record(3, "C", 1.0)]


def reflected_state(verdict: str, reflected: str = "C") -> dict:
    samples = [*SAMPLES, record(4, reflected, 0.1, source="reflection")]
    critique = {"text": f"Looks at C.\nVerdict: {verdict}", "sample": 3, "step": None, "verdict": verdict}
    return {"samples": samples, "critique": critique, "reflected": reflected}


@pytest.mark.parametrize("tau2", [0.5, 0.3])
def test_the_verdict_changes_the_reflected_answers_score_by_exactly_the_boost(tau2: float) -> None:
    config = CATTSConfig(reflection_boost="incorrect", tau2=tau2)
    after_incorrect = scoring.final_scores(reflected_state("incorrect"), config)
    after_correct = scoring.final_scores(reflected_state("correct"), config)
    after_unsure = scoring.final_scores(reflected_state("unsure"), config)
    assert after_incorrect["C"] - after_correct["C"] == pytest.approx(tau2)
    assert after_correct == after_unsure == pytest.approx({"A": 4 / 9, "B": 4 / 9, "C": 1 / 9})
    assert {a: s for a, s in after_incorrect.items() if a != "C"} == pytest.approx({"A": 4 / 9, "B": 4 / 9})


def test_the_papers_rule_boosts_whatever_the_verdict() -> None:
    config = CATTSConfig(reflection_boost="always")
    scores = {v: scoring.final_scores(reflected_state(v), config) for v in ("correct", "incorrect", "unsure")}
    assert scores["correct"] == scores["incorrect"] == scores["unsure"]
    assert scores["correct"]["C"] == pytest.approx(1 / 9 + 0.5)


def test_an_unboosted_new_answer_is_no_candidate() -> None:
    config = CATTSConfig(reflection_boost="incorrect")
    assert "D" not in scoring.final_scores(reflected_state("correct", reflected="D"), config)
    assert scoring.final_scores(reflected_state("incorrect", reflected="D"), config)["D"] == 0.5
    assert not scoring.reflection_boosted({"samples": SAMPLES}, config)  # nothing reflected


def test_the_critique_keeps_its_verdict() -> None:
    for verdict in ("correct", "incorrect", "unsure"):
        text = parse_critique(
            json.dumps({"critique": "Step 2 reads red.\nVerdict: correct", "verdict": verdict})
        )
        assert critique_verdict(text) == verdict
    assert critique_verdict("no verdict line") == "unsure"
    assert critique_verdict("Verdict: wrong") == "unsure"


@pytest.mark.parametrize(("verdict", "boost", "answer"), [("incorrect", True, "C"), ("correct", False, "A")])
def test_the_graph_boosts_the_reflection_only_after_an_incorrect_verdict(
    image_path, scripted_chat, verdict: str, boost: bool, answer: str
) -> None:
    model = scripted_model(
        [boxed("A", 0.5), boxed("A", 0.5), boxed("B", 0.25), boxed("C", 1.0)], boxed("C", 0.1)
    )
    expert = scripted_chat(
        voter=json.dumps({"probabilities": [0.4, 0.4, 0.2]}),
        critic=json.dumps({"critique": "Check the colour.", "verdict": verdict}),
    )
    config = CATTSConfig(  # the paper's Voter weight, so the boost decides
        policy="paper", n_samples=4, max_samples=4, reflection_boost="incorrect", tau1=PAPER_TAU1
    )
    result = build_graph(model, expert=expert, config=config).invoke(
        {"image": image_path, "question": "Which?"}
    )
    # S(A) = 4/9 + 0.5 * 0.4; S(C) = 1/9 + 0.5 * 0.2 (+ 0.5 when boosted).
    expected_c = 1 / 9 + 0.1 + (0.5 if boost else 0.0)
    assert result["scores"]["C"] == pytest.approx(expected_c)
    assert result["scores"]["A"] == pytest.approx(4 / 9 + 0.2)
    assert result["answer"] == answer
    critic = entries(result, "critic")[0]
    assert critic["inputs"]["verdict"] == verdict and critic["decision"].endswith(f"verdict {verdict}")
    reflection = entries(result, "self_reflection")[0]
    assert ("no boost" in reflection["reason"]) is not boost
    assert entries(result, "aggregate")[0]["inputs"]["reflection_boosted"] is boost


# -- 1b. the override: an incorrect verdict on the leader hands the lead to the reflection -------


def leader_state(verdict: str, criticised: int, reflected: str) -> dict:
    # Weights 1/NMLP: A 2 + 2 = 4, B 4, C 1; A leads B on its first appearance (tie in S and V).
    samples = [*SAMPLES, record(4, reflected, 0.1, source="reflection")]
    critique = {"text": "...", "sample": criticised, "step": None, "verdict": verdict}
    return {"samples": samples, "critique": critique, "reflected": reflected}


@pytest.mark.parametrize("tau2", [0.5, 0.2])
def test_an_incorrect_verdict_on_the_leader_hands_the_reflection_the_lead_by_tau2(tau2: float) -> None:
    config = CATTSConfig(reflection_boost="override", tau2=tau2)
    scores = scoring.final_scores(leader_state("incorrect", criticised=0, reflected="C"), config)
    # A leads at 4/9 (ties B, first seen); C moves to 4/9 + tau2, the others keep their votes.
    assert scores == pytest.approx({"A": 4 / 9, "B": 4 / 9, "C": 4 / 9 + tau2})
    new = scoring.final_scores(leader_state("incorrect", criticised=1, reflected="D"), config)
    assert new == pytest.approx({"A": 4 / 9, "B": 4 / 9, "C": 1 / 9, "D": 4 / 9 + tau2})


@pytest.mark.parametrize(
    ("verdict", "criticised", "reflected"),
    [
        ("correct", 0, "C"),  # the Critic agreed
        ("unsure", 0, "C"),
        ("incorrect", 3, "B"),  # the criticised answer (C) does not lead
        ("incorrect", 0, "A"),  # the reflection kept the leader's answer
    ],
)
def test_the_override_leaves_the_votes_alone_otherwise(verdict: str, criticised: int, reflected: str) -> None:
    config = CATTSConfig(reflection_boost="override")
    scores = scoring.final_scores(leader_state(verdict, criticised, reflected), config)
    assert scores == pytest.approx({"A": 4 / 9, "B": 4 / 9, "C": 1 / 9})


def test_the_override_margin_is_tau2_on_the_literal_scale() -> None:
    config = CATTSConfig(reflection_boost="override", score_scale="literal", tau2=0.5)
    scores = scoring.final_scores(leader_state("incorrect", criticised=0, reflected="C"), config)
    # Literal: S = V; A 4 leads (ties B, first seen); int(0.5 * 4 voters) = 2.
    assert scores == pytest.approx({"A": 4.0, "B": 4.0, "C": 6.0})


def test_override_leader_refuses_a_bad_margin() -> None:
    from catts_graph.voting import override_leader

    with pytest.raises(ValueError, match="margin"):
        override_leader({"A": 1.0}, {"A": 1.0}, criticised="A", replacement="B", margin=-1.0)


@pytest.mark.parametrize(("verdict", "answer"), [("incorrect", "C"), ("correct", "A")])
def test_the_graph_replaces_the_criticised_leader_after_an_incorrect_verdict(
    image_path, scripted_chat, verdict: str, answer: str
) -> None:
    model = scripted_model(
        [boxed("A", 0.5), boxed("A", 0.2), boxed("B", 0.25), boxed("C", 1.0)], boxed("C", 0.1)
    )
    expert = scripted_chat(
        voter=json.dumps({"probabilities": [0.5, 0.3, 0.2]}),
        critic=json.dumps({"critique": "Count again.", "verdict": verdict}),
    )
    config = CATTSConfig(
        policy="paper",
        n_samples=4,
        max_samples=4,
        reflection_boost="override",
        critic_target="leader",
        tau1=PAPER_TAU1,
    )
    result = build_graph(model, expert=expert, config=config).invoke(
        {"image": image_path, "question": "Which?"}
    )
    # Votes: A 2 + 5 = 7, B 4, C 1 (sum 12); S(A) = 7/12 + 0.5 * 0.5 leads; C takes S(A) + 0.5.
    s_a = 7 / 12 + 0.25
    assert result["scores"]["A"] == pytest.approx(s_a)
    expected_c = s_a + 0.5 if verdict == "incorrect" else 1 / 12 + 0.1
    assert result["scores"]["C"] == pytest.approx(expected_c)
    assert result["answer"] == answer
    assert entries(result, "critic")[0]["inputs"]["sample_answer"] == "A"
    reflection = entries(result, "self_reflection")[0]
    assert ("takes the lead" in reflection["reason"]) is (verdict == "incorrect")


def test_at_tau1_2_a_sure_voter_outweighs_the_whole_vote_and_a_hedging_one_does_not() -> None:
    from catts_graph.voting import final_scores, pick_answer

    votes = {"A": 3.0, "B": 1.0}  # shares 0.75 and 0.25; the self-check's winner is A
    sure, hedging = {"A": 0.0, "B": 1.0}, {"A": 0.45, "B": 0.55}
    # The paper's 0.5: S(A) = 0.75 + 0.5 (self-check) = 1.25 against S(B) = 0.25 + 0.5 = 0.75.
    paper = final_scores(votes, voter_probs=sure, self_check_winner="A", tau1=PAPER_TAU1)
    assert paper == pytest.approx({"A": 1.25, "B": 0.75}) and pick_answer(paper, votes)[0] == "A"
    # tau1 = 2: S(B) = 0.25 + 2 = 2.25 beats S(A) = 1.25, whatever the vote's margin (at most 1).
    default = CATTSConfig().tau1
    decided = final_scores(votes, voter_probs=sure, self_check_winner="A", tau1=default)
    assert decided == pytest.approx({"A": 1.25, "B": 2.25}) and pick_answer(decided, votes)[0] == "B"
    # A hedging Voter leaves the vote (and the self-check) to decide: 0.75 + 0.9 + 0.5 against 0.25 + 1.1.
    hedged = final_scores(votes, voter_probs=hedging, self_check_winner="A", tau1=default)
    assert hedged == pytest.approx({"A": 2.15, "B": 1.35}) and pick_answer(hedged, votes)[0] == "A"


# -- 2. the Critic's target ----------------------------------------------------------------------


def test_the_leader_sample_is_the_leading_answers_most_confident() -> None:
    # A: 1/0.5 + 1/0.2 = 7 leads B (4) and C (1); A's most confident sample is index 1.
    samples = [record(0, "A", 0.5), record(1, "A", 0.2), record(2, "B", 0.25), record(3, "C", 1.0)]
    tally = scoring.tally(samples, CATTSConfig())
    assert next(iter(tally.votes)) == "A"
    assert leader_sample(samples, tally)["index"] == 1
    assert least_confident_sample(samples)["index"] == 3
    assert leader_sample([], scoring.tally([], CATTSConfig())) is None


@pytest.mark.parametrize(("target", "criticised"), [("least_confident", 3), ("leader", 1)])
def test_the_critic_criticises_the_target_sample(
    image_path, scripted_chat, target: str, criticised: int
) -> None:
    model = scripted_model(
        [boxed("A", 0.5), boxed("A", 0.2), boxed("B", 0.25), boxed("C", 1.0)], boxed("A", 0.1)
    )
    expert = scripted_chat(
        voter=json.dumps({"probabilities": [0.5, 0.3, 0.2]}),
        critic=json.dumps({"critique": "Fine.", "verdict": "correct"}),
    )
    config = CATTSConfig(policy="paper", n_samples=4, max_samples=4, critic_target=target)
    result = build_graph(model, expert=expert, config=config).invoke(
        {"image": image_path, "question": "Which?"}
    )
    critic = entries(result, "critic")[0]
    assert critic["inputs"]["sample"] == criticised and critic["inputs"]["target"] == target
    answer = "A" if target == "leader" else "C"
    assert critic["inputs"]["sample_answer"] == answer
    (call,) = [c for c in expert.calls if c["role"] == "critic"]
    prompt = call["messages"][0].content
    text = (
        prompt
        if isinstance(prompt, str)
        else " ".join(b.get("text", "") for b in prompt if isinstance(b, dict))
    )
    assert f"<response>\n\\boxed{{{answer}}}\n</response>" in text
    (reflection,) = [c for c in model.calls if "<critique>" in c[1]]
    assert f"<previous_response>\n\\boxed{{{answer}}}" in reflection[1]


# -- 3. no modules at one sample -----------------------------------------------------------------


@pytest.mark.parametrize("policy_name", ["paper", "adaptive"])
def test_one_sample_calls_no_expert_with_the_option(image_path, scripted_chat, policy_name: str) -> None:
    def run(skip: bool) -> tuple[dict, list[str], int]:
        # Unsure enough that the adaptive fast path does not take it (confidence exp(-2) < 0.5).
        model = scripted_model([boxed("B", 2.0)], boxed("A", 0.1))
        expert = scripted_chat(
            planner=json.dumps({"modules": ["self_consistency", "self_reflection", "visual_self_check"]}),
            voter=json.dumps({"probabilities": [1.0]}),
            critic=json.dumps({"critique": "It is A.", "verdict": "incorrect"}),
        )
        config = CATTSConfig(
            policy=policy_name,
            n_samples=1,
            max_samples=1,
            skip_modules_at_one_sample=skip,  # type: ignore[arg-type]
            reflection_boost="always",  # the paper's boost: no module can move a lone sample's answer
        )
        result = build_graph(model, expert=expert, config=config).invoke(
            {"image": image_path, "question": "Which?"}
        )
        return result, expert.roles_called(), len(model.calls)  # samples, reflections, scorings

    skipped, skipped_roles, skipped_base_calls = run(True)
    ran, ran_roles, ran_base_calls = run(False)
    assert skipped_roles == [] and "expert_calls" not in skipped["usage"]
    assert skipped_base_calls == 1  # the one sample; no reflection, no self-check
    assert "critic" in ran_roles and ran["usage"]["expert_calls"] == len(ran_roles) >= 1
    assert ran_base_calls > 1
    # Nothing to vote on: the modules cannot move the answer (S(B) = 1 + 0, S(A) = 0.5 + 0.5 at most).
    assert skipped["answer"] == ran["answer"] == "B"
    assert [e["module"] for e in skipped["trace"]] == ["prepare", "base_model", "planner", "aggregate"]
    assert "skip_modules_at_one_sample" in entries(skipped, "planner")[0]["reason"]


@pytest.mark.parametrize("policy_name", ["paper", "adaptive"])
@pytest.mark.parametrize("verdict", ["incorrect", "correct"])
def test_under_the_override_one_sample_runs_the_critic_alone(
    image_path, scripted_chat, policy_name: str, verdict: str
) -> None:
    model = scripted_model([boxed("B", 2.0)], boxed("A", 0.1))
    expert = scripted_chat(
        planner=json.dumps({"modules": ["self_consistency", "self_reflection", "visual_self_check"]}),
        voter=json.dumps({"probabilities": [1.0]}),
        critic=json.dumps({"critique": "It is A.", "verdict": verdict}),
    )
    config = CATTSConfig(policy=policy_name, n_samples=1, max_samples=1)  # the defaults: override, leader
    result = build_graph(model, expert=expert, config=config).invoke(
        {"image": image_path, "question": "Which?"}
    )
    assert expert.roles_called() == ["critic"]  # no Planner, no Voter
    assert len(model.calls) == 2  # the sample and the reflection; no self-check scoring
    modules = [e["module"] for e in result["trace"]]
    assert modules == [
        "prepare",
        "base_model",
        "planner",
        "critic",
        "self_reflection",
        "planner",
        "aggregate",
    ]
    assert "only self_reflection runs" in entries(result, "planner")[0]["reason"]
    # The verdict on the lone (leading) sample decides: S(A) = S(B) + tau2 after 'incorrect'.
    assert result["answer"] == ("A" if verdict == "incorrect" else "B")
    assert result["scores"]["B"] == pytest.approx(1.0)


def situation(drawn: int) -> policy.Situation:
    tally = scoring.tally([record(i, "A", 0.5) for i in range(drawn)], CATTSConfig())
    return policy.Situation(
        tally=tally,
        drawn=drawn,
        done=frozenset(),
        disabled=frozenset(),
        score_margin=1.0,
        n_candidates=1,
        has_critic=True,
    )


def test_one_sample_only_when_no_more_samples_can_come() -> None:
    on = CATTSConfig(skip_modules_at_one_sample=True, n_samples=1)
    assert policy.one_sample(situation(1), on.replace(policy="paper")) is not None  # paper draws N only
    assert policy.one_sample(situation(1), on) is None  # adaptive: the budget allows another wave
    assert policy.one_sample(situation(1), on.replace(max_samples=1)).route == "critic"  # type: ignore[union-attr]
    paper_boost = on.replace(max_samples=1, reflection_boost="always")
    assert policy.one_sample(situation(1), paper_boost).route == "aggregate"  # type: ignore[union-attr]
    no_critic = dataclasses.replace(situation(1), has_critic=False)
    assert policy.one_sample(no_critic, on.replace(max_samples=1)).route == "aggregate"  # type: ignore[union-attr]
    assert policy.one_sample(situation(2), on.replace(policy="paper", n_samples=2)) is None
    off = CATTSConfig(policy="paper", n_samples=1, skip_modules_at_one_sample=False)
    assert policy.one_sample(situation(1), off) is None


# -- the fields ----------------------------------------------------------------------------------


def test_the_fields_default_to_what_validation_chose_and_reject_other_values() -> None:
    # The options validation adopted (docs/organism/policy-options.md): the override of the leader
    # (two fields) and no modules at one sample; the single-field options kept the paper's rules.
    config = CATTSConfig()
    assert (config.reflection_boost, config.critic_target, config.skip_modules_at_one_sample) == (
        "override",
        "leader",
        True,
    )
    chosen = json.loads((ROOT / "docs" / "organism" / "policy-options.json").read_text())["chosen"]
    defaults = {
        name: cell["default"] for name, cell in chosen.items() if not isinstance(cell["default"], dict)
    }
    for cell in chosen.values():  # an adopted option of several fields sets each of them
        if isinstance(cell["default"], dict) and cell["adopted"]:
            defaults.update(cell["default"])
    assert defaults == {
        "reflection_boost": config.reflection_boost,
        "critic_target": config.critic_target,
        "skip_modules_at_one_sample": config.skip_modules_at_one_sample,
        "tau3": config.tau3,  # the tie-break was not adopted: the paper's 0.5
        "tau1": config.tau1,  # the Voter decides when it is sure: 2.0
    }
    assert (config.tau1, config.tau3) == (2.0, 0.5)
    # The arm that measures the library as shipped at one sample runs exactly its defaults.
    assert ARMS["defaults@N=1"].changes == {name: getattr(config, name) for name in LIBRARY_RULES}
    with pytest.raises(ConfigError, match="reflection_boost"):
        CATTSConfig(reflection_boost="never")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="critic_target"):
        CATTSConfig(critic_target="random")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="skip_modules_at_one_sample"):
        CATTSConfig(skip_modules_at_one_sample=1)  # type: ignore[arg-type]
    env = {
        "CATTS_REFLECTION_BOOST": "incorrect",
        "CATTS_CRITIC_TARGET": "leader",
        "CATTS_SKIP_MODULES_AT_ONE_SAMPLE": "false",
    }
    assert CATTSConfig.from_env(env) == CATTSConfig(
        reflection_boost="incorrect", critic_target="leader", skip_modules_at_one_sample=False
    )


# -- the measurement's arithmetic ----------------------------------------------------------------


def item_row(k: int, correct: dict[str, bool], calls: dict[str, int] | None = None) -> dict:
    arms = {}
    for name in ARMS:
        right = correct.get(name, correct["paper"])
        arms[name] = {
            "answer": "x" if right else "y",
            "correct": right,
            "expert_calls": (calls or {}).get(name, 2),
            "tokens": 100,
            "verdict": "correct" if k % 2 else "incorrect",
            "criticised": k % 3,
            "reflected": "x",
            "boosted": True,
        }
    return {
        "item": f"i{k}",
        "kind": "count",
        "arms": arms,
        "majority": True,
        "first_sample": k % 2 == 0,
        "sample_mean": 0.5,
    }


def test_paired_difference_counts_fixed_and_broken_items() -> None:
    result = paired([True, True, False, True], [True, False, False, False], n_boot=200)
    assert result["difference"] == pytest.approx(50.0)
    assert (result["fixed"], result["broken"]) == (2, 0)
    assert result["ci"][0] <= 50.0 <= result["ci"][1]
    assert paired([True] * 5, [True] * 5, n_boot=50)["ci"] == [0.0, 0.0]


def test_the_summary_and_the_choice_follow_the_stated_rule() -> None:
    # The leader option fixes 30 of 40 items the paper misses; the verdict option changes nothing;
    # skipping at one sample changes no answer and saves the calls.
    rows = [
        item_row(
            k,
            {
                "paper": k >= 30,
                "critic_target=leader": True,
                "paper@N=1": k % 2 == 0,
                "skip_modules_at_one_sample": k % 2 == 0,
            },
            calls={"skip_modules_at_one_sample": 0, "paper@N=1": 1},
        )
        for k in range(40)
    ]
    summary = summarise(rows, n_boot=200)
    assert summary["items"] == 40
    assert summary["arms"]["paper"]["accuracy"] == pytest.approx(25.0)
    assert summary["options"]["critic_target"]["difference"] == pytest.approx(75.0)
    assert summary["options"]["critic_target"]["fixed"] == 30
    assert summary["options"]["reflection_boost"]["difference"] == 0.0
    assert summary["options"]["skip_modules_at_one_sample"]["answers_changed"] == 0
    assert summary["arms"]["skip_modules_at_one_sample"]["expert_calls"] == 0.0
    assert summary["critic_verdicts"]["correct"]["items"] == 20
    # Against the same samples without the expert: majority (right on every item here) at N = 8,
    # the first sample (right on the even items, as paper@N=1 is) at N = 1.
    versus = summary["versus_references"]
    assert versus["paper"]["reference"] == "majority@N=8"
    assert versus["paper"]["difference"] == pytest.approx(-75.0) and versus["paper"]["broken"] == 30
    assert versus["critic_target=leader"]["difference"] == 0.0
    assert versus["paper@N=1"]["reference"] == "first sample" and versus["paper@N=1"]["difference"] == 0.0
    assert set(versus) == set(ARMS)
    assert set(OPTIONS) == set(summary["options"])
    chosen = choose(summary)
    assert chosen["critic_target"] == {
        "default": "leader",
        "adopted": True,
        "why": chosen["critic_target"]["why"],
    }
    assert chosen["reflection_boost"]["default"] == "always" and not chosen["reflection_boost"]["adopted"]
    assert chosen["skip_modules_at_one_sample"]["default"] is True
    assert chosen["reflection_override"]["default"] == {
        "reflection_boost": "always",
        "critic_target": "least_confident",
    }
    # The tie-break is paired with the override arm, not with the paper's.
    assert summary["options"]["tau3"]["paper_arm"] == "reflection_override"
    assert chosen["tau3"] == {"default": 0.5, "adopted": False, "why": chosen["tau3"]["why"]}
    assert summary["options"]["tau1"]["paper_arm"] == "reflection_override"
    assert chosen["tau1"] == {"default": 0.5, "adopted": False, "why": chosen["tau1"]["why"]}
    result = {"level": 4, "seed": 0, "pool_n": 8, "n_boot": 200, "validation": summary, "test": summary}
    result["chosen"] = chosen
    text = render_markdown(result, "catts measure policy-options --out x")
    assert text == render_markdown(result, "catts measure policy-options --out x")
    assert "catts measure policy-options --out x" in text and "+75.0" in text


def test_the_measurement_runs_on_the_organisms_paired_and_resumes(tmp_path) -> None:
    from catts_experiments.policy_options import policy_options
    from catts_graph.organism import organism_model

    models = {"base": organism_model("base"), "expert": organism_model("expert")}
    first = policy_options(validation=2, test=1, n_boot=20, run_dir=tmp_path, log=lambda line: None, **models)
    rows = [json.loads(line) for line in (tmp_path / "validation.jsonl").read_text().splitlines()]
    assert [row["item"] for row in rows] == ["validation-0-level4", "validation-1-level4"]
    for row in rows:
        arms = row["arms"]
        assert arms["skip_modules_at_one_sample"]["expert_calls"] == 0
        assert arms["skip_modules_at_one_sample"]["answer"] == arms["paper@N=1"]["answer"]
        assert arms["paper@N=1"]["correct"] == row["first_sample"]  # N = 1 answers its one sample
    # Read back from the rows (no model call would give other numbers: everything is seeded or greedy).
    again = policy_options(validation=2, test=1, n_boot=20, run_dir=tmp_path, log=lambda line: None, **models)
    assert again == first
    assert first["validation"]["items"] == 2 and first["test"]["items"] == 1
    # Rows of a run from before an arm was added: that arm alone runs, on the same pool (the
    # pairing check holds), and gives what a run from scratch gave; the item's new line is read back.
    path = tmp_path / "test.jsonl"
    (row,) = [json.loads(line) for line in path.read_text().splitlines()]
    measured = row["arms"].pop("self_check_tiebreak")
    path.write_text(json.dumps(row, sort_keys=True) + "\n")
    resumed = policy_options(
        validation=2, test=1, n_boot=20, run_dir=tmp_path, log=lambda line: None, **models
    )
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == 2 and lines[-1]["arms"]["self_check_tiebreak"] == measured
    assert resumed == first


@pytest.mark.parametrize(
    ("name", "arguments"),
    [
        ("policy-options", "--validation 600 --test 1200"),
        ("policy-options-seed1", "--validation 200 --test 600 --seed 1"),
    ],
)
def test_the_committed_tables_render_from_their_json_byte_for_byte(name: str, arguments: str) -> None:
    """docs/organism/policy-options*.md is what the renderer writes from the stored JSON (whatever
    order the JSON keeps its keys in), with the command that regenerates both."""
    docs = ROOT / "docs" / "organism"
    result = json.loads((docs / f"{name}.json").read_text())
    text = (docs / f"{name}.md").read_text()
    command = f"catts measure policy-options {arguments} --threads 1 --out docs/organism/{name}"
    assert f"```bash\n{command}\n```" in text
    assert render_markdown(result, command) == text
    assert set(result["chosen"]) == set(OPTIONS)
