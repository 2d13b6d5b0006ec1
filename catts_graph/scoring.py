"""Votes and final scores of a run, from its sample records and the modules' results.

The formulas live in :mod:`catts_graph.voting`; this module applies them to the graph's records
under a :class:`~catts_graph.config.CATTSConfig` (which weighting, which filter, which scale).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from catts_graph import voting
from catts_graph.answers import canonicalize
from catts_graph.config import CATTSConfig
from catts_graph.task import weakest_step

VOTING_SOURCES = ("sample", "repair")
"""The samples that vote: the base model's draws and ``step_repair``'s repairs (a reflected answer
is a boost, not a vote). Both count against the sample budget ``max_samples``."""


@dataclass(frozen=True)
class Tally:
    """The weighted vote over the samples that gave an answer."""

    votes: dict[str, float]
    """V(a) per canonical answer, most voted first (ties: first seen)."""
    counts: dict[str, int]
    mean_confidence: dict[str, float]
    """Mean exp(-NMLP) of each answer's samples."""
    members: dict[str, list[int]]
    """Indices (into the sample list) of each answer's voting samples."""
    voters: int
    abstained: int
    """Samples with no extractable answer: kept in the trace, never voting."""
    filtered_out: int
    """Samples dropped by the DeepConf top-eta filter."""
    weakest_fused: dict[str, float | None] = field(default_factory=dict)
    """The lowest fused step confidence among each answer's voting samples (None: no steps)."""

    @property
    def shares(self) -> dict[str, float]:
        return voting.vote_shares(self.votes) if self.votes else {}

    @property
    def top_share(self) -> float:
        return max(self.shares.values(), default=0.0)

    def margin(self) -> float:
        """Vote share of the leader minus that of the runner-up (1.0 with a single candidate)."""
        ranked = sorted(self.shares.values(), reverse=True)
        if not ranked:
            return 0.0
        return ranked[0] - (ranked[1] if len(ranked) > 1 else 0.0)


def voting_samples(samples: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The samples that vote (:data:`VOTING_SOURCES`): a reflected answer is a boost, not a vote."""
    return [s for s in samples if s.get("source", "sample") in VOTING_SOURCES]


def step_min_confidence(sample: Mapping[str, Any]) -> float:
    """The fused confidence of the sample's weakest step (0.0 when it has no step)."""
    step = weakest_step(sample, "fused")
    return 0.0 if step is None else float(step["fused"])


def _exp_nmlp(sample: Mapping[str, Any], config: CATTSConfig) -> float:
    value = sample_nmlp(sample, config)
    return 0.0 if value is None else math.exp(-value)


def _deepconf(name: str) -> Callable[[Mapping[str, Any], CATTSConfig], float]:
    def confidence(sample: Mapping[str, Any], config: CATTSConfig) -> float:
        deepconf = sample.get("deepconf")
        if not deepconf:
            raise ValueError(
                f"weighting={name!r} needs top-k log-probs, but sample "
                f"{sample.get('index')} has none: set top_logprobs"
            )
        return float(deepconf[name])

    return confidence


CONFIDENCES: dict[str, Callable[[Mapping[str, Any], CATTSConfig], float]] = {
    "nmlp": _exp_nmlp,
    "majority": _exp_nmlp,
    "mean": _deepconf("mean"),
    "tail": _deepconf("tail"),
    "bottom_percent": _deepconf("bottom_percent"),
    "lowest_group": _deepconf("lowest_group"),
    "step_min": lambda sample, config: step_min_confidence(sample),
}
"""Each weighting's per-sample confidence (higher = surer), by ``CATTSConfig.weighting``: the one
registry a new weighting joins (with its name in :data:`catts_graph.config.Weighting`)."""


def sample_confidence(sample: Mapping[str, Any], config: CATTSConfig) -> float:
    """The confidence used to weight and filter one sample, by ``config.weighting``
    (:data:`CONFIDENCES`).

    'nmlp' and 'majority' use exp(-NMLP) (over the answer span when ``confidence_span='answer'``);
    the DeepConf weightings the matching DeepConf confidence; 'step_min' the fused confidence of
    the sample's weakest step.
    """
    return CONFIDENCES[config.weighting](sample, config)


def sample_nmlp(sample: Mapping[str, Any], config: CATTSConfig) -> float | None:
    if config.confidence_span == "answer" and sample.get("nmlp_answer") is not None:
        return float(sample["nmlp_answer"])
    value = sample.get("nmlp")
    return None if value is None else float(value)


def sample_weight(sample: Mapping[str, Any], config: CATTSConfig) -> float:
    """Vote weight: 1 (majority), 1 / NMLP (the paper; ``1 / max(NMLP, nmlp_floor)`` with a floor),
    or the weighting's confidence (DeepConf's, or the weakest step's fused confidence)."""
    if config.weighting == "majority":
        return 1.0
    if config.weighting == "nmlp":
        value = sample_nmlp(sample, config)
        return 0.0 if value is None else voting.nmlp_weights([value], floor=config.nmlp_floor)[0]
    return sample_confidence(sample, config)


def tally(samples: Sequence[Mapping[str, Any]], config: CATTSConfig) -> Tally:
    """Group the samples' answers by equivalence and vote by ``config.weighting``."""
    indexed = [(i, s) for i, s in enumerate(samples) if s.get("source", "sample") in VOTING_SOURCES]
    answered = [(i, s) for i, s in indexed if s.get("answer") is not None]
    filtered_out = 0
    if config.top_eta is not None and answered:
        keep = voting.top_eta_mask([sample_confidence(s, config) for _, s in answered], config.top_eta)
        filtered_out = keep.count(False)
        answered = [pair for pair, kept in zip(answered, keep, strict=True) if kept]
    canonical = canonicalize([s["answer"] for _, s in answered])
    weights = [sample_weight(s, config) for _, s in answered]
    raw_votes = voting.weighted_vote(canonical, weights)
    members: dict[str, list[int]] = {}
    for (i, _), answer in zip(answered, canonical, strict=True):
        members.setdefault(answer, []).append(i)  # type: ignore[arg-type]
    order = sorted(raw_votes, key=lambda a: -raw_votes[a])  # stable: ties keep first-seen order
    return Tally(
        votes={a: raw_votes[a] for a in order},
        counts={a: len(members[a]) for a in order},
        mean_confidence={
            a: sum(float(samples[i]["confidence"]) for i in members[a]) / len(members[a]) for a in order
        },
        members={a: members[a] for a in order},
        weakest_fused={a: _weakest([samples[i] for i in members[a]]) for a in order},
        voters=len(answered),
        abstained=len(indexed) - len(answered) - filtered_out,
        filtered_out=filtered_out,
    )


_TALLY_FIELDS = dataclasses.fields(Tally)


def _weakest(samples: Sequence[Mapping[str, Any]]) -> float | None:
    found = [step["fused"] for s in samples if (step := weakest_step(s, "fused")) is not None]
    return min(found) if found else None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _tally_key(samples: Sequence[Mapping[str, Any]], config: CATTSConfig) -> list[Any]:
    """What a stored tally was counted from: the number of voting samples and the voting settings."""
    voting = sum(1 for s in samples if s.get("source", "sample") in VOTING_SOURCES)
    return [voting, config.weighting, config.confidence_span, config.top_eta, config.nmlp_floor]


def stored_tally(samples: Sequence[Mapping[str, Any]], config: CATTSConfig) -> dict[str, Any]:
    """The tally of ``samples`` as plain data for the graph state (``CATTSState.tally``).

    Only the nodes that add voting samples (``base_model``, ``step_repair``) count the vote; every
    other node reads it back with :func:`run_tally`, so a run counts each wave's vote once instead
    of once per node.
    """
    counted = tally(samples, config)
    # Its dicts and lists are new and go nowhere else: stored as they are (asdict deep-copied them).
    return {"key": _tally_key(samples, config), **{f.name: getattr(counted, f.name) for f in _TALLY_FIELDS}}


def run_tally(state: Mapping[str, Any], config: CATTSConfig) -> Tally:
    """The tally of the run's samples: the stored one (:func:`stored_tally`) while it still counts
    the same voting samples under the same voting settings, else counted again (a thread resumed
    with another context, or samples added to the state from outside the graph)."""
    samples = state.get("samples", [])
    stored = state.get("tally")
    if stored and stored["key"] == _tally_key(samples, config):
        return Tally(**{key: value for key, value in stored.items() if key != "key"})
    return tally(samples, config)


def match_candidate(answer: str | None, candidates: Sequence[str]) -> str | None:
    """``answer`` as the candidate it is equivalent to, or itself when it is new."""
    if answer is None:
        return None
    return canonicalize([*candidates, answer])[-1]


def verdict_boosts(verdict: str | None, config: CATTSConfig) -> bool:
    """Whether a reflection after the Critic's ``verdict`` earns its boost: always
    (``reflection_boost='always'``, the paper), or only after ``incorrect``
    (``reflection_boost='incorrect'``: tau2; ``'override'``: the lead, see :func:`final_scores`)."""
    return config.reflection_boost == "always" or verdict == "incorrect"


def reflection_boosted(state: Mapping[str, Any], config: CATTSConfig) -> bool:
    """Whether the run's reflected answer gets tau2 (:func:`verdict_boosts` of the Critic's
    verdict); False when nothing was reflected."""
    verdict = (state.get("critique") or {}).get("verdict")
    return state.get("reflected") is not None and verdict_boosts(verdict, config)


def final_scores(
    state: Mapping[str, Any], config: CATTSConfig, result: Tally | None = None
) -> dict[str, float]:
    """S(a) for every candidate from the votes and whatever modules have run so far (the reflected
    answer only when :func:`reflection_boosted`). With ``reflection_boost='override'`` the reflected
    answer gets no tau2 among the votes; when the criticised sample's answer leads the scores, a
    different reflected answer takes the lead instead (:func:`catts_graph.voting.override_leader`,
    by tau2 on the scores' scale)."""
    result = result or run_tally(state, config)
    candidates = list(result.votes)
    reflected = state.get("reflected") if reflection_boosted(state, config) else None
    override = config.reflection_boost == "override"
    scores = voting.final_scores(
        result.votes,
        voter_probs=state.get("voter_probs"),
        reflected=None if override else match_candidate(reflected, candidates),
        self_check_winner=match_candidate(state.get("self_check_winner"), candidates),
        tau1=config.tau1,
        tau2=config.tau2,
        tau3=config.tau3,
        scale=config.score_scale,
        n_samples=result.voters,
    )
    if not override or reflected is None:
        return scores
    samples = state.get("samples", [])
    index = (state.get("critique") or {}).get("sample")
    criticised = samples[index].get("answer") if index is not None and 0 <= index < len(samples) else None
    margin = config.tau2 if config.score_scale == "normalised" else float(int(config.tau2 * result.voters))
    return voting.override_leader(
        scores,
        result.votes,
        criticised=match_candidate(criticised, candidates),
        replacement=match_candidate(reflected, candidates),
        margin=margin,
    )


def score_margin(scores: Mapping[str, float]) -> float:
    """(S1 - S2) / sum S of the two best candidates (1.0 with a single one, 0.0 with none)."""
    total = sum(scores.values())
    ranked = sorted(scores.values(), reverse=True)
    if not ranked or total <= 0:
        return 0.0
    return (ranked[0] - (ranked[1] if len(ranked) > 1 else 0.0)) / total


def summary(result: Tally, *, drawn: int, config: CATTSConfig, limit: int = 8) -> dict[str, Any]:
    """The confidence summary the planner (and its expert) decide on; numbers only."""
    shares = result.shares
    return {
        "samples_drawn": drawn,
        "samples_voting": result.voters,
        "samples_without_answer": result.abstained,
        "budget_left": config.max_samples - drawn,
        "candidates": [
            {
                "answer": answer,
                "vote_share": round(shares[answer], 4),
                "count": result.counts[answer],
                "mean_confidence": round(result.mean_confidence[answer], 4),
                "weakest_step": _round(result.weakest_fused.get(answer)),
            }
            for answer in list(result.votes)[:limit]
        ],
        "top_share": round(result.top_share, 4),
        "share_margin": round(result.margin(), 4),
    }
