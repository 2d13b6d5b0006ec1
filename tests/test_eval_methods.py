"""The evaluation methods against hand-computed pools, and CA-TTS through the pool against the graph."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from catts_graph import CATTSConfig, build_graph
from catts_graph.config import PAPER_REFLECTION
from catts_graph.eval import methods as M
from catts_graph.models.base import Sample, SamplingParams
from catts_graph.models.replay import ReplayVLM
from catts_graph.testing import Reply, ScriptCall, ScriptedVLM

PARAMS = SamplingParams(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=64, seed=5, top_logprobs=20)


def record(
    index: int,
    answer: str | None,
    *,
    nmlp: float | None = 0.5,
    deepconf: dict[str, float] | None = None,
    lows: list[list[float]] | None = None,
    n_tokens: int = 10,
) -> dict[str, Any]:
    """A pool record as draw_pool writes it; seconds are charged at 0.01 s per token."""
    return {
        "index": index,
        "wave": 0,
        "source": "sample",
        "image": "original",
        "text": f"r{index} {answer}",
        "answer": answer,
        "n_tokens": n_tokens,
        "finish_reason": "stop",
        "nmlp": nmlp,
        "confidence": 0.0 if nmlp is None else math.exp(-nmlp),
        "nmlp_answer": None,
        "steps": [],
        "deepconf": deepconf,
        "seconds": 0.01 * n_tokens,
        "deepconf_lows": lows or [],
    }


def pool_of(records: list[dict[str, Any]], greedy: dict[str, Any] | None = None) -> M.SamplePool:
    return M.SamplePool(prompt="p", params=PARAMS, records=records, greedy=greedy)


def dc(**values: float) -> dict[str, float]:
    base = {"mean": 1.0, "tail": 1.0, "bottom_percent": 1.0, "lowest_group": 1.0, "mean_entropy": 0.0}
    return {**base, **values}


# -- names ------------------------------------------------------------------------------------------


def test_every_method_name_parses_and_others_are_rejected():
    names = M.method_names()
    assert len(names) == 2 + 8 + 1 + 3 + 6
    for name in names:
        assert M.parse_method(name).name == name
    assert M.parse_method("deepconf_tail+eta") == M.MethodSpec("deepconf_tail+eta", "deepconf", "tail", True)
    assert M.parse_method("catts_paper-no_voter_boost").ablation == "no_voter_boost"
    for bad in ("deepconf_median", "deepconf_tail+beta", "catts_adaptive-no_voter_boost", "catts_fast", "mv"):
        with pytest.raises(ValueError, match="valid methods: greedy, majority"):
            M.parse_method(bad)


# -- offline methods on hand-made pools -------------------------------------------------------------


def test_majority_votes_over_the_first_n_samples_and_charges_their_cost():
    pool = pool_of([record(i, a, n_tokens=10 + i) for i, a in enumerate("ABBAA")])
    three = M.majority(pool, 3)
    assert (three.answer, three.confidence, three.tokens) == ("B", pytest.approx(2 / 3), 10 + 11 + 12)
    assert three.seconds == pytest.approx(0.33, abs=0.01)
    assert three.response == "r1 B"  # the most confident (first, on equal NMLP) sample saying B
    five = M.majority(pool, 5)
    assert (five.answer, five.confidence, five.tokens) == ("A", pytest.approx(3 / 5), 60)
    with pytest.raises(ValueError, match="N=6 needs 6 samples but the pool holds 5"):
        M.majority(pool, 6)


def test_deepconf_offline_weights_by_its_confidence_and_filters_the_top_eta():
    pool = pool_of(
        [
            record(0, "A", deepconf=dc(tail=1.0, lowest_group=3.0)),
            record(1, "B", deepconf=dc(tail=5.0, lowest_group=1.0)),
            record(2, "A", deepconf=dc(tail=2.0, lowest_group=3.0)),
            record(3, "C", deepconf=dc(tail=0.5, lowest_group=1.0)),
        ]
    )
    # tail: V(A) = 3, V(B) = 5, V(C) = 0.5.
    tail = M.deepconf_offline(pool, 4, weighting="tail")
    assert (tail.answer, tail.confidence) == ("B", pytest.approx(5 / 8.5))
    # eta = 0.5: keep tail >= quantile([0.5, 1, 2, 5], 0.5) = 1.5 -> B (5) and A (2).
    filtered = M.deepconf_offline(pool, 4, weighting="tail", top_eta=0.5)
    assert (filtered.answer, filtered.confidence) == ("B", pytest.approx(5 / 7))
    # lowest_group: V(A) = 6, V(B) = V(C) = 1.
    lowest = M.deepconf_offline(pool, 4, weighting="lowest_group")
    assert (lowest.answer, lowest.confidence) == ("A", pytest.approx(6 / 8))
    assert lowest.tokens == 40
    # Only the first N samples count: N = 1 is sample 0 alone.
    assert M.deepconf_offline(pool, 1, weighting="tail").answer == "A"


def test_greedy_is_the_temperature_zero_record():
    greedy = record(9, "C", nmlp=0.2, n_tokens=7) | {"source": "greedy"}
    result = M.greedy(pool_of([record(0, "A")], greedy=greedy))
    assert (result.answer, result.confidence, result.tokens) == ("C", pytest.approx(math.exp(-0.2)), 7)
    with pytest.raises(ValueError, match="no greedy response"):
        M.greedy(pool_of([record(0, "A")]))


def test_online_lows_are_the_running_minimum_of_the_group_confidence():
    # Token confidence C_t = -mean(top log-probs) = 1, 3, 2, 0, 5.
    tops = [[-1.0], [-3.0], [-2.0], [0.0], [-5.0]]
    sample = Sample(token_ids=[1] * 5, logprobs=[t[0] for t in tops], text="x", top_logprobs=tops)
    # window 2: groups (ending at tokens 2, 3, 4, 5) = 2, 2.5, 1, 2.5 -> lows at tokens 2 and 4.
    lows = M.online_lows(sample, window=2)
    assert lows == [[2, 2.0], [4, 1.0]]
    assert M.online_stop({"deepconf_lows": lows}, 1.5) == 4
    assert M.online_stop({"deepconf_lows": lows}, 2.5) == 2
    assert M.online_stop({"deepconf_lows": lows}, 0.5) is None
    # A trace shorter than the window has one group over all of it, known at its end.
    assert M.online_lows(sample, window=10) == [[5, pytest.approx(11 / 5)]]


def test_draw_pool_online_lows_use_the_configured_window_and_stop_inside_a_trace(item_input):
    """The pool's lows come from ``deepconf_window``, the window of the offline confidences too, so a
    trace shorter than DeepConf's 2048 can be stopped before its end."""
    # C_t with k = 1 (the sampled token is the top-1): 4, 4, 1, 1, 2, 2, 2, 2.
    conf = [4.0, 4.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0]
    trace = Sample(
        token_ids=[3] * 8, logprobs=[-c for c in conf], text="x", top_logprobs=[[-c] for c in conf]
    )

    def lows(window: int) -> tuple[list[list[float]], float]:
        config = CATTSConfig(deepconf_window=window, deepconf_tail=window)
        pool = M.draw_pool(
            prefix_model("A"), item_input, n=1, config=config, seed=0, greedy=False, recorded=[trace]
        )
        (record,) = pool.records
        return record["deepconf_lows"], record["deepconf"]["lowest_group"]

    # Groups of 2, known after 2..8 tokens: 4, 2.5, 1, 1.5, 2, 2, 2 -> record lows at tokens 2, 3, 4.
    assert lows(2) == ([[2, 4.0], [3, 2.5], [4, 1.0]], 1.0)
    # A threshold of 3 stops the trace after 3 of its 8 tokens.
    assert M.online_stop({"deepconf_lows": lows(2)[0]}, 3.0) == 3
    # DeepConf's 2048: one group, the mean 18 / 8, known only at the end; nothing saved.
    assert lows(2048) == ([[8, 2.25]], 2.25)
    assert M.online_stop({"deepconf_lows": lows(2048)[0]}, 3.0) == 8


def test_deepconf_online_hand_computed():
    pool = pool_of(
        [
            # warm-up (N = 8 -> ceil(8 / 4) = 2 traces): lowest-group 4.0 and 6.0 -> s = 4 + 0.9 * 2 = 5.8
            record(0, "B", deepconf=dc(lowest_group=4.0), lows=[[20, 4.0]], n_tokens=20),
            record(1, "A", deepconf=dc(lowest_group=6.0), lows=[[20, 6.0]], n_tokens=20),
            # never below s: runs to its end (20 tokens) and votes with 6.5
            record(2, "B", deepconf=dc(lowest_group=6.5), lows=[[5, 7.0], [9, 6.5]], n_tokens=20),
            # stopped at token 7 (5.0 < 5.8), dropped
            record(3, "B", deepconf=dc(lowest_group=5.0), lows=[[5, 6.0], [7, 5.0]], n_tokens=20),
            # stopped at its first full window (token 5)
            record(4, "C", deepconf=dc(lowest_group=5.0), lows=[[5, 5.0]], n_tokens=20),
            # shorter than the window: one group over the whole trace, 9.0 >= s: votes
            record(5, "A", deepconf=dc(lowest_group=9.0), lows=[[10, 9.0]], n_tokens=10),
            # stopped at token 12
            record(6, "B", deepconf=dc(lowest_group=3.0), lows=[[5, 6.2], [12, 3.0]], n_tokens=20),
            # an empty response: nothing to stop, nothing to vote with
            record(7, None, nmlp=None, n_tokens=0),
        ]
    )
    result = M.deepconf_online(pool, 8)
    # Voters: warm-up A (6.0 >= 5.8), B (6.5), A (9.0) -> V(A) = 15, V(B) = 6.5.
    assert result.answer == "A"
    assert result.confidence == pytest.approx(15 / 21.5)
    assert result.tokens == 20 + 20 + 20 + 7 + 5 + 10 + 12 + 0
    assert result.seconds == pytest.approx(0.94, abs=0.05)  # plus the vote's own compute time
    assert result.trace[0]["inputs"] == {
        "warmup": 2,
        "threshold": pytest.approx(5.8),
        "stopped": 3,
        "voters": 3,
    }
    # DeepConf-high (10th percentile): s = 4.2; nothing later is stopped but record 6 (3.0 at token 12).
    high = M.deepconf_online(pool, 8, percentile=10)
    assert high.trace[0]["inputs"]["stopped"] == 1
    assert high.tokens == 20 * 5 + 10 + 12
    with pytest.raises(ValueError, match="warmup must be in"):
        M.deepconf_online(pool, 4, warmup=5)


# -- the pool and the graph -------------------------------------------------------------------------


def boxed(answer: str, nmlp: float) -> Reply:
    return Reply(f"so \\boxed{{{answer}}}", -nmlp)


def prefix_model(answers: str, *, reflection: Reply | None = None, scorer=None) -> ScriptedVLM:
    """Sample i of an answer-prompt call is ``answers[i]`` whatever n is (TransformersVLM's prefix
    property); a reflection prompt gets ``reflection``; greedy gets the first answer."""

    def script(call: ScriptCall) -> list[Reply]:
        if "<critique>" in call.prompt:
            assert reflection is not None
            return [reflection] * call.n
        if call.temperature == 0:
            return [boxed(answers[0], 0.05)] * call.n
        return [boxed(answers[i], 0.1 * (i + 1)) for i in range(call.n)]

    return ScriptedVLM(script, scorer=scorer)


def expert_replies(plan: list[str], voter: list[float] | None = None) -> dict[str, Any]:
    def vote(messages, attempt):
        count = int(messages[0].text.split("with exactly ")[1].split()[0])
        return json.dumps({"probabilities": (voter or [1 / count] * count)[:count]})

    return {
        "planner": json.dumps({"modules": plan, "reason": "r"}),
        "voter": vote,
        "critic": json.dumps({"critique": "Step 1 misreads it.", "verdict": "incorrect"}),
    }


PAPER = ["self_consistency", "self_reflection", "visual_self_check"]


@pytest.fixture
def item_input(image_path):
    return {"image": image_path, "question": "Which?", "options": ["red", "green", "blue"]}


def test_draw_pool_draws_once_at_the_largest_n_and_the_greedy_separately(item_input):
    vlm = prefix_model("ABAC")
    config = CATTSConfig(max_new_tokens=64)
    pool = M.draw_pool(vlm, item_input, n=4, config=config, seed=11, greedy=True)
    assert [call[2] for call in vlm.calls] == [4, 1]
    assert [r["answer"] for r in pool.records] == list("ABAC")
    assert [r["index"] for r in pool.records] == [0, 1, 2, 3]
    assert pool.greedy["source"] == "greedy" and pool.greedy["answer"] == "A"
    assert pool.params == PARAMS.replace(seed=11)
    assert all(r["deepconf"] and r["deepconf_lows"] for r in pool.all_records())
    assert pool.tokens == sum(r["n_tokens"] for r in pool.all_records())
    # Read back from the store: the offline methods work, the graph ones need the raw samples.
    stored = M.SamplePool.from_records(
        json.loads(json.dumps(pool.all_records())), prompt=pool.prompt, params=pool.params
    )
    assert M.majority(stored, 4).answer == M.majority(pool, 4).answer == "A"
    with pytest.raises(ValueError, match="raw samples"):
        M.CATTSGraphs(vlm, None, config).run(stored, 4, item_input, policy="paper")


def test_draw_pool_takes_recorded_responses_instead_of_drawing(item_input):
    vlm = prefix_model("ABCD")
    config = CATTSConfig(max_new_tokens=64)
    drawn = M.draw_pool(vlm, item_input, n=4, config=config, seed=0, greedy=False)
    recorded = M.draw_pool(vlm, item_input, n=3, config=config, seed=0, greedy=False, recorded=drawn.raw)
    assert len(vlm.calls) == 1, "recorded responses are not drawn again"
    assert recorded.raw == drawn.raw[:3] and recorded.seconds == 0.0
    assert [r["answer"] for r in recorded.records] == ["A", "B", "C"]
    with pytest.raises(ValueError, match="N=5 needs 5 responses but 4 are recorded"):
        M.draw_pool(vlm, item_input, n=5, config=config, seed=0, greedy=False, recorded=drawn.raw)


def test_replay_serves_answer_prompts_from_the_pool_and_passes_the_rest(item_input):
    vlm = prefix_model("ABCD", reflection=boxed("D", 0.1))
    pool = M.draw_pool(vlm, item_input, n=4, config=CATTSConfig(max_new_tokens=64), seed=0, greedy=False)
    replay = ReplayVLM(vlm)
    with replay.serving(pool.raw, prompt=pool.prompt, params=pool.params) as served:
        first = replay.sample([], pool.prompt, 2, temperature=1.0, max_new_tokens=64, seed=0)
        second = replay.sample([], pool.prompt, 1, PARAMS.replace(seed=1, top_logprobs=0))
        assert [s.text for s in first + second] == [r["text"] for r in pool.records[:3]]
        assert served == [0, 1, 2]
        assert len(vlm.calls) == 1  # only the pool's own draw reached the model
        replay.sample([], "<critique> again", 1, temperature=0.0)
        assert len(vlm.calls) == 2
        with pytest.raises(ValueError, match="were drawn with"):
            replay.sample([], pool.prompt, 1, temperature=0.7, max_new_tokens=64)
        with pytest.raises(ValueError, match="were drawn with"):
            replay.sample([], pool.prompt, 1, max_new_tokens=64, top_logprobs=21)
        with pytest.raises(ValueError, match="only 4 are served"):
            replay.sample([], pool.prompt, 2, temperature=1.0, max_new_tokens=64)
    # Outside serving() every call is the model's.
    replay.sample([], pool.prompt, 1, temperature=1.0, max_new_tokens=64)
    assert len(vlm.calls) == 3


def test_catts_through_the_pool_equals_the_graph_run_on_the_model(item_input, scripted_chat):
    def model():
        return prefix_model("ABBAC", reflection=boxed("B", 0.05), scorer=lambda images, prompt, text: -1.0)

    config = CATTSConfig(max_new_tokens=64)
    vlm = model()
    pool = M.draw_pool(vlm, item_input, n=5, config=config, seed=3, greedy=False)
    pooled_expert = scripted_chat(**expert_replies(PAPER, [0.5, 0.3, 0.2]))
    via_pool = M.CATTSGraphs(vlm, pooled_expert, config).run(pool, 4, item_input, policy="paper")

    direct_expert = scripted_chat(**expert_replies(PAPER, [0.5, 0.3, 0.2]))
    direct_config = config.replace(policy="paper", n_samples=4, max_samples=4, seed=3)
    direct_vlm = model()
    direct = build_graph(direct_vlm, expert=direct_expert, config=direct_config).invoke(dict(item_input))

    assert via_pool.answer == direct["answer"] == "B"
    assert via_pool.confidence == pytest.approx(direct["confidence"])
    assert via_pool.tokens == direct["usage"]["generated_tokens"]
    assert via_pool.expert_calls == direct["usage"]["expert_calls"] == 3
    assert via_pool.modules == ["self_consistency", "critic", "voter", "self_reflection", "visual_self_check"]
    assert [e["module"] for e in via_pool.trace] == [e["module"] for e in direct["trace"]]
    # The graph's first wave came from the pool: the model saw the pool draw, the reflection and the
    # two self-check scoring passes, and no second answer-prompt call.
    assert [c[0] for c in vlm.calls] == ["sample", "sample", "score", "score"]
    assert vlm.calls[1][1].count("<critique>") >= 1


def test_adaptive_budget_takes_later_waves_from_the_pool(item_input):
    vlm = prefix_model("ABABAAAA")
    config = CATTSConfig(max_new_tokens=64, n_samples=2, wave_size=2, contested_share=0.8)
    pool = M.draw_pool(vlm, item_input, n=8, config=config, seed=0, greedy=False)
    result = M.CATTSGraphs(vlm, None, config).run(pool, 6, item_input, policy="adaptive")
    # Waves of 2 (weights 1 / NMLP): A B -> share(A) 0.67; A B -> 0.64; A A -> 0.69, all contested
    # (< 0.8) until the budget of 6 is spent.
    assert result.modules == ["more_samples", "self_consistency"]
    assert result.tokens == sum(r["n_tokens"] for r in pool.records[:6])
    assert len(vlm.calls) == 1  # every wave came from the pool's one draw
    assert result.answer == "A"


def test_module_ablations_run_the_paper_plan_without_the_module(item_input, scripted_chat):
    plan = ["visual_self_check", "self_consistency", "self_reflection"]
    expert = scripted_chat(**expert_replies(plan))
    vlm = prefix_model("ABA", reflection=boxed("A", 0.05))
    config = CATTSConfig(max_new_tokens=64)
    pool = M.draw_pool(vlm, item_input, n=3, config=config, seed=0, greedy=False)
    graphs = M.CATTSGraphs(vlm, expert, config)
    ran = {}
    for ablation in M.MODULE_ABLATIONS:
        spec = M.parse_method(f"catts_paper-{ablation}")
        ran[ablation] = M.run_method(spec, pool, 3, item_input, graphs=graphs)
    assert expert.roles_called().count("planner") == 3, (
        "each ablation is a whole run, its Planner call included"
    )
    assert ran["no_self_consistency"].modules == ["visual_self_check", "critic", "self_reflection"]
    assert ran["no_self_reflection"].modules == ["visual_self_check", "self_consistency", "voter"]
    assert ran["no_visual_self_check"].modules == ["self_consistency", "critic", "voter", "self_reflection"]
    # Expert calls: the Planner's plus the modules' own.
    assert [ran[a].expert_calls for a in M.MODULE_ABLATIONS] == [2, 2, 3]
    planner = [e for e in ran["no_self_reflection"].trace if e["module"] == "planner"]
    assert planner[0]["expert_calls"][0]["role"] == "planner"
    assert any("skipped self_reflection (disabled)" in e["reason"] for e in planner)


def test_module_ablation_without_a_planner_uses_the_default_order(item_input):
    vlm = prefix_model("AB")
    pool = M.draw_pool(vlm, item_input, n=2, config=CATTSConfig(max_new_tokens=64), seed=0, greedy=False)
    graphs = M.CATTSGraphs(vlm, None, CATTSConfig(max_new_tokens=64))
    result = graphs.run(pool, 2, item_input, policy="paper", ablation="no_self_consistency")
    assert result.modules == ["visual_self_check"]
    assert result.expert_calls == 0


def test_boost_ablation_sets_its_tau_to_zero_and_still_runs_the_module(item_input, scripted_chat):
    # V(A) = 2 * 1/0.1 ... samples A (0.1), B (0.2), A (0.3): weights 10, 5, 3.33 -> V(A) = 13.33, V(B) = 5.
    vlm = prefix_model("ABA", reflection=boxed("B", 0.05))
    config = CATTSConfig(max_new_tokens=64, tau1=0.5, tau2=1.0, tau3=0.5, **PAPER_REFLECTION)
    pool = M.draw_pool(vlm, item_input, n=3, config=config, seed=0, greedy=False)

    def run(method: str) -> M.MethodResult:
        graphs = M.CATTSGraphs(vlm, scripted_chat(**expert_replies(PAPER, [0.5, 0.5])), config)
        return M.run_method(M.parse_method(method), pool, 3, item_input, graphs=graphs)

    paper, ablated = run("catts_paper"), run("catts_paper-no_reflection_boost")
    share_a, share_b = 13.333333 / 18.333333, 5 / 18.333333
    # Self-check ties (the scorer is constant): no tau3. Paper: S(B) = share_b + 0.25 + 1 > S(A).
    assert paper.answer == "B"
    assert paper.confidence == pytest.approx((share_b + 1.25) / (share_a + share_b + 0.5 + 1.0), rel=1e-4)
    assert ablated.answer == "A"
    assert ablated.confidence == pytest.approx((share_a + 0.25) / (share_a + share_b + 0.5), rel=1e-4)
    assert "self_reflection" in ablated.modules and ablated.expert_calls == paper.expert_calls


def test_one_compiled_graph_serves_concurrent_items_each_from_its_own_pool(image_path):
    from concurrent.futures import ThreadPoolExecutor

    def script(call: ScriptCall) -> list[Reply]:
        letter = "A" if "first" in call.prompt else "C"
        return [boxed(letter if i != 1 else "B", 0.1 * (i + 1)) for i in range(call.n)]

    vlm = ScriptedVLM(script, latency=0.05)
    config = CATTSConfig(max_new_tokens=64)
    inputs = [
        {"image": image_path, "question": f"The {which} question?", "options": ["a", "b", "c"]}
        for which in ("first", "second") * 4
    ]
    pools = [M.draw_pool(vlm, i, n=3, config=config, seed=k, greedy=False) for k, i in enumerate(inputs)]
    graphs = M.CATTSGraphs(vlm, None, config)
    with ThreadPoolExecutor(max_workers=8) as executor:
        results = list(executor.map(lambda k: graphs.run(pools[k], 3, inputs[k], policy="paper"), range(8)))
    assert [r.answer for r in results] == ["A", "C"] * 4
    assert graphs._graph() is graphs._graph()  # one compiled graph for every item and thread
    assert sum(call[0] == "sample" for call in vlm.calls) == 8, "no run drew samples of its own"
