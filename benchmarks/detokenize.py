"""Per-token strings of a long reply with characters split across tokens: windows against prefixes.

``TransformersVLM.detokenize`` gives each token the text it adds, so that ``"".join(tokens) ==
text``. A byte-level tokenizer splits a multi-byte character (é, €, 猫, an emoji) across tokens, and
decoding token by token then gives replacement characters. Two ways to find each token's piece,
timed in the same run on the same ids, with their outputs checked equal:

- *prefixes* (the way before): decode every prefix ``ids[:t+1]`` and compare it with the whole text:
  T decodes of up to T tokens, O(T^2);
- *windows* (:func:`catts_graph.models.transformers_vlm.token_pieces`): three decodes of at most 9
  tokens per token, O(T).

On the tiny model's tokenizer (byte-level, no merges: one token per byte) and the base organism's
(word-level, bytes as fallback), for a reply of ``--tokens`` tokens (default 2048) of mixed
French, Japanese and emoji text, and for an ASCII reply (no split character: both ways take the
same fast path). Prints measured numbers only.

    python benchmarks/detokenize.py [--tokens 2048] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from catts_graph.models.tiny import build_tiny_qwen25vl
from catts_graph.models.transformers_vlm import TransformersVLM

SPLIT = "Le café coûte 3 € — 猫は可愛い 😀. "
ASCII = "The red circle is left of the blue square. "


def by_prefixes(vlm: TransformersVLM, token_ids: Sequence[int]) -> tuple[str, list[str]]:
    """The way before: each token gets what it adds to the longest common prefix of the decoded
    prefixes and the full text (every prefix decoded: O(T^2))."""
    ids = list(token_ids)
    text = vlm._decode_batch([ids])[0]
    pieces = vlm._decode_batch([[i] for i in ids])
    if "".join(pieces) == text:
        return text, pieces
    prefixes = vlm._decode_batch([ids[: t + 1] for t in range(len(ids) - 1)])
    pieces, done = [], 0
    for prefix in prefixes:
        reached = max(done, len(os.path.commonprefix([prefix, text])))
        pieces.append(text[done:reached])
        done = reached
    pieces.append(text[done:])
    return text, pieces


def median_seconds(run: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def reply_ids(vlm: TransformersVLM, unit: str, tokens: int) -> list[int]:
    text = unit * (tokens // max(1, len(vlm.tokenizer(unit, add_special_tokens=False)["input_ids"])) + 1)
    return vlm.tokenizer(text, add_special_tokens=False)["input_ids"][:tokens]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as scratch:
        models = {
            "tiny (byte-level)": TransformersVLM.from_pretrained(build_tiny_qwen25vl(scratch), device="cpu")
        }
        try:
            from catts_graph.organism import organism_model

            models["base organism (word-level)"] = organism_model("base")
        except FileNotFoundError:
            pass
        print(f"{args.tokens}-token replies, median of {args.repeats} runs, 1 thread")
        for name, vlm in models.items():
            for label, unit in (("split characters", SPLIT), ("ASCII", ASCII)):
                ids = reply_ids(vlm, unit, args.tokens)
                windows = vlm.detokenize(ids)
                prefixes = by_prefixes(vlm, ids)
                split = sum(piece == "" for piece in windows[1])
                new = median_seconds(lambda ids=ids, vlm=vlm: vlm.detokenize(ids), args.repeats)
                old = median_seconds(lambda ids=ids, vlm=vlm: by_prefixes(vlm, ids), args.repeats)
                print(
                    f"{name:28s} {label:16s} ({split:4d} tokens carry ''): prefixes {old * 1e3:8.1f} ms   "
                    f"windows {new * 1e3:6.1f} ms   ratio {old / new:6.1f}x   "
                    f"same pieces: {windows == prefixes}"
                )


if __name__ == "__main__":
    main()
