"""CA-TTS's wall time over majority voting's at N = 8 on a full-size Qwen2.5-VL with random weights
(the paper's cost unit: 1.91x), for a GPU session; ``--size medium`` runs the same code on CPU.

A random model writes no answer, so the graph could not vote on its replies; here the model does all
the compute and a script writes the texts the graph reads (:class:`RealCompute`):

- every sampling call (majority's pool, CA-TTS's samples, the reflection's greedy re-answer) is a real
  decode of ``--tokens`` tokens per sample on the model, stop tokens off, under the graph's settings;
  the samples handed back are scripted replies of about the same length (5 of the 8 answer A, 3 B; the
  re-answer C), so the vote is split and every module runs;
- the self-check scores its frames (the scripted replies) under both images on the model, as it
  would real ones (``score_answers``, the clean prefix kept from the sampling call);
- the expert is :class:`~catts_graph.testing.ScriptedExpert` (Voter split, Critic ``incorrect``,
  planner: all three modules), sleeping ``--expert-latency`` seconds per call: an API expert's time
  is the provider's, so the default 0 measures what the base model adds; pass the provider's
  latency to see the whole.

Majority and CA-TTS alternate item by item (which goes first flips), each meeting the question cold
(the kept prefixes cleared); printed: seconds per item of each, the ratio of the means with a paired
bootstrap 95% interval over items, and CA-TTS's seconds per module.

    python benchmarks/catts_cost_fullsize.py --size 7b --items 8 --tokens 256     # GPU, bf16, ~16 GB
    python benchmarks/catts_cost_fullsize.py --size medium --items 3 --tokens 32   # CPU dry run
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from catts_cost import print_modules, ratio_interval  # noqa: E402  (the sibling benchmark's helpers)

N = 8
SIZES: dict[str, dict[str, Any]] = {
    # Qwen2.5-VL-7B-Instruct's shapes (its config.json): text 28 x 3584, GQA 28/4, vision 32 x 1280.
    "7b": {
        "text": {
            "hidden_size": 3584,
            "intermediate_size": 18944,
            "num_hidden_layers": 28,
            "num_attention_heads": 28,
            "num_key_value_heads": 4,
            "vocab_size": 152064,
            "mrope_section": [16, 24, 24],
        },
        "vision": {
            "depth": 32,
            "hidden_size": 1280,
            "intermediate_size": 3420,
            "num_heads": 16,
            "out_hidden_size": 3584,
            "fullatt_block_indexes": [7, 15, 23, 31],
        },
        "image_side": 644,  # 23 x 23 = 529 language-model image tokens
    },
    # benchmarks/sampling.py's 127M model: the same code path on a CPU.
    "medium": {
        "text": {
            "hidden_size": 384,
            "intermediate_size": 1024,
            "num_hidden_layers": 4,
            "num_attention_heads": 6,
            "num_key_value_heads": 2,
            "vocab_size": 152064,
            "mrope_section": [16, 8, 8],
        },
        "vision": {
            "depth": 4,
            "hidden_size": 256,
            "intermediate_size": 1024,
            "num_heads": 4,
            "out_hidden_size": 384,
            "fullatt_block_indexes": [3],
        },
        "image_side": 504,
    },
}
REPLIES = {
    "voter": json.dumps({"probabilities": [0.5, 0.5]}),
    "critic": json.dumps({"critique": "The second step misreads the image.", "verdict": "incorrect"}),
    "planner": json.dumps(
        {"modules": ["self_consistency", "self_reflection", "visual_self_check"], "reason": "benchmark"}
    ),
}


def random_model(size: str, folder: Path) -> tuple[Any, Any]:
    """A random Qwen2.5-VL of ``size``'s shapes on the default device (bf16 on a GPU), with the tiny
    model's byte-level tokenizer, processor and chat template (its ids are the real model's below
    264; the embedding has the real 152,064 rows)."""
    from transformers import AutoConfig, AutoProcessor, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from catts_graph.models.tiny import build_tiny_qwen25vl

    shape = SIZES[size]
    side = shape["image_side"]
    tiny = build_tiny_qwen25vl(folder / "processor", max_pixels=side * side)
    base = AutoConfig.from_pretrained(tiny)
    text = base.text_config.to_dict()
    text.update({k: v for k, v in shape["text"].items() if k != "mrope_section"})
    text.pop("layer_types", None)  # derived again from num_hidden_layers (all full attention)
    for key in ("rope_scaling", "rope_parameters"):
        if isinstance(text.get(key), dict):
            text[key] = {**text[key], "mrope_section": shape["text"]["mrope_section"]}
    vision = {**base.vision_config.to_dict(), **shape["vision"]}
    config = Qwen2_5_VLConfig(**{**base.to_dict(), "text_config": text, "vision_config": vision})
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    torch.manual_seed(0)
    with device:
        model = Qwen2_5_VLForConditionalGeneration._from_config(
            config, dtype=torch.bfloat16 if cuda else torch.float32
        )
    return model.eval(), AutoProcessor.from_pretrained(tiny)


class RealCompute:
    """The real model's compute with the script's texts (see the module's docstring)."""

    def __init__(self, real: Any, tokens: int) -> None:
        from catts_graph.testing import Reply, ScriptCall, ScriptedVLM

        self.real, self.tokens = real, tokens
        filler = ("the shape at the top left is a red circle; " * (tokens // 40 + 1))[: max(tokens - 12, 1)]

        def script(call: ScriptCall) -> list[Reply]:
            if "<critique>" in call.prompt:
                return [Reply(f"{filler} \\boxed{{C}}", -0.3)] * call.n
            return [Reply(f"{filler} \\boxed{{{'AAAAABBB'[i % N]}}}", -0.5) for i in range(call.n)]

        self.scripted = ScriptedVLM(script)

    def sample(self, images: Any, prompt: str, n: int, params: Any = None, **settings: Any) -> list[Any]:
        from catts_graph.models.base import SamplingParams

        params = SamplingParams.of(params, **settings)
        real = SamplingParams.of(params, max_new_tokens=self.tokens)
        self.real.sample(images, prompt, n, real)  # the decode the graph pays for
        return self.scripted.sample(images, prompt, n, params)

    def score(self, images: Any, prompt: str, continuations: Any) -> Any:
        return self.real.score(images, prompt, continuations)

    def score_answers(self, images: Any, prompt: str, continuations: Any, spans: Any) -> Any:
        return self.real.score_answers(images, prompt, continuations, spans)

    def input_size(self, image: Image.Image) -> Any:
        return self.real.input_size(image)

    @property
    def context_length(self) -> int | None:
        return self.real.context_length


def scene(side: int, index: int) -> Image.Image:
    """A few coloured squares on white, moved by ``index``."""
    image = Image.new("RGB", (side, side), (245, 245, 245))
    step = side // 8
    for i in range(3):
        x, y = (i * 2 * step + index * 7) % (side - step), (step + i * step) % (side - step)
        image.paste((40 + 80 * i, 90, 200 - 60 * i), (x, y, x + step, y + step))
    return image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="7b")
    parser.add_argument("--items", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=256, help="tokens each sample decodes")
    parser.add_argument("--expert-latency", type=float, default=0.0, help="seconds per expert call")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from catts_graph import CATTSConfig, build_graph
    from catts_graph.eval.methods import draw_pool, majority
    from catts_graph.models import TransformersVLM
    from catts_graph.testing import ScriptedExpert

    with tempfile.TemporaryDirectory(prefix="catts-fullsize-") as tmp:
        start = time.perf_counter()
        model, processor = random_model(args.size, Path(tmp))
        built = time.perf_counter() - start
    real = TransformersVLM(model, processor)
    real.stop_token_ids = {-1}  # a random model stops anywhere: every decode runs --tokens steps
    vlm = RealCompute(real, args.tokens)
    expert = ScriptedExpert(replies=REPLIES, latency=args.expert_latency)
    config = CATTSConfig(
        policy="paper", n_samples=N, max_samples=N, max_new_tokens=args.tokens, expert_retries=0
    )
    graph = build_graph(vlm, expert=expert, config=config)
    side = SIZES[args.size]["image_side"]
    params = sum(p.numel() for p in model.parameters()) / 1e9
    print(
        f"{args.size}: {params:.2f}B parameters, {model.device} {model.dtype} (built in {built:.0f} s); "
        f"{args.items} items, N = {N}, {args.tokens} tokens per sample, image {side}x{side}, "
        f"expert latency {args.expert_latency} s"
    )
    seconds: dict[str, list[float]] = {"majority": [], "catts": []}
    modules: dict[str, float] = defaultdict(float)

    def timed(fn: Any) -> tuple[float, Any]:
        real.prefixes.clear()  # each method meets the question cold
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        begin = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter() - begin, out

    for i in range(-1, args.items):  # item -1 warms up (kernels, allocator) and is not counted
        graph_input = {"images": [scene(side, i + 1)], "question": "Which letter is shown?"}
        run_config = config.replace(seed=i + 1)
        order = ("majority", "catts") if i % 2 == 0 else ("catts", "majority")
        for method in order:
            if method == "majority":
                spent, _ = timed(
                    lambda g=graph_input, c=run_config, s=i + 1: majority(
                        draw_pool(vlm, g, n=N, config=c, seed=s, greedy=False), N
                    )
                )
            else:
                spent, result = timed(lambda g=graph_input, c=run_config: graph.invoke(dict(g), context=c))
                ran = {entry["module"] for entry in result["trace"]}
                missing = {"voter", "critic", "self_reflection", "visual_self_check"} - ran
                if missing:
                    raise RuntimeError(f"CA-TTS skipped {sorted(missing)}: the cost would be understated")
                if i >= 0:
                    for entry in result["trace"]:
                        modules[str(entry["module"])] += float(entry.get("duration_s") or 0.0)
            if i >= 0:
                seconds[method].append(spent)
    majority_s, catts_s = np.array(seconds["majority"]), np.array(seconds["catts"])
    low, high = ratio_interval(catts_s, majority_s)
    print(f"  majority      {majority_s.mean():7.2f} s/item (median {np.median(majority_s):.2f})")
    print(f"  CA-TTS        {catts_s.mean():7.2f} s/item (median {np.median(catts_s):.2f})")
    print(
        f"  CA-TTS / majority wall time: {catts_s.mean() / majority_s.mean():.2f}x [{low:.2f}, {high:.2f}] "
        "(paper: 1.91x at N = 8)"
    )
    print_modules(modules, args.items, float(catts_s.sum()))


if __name__ == "__main__":
    main()
