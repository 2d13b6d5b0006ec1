"""No credential in any error text the project stores or prints (trace, checkpoint, store, terminal)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import string
import traceback
from contextlib import closing

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from langchain_core.messages import HumanMessage
from langgraph.checkpoint.sqlite import SqliteSaver

from catts_graph import CATTSConfig, build_graph
from catts_graph import graph as graph_module
from catts_graph.eval.store import ResultStore
from catts_graph.experts import VoterAnswer, call_expert, parse_json_object
from catts_graph.nodes.common import expert_node, redacting
from catts_graph.redaction import REDACTED, RedactedError, redact, redact_exception
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


@pytest.mark.parametrize(
    "text",
    [
        "expert 'gpt-5' needs an API key: set OPENAI_API_KEY",
        "Invalid token: expired.",
        "the secret: nothing is kept",
    ],
)
def test_prose_after_a_bare_key_word_is_kept(text):
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


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["key", "token", "secret", "API key", "Token"]),
    st.text(string.ascii_lowercase, min_size=1, max_size=12),
    st.text(ALNUM, min_size=8, max_size=30).filter(lambda t: not t.islower() or not t.isalpha()),
)
def test_a_bare_key_word_hides_a_credential_but_not_a_word(name, word, secret):
    assert redact(f"{name}: {word} the rest", {}) == f"{name}: {word} the rest"
    assert secret not in redact(f"{name}: {secret} the rest", {})
    for field in (f"{name}={word}", f'"{name}": "{word}"', f"'{name}': '{word}'"):
        assert word not in redact(field, {}).replace(name, "")


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


# Any exception raised inside any node reaches LangGraph's store (and the caller) redacted.

ENV_SECRET = "opensesame-value-42"  # the value of OPENAI_API_KEY below: no credential shape of its own
URL_PASSWORD = "hunter2pass"


def leaky_error(where: str) -> Exception:
    """A provider-like error holding a credential in its message, in its args or in its cause."""
    if where == "message":
        return RuntimeError(f"Error code: 401 Bearer {OPENAI_KEY} api_key={ENV_SECRET}")
    if where == "args":
        return RuntimeError("request failed", {"headers": {"x-echo": ENV_SECRET}}, [OPENAI_KEY])
    try:
        raise ConnectionError(f"proxy https://user:{URL_PASSWORD}@proxy.example refused {ENV_SECRET}")
    except ConnectionError as cause:
        try:
            raise RuntimeError("the base model failed") from cause
        except RuntimeError as error:
            return error


SECRETS = (OPENAI_KEY, ENV_SECRET, URL_PASSWORD)


@pytest.fixture(params=["memory", "sqlite"])
def saver(request, tmp_path):
    from langgraph.checkpoint.memory import InMemorySaver

    if request.param == "memory":
        yield InMemorySaver()
        return
    with SqliteSaver.from_conn_string(str(tmp_path / "checkpoints.sqlite")) as sqlite_saver:
        yield sqlite_saver


def stored_bytes(saver) -> bytes:
    """Every byte a checkpointer holds: SQLite's tables, or the in-memory saver's dicts."""
    if isinstance(saver, SqliteSaver):
        return b"".join(
            value if isinstance(value, bytes) else str(value).encode()
            for table in ("checkpoints", "writes")
            for row in saver.conn.execute(f"SELECT * FROM {table}")  # noqa: S608 (fixed names)
            for value in row
        )
    return repr((saver.storage, saver.writes, saver.blobs)).encode()


def assert_redacted_everywhere(graph, saver, caught: BaseException) -> None:
    config = {"configurable": {"thread_id": "t"}}
    (task,) = [t for t in graph.get_state(config).tasks if t.error is not None]
    shown = "".join(traceback.format_exception(caught))
    for secret in SECRETS:
        assert secret not in str(task.error)
        assert secret.encode() not in stored_bytes(saver)
        assert secret not in shown  # the caller's exception, its arguments and its causes
    assert REDACTED in str(task.error) + shown


def failing_vlm(error: Exception, **kwargs) -> ScriptedVLM:
    def script(call):
        raise error

    return ScriptedVLM(script, **kwargs)


def component_graph(component: str, error: Exception, saver):
    """A graph whose ``component`` raises ``error``: the base model's sampling, its scorer (the
    visual self-check, run on a close vote), the sentence encoder (TokenSAR) or CLIP."""
    close_vote = ScriptedVLM.answering(Reply("\\boxed{A}", -0.5), Reply("\\boxed{B}", -0.5))
    config = CATTSConfig(n_samples=2, max_samples=2)

    def fail(*args, **kwargs):
        raise error

    if component == "base model":
        return build_graph(failing_vlm(error), config=config, checkpointer=saver)
    if component == "scorer":
        vlm = ScriptedVLM.answering(Reply("\\boxed{A}", -0.5), Reply("\\boxed{B}", -0.5), scorer=fail)
        return build_graph(vlm, config=config, checkpointer=saver)
    if component == "encoder":
        # It encodes the statement phrases when the graph is built, then fails in TokenSAR.
        encode = staticmethod(lambda texts: np.eye(len(texts)))
        encoder = type("Encoder", (), {"encode": encode, "similarity": staticmethod(fail)})()
        return build_graph(close_vote, config=config, checkpointer=saver, encoder=encoder)
    return build_graph(close_vote, config=config, checkpointer=saver, clip=fail)


@pytest.mark.parametrize("where", ["message", "args", "cause"])
@pytest.mark.parametrize("component", ["base model", "scorer", "encoder", "clip"])
def test_a_components_error_is_stored_redacted(image_path, monkeypatch, saver, component, where):
    monkeypatch.setenv("OPENAI_API_KEY", ENV_SECRET)
    graph = component_graph(component, leaky_error(where), saver)
    with pytest.raises(Exception) as caught:
        graph.invoke({"image": image_path, "question": "Q"}, {"configurable": {"thread_id": "t"}})
    assert_redacted_everywhere(graph, saver, caught.value)


def raising_factory(name: str, error: Exception):
    """A node factory for ``build_graph`` whose node raises ``error``: an expert node (sync and
    async) for the planner, a plain function for the others."""
    if name == "planner":

        def steps(state, runtime):
            raise error
            yield  # a generator, as expert nodes' steps are

        return lambda deps: expert_node(name, steps)

    def node(state):
        raise error

    return lambda deps: node


def graph_with_raising(node: str, monkeypatch, saver):
    monkeypatch.setenv("OPENAI_API_KEY", ENV_SECRET)
    monkeypatch.setattr(graph_module, f"make_{node}", raising_factory(node, leaky_error("message")))
    vlm = ScriptedVLM.answering(Reply("\\boxed{A}", -0.5))
    return build_graph(vlm, config=CATTSConfig(n_samples=1, max_samples=1), checkpointer=saver)


INPUTS, THREAD = {"question": "Q"}, {"configurable": {"thread_id": "t"}}
RUN_NODES = ["prepare", "base_model", "planner", "aggregate"]  # the nodes every run passes


@pytest.mark.parametrize("node", RUN_NODES)
def test_any_nodes_error_is_stored_redacted(image_path, monkeypatch, saver, node):
    graph = graph_with_raising(node, monkeypatch, saver)
    with pytest.raises(RuntimeError) as caught:
        graph.invoke({**INPUTS, "image": image_path}, THREAD)
    assert_redacted_everywhere(graph, saver, caught.value)


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
@pytest.mark.parametrize("node", RUN_NODES)
def test_any_nodes_error_under_ainvoke_is_stored_redacted(image_path, monkeypatch, tmp_path, node, kind):
    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    async def run() -> tuple[BaseException, str, bytes]:
        async with AsyncSqliteSaver.from_conn_string(str(tmp_path / "c.sqlite")) as sqlite_saver:
            saver = InMemorySaver() if kind == "memory" else sqlite_saver
            graph = graph_with_raising(node, monkeypatch, saver)
            with pytest.raises(RuntimeError) as caught:
                await graph.ainvoke({**INPUTS, "image": image_path}, THREAD)
            errors = [str(t.error) for t in (await graph.aget_state(THREAD)).tasks if t.error]
            stored = repr((saver.storage, saver.writes)) if kind == "memory" else ""
        if kind == "sqlite":
            with closing(sqlite3.connect(tmp_path / "c.sqlite")) as connection:
                stored = repr(connection.execute("SELECT * FROM writes").fetchall())
        return caught.value, "".join(errors), stored.encode()

    caught, error, stored = asyncio.run(run())
    assert REDACTED in error
    for secret in SECRETS:
        assert secret not in error and secret.encode() not in stored
        assert secret not in "".join(traceback.format_exception(caught))


# The class: any credential, anywhere in any exception.


@settings(max_examples=150, deadline=None)
@given(CONTEXT, st.sampled_from(["message", "arg", "attribute", "note", "cause", "context"]))
def test_any_credential_anywhere_in_an_exception_is_redacted(context, where):
    text, secret = context
    error = ValueError("failed")
    if where == "message":
        error = ValueError(f"failed: {text}")
    elif where == "arg":
        error = ValueError("failed", (1, {"detail": [text]}))
    elif where == "attribute":
        error.body = {"echo": text}
    elif where == "note":
        error.add_note(text)
    else:
        setattr(error, f"__{where}__", KeyError(text))
    redacted = redact_exception(error, {})
    assert redacted is error and type(redacted) is ValueError  # the caller's own exception
    shown = "".join(traceback.format_exception(redacted)) + repr(redacted.args) + repr(vars(redacted))
    assert secret not in shown.replace(REDACTED, "\0")


def test_an_exception_whose_text_is_not_its_args_is_stood_in_for():
    class Echo(Exception):
        def __str__(self):
            return f"request with Bearer {OPENAI_KEY}"

    for error in (Echo("x"), FileNotFoundError(2, "No such file", f"https://u:{URL_PASSWORD}@h/x")):
        error.__cause__ = ValueError(f"api_key={OPENAI_KEY}")
        redacted = redact_exception(error, {})
        assert isinstance(redacted, RedactedError) and str(redacted).startswith(type(error).__qualname__)
        shown = "".join(traceback.format_exception(redacted))
        assert REDACTED in shown and OPENAI_KEY not in shown and URL_PASSWORD not in shown


def test_an_exception_without_a_credential_is_left_as_it_is():
    error = KeyError("planner")
    error.__context__ = error_in_loop = ValueError("n=3: expected at most 2")
    error_in_loop.__context__ = error  # a chain that loops back
    assert redact_exception(error, {}) is error
    assert error.args == ("planner",) and error_in_loop.args == ("n=3: expected at most 2",)


def test_an_interrupt_leaves_a_node_untouched():
    from langgraph.errors import GraphInterrupt

    interrupt = GraphInterrupt(f"Bearer {OPENAI_KEY}")

    def node(state):
        raise interrupt

    with pytest.raises(GraphInterrupt) as caught:
        redacting(node)({})
    assert caught.value is interrupt and interrupt.args == (f"Bearer {OPENAI_KEY}",)
