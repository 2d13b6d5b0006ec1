"""``step_repair``: keep a sample's steps before its weakest one and let the base model write on.

MMBoundary says *where* a response is unsure and leaves open what to do about it; this is our
self-correction. The targets are the answered base-model samples whose weakest step (lowest fused
confidence) is not their first, weakest first, only those below ``step_floor`` when it is set, at
most ``repair_samples`` and no more than the sample budget has left. Each is cut after the step
before its weakest one (its text up to that step's end), and the base model continues that prefix
once (``continue_reply``: the same answer prompt, the prefix as the start of its reply, at
``repair_temperature``, by default the run's temperature; a seed per target from
:func:`~catts_graph.task.item_seed`).

Weight and source: a repair is a sample of its own (``source == "repair"``) that *joins the vote*
under the run's weighting, beside the sample it repairs, and counts against ``max_samples`` like a
drawn sample. Unlike the reflected answer (a tau2 boost from one greedy re-answer with an
expert's critique), a repair is another draw of the same model from a prefix it wrote itself, so
it is evidence of the same kind as the samples; it is counted once, with its own confidence (its
NMLP over the kept and the new tokens; under ``step_min``, its own weakest step). The original
keeps its vote: its weak step may be right, and under ``step_min`` it already weighs little.

A backend without ``continue_reply`` (or one that raises ``NotImplementedError``) skips the
module, and the trace says why.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from langgraph.runtime import Runtime

from catts_graph import scoring
from catts_graph.config import STEP_REPAIR, CATTSConfig
from catts_graph.images import load_images
from catts_graph.models.base import continuation_of
from catts_graph.nodes.common import Deps, progress, run_config, step_assessor, timed, trace_entry
from catts_graph.samples import describe_repair
from catts_graph.state import CATTSState
from catts_graph.task import item_seed, weakest_step


def repair_targets(
    samples: Sequence[Mapping[str, Any]], config: CATTSConfig, budget: int
) -> list[tuple[Mapping[str, Any], int]]:
    """The samples to repair and how many steps of each to keep: answered base-model samples whose
    weakest step (by fused confidence) is not their first, below ``step_floor`` when it is set,
    weakest first (ties: lower index), at most ``min(repair_samples, budget)``."""
    found = []
    for record in samples:
        if record.get("source", "sample") != "sample" or record.get("answer") is None:
            continue
        step = weakest_step(record, "fused")
        if step is None or step["index"] == 0:
            continue
        if config.step_floor is not None and step["fused"] >= config.step_floor:
            continue
        found.append((step["fused"], record["index"], record, step["index"]))
    found.sort(key=lambda item: (item[0], item[1]))
    return [(record, keep) for _, _, record, keep in found[: max(0, min(config.repair_samples, budget))]]


def make_step_repair(deps: Deps) -> Callable[..., dict[str, Any]]:
    def step_repair(state: CATTSState, runtime: Runtime[CATTSConfig]) -> dict[str, Any]:
        config = run_config(runtime, deps)
        samples = state.get("samples", [])
        budget = config.max_samples - len(scoring.voting_samples(samples))
        targets = repair_targets(samples, config, budget)
        continue_reply = continuation_of(deps.base_model)
        skip = None
        if continue_reply is None:
            name = type(deps.base_model).__name__
            skip = f"the base model ({name}) cannot continue a reply from a prefix (no continue_reply)"
        elif budget <= 0:
            skip = "the sample budget is spent"
        elif not targets:
            skip = "no answered sample has a weak step after its first" + (
                f" below step_floor {config.step_floor}" if config.step_floor is not None else ""
            )
        if skip is not None:
            return _skipped(skip)
        assert continue_reply is not None
        images = load_images(state["image_refs"], config)
        assessor = step_assessor(config, deps, images)
        records: list[dict[str, Any]] = []
        repaired: list[dict[str, Any]] = []
        new_tokens = 0
        temperature = config.temperature if config.repair_temperature is None else config.repair_temperature
        progress(runtime, STEP_REPAIR, "sampling", n=len(targets))
        with timed() as timer:
            for original, keep in targets:
                prefix = original["text"][: original["steps"][keep - 1]["span"][1]]
                seed = item_seed(config.seed, f"repair:{original['index']}")
                try:
                    (raw,) = continue_reply(
                        images,
                        state["prompt"],
                        prefix,
                        1,
                        temperature=temperature,
                        top_p=config.top_p,
                        top_k=config.top_k,
                        max_new_tokens=config.max_new_tokens,
                        seed=seed,
                        top_logprobs=config.top_logprobs,
                    )
                except NotImplementedError as error:
                    return _skipped(f"the base model cannot continue a reply: {error}")
                new_tokens += len(raw.token_ids)
                record = describe_repair(
                    raw,
                    original,
                    keep,
                    options=state.get("options"),
                    index=len(samples) + len(records),
                    wave=state.get("waves", 0),
                    deepconf_window=config.deepconf_window,
                    deepconf_tail=config.deepconf_tail,
                    steps=assessor,
                )
                records.append(dict(record))
                weak = original["steps"][keep]
                repaired.append(
                    {
                        "sample": original["index"],
                        "kept_steps": keep,
                        "weakest_step_fused": round(weak["fused"], 4),
                        "answer_before": original["answer"],
                        "answer_after": record["answer"],
                        "nmlp": None if record["nmlp"] is None else round(record["nmlp"], 4),
                        "seed": seed,
                        "temperature": temperature,
                    }
                )
        changed = sum(r["answer_before"] != r["answer_after"] for r in repaired)
        return {
            "samples": records,
            "tally": scoring.stored_tally([*samples, *records], config),
            "done": [STEP_REPAIR],
            "usage": {
                "base_model_calls": len(records),
                "generated_tokens": new_tokens,
                "base_model_seconds": timer.seconds,
            },
            "trace": [
                trace_entry(
                    STEP_REPAIR,
                    f"repaired {len(records)} sample(s) from their weakest step",
                    f"{changed} of {len(records)} changed answer; repairs vote as samples under "
                    f"{config.weighting} weighting",
                    inputs={"repairs": repaired, "step_floor": config.step_floor},
                    duration_s=timer.seconds,
                )
            ],
        }

    return step_repair


def _skipped(reason: str) -> dict[str, Any]:
    return {
        "done": [STEP_REPAIR],
        "trace": [trace_entry(STEP_REPAIR, "skipped", reason)],
    }
