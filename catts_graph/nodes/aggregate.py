"""``aggregate``: the final scores, the answer and its confidence."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from langgraph.runtime import Runtime

from catts_graph import scoring
from catts_graph.config import CATTSConfig
from catts_graph.nodes.common import Deps, run_config, timed, trace_entry
from catts_graph.state import CATTSState
from catts_graph.voting import pick_answer


def make_aggregate(deps: Deps) -> Callable[..., dict[str, Any]]:
    def aggregate(state: CATTSState, runtime: Runtime[CATTSConfig]) -> dict[str, Any]:
        config = run_config(runtime, deps)
        with timed() as timer:
            tally = scoring.run_tally(state, config)
            scores = scoring.final_scores(state, config, tally)
            answer, confidence = pick_answer(scores, tally.votes)
        boosts = {
            "voter": state.get("voter_probs") is not None,
            "reflected": state.get("reflected"),
            "reflection_boosted": scoring.reflection_boosted(state, config),
            "self_check_winner": state.get("self_check_winner"),
        }
        return {
            "answer": answer,
            "confidence": confidence,
            "scores": scores,
            "trace": [
                trace_entry(
                    "aggregate",
                    f"answer {answer!r} at confidence {confidence:.3f}",
                    f"{config.score_scale} scores over {len(scores)} candidates"
                    if scores
                    else "no candidate answer",
                    inputs={"scores": {a: round(s, 6) for a, s in scores.items()}, **boosts},
                    duration_s=timer.seconds,
                )
            ],
        }

    return aggregate
