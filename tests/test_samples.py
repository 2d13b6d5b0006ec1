"""describe_sample: the DeepConf confidences at short traces and the entropy it keeps."""

from __future__ import annotations

import math

import pytest

from catts_graph.models.base import Sample
from catts_graph.samples import describe_sample

# Token confidences C_t of a 22-token trace: 2 everywhere except C_3 = 0, C_4 = 1, C_10 = 1 and
# C_20 = C_21 = 3. With k = 1 and each step's top log-prob the sampled one, C_t = -l_t.
CONF = [2.0] * 22
CONF[3], CONF[4], CONF[10], CONF[20], CONF[21] = 0.0, 1.0, 1.0, 3.0, 3.0


def _trace(entropies: list[float] | None = None) -> Sample:
    return Sample(
        token_ids=[7] * len(CONF),
        logprobs=[-c for c in CONF],
        text="x",
        top_logprobs=[[-c] for c in CONF],
        entropies=entropies,
    )


def test_short_trace_confidences_differ_with_a_short_window_and_tail():
    record = describe_sample(_trace(), options=None, index=0, wave=0, deepconf_window=2, deepconf_tail=2)
    # Groups of 2 (21 of them): G_2 = (2+0)/2 = 1, G_3 = (0+1)/2 = 0.5, G_4 = (1+2)/2 = 1.5,
    # G_9 = G_10 = 1.5, G_19 = 2.5, G_20 = 3, the rest 2.
    assert record["deepconf"] == pytest.approx(
        {
            "mean": 42 / 22,  # 44 - 2 - 1 - 1 + 1 + 1
            "tail": 3.0,  # the last 2 tokens
            "bottom_percent": 0.75,  # floor(21 * 10%) = 2 lowest groups: (0.5 + 1) / 2
            "lowest_group": 0.5,
        }
    )


def test_deepconf_window_longer_than_the_trace_collapses_to_the_mean():
    record = describe_sample(
        _trace(), options=None, index=0, wave=0, deepconf_window=2048, deepconf_tail=2048
    )
    assert record["deepconf"] == pytest.approx(
        dict.fromkeys(("mean", "tail", "bottom_percent", "lowest_group"), 42 / 22)
    )


def test_mean_entropy_is_the_full_vocabulary_one_when_the_backend_gives_it():
    full = describe_sample(_trace([0.5] * 11 + [1.5] * 11), options=None, index=0, wave=0)
    assert (full["mean_entropy"], full["entropy_over"]) == (pytest.approx(1.0), "vocabulary")
    # Without it, the renormalised top-k stands in, and says so: one entry per step has entropy 0.
    fallback = describe_sample(_trace(), options=None, index=0, wave=0)
    assert (fallback["mean_entropy"], fallback["entropy_over"]) == (0.0, "top_k")
    bare = describe_sample(
        Sample(token_ids=[1], logprobs=[math.log(0.5)], text="x"), options=None, index=0, wave=0
    )
    assert (bare["mean_entropy"], bare["entropy_over"], bare["deepconf"]) == (None, None, None)


def test_sample_entropies_must_have_one_value_per_step():
    with pytest.raises(ValueError, match="entropies has 1 steps but token_ids has 2"):
        Sample(token_ids=[1, 2], logprobs=[-0.1, -0.2], entropies=[0.3])
