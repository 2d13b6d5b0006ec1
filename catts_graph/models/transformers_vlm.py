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
- *One host sync per decode step.* Everything Python needs from a step (the chosen ids, their
  log-probs, which rows stopped, the top-k) leaves the device in one copy; the uniform numbers the
  draws use are drawn ahead, a chunk of steps at a time, and sent to the device with the copy of the
  step before, so a GPU is never waited on more than once a step.

The same teacher forcing (:func:`teacher_forced_logprobs`) serves :meth:`TransformersVLM.score` and
CDRL's re-scoring of completions under the training policy, and one rule (:func:`stop_token_ids`,
:func:`response_ids`) says where a response ends.
"""

from __future__ import annotations

import json
import os
import random
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from catts_graph.models.base import Sample, SamplingParams, TokenLogprobs, align_tokens, check_n
from catts_graph.vcd import cache_kwargs, output_cache

__all__ = [
    "Continuation",
    "TransformersVLM",
    "decode_batch",
    "detokenize_ids",
    "prefill",
    "processor_input_size",
    "response_ids",
    "stop_token_ids",
    "teacher_forced_logprobs",
    "teacher_forced_statistics",
    "token_pieces",
]

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
        self.stop_token_ids = stop_token_ids(model, tokenizer)
        self.pad_token_id = _pad_token_id(tokenizer, self.stop_token_ids)
        self.suppressed_token_ids = _vision_token_ids(tokenizer)
        self.answer_prompt = answer_prompt
        self.reflection_prompt = reflection_prompt
        self.declared: dict[str, Any] = {}
        """Everything the checkpoint's ``catts.json`` declares (the prompts above, and any setting
        an application reads, such as the organisms' ``answer_format``)."""
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
        vlm = cls(
            model,
            processor,
            answer_prompt=settings.get("answer_prompt"),
            reflection_prompt=settings.get("reflection_prompt"),
        )
        vlm.declared = settings
        return vlm

    def input_size(self, image: Image.Image) -> tuple[int, int] | None:
        """The ``(width, height)`` the processor resizes ``image`` to (see :func:`processor_input_size`)."""
        return processor_input_size(self.processor, image)

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
        params: SamplingParams | None = None,
        **settings: Any,
    ) -> list[Sample]:
        """Draw ``n`` responses in one batched decode over a prefix prefilled once.

        Settings: ``SamplingParams.of(params, **settings)``. ``temperature == 0`` is greedy: every
        sample would be the same, so one row is decoded and copied. Otherwise each step draws from
        ``softmax(logits / temperature)`` restricted to the ``top_k`` most likely tokens (0: all)
        and to the smallest set with mass ``>= top_p``. Log-probs are always those of the raw
        distribution. The stop tokens (EOS, ``<|im_end|>``) end a sample and are not part of it.
        ``extra`` holds ``seed`` and ``index``: the call ``sample(..., n=index + 1, seed=seed)``
        reproduces the sample.
        """
        params = SamplingParams.of(params, **settings)
        n = check_n(n)
        return self._decode(lambda: self._encode(images, prompt), n, params)

    def continue_reply(
        self,
        images: Sequence[Image.Image],
        prompt: str,
        prefix: Continuation,
        n: int,
        params: SamplingParams | None = None,
        **settings: Any,
    ) -> list[Sample]:
        """Draw ``n`` continuations of an assistant reply that begins with ``prefix``.

        The prefill is the user turn and the generation prompt, as in :meth:`sample`, followed by
        the prefix's tokens (text, tokenised with the model's tokenizer, or exact token ids as
        :meth:`score` takes them); decoding then goes on as :meth:`sample` decodes. Each sample
        holds the new tokens only, with their raw log-probs and entropies: teacher-forcing
        ``prefix ids + sample ids`` with :meth:`score` gives the same log-probs for the new tokens.
        """
        params = SamplingParams.of(params, **settings)
        n = check_n(n)
        ids = self._continuation_ids(prefix, "prefix")
        return self._decode(lambda: _append_tokens(self._encode(images, prompt), ids), n, params)

    def _decode(
        self, encode: Callable[[], dict[str, torch.Tensor]], n: int, params: SamplingParams
    ) -> list[Sample]:
        """The decode loop behind :meth:`sample` and :meth:`continue_reply`: prefill ``encode()``
        once, then ``n`` rows (one when greedy) in a batch."""
        vocab = self.model.get_output_embeddings().weight.shape[0]
        k = params.top_logprobs
        if k > vocab:
            raise ValueError(f"top_logprobs={k}: the vocabulary has only {vocab} tokens")
        seed = params.seed if params.seed is not None else random.SystemRandom().randrange(2**63)
        rows = 1 if params.greedy else n
        with self._lock, torch.inference_mode():
            cache, logits = prefill(self.model, encode())
            device = logits.device
            logits = logits.expand(rows, -1)
            cache.batch_repeat_interleave(rows)
            uniforms = None if params.greedy else _Uniforms(seed, rows, params.max_new_tokens, device)
            ids: list[list[int]] = [[] for _ in range(rows)]
            logprobs: list[list[float]] = [[] for _ in range(rows)]
            tops: list[list[list[float]]] = [[] for _ in range(rows)]
            entropies: list[list[float]] = [[] for _ in range(rows)]
            finish = ["length"] * rows
            active = list(range(rows))  # sample index of each cache row
            active_rows = torch.arange(rows, device=device)
            stop = torch.tensor(sorted(self.stop_token_ids), device=device)
            suppressed = torch.tensor(sorted(self.suppressed_token_ids), device=device, dtype=torch.long)
            for step in range(params.max_new_tokens):
                raw = torch.log_softmax(logits.float(), dim=-1)
                # Vision placeholders are never drawn (a response holding <|image_pad|> could not
                # be re-scored with its image); their raw probability still counts in every log-prob.
                allowed = raw.index_fill(1, suppressed, float("-inf")) if len(suppressed) else raw
                if uniforms is None:
                    chosen = allowed.argmax(dim=-1)
                else:
                    u = uniforms.at(step)[active_rows]
                    chosen = _draw(allowed, params.temperature, params.top_p, params.top_k, u)
                # Full-vocabulary entropy on device, one float per row: O(T) to keep, where the
                # distributions themselves would be O(T * V). exp(-inf) * -inf is NaN, hence the
                # where; rounding can make the top token's log-prob a hair above 0, hence the clamp.
                entropy = (-torch.where(raw > float("-inf"), raw.exp() * raw, 0.0).sum(-1)).clamp_min(0.0)
                # The step's one device-to-host copy: id, raw log-prob, stopped, entropy, then the
                # top-k, as float64 (exact for ids below 2**53 and for float32 log-probs).
                columns = [chosen, raw.gather(1, chosen[:, None])[:, 0], torch.isin(chosen, stop), entropy]
                host = torch.cat(
                    [c.double()[:, None] for c in columns]
                    + ([torch.topk(raw, k, dim=-1).values.double()] if k else []),
                    dim=1,
                ).tolist()
                still: list[int] = []
                for row, (index, values) in enumerate(zip(active, host, strict=True)):
                    if values[2]:
                        finish[index] = "stop"
                        continue
                    ids[index].append(int(values[0]))
                    logprobs[index].append(values[1])
                    entropies[index].append(values[3])
                    if k:
                        tops[index].append(values[4:])
                    still.append(row)
                if not still or step == params.max_new_tokens - 1:
                    break
                if len(still) < len(active):
                    # Finished rows leave the batch, so long tails do not pay for short answers. The
                    # copy of their indices follows the step's sync: the device is idle, nothing waits.
                    keep = torch.tensor(still, device=device)
                    cache.batch_select_indices(keep)
                    chosen = chosen[keep]
                    active_rows = active_rows[keep]
                    active = [active[row] for row in still]
                if uniforms is not None:
                    uniforms.prefetch(step + 1)
                out = self.model(input_ids=chosen[:, None], use_cache=True, **cache_kwargs(self.model, cache))
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
                    top_logprobs=tops[i] if k else None,
                    entropies=entropies[i],
                    finish_reason=finish[i],
                    extra={"seed": seed, "index": i},
                )
            )
        if params.greedy:
            samples = [_copy_sample(samples[0], index=i) for i in range(n)]
        return samples

    def score(
        self,
        images: Sequence[Image.Image],
        prompt: str,
        continuations: Sequence[Continuation],
    ) -> list[TokenLogprobs]:
        """Teacher-forced raw log-probs of each continuation as the assistant's reply.

        One :func:`teacher_forced_logprobs` pass: the prefix is prefilled once and the K
        continuations run as one batch over the shared cache. A continuation is text or exact token
        ids (see :data:`Continuation`); stop tokens are not appended, matching :meth:`sample`, which
        excludes them.
        """
        targets = [self._continuation_ids(c, f"continuations[{i}]") for i, c in enumerate(continuations)]
        if not targets:
            return []
        with self._lock, torch.inference_mode():
            values = teacher_forced_logprobs(
                self.model, self._encode(images, prompt), targets, pad_token_id=self.pad_token_id
            )
        return [
            TokenLogprobs(token_ids=list(target), logprobs=lps, tokens=self.detokenize(target)[1])
            for target, lps in zip(targets, values, strict=True)
        ]

    def score_answers(
        self,
        images: Sequence[Image.Image],
        prompt: str,
        continuations: Sequence[str],
        spans: Sequence[tuple[int, int]],
    ) -> list[float | None]:
        """Each continuation's answer log-prob (:func:`catts_graph.vcd.answer_logprob` of the
        characters ``spans[i]``): what :meth:`score` gives, for a fraction of its cost.

        The visual self-check writes each candidate into the same frames, so its continuations share
        their text up to the answer and need log-probs only from there. Each continuation is cut
        after its answer's closing token (:func:`catts_graph.vcd.answer_tokens`), the tokens before
        it that continuations share are encoded once, and the output layer runs only where an
        answer's token is predicted (:func:`answer_logprobs`).
        """
        from catts_graph.models.base import check_spans
        from catts_graph.vcd import answer_tokens

        check_spans(continuations, spans)
        targets = [
            self._continuation_ids(text, f"continuations[{i}]") for i, text in enumerate(continuations)
        ]
        needed = [
            answer_tokens(align_tokens(self.detokenize(ids)[1], text), *span)
            for ids, text, span in zip(targets, continuations, spans, strict=True)
        ]
        if not targets:
            return []
        with self._lock, torch.inference_mode():
            return list(
                answer_logprobs(
                    self.model, self._encode(images, prompt), targets, needed, pad_token_id=self.pad_token_id
                )
            )

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

        SamplingParams(temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)
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
        return self.detokenize(response_ids(generated, self.stop_token_ids))[0]

    # -- text -----------------------------------------------------------------------------------

    def detokenize(self, token_ids: Sequence[int]) -> tuple[str, list[str]]:
        """The text of ``token_ids`` and one string per token whose concatenation is that text.

        Byte-level tokenizers split multi-byte characters across tokens, so decoding token by token
        yields replacement characters. When that happens, token t's piece is the text it makes final
        in a window of the few tokens around it (:func:`token_pieces`): the token that completes a
        character carries it, the ones before it carry "". O(T): one batched decode, or two.
        """
        return detokenize_ids(self.tokenizer, token_ids)

    def _decode_batch(self, sequences: list[list[int]]) -> list[str]:
        return decode_batch(self.tokenizer, sequences)

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

    def _continuation_ids(self, continuation: Continuation, where: str) -> list[int]:
        if isinstance(continuation, str):
            ids = self.tokenizer(continuation, add_special_tokens=False)["input_ids"]
        elif isinstance(continuation, TokenLogprobs):
            ids = list(continuation.token_ids)
        elif isinstance(continuation, Sequence):
            ids = list(continuation)
        else:
            raise TypeError(f"{where}: got {type(continuation).__name__}, expected str, Sample or token ids")
        vocab = self.model.get_output_embeddings().weight.shape[0]
        bad = [i for i in ids if not isinstance(i, int) or not 0 <= i < vocab]
        if bad:
            raise ValueError(f"{where}: token ids {bad[:5]} are not ints in [0, {vocab})")
        return ids


def _append_tokens(inputs: dict[str, torch.Tensor], ids: Sequence[int]) -> dict[str, torch.Tensor]:
    """Processor inputs with text tokens ``ids`` appended after the prompt (and its generation
    prompt): ``input_ids`` grows, the attention mask with ones, token type ids with 0 (text)."""
    if not ids:
        return inputs
    input_ids = inputs["input_ids"]
    added = torch.tensor([list(ids)], dtype=input_ids.dtype, device=input_ids.device)
    out = dict(inputs)
    out["input_ids"] = torch.cat([input_ids, added], dim=1)
    for key, value in inputs.items():
        if key == "attention_mask":
            out[key] = torch.cat([value, torch.ones_like(added, dtype=value.dtype)], dim=1)
        elif key.endswith("token_type_ids"):
            out[key] = torch.cat([value, torch.zeros_like(added, dtype=value.dtype)], dim=1)
    return out


def prefill(model: Any, inputs: Mapping[str, torch.Tensor]) -> tuple[Any, torch.Tensor]:
    """Run the vision tower and the prefix once; the KV cache and the last position's logits."""
    # Qwen2-VL-family models cache the multimodal rope offsets of the last prefill and reuse them
    # for later cached steps; a stale value from another prompt (a text-only one keeps it) would
    # shift every position. Walking the modules finds them inside PEFT or DeepSpeed wrappers too.
    for module in model.modules():
        if getattr(module, "rope_deltas", None) is not None:
            module.rope_deltas = None
    out = model(**inputs, use_cache=True, logits_to_keep=1)
    return output_cache(out), out.logits[:, -1, :]


def teacher_forced_logprobs(
    model: Any,
    prefix: Mapping[str, torch.Tensor],
    targets: Sequence[Sequence[int]],
    *,
    pad_token_id: int,
) -> list[list[float]]:
    """Raw log-probs of each target continuation after one shared prefix: the one teacher forcing
    (see :func:`teacher_forced_statistics`, which also gives each position's entropy)."""
    return teacher_forced_statistics(model, prefix, targets, pad_token_id=pad_token_id)[0]


def teacher_forced_statistics(
    model: Any,
    prefix: Mapping[str, torch.Tensor],
    targets: Sequence[Sequence[int]],
    *,
    pad_token_id: int,
    entropies: bool = False,
) -> tuple[list[list[float]], list[list[float]] | None]:
    """Raw log-probs of each target continuation after one shared prefix, and with ``entropies``
    the full-vocabulary entropy ``H_t = -sum_v p_t(v) log p_t(v)`` (nats) of the distribution each
    token was drawn from, as :meth:`TransformersVLM.sample` records it (None without).

    ``prefix`` is the processor's batch-1 inputs (on the model's device). The prefix is prefilled
    once and its KV cache expanded to the K rows; the continuations then run as one right-padded
    batch (right padding needs no attention mask: a real token never attends to the padding after
    it). ``lp[r][t] = log softmax(logits)[targets[r][t]]`` at the position before token t: the
    prefill's last position for t = 0, row r's position t - 1 of the continuation pass after it.
    Always exactly two forward passes (the second at least one position wide), whatever the
    targets: processes of a ZeRO-3 run that score different completions must make the same calls.
    The caller chooses the grad mode; one host sync at the end.
    """
    if not targets:
        return [], ([] if entropies else None)
    cache, first_logits = prefill(model, prefix)
    first = torch.log_softmax(first_logits.float(), dim=-1)[0]
    width = max(1, max(len(t) for t in targets) - 1)
    batch = torch.full((len(targets), width), pad_token_id, dtype=torch.long)
    for row, target in enumerate(targets):
        if len(target) > 1:  # an empty or one-token continuation's row stays padding
            batch[row, : len(target) - 1] = torch.tensor(target[:-1], dtype=torch.long)
    cache.batch_repeat_interleave(len(targets))
    rest = model(input_ids=batch.to(first.device), use_cache=True, **cache_kwargs(model, cache)).logits
    firsts = torch.tensor([t[0] if t else 0 for t in targets], device=first.device)
    gathered = [first[firsts]]
    spread = [_entropy(first[None])[0].expand(len(targets))] if entropies else []
    for row, target in enumerate(targets):
        if len(target) > 1:
            # One row at a time in float32: never a K x T x V float32 tensor.
            row_lp = torch.log_softmax(rest[row, : len(target) - 1].float(), dim=-1)
            index = torch.tensor(target[1:], device=row_lp.device)[:, None]
            gathered.append(row_lp.gather(1, index)[:, 0])
            if entropies:
                spread.append(_entropy(row_lp))
    values = torch.cat(gathered).tolist()
    entropy_values = torch.cat(spread).tolist() if entropies else []
    out: list[list[float]] = []
    out_entropies: list[list[float]] = []
    offset = len(targets)
    for row, target in enumerate(targets):
        if not target:
            out.append([])
            out_entropies.append([])
            continue
        out.append([values[row], *values[offset : offset + len(target) - 1]])
        if entropies:
            out_entropies.append([entropy_values[row], *entropy_values[offset : offset + len(target) - 1]])
        offset += len(target) - 1
    return out, (out_entropies if entropies else None)


def answer_logprobs(
    model: Any,
    prefix: Mapping[str, torch.Tensor],
    targets: Sequence[Sequence[int]],
    needed: Sequence[range],
    *,
    pad_token_id: int,
) -> list[float]:
    """``sum(lp[r][t] for t in needed[r])`` for each target r after one shared prefix: the sums of
    :func:`teacher_forced_logprobs`'s log-probs over a run of each target's tokens, in three passes.

    Row r is read only up to its last needed token, and split into a *key* (its tokens before the
    one that predicts its first needed token) and a *tail* (the rest up to its last needed token's
    predecessor). Rows with the same key share it (the self-check's candidates in one frame):

    1. the prefix is prefilled once (:func:`prefill`);
    2. the G distinct keys run through the decoder as one right-padded batch over the prefix's
       cache expanded to G rows, with no output layer;
    3. the tails run through the decoder as one batch over their keys' cache rows, with an attention
       mask that hides each key's padding and each position given as it would be without it
       (Qwen2-VL's multimodal rope offsets added); the output layer runs at the needed positions
       only (with a large vocabulary it is most of a short pass's cost).

    Needed token 0 takes its log-prob from the prefill's last position, as in
    :func:`teacher_forced_statistics`; the others from the tail position before them.
    """
    if len(needed) != len(targets):
        raise ValueError(f"needed: got {len(needed)} ranges for {len(targets)} targets")
    for r, (target, run) in enumerate(zip(targets, needed, strict=True)):
        if not 0 <= run.start < run.stop <= len(target) or run.step != 1:
            raise ValueError(
                f"needed[{r}]={run!r}: expected a non-empty run of target {r}'s {len(target)} tokens"
            )
    cache, first_logits = prefill(model, prefix)
    first = torch.log_softmax(first_logits.float(), dim=-1)[0]
    device = first.device
    keys: dict[tuple[int, ...], int] = {}
    group = [
        keys.setdefault(tuple(t[: max(run.start - 1, 0)]), len(keys))
        for t, run in zip(targets, needed, strict=True)
    ]
    key_lengths = [len(key) for key in keys]
    width = max(key_lengths)
    if width:
        batch = torch.full((len(keys), width), pad_token_id, dtype=torch.long)
        for g, key in enumerate(keys):
            batch[g, : len(key)] = torch.tensor(key, dtype=torch.long)
        cache.batch_repeat_interleave(len(keys))
        cache = output_cache(
            model.model(input_ids=batch.to(device), use_cache=True, **cache_kwargs(model.model, cache))
        )
        cache.batch_select_indices(torch.tensor(group, device=device))
    else:
        cache.batch_repeat_interleave(len(targets))
    lengths = [key_lengths[g] for g in group]
    # Row r's tail position p holds token lengths[r] + p and predicts the token after it.
    tails = [list(t[k : run.stop - 1]) for t, run, k in zip(targets, needed, lengths, strict=True)]
    tail_width = max(len(tail) for tail in tails)
    # (row, tail position) of every needed token after the first, in row order.
    where = [
        (r, t - 1 - k)
        for r, (run, k) in enumerate(zip(needed, lengths, strict=True))
        for t in range(max(run.start, 1), run.stop)
    ]
    later = torch.empty(0, device=device)
    if where:
        prompt_length = prefix["input_ids"].shape[1]
        batch = torch.full((len(targets), tail_width), pad_token_id, dtype=torch.long)
        mask = torch.ones((len(targets), prompt_length + width + tail_width), dtype=torch.long)
        for r, (tail, k) in enumerate(zip(tails, lengths, strict=True)):
            batch[r, : len(tail)] = torch.tensor(tail, dtype=torch.long)
            mask[r, prompt_length + k : prompt_length + width] = 0
        positions = prompt_length + torch.tensor(lengths)[:, None] + torch.arange(tail_width)[None, :]
        rope = _rope_deltas(model)
        if rope is not None:
            positions = (positions + rope.cpu()).expand(3, -1, -1)
        hidden = model.model(
            input_ids=batch.to(device),
            attention_mask=mask.to(device),
            position_ids=positions.to(device),
            use_cache=True,
            **cache_kwargs(model.model, cache),
        ).last_hidden_state
        rows, columns = (torch.tensor(axis, device=device) for axis in zip(*where, strict=True))
        logits = model.get_output_embeddings()(hidden[rows, columns])
        tokens = torch.tensor(
            [
                t
                for target, run in zip(targets, needed, strict=True)
                for t in target[max(run.start, 1) : run.stop]
            ],
            device=device,
        )
        later = torch.log_softmax(logits.float(), dim=-1).gather(1, tokens[:, None])[:, 0]
    values = later.tolist()
    sums, at = [], 0
    for target, run in zip(targets, needed, strict=True):
        count = run.stop - max(run.start, 1)
        sums.append(sum(([float(first[target[0]])] if run.start == 0 else []) + values[at : at + count]))
        at += count
    return sums


def _rope_deltas(model: Any) -> torch.Tensor | None:
    """The multimodal rope offsets the last prefill left on a Qwen2-VL-family model (None: none)."""
    for module in model.modules():
        deltas = getattr(module, "rope_deltas", None)
        if deltas is not None:
            return deltas
    return None


def _entropy(logprobs: torch.Tensor) -> torch.Tensor:
    """Row-wise ``-sum p log p`` of log-probabilities (``exp(-inf) * -inf`` counted as 0; rounding
    can make it a hair below 0, hence the clamp), as the decode loop computes it."""
    return (-torch.where(logprobs > float("-inf"), logprobs.exp() * logprobs, 0.0).sum(-1)).clamp_min(0.0)


DETOKENIZE_CONTEXT = 4
"""Tokens decoded on each side of a token to find its piece: a UTF-8 character is at most 4 bytes, so
whether a character that a token starts or ends is complete (or invalid) shows within 4 tokens."""


def token_pieces(
    ids: Sequence[int], text: str, decode_batch: Callable[[list[list[int]]], list[str]]
) -> list[str]:
    """One string per token, concatenating to ``text`` (the decoding of ``ids``), in O(T).

    Token t's piece is the text that becomes final when it is added: in the window ``ids[t-C :
    t+1+C]`` (C = :data:`DETOKENIZE_CONTEXT`), decoded as ``F``, the final text up to token t is the
    longest common prefix of ``F`` and ``decode(ids[t-C : t+1])``, and up to the token before the
    longest common prefix of ``F`` and ``decode(ids[t-C : t])``; the piece is ``F`` between the two.
    A character split across byte-level tokens is carried by the token that completes it, the ones
    before it carry "", and an invalid byte keeps its own replacement character. This is the same
    answer as comparing every prefix with the whole text (O(T^2) decodes) with three decodes of at
    most 2C + 1 tokens per token; decoders that are not local in this sense (none known) fall back
    to :func:`~catts_graph.models.base.align_tokens`.
    """
    count = len(ids)
    windows = [
        (max(0, t - DETOKENIZE_CONTEXT), t, min(count, t + 1 + DETOKENIZE_CONTEXT)) for t in range(count)
    ]
    decoded = decode_batch(
        [list(ids[s:e]) for s, _, e in windows]
        + [list(ids[s : t + 1]) for s, t, _ in windows]
        + [list(ids[s:t]) for s, t, _ in windows]
    )
    pieces = []
    for t in range(count):
        ahead, upto, before = decoded[t], decoded[count + t], decoded[2 * count + t]
        done = len(os.path.commonprefix([before, ahead]))
        reached = len(os.path.commonprefix([upto, ahead]))
        pieces.append(ahead[done : max(done, reached)])
    return pieces if "".join(pieces) == text else align_tokens(pieces, text)


def detokenize_ids(tokenizer: Any, token_ids: Sequence[int]) -> tuple[str, list[str]]:
    """The text of ``token_ids`` and one piece per token joining back to it
    (:meth:`TransformersVLM.detokenize`, for any tokenizer: the training rewards read completions
    through it)."""
    ids = list(token_ids)
    if not ids:
        return "", []
    text, *pieces = decode_batch(tokenizer, [ids, *([i] for i in ids)])
    if "".join(pieces) == text:
        return text, pieces
    return text, token_pieces(ids, text, lambda sequences: decode_batch(tokenizer, sequences))


def decode_batch(tokenizer: Any, sequences: list[list[int]]) -> list[str]:
    """Decode with special tokens kept, straight through the Rust tokenizer when there is one
    (``batch_decode`` first walks every id in Python, which costs more than the decoding)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return list(backend.decode_batch(sequences, skip_special_tokens=False))
    return list(
        tokenizer.batch_decode(sequences, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    )


class _Uniforms:
    """The uniform numbers behind each sampled row's draws, drawn ahead a chunk of steps at a time.

    Row i's number at step s is the s-th draw of its own generator (seeded from ``(seed, i)``), as
    one draw per step would give; a chunk goes to the device in one copy, made right after a step's
    sync so it waits on nothing.
    """

    CHUNK = 64

    def __init__(self, seed: int, rows: int, steps: int, device: torch.device) -> None:
        self.generators = [_row_generator(seed, i) for i in range(rows)]
        self.steps = steps
        self.device = device
        self.start = 0
        self.block = self._draw(0)

    def _draw(self, start: int) -> torch.Tensor:
        size = min(self.CHUNK, self.steps - start)
        block = torch.stack([torch.rand(size, generator=g, dtype=torch.float64) for g in self.generators])
        return block.to(self.device)

    def prefetch(self, step: int) -> None:
        """Have the chunk holding ``step`` on the device."""
        if step >= self.start + self.block.shape[1] and step < self.steps:
            self.start = step
            self.block = self._draw(step)

    def at(self, step: int) -> torch.Tensor:
        """Every row's number for ``step`` (shape: rows)."""
        return self.block[:, step - self.start]


def _draw(
    raw: torch.Tensor, temperature: float, top_p: float, top_k: int, uniforms: torch.Tensor
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
    uniforms = uniforms[:, None] * cdf[:, -1:]
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
        entropies=list(sample.entropies) if sample.entropies is not None else None,
        extra={**sample.extra, "index": index},
    )


VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")


def _vision_token_ids(tokenizer: Any) -> set[int]:
    """Ids of the vision placeholder tokens the tokenizer knows (Qwen-VL's), never to be sampled."""
    vocab = tokenizer.get_vocab()
    return {vocab[token] for token in VISION_TOKENS if token in vocab}


def stop_token_ids(model: Any, tokenizer: Any) -> set[int]:
    """The ids that end a response: EOS from the model's generation config and from the tokenizer,
    and ``<|im_end|>`` (the end of a chat turn). The one stop-token rule of the project; see
    :func:`response_ids`."""
    ids: set[int] = set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured is not None:
        ids.update(int(i) for i in configured)
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != getattr(tokenizer, "unk_token_id", None):
        ids.add(im_end)
    if not ids:
        raise ValueError("the model and tokenizer define no EOS token; cannot tell where a response ends")
    return ids


def response_ids(token_ids: Sequence[int], stop_ids: Collection[int]) -> list[int]:
    """The response in ``token_ids``: the ids before the first stop token (which is not part of it),
    as :meth:`TransformersVLM.sample` ends a sample; padding after it goes too."""
    out = []
    for token in token_ids:
        if int(token) in stop_ids:
            break
        out.append(int(token))
    return out


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


def processor_input_size(processor: Any, image: Image.Image) -> tuple[int, int] | None:
    """The ``(width, height)`` a Qwen2-VL-style processor resizes ``image`` to, or None for another.

    Qwen2-VL's ``smart_resize``: both sides rounded to multiples of ``patch_size * merge_size``,
    then scaled (keeping the aspect ratio) into ``[shortest_edge, longest_edge]`` pixels.
    """
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    image_processor = getattr(processor, "image_processor", processor)
    size = getattr(image_processor, "size", None)
    patch = getattr(image_processor, "patch_size", None)
    merge = getattr(image_processor, "merge_size", None)
    try:
        min_pixels, max_pixels = size["shortest_edge"], size["longest_edge"]
    except (KeyError, TypeError):
        return None
    if not (min_pixels and max_pixels and patch and merge):
        return None
    height, width = smart_resize(
        image.height, image.width, factor=patch * merge, min_pixels=min_pixels, max_pixels=max_pixels
    )
    return (width, height)


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
