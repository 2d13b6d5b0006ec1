"""How many intra-op threads torch should use for the README demo, measured in one run.

(a) The README demo as a user runs it (``catts run --image examples/images/shapes.png --question
    "How many red circles are there?" --noise 1.0``: the base organism, the organism expert, a clean
    and a noised answer), a fresh process each time, at ``--threads`` 1, 2, 4, ... up to the cores.
(b) The same question through one compiled graph in this process, ``graph.invoke`` called on the
    main thread and on a worker thread (where an evaluation and LangGraph's parallel nodes run), at
    each thread count.

The settings are interleaved round by round (the order rotates), so a neighbour's load falls on all
of them alike; each line gives the median, the range and the median's ratio to one thread's.

Run: ``python benchmarks/threads.py [--rounds 5] [--invokes 4]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO = [
    "--image",
    str(ROOT / "examples" / "images" / "shapes.png"),
    "--question",
    "How many red circles are there?",
]


def thread_settings() -> list[int]:
    cores = os.cpu_count() or 1
    settings = [1]
    while settings[-1] * 2 <= cores:
        settings.append(settings[-1] * 2)
    return settings if settings[-1] == cores else [*settings, cores]


def demo_seconds(threads: int) -> float:
    """The README demo's wall time in a fresh process (imports and model loading included)."""
    env = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
    env["HF_HUB_OFFLINE"] = "1"
    started = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "catts_graph.cli",
            "run",
            *DEMO,
            "--noise",
            "1.0",
            "--json",
            "--threads",
            str(threads),
        ],
        check=True,
        capture_output=True,
        cwd=ROOT,
        env=env,
    )
    return time.perf_counter() - started


def interleaved(cases: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Each case timed ``rounds`` times, one of each per round, the order rotated each round."""
    names = list(cases)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(cases[name]())
    return times


def report(title: str, times: dict[str, list[float]], baseline: str) -> None:
    print(title)
    reference = statistics.median(times[baseline])
    for name, values in times.items():
        median = statistics.median(values)
        print(
            f"  {name:<24} median {median:7.2f} s  range {min(values):6.2f}-{max(values):6.2f} s  "
            f"x{median / reference:5.2f} of {baseline}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--invokes", type=int, default=4, help="graph.invoke calls per timing in (b)")
    args = parser.parse_args()
    settings = thread_settings()
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; thread settings {settings}")

    demo = interleaved({f"threads={k}": lambda k=k: demo_seconds(k) for k in settings}, args.rounds)
    report("(a) the README demo, a fresh `catts run` each time", demo, "threads=1")

    import torch

    from catts_graph import CATTSConfig, build_graph
    from catts_graph.specs import ORGANISM, base_model_from_spec, default_base_model_spec, expert_from_spec

    graph = build_graph(
        base_model_from_spec(default_base_model_spec()),
        expert=expert_from_spec(ORGANISM),
        config=CATTSConfig(),
    )
    inputs = {"image": DEMO[1], "question": DEMO[3]}

    def invokes() -> float:
        started = time.perf_counter()
        for _ in range(args.invokes):
            graph.invoke(inputs)
        return time.perf_counter() - started

    def timed(threads: int, where: str) -> Callable[[], float]:
        def run() -> float:
            torch.set_num_threads(threads)
            if where == "main":
                return invokes()
            with ThreadPoolExecutor(1) as worker:
                return worker.submit(invokes).result()

        return run

    invokes()  # warm: first-call set-up is not what is compared
    cases = {f"threads={k} {where}": timed(k, where) for k in settings for where in ("main", "worker")}
    report(
        f"(b) {args.invokes} graph.invoke calls in one process",
        interleaved(cases, args.rounds),
        "threads=1 main",
    )
    print(f"load average now {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
