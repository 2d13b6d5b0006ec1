"""``base_model``: draw a wave of samples and reduce each to its confidence record."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from langgraph.runtime import Runtime

from catts_graph import scoring
from catts_graph.config import CATTSConfig
from catts_graph.images import load_images
from catts_graph.nodes.common import Deps, progress, run_config, step_assessor, timed, trace_entry
from catts_graph.policy import wave_size
from catts_graph.samples import describe_sample
from catts_graph.scoring import voting_samples
from catts_graph.state import CATTSState
from catts_graph.task import SampleRecord, weakest_step


def _weakest_fused(record: SampleRecord) -> float | None:
    step = weakest_step(record, "fused")
    return None if step is None else round(step["fused"], 4)


def make_base_model(deps: Deps) -> Callable[..., dict[str, Any]]:
    def base_model(state: CATTSState, runtime: Runtime[CATTSConfig]) -> dict[str, Any]:
        config = run_config(runtime, deps)
        wave = state.get("waves", 0)
        drawn = len(voting_samples(state.get("samples", [])))
        n = config.n_samples if wave == 0 else wave_size(drawn, config)
        images = load_images(state["image_refs"], config)
        progress(runtime, "base_model", "sampling", wave=wave, n=n)
        with timed() as timer:
            raw = deps.base_model.sample(
                images,
                state["prompt"],
                n,
                temperature=config.temperature,
                top_p=config.top_p,
                top_k=config.top_k,
                max_new_tokens=config.max_new_tokens,
                seed=config.seed + wave,
                top_logprobs=config.top_logprobs,
            )
        if len(raw) != n:
            raise RuntimeError(f"base model returned {len(raw)} samples, {n} were asked for")
        offset = len(state.get("samples", []))
        assessor = step_assessor(config, deps, images)
        records = [
            describe_sample(
                sample,
                options=state.get("options"),
                index=offset + i,
                wave=wave,
                deepconf_window=config.deepconf_window,
                deepconf_tail=config.deepconf_tail,
                steps=assessor,
            )
            for i, sample in enumerate(raw)
        ]
        tokens = sum(r["n_tokens"] for r in records)
        answers = [r["answer"] for r in records]
        progress(runtime, "base_model", "sampled", wave=wave, n=n, tokens=tokens, seconds=timer.seconds)
        return {
            "samples": records,
            "tally": scoring.stored_tally([*state.get("samples", []), *records], config),
            "waves": wave + 1,
            "usage": {"base_model_calls": 1, "generated_tokens": tokens, "base_model_seconds": timer.seconds},
            "trace": [
                trace_entry(
                    "base_model",
                    f"drew {n} samples (wave {wave})",
                    f"{sum(a is not None for a in answers)} of {n} gave an answer",
                    inputs={
                        "n": n,
                        "seed": config.seed + wave,
                        "temperature": config.temperature,
                        "answers": answers,
                        "nmlp": [None if r["nmlp"] is None else round(r["nmlp"], 4) for r in records],
                        "weakest_step": [_weakest_fused(r) for r in records],
                        "step_fusion": next((r["step_fusion"] for r in records if r["step_fusion"]), None),
                        "tokens": tokens,
                    },
                    duration_s=timer.seconds,
                )
            ],
        }

    return base_model
