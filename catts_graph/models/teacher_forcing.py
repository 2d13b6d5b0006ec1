"""Teacher forcing: the raw log-probability (and the entropy) of every token of a continuation given
its prompt, in one forward pass. It serves :meth:`~catts_graph.models.TransformersVLM.score` and
CDRL's re-scoring of completions under the training policy."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from catts_graph.vcd import cache_kwargs, output_cache

__all__ = [
    "answer_logprobs",
    "append_tokens",
    "prefill",
    "rope_deltas",
    "teacher_forced_logprobs",
    "teacher_forced_statistics",
]


def append_tokens(inputs: dict[str, torch.Tensor], ids: Sequence[int]) -> dict[str, torch.Tensor]:
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


Prefill = Callable[[Any, Mapping[str, torch.Tensor]], tuple[Any, torch.Tensor]]
"""What :func:`prefill` is: ``(model, inputs) -> (KV cache, last logits)``. The functions below take
another (``prefill_with``: :meth:`catts_graph.models.prefix_cache.PrefixCache.prefill`, which answers
a prefix read before from a kept copy)."""


def teacher_forced_logprobs(
    model: Any,
    prefix: Mapping[str, torch.Tensor],
    targets: Sequence[Sequence[int]],
    *,
    pad_token_id: int,
    prefill_with: Prefill | None = None,
) -> list[list[float]]:
    """Raw log-probs of each target continuation after one shared prefix: the one teacher forcing
    (see :func:`teacher_forced_statistics`, which also gives each position's entropy)."""
    return teacher_forced_statistics(
        model, prefix, targets, pad_token_id=pad_token_id, prefill_with=prefill_with
    )[0]


def teacher_forced_statistics(
    model: Any,
    prefix: Mapping[str, torch.Tensor],
    targets: Sequence[Sequence[int]],
    *,
    pad_token_id: int,
    entropies: bool = False,
    prefill_with: Prefill | None = None,
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
    cache, first_logits = (prefill_with or prefill)(model, prefix)
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


def _entropy(logprobs: torch.Tensor) -> torch.Tensor:
    """Row-wise ``-sum p log p`` of log-probabilities (``exp(-inf) * -inf`` counted as 0; rounding
    can make it a hair below 0, hence the clamp), as the decode loop computes it."""
    return (-torch.where(logprobs > float("-inf"), logprobs.exp() * logprobs, 0.0).sum(-1)).clamp_min(0.0)


def answer_logprobs(
    model: Any,
    prefix: Mapping[str, torch.Tensor],
    targets: Sequence[Sequence[int]],
    needed: Sequence[range],
    *,
    pad_token_id: int,
    prefill_with: Prefill | None = None,
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
       only, once per distinct context (with a large vocabulary it is most of a short pass's cost).

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
    cache, first_logits = (prefill_with or prefill)(model, prefix)
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
        rope = rope_deltas(model)
        if rope is not None:
            positions = (positions + rope.cpu()).expand(3, -1, -1)
        hidden = model.model(
            input_ids=batch.to(device),
            attention_mask=mask.to(device),
            position_ids=positions.to(device),
            use_cache=True,
            **cache_kwargs(model.model, cache),
        ).last_hidden_state
        # Positions with the same key and the same tail tokens before them hold the same hidden state
        # (the position that predicts a frame's answer is shared by every candidate written into it):
        # the output layer runs once per distinct context.
        contexts: dict[tuple[int, tuple[int, ...]], int] = {}
        first_of: list[tuple[int, int]] = []
        slot = []
        for r, p in where:
            context = (group[r], tuple(tails[r][: p + 1]))
            if context not in contexts:
                contexts[context] = len(first_of)
                first_of.append((r, p))
            slot.append(contexts[context])
        rows, columns = (torch.tensor(axis, device=device) for axis in zip(*first_of, strict=True))
        logits = model.get_output_embeddings()(hidden[rows, columns])
        tokens = torch.tensor(
            [
                t
                for target, run in zip(targets, needed, strict=True)
                for t in target[max(run.start, 1) : run.stop]
            ],
            device=device,
        )
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        later = logprobs[torch.tensor(slot, device=device), tokens]
    values = later.tolist()
    sums, at = [], 0
    for target, run in zip(targets, needed, strict=True):
        count = run.stop - max(run.start, 1)
        sums.append(sum(([float(first[target[0]])] if run.start == 0 else []) + values[at : at + count]))
        at += count
    return sums


def rope_deltas(model: Any) -> torch.Tensor | None:
    """The multimodal rope offsets the last prefill left on a Qwen2-VL-family model (None: none)."""
    for module in model.modules():
        deltas = getattr(module, "rope_deltas", None)
        if deltas is not None:
            return deltas
    return None
