"""``visual_self_check``: which candidate answer really rests on the image?

Every top candidate answer is scored teacher-forced in the same *frames*, under the original image
and under a noised copy (VCD's diffusion noise, added at the model's input size). A frame is the
most confident supporting response of one top candidate with its final answer cut out (the text
before the answer span and after it); each candidate is written into every frame in its own words
(the answer span of its own most confident response: an option letter, an option's text, a number as
the model wrote it), so the k candidates x F frames continuations differ only in the answer. They go
in one batched call per image set (the backend's ``score_answers``, or its ``score``:
:func:`catts_graph.models.base.answer_scorer_of`). Only the answer counts: candidate c's log-prob is
the mean over the frames of its answer's log-prob (:func:`catts_graph.vcd.answer_logprob`: the sum
over the answer's tokens and the token that closes it), so a local model reads each continuation
only up to that closing token, and a frame's text before the answer once for all candidates. An
answer grounded in the image loses support when the image is noised: grounding
``g = lp_orig - lp_noised``. The winner has the best contrastive score
``(1 + alpha) * lp_orig - alpha * lp_noised`` (:func:`catts_graph.vcd.answer_contrast`) and gets
the tau3 boost.

Why common frames: scoring each candidate's own best response let its reasoning tokens, which
outnumber the answer's, decide; and the best of more members is the most confident of more draws,
so at equal grounding the candidate with more votes won (in simulation, 73% of the time at 6:2
members). Here every candidate is read in the same frames, whatever its votes. A frame two
responses share (the same text around the answer) is scored once. A response without an answer
span (the graph's own samples always have one; a record from elsewhere may not) gives the bare
``\\boxed{}`` frame, no reasoning, and the trace says so.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from langgraph.runtime import Runtime

from catts_graph import scoring
from catts_graph.answers import answer_span
from catts_graph.config import CATTSConfig
from catts_graph.images import load_images
from catts_graph.models.base import answer_scorer_of, input_size_of
from catts_graph.nodes.common import Deps, progress, run_config, timed, trace_entry
from catts_graph.nodes.voter import best_supporting
from catts_graph.perturb import DIFFUSION_STEPS, perturbed_views
from catts_graph.state import CATTSState
from catts_graph.vcd import answer_contrast

TIE = 1e-9


def pick_winner(rows: dict[str, dict[str, float]], frames: int) -> tuple[str | None, str, str]:
    """The candidate with the best contrastive score, or None when none is scorable or the top two tie.

    A tie means the image does not separate the leaders; a boost then would be confidence from
    nothing. ``rows`` is in rank order, scored in ``frames`` common frames; returns (winner,
    decision, reason) for the trace.
    """
    if not rows:
        return None, "no winner", "no frame in which every candidate could be scored"
    ordered = sorted(rows, key=lambda a: -rows[a]["contrastive"])  # stable: ties keep rank order
    if len(ordered) > 1 and rows[ordered[0]]["contrastive"] - rows[ordered[1]]["contrastive"] <= TIE:
        return None, "no winner", f"tie: {ordered[0]!r} and {ordered[1]!r} contrast equally; no boost"
    reason = f"best contrastive score of {len(rows)} candidates in {frames} common frames"
    return ordered[0], f"winner {ordered[0]!r}", reason


TEMPLATE = ("\\boxed{", "}")
"""The frame of a response without an answer span: the answer alone, boxed as the prompts ask."""


@dataclass(frozen=True)
class Frame:
    """A response with its final answer cut out: ``prefix + answer + suffix`` writes any answer in it."""

    prefix: str
    suffix: str
    sample: int
    """Index of the response it was cut from (of its candidate's most confident one)."""
    answer: str
    """The candidate that response supports."""
    template: bool = False
    """Whether the response had no answer span, so the frame is :data:`TEMPLATE`, no reasoning."""

    def around(self, answer_text: str) -> str:
        return self.prefix + answer_text + self.suffix

    def record(self) -> dict[str, Any]:
        """What the trace keeps of it."""
        kept: dict[str, Any] = {"sample": self.sample, "answer": self.answer}
        if self.template:
            kept["template"] = "the response has no answer span: the bare \\boxed{} frame"
        else:
            kept["prefix_chars"] = len(self.prefix)
        return kept


def common_frames(
    samples: Sequence[Mapping[str, Any]],
    members: Mapping[str, Sequence[int]],
    candidates: Sequence[str],
    options: Sequence[str] | None,
) -> tuple[list[str], list[Frame]]:
    """Each candidate's answer as written in its most confident supporting response, and the
    distinct frames those responses give (in candidate order; a frame two responses share once)."""
    written: list[str] = []
    frames: list[Frame] = []
    for answer in candidates:
        best = best_supporting(samples, members[answer])
        index = int(best.get("index", members[answer][0]))
        span = answer_span(best["text"], options)
        if span is None:
            written.append(answer)
            frame = Frame(*TEMPLATE, sample=index, answer=answer, template=True)
        else:
            start, end = span
            written.append(best["text"][start:end])
            frame = Frame(best["text"][:start], best["text"][end:], sample=index, answer=answer)
        if all((f.prefix, f.suffix) != (frame.prefix, frame.suffix) for f in frames):
            frames.append(frame)
    return written, frames


def contrast_rows(
    candidates: Sequence[str],
    written: Sequence[str],
    frames: Sequence[Frame],
    original: Sequence[float | None],
    perturbed: Sequence[float | None],
    alpha: float,
) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """Each candidate's contrast over the frames every candidate could be scored in, and the trace's
    inputs: those frames, and per candidate its numbers and its answer's log-prob in each frame.
    ``original`` and ``perturbed`` hold the answers' log-probs candidate-major (candidate c in frame
    f at ``c * len(frames) + f``), None where the backend could not find the answer."""

    def by_candidate(scored: Sequence[float | None]) -> list[list[float | None]]:
        return [[scored[c * len(frames) + f] for f in range(len(frames))] for c in range(len(written))]

    by_frame = {"lp_orig": by_candidate(original), "lp_noised": by_candidate(perturbed)}
    # A frame counts only when every candidate was scored in it, so that all see the same frames.
    usable = [
        f for f in range(len(frames)) if all(row[f] is not None for m in by_frame.values() for row in m)
    ]
    kept = {
        name: [[value for f in usable if (value := row[f]) is not None] for row in matrix]
        for name, matrix in by_frame.items()
    }
    contrasts = answer_contrast(kept["lp_orig"], kept["lp_noised"], alpha) if usable else []
    rows = {answer: contrast._asdict() for answer, contrast in zip(candidates, contrasts, strict=False)}
    inputs: dict[str, Any] = {
        "frames": [frames[f].record() for f in usable],
        "candidates": {
            answer: {
                "answer_text": written[c],
                **{key: round(value, 4) for key, value in rows[answer].items()},
                **{f"{name}_by_frame": [round(v, 4) for v in kept[name][c]] for name in kept},
            }
            for c, answer in enumerate(candidates)
            if answer in rows
        },
    }
    unscored = [frames[f].record() for f in range(len(frames)) if f not in usable]
    if unscored:
        inputs["unscored_frames"] = unscored
    return rows, inputs


def make_visual_self_check(deps: Deps) -> Callable[..., dict[str, Any]]:
    def visual_self_check(state: CATTSState, runtime: Runtime[CATTSConfig]) -> dict[str, Any]:
        config = run_config(runtime, deps)
        samples = state.get("samples", [])
        tally = scoring.run_tally(state, config)
        scores = scoring.final_scores(state, config, tally)
        ranked = sorted(tally.votes, key=lambda a: -scores[a])[: config.self_check_candidates]
        written, frames = common_frames(samples, tally.members, ranked, state.get("options"))
        # Candidate-major: continuation c * F + f is candidate c written into frame f.
        texts = [frame.around(text) for text in written for frame in frames]
        spans = [(len(frame.prefix), len(frame.prefix) + len(text)) for text in written for frame in frames]
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
        score_answers = answer_scorer_of(deps.base_model)
        with timed() as timer:
            original = score_answers(views, state["prompt"], texts, spans)
            perturbed = score_answers(noised, state["prompt"], texts, spans)
        rows, inputs = contrast_rows(ranked, written, frames, original, perturbed, config.vcd_alpha)
        usage = {"score_calls": 2, "base_model_seconds": timer.seconds}
        winner, decision, reason = pick_winner(rows, frames=len(inputs["frames"]))
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
