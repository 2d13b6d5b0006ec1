"""From a backend's :class:`~catts_graph.models.base.Sample` to the record the graph keeps.

The statistics every confidence estimator needs are computed here once, when a response is sampled
(lm-polygraph's "stat calculator" idea): the state then carries text and numbers only, never token
log-probs, so it stays small and serialisable, and no later node goes back to the model for them.

That includes the response's reasoning steps (MMBoundary, :mod:`catts_graph.step_confidence`): cut
at sentence ends, newlines and ``;`` (``CLAUSE_CUT``, the steps a step calibrator is fitted on),
each with its signals, fused confidence, level and the level the model states, if any. A
:class:`StepAssessor` says what a deployment can compute: probability and entropy always come
from the sample; TokenSAR costs K + 1 sentence encodings per K-token step and is computed only
with an encoder; CLIPScore one batched image-text call per response, only with a CLIP model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from catts_graph import confidence as conf
from catts_graph.answers import answer_span, extract_answer
from catts_graph.config import CATTSConfig
from catts_graph.models.base import Sample
from catts_graph.statements import StatementReader, split_statement
from catts_graph.step_confidence import SIGNALS, Similarity, StepCalibrator, step_signals
from catts_graph.task import SampleRecord, StepFusion, StepRecord

DEEPCONF_K = 20
_DEFAULTS = {name: field.default for name, field in CATTSConfig.model_fields.items()}
_DIGITS = 6
"""Decimals the step numbers of a record keep (a record stays small; 1e-6 is below any threshold)."""

_NOT_COMPUTED = {
    "entropy": "the backend reported no full-vocabulary entropy",
    "tokensar": "no sentence encoder (build_graph(encoder=...))",
    "clipscore": "no CLIP model (build_graph(clip=...))",
}


@dataclass(frozen=True)
class StepAssessor:
    """What the steps of a response are assessed with: the statistics a deployment can compute.

    ``calibrator``: a fitted :class:`~catts_graph.step_confidence.StepCalibrator` (None: a step's
    fused confidence is its probability and it has no level); ``similarity``: TokenSAR's sentence
    similarity (None: no TokenSAR); ``clip(texts)``: the cosine of each step text with the run's
    image(s) (None: no CLIPScore); ``reader``: reads a stated confidence back to its level (exact
    pool phrases unless it has an encoder).
    """

    calibrator: StepCalibrator | None = None
    similarity: Similarity | None = None
    clip: Callable[[Sequence[str]], Sequence[float]] | None = None
    reader: StatementReader = field(default_factory=StatementReader)


_PLAIN = StepAssessor()
"""Probability and entropy, no calibrator, exact statements: what every record gets by default."""


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), _DIGITS)


def describe_steps(
    tokens: Sequence[str],
    logprobs: Sequence[float],
    entropies: Sequence[float] | None = None,
    assessor: StepAssessor = _PLAIN,
) -> tuple[list[StepRecord], StepFusion]:
    """The steps of the response ``"".join(tokens)`` as records, and how they were fused.

    Signals by :func:`~catts_graph.step_confidence.step_signals` (cut ``CLAUSE_CUT``); with a
    calibrator, ``fused`` and ``level`` by its :meth:`~StepCalibrator.assess`, else ``fused`` is
    the step's probability and ``level`` None. A calibrator that fuses none of the signals this
    response has is not used, and ``step_fusion`` says so.
    """
    clip = None
    if assessor.clip is not None:
        text = "".join(tokens)
        texts = [text[a:b] for a, b in conf.split_steps(text, conf.CLAUSE_CUT)]
        cosines = [float(c) for c in assessor.clip(texts)] if texts else []
        if len(cosines) != len(texts):
            raise ValueError(f"clip: expected {len(texts)} cosines (one per step), got {len(cosines)}")
        by_text = dict(zip(texts, cosines, strict=True))
        clip = by_text.__getitem__
    steps = step_signals(tokens, logprobs, entropies, similarity=assessor.similarity, clip=clip)
    computed = [n for n in SIGNALS if steps and all(getattr(s, n) is not None for s in steps)]
    given = assessor.calibrator
    calibrator = given
    used = [] if given is None else [n for n, w in given.weights.items() if w > 0 and n in computed]
    if not used:
        calibrator, used = None, ["probability"]
    dropped: dict[str, str] = {}
    for name in SIGNALS:
        if name in used:
            continue
        if name not in computed:
            dropped[name] = _NOT_COMPUTED.get(name, "not computed")
        elif given is None:
            dropped[name] = "no step calibrator"
        elif calibrator is None:
            dropped[name] = "the step calibrator fuses none of the signals this response has"
        elif name not in given.weights:
            dropped[name] = "not in the step calibrator"
        else:
            dropped[name] = "fitted weight 0"
    records: list[StepRecord] = []
    for position, step in enumerate(steps):
        row = step.signals()
        if calibrator is not None:
            assessed = calibrator.assess(row)
            fused, level = assessed["fused"], int(assessed["level"])
        else:
            fused, level = step.probability, None
        _, phrase = split_statement(step.text)
        records.append(
            {
                "index": position,
                "text": step.text,
                "span": [step.start, step.end],
                "n_tokens": step.n_tokens,
                "nmlp": round(-math.log(max(step.probability, 1e-300)), _DIGITS),
                "signals": {name: _round(value) for name, value in row.items()},
                "fused": round(fused, _DIGITS),
                "level": level,
                "expressed": assessor.reader.level(phrase),
            }
        )
    return records, {"calibrated": calibrator is not None, "used": used, "dropped": dropped}


def deepconf_token_confidence(sample: Sample) -> list[float] | None:
    """DeepConf token confidence of each step (:func:`~catts_graph.confidence.token_confidence`,
    k = 20, the sampled token counted when it is outside the top-k), or None without top-k."""
    if not sample.top_logprobs:
        return None
    return conf.token_confidence(sample.top_logprobs, k=DEEPCONF_K, chosen_logprobs=sample.logprobs)


def describe_sample(
    sample: Sample,
    *,
    options: Sequence[str] | None,
    index: int,
    wave: int,
    source: str = "sample",
    image: str = "original",
    deepconf_window: int = _DEFAULTS["deepconf_window"],
    deepconf_tail: int = _DEFAULTS["deepconf_tail"],
    steps: StepAssessor = _PLAIN,
) -> SampleRecord:
    """The record of one response: its answer and every confidence statistic the graph may use.

    ``deepconf_window`` / ``deepconf_tail``: DeepConf's group window and tail, in tokens
    (``CATTSConfig.deepconf_window`` / ``deepconf_tail``, whose defaults they take). ``steps``:
    how the reasoning steps are assessed (:func:`describe_steps`); steps need per-token strings
    that join to the text, else the record has none.
    ``mean_entropy`` is the mean of the backend's full-vocabulary per-step entropies
    (``entropy_over == "vocabulary"``), else of the renormalised top-k (``"top_k"``, a lower
    bound), else None.
    """
    logprobs = list(sample.logprobs)
    answer = extract_answer(sample.text, options)
    record: SampleRecord = {
        "index": index,
        "wave": wave,
        "source": source,
        "image": image,
        "text": sample.text,
        "answer": answer,
        "n_tokens": len(logprobs),
        "finish_reason": sample.finish_reason,
        "nmlp": None,
        "confidence": 0.0,
        "nmlp_answer": None,
        "deepconf": None,
        "mean_entropy": None,
        "entropy_over": None,
        "steps": [],
        "step_fusion": None,
    }
    if not logprobs:
        return record
    value = conf.nmlp(logprobs)
    record["nmlp"] = value
    record["confidence"] = conf.confidence_from_nmlp(value)
    if sample.tokens is not None:
        span = answer_span(sample.text, options) if answer is not None else None
        if span is not None:
            try:
                record["nmlp_answer"] = conf.span_nmlp(sample.tokens, logprobs, *span)
            except ValueError:
                record["nmlp_answer"] = None
        if "".join(sample.tokens) == sample.text:
            record["steps"], record["step_fusion"] = describe_steps(
                sample.tokens, logprobs, sample.entropies, steps
            )
    token_conf = deepconf_token_confidence(sample)
    if token_conf is not None:
        record["deepconf"] = {
            "mean": conf.mean_confidence(token_conf),
            "tail": conf.tail_confidence(token_conf, tail=deepconf_tail),
            "bottom_percent": conf.bottom_percent_confidence(token_conf, window=deepconf_window),
            "lowest_group": conf.lowest_group_confidence(token_conf, window=deepconf_window),
        }
    if sample.entropies is not None:
        record["mean_entropy"] = conf.mean_entropy(sample.entropies)
        record["entropy_over"] = "vocabulary"
    elif sample.top_logprobs:
        record["mean_entropy"] = conf.mean_token_entropy(sample.top_logprobs)
        record["entropy_over"] = "top_k"
    return record


def describe_repair(
    continuation: Sample,
    original: Mapping[str, Any],
    kept: int,
    *,
    options: Sequence[str] | None,
    index: int,
    wave: int,
    deepconf_window: int = _DEFAULTS["deepconf_window"],
    deepconf_tail: int = _DEFAULTS["deepconf_tail"],
    steps: StepAssessor = _PLAIN,
) -> SampleRecord:
    """The record of a ``step_repair`` sample: ``original``'s first ``kept`` steps (its text up to
    the end of step ``kept - 1``), then ``continuation``, the new tokens the base model wrote after
    them (:meth:`continue_reply`).

    The answer is read from the whole text. The steps are the kept steps as ``original`` has them
    (the same tokens in the same context have the same statistics) followed by the continuation's
    own, re-indexed and shifted; ``nmlp`` is over the kept and the new tokens, ``sum_kept n_s *
    nmlp_s + sum_new -lp`` over their count; ``nmlp_answer`` over the answer's tokens when the
    answer is in the new part; DeepConf and entropy cover the new tokens only (the kept tokens'
    top-k is not kept). The cut is at the end of the last kept step, not before the whitespace
    that follows it: BPE tokenizers put that whitespace in the next word's token, which the model
    then writes itself (a tokenizer with whitespace tokens of their own counts one twice).
    """
    if not 0 < kept <= len(original.get("steps") or []):
        raise ValueError(f"kept={kept!r}: expected 1..{len(original.get('steps') or [])} steps to keep")
    kept_steps = [dict(step) for step in original["steps"][:kept]]
    prefix = original["text"][: kept_steps[-1]["span"][1]]
    record = describe_sample(
        continuation,
        options=options,
        index=index,
        wave=wave,
        source="repair",
        image=original.get("image", "original"),
        deepconf_window=deepconf_window,
        deepconf_tail=deepconf_tail,
        steps=steps,
    )
    shift = len(prefix)
    new_steps = [
        {**step, "index": kept + step["index"], "span": [step["span"][0] + shift, step["span"][1] + shift]}
        for step in record["steps"]
    ]
    text = prefix + continuation.text
    answer = extract_answer(text, options)
    kept_tokens = sum(step["n_tokens"] for step in kept_steps)
    new_tokens = record["n_tokens"]
    nll = sum(step["nmlp"] * step["n_tokens"] for step in kept_steps)
    if record["nmlp"] is not None:
        nll += record["nmlp"] * new_tokens
    total = kept_tokens + (new_tokens if record["nmlp"] is not None else 0)
    value = nll / total if total else None
    nmlp_answer = None
    span = answer_span(text, options) if answer is not None else None
    if span is not None and span[0] >= shift and continuation.tokens and continuation.logprobs:
        try:
            nmlp_answer = conf.span_nmlp(
                continuation.tokens, continuation.logprobs, span[0] - shift, span[1] - shift
            )
        except ValueError:
            nmlp_answer = None
    record.update(
        {
            "text": text,
            "answer": answer,
            "n_tokens": kept_tokens + new_tokens,
            "nmlp": value,
            "confidence": 0.0 if value is None else conf.confidence_from_nmlp(value),
            "nmlp_answer": nmlp_answer,
            "steps": [*kept_steps, *new_steps],  # type: ignore[list-item]
            "step_fusion": record["step_fusion"] or original.get("step_fusion"),
            "repair": {"of": int(original["index"]), "kept_steps": kept, "prefix_chars": shift},
        }
    )
    return record
