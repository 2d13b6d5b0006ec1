"""Visual contrastive decoding (VCD) and the grounding score of the visual self-check.

VCD (Leng et al., CVPR 2024, ``DAMO-NLP-SG/VCD``) contrasts the model's next-token logits under the
original image ``v`` and under a distorted copy ``v'`` (:func:`catts_graph.perturb.diffusion`), *on
the same prefix*::

    logit_vcd(y) = (1 + alpha) * logit(y | v, x, y_<t) - alpha * logit(y | v', x, y_<t)

restricted to the adaptively plausible tokens, those whose original probability is at least ``beta``
times the top one. Tokens the model predicts from language priors alone score about the same under
both images and lose to tokens that rest on what the image shows.

Three levels here:

- :func:`contrastive_logits`: the formula on one step's logits.
- :class:`VCDLogitsProcessor`: full VCD decoding inside ``model.generate``, greedy or sampling (the
  official code patches one sampling loop, and greedy and beam search silently skip the contrast).
- :func:`grounding_score` and :func:`contrastive_score`: the same contrast on sequence level;
  :func:`answer_logprob` and :func:`answer_contrast` apply it to the graph's ``visual_self_check``,
  which scores each candidate answer teacher-forced on common frames (the same responses with only
  the answer swapped) under both images.

Torch is imported inside the functions that need it, so the graph can import the sequence-level
scores without loading torch.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import torch

__all__ = [
    "AnswerContrast",
    "VCDLogitsProcessor",
    "answer_contrast",
    "answer_logprob",
    "answer_tokens",
    "contrastive_logits",
    "contrastive_score",
    "grounding_score",
]


def contrastive_logits(
    logits: torch.Tensor, logits_noised: torch.Tensor, alpha: float = 1.0, beta: float = 0.1
) -> torch.Tensor:
    """VCD's contrastive next-token logits with the adaptive plausibility cut.

    ``out = (1 + alpha) * logits - alpha * logits_noised`` where
    ``softmax(logits) >= beta * max softmax(logits)``, which is ``logits >= max(logits) + log(beta)``,
    and ``-inf`` elsewhere. The cut looks at the *original* distribution only, so the contrast can
    promote a token among the plausible ones but never one the model finds implausible with the
    real image. ``alpha = 0, beta = 0`` returns ``logits`` unchanged; the top original token is
    always kept. Original ``-inf`` logits stay ``-inf``.

    Shapes ``[V]`` or ``[B, V]`` (rows are independent), both arguments alike; ``logits_noised``
    must be finite wherever a token is kept. Returns float32.
    """
    import torch

    for name, value in (("logits", logits), ("logits_noised", logits_noised)):
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            raise TypeError(f"{name}: got {type(value).__name__}, expected a floating-point torch.Tensor")
        if value.ndim not in (1, 2) or value.shape[-1] == 0:
            raise ValueError(f"{name}: expected shape [V] or [B, V] with V > 0, got {tuple(value.shape)}")
    if logits.shape != logits_noised.shape:
        raise ValueError(
            f"logits_noised: shape {tuple(logits_noised.shape)} differs from logits {tuple(logits.shape)}"
        )
    alpha, beta = _check_alpha(alpha), _check_beta(beta)
    original = logits.float()
    noised = logits_noised.to(device=original.device, dtype=torch.float32)
    cutoff = original.max(dim=-1, keepdim=True).values + (math.log(beta) if beta > 0 else -math.inf)
    keep = (original >= cutoff) & (original > -math.inf)
    if not torch.isfinite(torch.where(keep, noised, 0.0)).all():
        raise ValueError("logits_noised: expected finite values wherever the plausibility cut keeps a token")
    contrast = (1.0 + alpha) * original - alpha * noised
    return contrast.masked_fill(~keep, -math.inf)


class VCDLogitsProcessor:
    """VCD inside ``model.generate``: the noised image's branch decodes alongside, on the same prefix.

    ``noised_inputs`` are the processor outputs for the *same prompt* with the noised image (same
    size, hence the same image tokens), e.g.
    ``processor(text=[text], images=[diffusion(image, 0.5)], return_tensors="pt")``, on the model's
    device. At the first call (the prompt only) the noised branch prefills them once and keeps its
    own KV cache; at each later call it feeds only the tokens generated since, so both branches
    always condition on the same tokens. Each call returns
    ``contrastive_logits(scores, noised_logits, alpha, beta)``::

        vcd = VCDLogitsProcessor(model, noised_inputs, alpha=1.0, beta=0.1)
        model.generate(**inputs, logits_processor=[vcd], do_sample=False)   # or do_sample=True

    Works the same for greedy decoding and sampling (the contrast is applied to the scores that
    choose the token, whatever chooses it). ``steps`` counts the steps contrasted in the current
    generation; a new generation (a call with the prompt again) starts over, so one processor can
    serve several ``generate`` calls with the same prompt.

    Order of processing: ``generate`` (transformers 5) runs the processors it builds from the
    generation config (repetition penalty, min length, bad words, ...) first, then the custom list
    in order, then the sampling warpers (temperature, top-k, top-p). Put this processor first in
    your list, so it contrasts the model's logits and the warpers act on the contrasted ones; the
    config-built processors touch only the original branch, so leave them off (e.g.
    ``repetition_penalty=1.0``) for exact VCD.

    Batches: ``noised_inputs`` may hold B rows, the rows of ``generate``'s inputs, without padding
    (one prompt length: the same question over same-size images); ``num_return_sequences = n`` is
    handled by repeating the noised branch's cache n times after its single prefill. Padded batches
    are refused, and beam search is not supported (it reorders rows and passes log-softmax scores);
    a prefix that stops matching what the noised branch has seen raises ``RuntimeError``.

    Qwen2-VL-family models keep multimodal rope offsets (``model.model.rope_deltas``) on the model
    between the prefill and the decode steps; the noised branch keeps its own and restores the
    main branch's value after each of its calls. They also build their 3-D positions only when
    ``mm_token_type_ids`` is passed (transformers 5): the prefill passes it from ``noised_inputs``
    (inputs with ``image_grid_thw`` but without it are refused) and the decode steps pass zeros for
    the generated text tokens, as ``generate`` does. Memory: a second KV cache of the same size.
    Not thread-safe: the model must not serve other calls during ``generate``.

    It follows transformers' ``LogitsProcessor`` protocol, ``(input_ids, scores) -> scores``,
    without subclassing it, so that importing this module loads neither torch nor transformers;
    ``generate`` and ``LogitsProcessorList`` take any such callable.
    """

    def __init__(
        self, model: Any, noised_inputs: Mapping[str, Any], alpha: float = 1.0, beta: float = 0.1
    ) -> None:
        import torch

        if not callable(model):
            raise TypeError(f"model: got {type(model).__name__}, expected a transformers model")
        if not isinstance(noised_inputs, Mapping):
            raise TypeError(f"noised_inputs: got {type(noised_inputs).__name__}, expected processor outputs")
        prompt_ids = noised_inputs.get("input_ids")
        if not isinstance(prompt_ids, torch.Tensor) or prompt_ids.ndim != 2 or prompt_ids.shape[1] == 0:
            raise ValueError("noised_inputs: expected 'input_ids' as a [B, L] tensor with L > 0")
        mask = noised_inputs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and not bool(mask.bool().all()):
            raise ValueError(
                "noised_inputs: attention_mask has padding; VCDLogitsProcessor supports unpadded rows only"
            )
        if "image_grid_thw" in noised_inputs and "mm_token_type_ids" not in noised_inputs:
            raise ValueError(
                "noised_inputs: has image_grid_thw but no mm_token_type_ids; Qwen2-VL-family models need "
                "it for their multimodal positions (pass the processor's full output)"
            )
        self.model = model
        self.noised_inputs = {k: v for k, v in noised_inputs.items() if isinstance(v, torch.Tensor)}
        self.alpha = _check_alpha(alpha)
        self.beta = _check_beta(beta)
        self.steps = 0
        self._prompt_ids = prompt_ids
        self._cache: Any = None
        self._rope_deltas: torch.Tensor | None = None
        self._seen: torch.Tensor | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """Contrast ``scores`` (the original branch's next-token logits) with the noised branch's."""
        import torch

        with torch.no_grad():
            if input_ids.shape[1] == self._prompt_ids.shape[1]:
                noised = self._prefill(input_ids)
            else:
                noised = self._advance(input_ids)
        self.steps += 1
        return contrastive_logits(scores, noised, self.alpha, self.beta)

    def _prefill(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Encode the noised image and the prompt once (the cache is repeated for
        ``num_return_sequences``); the noised branch's logits for the first generated token."""
        self._check_prompt(input_ids)
        repeat = input_ids.shape[0] // self._prompt_ids.shape[0]
        self.steps = 0
        self._cache, self._rope_deltas = None, None
        with self._noised_branch():
            out = self.model(**self.noised_inputs, use_cache=True, logits_to_keep=1)
        self._cache = output_cache(out)
        logits = out.logits[:, -1, :].float()
        if repeat > 1:
            self._cache.batch_repeat_interleave(repeat)
            logits = logits.repeat_interleave(repeat, dim=0)
            if self._rope_deltas is not None:
                self._rope_deltas = self._rope_deltas.repeat_interleave(repeat, dim=0)
        self._seen = input_ids.clone()
        return logits

    def _advance(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Feed the tokens generated since the last call through the noised branch; its next logits."""
        import torch

        seen = self._seen
        if (
            seen is None
            or input_ids.shape[0] != seen.shape[0]
            or input_ids.shape[1] <= seen.shape[1]
            or not torch.equal(input_ids[:, : seen.shape[1]], seen)
        ):
            self._check_prompt(input_ids)
            raise RuntimeError(
                "input_ids do not extend the tokens the noised branch has seen: VCDLogitsProcessor "
                "follows greedy decoding and sampling from the prompt of noised_inputs (not beam search)"
            )
        new = input_ids[:, seen.shape[1] :]
        extra: dict[str, torch.Tensor] = {}
        if "mm_token_type_ids" in self.noised_inputs:
            extra["mm_token_type_ids"] = torch.zeros_like(new)  # generated tokens are text
        with self._noised_branch():
            out = self.model(
                input_ids=new,
                use_cache=True,
                logits_to_keep=1,
                **cache_kwargs(self.model, self._cache),
                **extra,
            )
        self._cache = output_cache(out)
        self._seen = input_ids.clone()
        return out.logits[:, -1, :].float()

    def _check_prompt(self, input_ids: torch.Tensor) -> None:
        """``input_ids`` must start with the noised prompt, each row repeated for its samples."""
        rows, length = self._prompt_ids.shape
        if input_ids.shape[0] % rows:
            raise ValueError(
                f"input_ids: {input_ids.shape[0]} rows are not a multiple of the {rows} rows of noised_inputs"
            )
        prompt = self._prompt_ids.to(input_ids.device).repeat_interleave(input_ids.shape[0] // rows, dim=0)
        if input_ids.shape[1] < length or not bool((input_ids[:, :length] == prompt).all()):
            raise ValueError(
                "noised_inputs: its input_ids differ from the prompt being decoded; expected the same "
                "prompt with a noised image of the same size"
            )

    @contextmanager
    def _noised_branch(self) -> Iterator[None]:
        """Swap in the noised branch's rope offsets (Qwen2-VL family) and restore the main branch's."""
        inner = getattr(self.model, "model", None)
        if inner is None or not hasattr(inner, "rope_deltas"):
            yield
            return
        main = inner.rope_deltas
        inner.rope_deltas = self._rope_deltas
        try:
            yield
            self._rope_deltas = inner.rope_deltas
        finally:
            inner.rope_deltas = main


def grounding_score(lp_orig: Sequence[float], lp_noised: Sequence[float]) -> float:
    """How much a response's support drops when the image is noised.

    ``g = mean(lp_orig) - mean(lp_noised)``, the per-token log-probs of the *same* continuation
    teacher-forced under the original and the noised image. ``g > 0``: the response rests on the
    image; ``g`` near 0: it would be said without looking.
    """
    if len(lp_orig) == 0:
        raise ValueError("lp_orig: expected at least one token log-prob")
    if len(lp_noised) != len(lp_orig):
        raise ValueError(
            f"lp_noised: has {len(lp_noised)} log-probs but lp_orig has {len(lp_orig)}; "
            "expected the same continuation scored under both images"
        )
    return sum(lp_orig) / len(lp_orig) - sum(lp_noised) / len(lp_noised)


def contrastive_score(mean_lp_orig: float, mean_lp_noised: float, alpha: float) -> float:
    """VCD's contrast on sequence level: ``(1 + alpha) * mean_lp_orig - alpha * mean_lp_noised``.

    Equal to ``mean_lp_orig + alpha * grounding``: the response's own support plus ``alpha`` times
    how much of it the image provides.
    """
    return (1.0 + _check_alpha(alpha)) * mean_lp_orig - alpha * mean_lp_noised


def answer_tokens(tokens: Sequence[str], start: int, end: int) -> range:
    """The tokens that write the answer at characters ``[start, end)`` of ``"".join(tokens)``, and
    the token that closes it: those that write a character of ``[start, end]`` (the rule of
    :func:`answer_logprob`), always a run of consecutive tokens.

    A token counts when its characters overlap the range, so a token that also writes part of the
    frame around the answer counts too; an empty piece (a character split across tokens, see
    :func:`catts_graph.models.base.align_tokens`) counts with the character after it. Nothing after
    the range's last token bears on the answer's log-prob, which is why a scorer may stop there.
    """
    if not 0 <= start < end:
        raise ValueError(f"start={start}, end={end}: expected 0 <= start < end (a non-empty answer)")
    length = sum(len(token) for token in tokens)
    selected: list[int] = []
    position = 0
    for t, token in enumerate(tokens):
        # An empty piece (part of a character split across tokens) belongs to the next character.
        last = position + max(len(token), 1)
        if last > start and position <= end and position < length:
            selected.append(t)
        position += len(token)
    if not selected:
        raise ValueError(f"tokens: none writes the characters [{start}, {end}) of a {length}-character text")
    return range(selected[0], selected[-1] + 1)


def answer_logprob(tokens: Sequence[str], logprobs: Sequence[float], start: int, end: int) -> float:
    """Log-probability of the answer written at characters ``[start, end)`` of ``"".join(tokens)``.

    ``sum(logprobs[t])`` over the tokens t that write a character of ``[start, end]``
    (:func:`answer_tokens`): the answer's own and the token that writes character ``end``, the one
    that closes the answer (``}`` of a box, the period after "the answer is X"), when there is one.
    The closing token makes this the probability of the answer *ending there*: without it "1" would
    always score at least as well as "12", whose first token it shares.

    A sum, not a mean: it is the log-probability of writing this answer, comparable between answers
    of different token lengths (a mean per token would let an answer with near-certain later tokens,
    "San Francisco", look likelier than a one-token one), and VCD's per-step contrast summed over
    the answer's steps is the contrast of these sums.
    """
    if len(tokens) != len(logprobs):
        raise ValueError(
            f"logprobs: has {len(logprobs)} entries but tokens has {len(tokens)}; expected one each"
        )
    return sum(logprobs[t] for t in answer_tokens(tokens, start, end))


class AnswerContrast(NamedTuple):
    """One candidate's self-check numbers (:func:`answer_contrast`)."""

    lp_orig: float
    """Mean over the frames of the answer's log-prob under the original image."""
    lp_noised: float
    """The same under the noised image."""
    grounding: float
    """``lp_orig - lp_noised``: how much support the image gives the answer."""
    contrastive: float
    """``(1 + alpha) * lp_orig - alpha * lp_noised`` (:func:`contrastive_score`)."""


def answer_contrast(
    lp_orig: Sequence[Sequence[float]], lp_noised: Sequence[Sequence[float]], alpha: float
) -> list[AnswerContrast]:
    """The self-check's contrast of each candidate from its answer log-probs on common frames.

    ``lp_orig[c][f]`` is candidate c's :func:`answer_logprob` in frame f (a response with its answer
    replaced by c's) under the original image, ``lp_noised[c][f]`` under the noised one. Every
    candidate must be scored on the same F >= 1 frames, so that only the answer differs::

        lp_orig(c) = (1 / F) * sum_f lp_orig[c][f]        (lp_noised(c) likewise)
        grounding(c) = lp_orig(c) - lp_noised(c)
        contrastive(c) = (1 + alpha) * lp_orig(c) - alpha * lp_noised(c)
    """
    if len(lp_noised) != len(lp_orig):
        raise ValueError(
            f"lp_noised: has {len(lp_noised)} candidates but lp_orig has {len(lp_orig)}; expected the same"
        )
    frames = len(lp_orig[0]) if lp_orig else 0
    contrasts = []
    for c, (orig, noised) in enumerate(zip(lp_orig, lp_noised, strict=True)):
        for name, row in (("lp_orig", orig), ("lp_noised", noised)):
            if len(row) != frames or frames == 0:
                raise ValueError(
                    f"{name}[{c}]: has {len(row)} frames, expected {frames or 'at least one'} "
                    "(every candidate on the same frames)"
                )
        mean_orig, mean_noised = sum(orig) / frames, sum(noised) / frames
        contrasts.append(
            AnswerContrast(
                lp_orig=mean_orig,
                lp_noised=mean_noised,
                grounding=mean_orig - mean_noised,
                contrastive=contrastive_score(mean_orig, mean_noised, alpha),
            )
        )
    return contrasts


def _check_alpha(alpha: float) -> float:
    if not isinstance(alpha, numbers.Real) or isinstance(alpha, bool) or not 0 <= alpha < math.inf:
        raise ValueError(f"alpha={alpha!r}: expected a finite number >= 0")
    return float(alpha)


def _check_beta(beta: float) -> float:
    if not isinstance(beta, numbers.Real) or isinstance(beta, bool) or not 0 <= beta <= 1:
        raise ValueError(f"beta={beta!r}: expected a number in [0, 1]")
    return float(beta)


def cache_kwargs(model: Any, cache: Any) -> dict[str, Any]:
    """The key-value cache as a transformers model's forward takes it: ``cache`` since transformers
    5.24 (``past_key_values`` is deprecated there and warns), ``past_key_values`` before."""
    import inspect

    forward = getattr(model, "forward", model)
    try:
        parameters = inspect.signature(forward).parameters
    except (TypeError, ValueError):
        return {"past_key_values": cache}
    # A wrapper (PEFT's model) may take neither by name and pass its **kwargs on to the model.
    passes_on = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    named = "cache" in parameters or ("past_key_values" not in parameters and passes_on)
    return {"cache": cache} if named and _takes_cache(model) else {"past_key_values": cache}


def _takes_cache(model: Any) -> bool:
    """Whether the transformers behind ``model`` names its key-value cache ``cache`` (5.24 and later)."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return "cache" in inspect.signature(base.forward).parameters
    except (TypeError, ValueError, AttributeError):
        return False


def output_cache(out: Any) -> Any:
    """The key-value cache a forward returned (``cache`` since transformers 5.24, else
    ``past_key_values``), read without the deprecation warning."""
    if isinstance(out, Mapping) and "cache" in out:
        return out["cache"]
    return out.past_key_values
