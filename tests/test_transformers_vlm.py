"""TransformersVLM on the tiny real Qwen2.5-VL: shapes, raw log-probs, prefix sharing, seeds."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from catts_graph.models.base import BaseVLM, Sample, SamplingParams, answer_scorer_of
from catts_graph.models.transformers_vlm import TransformersVLM
from catts_graph.vcd import answer_logprob, answer_tokens
from tests.conftest_models import *  # noqa: F403  (fixtures, until tests/conftest.py imports them)

PROMPT = "What colour is the square?"
ATOL = 1e-4  # float32 on CPU; a wrong rope position shifts log-probs by more (see the uncached test)


def _uncached_logits(vlm: TransformersVLM, image: Image.Image, prompt: str, ids: list[int]) -> torch.Tensor:
    """Reference: one plain forward over prompt + continuation (positions computed by the model);
    the float64 logits that predict each continuation token."""
    inputs = vlm._encode([image], prompt)
    cont = torch.tensor([ids])
    full = {
        **inputs,
        "input_ids": torch.cat([inputs["input_ids"], cont], 1),
        "attention_mask": torch.ones(1, inputs["input_ids"].shape[1] + len(ids), dtype=torch.long),
        "mm_token_type_ids": torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(cont)], 1),
    }
    vlm.model.model.rope_deltas = None
    with torch.no_grad():
        logits = vlm.model(**full).logits[0].double()
    start = inputs["input_ids"].shape[1] - 1
    return logits[start : start + len(ids)]


def _uncached_logprobs(vlm: TransformersVLM, image: Image.Image, prompt: str, ids: list[int]) -> list[float]:
    logprobs = torch.log_softmax(_uncached_logits(vlm, image, prompt, ids), -1)
    return logprobs.gather(1, torch.tensor(ids)[:, None])[:, 0].tolist()


def _uncached_entropies(vlm: TransformersVLM, image: Image.Image, prompt: str, ids: list[int]) -> list[float]:
    """``H_t = -sum_v p_t(v) log p_t(v)`` over the whole vocabulary."""
    return (
        torch.distributions.Categorical(logits=_uncached_logits(vlm, image, prompt, ids)).entropy().tolist()
    )


def _close(a: list[float], b: list[float], atol: float = ATOL) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= atol for x, y in zip(a, b, strict=True))


def test_from_pretrained_defaults_on_cpu(tiny_vlm: TransformersVLM) -> None:
    assert isinstance(tiny_vlm, BaseVLM)
    assert tiny_vlm.device.type == "cpu"
    assert tiny_vlm.model.dtype == torch.float32
    assert tiny_vlm.model.config._attn_implementation == "sdpa"
    assert tiny_vlm.tokenizer.convert_tokens_to_ids("<|im_end|>") in tiny_vlm.stop_token_ids


def test_max_pixels_caps_image_tokens(tiny_model_dir: Path, tiny_image: Image.Image) -> None:
    small = TransformersVLM.from_pretrained(tiny_model_dir, device="cpu", max_pixels=28 * 28 * 2)
    image_pad = small.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    ids = small._encode([tiny_image], PROMPT)["input_ids"]
    assert int((ids == image_pad).sum()) <= 2
    with pytest.raises(ValueError, match="max_pixels"):
        TransformersVLM.from_pretrained(tiny_model_dir, device="cpu", max_pixels=0)
    with pytest.raises(ValueError, match="dtype"):
        TransformersVLM.from_pretrained(tiny_model_dir, device="cpu", dtype="float8")


def test_sample_shapes_and_invariants(tiny_vlm: TransformersVLM, tiny_image: Image.Image) -> None:
    samples = tiny_vlm.sample([tiny_image], PROMPT, 5, max_new_tokens=12, seed=0, top_logprobs=4)
    assert len(samples) == 5 and all(isinstance(s, Sample) for s in samples)
    for index, s in enumerate(samples):
        assert 1 <= len(s.token_ids) == len(s.logprobs) == len(s.tokens) <= 12
        assert all(lp <= 0 for lp in s.logprobs)
        assert "".join(s.tokens) == s.text == tiny_vlm.tokenizer.decode(s.token_ids)
        assert s.finish_reason == ("length" if len(s.token_ids) == 12 else "stop")
        assert not set(s.token_ids) & tiny_vlm.stop_token_ids
        assert s.top_logprobs is not None and len(s.top_logprobs) == len(s.token_ids)
        for top, chosen in zip(s.top_logprobs, s.logprobs, strict=True):
            assert len(top) == 4 and top == sorted(top, reverse=True)
            assert top[0] >= chosen - 1e-6 and all(t <= 0 for t in top)
        assert s.extra == {"seed": 0, "index": index}
    assert tiny_vlm.sample([tiny_image], PROMPT, 2, max_new_tokens=3, seed=0)[0].top_logprobs is None


def test_greedy_matches_generate_and_samples_are_identical(
    tiny_vlm: TransformersVLM, tiny_image: Image.Image
) -> None:
    samples = tiny_vlm.sample([tiny_image], PROMPT, 3, temperature=0, max_new_tokens=16)
    assert all(s.token_ids == samples[0].token_ids and s.logprobs == samples[0].logprobs for s in samples)
    inputs = tiny_vlm._encode([tiny_image], PROMPT)
    tiny_vlm.model.model.rope_deltas = None
    out = tiny_vlm.model.generate(**inputs, max_new_tokens=16, do_sample=False)
    reference = out[0, inputs["input_ids"].shape[1] :].tolist()
    stop = next((i for i, t in enumerate(reference) if t in tiny_vlm.stop_token_ids), len(reference))
    assert samples[0].token_ids == reference[:stop]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_chosen_logprobs_equal_teacher_forced_score(
    tiny_vlm: TransformersVLM, tiny_image: Image.Image, temperature: float
) -> None:
    """The identity behind every confidence: sampled log-probs are the raw teacher-forced ones."""
    samples = tiny_vlm.sample([tiny_image], PROMPT, 4, temperature=temperature, max_new_tokens=10, seed=1)
    scored = tiny_vlm.score([tiny_image], PROMPT, samples)
    for s, sc in zip(samples, scored, strict=True):
        assert sc.token_ids == s.token_ids and sc.tokens == s.tokens
        assert _close(sc.logprobs, s.logprobs)
        assert abs(sum(sc.logprobs) - sum(s.logprobs)) < 1e-3


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_entropies_are_full_vocabulary_and_one_float_per_step(
    tiny_vlm: TransformersVLM, tiny_image: Image.Image, temperature: float
) -> None:
    """Each step's entropy is over the whole vocabulary of the raw distribution (not the top-k),
    and a sample keeps one float per step: O(T), whatever the vocabulary."""
    samples = tiny_vlm.sample(
        [tiny_image], PROMPT, 3, temperature=temperature, top_k=5, max_new_tokens=10, seed=3, top_logprobs=4
    )
    for s in samples:
        assert s.entropies is not None and len(s.entropies) == len(s.token_ids)
        assert all(type(h) is float for h in s.entropies)
        assert _close(s.entropies, _uncached_entropies(tiny_vlm, tiny_image, PROMPT, s.token_ids))
        # The renormalised top-4 is a different, smaller number: the full one is what is kept.
        top_k = [
            float(torch.distributions.Categorical(logits=torch.tensor(t)).entropy()) for t in s.top_logprobs
        ]
        assert all(h > t + 1e-3 for h, t in zip(s.entropies, top_k, strict=True))


def test_identity_holds_with_temperature_top_k_top_p(
    tiny_vlm: TransformersVLM, tiny_image: Image.Image
) -> None:
    """Warping picks the token; the recorded log-prob stays the raw one (unlike the official code)."""
    samples = tiny_vlm.sample(
        [tiny_image], PROMPT, 3, temperature=0.5, top_k=5, top_p=0.9, max_new_tokens=8, seed=2
    )
    for s, sc in zip(samples, tiny_vlm.score([tiny_image], PROMPT, samples), strict=True):
        assert _close(sc.logprobs, s.logprobs)


def test_score_equals_an_uncached_forward(tiny_vlm: TransformersVLM, tiny_image: Image.Image) -> None:
    """Prefill + shared cache + batch gives the model's own positions (mrope from the full input)."""
    texts = ["red", "It is blue.", "x"]
    scored = tiny_vlm.score([tiny_image], PROMPT, texts)
    for text, sc in zip(texts, scored, strict=True):
        assert sc.token_ids == tiny_vlm.tokenizer(text, add_special_tokens=False)["input_ids"]
        assert "".join(sc.tokens or []) == text
        assert _close(sc.logprobs, _uncached_logprobs(tiny_vlm, tiny_image, PROMPT, sc.token_ids), 1e-5)


def test_score_accepts_ids_and_handles_empty(tiny_vlm: TransformersVLM, tiny_image: Image.Image) -> None:
    ids = tiny_vlm.tokenizer("ok", add_special_tokens=False)["input_ids"]
    by_ids, by_text, empty = tiny_vlm.score([tiny_image], PROMPT, [ids, "ok", ""])
    assert by_ids == by_text
    assert empty.token_ids == [] and empty.logprobs == [] and empty.tokens == []
    assert tiny_vlm.score([tiny_image], PROMPT, []) == []
    with pytest.raises(ValueError, match=r"continuations\[0\]"):
        tiny_vlm.score([tiny_image], PROMPT, [[10**9]])
    with pytest.raises(TypeError, match=r"continuations\[1\]"):
        tiny_vlm.score([tiny_image], PROMPT, ["a", 3.5])  # type: ignore[list-item]


def test_tokens_concatenate_to_text_across_multibyte_characters(tiny_vlm: TransformersVLM) -> None:
    text = "é€😀 ok"
    ids = tiny_vlm.tokenizer(text, add_special_tokens=False)["input_ids"]
    decoded, tokens = tiny_vlm.detokenize(ids)
    assert decoded == text and "".join(tokens) == text and len(tokens) == len(ids)
    # Each character lands on the byte token that completes it.
    assert tokens[:2] == ["", "é"] and tokens[2:5] == ["", "", "€"] and tokens[5:9] == ["", "", "", "😀"]
    assert tokens[9:] == [" ", "o", "k"]
    # A cut multi-byte character at the end stays in the text, on the last token.
    decoded, tokens = tiny_vlm.detokenize(ids[:4])
    assert "".join(tokens) == decoded and decoded.startswith("é")


def by_prefixes(vlm: TransformersVLM, ids: list[int]) -> list[str]:
    """The O(T^2) reference: each token gets what it adds to the longest common prefix of the decoded
    prefixes and the whole text."""
    text = vlm._decode_batch([ids])[0]
    pieces, done = [], 0
    for t in range(len(ids)):
        prefix = vlm._decode_batch([ids[: t + 1]])[0] if t < len(ids) - 1 else text
        reached = max(done, len(os.path.commonprefix([prefix, text])))
        pieces.append(text[done:reached])
        done = reached
    return pieces


def test_detokenize_gives_what_decoding_every_prefix_gives(tiny_vlm: TransformersVLM) -> None:
    """Random byte tokens (invalid sequences, cut characters) and real multi-byte text alike."""
    rng = random.Random(0)
    vocab = len(tiny_vlm.tokenizer)
    for trial in range(300):
        if trial % 2:
            ids = [rng.randrange(vocab) for _ in range(rng.randint(1, 24))]
        else:
            text = "".join(rng.choice("aé猫😀 €") for _ in range(rng.randint(1, 10)))
            ids = tiny_vlm.tokenizer(text, add_special_tokens=False)["input_ids"]
        text, tokens = tiny_vlm.detokenize(ids)
        assert tokens == by_prefixes(tiny_vlm, ids), ids
        assert "".join(tokens) == text


def test_one_device_to_host_read_per_decode_step(
    tiny_vlm: TransformersVLM, tiny_image: Image.Image, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Everything Python needs from a decode step leaves the device in one read (a GPU sync)."""
    monkeypatch.setattr(tiny_vlm, "stop_token_ids", {10**9})  # never stop: every step is decoded
    reads = [0]
    for name in ("tolist", "item", "cpu", "numpy", "__bool__", "__int__", "__float__"):
        original = getattr(torch.Tensor, name)

        def counted(self: torch.Tensor, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            reads[0] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)

    def per_step(**settings: Any) -> float:
        counts = []
        for steps in (1, 17):
            reads[0] = 0
            tiny_vlm.sample([tiny_image], PROMPT, 3, max_new_tokens=steps, seed=0, **settings)
            counts.append(reads[0])
        return (counts[1] - counts[0]) / 16

    assert per_step() == per_step(top_logprobs=4) == per_step(temperature=0) == 1.0


def test_seed_reproduces_and_different_seeds_differ(
    tiny_vlm: TransformersVLM, tiny_image: Image.Image
) -> None:
    first = tiny_vlm.sample([tiny_image], PROMPT, 4, max_new_tokens=8, seed=11)
    again = tiny_vlm.sample([tiny_image], PROMPT, 4, max_new_tokens=8, seed=11)
    other = tiny_vlm.sample([tiny_image], PROMPT, 4, max_new_tokens=8, seed=12)
    assert [s.token_ids for s in first] == [s.token_ids for s in again]
    assert [s.logprobs for s in first] == [s.logprobs for s in again]
    assert {tuple(s.token_ids) for s in first}.isdisjoint({tuple(s.token_ids) for s in other})
    assert len({tuple(s.token_ids) for s in first}) == 4


def test_batched_sampling_equals_one_by_one(tiny_vlm: TransformersVLM, tiny_image: Image.Image) -> None:
    """Sample i depends on (seed, i) only: n=6 in one batch agrees with n=1 and n=3 calls.

    A frequent token is made a stop token so rows end at different steps and leave the batch.
    """
    probe = tiny_vlm.sample([tiny_image], PROMPT, 6, max_new_tokens=12, seed=5)
    counts: dict[int, int] = {}
    for s in probe:
        for t in set(s.token_ids):
            counts[t] = counts.get(t, 0) + 1
    vlm = TransformersVLM(tiny_vlm.model, tiny_vlm.processor)
    vlm.stop_token_ids = tiny_vlm.stop_token_ids | {max(counts, key=lambda t: counts[t])}

    batched = vlm.sample([tiny_image], PROMPT, 6, max_new_tokens=12, seed=5)
    assert len({len(s.token_ids) for s in batched}) > 1, "rows should finish at different steps"
    assert any(s.finish_reason == "stop" for s in batched)
    singles = vlm.sample([tiny_image], PROMPT, 1, max_new_tokens=12, seed=5)
    triples = vlm.sample([tiny_image], PROMPT, 3, max_new_tokens=12, seed=5)
    for reference, s in zip(singles + triples, batched[:1] + batched[:3], strict=True):
        assert s.token_ids == reference.token_ids and s.finish_reason == reference.finish_reason
        assert _close(s.logprobs, reference.logprobs, 1e-5)


def test_top_k_one_and_tiny_top_p_are_greedy(tiny_vlm: TransformersVLM, tiny_image: Image.Image) -> None:
    greedy = tiny_vlm.sample([tiny_image], PROMPT, 1, temperature=0, max_new_tokens=10)[0]
    for kwargs in ({"top_k": 1}, {"top_p": 1e-9}):
        for s in tiny_vlm.sample([tiny_image], PROMPT, 3, max_new_tokens=10, seed=4, **kwargs):
            assert s.token_ids == greedy.token_ids


def test_prefix_is_prefilled_once_for_n_samples(tiny_vlm: TransformersVLM, tiny_image: Image.Image) -> None:
    """One sample(n=8) call runs the image+prompt prefix through the language model once, not 8 times."""
    calls: list[tuple[int, int]] = []

    def count(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        embeds = kwargs["inputs_embeds"]
        calls.append((embeds.shape[0], embeds.shape[1]))

    prefix = tiny_vlm._encode([tiny_image], PROMPT)["input_ids"].shape[1]
    tiny_vlm.prefixes.clear()  # a prefix an earlier test read would be kept, not prefilled
    language_model = tiny_vlm.model.model.language_model
    handle = language_model.register_forward_pre_hook(count, with_kwargs=True)
    try:
        samples = tiny_vlm.sample([tiny_image], PROMPT, 8, max_new_tokens=6, seed=0)
    finally:
        handle.remove()
    prefills = [(b, t) for b, t in calls if t > 1]
    assert prefills == [(1, prefix)]
    decoded = sum(b * t for b, t in calls if t == 1)
    assert decoded <= sum(len(s.token_ids) for s in samples)  # one position per generated token


def test_text_only_and_several_images(tiny_vlm: TransformersVLM, tiny_image: Image.Image) -> None:
    for images in ([], [tiny_image, tiny_image.rotate(90, expand=True)]):
        samples = tiny_vlm.sample(images, PROMPT, 2, max_new_tokens=6, seed=3)
        for s, sc in zip(samples, tiny_vlm.score(images, PROMPT, samples), strict=True):
            assert _close(sc.logprobs, s.logprobs)
    # A text-only call after an image call must not reuse the image's rope offsets.
    alone = tiny_vlm.sample([], PROMPT, 1, temperature=0, max_new_tokens=6)[0]
    tiny_vlm.sample([tiny_image], PROMPT, 1, temperature=0, max_new_tokens=6)
    assert tiny_vlm.sample([], PROMPT, 1, temperature=0, max_new_tokens=6)[0].logprobs == alone.logprobs


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"n": 0}, "n="),
        ({"temperature": -1.0}, "temperature="),
        ({"top_p": 0.0}, "top_p="),
        ({"top_k": -2}, "top_k="),
        ({"max_new_tokens": 0}, "max_new_tokens="),
        ({"top_logprobs": -1}, "top_logprobs="),
        ({"top_logprobs": 10**6}, "top_logprobs="),
        ({"seed": -3}, "seed="),
        ({"top_k": True}, "top_k="),
        ({"temperature": "0.5"}, "temperature="),
    ],
)
def test_bad_sampling_arguments_are_named(
    tiny_vlm: TransformersVLM, tiny_image: Image.Image, kwargs: dict[str, Any], name: str
) -> None:
    args = {"n": 1, **kwargs}
    n = args.pop("n")
    with pytest.raises(ValueError, match=name):
        tiny_vlm.sample([tiny_image], PROMPT, n, **args)


def test_sampling_params_are_one_description_given_either_way(
    tiny_vlm: TransformersVLM, tiny_image: Image.Image
) -> None:
    params = SamplingParams(temperature=0.8, max_new_tokens=6, seed=2, top_logprobs=3)
    by_keyword = tiny_vlm.sample([tiny_image], PROMPT, 2, **params.as_kwargs())
    assert tiny_vlm.sample([tiny_image], PROMPT, 2, params) == by_keyword
    # Keywords override the given params.
    assert tiny_vlm.sample([tiny_image], PROMPT, 2, params.replace(seed=5), seed=2) == by_keyword
    assert SamplingParams.of(params, temperature=0).greedy and not params.greedy
    with pytest.raises(TypeError, match=r"unknown sampling setting\(s\) \['temprature'\]; valid: \['max_new"):
        tiny_vlm.sample([tiny_image], PROMPT, 1, temprature=0.5)
    with pytest.raises(TypeError, match="params: got dict"):
        SamplingParams.of({"seed": 1})  # type: ignore[arg-type]


def test_bad_inputs_are_named(tiny_vlm: TransformersVLM, tiny_image: Image.Image) -> None:
    with pytest.raises(TypeError, match=r"images\[1\]"):
        tiny_vlm.sample([tiny_image, "cat.png"], PROMPT, 1)  # type: ignore[list-item]
    with pytest.raises(TypeError, match="prompt"):
        tiny_vlm.score([tiny_image], None, ["a"])  # type: ignore[arg-type]


def test_score_batches_an_empty_continuation_with_others(
    tiny_vlm: TransformersVLM, tiny_image: Image.Image
) -> None:
    empty, text = tiny_vlm.score([tiny_image], PROMPT, ["", "red square"])
    alone = tiny_vlm.score([tiny_image], PROMPT, ["red square"])[0]
    assert empty.token_ids == [] and empty.logprobs == []
    assert text.logprobs == pytest.approx(alone.logprobs, abs=1e-5)


def test_vision_placeholders_are_never_sampled(tiny_vlm: TransformersVLM, tiny_image: Image.Image) -> None:
    assert len(tiny_vlm.suppressed_token_ids) == 5
    samples = tiny_vlm.sample([tiny_image], PROMPT, 8, temperature=2.0, max_new_tokens=48, seed=3)
    drawn = {token for sample in samples for token in sample.token_ids}
    assert drawn and not drawn & tiny_vlm.suppressed_token_ids


def test_generate_vcd_without_contrast_is_greedy(tiny_vlm: TransformersVLM, tiny_image: Image.Image) -> None:
    from catts_graph.perturb import diffusion

    noised = diffusion(tiny_image, 0.5, seed=0)
    plain = tiny_vlm.sample([tiny_image], PROMPT, 1, temperature=0.0, max_new_tokens=12)[0].text
    same = tiny_vlm.generate_vcd([tiny_image], [noised], PROMPT, alpha=0.0, beta=0.0, max_new_tokens=12)
    assert same == plain
    contrasted = tiny_vlm.generate_vcd([tiny_image], [noised], PROMPT, alpha=1.0, beta=0.1, max_new_tokens=12)
    assert isinstance(contrasted, str) and contrasted
    with pytest.raises(ValueError, match="noised_images"):
        tiny_vlm.generate_vcd([tiny_image], [], PROMPT)


def test_a_checkpoint_declares_its_prompts_in_catts_json(tiny_model_dir: Path, tmp_path: Path) -> None:
    import json
    import shutil

    assert TransformersVLM.from_pretrained(tiny_model_dir, device="cpu").answer_prompt is None
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "catts.json").write_text(
        json.dumps({"answer_prompt": "answer_short", "reflection_prompt": "x"})
    )
    vlm = TransformersVLM.from_pretrained(folder, device="cpu")
    assert (vlm.answer_prompt, vlm.reflection_prompt) == ("answer_short", "x")
    (folder / "catts.json").write_text("{not json")
    with pytest.raises(ValueError, match="catts.json: not valid JSON"):
        TransformersVLM.from_pretrained(folder, device="cpu")


# -- continuing a reply from a prefix (step_repair) ---------------------------------------------


def test_greedy_continuation_of_a_greedy_prefix_is_the_rest_of_the_reply(
    tiny_vlm: TransformersVLM, tiny_image: Image.Image
) -> None:
    """Continuing the first k tokens of a greedy reply (as exact ids) writes its remaining tokens,
    with their log-probs and entropies: the prefix enters the prefill as the reply's own tokens."""
    (whole,) = tiny_vlm.sample([tiny_image], PROMPT, 1, temperature=0, max_new_tokens=12)
    assert len(whole.token_ids) >= 6
    k = 4
    (rest,) = tiny_vlm.continue_reply(
        [tiny_image], PROMPT, whole.token_ids[:k], 1, temperature=0, max_new_tokens=12 - k
    )
    assert rest.token_ids == whole.token_ids[k:]
    assert _close(rest.logprobs, whole.logprobs[k:])
    assert rest.entropies is not None and _close(rest.entropies, (whole.entropies or [])[k:])
    assert rest.text == tiny_vlm.detokenize(whole.token_ids[k:])[0]


def test_continuation_logprobs_equal_teacher_forcing_the_whole_text(
    tiny_vlm: TransformersVLM, tiny_image: Image.Image
) -> None:
    """A sampled continuation of a text prefix reports the log-probs of its new tokens only, and
    they are those of teacher-forcing prefix + continuation with ``score``."""
    prefix = "The square is red;"
    prefix_ids = tiny_vlm.tokenizer(prefix, add_special_tokens=False)["input_ids"]
    samples = tiny_vlm.continue_reply([tiny_image], PROMPT, prefix, 3, max_new_tokens=8, seed=5)
    scored = tiny_vlm.score([tiny_image], PROMPT, [prefix_ids + s.token_ids for s in samples])
    for sample, forced in zip(samples, scored, strict=True):
        assert len(sample.logprobs) == len(sample.token_ids) >= 1
        assert forced.token_ids[len(prefix_ids) :] == sample.token_ids
        assert _close(forced.logprobs[len(prefix_ids) :], sample.logprobs)
        assert "".join(sample.tokens or []) == sample.text
    # An empty prefix is an ordinary sample.
    (plain,) = tiny_vlm.sample([tiny_image], PROMPT, 1, max_new_tokens=6, seed=9)
    (empty,) = tiny_vlm.continue_reply([tiny_image], PROMPT, "", 1, max_new_tokens=6, seed=9)
    assert empty.token_ids == plain.token_ids and _close(empty.logprobs, plain.logprobs)
    with pytest.raises(TypeError, match="prefix: got float"):
        tiny_vlm.continue_reply([tiny_image], PROMPT, 3.5, 1)  # type: ignore[arg-type]


def test_score_answers_equals_the_uncut_score_and_an_uncached_forward(
    tiny_vlm: TransformersVLM, tiny_image: Image.Image
) -> None:
    """The self-check's answers in common frames: cut after the closing token, frames' shared text
    encoded once, the output layer at the answers only; the same sums as scoring every continuation
    whole (``score`` + ``answer_logprob``) and as one plain forward per continuation."""
    frames = [
        ("The square is red. \\boxed{", "}. And a tail the cut never reads."),
        ("I see \\boxed{", "}"),
        ("", " is it."),  # the answer first: its first token from the prefill's last position
        ("Answer: ", ""),  # nothing closes it
    ]
    answers = ["red", "12", "B", "blue-green"]
    texts = [prefix + answer + suffix for answer in answers for prefix, suffix in frames]
    spans = [(len(prefix), len(prefix) + len(answer)) for answer in answers for prefix, _ in frames]
    fast = tiny_vlm.score_answers([tiny_image], PROMPT, texts, spans)
    whole = tiny_vlm.score([tiny_image], PROMPT, texts)
    for text, span, value, scored in zip(texts, spans, fast, whole, strict=True):
        run = answer_tokens(scored.tokens or [], *span)
        assert value == pytest.approx(answer_logprob(scored.tokens or [], scored.logprobs, *span), abs=1e-5)
        reference = _uncached_logprobs(tiny_vlm, tiny_image, PROMPT, scored.token_ids)
        assert value == pytest.approx(sum(reference[t] for t in run), abs=ATOL), text
    # Through the accessor the node uses, and with a plain backend (score only) the same numbers.
    plain = answer_scorer_of(ScoreOnly(tiny_vlm))([tiny_image], PROMPT, texts, spans)
    assert answer_scorer_of(tiny_vlm) == tiny_vlm.score_answers
    assert plain == pytest.approx(fast, abs=1e-5)
    assert tiny_vlm.score_answers([tiny_image], PROMPT, [], []) == []
    with pytest.raises(ValueError, match=r"spans\[1\]"):
        tiny_vlm.score_answers([tiny_image], PROMPT, ["ab", "cd"], [(0, 1), (1, 3)])
    with pytest.raises(ValueError, match="spans: got 1 for 2"):
        tiny_vlm.score_answers([tiny_image], PROMPT, ["ab", "cd"], [(0, 1)])


def test_score_answers_runs_the_output_layer_once_per_distinct_context(
    tiny_vlm: TransformersVLM, tiny_image: Image.Image
) -> None:
    """Every candidate written into a frame is predicted from the frame's text: that position's
    logits are computed once, not once per candidate; every other needed position once per
    distinct token prefix."""
    frames = ["The square is red. \\boxed{", "I see \\boxed{"]
    answers = ["red", "12", "B"]
    texts = [frame + answer + "}" for answer in answers for frame in frames]
    spans = [(len(frame), len(frame) + len(answer)) for answer in answers for frame in frames]
    rows: list[int] = []
    head = tiny_vlm.model.get_output_embeddings()
    handle = head.register_forward_hook(lambda module, args, out: rows.append(args[0].shape[0]))
    try:
        fast = tiny_vlm.score_answers([tiny_image], PROMPT, texts, spans)
    finally:
        handle.remove()
    whole = tiny_vlm.score([tiny_image], PROMPT, texts)
    runs = [answer_tokens(scored.tokens or [], *span) for scored, span in zip(whole, spans, strict=True)]
    # The contexts by their whole token prefix (the first token of a continuation is predicted by
    # the prompt's last position, which the prefill computes).
    distinct = {tuple(s.token_ids[:t]) for s, run in zip(whole, runs, strict=True) for t in run if t > 0}
    needed = sum(1 for run in runs for t in run if t > 0)
    assert rows[-1] == len(distinct) < needed
    for value, scored, span in zip(fast, whole, spans, strict=True):
        assert value == pytest.approx(answer_logprob(scored.tokens or [], scored.logprobs, *span), abs=1e-5)


class ScoreOnly:
    """A backend with ``score`` alone (a server, a wrapper): the self-check scores through it."""

    def __init__(self, inner: TransformersVLM) -> None:
        self.inner = inner

    def score(self, images: Any, prompt: str, continuations: Any) -> Any:
        return self.inner.score(images, prompt, continuations)
