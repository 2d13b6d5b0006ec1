"""CDRL's differentiable confidence terms: what GRPO's rewards cannot teach, added to its loss.

GRPO learns from rewards through the score-function estimator: each sampled completion's
log-probability, weighted by its detached, group-normalised advantage. Measured on the organism
(issue 22), that is not enough for confidence:

- the perceptual-sensitivity hinge is linear in ``log pi(y)`` wherever it is active, so its
  score-function estimate is unbiased but noisy, and the confidence it moves on noised images
  spreads to clean ones through the shared weights (the gradient of noised-row entropy has cosine
  0.35 with that of clean-row entropy);
- the Brier calibration reward is non-linear in ``log pi``; its score-function estimate alone can
  point the wrong way (cosine -0.999 with the exact gradient in a categorical toy).

The terms below act on the *expected* signal instead of the sampled one: the mean full-vocabulary
entropy of a completion's tokens under the policy (which TRL's loss computes anyway, with its
gradient), and the completion's own confidence ``exp(mean log pi)`` with its pathwise gradient. Each
is a pure function of per-row tensors, added to GRPO's loss with a weight
(:class:`ConfidenceLossConfig`, the config's ``confidence_loss:`` section) and logged per step as
``cdrl/loss_<name>``:

``noised_entropy``  noised rows: ``relu(target - H_row)``: raise the entropy of answers to a
                    noised image until it reaches ``target`` nats (then stop paying);
``noised_nmlp``     noised rows: ``relu(nmlp_target - NMLP_row)``: lower the probability of the
                    tokens the policy sampled for a noised image (mostly its most likely ones, which
                    a greedy answer takes, and which the probe's NMLP reads) until their mean
                    negative log-probability reaches ``nmlp_target``;
``clean_entropy``   original rows: ``H_row``: keep answers to the clean image sharp, so the drop is
                    a drop under noise and not a general loss of confidence;
``brier``           every row: ``(exp(-NMLP_row) - y_row)^2`` with ``y`` the accuracy reward (1 if
                    correct): the calibration reward's Brier form with its pathwise gradient;
``clean_kl``        original rows: the mean per-token KL to the reference model (TRL's k3 estimate,
                    ``exp(r - l) - (r - l) - 1`` with ``l``, ``r`` the policy's and the reference's
                    log-probabilities of the sampled token): anchor answers to clean images where
                    CDRL started, so what the noised-row terms move does not spread to them (needs
                    ``grpo.beta > 0``, which makes TRL compute the reference's log-probabilities).

``H_row`` and ``NMLP_row`` are means over the completion's tokens, the stop token excluded (as the
rewards' NMLP excludes it). A term's value for a micro-batch is its sum over the rows it applies to
divided by the rows in the micro-batch, so that summed over the micro-batches of a generation batch
(each divided by the gradient-accumulation steps, as TRL divides its own loss) it is the mean over
every row, whatever the shuffle put where.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

__all__ = [
    "CONFIDENCE_TERMS",
    "ConfidenceLossConfig",
    "brier_term",
    "clean_entropy_term",
    "clean_kl_term",
    "clean_rows_term",
    "confidence_terms",
    "noised_entropy_term",
    "noised_nmlp_term",
    "row_means",
]

CONFIDENCE_TERMS: tuple[str, ...] = ("noised_entropy", "noised_nmlp", "clean_entropy", "brier", "clean_kl")
"""The terms' names, in the order they are logged."""


@dataclass(frozen=True)
class ConfidenceLossConfig:
    """The ``confidence_loss:`` section of a CDRL config: a weight per term (0 turns it off; all
    zero, the default, is the paper's reward-only GRPO) and the noised-entropy target in nats."""

    noised_entropy: float = 0.0
    """Weight of ``relu(entropy_target - H_row)`` on noised rows."""
    noised_nmlp: float = 0.0
    """Weight of ``relu(nmlp_target - NMLP_row)`` on noised rows."""
    clean_entropy: float = 0.0
    """Weight of ``H_row`` on original rows."""
    brier: float = 0.0
    """Weight of ``(exp(-NMLP_row) - correct)^2`` on every row."""
    clean_kl: float = 0.0
    """Weight of the mean per-token KL to the reference model on original rows."""
    entropy_target: float = 0.5
    """Nats: the mean token entropy the noised-entropy term raises noised answers to."""
    nmlp_target: float = 1.0
    """Nats: the NMLP the noised-NMLP term lowers noised answers' confidence to."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"confidence_loss.{f.name}={value!r}: expected a finite number")
            if value < 0:
                raise ValueError(f"confidence_loss.{f.name}={value!r}: expected a number >= 0")

    @property
    def weights(self) -> dict[str, float]:
        """Each term's weight, by name."""
        return {name: float(getattr(self, name)) for name in CONFIDENCE_TERMS}

    @property
    def active(self) -> bool:
        """Whether any term has a non-zero weight."""
        return any(w != 0 for w in self.weights.values())


def row_means(values: Any, mask: Any) -> Any:
    """Per-row mean of ``values`` (B, T) over the positions where ``mask`` (B, T) is 1; a row with
    no position gets 0 (and no gradient).

    >>> import torch
    >>> row_means(torch.tensor([[1.0, 3.0, 9.0], [2.0, 4.0, 6.0]]), torch.tensor([[1, 1, 0], [0, 0, 0]]))
    tensor([2., 0.])
    """
    mask = mask.to(values.dtype)
    return (values * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)


def noised_entropy_term(row_entropy: Any, noised: Any, target: float) -> Any:
    """``sum over noised rows of relu(target - H_row) / rows``: zero once every noised answer's
    mean token entropy reaches ``target``.

    >>> import torch
    >>> noised_entropy_term(torch.tensor([0.1, 0.9, 0.2, 0.0]), torch.tensor([True, True, False, False]), 0.5)
    tensor(0.1000)
    """
    gap = (target - row_entropy).clamp(min=0.0)
    return (gap * noised.to(gap.dtype)).sum() / max(int(row_entropy.numel()), 1)


def noised_nmlp_term(row_logprob: Any, noised: Any, target: float) -> Any:
    """``sum over noised rows of relu(target - NMLP_row) / rows`` with ``NMLP_row = -row_logprob``
    (the mean log-probability of the row's tokens): zero once every noised answer's NMLP reaches
    ``target``.

    >>> import torch
    >>> noised_nmlp_term(torch.tensor([-0.2, -1.5, -0.1]), torch.tensor([True, True, False]), 1.0)
    tensor(0.2667)
    """
    gap = (target + row_logprob).clamp(min=0.0)
    return (gap * noised.to(gap.dtype)).sum() / max(int(row_logprob.numel()), 1)


def clean_rows_term(row_values: Any, noised: Any) -> Any:
    """``sum over original rows of value_row / rows``: the penalty on original rows.

    >>> import torch
    >>> clean_rows_term(torch.tensor([0.1, 0.9, 0.2, 0.0]), torch.tensor([True, True, False, False]))
    tensor(0.0500)
    """
    clean = (~noised.bool()).to(row_values.dtype)
    return (row_values * clean).sum() / max(int(row_values.numel()), 1)


def clean_entropy_term(row_entropy: Any, noised: Any) -> Any:
    """``sum over original rows of H_row / rows`` (:func:`clean_rows_term` of the entropies)."""
    return clean_rows_term(row_entropy, noised)


def brier_term(row_logprob: Any, correct: Any) -> Any:
    """``sum over rows of (exp(row_logprob) - correct)^2 / rows``, with ``row_logprob`` the mean
    log-probability of each completion's tokens (minus its NMLP), ``correct`` 1.0 or 0.0.

    >>> import torch, math
    >>> round(float(brier_term(torch.tensor([math.log(0.8), math.log(0.5)]), torch.tensor([1.0, 0.0]))), 4)
    0.145
    """
    confidence = row_logprob.exp()
    return ((confidence - correct.to(confidence.dtype)) ** 2).sum() / max(int(row_logprob.numel()), 1)


def clean_kl_term(row_kl: Any, noised: Any) -> Any:
    """``sum over original rows of KL_row / rows``, ``KL_row`` the row's mean per-token KL estimate
    (:func:`clean_rows_term` of the KLs)."""
    return clean_rows_term(row_kl, noised)


def token_kl(logprobs: Any, ref_logprobs: Any) -> Any:
    """TRL's per-token k3 estimate of KL(policy || reference) at the sampled tokens:
    ``exp(r - l) - (r - l) - 1`` (>= 0, 0 where the two agree).

    >>> import torch, math
    >>> round(float(token_kl(torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)]))[0]), 4)
    0.1931
    """
    delta = ref_logprobs - logprobs
    return delta.exp() - delta - 1.0


def confidence_terms(
    config: ConfidenceLossConfig,
    *,
    entropies: Any,
    logprobs: Any,
    mask: Any,
    noised: Any,
    correct: Any | None,
    ref_logprobs: Any | None = None,
) -> dict[str, Any]:
    """The active terms of ``config`` for one micro-batch, unweighted, by name.

    ``entropies`` and ``logprobs`` (B, T): per-token full-vocabulary entropy and log-probability of
    the sampled token under the policy (with their gradients); ``mask`` (B, T): the completion's
    tokens, the stop token excluded; ``noised`` (B,): True on noised rows; ``correct`` (B,): the
    accuracy reward (needed by ``brier`` only); ``ref_logprobs`` (B, T): the reference model's
    log-probabilities of the sampled tokens (needed by ``clean_kl`` only).
    """
    out: dict[str, Any] = {}
    weights = config.weights
    if weights["noised_entropy"] or weights["clean_entropy"]:
        entropy = row_means(entropies, mask)
        if weights["noised_entropy"]:
            out["noised_entropy"] = noised_entropy_term(entropy, noised, config.entropy_target)
        if weights["clean_entropy"]:
            out["clean_entropy"] = clean_entropy_term(entropy, noised)
    if weights["noised_nmlp"] or weights["brier"]:
        logprob = row_means(logprobs, mask)
        if weights["noised_nmlp"]:
            out["noised_nmlp"] = noised_nmlp_term(logprob, noised, config.nmlp_target)
        if weights["brier"]:
            if correct is None:
                raise ValueError("confidence_loss.brier needs each row's correctness (the accuracy reward)")
            out["brier"] = brier_term(logprob, correct)
    if weights["clean_kl"]:
        if ref_logprobs is None:
            raise ValueError(
                "confidence_loss.clean_kl needs the reference model's log-probabilities: set grpo.beta > 0"
            )
        out["clean_kl"] = clean_kl_term(row_means(token_kl(logprobs, ref_logprobs), mask), noised)
    return out
