"""``self_consistency``: the confidence-weighted vote over the samples."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from langgraph.runtime import Runtime

from catts_graph import scoring
from catts_graph.config import CATTSConfig
from catts_graph.nodes.common import Deps, run_config, timed, trace_entry
from catts_graph.state import CATTSState


def make_self_consistency(deps: Deps) -> Callable[..., dict[str, Any]]:
    def self_consistency(state: CATTSState, runtime: Runtime[CATTSConfig]) -> dict[str, Any]:
        config = run_config(runtime, deps)
        with timed() as timer:
            tally = scoring.run_tally(state, config)
        routes, notes = _next(state, tally, deps, config)
        leader = next(iter(tally.votes), None)
        details = [f"{config.weighting} weighting over {tally.voters} samples"]
        if tally.filtered_out:
            details.append(f"{tally.filtered_out} dropped by the top-eta filter")
        if tally.abstained:
            details.append(f"{tally.abstained} without an answer")
        return {
            "votes": tally.votes,
            "done": ["self_consistency"],
            "route": routes,
            "trace": [
                trace_entry(
                    "self_consistency",
                    f"leader {leader!r} -> {', '.join(routes)}" if leader is not None else "no candidate",
                    "; ".join(details + notes),
                    inputs={
                        "votes": {a: round(v, 6) for a, v in tally.votes.items()},
                        "shares": {a: round(v, 4) for a, v in tally.shares.items()},
                        "counts": tally.counts,
                    },
                    duration_s=timer.seconds,
                )
            ],
        }

    return self_consistency


def _next(
    state: CATTSState, tally: scoring.Tally, deps: Deps, config: CATTSConfig
) -> tuple[list[str], list[str]]:
    """Voter when there is something to choose between; the Critic alongside when it is planned.

    The Critic does not depend on the vote, so it runs in the same step as the Voter and the two
    expert calls overlap in time.
    """
    routes: list[str] = []
    notes: list[str] = []
    if deps.voter is None:
        notes.append("voter skipped: no voter expert")
    elif len(tally.votes) < 2:
        notes.append("voter skipped: a single candidate")
    else:
        routes.append("voter")
    planned = "self_reflection" in (state.get("pending") or [])
    done = "self_reflection" in state.get("done", []) or "self_reflection" in config.disabled_modules
    if planned and not done and deps.critic is not None and tally.voters:
        routes.append("critic")
    return routes or ["planner"], notes
