"""``voter``: the Voter expert gives a probability to each distinct candidate answer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.runnables import RunnableLambda
from langgraph.runtime import Runtime

from catts_graph import scoring
from catts_graph.config import CATTSConfig
from catts_graph.experts import Voter
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
from catts_graph.state import CATTSState
from catts_graph.task import most_confident


def best_supporting(samples: Sequence[Mapping[str, Any]], members: Sequence[int]) -> Mapping[str, Any]:
    """The most confident sample (lowest NMLP) among ``members``; ties: the first."""
    best = most_confident([samples[i] for i in members])
    return best if best is not None else samples[members[0]]


def make_voter(deps: Deps) -> RunnableLambda:
    def voter(state: CATTSState, runtime: Runtime[CATTSConfig]) -> ExpertSteps:
        config = run_config(runtime, deps)
        assert deps.voter is not None, "the voter node is only routed to when a voter expert exists"
        samples = state.get("samples", [])
        tally = scoring.run_tally(state, config)
        candidates = list(tally.votes)[: config.max_voter_candidates]
        evidence = [best_supporting(samples, tally.members[c])["text"] for c in candidates]
        role = Voter.from_config(deps.voter, config)
        progress(runtime, "voter", "calling expert", candidates=len(candidates))
        with timed() as timer:
            result = yield role.request(
                question=state["question"],
                options=state.get("options"),
                images=load_images(state["image_refs"], config),
                candidates=candidates,
                evidence=evidence,
            )
        update: dict[str, Any] = {"usage": expert_usage(result)}
        if result.ok and result.value is not None:
            probs = dict(zip(candidates, result.value, strict=True))
            update["voter_probs"] = probs
            decision = f"p = {', '.join(f'{a!r}: {p:.3f}' for a, p in probs.items())}"
            reason = f"Voter scored {len(candidates)} candidates; boost tau1 = {config.tau1}"
        else:
            update["voter_probs"] = None
            decision = "skipped"
            reason = "Voter failed, no boost: " + "; ".join(result.errors)
        update["trace"] = [
            trace_entry(
                "voter",
                decision,
                reason,
                inputs={"candidates": candidates},
                duration_s=timer.seconds,
                expert_calls=[result.record("voter")],
            )
        ]
        return update

    return expert_node("voter", voter)
