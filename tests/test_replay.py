"""ReplayVLM: answers from memory, from a served pool and from a JSON-lines file, else the inner model."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from catts_graph.models.base import SamplingParams, check_spelling
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
        ('{"text": "a", "token_logprobs": [-1]}', r"r.jsonl:2: id=None: expected the item's id"),
        ('{"id": "a", "token_logprobs": [-1]}', r"r.jsonl:2: text=None: expected the response text"),
        (
            '{"id": "a", "text": "a", "token_logprobs": [-1, "x"]}',
            r"r.jsonl:2: token_logprobs\[1\]='x': expected a log-probability",
        ),
        (
            '{"id": "a", "text": "a", "token_logprobs": []}',
            r"r.jsonl:2: token_logprobs is empty but text is not",
        ),
        (
            '{"id": "a", "text": "a", "token_logprobs": [-1], "tokens": ["a", "b"]}',
            r"r.jsonl:2: tokens=<a JSON array of 2 entries>: expected 1 entries",
        ),
        (
            '{"id": "a", "text": "a", "token_logprobs": [-1], "top_logprobs": [[]]}',
            r"r.jsonl:2: top_logprobs\[0\]=<a JSON array of 0 entries>: expected a non-empty",
        ),
        (
            '{"id": "a", "text": "a", "token_logprobs": [-1], "top_logprobs": []}',
            r"r.jsonl:2: top_logprobs=<a JSON array of 0 entries>: expected 1 entries",
        ),
        (
            '{"id": "a", "text": "a", "token_logprobs": [-1], "entropies": [-0.5]}',
            r"r.jsonl:2: entropies\[0\]=-0.5: expected an entropy in nats",
        ),
        (
            '{"id": "a", "text": "a", "token_logprobs": [-1], "entropies": [0.1, 0.2]}',
            r"r.jsonl:2: entropies=<a JSON array of 2 entries>: expected 1 entries",
        ),
        (
            '{"id": "a", "text": "a", "logprobs": {"content": [{"token": "a"}]}}',
            r"r.jsonl:2: logprobs.content\[0\].logprob=None: expected a log-probability",
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


# -- every field of a recorded line, in either format (issue 25, item 2) --------------------------

NATIVE: dict[str, Any] = {
    "id": "q",
    "text": "ab",
    "token_logprobs": [-0.5, -0.25],
    "tokens": ["a", "b"],
    "token_ids": [1, 2],
    "top_logprobs": [[-0.5, -1.0], [-0.25, -2.0]],
    "entropies": [1.0, 0.5],
    "finish_reason": "stop",
}
VLLM: dict[str, Any] = {
    "id": "q",
    "message": {"role": "assistant", "content": "ab"},
    "logprobs": {
        "content": [
            {"token": t, "logprob": lp, "bytes": [ord(t)], "top_logprobs": [{"token": t, "logprob": lp}]}
            for t, lp in (("a", -0.5), ("b", -0.25))
        ]
    },
    "token_ids": [1, 2],
    "finish_reason": "length",
    "stop_reason": None,
}
ENTRY = ("logprobs", "content", 0)
# Each field read, and values it must refuse (raw JSON: NaN, infinities and long integers included).
NUMBERS = ["NaN", "-Infinity", "Infinity", '"x"', "true", "null", "{}", "[]", "9" * 400, "-" + "9" * 5000]
BAD_VALUES: dict[tuple[Any, ...], list[str]] = {
    ("id",): ["null", "true", "-1.5", '""', "[]", "{}"],
    ("text",): ["null", "5", "[]", '"\\ud800"'],
    ("token_logprobs",): ["null", "5", '"x"', "[]", "[-0.5]"],
    ("token_logprobs", 0): [*NUMBERS, "0.5", "-1e308"],
    ("tokens",): ["5", '"ab"', '["a"]'],
    ("tokens", 0): ["5", "null", '"z"', '"\\ud800"'],
    ("token_ids",): ["5", '"ab"', "[1]"],
    ("token_ids", 0): ['"1"', "1.5", "-2", "true", "9" * 400, "2147483648"],
    ("top_logprobs",): ["5", "[[-1]]"],
    ("top_logprobs", 0): ["5", "[]", "{}", '"x"', "[{}]", '[{"token": 5, "logprob": -1}]'],
    ("top_logprobs", 0, 0): [*NUMBERS, "0.5", "-1e308"],
    ("entropies",): ["5", "[1]"],
    ("entropies", 0): [*NUMBERS, "-0.5", "1e308"],
    ("finish_reason",): ["null", "7", '"abort"', '"content_filter"', "[]"],
}
VLLM_BAD_VALUES: dict[tuple[Any, ...], list[str]] = {
    ("id",): ["null", "true", '""'],
    ("message",): ["null", "5", '"ab"', "{}"],
    ("message", "content"): ["null", "5", '"\\ud800"'],
    ("logprobs",): ["null", "5", "{}"],
    ("logprobs", "content"): ["null", "5", "{}"],
    ENTRY: ["5", "null", '"a"', "{}"],
    (*ENTRY, "token"): ["5", "null", "[]", '"z"'],
    (*ENTRY, "logprob"): [*NUMBERS, "0.5", "-1e308"],
    (*ENTRY, "bytes"): ['"abc"', "5", "[256]", "[-1]", '["a"]'],
    (*ENTRY, "top_logprobs"): ["5", '"x"', "{}", "[5]"],
    (*ENTRY, "top_logprobs", 0, "logprob"): [*NUMBERS, "0.5"],
    (*ENTRY, "top_logprobs", 0, "token"): ["5", "null"],
    ("token_ids",): ['"12"', "5", "[1]", '["1", "2"]'],
    ("token_ids", 0): ['"1"', "1.5", "-2", "9" * 400],
    ("finish_reason",): ["7", '"abort"', '"tool_calls"', "[]"],
    ("stop_reason",): ["1.5", "[]", "true"],
}


def field_name(path: tuple[Any, ...]) -> str:
    """How an error names the field at ``path``: ``logprobs.content[0].logprob``."""
    name = ""
    for part in path:
        name += f"[{part}]" if isinstance(part, int) else ("." if name else "") + part
    return name


def line_with(base: dict[str, Any], path: tuple[Any, ...], raw: str) -> str:
    """``base`` as a JSON line with the value at ``path`` replaced by the raw JSON text ``raw``."""
    row = json.loads(json.dumps(base))
    target = row
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = "@@HOLE@@"
    return json.dumps(row).replace('"@@HOLE@@"', raw)


def read_line(tmp_path: Path, line: str) -> Any:
    path = tmp_path / "r.jsonl"
    path.write_bytes(
        b'{"id": "ok", "text": "", "token_logprobs": []}\n' + line.encode("utf-8", "surrogatepass")
    )
    return read_responses(path)


@pytest.mark.parametrize("base", [NATIVE, VLLM], ids=["native", "vllm"])
def test_the_well_formed_lines_are_read(tmp_path: Path, base: dict[str, Any]) -> None:
    (sample,) = read_line(tmp_path, json.dumps(base))["q"]
    assert sample.text == "ab" and sample.tokens == ["a", "b"] and sample.logprobs == [-0.5, -0.25]


@pytest.mark.parametrize(
    ("base", "path", "raw"),
    [
        *[(NATIVE, path, raw) for path, values in BAD_VALUES.items() for raw in values],
        *[(VLLM, path, raw) for path, values in VLLM_BAD_VALUES.items() for raw in values],
    ],
)
def test_every_field_refuses_what_it_cannot_use_naming_file_line_and_field(
    tmp_path: Path, base: dict[str, Any], path: tuple[Any, ...], raw: str
) -> None:
    with pytest.raises(ValueError) as caught:
        read_line(tmp_path, line_with(base, path, raw))
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'r.jsonl'}:2: "), message
    named = {field_name(path[:k]) for k in range(1, len(path) + 1)}
    spelled = "the tokens must spell the text" in message or "tokens" in message
    assert any(name in message for name in named) or spelled, message
    assert len(message) < 600 and "\n" not in message


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"id": "q", "text": ' + "[" * 100_000 + "]" * 100_000 + "}", "JSON nested deeper than can be read"),
        ('{"id": "q", "text": "a", "token_logprobs": [' + "-" + "9" * 5000 + "]}", "token_logprobs[0]="),
        ('{"id": "q", "text": "a", "token_logprobs": [-1e308]}', "token_logprobs[0]=-1e+308"),
        ('{"id": "q", "text": "a", "token_logprobs": [0.5]}', "token_logprobs[0]=0.5: expected a log-prob"),
        ('{"id": "q", "text": "a", "logprobs": {"content": [{"token": 5, "logprob": -1}]}}', ".token=5"),
        (
            '{"id": "q", "text": "a", "logprobs": {"content": [{"token": "a", "logprob": -1, '
            '"top_logprobs": 5}]}}',
            "logprobs.content[0].top_logprobs=5",
        ),
        (
            '{"id": "q", "text": "a", "logprobs": {"content": [{"token": "a", "logprob": NaN}]}}',
            "logprobs.content[0].logprob=nan",
        ),
        ('{"id": "q", "logprobs": {"content": [{"token": "a", "logprob": -1}]}}', "neither 'message' nor"),
        (
            '{"id": "q", "text": "a", "logprobs": {"content": [{"token": "a", "logprob": -1}]}, '
            '"finish_reason": "abort"}',
            "finish_reason='abort'",
        ),
    ],
)
def test_the_issue_lines_are_refused_by_name(tmp_path: Path, line: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        read_line(tmp_path, line)


def test_a_byte_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_bytes(b'{"id": "q", "text": "a", "token_logprobs": [-1]}\n{"id": "\xff"}\n')
    with pytest.raises(ValueError, match=r"r.jsonl:2: not UTF-8 text \(byte 0xff at column 9\)"):
        read_responses(path)


def test_a_rounding_above_zero_is_read_as_zero_and_more_is_refused(tmp_path: Path) -> None:
    (sample,) = read_line(tmp_path, json.dumps({**NATIVE, "token_logprobs": [1e-4, -0.25]}))["q"]
    assert sample.logprobs == [0.0, -0.25] and sample.top_logprobs == [[-0.5, -1.0], [-0.25, -2.0]]
    with pytest.raises(ValueError, match=r"token_logprobs\[0\]=0.01: expected a log-probability"):
        read_line(tmp_path, json.dumps({**NATIVE, "token_logprobs": [0.01, -0.25]}))


@pytest.mark.parametrize(
    ("tokens", "text", "tail"),
    [
        (["x", "\ufffd", "\ufffd", "\ufffd", "y"], "x猫y", False),  # a character split in bytes
        ([" \ufffd", "\ufffd", "!"], " é!", False),  # a split character after a space
        (["a", "<|vision_start|>", "b"], "ab", False),  # a special token the text leaves out
        (["a", "<|im_end|>"], "a", False),
        (["Yes", "."], "Yes", True),  # a stop string vLLM cut from the text
        (["Ye", "s."], "Yes", True),
    ],
)
def test_tokens_that_spell_the_text_pass(tokens: list[str], text: str, tail: bool) -> None:
    check_spelling(tokens, text, tail=tail)


@pytest.mark.parametrize(
    ("tokens", "text", "message"),
    [
        (["\\boxed{", "B", "}"], "\\boxed{A}", r"tokens\[1\]='B' is not the text at character 7"),
        (["a", "b"], "abc", "they spell the text's first 2 of 3 characters"),
        (["x", "\ufffd", "y"], "xaay", r"tokens\[1\]='\ufffd' is not the text at character 1"),
        (["Yes", "."], "Yes", r"tokens\[1\]='.' is not the text at character 3"),  # no stop string
        (["ab", "c"], "a", r"tokens\[0\]='ab'"),
    ],
)
def test_tokens_that_do_not_spell_the_text_are_refused(tokens: list[str], text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_spelling(tokens, text)


def test_a_recorded_line_whose_tokens_spell_another_text_is_refused(tmp_path: Path) -> None:
    # The answer-span NMLP is read off these tokens: "B" at -3.0 would have become "A" at -0.01.
    row = {
        "id": "q",
        "text": "\\boxed{A}",
        "token_logprobs": [-0.01, -3.0, -0.01],
        "tokens": ["\\boxed{", "B", "}"],
    }
    with pytest.raises(ValueError, match=r"r.jsonl:2: tokens\[1\]='B' is not the text"):
        read_line(tmp_path, json.dumps(row))
    vllm_row = {**VLLM, "message": {"content": "ba"}}
    with pytest.raises(ValueError, match=r"r.jsonl:2: tokens\[0\]='a' is not the text"):
        read_line(tmp_path, json.dumps(vllm_row))


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=False)  # some imports set flush-to-zero
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=6,
)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([(NATIVE, path) for path in BAD_VALUES] + [(VLLM, path) for path in VLLM_BAD_VALUES]),
    JSON_VALUES,
)
def test_any_value_in_any_field_is_read_whole_or_refused_by_line(case, value) -> None:
    base, path = case
    line = line_with(base, path, json.dumps(value))
    with tempfile.TemporaryDirectory() as folder:
        try:
            responses = read_line(Path(folder), line)
        except ValueError as err:
            assert str(err).startswith(f"{Path(folder) / 'r.jsonl'}:2: ")
            return
    for sample in (s for samples in responses.values() for s in samples):
        numbers = [*sample.logprobs, *(v for step in sample.top_logprobs or [] for v in step)]
        assert all(-1e5 <= v <= 0 for v in numbers) and sample.finish_reason in ("stop", "length")
        assert all(0 <= h <= 1e5 for h in sample.entropies or [])
        if sample.tokens is not None:
            assert "".join(sample.tokens) == sample.text
