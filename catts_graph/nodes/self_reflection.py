"""``self_reflection``: the base model answers again with the Critic's critique in context."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from langgraph.runtime import Runtime

from catts_graph.config import CATTSConfig
from catts_graph.images import load_images
from catts_graph.nodes.common import Deps, progress, run_config, step_assessor, timed, trace_entry
from catts_graph.prompts import format_options, prompt_fields, render_prompt
from catts_graph.samples import describe_sample
from catts_graph.scoring import verdict_boosts
from catts_graph.state import CATTSState
from catts_graph.task import reflection_template


def make_self_reflection(deps: Deps) -> Callable[..., dict[str, Any]]:
    def self_reflection(state: CATTSState, runtime: Runtime[CATTSConfig]) -> dict[str, Any]:
        config = run_config(runtime, deps)
        critique = state["critique"]
        samples = state.get("samples", [])
        criticised = samples[critique["sample"]]
        # A checkpoint trained on its own format may declare its reflection prompt (see
        # TransformersVLM); it then gets only the values its template asks for.
        template = reflection_template(deps.base_model)
        values = {
            "question": state["question"],
            "options": format_options(state.get("options")),
            "response": criticised["text"],
            "critique": critique["text"],
        }
        fields = prompt_fields(template)
        prompt = render_prompt(template, **{key: value for key, value in values.items() if key in fields})
        progress(runtime, "self_reflection", "sampling")
        images = load_images(state["image_refs"], config)
        with timed() as timer:
            (raw,) = deps.base_model.sample(
                images,
                prompt,
                1,
                temperature=0.0,
                max_new_tokens=config.max_new_tokens,
                seed=config.seed,
                top_logprobs=config.top_logprobs,
            )
        record = describe_sample(
            raw,
            options=state.get("options"),
            index=len(samples),
            wave=state.get("waves", 0),
            source="reflection",
            deepconf_window=config.deepconf_window,
            deepconf_tail=config.deepconf_tail,
            steps=step_assessor(config, deps, images),
        )
        changed = record["answer"] != criticised["answer"]
        verdict = critique.get("verdict", "unsure")
        if not verdict_boosts(verdict, config):
            rule = f"reflection_boost={config.reflection_boost!r}"
            boost = f"no boost: the Critic's verdict is {verdict!r} ({rule})"
        elif config.reflection_boost == "override":
            boost = "takes the lead if the criticised answer leads (reflection_boost='override')"
        else:
            boost = f"boost tau2 = {config.tau2}"
        return {
            "samples": [record],
            "reflected": record["answer"],
            "done": ["self_reflection"],
            "usage": {
                "base_model_calls": 1,
                "generated_tokens": record["n_tokens"],
                "base_model_seconds": timer.seconds,
            },
            "trace": [
                trace_entry(
                    "self_reflection",
                    f"reflected answer {record['answer']!r}",
                    (f"changed from {criticised['answer']!r}" if changed else "kept the criticised answer")
                    + f"; {boost}",
                    inputs={
                        "criticised_sample": criticised["index"],
                        "nmlp": record["nmlp"],
                        "verdict": verdict,
                    },
                    duration_s=timer.seconds,
                )
            ],
        }

    return self_reflection
