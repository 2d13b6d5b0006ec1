"""The whole graph on a real transformers model (the tiny random Qwen2.5-VL), the expert included."""

from __future__ import annotations

import math

import pytest

from catts_graph import CATTSConfig, build_graph
from catts_graph.models.chat_adapter import BaseModelChat


def test_graph_runs_on_the_tiny_model_as_its_own_expert(tiny_vlm, tiny_image):
    config = CATTSConfig(
        policy="paper", n_samples=3, max_samples=3, max_new_tokens=12, expert_retries=0, top_logprobs=4
    )
    graph = build_graph(tiny_vlm, expert="self", config=config)
    result = graph.invoke({"image": tiny_image, "question": "What colour is the square?"})

    assert len(result["samples"]) == 3
    for sample in result["samples"]:
        assert sample["n_tokens"] >= 1 and math.isfinite(sample["nmlp"]) and sample["nmlp"] >= 0
        assert 0 < sample["confidence"] <= 1
        assert sample["deepconf"] is not None
    # The planner expert is the random model itself: its answer is not a plan, so the run falls
    # back to the paper's default order, and says so.
    plan = result["trace"][2]
    assert plan["module"] == "planner" and plan["expert_calls"][0]["role"] == "planner"
    assert not plan["expert_calls"][0]["ok"]
    assert "falling back to the default plan" in plan["reason"]
    assert result["trace"][-1]["module"] == "aggregate"
    assert result["usage"]["base_model_calls"] >= 1 and result["usage"]["expert_calls"] >= 1


def test_self_expert_speaks_through_a_real_chat_model_interface(tiny_vlm, tiny_image):
    from catts_graph.experts import Voter

    chat = BaseModelChat(vlm=tiny_vlm, max_new_tokens=8)
    result = Voter(chat, retries=1, backoff=0.0, timeout=60.0).vote(
        question="Which colour?", options=None, images=[tiny_image], candidates=["red", "blue"]
    )
    # A random model cannot write the JSON: the Voter retries once and reports why it gave up.
    assert (result.ok, result.attempts, len(result.errors)) == (False, 2, 2)


class ScriptedSamplesRealScores:
    """Answers from a script (a random model writes no answer to vote on), scores from the real model."""

    def __init__(self, scripted, real):
        self.scripted, self.real = scripted, real

    def sample(self, *args, **kwargs):
        return self.scripted.sample(*args, **kwargs)

    def score(self, images, prompt, continuations):
        return self.real.score(images, prompt, continuations)


def test_visual_self_check_scores_with_the_real_model(tiny_vlm, tiny_image):
    from catts_graph.testing import Reply, ScriptedVLM

    scripted = ScriptedVLM.answering(
        Reply("It is red. \\boxed{red}", -0.5), Reply("Blue. \\boxed{blue}", -0.5)
    )
    base = ScriptedSamplesRealScores(scripted, tiny_vlm)
    result = build_graph(base, config=CATTSConfig(n_samples=2, max_samples=2)).invoke(
        {"image": tiny_image, "question": "What colour is the square?"}
    )
    (check,) = [e for e in result["trace"] if e["module"] == "visual_self_check"]
    assert len(check["inputs"]["frames"]) == 2  # each candidate written into both responses
    for answer in ("red", "blue"):
        row = check["inputs"]["candidates"][answer]
        assert row["answer_text"] == answer
        assert row["lp_orig"] < 0 and row["lp_noised"] < 0
        assert row["lp_orig"] == pytest.approx(sum(row["lp_orig_by_frame"]) / 2, abs=2e-4)
        assert row["grounding"] == pytest.approx(row["lp_orig"] - row["lp_noised"], abs=2e-4)
        assert row["contrastive"] == pytest.approx(2 * row["lp_orig"] - row["lp_noised"], abs=2e-4)
    assert result["answer"] in ("red", "blue")
    assert result["usage"]["score_calls"] == 2
