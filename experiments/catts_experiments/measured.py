"""What the ``catts measure`` commands that write tables share: the flags every one takes, writing a
result as ``<out>.json`` (sorted keys) and ``<out>.md`` (the tables, with the command that
regenerates them), and running one from its parsed arguments."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["add_level_arguments", "add_output_arguments", "regenerated_by", "run_measured", "write_tables"]

Render = Callable[[Mapping[str, Any], str], str]
"""A result's tables as markdown, given the command that regenerates them."""


def regenerated_by(command: str) -> list[str]:
    """The lines under a table file's title that give the command regenerating it, exactly."""
    return [
        "",
        "Regenerated exactly (deterministic: seeded samples, greedy expert, seeded bootstrap) by",
        "",
        "```bash",
        command,
        "```",
        "",
    ]


def add_level_arguments(parser: Any, *, validation: int, test: int, seed: int = 0) -> None:
    """``--validation`` and ``--test`` (items of level 4) and ``--seed``, with these defaults."""
    parser.add_argument("--validation", type=int, default=validation, help="validation items (level 4)")
    parser.add_argument("--test", type=int, default=test, help="test items (level 4)")
    parser.add_argument("--seed", type=int, default=seed, help="generator and sampling seed")


def add_output_arguments(parser: Any, run_dir: str) -> None:
    """``--run-dir`` (its help: ``run_dir``), ``--out`` and ``--threads``."""
    parser.add_argument("--run-dir", help=run_dir)
    parser.add_argument("--out", help="write <out>.json and <out>.md")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads")


def write_tables(result: Mapping[str, Any], out: str | Path, command: str, render: Render) -> None:
    """``<out>.json`` (sorted keys) and ``<out>.md`` (``render(result, command)``)."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{path}.json").write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    Path(f"{path}.md").write_text(render(result, command))


def run_measured(args: Any, compute: Callable[[], Mapping[str, Any]], command: str, render: Render) -> int:
    """Compute on ``args.threads`` threads, write the tables when ``args.out`` is given, print them
    and the wall time (never written: the tables hold only what a rerun gives again). ``command`` is
    the command without ``--threads`` and ``--out``, which are added here."""
    import torch

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    result = compute()
    command += f" --threads {args.threads}" + (f" --out {args.out}" if args.out else "")
    if args.out:
        write_tables(result, args.out, command, render)
    print(render(result, command))
    print(f"wall time: {time.perf_counter() - start:.0f} s", flush=True)
    return 0
