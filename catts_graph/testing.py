"""Test doubles that speak the real base-model protocol, for tests and benchmarks of the graph.

Like LangChain's fake chat models, nothing here is ever chosen by default: a user only gets a
:class:`ScriptedVLM` by constructing one. It returns the replies its script gives, tokenised into
words and spaces (so ``"".join(tokens) == text``), with the log-probs the script sets.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from catts_graph.models.base import Sample, SamplingParams, TokenLogprobs, check_n

_TOKEN = re.compile(r"\s+|\S+")


@dataclass(frozen=True)
class Reply:
    """One scripted response: its text and the log-prob of each token (one value for all, or a list)."""

    text: str
    logprobs: float | Sequence[float] = -0.1


@dataclass(frozen=True)
class ScriptCall:
    """What the script sees of one ``sample`` call."""

    index: int
    images: Sequence[Image.Image]
    prompt: str
    n: int
    temperature: float
    seed: int | None


Script = Callable[[ScriptCall], Sequence[Reply | str]]
Scorer = Callable[[Sequence[Image.Image], str, str], float]


def tokenize(text: str) -> list[str]:
    """Words and runs of white space: a tokenisation whose pieces join back to ``text``."""
    return _TOKEN.findall(text)


@dataclass
class ScriptedVLM:
    """A base model whose ``sample`` answers from ``script`` and whose ``score`` uses ``scorer``.

    ``script`` gets a :class:`ScriptCall` and returns ``n`` replies. ``scorer(images, prompt,
    continuation)`` gives the mean log-prob per token of a teacher-forced continuation (default -1).
    ``latency`` seconds are slept per call, to model a slow backend. Every call is recorded in
    ``calls`` (kind, prompt, n).
    """

    script: Script
    scorer: Scorer | None = None
    latency: float = 0.0
    answer_prompt: str | None = None
    reflection_prompt: str | None = None
    calls: list[tuple[str, str, int]] = field(default_factory=list)
    _vocab: dict[str, int] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def answering(cls, *texts: str | Reply, **kwargs: object) -> ScriptedVLM:
        """A model that cycles through ``texts`` for every call, whatever the prompt."""
        replies = list(texts)

        def script(call: ScriptCall) -> list[Reply | str]:
            return [replies[i % len(replies)] for i in range(call.n)]

        return cls(script, **kwargs)  # type: ignore[arg-type]

    def _ids(self, tokens: Sequence[str]) -> list[int]:
        with self._lock:
            return [self._vocab.setdefault(token, len(self._vocab)) for token in tokens]

    def sample(
        self,
        images: Sequence[Image.Image],
        prompt: str,
        n: int,
        params: SamplingParams | None = None,
        **settings: Any,
    ) -> list[Sample]:
        params = SamplingParams.of(params, **settings)
        n = check_n(n)
        with self._lock:
            index = len(self.calls)
            self.calls.append(("sample", prompt, n))
        if self.latency:
            time.sleep(self.latency)
        call = ScriptCall(index, list(images), prompt, n, params.temperature, params.seed)
        replies = list(self.script(call))
        if len(replies) != n:
            raise ValueError(f"script returned {len(replies)} replies for n={n}")
        return [self._sample(reply, params.top_logprobs) for reply in replies]

    def _sample(self, reply: Reply | str, top_logprobs: int) -> Sample:
        reply = Reply(reply) if isinstance(reply, str) else reply
        tokens = tokenize(reply.text)
        if isinstance(reply.logprobs, (int, float)):
            logprobs = [float(reply.logprobs)] * len(tokens)
        else:
            logprobs = [float(v) for v in reply.logprobs]
            if len(logprobs) != len(tokens):
                raise ValueError(
                    f"reply {reply.text!r} has {len(tokens)} tokens but {len(logprobs)} log-probs"
                )
        top = None
        if top_logprobs:
            # The chosen token is the most likely one; the alternatives fall off by 1 nat each.
            top = [[lp - j for j in range(top_logprobs)] for lp in logprobs]
        return Sample(
            token_ids=self._ids(tokens),
            logprobs=logprobs,
            tokens=tokens,
            text=reply.text,
            top_logprobs=top,
        )

    def score(
        self, images: Sequence[Image.Image], prompt: str, continuations: Sequence[str]
    ) -> list[TokenLogprobs]:
        with self._lock:
            self.calls.append(("score", prompt, len(continuations)))
        if self.latency:
            time.sleep(self.latency)
        results = []
        for text in continuations:
            tokens = tokenize(text)
            mean = -1.0 if self.scorer is None else self.scorer(images, prompt, text)
            results.append(
                TokenLogprobs(token_ids=self._ids(tokens), logprobs=[mean] * len(tokens), tokens=tokens)
            )
        return results
