"""MemoizedVLM: a repeated deterministic call is answered from memory, anything else is not."""

from __future__ import annotations

from PIL import Image

from catts_graph.models.memo import MemoizedVLM, images_key
from catts_graph.testing import Reply, ScriptCall, ScriptedVLM


def counting_model() -> tuple[ScriptedVLM, list[ScriptCall]]:
    calls: list[ScriptCall] = []

    def script(call: ScriptCall) -> list[Reply]:
        calls.append(call)
        return [Reply(f"\\boxed{{{len(calls)}}}", -0.1)] * call.n

    def scorer(images, prompt, continuation):  # ScriptedVLM scores one continuation per call
        calls.append(None)  # type: ignore[arg-type]
        return -1.0

    return ScriptedVLM(script, scorer=scorer), calls


def test_repeated_greedy_and_seeded_calls_are_computed_once() -> None:
    inner, calls = counting_model()
    memo = MemoizedVLM(inner, max_n=2)
    red = [Image.new("RGB", (8, 8), (255, 0, 0))]
    first = memo.sample(red, "Q", 1, temperature=0.0)
    assert memo.sample(red, "Q", 1, temperature=0.0)[0].text == first[0].text == "\\boxed{1}"
    assert len(calls) == 1 and (memo.hits, memo.misses) == (1, 1)
    memo.sample(red, "Q", 2, seed=3)
    memo.sample(red, "Q", 2, seed=3)
    assert len(calls) == 2
    # Another seed, prompt, image or setting is another call.
    memo.sample(red, "Q", 2, seed=4)
    memo.sample(red, "Q2", 1, temperature=0.0)
    memo.sample([Image.new("RGB", (8, 8), (0, 0, 255))], "Q", 1, temperature=0.0)
    memo.sample(red, "Q", 1, temperature=0.0, max_new_tokens=7)
    assert len(calls) == 6


def test_unseeded_sampling_and_big_pools_are_never_cached() -> None:
    inner, calls = counting_model()
    memo = MemoizedVLM(inner, max_n=2)
    red = [Image.new("RGB", (8, 8), (255, 0, 0))]
    memo.sample(red, "Q", 1)
    memo.sample(red, "Q", 1)
    memo.sample(red, "Q", 3, seed=1)
    memo.sample(red, "Q", 3, seed=1)
    assert len(calls) == 4 and memo.hits == 0


def test_scores_are_cached_per_continuation_list() -> None:
    inner, calls = counting_model()
    memo = MemoizedVLM(inner)
    red = [Image.new("RGB", (8, 8), (255, 0, 0))]
    first = memo.score(red, "Q", ["a", "b"])
    assert memo.score(red, "Q", ["a", "b"]) == first and len(calls) == 2
    memo.score(red, "Q", ["b", "a"])  # another list: computed
    assert len(calls) == 4


def test_declared_prompts_and_other_attributes_pass_through() -> None:
    inner, _ = counting_model()
    inner.answer_prompt = "answer_short"
    inner.extra = 5
    memo = MemoizedVLM(inner)
    assert memo.answer_prompt == "answer_short" and memo.reflection_prompt is None and memo.extra == 5


def test_images_key_sees_pixels_size_and_mode() -> None:
    a = Image.new("RGB", (8, 8), (255, 0, 0))
    assert images_key([a]) == images_key([a.copy()])
    assert images_key([a]) != images_key([Image.new("RGB", (8, 8), (254, 0, 0))])
    assert images_key([a]) != images_key([a.convert("RGBA")])
    assert images_key([a]) != images_key([a, a])
