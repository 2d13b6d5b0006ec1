"""``critic``: the Critic expert critiques one sample at its weakest step.

The sample is chosen by ``critic_target``: the answered voting sample with the highest NMLP (the
paper's choice, default), or the vote leader's most confident sample (``leader``). Its weakest
step is chosen by ``critic_step_signal``: the lowest fused step confidence (default), the highest
step NMLP, or the lowest level the model states (falling back to fused when it states none). The
Critic's prompt quotes the step and names it with its numbers (:func:`step_note`). The Critic's
verdict is kept with the critique: ``reflection_boost='incorrect'`` boosts the reflected answer only
when it is ``incorrect`` (:func:`catts_graph.scoring.reflection_boosted`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.runnables import RunnableLambda
from langgraph.runtime import Runtime

from catts_graph.config import CATTSConfig
from catts_graph.experts import Critic, bound_text, critique_verdict
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
from catts_graph.scoring import Tally, run_tally, voting_samples
from catts_graph.state import CATTSState
from catts_graph.step_confidence import LEVELS
from catts_graph.task import least_confident, most_confident, weakest_step

_SIGNAL_NAMES = {
    "probability": "probability {:.3f}",
    "entropy": "mean token entropy {:.3f} nats",
    "tokensar": "TokenSAR {:.3f} nats",
    "clipscore": "CLIPScore {:.3f}",
}


def least_confident_sample(samples: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The answered voting sample with the highest NMLP (ties: the first); None if no sample answered."""
    return least_confident([s for s in voting_samples(samples) if s.get("answer") is not None])


def leader_sample(samples: Sequence[Mapping[str, Any]], tally: Tally) -> Mapping[str, Any] | None:
    """The vote leader's most confident sample (lowest NMLP; ties: the first): the response the
    Voter is shown for the leading answer. None when no sample answered."""
    leader = next(iter(tally.votes), None)
    return None if leader is None else most_confident([samples[i] for i in tally.members[leader]])


_TARGETS = {"least_confident": "least confident sample", "leader": "the vote leader's most confident sample"}


def step_note(step: Mapping[str, Any], count: int, by: str, *, calibrated: bool) -> str:
    """The sentence that names the Critic's step with its numbers: its place, why it was chosen
    (``by``: fused, nmlp or expressed), its fused confidence and level, the signals, and the level
    the model states."""
    where = f"This is step {step['index'] + 1} of {count}"
    if by == "nmlp":
        why = f"the highest NMLP of the steps, {step['nmlp']:.3f} (mean negative log-prob of its tokens)"
    elif by == "expressed":
        why = f"the lowest confidence the model states, level {step['expressed']} of {LEVELS}"
    else:
        why = f"the lowest fused confidence of the steps, {step['fused']:.3f}"
        if not calibrated:
            why += " (its probability; no step calibrator)"
    numbers = [f"fused confidence {step['fused']:.3f}"] if by != "fused" else []
    if step.get("level") is not None:
        numbers.append(f"level {step['level']} of {LEVELS}")
    numbers += [
        _SIGNAL_NAMES[name].format(value)
        for name, value in step.get("signals", {}).items()
        if value is not None and name in _SIGNAL_NAMES
    ]
    if by != "expressed" and step.get("expressed") is not None:
        numbers.append(f"the model states level {step['expressed']} of {LEVELS}")
    return f"{where}, chosen for {why}; " + ", ".join(numbers) + "."


def make_critic(deps: Deps) -> RunnableLambda:
    def critic(state: CATTSState, runtime: Runtime[CATTSConfig]) -> ExpertSteps:
        config = run_config(runtime, deps)
        assert deps.critic is not None, "the critic node is only routed to when a critic expert exists"
        samples = state.get("samples", [])
        if config.critic_target == "leader":
            target = leader_sample(samples, run_tally(state, config))
        else:
            target = least_confident_sample(samples)
        if target is None:
            return {
                "critique": None,
                "route": ["planner"],
                "done": ["self_reflection"],
                "trace": [trace_entry("critic", "skipped", "no answered sample to critique")],
            }
        by = config.critic_step_signal
        chosen = weakest_step(target, by)
        notes = []
        if chosen is None and by == "expressed":
            by, chosen = "fused", weakest_step(target, "fused")
            notes.append("the sample states no confidence level; weakest step by fused confidence")
        step: Mapping[str, Any] = chosen or {}
        fusion = target.get("step_fusion") or {}
        note = (
            step_note(step, len(target["steps"]), by, calibrated=bool(fusion.get("calibrated")))
            if chosen is not None
            else None
        )
        role = Critic.from_config(deps.critic, config)
        progress(runtime, "critic", "calling expert", sample=target["index"])
        with timed() as timer:
            result = yield role.request(
                question=state["question"],
                options=state.get("options"),
                images=load_images(state["image_refs"], config),
                response=target["text"],
                step=step.get("text"),
                step_note=note,
            )
        inputs = {
            "target": config.critic_target,
            "sample": target["index"],
            "sample_answer": target["answer"],
            "sample_nmlp": round(target["nmlp"], 4),
            "step": step.get("index"),
            "step_signal": by,
            "step_nmlp": None if step.get("nmlp") is None else round(step["nmlp"], 4),
            "step_fused": None if step.get("fused") is None else round(step["fused"], 4),
            "step_level": step.get("level"),
            "step_expressed": step.get("expressed"),
        }
        update: dict[str, Any] = {"usage": expert_usage(result)}
        if result.ok and result.value:
            # The critique goes into the base model's reflection prompt: bounded, like any expert text.
            text, cut = bound_text(result.value, config.max_expert_text_chars, "critique")
            verdict = critique_verdict(result.value)
            inputs["verdict"] = verdict
            update["critique"] = {
                "text": text,
                "sample": target["index"],
                "step": step.get("text"),
                "verdict": verdict,
            }
            update["route"] = ["self_reflection"]
            entry = trace_entry(
                "critic",
                f"critiqued sample {target['index']}: verdict {verdict}",
                _TARGETS[config.critic_target]
                + (f", weakest step {step['index']} by {by}" if step else "")
                + "".join(f"; {n}" for n in notes)
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
