"""Seconds of a CA-TTS evaluation on the organisms, with and without a remembering :class:`ReplayVLM`.

The same ``run_eval`` (CA-TTS paper and adaptive policies, the expert organism as Voter and Critic,
several Ns) on the same synthetic test items, once with the plain organisms and once with each behind
a ``ReplayVLM(model, memo_max_n=1)``; both runs use fresh stores, so nothing is resumed. Prints both
times, their ratio, the cache's hits and misses, and checks that both runs gave the same rows.

Run: ``python benchmarks/memo.py [--items 6] [--ns 1,2,4,8]``.
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
from contextlib import closing
from pathlib import Path

import torch
from rich.console import Console

from catts_graph.config import CATTSConfig
from catts_graph.eval.runner import run_eval
from catts_graph.eval.synthetic import load_synthetic
from catts_graph.models.replay import ReplayVLM
from catts_graph.organism import organism_model
from catts_graph.organism.expert import OrganismExpert


def timed_run(base, expert, items, ns, folder: Path) -> tuple[float, list[tuple]]:
    started = time.perf_counter()
    path = run_eval(
        items,
        methods=["catts_paper", "catts_adaptive"],
        ns=ns,
        base_model=base,
        expert=OrganismExpert(vlm=expert),
        run_dir=folder,
        config=CATTSConfig(expert_retries=0, max_new_tokens=256),
        model_name="organism:base",
        expert_name="organism:expert",
        console=Console(quiet=True),
    )
    seconds = time.perf_counter() - started
    with closing(sqlite3.connect(path)) as connection:
        rows = connection.execute(
            "SELECT item_id, method, n, answer FROM results ORDER BY 1, 2, 3"
        ).fetchall()
    return seconds, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=6)
    parser.add_argument("--ns", default="1,2,4,8")
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.set_flush_denormal(True)
    ns = [int(n) for n in args.ns.split(",")]
    items = load_synthetic("test", limit=args.items)
    base, expert = organism_model("base"), organism_model("expert")
    with tempfile.TemporaryDirectory() as scratch:
        plain_s, plain_rows = timed_run(base, expert, items, ns, Path(scratch) / "plain")
        memo_base, memo_expert = ReplayVLM(base, memo_max_n=1), ReplayVLM(expert, memo_max_n=1)
        memo_s, memo_rows = timed_run(memo_base, memo_expert, items, ns, Path(scratch) / "memo")
    print(f"{len(items)} items, Ns {ns}, CA-TTS paper + adaptive with the expert organism")
    print(f"plain organisms:    {plain_s:7.1f} s")
    print(f"behind ReplayVLM:   {memo_s:7.1f} s   ratio {plain_s / memo_s:.2f}x faster")
    for name, memo in (("base", memo_base), ("expert", memo_expert)):
        print(f"  {name}: {memo.hits} calls answered from memory, {memo.misses} computed")
    print(f"same rows in both runs: {plain_rows == memo_rows}")


if __name__ == "__main__":
    main()
