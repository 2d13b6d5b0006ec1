"""The base model on local transformers: Qwen2.5-VL and any image-text-to-text model with a chat template.

Why a decode loop of our own instead of ``generate(num_return_sequences=n, output_scores=True)``:

- *Prefix sharing.* ``num_return_sequences`` copies the inputs before the prefill, so the vision
  tower and the whole image+prompt prefix run N times. Here the prefix is prefilled once (batch 1),
  the KV cache is expanded to N rows, and only the continuations are decoded in a batch. Qwen2.5-VL
  keeps its multimodal rope offsets (``rope_deltas``) from the prefill, so decode steps get the right
  positions without the image.
- *Raw log-probs at O(N * T * k) memory.* Each step takes ``log_softmax`` of the raw logits, keeps
  the chosen token's log-prob and the top-k, and drops the rest; the temperature / top-k / top-p
  warping only decides which token is drawn. ``output_scores`` keeps warped full-vocabulary scores
  for every step (gigabytes per question with a 150k vocabulary), which is what the official CA-TTS
  code reads its confidence from.
- *Reproducible, batch-independent sampling.* Sample i of a call draws its randomness from its own
  generator, seeded from ``(seed, i)``: a seed reproduces a call, and the first k samples of a call do
  not depend on n, so batched and one-by-one sampling agree.
"""

from __future__ import annotations

import json
import os
import random
import threading
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from catts_graph.models.base import Sample, TokenLogprobs, check_sampling_args

__all__ = ["TransformersVLM", "Continuation"]

Continuation = str | TokenLogprobs | Sequence[int]
"""What :meth:`TransformersVLM.score` accepts per continuation: text (tokenised with the model's
tokenizer), or exact token ids (a :class:`~catts_graph.models.base.Sample` or a list of ints), which
avoids a re-tokenisation that may differ from the ids the model actually sampled."""

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


class TransformersVLM:
    """A local vision-language model implementing :class:`~catts_graph.models.base.BaseVLM`.

    Build it with :meth:`from_pretrained`, or wrap an already loaded model and processor. The user
    turn is rendered with the processor's chat template: the images first, then the prompt text,
    followed by the generation prompt; the response is the assistant turn that follows.

    Calls are serialised with a lock: the model carries per-call state (Qwen2.5-VL's rope offsets)
    between the prefill and the decode steps, and graph nodes may call it from several threads.

    ``answer_prompt`` and ``reflection_prompt`` name the prompt templates (``prompts/<name>.txt``)
    the model was trained to answer and to reflect under; ``None`` means the graph's general
    ``answer`` and ``reflection`` prompts. :meth:`from_pretrained` reads them from a ``catts.json``
    file in the checkpoint folder when there is one (the organism models ship one), so a checkpoint
    is asked what it learned, as its chat template travels with it.
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        *,
        answer_prompt: str | None = None,
        reflection_prompt: str | None = None,
    ) -> None:
        tokenizer = getattr(processor, "tokenizer", None)
        if tokenizer is None:
            raise TypeError(
                f"processor={type(processor).__name__} has no tokenizer; expected a multimodal processor"
            )
        if (
            getattr(processor, "chat_template", None) is None
            and getattr(tokenizer, "chat_template", None) is None
        ):
            raise ValueError("processor has no chat template; expected a chat (instruct) checkpoint")
        self.model = model.eval()
        self.processor = processor
        self.tokenizer = tokenizer
        self.stop_token_ids = _stop_token_ids(model, tokenizer)
        self.pad_token_id = _pad_token_id(tokenizer, self.stop_token_ids)
        self.suppressed_token_ids = _vision_token_ids(tokenizer)
        self.answer_prompt = answer_prompt
        self.reflection_prompt = reflection_prompt
        self._lock = threading.Lock()

    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str | os.PathLike[str],
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        attn_implementation: str | None = None,
        max_pixels: int | None = None,
    ) -> TransformersVLM:
        """Load a checkpoint (local folder or hub id) with ``AutoModelForImageTextToText``.

        Defaults: ``cuda`` with bfloat16 when a GPU is present, else ``cpu`` with float32 (bf16
        matmuls are slow on most CPUs); ``sdpa`` attention. ``max_pixels`` caps the pixels per image
        (Qwen's processor default allows 1280 language-model tokens per image).
        """
        from transformers import AutoModelForImageTextToText, AutoProcessor

        torch_device = torch.device(device) if device is not None else _default_device()
        torch_dtype = _resolve_dtype(dtype, torch_device)
        model = AutoModelForImageTextToText.from_pretrained(
            path_or_id,
            dtype=torch_dtype,
            attn_implementation=attn_implementation or "sdpa",
        ).to(torch_device)
        processor = AutoProcessor.from_pretrained(path_or_id)
        if max_pixels is not None:
            _limit_pixels(processor, max_pixels)
        settings = checkpoint_settings(path_or_id)
        return cls(
            model,
            processor,
            answer_prompt=settings.get("answer_prompt"),
            reflection_prompt=settings.get("reflection_prompt"),
        )

    @property
    def device(self) -> torch.device:
        """The device the model's parameters live on."""
        return next(self.model.parameters()).device

    @property
    def context_length(self) -> int | None:
        """Positions the language model has (``max_position_embeddings``), or None when its config
        does not say; the graph refuses a prompt that does not fit before it samples."""
        config = self.model.config
        value = getattr(getattr(config, "text_config", None) or config, "max_position_embeddings", None)
        return value if isinstance(value, int) else None

    # -- protocol -------------------------------------------------------------------------------

    def sample(
        self,
        images: Sequence[Image.Image],
        prompt: str,
        n: int,
        *,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        max_new_tokens: int = 512,
        seed: int | None = None,
        top_logprobs: int = 0,
    ) -> list[Sample]:
        """Draw ``n`` responses in one batched decode over a prefix prefilled once.

        ``temperature == 0`` is greedy: every sample would be the same, so one row is decoded and
        copied. Otherwise each step draws from ``softmax(logits / temperature)`` restricted to the
        ``top_k`` most likely tokens (0: all) and to the smallest set with mass ``>= top_p``.
        Log-probs are always those of the raw distribution. The stop tokens (EOS, ``<|im_end|>``)
        end a sample and are not part of it. ``extra`` holds ``seed`` and ``index``: the call
        ``sample(..., n=index + 1, seed=seed)`` reproduces the sample.
        """
        check_sampling_args(n, temperature, top_p, top_k, max_new_tokens, top_logprobs, seed)
        vocab = self.model.get_output_embeddings().weight.shape[0]
        if top_logprobs > vocab:
            raise ValueError(f"top_logprobs={top_logprobs}: the vocabulary has only {vocab} tokens")
        if seed is None:
            seed = random.SystemRandom().randrange(2**63)
        greedy = temperature == 0
        rows = 1 if greedy else n
        with self._lock, torch.inference_mode():
            inputs = self._encode(images, prompt)
            cache, logits = self._prefill(inputs)
            logits = logits.expand(rows, -1)
            cache.batch_repeat_interleave(rows)
            generators = [_row_generator(seed, i) for i in range(rows)]
            ids: list[list[int]] = [[] for _ in range(rows)]
            logprobs: list[list[float]] = [[] for _ in range(rows)]
            tops: list[list[list[float]]] = [[] for _ in range(rows)]
            finish = ["length"] * rows
            active = list(range(rows))  # sample index of each cache row
            stop = torch.tensor(sorted(self.stop_token_ids), device=logits.device)
            suppressed = torch.tensor(
                sorted(self.suppressed_token_ids), device=logits.device, dtype=torch.long
            )
            for step in range(max_new_tokens):
                raw = torch.log_softmax(logits.float(), dim=-1)
                # Vision placeholders are never drawn (a response holding <|image_pad|> could not
                # be re-scored with its image); their raw probability still counts in every log-prob.
                allowed = raw.index_fill(1, suppressed, float("-inf")) if len(suppressed) else raw
                if greedy:
                    chosen = allowed.argmax(dim=-1)
                else:
                    chosen = _draw(allowed, temperature, top_p, top_k, [generators[i] for i in active])
                chosen_lp = raw.gather(1, chosen[:, None])[:, 0]
                is_stop = torch.isin(chosen, stop)
                top = torch.topk(raw, top_logprobs, dim=-1).values.tolist() if top_logprobs else None
                still: list[int] = []
                for row, (index, token, lp, ended) in enumerate(
                    zip(active, chosen.tolist(), chosen_lp.tolist(), is_stop.tolist(), strict=True)
                ):
                    if ended:
                        finish[index] = "stop"
                        continue
                    ids[index].append(token)
                    logprobs[index].append(lp)
                    if top is not None:
                        tops[index].append(top[row])
                    still.append(row)
                if not still or step == max_new_tokens - 1:
                    break
                if len(still) < len(active):
                    # Finished rows leave the batch, so long tails do not pay for short answers.
                    keep = torch.tensor(still, device=logits.device)
                    cache.batch_select_indices(keep)
                    chosen = chosen[keep]
                    active = [active[row] for row in still]
                out = self.model(input_ids=chosen[:, None], past_key_values=cache, use_cache=True)
                logits = out.logits[:, -1, :]
        samples = []
        for i in range(rows):
            text, tokens = self.detokenize(ids[i])
            samples.append(
                Sample(
                    token_ids=ids[i],
                    logprobs=logprobs[i],
                    tokens=tokens,
                    text=text,
                    top_logprobs=tops[i] if top_logprobs else None,
                    finish_reason=finish[i],
                    extra={"seed": seed, "index": i},
                )
            )
        if greedy:
            samples = [_copy_sample(samples[0], index=i) for i in range(n)]
        return samples

    def score(
        self,
        images: Sequence[Image.Image],
        prompt: str,
        continuations: Sequence[Continuation],
    ) -> list[TokenLogprobs]:
        """Teacher-forced raw log-probs of each continuation as the assistant's reply.

        The prefix is prefilled once; the K continuations then run as one right-padded batch over
        the shared cache (right padding needs no attention mask: a real token never attends to the
        padding after it). A continuation is text or exact token ids (see :data:`Continuation`);
        stop tokens are not appended, matching :meth:`sample`, which excludes them.
        """
        targets = [self._continuation_ids(c, i) for i, c in enumerate(continuations)]
        if not targets:
            return []
        with self._lock, torch.inference_mode():
            inputs = self._encode(images, prompt)
            cache, first_logits = self._prefill(inputs)
            first = torch.log_softmax(first_logits.float(), dim=-1)[0]
            longest = max(len(t) for t in targets)
            rest: torch.Tensor | None = None
            if longest > 1:
                # Inputs are each continuation without its last token; logits at t predict token t + 1.
                batch = torch.full((len(targets), longest - 1), self.pad_token_id, dtype=torch.long)
                for row, target in enumerate(targets):
                    if len(target) > 1:  # an empty continuation's row stays padding
                        batch[row, : len(target) - 1] = torch.tensor(target[:-1], dtype=torch.long)
                cache.batch_repeat_interleave(len(targets))
                rest = self.model(
                    input_ids=batch.to(first.device), past_key_values=cache, use_cache=True
                ).logits
            results = []
            for row, target in enumerate(targets):
                lps: list[float] = []
                if target:
                    lps.append(first[target[0]].item())
                if len(target) > 1 and rest is not None:
                    # One row at a time in float32: never a K x T x V float32 tensor.
                    row_lp = torch.log_softmax(rest[row, : len(target) - 1].float(), dim=-1)
                    index = torch.tensor(target[1:], device=row_lp.device)[:, None]
                    lps.extend(row_lp.gather(1, index)[:, 0].tolist())
                _, tokens = self.detokenize(target)
                results.append(TokenLogprobs(token_ids=list(target), logprobs=lps, tokens=tokens))
        return results

    def generate_vcd(
        self,
        images: Sequence[Image.Image],
        noised_images: Sequence[Image.Image],
        prompt: str,
        *,
        alpha: float = 1.0,
        beta: float = 0.1,
        temperature: float = 0.0,
        max_new_tokens: int = 512,
        seed: int = 0,
    ) -> str:
        """One response decoded with visual contrastive decoding (VCD) against ``noised_images``.

        Both branches condition on the same prefix at every step (the noised one keeps its own KV
        cache; see :class:`catts_graph.vcd.VCDLogitsProcessor`); greedy when ``temperature == 0``,
        sampled otherwise. Runs under the model's lock, like :meth:`sample`.
        """
        from catts_graph.vcd import VCDLogitsProcessor

        check_sampling_args(1, temperature, 1.0, 0, max_new_tokens, 0, seed)
        if len(noised_images) != len(images):
            raise ValueError(f"noised_images: got {len(noised_images)} images for {len(images)} originals")
        with self._lock, torch.inference_mode():
            inputs = self._encode(images, prompt)
            noised = self._encode(noised_images, prompt)
            torch.manual_seed(seed)
            output = self.model.generate(
                **inputs,
                logits_processor=[VCDLogitsProcessor(self.model, noised, alpha=alpha, beta=beta)],
                do_sample=temperature > 0,
                temperature=temperature if temperature > 0 else None,
                top_p=None,
                top_k=None,
                repetition_penalty=1.0,  # exact VCD: config-built processors would touch one branch
                suppress_tokens=sorted(self.suppressed_token_ids) or None,
                max_new_tokens=max_new_tokens,
                pad_token_id=self.pad_token_id,
            )
        generated = output[0, inputs["input_ids"].shape[1] :].tolist()
        ids = [
            token for token in generated if token not in self.stop_token_ids and token != self.pad_token_id
        ]
        return self.detokenize(ids)[0]

    # -- text -----------------------------------------------------------------------------------

    def detokenize(self, token_ids: Sequence[int]) -> tuple[str, list[str]]:
        """The text of ``token_ids`` and one string per token whose concatenation is that text.

        Byte-level tokenizers split multi-byte characters across tokens, so decoding token by token
        yields replacement characters. When that happens, each token instead gets what it adds to the
        longest common prefix of the decoded prefixes and the full text: the token that completes a
        character carries it, the ones before it carry "".
        """
        ids = list(token_ids)
        if not ids:
            return "", []
        text = self._decode_batch([ids])[0]
        pieces = self._decode_batch([[i] for i in ids])
        if "".join(pieces) == text:
            return text, pieces
        prefixes = self._decode_batch([ids[: t + 1] for t in range(len(ids) - 1)])
        pieces, done = [], 0
        for prefix in prefixes:
            reached = max(done, len(os.path.commonprefix([prefix, text])))
            pieces.append(text[done:reached])
            done = reached
        pieces.append(text[done:])
        return text, pieces

    def _decode_batch(self, sequences: list[list[int]]) -> list[str]:
        """Decode with special tokens kept, straight through the Rust tokenizer when there is one
        (``batch_decode`` first walks every id in Python, which costs more than the decoding)."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None:
            return list(backend.decode_batch(sequences, skip_special_tokens=False))
        return list(
            self.tokenizer.batch_decode(
                sequences, skip_special_tokens=False, clean_up_tokenization_spaces=False
            )
        )

    # -- internals ------------------------------------------------------------------------------

    def prompt_ids(self, images: Sequence[Image.Image], prompt: str) -> list[int]:
        """The token ids of the whole prefix (chat template, image tokens, generation prompt)."""
        return self._encode(images, prompt)["input_ids"][0].tolist()

    def _encode(self, images: Sequence[Image.Image], prompt: str) -> dict[str, torch.Tensor]:
        """Processor inputs for the user turn (images, then ``prompt``) plus the generation prompt."""
        if not isinstance(prompt, str):
            raise TypeError(f"prompt: got {type(prompt).__name__}, expected str")
        images = list(images)
        for i, image in enumerate(images):
            if not isinstance(image, Image.Image):
                raise TypeError(f"images[{i}]: got {type(image).__name__}, expected a PIL image")
        content: list[dict[str, str]] = [{"type": "image"} for _ in images]
        content.append({"type": "text", "text": prompt})
        text = self.processor.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
        )
        inputs = self.processor(
            text=[text], images=[image.convert("RGB") for image in images] or None, return_tensors="pt"
        )
        dtype = next(self.model.parameters()).dtype
        device = self.device
        return {
            key: value.to(device=device, dtype=dtype if value.is_floating_point() else value.dtype)
            for key, value in inputs.items()
            if isinstance(value, torch.Tensor)
        }

    def _prefill(self, inputs: dict[str, torch.Tensor]) -> tuple[Any, torch.Tensor]:
        """Run the vision tower and the prefix once; the KV cache and the last position's logits."""
        # Qwen2-VL-family models cache the multimodal rope offsets of the last prefill and reuse them
        # for later cached steps; a stale value from another prompt would shift every position.
        inner = getattr(self.model, "model", None)
        if inner is not None and hasattr(inner, "rope_deltas"):
            inner.rope_deltas = None
        out = self.model(**inputs, use_cache=True, logits_to_keep=1)
        return out.past_key_values, out.logits[:, -1, :]

    def _continuation_ids(self, continuation: Continuation, index: int) -> list[int]:
        if isinstance(continuation, str):
            ids = self.tokenizer(continuation, add_special_tokens=False)["input_ids"]
        elif isinstance(continuation, TokenLogprobs):
            ids = list(continuation.token_ids)
        elif isinstance(continuation, Sequence):
            ids = list(continuation)
        else:
            raise TypeError(
                f"continuations[{index}]: got {type(continuation).__name__}, "
                "expected str, Sample or token ids"
            )
        vocab = self.model.get_output_embeddings().weight.shape[0]
        bad = [i for i in ids if not isinstance(i, int) or not 0 <= i < vocab]
        if bad:
            raise ValueError(f"continuations[{index}]: token ids {bad[:5]} are not ints in [0, {vocab})")
        return ids


def _draw(
    raw: torch.Tensor, temperature: float, top_p: float, top_k: int, generators: list[torch.Generator]
) -> torch.Tensor:
    """One token per row from the warped distribution, by inverse CDF on each row's own uniform draw.

    One uniform number per row (from that row's generator) makes a row's draw independent of the
    other rows, hence of the batch size.
    """
    warped = raw / temperature
    if 0 < top_k < warped.shape[-1]:
        kth = torch.topk(warped, top_k, dim=-1).values[:, -1:]
        warped = warped.masked_fill(warped < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(warped, dim=-1, descending=True)
        sorted_probs = torch.softmax(sorted_logits, dim=-1)
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
        # Keep a token while the mass of the tokens ranked above it is still below top_p.
        drop_sorted = mass_before >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        warped = warped.masked_fill(drop, float("-inf"))
    cdf = torch.softmax(warped.double(), dim=-1).cumsum(dim=-1)
    uniforms = torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in generators])
    uniforms = uniforms.to(cdf.device)[:, None] * cdf[:, -1:]
    # side="right": the first index whose cdf exceeds u, always a token with positive probability.
    chosen = torch.searchsorted(cdf, uniforms, right=True)[:, 0]
    return chosen.clamp_(max=cdf.shape[-1] - 1)


def _row_generator(seed: int, index: int) -> torch.Generator:
    """Sample ``index``'s own generator; SeedSequence mixes (seed, index) so no two calls share rows."""
    state = np.random.SeedSequence([seed, index]).generate_state(2, np.uint32)
    return torch.Generator(device="cpu").manual_seed(int(state[0]) << 32 | int(state[1]))


def _copy_sample(sample: Sample, *, index: int) -> Sample:
    return replace(
        sample,
        token_ids=list(sample.token_ids),
        logprobs=list(sample.logprobs),
        tokens=list(sample.tokens) if sample.tokens is not None else None,
        top_logprobs=[list(t) for t in sample.top_logprobs] if sample.top_logprobs is not None else None,
        extra={**sample.extra, "index": index},
    )


VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")


def _vision_token_ids(tokenizer: Any) -> set[int]:
    """Ids of the vision placeholder tokens the tokenizer knows (Qwen-VL's), never to be sampled."""
    vocab = tokenizer.get_vocab()
    return {vocab[token] for token in VISION_TOKENS if token in vocab}


def _stop_token_ids(model: Any, tokenizer: Any) -> set[int]:
    """EOS ids from the generation config and tokenizer, plus ``<|im_end|>`` (the end of a chat turn)."""
    ids: set[int] = set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured is not None:
        ids.update(int(i) for i in configured)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
        ids.add(im_end)
    if not ids:
        raise ValueError("the model and tokenizer define no EOS token; cannot tell where a response ends")
    return ids


def _pad_token_id(tokenizer: Any, stop_ids: set[int]) -> int:
    return int(tokenizer.pad_token_id) if tokenizer.pad_token_id is not None else min(stop_ids)


def checkpoint_settings(path_or_id: str | os.PathLike[str]) -> dict[str, Any]:
    """``catts.json`` of a local checkpoint folder (``{}`` when absent or for a hub id)."""
    path = Path(path_or_id) / "catts.json"
    if not path.is_file():
        return {}
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(settings, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(settings).__name__}")
    return settings


def _default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _resolve_dtype(dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if dtype in _DTYPES:
        return _DTYPES[dtype]
    raise ValueError(f"dtype={dtype!r}: expected a torch.dtype, 'auto' or one of {sorted(_DTYPES)}")


def _limit_pixels(processor: Any, max_pixels: int) -> None:
    """Cap the pixels per image on a Qwen2-VL-style image processor (``size`` = min/max pixels)."""
    image_processor = getattr(processor, "image_processor", None)
    size = getattr(image_processor, "size", None)
    if not isinstance(max_pixels, int) or max_pixels <= 0:
        raise ValueError(f"max_pixels={max_pixels!r}: expected a positive int")
    if size is None or "longest_edge" not in size:
        raise ValueError(
            f"max_pixels: {type(image_processor).__name__} has no pixel budget to set; "
            "expected a Qwen2-VL-style image processor"
        )
    image_processor.size = {
        "shortest_edge": min(size["shortest_edge"], max_pixels),
        "longest_edge": max_pixels,
    }
