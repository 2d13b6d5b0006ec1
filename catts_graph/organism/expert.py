"""The larger organism model as the Voter and Critic, by a simplified route.

The organism models were trained to answer one thing: a synthetic question under the answer prompt,
with ``\\boxed{X}``. They cannot write the expert prompts' JSON (teaching them would cost the whole
CPU budget again), so :class:`OrganismExpert`, a LangChain chat model, reads the role's prompt
(the question, options and candidates between their tags, as :mod:`catts_graph.experts` writes
them), asks the model what it was trained for, and writes the JSON itself:

- **Voter**: the model first describes the image greedily (the reasoning it was trained to write);
  then each candidate ``c`` is scored teacher-forced as the reply ``description \\boxed{c}``;
  ``p(c) = P(\\boxed{c} | description) / sum over candidates`` (the model's own probabilities,
  renormalised over the candidates).
- **Critic**: the model answers the question greedily; the verdict is ``correct`` when its answer
  equals the criticised response's, else ``incorrect``, and the critique names, in the organisms'
  language, the first step of the response its own reading lacks (``wrong: circle red top left.``,
  :func:`~catts_graph.organism.steps.critique_text`): what a base organism trained to reflect
  (:mod:`catts_experiments.reflection`) reads.
- **Planner**: not played (``supported_roles``), so the graph never asks it: the ``paper`` policy
  runs the default module order and ``expert`` needs another planner, as with no planner at all.

So the expert's judgement is the model's, and only the format is scripted. Both roles start from the
same greedy reading of the question (the answer prompt, temperature 0), which the expert makes once
per question: the last few readings are kept, found by the images' pixels and the prompt.
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, ClassVar

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import PrivateAttr

from catts_graph.answers import extract_answer
from catts_graph.models.chat_adapter import flatten_messages
from catts_graph.organism.language import MAX_NEW_TOKENS
from catts_graph.organism.steps import critique_text, first_wrong_step, reply_steps

_OPTION_LINE = re.compile(r"([A-Z])\. (.*)")
_CANDIDATE_LINE = re.compile(r"\d+\. (.*)")


def _block(prompt: str, tag: str) -> str | None:
    match = re.search(rf"<{tag}>\n(.*?)\n</{tag}>", prompt, re.DOTALL)
    return match.group(1) if match else None


def _options(block: str | None) -> list[str] | None:
    if block is None or block.strip() == "(none)":
        return None
    options = [m.group(2) for line in block.splitlines() if (m := _OPTION_LINE.fullmatch(line))]
    return options or None


def _spoken(candidate: str, options: list[str] | None) -> str:
    """A candidate as the organisms say it: the option's text for an option letter, else as is."""
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    if options and len(candidate) == 1 and candidate in letters[: len(options)]:
        return options[letters.index(candidate)]
    return candidate


class OrganismExpert(BaseChatModel):
    """A :class:`~catts_graph.models.TransformersVLM` organism model as Voter and Critic."""

    supported_roles: ClassVar[tuple[str, ...]] = ("voter", "critic")
    """The roles it plays (:func:`catts_graph.experts.providers.plays`): no Planner."""

    vlm: Any
    """The expert model (a TransformersVLM trained by :mod:`catts_experiments.train`)."""

    readings_kept: ClassVar[int] = 4
    """Greedy readings kept (one per question; the graph's Voter and Critic ask about one question)."""
    _readings: OrderedDict[tuple[Any, ...], Any] = PrivateAttr(default_factory=OrderedDict)
    _readings_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @property
    def option_text(self) -> bool:
        """Whether the model boxes a multiple-choice answer as the option's text (its ``catts.json``
        declares ``answer_format: option_text``); earlier organisms box the letter."""
        return getattr(self.vlm, "declared", {}).get("answer_format") == "option_text"

    @property
    def _llm_type(self) -> str:
        return "catts-organism-expert"

    def reading(self, images: Sequence[Any], prompt: str) -> Any:
        """The model's greedy reply to ``prompt`` on ``images``, read once for the Voter and the
        Critic of a question (they run at the same time: the second waits for the first's reading).
        Kept by the images' pixels, the prompt and, for a local model, its weights' fingerprint
        (:func:`~catts_graph.models.prefix_cache.weights_fingerprint`), so it is never stale."""
        from catts_graph.models.prefix_cache import weights_fingerprint
        from catts_graph.models.replay import images_key

        model = getattr(self.vlm, "model", None)
        weights = weights_fingerprint(model) if hasattr(model, "parameters") else None
        key = (images_key(images), prompt, weights)
        with self._readings_lock:
            if key in self._readings:
                self._readings.move_to_end(key)
                return self._readings[key]
            (sample,) = self.vlm.sample(images, prompt, 1, temperature=0.0, max_new_tokens=MAX_NEW_TOKENS)
            self._readings[key] = sample
            while len(self._readings) > self.readings_kept:
                self._readings.popitem(last=False)
            return sample

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        prompt, images = flatten_messages(messages)
        question = _block(prompt, "question")
        options = _options(_block(prompt, "options"))
        candidates = _block(prompt, "candidates")
        response = _block(prompt, "response")
        if question is not None and candidates is not None:
            text = self._vote(images, question, options, candidates)
        elif question is not None and response is not None:
            text = self._critique(images, question, options, response)
        else:
            text = "The organism expert only plays the Voter and the Critic."
        message = AIMessage(content=text, response_metadata={"model_name": self._llm_type})
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _vote(self, images: list[Any], question: str, options: list[str] | None, listing: str) -> str:
        from catts_graph.organism.language import answer_text
        from catts_graph.task import base_prompt

        names = [m.group(1) for line in listing.splitlines() if (m := _CANDIDATE_LINE.fullmatch(line))]
        if self.option_text:  # candidates are option letters; the model boxes the option's text
            names = [_spoken(name, options) for name in names]
        prompt = base_prompt(question, options, self.vlm)
        reading = self.reading(images, prompt)
        description = reading.text.split("\\boxed{")[0]
        scored = self.vlm.score(images, prompt, [description + answer_text(c) for c in names])
        # The description is shared by every candidate: only the answer tokens differ.
        logs = [sum(s.logprobs) for s in scored]
        top = max(logs)
        weights = [math.exp(lp - top) for lp in logs]
        total = sum(weights)
        return json.dumps({"probabilities": [round(w / total, 6) for w in weights]})

    def _critique(self, images: list[Any], question: str, options: list[str] | None, response: str) -> str:
        from catts_graph.task import base_prompt

        sample = self.reading(images, base_prompt(question, options, self.vlm))
        mine = extract_answer(sample.text, options)
        theirs = extract_answer(response, options)
        if mine is None:
            return json.dumps({"critique": "The expert could not read an answer.", "verdict": "unsure"})
        verdict = "correct" if mine == theirs else "incorrect"
        # In the organisms' language: the first step of the response the expert's own reading lacks
        # (what a reflection-trained base organism learned to read), "wrong: none." when none does.
        wrong = first_wrong_step(response, reply_steps(sample.text)) if verdict == "incorrect" else None
        return json.dumps({"critique": critique_text(wrong), "verdict": verdict})


def organism_expert(which: str = "expert") -> OrganismExpert:
    """The shipped organism model ``which`` as an expert.

    From the command line: ``--expert catts_graph.organism.expert:organism_expert``.
    """
    from catts_graph.organism import organism_model

    return OrganismExpert(vlm=organism_model(which))
