"""``visual_self_check``: which candidate answer really rests on the image?

Each top candidate's most confident supporting response is scored teacher-forced under the original
image and under a noised copy (VCD's diffusion noise, added at the model's input size). An answer
grounded in the image loses support when the image is noised: grounding
``g = mean_lp_orig - mean_lp_noised``. The winner has the best contrastive score
``(1 + alpha) * mean_lp_orig - alpha * mean_lp_noised`` and gets the tau3 boost.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from langgraph.runtime import Runtime

from catts_graph import scoring
from catts_graph.config import CATTSConfig
from catts_graph.images import load_images
from catts_graph.models.base import input_size_of
from catts_graph.nodes.common import Deps, progress, run_config, timed, trace_entry
from catts_graph.nodes.voter import best_supporting
from catts_graph.perturb import DIFFUSION_STEPS, perturbed_views
from catts_graph.state import CATTSState
from catts_graph.vcd import contrastive_score, grounding_score

TIE = 1e-9


def pick_winner(rows: dict[str, dict[str, float]]) -> tuple[str | None, str, str]:
    """The candidate with the best contrastive score, or None when none is scorable or the top two tie.

    A tie means the image does not separate the leaders; a boost then would be confidence from
    nothing. ``rows`` is in rank order; returns (winner, decision, reason) for the trace.
    """
    if not rows:
        return None, "no winner", "no candidate had a scorable response"
    ordered = sorted(rows, key=lambda a: -rows[a]["contrastive"])  # stable: ties keep rank order
    if len(ordered) > 1 and rows[ordered[0]]["contrastive"] - rows[ordered[1]]["contrastive"] <= TIE:
        return None, "no winner", f"tie: {ordered[0]!r} and {ordered[1]!r} contrast equally; no boost"
    return ordered[0], f"winner {ordered[0]!r}", f"best contrastive score of {len(rows)} candidates"


def make_visual_self_check(deps: Deps) -> Callable[..., dict[str, Any]]:
    def visual_self_check(state: CATTSState, runtime: Runtime[CATTSConfig]) -> dict[str, Any]:
        config = run_config(runtime, deps)
        samples = state.get("samples", [])
        tally = scoring.run_tally(state, config)
        scores = scoring.final_scores(state, config, tally)
        ranked = sorted(tally.votes, key=lambda a: -scores[a])[: config.self_check_candidates]
        texts = [best_supporting(samples, tally.members[a])["text"] for a in ranked]
        images = load_images(state["image_refs"], config)
        # At the model's input size, so a noise step means the same for every image size.
        views, noised = perturbed_views(
            images,
            "diffusion",
            config.noise_step / DIFFUSION_STEPS,
            config.seed,
            input_size=input_size_of(deps.base_model),
        )
        progress(runtime, "visual_self_check", "scoring", candidates=len(ranked))
        with timed() as timer:
            original = deps.base_model.score(views, state["prompt"], texts)
            perturbed = deps.base_model.score(noised, state["prompt"], texts)
        rows: dict[str, dict[str, float]] = {}
        for answer, lp_orig, lp_noised in zip(ranked, original, perturbed, strict=True):
            if not lp_orig.logprobs or not lp_noised.logprobs:
                continue
            mean_orig = sum(lp_orig.logprobs) / len(lp_orig.logprobs)
            mean_noised = sum(lp_noised.logprobs) / len(lp_noised.logprobs)
            rows[answer] = {
                "mean_lp_orig": mean_orig,
                "mean_lp_noised": mean_noised,
                "grounding": grounding_score(lp_orig.logprobs, lp_noised.logprobs),
                "contrastive": contrastive_score(mean_orig, mean_noised, config.vcd_alpha),
            }
        usage = {
            "score_calls": 2,
            "scored_tokens": sum(len(t.logprobs) for t in (*original, *perturbed)),
            "base_model_seconds": timer.seconds,
        }
        inputs = {a: {k: round(v, 4) for k, v in row.items()} for a, row in rows.items()}
        winner, decision, reason = pick_winner(rows)
        if winner is not None:
            reason += (
                f" under diffusion noise step {config.noise_step}, alpha {config.vcd_alpha}; "
                f"boost tau3 = {config.tau3}"
            )
        return {
            "self_check_winner": winner,
            "done": ["visual_self_check"],
            "usage": usage,
            "trace": [
                trace_entry("visual_self_check", decision, reason, inputs=inputs, duration_s=timer.seconds)
            ],
        }

    return visual_self_check
