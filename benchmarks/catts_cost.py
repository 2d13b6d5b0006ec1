"""CA-TTS's wall time over majority voting's at the same N, as the paper reports its cost (1.91x at N = 8).

One process, the same items, the two methods alternating item by item (which one goes first flips
each item, so drift in the machine's load falls on both):

- **majority**: the harness's majority voting (:func:`catts_graph.eval.methods.draw_pool` of N
  samples, then :func:`~catts_graph.eval.methods.majority`): one sampling call and a vote;
- **CA-TTS**: the compiled graph (:func:`catts_graph.build_graph`, paper policy, N samples) invoked
  through the public API, with its own sampling call, the expert's modules (Voter, Critic: the
  expert organism, :class:`~catts_graph.organism.expert.OrganismExpert`), the re-answer and the visual
  self-check's scoring.

Both sample with the same seed per item, so CA-TTS's first wave is majority's draw and the ratio is
what the rest of the graph adds. The models' kept prefixes (``TransformersVLM.prefixes``) are
cleared before each method's call, so neither reads the question warm from the other's call.
Printed: each method's mean seconds per item, the ratio of the means with a paired bootstrap 95%
interval over items, and CA-TTS's seconds per module (from the trace's ``duration_s``), so a reader
sees where the extra time goes.

Run: ``python benchmarks/catts_cost.py [--items 40] [--n 8] [--level 4] [--threads 1]`` (the
organisms are small: one thread is the fast setting on a shared machine, see
``benchmarks/threads.py``).
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from typing import Any

import numpy as np


def _majority(
    vlm: Any, graph_input: dict[str, Any], n: int, config: Any, seed: int
) -> tuple[float, str | None]:
    from catts_graph.eval.methods import draw_pool, majority

    start = time.perf_counter()
    pool = draw_pool(vlm, graph_input, n=n, config=config, seed=seed, greedy=False)
    answer = majority(pool, n).answer
    return time.perf_counter() - start, answer


def _catts(
    graph: Any, graph_input: dict[str, Any], config: Any
) -> tuple[float, str | None, dict[str, float]]:
    start = time.perf_counter()
    result = graph.invoke(dict(graph_input), context=config)
    seconds = time.perf_counter() - start
    modules: dict[str, float] = defaultdict(float)
    for entry in result.get("trace", []):
        modules[str(entry.get("module"))] += float(entry.get("duration_s") or 0.0)
    return seconds, result.get("answer"), dict(modules)


def ratio_interval(
    catts: np.ndarray, majority: np.ndarray, *, n_boot: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Paired bootstrap 95% interval of ``mean(catts) / mean(majority)`` over items.

    >>> low, high = ratio_interval(np.array([2.0, 4.0, 6.0]), np.array([1.0, 2.0, 3.0]))
    >>> round(low, 6), round(high, 6)
    (2.0, 2.0)
    """
    rng = np.random.default_rng(seed)
    index = rng.integers(0, len(catts), size=(n_boot, len(catts)))
    ratios = catts[index].mean(axis=1) / majority[index].mean(axis=1)
    low, high = np.percentile(ratios, [2.5, 97.5])
    return float(low), float(high)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=40, help="synthetic test items")
    parser.add_argument("--n", type=int, default=8, help="samples per item (the paper's cost is at N = 8)")
    parser.add_argument("--level", type=int, default=4, help="generator level (4: the hard regime)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from catts_graph import CATTSConfig, build_graph
    from catts_graph.eval.synthetic import load_synthetic
    from catts_graph.organism import organism_model
    from catts_graph.organism.expert import organism_expert
    from catts_graph.organism.language import MAX_NEW_TOKENS
    from catts_graph.task import item_seed

    vlm = organism_model("base")
    expert = organism_expert("expert")
    config = CATTSConfig(policy="paper", n_samples=args.n, max_samples=args.n, max_new_tokens=MAX_NEW_TOKENS)
    graph = build_graph(vlm, expert=expert, config=config)
    items = load_synthetic("test", limit=args.items, seed=args.seed, level=args.level)

    seconds: dict[str, list[float]] = {"majority": [], "catts": []}
    correct: dict[str, list[bool]] = {"majority": [], "catts": []}
    modules: dict[str, float] = defaultdict(float)
    from catts_graph.task import is_correct

    for i, item in enumerate(items):
        graph_input = {"images": list(item.images), "question": item.question, "options": item.options}
        seed = item_seed(args.seed, item.id)
        run_config = config.replace(seed=seed)

        order = ("majority", "catts") if i % 2 == 0 else ("catts", "majority")
        for method in order:
            # Each method meets the question cold: neither reuses the prefix the other just read
            # (within a method, the models' kept prefixes count, as they do in use).
            vlm.prefixes.clear()
            expert.vlm.prefixes.clear()
            if method == "majority":
                spent, answer = _majority(vlm, graph_input, args.n, run_config, seed)
            else:
                spent, answer, per_module = _catts(graph, graph_input, run_config)
                for name, value in per_module.items():
                    modules[name] += value
            seconds[method].append(spent)
            correct[method].append(is_correct(item, answer))

    majority_s = np.array(seconds["majority"])
    catts_s = np.array(seconds["catts"])
    ratio = catts_s.mean() / majority_s.mean()
    low, high = ratio_interval(catts_s, majority_s)
    print(f"{len(items)} level-{args.level} test items, N = {args.n}, {args.threads} thread(s)")
    for name, values in (("majority", majority_s), ("CA-TTS (paper policy)", catts_s)):
        key = "majority" if name == "majority" else "catts"
        print(
            f"  {name:<22} {values.mean():6.2f} s/item (median {np.median(values):.2f})  "
            f"accuracy {np.mean(correct[key]):.3f}"
        )
    print(f"  CA-TTS / majority wall time: {ratio:.2f}x [{low:.2f}, {high:.2f}] (paper: 1.91x at N = 8)")
    print_modules(modules, len(items), float(catts_s.sum()))


def print_modules(modules: dict[str, float], items: int, total: float) -> None:
    """CA-TTS's seconds per module per item (from the traces) and each one's share of its wall time."""
    print("  CA-TTS seconds by module (share of its wall time; the Voter and the Critic run in the same")
    print("  step, so their shares overlap and the column can sum past 100%):")
    for name, value in sorted(modules.items(), key=lambda kv: -kv[1]):
        if value > 0:
            print(f"    {name:<20} {value / items:6.2f} s/item  {value / total:5.1%}")


if __name__ == "__main__":
    main()
