"""What ``python -m catts_training.<trainer>.train`` shares with ``catts``: the same sub-command,
and a config error printed on one line with exit status 2, not a traceback (``accelerate launch
-m`` runs these modules, not ``catts``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["module_main"]


def module_main(
    add_command: Callable[[Any], argparse.ArgumentParser], command: str, argv: Sequence[str] | None
) -> int:
    """Run the sub-command ``command`` that ``add_command`` registers, with ``argv`` (default: the
    process's arguments) as its arguments."""
    parser = argparse.ArgumentParser(prog=f"catts {command}")
    add_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([command, *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(args.func(args))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
