"""The ``catts`` sub-commands that live beside their subsystems: each module registers its
commands on an ``argparse`` sub-parser. :mod:`catts_graph.cli` imports a module only when its
command is the one run, so ``catts --help`` loads none of them."""

import argparse
from typing import Any

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


ONE_THREAD_BELOW = 300_000_000
"""Models with fewer parameters run on one intra-op thread unless ``--threads`` says otherwise.

Measured on our shared 2-core machine, load average 2.4-6.6 (``benchmarks/threads.py``, docs in the
README's "Threads"): eight 32-token samples took 84x longer on 2 threads than on 1 for a
1.9M-parameter Qwen2.5-VL, 12x for 19M, 7.3x for 67M and 3.7x for 257M (the largest tried). The
cause is OpenMP's active wait: the idle threads of the team torch forks for every op spin for a
core, and on a busy machine the thread doing the work waits for them (on the main thread, 2 graph
runs took 10.5-16.7 s; with ``OMP_WAIT_POLICY=PASSIVE`` 0.65-0.96 s; on 1 thread there is no team).
Larger models are left to torch's default, one thread per core, where the work of an op can pay
for the fork."""


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    """``--threads N``: torch's intra-op threads for this process (default: :func:`set_threads`)."""
    parser.add_argument(
        "--threads",
        type=_positive_int,
        help=f"CPU threads for torch's ops (default: 1 for a model under {ONE_THREAD_BELOW / 1e6:.0f}M "
        "parameters, such as the organisms, whose small ops only wait for each other on more; else "
        "torch's default, one per core)",
    )


def set_threads(requested: int | None, base_model: Any) -> int | None:
    """Set torch's intra-op threads: ``requested``, else 1 when ``base_model`` is a torch model
    under :data:`ONE_THREAD_BELOW` parameters; returns the number set (None: torch's default)."""
    if requested is None:
        parameters = parameter_count(base_model)
        if parameters is None or parameters >= ONE_THREAD_BELOW:
            return None
        requested = 1
    import torch

    torch.set_num_threads(requested)
    return requested


def parameter_count(model: Any) -> int | None:
    """The parameters of the torch module a base model wraps (``model.model``), or None."""
    module = getattr(model, "model", None)
    parameters = getattr(module, "parameters", None)
    return sum(p.numel() for p in parameters()) if callable(parameters) else None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of threads >= 1, got {text!r}")
    return value
