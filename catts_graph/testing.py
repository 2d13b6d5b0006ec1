"""Test doubles that speak the real protocols, for tests and benchmarks of the graph.

Like LangChain's fake chat models, nothing here is ever chosen by default: a user only gets one by
constructing it. :class:`ScriptedVLM` is a base model that returns the replies its script gives,
tokenised into words and spaces (so ``"".join(tokens) == text``), with the log-probs the script
sets (and, optionally, the full-vocabulary entropies), and that continues a reply from a prefix
(``continue_reply``) with what the script gives. :class:`ScriptedExpert` is a chat model that plays
the expert roles through structured output, as provider models are asked.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatResult
from langchain_core.runnables import Runnable, RunnableLambda
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from catts_graph.experts import CriticAnswer, PlannerAnswer, VoterAnswer
from catts_graph.models.base import Sample, SamplingParams, TokenLogprobs, check_n

_TOKEN = re.compile(r"\s+|\S+")


@dataclass(frozen=True)
class Reply:
    """One scripted response: its text, the log-prob of each token (one value for all, or a list)
    and, optionally, each step's full-vocabulary entropy (one value for all, or a list)."""

    text: str
    logprobs: float | Sequence[float] = -0.1
    entropies: float | Sequence[float] | None = None


@dataclass(frozen=True)
class ScriptCall:
    """What the script sees of one ``sample`` call, or of one ``continue_reply`` call (``prefix``
    is then the reply's beginning, and the script gives what follows it)."""

    index: int
    images: Sequence[Image.Image]
    prompt: str
    n: int
    temperature: float
    seed: int | None
    prefix: str | None = None


Script = Callable[[ScriptCall], Sequence[Reply | str]]
Scorer = Callable[[Sequence[Image.Image], str, str], float | Sequence[float]]


def tokenize(text: str) -> list[str]:
    """Words and runs of white space: a tokenisation whose pieces join back to ``text``."""
    return _TOKEN.findall(text)


@dataclass
class ScriptedVLM:
    """A base model whose ``sample`` answers from ``script`` and whose ``score`` uses ``scorer``.

    ``script`` gets a :class:`ScriptCall` and returns ``n`` replies. ``scorer(images, prompt,
    continuation)`` gives the log-prob of every token of a teacher-forced continuation (one float,
    default -1) or of each token in turn (a sequence, one per token of :func:`tokenize`).
    ``continue_reply`` asks the script too, with the prefix in :attr:`ScriptCall.prefix`; its
    replies are the continuations. ``latency`` seconds are slept per call, to model a slow backend.
    Every call is recorded in ``calls`` (kind, prompt, n; ``continue`` calls as ``("continue",
    prompt, n, prefix)``).
    """

    script: Script
    scorer: Scorer | None = None
    latency: float = 0.0
    answer_prompt: str | None = None
    reflection_prompt: str | None = None
    calls: list[tuple[Any, ...]] = field(default_factory=list)
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
        return self._draw(images, prompt, n, SamplingParams.of(params, **settings), None)

    def continue_reply(
        self,
        images: Sequence[Image.Image],
        prompt: str,
        prefix: str,
        n: int,
        params: SamplingParams | None = None,
        **settings: Any,
    ) -> list[Sample]:
        """The script's replies to ``ScriptCall(prefix=prefix)``, as the continuations of ``prefix``."""
        if not isinstance(prefix, str):
            raise TypeError(f"prefix: got {type(prefix).__name__}, expected str")
        return self._draw(images, prompt, n, SamplingParams.of(params, **settings), prefix)

    def _draw(
        self,
        images: Sequence[Image.Image],
        prompt: str,
        n: int,
        params: SamplingParams,
        prefix: str | None,
    ) -> list[Sample]:
        n = check_n(n)
        with self._lock:
            index = len(self.calls)
            self.calls.append(("sample", prompt, n) if prefix is None else ("continue", prompt, n, prefix))
        if self.latency:
            time.sleep(self.latency)
        call = ScriptCall(index, list(images), prompt, n, params.temperature, params.seed, prefix)
        replies = list(self.script(call))
        if len(replies) != n:
            raise ValueError(f"script returned {len(replies)} replies for n={n}")
        return [self._sample(reply, params.top_logprobs) for reply in replies]

    def _sample(self, reply: Reply | str, top_logprobs: int) -> Sample:
        reply = Reply(reply) if isinstance(reply, str) else reply
        tokens = tokenize(reply.text)
        logprobs = _per_token(reply.logprobs, tokens, reply.text, "log-probs")
        entropies = (
            None if reply.entropies is None else _per_token(reply.entropies, tokens, reply.text, "entropies")
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
            entropies=entropies,
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
            scored = -1.0 if self.scorer is None else self.scorer(images, prompt, text)
            if isinstance(scored, (int, float)):
                logprobs = [float(scored)] * len(tokens)
            else:
                logprobs = [float(v) for v in scored]
                if len(logprobs) != len(tokens):
                    raise ValueError(
                        f"scorer gave {len(logprobs)} log-probs for the {len(tokens)} tokens of {text!r}"
                    )
            results.append(TokenLogprobs(token_ids=self._ids(tokens), logprobs=logprobs, tokens=tokens))
        return results


def _per_token(values: float | Sequence[float], tokens: Sequence[str], text: str, what: str) -> list[float]:
    """One value per token: a number repeated, or a sequence of exactly one per token."""
    if isinstance(values, (int, float)):
        return [float(values)] * len(tokens)
    out = [float(v) for v in values]
    if len(out) != len(tokens):
        raise ValueError(f"reply {text!r} has {len(tokens)} tokens but {len(out)} {what}")
    return out


class ScriptedExpert(BaseChatModel):
    """A chat model that plays the expert roles from a script, as a provider model does: through
    ``with_structured_output``. The role comes from the schema asked for, never from the prompt.

    ``replies[role]`` is the JSON text the model answers, an exception to raise, or a callable of
    (messages, attempt) giving either. Each answer is validated against the schema as a provider's
    parser would: a reply that does not fit comes back as a ``parsing_error``. ``latency`` seconds
    are slept per call, by ``time.sleep`` under ``invoke`` and ``asyncio.sleep`` under ``ainvoke``
    (as provider clients do). Every call is recorded in ``calls`` with its role, messages and start
    and end times, so a test can check what the expert saw and whether calls overlapped.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)
    replies: dict[str, Any] = Field(default_factory=dict)
    latency: float = 0.0
    calls: list[dict[str, Any]] = Field(default_factory=list)
    lock: Any = Field(default_factory=threading.Lock)

    @property
    def _llm_type(self) -> str:
        return "scripted-expert"

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any
    ) -> ChatResult:
        raise NotImplementedError(
            "ScriptedExpert answers through with_structured_output(schema), where the schema names the role"
        )

    def with_structured_output(
        self, schema: Any, *, include_raw: bool = False, **kwargs: Any
    ) -> Runnable[Any, Any]:
        role = _SCHEMA_ROLES.get(schema)
        if role is None:
            raise ValueError(f"schema {schema!r} is not an expert role's; known: {list(_SCHEMA_ROLES)}")

        def answer(messages: Any) -> Any:
            call = self._start(role, messages)
            if self.latency:
                time.sleep(self.latency)
            return self._finish(call, schema, include_raw)

        async def aanswer(messages: Any) -> Any:
            call = self._start(role, messages)
            if self.latency:
                await asyncio.sleep(self.latency)
            return self._finish(call, schema, include_raw)

        return RunnableLambda(answer, afunc=aanswer, name=f"scripted_{role}")

    def _start(self, role: str, messages: Any) -> dict[str, Any]:
        messages = list(messages.to_messages() if hasattr(messages, "to_messages") else messages)
        with self.lock:
            attempt = sum(1 for c in self.calls if c["role"] == role)
            call = {"role": role, "messages": messages, "attempt": attempt, "start": time.perf_counter()}
            call["end"] = None
            self.calls.append(call)
        return call

    def _finish(self, call: dict[str, Any], schema: type[BaseModel], include_raw: bool) -> Any:
        reply = self.replies.get(call["role"])
        if reply is None:
            raise AssertionError(f"no scripted reply for role {call['role']!r}")
        if callable(reply) and not isinstance(reply, BaseException):
            reply = reply(call["messages"], call["attempt"])
        call["end"] = time.perf_counter()
        if isinstance(reply, BaseException):
            raise reply
        raw = AIMessage(
            content=reply, usage_metadata={"input_tokens": 10, "output_tokens": 5, "total_tokens": 15}
        )
        try:
            parsed, error = schema.model_validate_json(reply), None
        except ValueError as err:
            if not include_raw:
                raise
            parsed, error = None, err
        return {"raw": raw, "parsed": parsed, "parsing_error": error} if include_raw else parsed

    def roles_called(self) -> list[str]:
        """The role of each call, in the order the calls started."""
        return [c["role"] for c in self.calls]


_SCHEMA_ROLES: dict[type[BaseModel], str] = {
    PlannerAnswer: "planner",
    VoterAnswer: "voter",
    CriticAnswer: "critic",
}
