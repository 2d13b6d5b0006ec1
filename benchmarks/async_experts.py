"""Why the expert nodes are native async: ``abatch`` of 16 questions against one ``invoke``.

Every question takes the adaptive path with a split vote, so the Voter and the Critic are asked
(two expert calls, in the same step). The expert is :class:`~catts_graph.testing.ScriptedExpert`
with ``--latency`` seconds per call, slept with ``asyncio.sleep`` under ``ainvoke`` as provider
clients wait on the network. The base model answers at once. Three figures, in one run:

- one ``invoke``: about the latency of one expert step (the two calls overlap);
- ``abatch`` of ``--batch`` questions with the expert nodes as built (awaited under ``abatch``);
- the same ``abatch`` with the expert nodes made sync-only (their async path removed), as they
  were before: LangGraph then runs them in the event loop's default executor, a few threads.

Run: ``python benchmarks/async_experts.py [--batch 16] [--latency 0.2] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from graph_overhead import split_vote_model  # the same split-vote base model (benchmarks/ is on the path)
from PIL import Image

from catts_graph import CATTSConfig, build_graph
from catts_graph.testing import ScriptedExpert

EXPERT_NODES = ("planner", "voter", "critic")


def graph_with(expert: ScriptedExpert, *, sync_only: bool) -> Any:
    config = CATTSConfig(n_samples=4, max_samples=4, expert_retries=0)
    graph = build_graph(split_vote_model(), expert=expert, config=config)
    if sync_only:
        for name in EXPERT_NODES:
            # A RunnableLambda without ``afunc`` runs ``func`` in the executor under ainvoke.
            del graph.nodes[name].bound.afunc
    return graph


def timed(call: Any) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=16, help="questions per abatch")
    parser.add_argument("--latency", type=float, default=0.2, help="seconds per expert call")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats of each (median)")
    args = parser.parse_args()

    replies = {
        "voter": json.dumps({"probabilities": [0.5, 0.5]}),
        "critic": json.dumps({"critique": "Step 1 misreads the image.", "verdict": "incorrect"}),
        "planner": json.dumps({"modules": ["self_consistency"], "reason": "benchmark"}),
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "image.png"
        buffer = io.BytesIO()
        Image.new("RGB", (64, 64), (30, 120, 200)).save(buffer, format="PNG")
        path.write_bytes(buffer.getvalue())
        inputs = [{"image": str(path), "question": f"Question {i}?"} for i in range(args.batch)]

        expert = ScriptedExpert(replies=replies, latency=args.latency)
        native = graph_with(expert, sync_only=False)
        old = graph_with(expert, sync_only=True)
        native.invoke(inputs[0])  # warm-up: imports, image cache
        asyncio.run(old.abatch(inputs[:2]))
        expert.calls.clear()
        single = statistics.median(timed(lambda: native.invoke(inputs[0])) for _ in range(args.repeats))
        calls = len(expert.calls) // args.repeats
        batched = statistics.median(
            timed(lambda: asyncio.run(native.abatch(inputs))) for _ in range(args.repeats)
        )
        queued = statistics.median(
            timed(lambda: asyncio.run(old.abatch(inputs))) for _ in range(args.repeats)
        )

    print(
        f"expert latency {args.latency * 1000:.0f} ms, {calls} expert calls per question, "
        f"median of {args.repeats}"
    )
    rows = [
        ("one invoke", single),
        (f"abatch({args.batch}), async expert nodes", batched),
        (f"abatch({args.batch}), sync-only expert nodes", queued),
    ]
    for label, seconds in rows:
        print(f"  {label:<36} {seconds:7.3f} s   ({seconds / single:4.1f}x one invoke)")
    print(f"  {'sync-only / async':<36} {queued / batched:7.1f}x")


if __name__ == "__main__":
    main()
