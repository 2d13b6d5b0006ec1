"""N=8 sampling three ways, on random Qwen2.5-VLs built here: what prefix sharing and top-k capture buy.

Ways compared, each producing 8 samples of exactly ``--tokens`` tokens (stop tokens disabled, since a
random model stops at random places):

- ``TransformersVLM.sample(n=8)``: prefix prefilled once, KV cache expanded to 8 rows, raw chosen
  log-probs and top-k captured per step;
- 8 sequential ``sample(n=1)`` calls;
- ``generate(num_return_sequences=8, output_scores=True)``: the plain way (and the official CA-TTS
  code's), which prefills the prefix 8 times and keeps a full-vocabulary score row per token.

Also measured: prefix positions the language model prefills per question (a forward hook), memory
kept by the log-prob capture, and the visual self-check's cost as a fraction of one N=8 call: two
batched calls (original and noised image) of 16 continuations, 4 candidates boxed in 4 frames (each
a reply like the organisms', as long as a sample), by ``score`` over the whole continuations and by
``score_answers``, which the self-check uses (each continuation cut after its answer's closing
token, a frame's text encoded once), cold and as the graph calls it, after the sampling call, whose
prefix the model keeps (``TransformersVLM.prefixes``: the clean image's vision tower and prompt are
not read again), beside the two prompt prefills (vision tower and prompt, once per image) that
scoring both images cold needs.
Prints measured numbers only.

    python benchmarks/sampling.py                 # tiny model, then a ~125M-parameter one (152k vocab)
    python benchmarks/sampling.py --skip-medium   # tiny model only
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageFilter

from catts_graph.eval.synthetic import describe_scene, make_question
from catts_graph.models.tiny import build_tiny_qwen25vl
from catts_graph.models.transformers_vlm import TransformersVLM, prefill

N = 8
PROMPT = "How many shapes are in the picture? Answer with a number."
MEDIUM = {  # ~125M parameters, 117M of them the 152k-row embedding and output matrices
    "hidden_size": 384,
    "num_hidden_layers": 4,
    "num_attention_heads": 6,
    "num_key_value_heads": 2,
    "intermediate_size": 1024,
    "vision_hidden_size": 256,
    "vision_depth": 4,
    "vision_num_heads": 4,
    "max_pixels": 28 * 28 * 400,
    "vocab_size": 152064,
}


@contextmanager
def prefill_counter(vlm: TransformersVLM) -> Iterator[list[int]]:
    """Positions the language model processes in multi-token (prefill) calls, summed over the batch."""
    counts: list[int] = []

    def hook(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        batch, length = kwargs["inputs_embeds"].shape[:2]
        if length > 1:
            counts.append(batch * length)

    handle = vlm.model.model.language_model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield counts
    finally:
        handle.remove()


def median_seconds(
    fn: Callable[[], object], repeats: int, setup: Callable[[], object] | None = None
) -> float:
    times = []
    for _ in range(repeats):
        if setup is not None:
            setup()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def fixed_length(vlm: TransformersVLM) -> TransformersVLM:
    """The same model with no stop token, so every sample has exactly max_new_tokens tokens, and no
    prefix cache: the ways of decoding compared here each read the prefix as they would cold (with
    the cache, repeated calls and 8 x sample(n=1) would read it once)."""
    copy = TransformersVLM(vlm.model, vlm.processor, prefix_cache=0)
    copy.stop_token_ids = {-1}
    return copy


def run(name: str, vlm: TransformersVLM, image: Image.Image, tokens: int, top_k: int, repeats: int) -> None:
    vlm = fixed_length(vlm)
    model = vlm.model
    inputs = vlm._encode([image], PROMPT)
    image_pad = vlm.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    prefix = inputs["input_ids"].shape[1]
    image_tokens = int((inputs["input_ids"] == image_pad).sum())
    params = sum(p.numel() for p in model.parameters())
    vocab = model.get_output_embeddings().weight.shape[0]

    def batched() -> object:
        return vlm.sample([image], PROMPT, N, max_new_tokens=tokens, seed=0, top_logprobs=top_k)

    def sequential() -> object:
        return [
            vlm.sample([image], PROMPT, 1, max_new_tokens=tokens, seed=i, top_logprobs=top_k)
            for i in range(N)
        ]

    def generate() -> Any:
        model.model.rope_deltas = None
        return model.generate(
            **inputs,
            do_sample=True,
            num_return_sequences=N,
            max_new_tokens=tokens,
            min_new_tokens=tokens,
            output_scores=True,
            return_dict_in_generate=True,
        )

    print(
        f"\n== {name}: {params / 1e6:.1f}M parameters, vocab {vocab}, {model.device} {model.dtype}; "
        f"prefix {prefix} tokens ({image_tokens} image); {N} samples x {tokens} tokens, top-{top_k} "
        f"log-probs; median of {repeats}"
    )
    batched()  # warm-up
    rows = []
    for label, fn in (
        ("sample(n=8), shared prefix", batched),
        ("8 x sample(n=1)", sequential),
        ("generate(num_return_sequences=8)", generate),
    ):
        with prefill_counter(vlm) as counts:
            fn()
        rows.append((label, median_seconds(fn, repeats), sum(counts)))
    base = rows[0][1]
    print(f"{'way':36} {'seconds':>8} {'x batched':>10} {'prefix positions prefilled':>28}")
    for label, seconds, prefilled in rows:
        print(f"{label:36} {seconds:8.3f} {seconds / base:10.2f} {prefilled:28d}")

    # Memory the log-prob statistics keep once the call returns.
    tracemalloc.start()
    kept = batched()
    ours = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del kept
    out = generate()
    naive = sum(s.nbytes for s in out.scores)
    print(
        f"log-prob capture kept: ours {ours / 2**20:.2f} MiB (chosen + top-{top_k} per token, Python "
        f"objects, tracemalloc) vs output_scores {naive / 2**20:.2f} MiB (tensors): "
        f"{naive / max(ours, 1):.0f}x"
    )
    if torch.cuda.is_available():
        for label, fn in (("sample(n=8)", batched), ("generate+output_scores", generate)):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            start = torch.cuda.memory_allocated()
            fn()
            peak = torch.cuda.max_memory_allocated() - start
            print(f"CUDA peak above the weights, {label}: {peak / 2**20:.1f} MiB")

    # 4 candidates written into 4 frames (a response with its boxed answer cut out): 16
    # continuations about as long as the responses, differing only in the answer.
    frames = [reply_frame(vlm, index, tokens) for index in range(4)]
    texts = [frame + answer + "}." for answer in ("A", "12", "red", "top left") for frame in frames]
    spans = [
        (len(frame), len(frame) + len(answer))
        for answer in ("A", "12", "red", "top left")
        for frame in frames
    ]
    noised = image.filter(ImageFilter.GaussianBlur(4))
    checker = TransformersVLM(model, vlm.processor)  # the library's default: recent prefixes kept

    def whole() -> None:
        checker.score([image], PROMPT, texts)
        checker.score([noised], PROMPT, texts)

    def answers() -> None:
        checker.score_answers([image], PROMPT, texts, spans)
        checker.score_answers([noised], PROMPT, texts, spans)

    def cold() -> None:  # nothing read before: both images' prefixes are read here
        checker.prefixes.clear()

    def after_sampling() -> None:  # what the sampling call leaves: the clean image's prefix kept
        checker.prefixes.clear()
        with torch.inference_mode():
            checker.prefixes.prefill(model, checker._encode([image], PROMPT))

    def prefills() -> None:  # what any scoring of both images must do: the floor
        with torch.inference_mode():
            prefill(model, vlm._encode([image], PROMPT))
            prefill(model, vlm._encode([noised], PROMPT))

    for label, fn, setup in (
        ("2 x score, 16 whole continuations", whole, cold),
        ("2 x score_answers, the same 16, cold", answers, cold),
        ("2 x score_answers after the sampling call (the self-check's)", answers, after_sampling),
        ("the 2 prompt prefills alone", prefills, None),
    ):
        check = median_seconds(fn, repeats, setup)
        print(f"self-check, {label}: {check:.3f} s = {check / base:.2f} of one sample(n=8) call")


def reply_frame(vlm: TransformersVLM, index: int, tokens: int) -> str:
    """A reply like the organisms' (test scene ``index`` described), cut to ``tokens`` tokens, then
    the opening of its boxed answer: the text before the answer in a self-check frame."""
    description = " ".join(
        describe_scene(make_question("test", i, level=3).scene) for i in range(index, index + 4)
    )
    ids = vlm.tokenizer(description, add_special_tokens=False)["input_ids"][:tokens]
    return vlm.tokenizer.decode(ids) + " \\boxed{"


def shapes_image(side: int) -> Image.Image:
    image = Image.new("RGB", (side, side), (245, 245, 245))
    step = max(side // 6, 1)
    for i in range(3):
        for x in range(i * 2 * step, i * 2 * step + step):
            for y in range(step, 2 * step):
                image.putpixel((x, y), (30 + 80 * i, 60, 200 - 60 * i))
    return image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=32, help="new tokens per sample")
    parser.add_argument("--top-logprobs", type=int, default=20, help="top-k log-probs kept per step")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-medium", action="store_true", help="only the tiny model")
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="catts-bench-") as tmp:
        tiny = TransformersVLM.from_pretrained(build_tiny_qwen25vl(Path(tmp) / "tiny"))
        run("tiny", tiny, shapes_image(112), args.tokens, args.top_logprobs, args.repeats)
        if not args.skip_medium:
            medium = TransformersVLM.from_pretrained(build_tiny_qwen25vl(Path(tmp) / "medium", **MEDIUM))
            run("medium", medium, shapes_image(504), args.tokens, args.top_logprobs, args.repeats)


if __name__ == "__main__":
    main()
