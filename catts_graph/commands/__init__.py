"""The ``catts`` sub-commands that live beside their subsystems: each module registers its
commands on an ``argparse`` sub-parser. :mod:`catts_graph.cli` imports a module only when its
command is the one run, so ``catts --help`` loads none of them."""

from rich.console import Console
from rich.markup import escape

from catts_graph.redaction import redact

USAGE_ERROR = 2
"""The exit status of an input, a setting or a file the user can fix (argparse's own)."""


def print_error(error: BaseException) -> int:
    """Say ``error`` on standard error, redacted, on one line (not wrapped at the terminal's width,
    so it can be searched for); returns :data:`USAGE_ERROR`."""
    Console(stderr=True).print(f"[red]error:[/] {escape(redact(str(error)))}", soft_wrap=True)
    return USAGE_ERROR
