"""ReplayVLM: answers from memory, from a served pool and from a JSON-lines file, else the inner model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from catts_graph.models.base import SamplingParams
from catts_graph.models.replay import NotRecordedError, ReplayVLM, images_key, read_responses
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


RED = [Image.new("RGB", (8, 8), (255, 0, 0))]


# -- memory ---------------------------------------------------------------------------------------


def test_repeated_greedy_and_seeded_calls_are_computed_once() -> None:
    inner, calls = counting_model()
    memo = ReplayVLM(inner, memo_max_n=2)
    first = memo.sample(RED, "Q", 1, temperature=0.0)
    assert memo.sample(RED, "Q", 1, temperature=0.0)[0].text == first[0].text == "\\boxed{1}"
    assert len(calls) == 1 and (memo.hits, memo.misses) == (1, 1)
    memo.sample(RED, "Q", 2, seed=3)
    memo.sample(RED, "Q", 2, SamplingParams(seed=3))  # the same call, given as SamplingParams
    assert len(calls) == 2
    # Another seed, prompt, image or setting is another call.
    memo.sample(RED, "Q", 2, seed=4)
    memo.sample(RED, "Q2", 1, temperature=0.0)
    memo.sample([Image.new("RGB", (8, 8), (0, 0, 255))], "Q", 1, temperature=0.0)
    memo.sample(RED, "Q", 1, temperature=0.0, max_new_tokens=7)
    assert len(calls) == 6


def test_unseeded_sampling_big_calls_and_a_memo_of_zero_are_never_remembered() -> None:
    inner, calls = counting_model()
    memo = ReplayVLM(inner, memo_max_n=2)
    memo.sample(RED, "Q", 1)
    memo.sample(RED, "Q", 1)
    memo.sample(RED, "Q", 3, seed=1)
    memo.sample(RED, "Q", 3, seed=1)
    assert len(calls) == 4 and memo.hits == 0
    plain = ReplayVLM(inner)
    plain.sample(RED, "Q", 1, temperature=0.0)
    plain.sample(RED, "Q", 1, temperature=0.0)
    plain.score(RED, "Q", ["a"])
    plain.score(RED, "Q", ["a"])
    assert len(calls) == 8 and plain.hits == plain.misses == 0


def test_scores_are_remembered_per_continuation_list() -> None:
    inner, calls = counting_model()
    memo = ReplayVLM(inner, memo_max_n=1)
    first = memo.score(RED, "Q", ["a", "b"])
    assert memo.score(RED, "Q", ["a", "b"]) == first and len(calls) == 2
    memo.score(RED, "Q", ["b", "a"])  # another list: computed
    assert len(calls) == 4


def test_answer_scores_are_remembered_and_come_from_the_inner_model() -> None:
    inner, calls = counting_model()
    memo = ReplayVLM(inner, memo_max_n=1)
    texts, spans = ["x \\boxed{1}", "x \\boxed{2}"], [(9, 10), (9, 10)]
    first = memo.score_answers(RED, "Q", texts, spans)
    # The scripted tokeniser writes "\\boxed{1}" as one token, scored -1: the answer's log-prob.
    assert first == [-1.0, -1.0] and len(calls) == 2
    assert memo.score_answers(RED, "Q", texts, spans) == first and len(calls) == 2
    memo.score_answers(RED, "Q", texts, [(8, 10), (9, 10)])  # other spans: computed
    assert len(calls) == 4


def test_declared_prompts_and_other_attributes_pass_through() -> None:
    inner, _ = counting_model()
    inner.answer_prompt = "answer_short"
    inner.extra = 5
    memo = ReplayVLM(inner, memo_max_n=1)
    assert memo.answer_prompt == "answer_short" and memo.reflection_prompt is None and memo.extra == 5
    with pytest.raises(AttributeError, match="no inner model"):
        ReplayVLM(responses={"a": []}).generate_vcd  # noqa: B018


def test_images_key_sees_pixels_size_and_mode() -> None:
    a = Image.new("RGB", (8, 8), (255, 0, 0))
    assert images_key([a]) == images_key([a.copy()])
    assert images_key([a]) != images_key([Image.new("RGB", (8, 8), (254, 0, 0))])
    assert images_key([a]) != images_key([a.convert("RGBA")])
    assert images_key([a]) != images_key([a, a])


def test_bad_settings_are_named() -> None:
    inner, _ = counting_model()
    with pytest.raises(ValueError, match="memo_max_n=-1"):
        ReplayVLM(inner, memo_max_n=-1)
    with pytest.raises(ValueError, match="an inner model, recorded responses, or both"):
        ReplayVLM()
    with pytest.raises(TypeError, match=r"unknown sampling setting\(s\) \['temprature'\]"):
        ReplayVLM(inner).sample(RED, "Q", 1, temprature=0.5)
    with pytest.raises(ValueError, match="top_p=0"):
        ReplayVLM(inner).sample(RED, "Q", 1, top_p=0)


# -- responses from a file ------------------------------------------------------------------------


def write_lines(path: Path, rows: list[object]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    return path


def test_reads_both_formats_in_file_order(tmp_path: Path) -> None:
    vllm_entry = {
        "token": "é",
        "logprob": -0.2,
        "top_logprobs": [{"token": "e", "logprob": -1.5}, {"token": "é", "logprob": -0.2}],
    }
    rows = [
        {
            "id": "q1",
            "text": "ab",
            "token_logprobs": [-0.5, -0.25],
            "top_logprobs": [[-0.5, -1.0], {"x": -2.0, "a": -0.1}],
            "entropies": [1.25, 0],
        },
        {
            "id": 7,
            "text": "A",
            "token_logprobs": [-0.1],
            "tokens": ["A"],
            "token_ids": [65],
            "finish_reason": "length",
        },
        {
            "id": "q1",
            "message": {"role": "assistant", "content": "é"},
            "logprobs": {
                "content": [
                    vllm_entry,
                    {
                        "token": "<|im_end|>",
                        "logprob": -0.01,
                        "top_logprobs": [{"token": "<|im_end|>", "logprob": -0.01}],
                    },
                ]
            },
            "finish_reason": "stop",
            "stop_reason": None,
        },
        {"id": "q1", "text": "x", "logprobs": {"content": [{"token": "x", "logprob": -3.0}]}},
    ]
    responses = read_responses(write_lines(tmp_path / "r.jsonl", rows))
    assert list(responses) == ["q1", "7"]
    first, choice, bare = responses["q1"]
    assert first.text == "ab" and first.logprobs == [-0.5, -0.25] and first.tokens is None
    assert first.top_logprobs == [[-0.5, -1.0], [-0.1, -2.0]] and first.token_ids == [-1, -1]
    assert first.entropies == [1.25, 0.0] and responses["7"][0].entropies is None
    assert responses["7"][0].token_ids == [65] and responses["7"][0].finish_reason == "length"
    # vLLM's listed stop token is dropped; top log-probs come back sorted.
    assert choice.text == "é" and choice.logprobs == [-0.2] and choice.tokens == ["é"]
    assert choice.top_logprobs == [[-0.2, -1.5]]
    assert bare.text == "x" and bare.logprobs == [-3.0] and bare.top_logprobs is None
    replay = ReplayVLM.from_jsonl(tmp_path / "r.jsonl")
    assert replay.item_ids == ["q1", "7"] and [s.text for s in replay.responses("q1")] == ["ab", "é", "x"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", r"r.jsonl:2: not valid JSON"),
        ("[1, 2]", r"r.jsonl:2: expected a JSON object, got list"),
        ('{"text": "a", "token_logprobs": [-1]}', r"r.jsonl:2: 'id' must be the item's id"),
        ('{"id": "a", "token_logprobs": [-1]}', r"r.jsonl:2: 'text' must be the response text"),
        (
            '{"id": "a", "text": "a", "token_logprobs": [-1, "x"]}',
            r"'token_logprobs' must be a list of finite",
        ),
        ('{"id": "a", "text": "a", "token_logprobs": []}', r"'token_logprobs' is empty but 'text' is not"),
        (
            '{"id": "a", "text": "a", "token_logprobs": [-1], "tokens": ["a", "b"]}',
            r"'tokens' must be 1 strings",
        ),
        (
            '{"id": "a", "text": "a", "token_logprobs": [-1], "top_logprobs": [[]]}',
            r"top_logprobs\[0\] must be",
        ),
        (
            '{"id": "a", "text": "a", "token_logprobs": [-1], "top_logprobs": []}',
            r"'top_logprobs' must hold 1",
        ),
        (
            '{"id": "a", "text": "a", "token_logprobs": [-1], "entropies": [-0.5]}',
            r"'entropies' must be 1 finite numbers >= 0",
        ),
        (
            '{"id": "a", "text": "a", "token_logprobs": [-1], "entropies": [0.1, 0.2]}',
            r"'entropies' must be 1 finite numbers >= 0",
        ),
        (
            '{"id": "a", "text": "a", "logprobs": {"content": [{"token": "a"}]}}',
            r"logprobs.content\[0\]: expected",
        ),
        ('{"id": "a", "text": "a", "logprobs": null}', r"r.jsonl:2: the reply has no log-probs"),
    ],
)
def test_a_bad_line_is_named_by_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text('{"id": "ok", "text": "", "token_logprobs": []}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        read_responses(path)


def test_missing_and_empty_files_and_unknown_items_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        ReplayVLM.from_jsonl(tmp_path / "none.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n", encoding="utf-8")
    with pytest.raises(ValueError, match="holds no responses"):
        ReplayVLM.from_jsonl(tmp_path / "empty.jsonl")
    path = write_lines(tmp_path / "r.jsonl", [{"id": "q1", "text": "a", "token_logprobs": [-1.0]}])
    replay = ReplayVLM.from_jsonl(path)
    with pytest.raises(
        ValueError, match=r"r.jsonl: no responses for item 'q2'; the file has 1 items \('q1'\)"
    ):
        replay.responses("q2")


def test_without_an_inner_model_only_recorded_calls_are_answered(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "r.jsonl", [{"id": "q", "text": f"r{i}", "token_logprobs": [-1.0]} for i in range(3)]
    )
    replay = ReplayVLM.from_jsonl(path)
    with replay.serving(replay.responses("q")) as served:
        # prompt=None and params=None (made elsewhere): any sampling call is served, in file order.
        assert [s.text for s in replay.sample(RED, "any prompt", 2, temperature=0.6, seed=9)] == ["r0", "r1"]
        assert served == [0, 1]
        with pytest.raises(NotRecordedError, match="sample\\(\\) call and there is no inner model"):
            replay.sample(RED, "Q", 1, temperature=0.0)  # greedy is never served from samples
    with pytest.raises(NotRecordedError, match="score\\(\\) needs the model"):
        replay.score(RED, "Q", ["r0"])
    with pytest.raises(NotRecordedError, match="score_answers\\(\\) needs the model"):
        replay.score_answers(RED, "Q", ["\\boxed{r0}"], [(7, 9)])


def test_an_inner_model_scores_and_answers_what_the_file_cannot(tmp_path: Path) -> None:
    inner, calls = counting_model()
    path = write_lines(tmp_path / "r.jsonl", [{"id": "q", "text": "r0", "token_logprobs": [-1.0]}])
    replay = ReplayVLM.from_jsonl(path, inner)
    with replay.serving(replay.responses("q"), prompt="Q"):
        assert replay.sample(RED, "Q", 1)[0].text == "r0"
        assert replay.sample(RED, "other prompt", 1)[0].text == "\\boxed{1}"
        assert replay.sample(RED, "Q", 1, temperature=0.0)[0].text == "\\boxed{2}"
        assert [t.logprobs for t in replay.score(RED, "Q", ["a b"])] == [[-1.0, -1.0, -1.0]]
    assert len(calls) == 3
