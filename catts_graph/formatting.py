"""How numbers and tables are written, in one place: reports, the probe, the CLI and the organism's
document all print the same way."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["json_ready", "markdown_table", "number", "with_interval"]


def number(value: float | None, digits: int = 3) -> str:
    """``value`` with ``digits`` decimals; ``n/a`` for None or NaN (a metric that is undefined, such
    as AUROC with one class)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def with_interval(value: float | None, interval: Sequence[float | None] | None, digits: int = 3) -> str:
    """``value [low, high]`` (a 95% interval), each with ``digits`` decimals; the value alone when
    there is no interval."""
    if not interval:
        return number(value, digits)
    low, high = interval
    return f"{number(value, digits)} [{number(low, digits)}, {number(high, digits)}]"


def json_ready(value: object) -> object:
    """``value`` as strict JSON holds it: a float that is no JSON number (NaN: an undefined metric;
    an infinity) becomes None (``null``), a mapping's keys strings, a tuple a list; so a result
    written and read back is the same.

    >>> json_ready({1: (0.5, float("nan"))})
    {'1': [0.5, None]}
    """
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(key): json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(item) for item in value]
    return value


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured Markdown table; ``|`` and newlines inside a cell are escaped."""
    lines = [
        "| " + " | ".join(_cell(h) for h in headers) + " |",
        "|" + "|".join("---" for _ in headers) + "|",
    ]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
