"""From a backend's :class:`~catts_graph.models.base.Sample` to the record the graph keeps.

The statistics every confidence estimator needs are computed here once, when a response is sampled
(lm-polygraph's "stat calculator" idea): the state then carries text and numbers only, never token
log-probs, so it stays small and serialisable, and no later node goes back to the model for them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from catts_graph import confidence as conf
from catts_graph.answers import answer_span, extract_answer
from catts_graph.config import CATTSConfig
from catts_graph.models.base import Sample
from catts_graph.task import SampleRecord

DEEPCONF_K = 20
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(CATTSConfig)}


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
) -> SampleRecord:
    """The record of one response: its answer and every confidence statistic the graph may use.

    ``deepconf_window`` / ``deepconf_tail``: DeepConf's group window and tail, in tokens
    (``CATTSConfig.deepconf_window`` / ``deepconf_tail``, whose defaults they take).
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
        "least_confident_step": None,
        "deepconf": None,
        "mean_entropy": None,
        "entropy_over": None,
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
        step = conf.least_confident_step(sample.tokens, logprobs)
        if step is not None:
            record["least_confident_step"] = {
                "index": step.index,
                "text": step.text,
                "nmlp": step.nmlp,
                "n_tokens": step.n_tokens,
            }
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
