"""``planner``: decide, from the run's confidence, which module runs next (or that we are done)."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from langchain_core.runnables import RunnableLambda
from langgraph.runtime import Runtime

from catts_graph import policy, scoring
from catts_graph.config import CATTSConfig
from catts_graph.experts import ExpertRequest, ExpertResult, Planner, bound_text
from catts_graph.images import load_images
from catts_graph.models.base import continuation_of
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
from catts_graph.state import CATTSState


def situation(state: CATTSState, config: CATTSConfig, deps: Deps) -> tuple[policy.Situation, scoring.Tally]:
    tally = scoring.run_tally(state, config)
    scores = scoring.final_scores(state, config, tally)
    return (
        policy.Situation(
            tally=tally,
            drawn=len(scoring.voting_samples(state.get("samples", []))),
            done=frozenset(state.get("done", [])),
            disabled=frozenset(config.disabled_modules),
            score_margin=scoring.score_margin(scores),
            n_candidates=len(scores),
            has_critic=deps.critic is not None,
            can_repair=continuation_of(deps.base_model) is not None,
        ),
        tally,
    )


def make_planner(deps: Deps) -> RunnableLambda:
    def planner(state: CATTSState, runtime: Runtime[CATTSConfig]) -> ExpertSteps:
        config = run_config(runtime, deps)
        update: dict[str, Any] = {}
        entries: list[dict[str, Any]] = []
        with timed() as timer:
            now, tally = situation(state, config, deps)
            plan_source = state.get("plan_source")
            pending = state.get("pending")
            # Decided before the first plan, so that the Planner expert is not asked either.
            decision = None if state.get("done") else policy.one_sample(now, config)
            if decision is not None and decision.route != "aggregate":
                plan_source = policy.ONE_SAMPLE  # a one-step plan: aggregate once it has run
            if decision is None and config.policy != "adaptive" and plan_source is None:
                pending, plan_source, entry, usage = yield from _first_plan(
                    state, config, deps, tally, now.drawn
                )
                update["usage"] = usage
                entries.append(entry)
            if decision is None and plan_source in ("expert", "default", policy.ONE_SAMPLE):
                decision = policy.follow_plan(now, pending or [], config, source=plan_source)
            elif decision is None:
                decision = policy.adaptive(now, config)
        update.update({"route": [decision.route], "plan_source": plan_source})
        if decision.pending is not None:
            update["pending"] = decision.pending
        progress(runtime, "planner", "decided", route=decision.route, reason=decision.reason)
        entries.append(
            trace_entry(
                "planner",
                f"-> {decision.route}",
                decision.reason,
                inputs=decision.numbers,
                duration_s=timer.seconds,
            )
        )
        update["trace"] = entries
        return update

    return expert_node("planner", planner)


def _first_plan(
    state: CATTSState, config: CATTSConfig, deps: Deps, tally: scoring.Tally, drawn: int
) -> Generator[
    ExpertRequest[Any], ExpertResult[Any], tuple[list[str] | None, str, dict[str, Any], dict[str, float]]
]:
    """Ask the Planner expert for the module plan (paper / expert policies); fall back on failure."""
    fallback = ("default", list(policy.DEFAULT_ORDER)) if config.policy == "paper" else ("adaptive", None)
    if deps.planner is None:
        source, plan = fallback
        entry = trace_entry("planner", f"plan: {plan or 'adaptive'}", f"no planner expert; {source} plan")
        return plan, source, entry, {}
    allowed = list(policy.MODULES if config.policy == "paper" else policy.PLAN_STEPS)
    if continuation_of(deps.base_model) is None or policy.STEP_REPAIR in config.disabled_modules:
        # Not offered when it cannot run: the base model cannot continue a reply, or it is off.
        allowed = [step for step in allowed if step != policy.STEP_REPAIR]
    role = Planner.from_config(deps.planner, config)
    with timed() as timer:
        result = yield role.request(
            question=state["question"],
            options=state.get("options"),
            images=load_images(state["image_refs"], config),
            summary=scoring.summary(tally, drawn=drawn, config=config),
            allowed=allowed,
        )
    reason = ""
    if result.ok and result.value is not None:
        try:
            plan = policy.validate_plan(result.value.modules, policy=config.policy)
        except ValueError as err:
            reason = f"planner plan rejected: {err}"
        else:
            reason, cut = bound_text(result.value.reason, config.max_expert_text_chars, "reason")
            entry = trace_entry(
                "planner",
                f"plan: {plan}",
                f"planner expert: {reason}" + (f" ({cut}, max_expert_text_chars)" if cut else ""),
                duration_s=timer.seconds,
                expert_calls=[result.record("planner")],
            )
            return plan, "expert", entry, expert_usage(result)
    else:
        reason = "planner expert failed: " + "; ".join(result.errors)
    source, plan = fallback
    entry = trace_entry(
        "planner",
        f"plan: {plan or 'adaptive'} (fallback)",
        f"{reason}; falling back to the {source} plan",
        duration_s=timer.seconds,
        expert_calls=[result.record("planner")],
    )
    return plan, source, entry, expert_usage(result)
