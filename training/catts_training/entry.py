"""What ``python -m catts_training.<trainer>.train`` shares with ``catts``: the same arguments (the
function that adds them to ``catts train``'s parser fills this one), and a config error printed on
one line with exit status 2, not a traceback (``accelerate launch -m`` runs these modules, not
``catts``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

__all__ = ["module_main"]


def module_main(add: Callable[[argparse.ArgumentParser], None], prog: str, argv: Sequence[str] | None) -> int:
    """Run the command whose arguments ``add`` adds to a parser, with ``argv`` (default: the process's
    arguments); ``prog`` names it in the usage line."""
    parser = argparse.ArgumentParser(prog=prog)
    add(parser)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return int(args.func(args))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
