"""No credential in any error text the project stores or prints (trace, checkpoint, store, terminal)."""

from __future__ import annotations

import json
import sqlite3
import string
from contextlib import closing

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from langchain_core.messages import HumanMessage
from langgraph.checkpoint.sqlite import SqliteSaver

from catts_graph import CATTSConfig, build_graph
from catts_graph.eval.store import ResultStore
from catts_graph.experts import VoterAnswer, call_expert, parse_json_object
from catts_graph.redaction import REDACTED, redact
from catts_graph.testing import Reply, ScriptedExpert, ScriptedVLM

OPENAI_KEY = "sk-proj-Q3v9ZtX1bN7mLp2WcR8kHs4YdF6gJa0E"
# What an OpenAI-compatible endpoint answered with a 401, the Authorization header echoed.
PROVIDER_ERROR = (
    f"Error code: 401 - {{'error': {{'message': 'Incorrect API key provided: {OPENAI_KEY}', "
    f"'request': {{'headers': {{'Authorization': 'Bearer {OPENAI_KEY}'}}}}}}}}"
)


def test_the_issue_error_is_redacted(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
    assert OPENAI_KEY not in redact(PROVIDER_ERROR)
    assert "Incorrect API key provided: [REDACTED]" in redact(PROVIDER_ERROR)


@pytest.mark.parametrize(
    "variable", ["OPENAI_API_KEY", "GOOGLE_API_KEY", "GEMINI_API_KEY", "MY_SERVER_TOKEN"]
)
def test_the_value_of_a_key_variable_is_redacted_whatever_its_shape(monkeypatch, variable):
    secret = "plain words, no prefix: opensesame-42"
    monkeypatch.setenv(variable, secret)
    assert redact(f"server said: {secret}!") == f"server said: {REDACTED}!"


def test_ordinary_error_text_is_kept():
    for text in (
        "attempt 1: malformed answer: probability 1 is nan, not finite",
        "attempt 2: timed out after 0.5 s",
        "planner expert failed: unknown module 'launch_rockets'; the monkey: 3 tokens",
    ):
        assert redact(text, {}) == text


# The class: any credential-shaped string, in any text around it.

TOKEN = st.text(string.ascii_letters + string.digits + "._~+/=-", min_size=8, max_size=60)
ALNUM = string.ascii_letters + string.digits
CREDENTIAL = st.one_of(
    st.text(ALNUM + "_-", min_size=16, max_size=60).map(lambda s: "sk-" + s),
    st.text(ALNUM + "_-", min_size=35, max_size=35).map(lambda s: "AIza" + s),
    st.text(ALNUM, min_size=34, max_size=34).map(lambda s: "hf_" + s),
    st.text(ALNUM, min_size=36, max_size=36).map(lambda s: "ghp_" + s),
    st.text(string.ascii_uppercase + string.digits, min_size=16, max_size=16).map(lambda s: "AKIA" + s),
    st.tuples(*[st.text(ALNUM + "_-", min_size=8, max_size=30)] * 3).map(lambda p: "eyJ" + ".".join(p)),
)
# (text the secret appears in, the secret): headers, fields, query parameters and URLs.
CONTEXT = st.one_of(
    CREDENTIAL.map(lambda c: (c, c)),
    TOKEN.map(lambda t: (f"Authorization: Bearer {t}", t)),
    TOKEN.map(lambda t: (f"'Authorization': 'Basic {t}'", t)),
    TOKEN.map(lambda t: (f'{{"api_key": "{t}"}}', t)),
    TOKEN.map(lambda t: (f"x-goog-api-key: {t}", t)),
    TOKEN.map(lambda t: (f"https://example.com/v1/models?key={t}&alt=json", t)),
    TOKEN.map(lambda t: (f"OPENAI_API_KEY={t}", t)),
    st.text(ALNUM, min_size=8, max_size=30).map(lambda t: (f"https://user:{t}@example.com/v1", t)),
)
AROUND = st.text(st.characters(exclude_categories=("Cs",)), max_size=80)


@settings(max_examples=300, deadline=None)
@given(AROUND, CONTEXT, AROUND)
def test_any_credential_shaped_string_in_any_error_is_redacted(before, context, after):
    text, secret = context
    assume(secret not in before and secret not in after)
    # Text glued to the secret's end could extend it; a separator keeps "the secret" well defined.
    assert secret not in redact(f"{before} {text} {after}", {}).replace(REDACTED, "\0")


@settings(max_examples=200, deadline=None)
@given(AROUND, st.text(st.characters(exclude_categories=("Cs",)), min_size=8, max_size=40), AROUND)
def test_any_value_of_a_key_variable_in_any_error_is_redacted(before, secret, after):
    secret = secret.strip() or "x" * 8
    if len(secret) < 8:
        secret = secret + "#" * 8
    assume(secret not in before and secret not in after)
    assert secret not in redact(before + secret + after, {"GEMINI_API_KEY": secret}).replace(REDACTED, "\0")


# Where error texts are kept: the expert call's errors, the trace and checkpoint, the store.


def test_an_echoed_key_never_reaches_the_expert_errors(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
    model = ScriptedExpert(replies={"voter": PermissionError(PROVIDER_ERROR)})
    result = call_expert(
        model,
        [HumanMessage("vote")],
        parse_json_object,
        retries=1,
        backoff=0,
        timeout=None,
        schema=VoterAnswer,
    )
    assert not result.ok and len(result.errors) == 2
    assert all(OPENAI_KEY not in error and "Incorrect API key" in error for error in result.errors)


def test_an_echoed_key_never_reaches_the_trace_or_the_checkpoint(image_path, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
    vlm = ScriptedVLM.answering(Reply("\\boxed{A}", -0.5), Reply("\\boxed{B}", -1.0))
    expert = ScriptedExpert(
        replies={"voter": PermissionError(PROVIDER_ERROR), "critic": PermissionError(PROVIDER_ERROR)}
    )
    database = tmp_path / "checkpoints.sqlite"
    config = CATTSConfig(n_samples=2, max_samples=2, expert_retries=0)
    with SqliteSaver.from_conn_string(str(database)) as saver:
        graph = build_graph(vlm, expert=expert, config=config, checkpointer=saver)
        result = graph.invoke({"image": image_path, "question": "Q"}, {"configurable": {"thread_id": "t"}})
    trace = json.dumps(result["trace"])
    assert "Incorrect API key provided: [REDACTED]" in trace and OPENAI_KEY not in trace
    with sqlite3.connect(database) as connection:
        stored = b"".join(
            value if isinstance(value, bytes) else str(value).encode()
            for table in ("checkpoints", "writes")
            for row in connection.execute(f"SELECT * FROM {table}")  # noqa: S608 (fixed names)
            for value in row
        )
    assert b"Incorrect API key provided: [REDACTED]" in stored and OPENAI_KEY.encode() not in stored


def test_the_store_keeps_no_credential_from_a_trace(tmp_path):
    trace = [
        {
            "module": "voter",
            "reason": "Voter failed: " + PROVIDER_ERROR,
            "expert_calls": [{"errors": [PROVIDER_ERROR]}],
        }
    ]
    with ResultStore(tmp_path / "r.sqlite") as store:
        store.put_result(
            item_id="q",
            method="catts_paper",
            n=1,
            answer="A",
            gold="A",
            correct=True,
            confidence=1.0,
            category=None,
            tokens=1,
            expert_calls=1,
            seconds=0.1,
            trace=trace,
        )
    with closing(sqlite3.connect(tmp_path / "r.sqlite")) as connection:  # the bytes on disk
        (stored,) = connection.execute("SELECT trace FROM results").fetchone()
    assert OPENAI_KEY not in stored and "Incorrect API key provided: [REDACTED]" in stored
