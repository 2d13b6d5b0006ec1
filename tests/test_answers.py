"""Answer extraction, normalisation and equivalence."""

from concurrent.futures import ThreadPoolExecutor

import pytest

from catts_graph.answers import (
    answer_span,
    canonicalize,
    extract_answer,
    is_equivalent,
    normalize_answer,
)

OPTIONS = ["cat", "dog", "bird"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"so $\boxed{\frac{1}{2}}$.", r"\frac{1}{2}"),  # nested braces
        (r"\boxed{1} first, then \boxed{ 2 }", "2"),  # the last one, stripped
        (r"\fbox{7}", "7"),
        (r"\boxed{3} and a cut-off \boxed{4", "3"),  # an unclosed box is skipped
        (r"\boxed{5}. Hmm, the answer is 6.", "5"),  # a box beats "answer is"
        ("The answer is 42.", "42"),
        ("So the final answer is $3.5$.", "3.5"),  # points inside numbers are kept
        ("Answer: **7**\nMore text", "7"),
        ("The answer is 1. Then we check it.", "1"),
        ("The answer is 3. Wait, the answer is 4.", "4"),  # the last one
        ("THE ANSWER IS x", "x"),
        ("My answer is: 9", "9"),
        ("**Answer:** 42", "42"),
        ("Final Answer: the answer is 5.", "5"),  # the innermost statement
        ("I do not know", None),
        (r"\boxed{B}", "B"),  # no options: letters stay as found
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"\boxed{B}", "B"),
        ("The answer is (B).", "B"),
        ("Answer: B)", "B"),
        ("Answer: B.", "B"),
        ("Answer: Option B", "B"),
        (r"\boxed{\text{B}}", "B"),
        (r"\boxed{(C) bird}", "C"),
        (r"\boxed{Dog}", "B"),  # by the option's text
        ("Let me think.\n(C)", "C"),  # lone final letter
        ("Answer: fish\nC", "C"),  # unmapped answer, but a lone final letter
        (r"\boxed{fish}", "fish"),  # unmapped answers are returned as found
        (r"\boxed{D}", "D"),  # D is out of range for three options
        ("Maybe.\nD", None),
    ],
)
def test_extract_answer_with_options(text, expected):
    assert extract_answer(text, OPTIONS) == expected


def test_extract_answer_maps_equivalent_option_text():
    assert extract_answer("The answer is 42", ["40", "42"]) == "B"
    assert extract_answer(r"\boxed{0.5}", [r"\frac{1}{3}", r"\frac{1}{2}"]) == "B"


def test_answer_span():
    text = r"x \boxed{\frac{1}{2}} y"
    # "x \boxed{" is 9 characters; "\frac{1}{2}" is 11
    assert answer_span(text) == (9, 20)
    assert text[9:20] == r"\frac{1}{2}"
    # "The answer is **" is 16 characters; the bold markers and period are outside the span
    assert answer_span("The answer is **42**.") == (16, 18)
    # "Think.\n(" is 8 characters
    assert answer_span("Think.\n(C)", OPTIONS) == (8, 9)
    assert answer_span("nothing here") is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (" $42$ ", "42"),
        ("**7**", "7"),
        (r"\text{cm}", "cm"),
        ("42.", "42"),
        (r"\left(1,2\right)", "(1,2)"),
        (r"\leftarrow", r"\leftarrow"),  # only the sizing commands go
        ("1,000", "1000"),
        ("-1,234.5", "-1234.5"),
        ("1,2", "1,2"),  # not a thousands separator
        ("Paris", "paris"),
        ("New   York", "new york"),
        ("A", "A"),  # single letters keep their case
        (r"x^2 + 1", r"x^2 + 1"),
    ],
)
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("0.5", r"\frac{1}{2}"),
        ("0.5", "1/2"),
        ("1,000", "1000"),
        ("$x^2+1$", "1+x^2"),
        ("A", "A."),
        ("Cat", "cat"),
    ],
)
def test_is_equivalent(a, b):
    assert is_equivalent(a, b)
    assert is_equivalent(b, a)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("1", "12"),  # never by substring
        ("A", "a"),  # letters compare exactly
        ("A", "B"),
        ("cat", "act"),  # math_verify would read both as the product c*a*t
        ("2", "3"),
        (r"\frac{", "}"),  # unparsable input is simply not equivalent
        ("", "0"),
    ],
)
def test_not_equivalent(a, b):
    assert not is_equivalent(a, b)
    assert not is_equivalent(b, a)


def test_is_equivalent_from_worker_thread():
    # math_verify's signal-based timeout would raise outside the main thread.
    with ThreadPoolExecutor(max_workers=1) as pool:
        assert pool.submit(is_equivalent, "0.25", r"\frac{1}{4}").result()


def test_canonicalize():
    answers = ["0.5", "1/2", None, r"\frac{1}{2}", "12", "1", "1.0"]
    assert canonicalize(answers) == ["0.5", "0.5", None, "0.5", "12", "1", "1"]
    assert canonicalize([]) == []


def test_math_in_a_worker_thread_logs_no_timeout_notice(caplog):
    """Off the main thread math_verify's timeout is off by design; its one-time warning about that
    would be third-party chatter in a user's output."""
    import threading

    import math_verify.grader
    import math_verify.parser

    math_verify.parser.TIMEOUT_WARNING_SHOWN = False
    math_verify.grader.TIMEOUT_WARNING_SHOWN = False
    results: list[bool] = []
    with caplog.at_level("WARNING"):
        worker = threading.Thread(target=lambda: results.append(is_equivalent("0.25", "\\frac{1}{4}")))
        worker.start()
        worker.join()
    assert results == [True]
    assert not [r for r in caplog.records if "Timeout is disabled" in r.getMessage()]
