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
- *A prefix read once per question.* The last prefills are kept (:attr:`TransformersVLM.prefixes`,
  by content), so the visual self-check's clean branch and a later wave of samples, which read the
  image and prompt the first samples were drawn from, skip the vision tower and the prompt.

The parts live in modules of their own, their public names importable from here too:
:mod:`~catts_graph.models.teacher_forcing` (the same teacher forcing serves
:meth:`TransformersVLM.score` and CDRL's re-scoring of completions under the training policy),
:mod:`~catts_graph.models.tokens` (detokenising, and one rule, :func:`stop_token_ids` /
:func:`response_ids`, for where a response ends), :mod:`~catts_graph.models.draws` (the per-row
generators) and :mod:`~catts_graph.models.loading` (settings, device, dtype, the processor's size).
"""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image

from catts_graph.models.base import Sample, SamplingParams, TokenLogprobs, align_tokens, check_n
from catts_graph.models.draws import Uniforms, draw_tokens
from catts_graph.models.loading import (
    checkpoint_settings,
    default_device,
    limit_pixels,
    processor_input_size,
    resolve_dtype,
)
from catts_graph.models.prefix_cache import PrefixCache
from catts_graph.models.teacher_forcing import (
    answer_logprobs,
    append_tokens,
    prefill,
    teacher_forced_logprobs,
    teacher_forced_statistics,
)
from catts_graph.models.tokens import (
    decode_batch,
    detokenize_ids,
    pad_token_id,
    response_ids,
    stop_token_ids,
    token_pieces,
    vision_token_ids,
)
from catts_graph.vcd import cache_kwargs

__all__ = [
    "Continuation",
    "TransformersVLM",
    "checkpoint_settings",
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

    ``prefix_cache`` prefills are kept for reuse (:attr:`prefixes`; 0: none); clear them with
    ``vlm.prefixes.clear()`` after changing what the model computes without writing a parameter.
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        *,
        answer_prompt: str | None = None,
        reflection_prompt: str | None = None,
        prefix_cache: int = 2,
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
        self.pad_token_id = pad_token_id(tokenizer, self.stop_token_ids)
        self.suppressed_token_ids = vision_token_ids(tokenizer)
        self.answer_prompt = answer_prompt
        self.reflection_prompt = reflection_prompt
        self.declared: dict[str, Any] = {}
        """Everything the checkpoint's ``catts.json`` declares (the prompts above, and any setting
        an application reads, such as the organisms' ``answer_format``)."""
        self.prefixes = PrefixCache(prefix_cache)
        """The last ``prefix_cache`` prefills (KV cache and logits, by content of the inputs and the
        weights), reused by a later call over the same prefix: the visual self-check's clean branch
        reads the image and prompt the samples were drawn from without the vision tower or the prompt
        again (:mod:`catts_graph.models.prefix_cache`; 0 keeps none)."""
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
        prefix_cache: int = 2,
    ) -> TransformersVLM:
        """Load a checkpoint (local folder or hub id) with ``AutoModelForImageTextToText``.

        Defaults: ``cuda`` with bfloat16 when a GPU is present, else ``cpu`` with float32 (bf16
        matmuls are slow on most CPUs); ``sdpa`` attention. ``max_pixels`` caps the pixels per image
        (Qwen's processor default allows 1280 language-model tokens per image); ``prefix_cache``:
        prefills kept for reuse (see the class).
        """
        from transformers import AutoModelForImageTextToText, AutoProcessor

        torch_device = torch.device(device) if device is not None else default_device()
        torch_dtype = resolve_dtype(dtype, torch_device)
        model = AutoModelForImageTextToText.from_pretrained(
            path_or_id,
            dtype=torch_dtype,
            attn_implementation=attn_implementation or "sdpa",
        ).to(torch_device)
        processor = AutoProcessor.from_pretrained(path_or_id)
        if max_pixels is not None:
            limit_pixels(processor, max_pixels)
        settings = checkpoint_settings(path_or_id)
        vlm = cls(
            model,
            processor,
            answer_prompt=settings.get("answer_prompt"),
            reflection_prompt=settings.get("reflection_prompt"),
            prefix_cache=prefix_cache,
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
        return self._decode(lambda: append_tokens(self._encode(images, prompt), ids), n, params)

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
            cache, logits = self.prefixes.prefill(self.model, encode())
            device = logits.device
            logits = logits.expand(rows, -1)
            cache.batch_repeat_interleave(rows)
            uniforms = None if params.greedy else Uniforms(seed, rows, params.max_new_tokens, device)
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
                    chosen = draw_tokens(allowed, params.temperature, params.top_p, params.top_k, u)
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
            samples = [samples[0].numbered(i) for i in range(n)]
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
                self.model,
                self._encode(images, prompt),
                targets,
                pad_token_id=self.pad_token_id,
                prefill_with=self.prefixes.prefill,
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
                    self.model,
                    self._encode(images, prompt),
                    targets,
                    needed,
                    pad_token_id=self.pad_token_id,
                    prefill_with=self.prefixes.prefill,
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
