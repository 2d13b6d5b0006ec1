"""BaseModelChat: the base model as its own expert, over a fake BaseVLM."""

from __future__ import annotations

import asyncio
import base64
import io
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from PIL import Image

from catts_graph.experts import Voter, image_blocks
from catts_graph.models.base import BaseVLM, Sample, TokenLogprobs
from catts_graph.models.chat_adapter import BaseModelChat, flatten_messages


class FakeVLM:
    """Records every sample() call and answers with a fixed text (or prompt-dependent one)."""

    answer_prompt = None
    reflection_prompt = None

    def __init__(self, text: str = "The answer is \\boxed{B}.") -> None:
        self.text = text
        self.calls: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def sample(self, images: Sequence[Image.Image], prompt: str, n: int, **kwargs: Any) -> list[Sample]:
        with self.lock:
            self.calls.append({"images": list(images), "prompt": prompt, "n": n, **kwargs})
        text = self.text if self.text != "echo" else prompt.rsplit("\n", 1)[-1]
        return [Sample(token_ids=[5, 6, 7, 8], logprobs=[-0.1] * 4, text=text)]

    def score(
        self, images: Sequence[Image.Image], prompt: str, continuations: Sequence[str]
    ) -> list[TokenLogprobs]:
        return [TokenLogprobs(token_ids=[], logprobs=[]) for _ in continuations]


def png_b64(size: tuple[int, int], colour: tuple[int, int, int]) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def test_fake_is_a_base_vlm() -> None:
    assert isinstance(FakeVLM(), BaseVLM)


def test_prompt_images_and_reply() -> None:
    vlm = FakeVLM()
    chat = BaseModelChat(vlm=vlm, max_new_tokens=64, temperature=0.0, seed=3)
    reply = chat.invoke(
        [
            HumanMessage(
                content=[
                    *image_blocks([Image.new("RGB", (9, 4), (0, 255, 0))]),
                    {"type": "text", "text": "Which option?"},
                ]
            ),
            SystemMessage(content="You are careful."),
        ]
    )
    assert isinstance(reply, AIMessage)
    assert reply.content == "The answer is \\boxed{B}."
    assert reply.usage_metadata == {"input_tokens": 0, "output_tokens": 4, "total_tokens": 4}
    (call,) = vlm.calls
    assert call["prompt"] == "You are careful.\n\nWhich option?"
    assert call["n"] == 1
    assert (call["temperature"], call["max_new_tokens"], call["seed"]) == (0.0, 64, 3)
    (decoded,) = call["images"]
    assert decoded.size == (9, 4) and decoded.getpixel((0, 0)) == (0, 255, 0)


def test_openai_style_image_url_and_legacy_blocks_are_decoded() -> None:
    uri = "data:image/png;base64," + png_b64((3, 2), (1, 2, 3))
    prompt, images = flatten_messages(
        [
            HumanMessage(
                content=[
                    {"type": "image_url", "image_url": {"url": uri}},
                    {"type": "image_url", "image_url": uri},
                    {"type": "image", "url": uri},
                    {
                        "type": "image",
                        "source_type": "base64",
                        "data": png_b64((2, 2), (9, 9, 9)),
                        "mime_type": "image/png",
                    },
                    "plain string part",
                ]
            ),
            AIMessage(content="earlier reply"),
            HumanMessage(content="follow-up"),
        ]
    )
    assert [im.size for im in images] == [(3, 2), (3, 2), (3, 2), (2, 2)]
    assert prompt == "plain string part\n\nearlier reply\n\nfollow-up"


def test_remote_image_urls_and_bad_blocks_are_refused() -> None:
    with pytest.raises(ValueError, match="inline"):
        flatten_messages(
            [HumanMessage(content=[{"type": "image_url", "image_url": {"url": "https://x/y.png"}}])]
        )
    with pytest.raises(ValueError, match="not valid base64"):
        flatten_messages([HumanMessage(content=[{"type": "image", "base64": "@@@"}])])
    with pytest.raises(ValueError, match="'audio'"):
        flatten_messages([HumanMessage(content=[{"type": "audio", "base64": "AAAA"}])])


def test_stop_sequences_cut_the_reply() -> None:
    chat = BaseModelChat(vlm=FakeVLM(text="first part END second"))
    assert chat.invoke("hi", stop=["END"]).content == "first part "


def test_identity() -> None:
    chat = BaseModelChat(vlm=FakeVLM())
    assert chat._llm_type == "catts-base-model"
    assert chat._identifying_params["vlm"] == "FakeVLM"


def test_concurrent_calls_from_threads_and_async() -> None:
    vlm = FakeVLM(text="echo")
    chat = BaseModelChat(vlm=vlm)
    with ThreadPoolExecutor(max_workers=4) as pool:
        replies = list(pool.map(lambda i: chat.invoke(f"question {i}").content, range(16)))
    assert replies == [f"question {i}" for i in range(16)]

    async def many() -> list[str]:
        results = await asyncio.gather(*(chat.ainvoke(f"q{i}") for i in range(4)))
        return [str(r.content) for r in results]

    assert asyncio.run(many()) == ["q0", "q1", "q2", "q3"]


def test_as_self_expert_inside_call_expert_with_timeout() -> None:
    vlm = FakeVLM(text='Probabilities: {"probabilities": [1, 1]}')
    voter = Voter(BaseModelChat(vlm=vlm), backoff=0, timeout=5.0)
    result = voter.vote(
        question="q", options=["x", "y"], images=[Image.new("RGB", (4, 4))], candidates=["A", "B"]
    )
    assert result.ok and result.value == [0.5, 0.5]
    assert result.output_tokens == 4 and result.input_tokens == 0
    assert "<candidates>\n1. A\n2. B\n</candidates>" in vlm.calls[0]["prompt"]
    assert len(vlm.calls[0]["images"]) == 1


def test_a_retry_changes_the_greedy_prompt() -> None:
    vlm = FakeVLM(text="I cannot decide.")
    voter = Voter(BaseModelChat(vlm=vlm), retries=1, backoff=0, timeout=None)
    result = voter.vote(question="q", options=None, images=[], candidates=["A", "B"])
    assert not result.ok and len(vlm.calls) == 2
    assert vlm.calls[0]["prompt"] != vlm.calls[1]["prompt"]
    assert vlm.calls[1]["prompt"].endswith("Reply again, with only the JSON object asked for above.")
