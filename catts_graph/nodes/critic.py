"""``critic``: the Critic expert critiques the least confident sample at its least confident step."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.runnables import RunnableLambda
from langgraph.runtime import Runtime

from catts_graph.config import CATTSConfig
from catts_graph.experts import Critic, bound_text
from catts_graph.images import load_images
from catts_graph.nodes.common import (
    Deps,
    ExpertSteps,
    expert_node,
    expert_usage,
    progress,
    run_config,
    timed,
    trace_entry,
)
from catts_graph.scoring import voting_samples
from catts_graph.state import CATTSState
from catts_graph.task import least_confident


def least_confident_sample(samples: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The answered voting sample with the highest NMLP (ties: the first); None if no sample answered."""
    return least_confident([s for s in voting_samples(samples) if s.get("answer") is not None])


def make_critic(deps: Deps) -> RunnableLambda:
    def critic(state: CATTSState, runtime: Runtime[CATTSConfig]) -> ExpertSteps:
        config = run_config(runtime, deps)
        assert deps.critic is not None, "the critic node is only routed to when a critic expert exists"
        target = least_confident_sample(state.get("samples", []))
        if target is None:
            return {
                "critique": None,
                "route": ["planner"],
                "done": ["self_reflection"],
                "trace": [trace_entry("critic", "skipped", "no answered sample to critique")],
            }
        step = target.get("least_confident_step") or {}
        role = Critic.from_config(deps.critic, config)
        progress(runtime, "critic", "calling expert", sample=target["index"])
        with timed() as timer:
            result = yield role.request(
                question=state["question"],
                options=state.get("options"),
                images=load_images(state["image_refs"], config),
                response=target["text"],
                step=step.get("text"),
            )
        inputs = {
            "sample": target["index"],
            "sample_nmlp": round(target["nmlp"], 4),
            "step": step.get("index"),
            "step_nmlp": None if step.get("nmlp") is None else round(step["nmlp"], 4),
        }
        update: dict[str, Any] = {"usage": expert_usage(result)}
        if result.ok and result.value:
            # The critique goes into the base model's reflection prompt: bounded, like any expert text.
            text, cut = bound_text(result.value, config.max_expert_text_chars, "critique")
            update["critique"] = {"text": text, "sample": target["index"], "step": step.get("text")}
            update["route"] = ["self_reflection"]
            entry = trace_entry(
                "critic",
                f"critiqued sample {target['index']}",
                "least confident sample"
                + (f", least confident step {step.get('index')}" if step else "")
                + (f"; {cut} (max_expert_text_chars)" if cut else ""),
                inputs=inputs,
                duration_s=timer.seconds,
                expert_calls=[result.record("critic")],
            )
        else:
            update.update({"critique": None, "route": ["planner"], "done": ["self_reflection"]})
            entry = trace_entry(
                "critic",
                "skipped self-reflection",
                "Critic failed: " + "; ".join(result.errors),
                inputs=inputs,
                duration_s=timer.seconds,
                expert_calls=[result.record("critic")],
            )
        update["trace"] = [entry]
        return update

    return expert_node("critic", critic)
