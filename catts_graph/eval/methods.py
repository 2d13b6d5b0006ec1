"""The methods an evaluation compares, each a function of one item's sample pool and a budget N.

An item's responses are drawn *once*, at the largest N of the run (:func:`draw_pool`): one batched
call of the base model for the answer prompt, plus one temperature-0 response when ``greedy`` is
evaluated. A method at budget N uses the pool's first N samples; the backend draws sample i from its
own generator seeded from (seed, i), so these are exactly the samples a run with N alone would draw,
and a whole scaling curve costs one draw. Responses generated elsewhere
(:meth:`~catts_graph.models.ReplayVLM.from_jsonl`) make the pool instead of a draw.

Methods (the names are the ``method`` column of the results table; :func:`parse_method`):

- ``greedy``: the temperature-0 response (independent of N; stored at every N as a reference line).
- ``majority``: majority vote over the first N samples.
- ``deepconf_mean`` / ``_tail`` / ``_bottom_percent`` / ``_lowest_group``: DeepConf offline, votes
  weighted by that DeepConf confidence; with ``+eta`` (``deepconf_tail+eta``) only the samples at or
  above the (1 - eta) confidence quantile vote (eta = ``config.top_eta`` or 0.1). Voting is
  :func:`catts_graph.scoring.tally`, the graph's own.
- ``deepconf_online``: DeepConf online (:func:`deepconf_online`), simulated exactly from the pool.
- ``catts_adaptive`` / ``catts_paper`` / ``catts_expert``: the real CA-TTS graph
  (:func:`catts_graph.build_graph`, compiled once per evaluation: :class:`CATTSGraphs`) on a
  :class:`~catts_graph.models.ReplayVLM`, which answers the graph's answer-prompt sampling calls from
  the pool and passes every other call (reflection, visual self-check, the base model as its own
  expert) to the real model. Without a real model (recorded responses alone) self-reflection and the
  visual self-check are off, and each run's trace says so. ``paper`` runs a fixed N; ``adaptive``
  and ``expert`` get N as their sample *budget* (first wave ``min(config.n_samples, N)``, later
  waves served from the pool's next samples).
- Ablations of the paper policy, each run, never extrapolated: ``catts_paper-no_self_consistency``,
  ``-no_self_reflection``, ``-no_visual_self_check`` (the paper plan without that module) and
  ``-no_voter_boost``, ``-no_reflection_boost``, ``-no_self_check_boost`` (tau1, tau2, tau3 = 0).

Costs reported per method: ``tokens`` are base-model generated tokens (a pooled sample counts once
for each N that uses it, as if that run had drawn it); ``seconds`` is the method's own wall time plus
the pool's drawing time charged per token used (a batched draw has no per-sample time; its seconds
are shared in proportion to the tokens each sample generated; recorded responses cost 0 s here, their
generation happened elsewhere); ``expert_calls`` counts expert attempts.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from catts_graph import confidence as conf
from catts_graph import scoring
from catts_graph.config import DEEPCONF_WEIGHTINGS, MODULES, CATTSConfig
from catts_graph.experts import resolve_experts
from catts_graph.graph import build_graph
from catts_graph.models.base import BaseVLM, Sample, SamplingParams
from catts_graph.models.replay import ReplayVLM
from catts_graph.nodes.common import trace_entry
from catts_graph.samples import DEEPCONF_K, deepconf_token_confidence, describe_sample
from catts_graph.task import base_prompt, check_inputs, most_confident
from catts_graph.voting import pick_answer

__all__ = [
    "BOOST_ABLATIONS",
    "CATTSGraphs",
    "DEEPCONF_WEIGHTINGS",
    "MODULE_ABLATIONS",
    "POLICIES",
    "MethodResult",
    "MethodSpec",
    "SamplePool",
    "deepconf_offline",
    "deepconf_online",
    "draw_pool",
    "greedy",
    "majority",
    "method_names",
    "online_lows",
    "online_stop",
    "parse_method",
    "run_method",
    "run_offline",
]

POLICIES = ("adaptive", "paper", "expert")
MODULE_ABLATIONS = {f"no_{module}": module for module in MODULES}
BOOST_ABLATIONS = {"no_voter_boost": "tau1", "no_reflection_boost": "tau2", "no_self_check_boost": "tau3"}
DEFAULT_TOP_ETA = 0.1
ONLINE_WARMUP_CAP = 16
"""DeepConf's warm-up size (16 traces of a 256-512 trace budget); smaller budgets use N / 4."""
ONLINE_PERCENTILE = 90.0
"""DeepConf-low: the threshold is the 90th percentile of the warm-up's lowest-group confidences."""


# -- names ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MethodSpec:
    """A parsed method name."""

    name: str
    kind: str
    """greedy | majority | deepconf | deepconf_online | catts"""
    weighting: str | None = None
    top_eta: bool = False
    policy: str | None = None
    ablation: str | None = None

    @property
    def needs_samples(self) -> bool:
        return self.kind != "greedy"

    @property
    def needs_planner(self) -> bool:
        return self.kind == "catts" and self.policy == "expert"


def method_names() -> list[str]:
    """Every valid method name."""
    names = ["greedy", "majority"]
    names += [f"deepconf_{w}{suffix}" for w in DEEPCONF_WEIGHTINGS for suffix in ("", "+eta")]
    names += ["deepconf_online"]
    names += [f"catts_{policy}" for policy in POLICIES]
    names += [f"catts_paper-{ablation}" for ablation in (*MODULE_ABLATIONS, *BOOST_ABLATIONS)]
    return names


def parse_method(name: str) -> MethodSpec:
    """The :class:`MethodSpec` of ``name``; ValueError listing the valid names otherwise."""
    if name in ("greedy", "majority", "deepconf_online"):
        return MethodSpec(name, name)
    if name.startswith("deepconf_"):
        weighting, eta, rest = name.removeprefix("deepconf_").partition("+")
        if weighting in DEEPCONF_WEIGHTINGS and (not eta or rest == "eta"):
            return MethodSpec(name, "deepconf", weighting=weighting, top_eta=bool(eta))
    if name.startswith("catts_"):
        policy, _, ablation = name.removeprefix("catts_").partition("-")
        if policy in POLICIES and not ablation:
            return MethodSpec(name, "catts", policy=policy)
        if policy == "paper" and (ablation in MODULE_ABLATIONS or ablation in BOOST_ABLATIONS):
            return MethodSpec(name, "catts", policy=policy, ablation=ablation)
    raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(method_names())}")


# -- the pool -------------------------------------------------------------------------------------


@dataclass
class SamplePool:
    """One item's responses, drawn once at the largest N.

    ``records`` are :func:`~catts_graph.samples.describe_sample` records in sampling order, each with
    two more keys: ``seconds`` (its share of the drawing time) and ``deepconf_lows`` (see
    :func:`online_stop`). ``raw`` holds the backend's :class:`Sample` objects, in memory only: the
    CA-TTS methods replay them through :class:`~catts_graph.models.ReplayVLM`; a pool read back from
    the store has none.
    """

    prompt: str
    params: SamplingParams
    """How the pool's samples were drawn (for recorded responses: what the graph will ask)."""
    records: list[dict[str, Any]] = field(default_factory=list)
    greedy: dict[str, Any] | None = None
    raw: list[Sample] | None = None

    def first(self, n: int) -> list[dict[str, Any]]:
        """The first ``n`` sampled records (the samples a run with budget ``n`` uses)."""
        if n > len(self.records):
            raise ValueError(f"N={n} needs {n} samples but the pool holds {len(self.records)}")
        return self.records[:n]

    @property
    def seconds(self) -> float:
        return sum(r["seconds"] for r in self.all_records())

    @property
    def tokens(self) -> int:
        return sum(r["n_tokens"] for r in self.all_records())

    def all_records(self) -> list[dict[str, Any]]:
        """What the store keeps: the sampled records, then the greedy one (``source == "greedy"``)."""
        return [*self.records, *([self.greedy] if self.greedy is not None else [])]

    @classmethod
    def from_records(
        cls,
        records: Sequence[Mapping[str, Any]],
        *,
        prompt: str = "",
        params: SamplingParams | None = None,
    ) -> SamplePool:
        """A pool read back from the store (``ResultStore.get_pool``): no raw samples, so the offline
        methods only (re-analyses need no model)."""
        sampled = [dict(r) for r in records if r.get("source") == "sample"]
        greedy = next((dict(r) for r in records if r.get("source") == "greedy"), None)
        return cls(prompt=prompt, params=params or SamplingParams(), records=sampled, greedy=greedy)


def online_lows(sample: Sample, window: int) -> list[list[float]]:
    """The record lows of a response's DeepConf group confidence, ``[[tokens, G], ...]``.

    Group ``i`` is the mean token confidence over tokens ``[i, i + w)``, ``w = min(window, T)``; it is
    known once ``i + w`` tokens exist. An entry is kept each time a group is lower than every earlier
    one: that is all an online early stop can ever react to, since a trace stops at the *first* group
    below the threshold (see :func:`online_stop`). The list is the running minimum's steps, so it is
    short (its last value is the lowest-group confidence).
    """
    token_conf = deepconf_token_confidence(sample)
    if token_conf is None:
        return []
    groups = conf.group_confidence(token_conf, window)
    width = min(window, len(token_conf))
    lows: list[list[float]] = []
    for i, value in enumerate(groups):
        if not lows or value < lows[-1][1]:
            lows.append([i + width, value])
    return lows


def draw_pool(
    base_model: BaseVLM,
    graph_input: Mapping[str, Any],
    *,
    n: int,
    config: CATTSConfig,
    seed: int,
    greedy: bool,
    recorded: Sequence[Sample] | None = None,
) -> SamplePool:
    """Draw an item's pool: ``n`` samples in one call (0 for none), and the greedy response if asked.

    Top-k log-probs (k = 20) are kept so that every DeepConf confidence can be computed.
    ``recorded``: the item's responses generated elsewhere; the pool is their first ``n`` instead
    of a draw (the greedy response, when asked, still comes from ``base_model``).
    """
    question, options, _, images = check_inputs(graph_input, config)
    prompt = base_prompt(question, options, base_model)
    params = SamplingParams(
        temperature=config.temperature,
        top_p=config.top_p,
        top_k=config.top_k,
        max_new_tokens=config.max_new_tokens,
        seed=seed,
        top_logprobs=DEEPCONF_K,
    )
    pool = SamplePool(prompt=prompt, params=params, raw=[])
    if n:
        start = time.perf_counter()
        if recorded is not None:
            if len(recorded) < n:
                raise ValueError(f"N={n} needs {n} responses but {len(recorded)} are recorded")
            raw, seconds = list(recorded[:n]), 0.0
        else:
            raw = base_model.sample(images, prompt, n, **params.as_kwargs())
            seconds = time.perf_counter() - start
        if len(raw) != n:
            raise RuntimeError(f"base model returned {len(raw)} samples, {n} were asked for")
        total = sum(len(s.logprobs) for s in raw)
        pool.raw = list(raw)
        for i, sample in enumerate(raw):
            record = describe_sample(
                sample,
                options=options,
                index=i,
                wave=0,
                deepconf_window=config.deepconf_window,
                deepconf_tail=config.deepconf_tail,
            )
            record["seconds"] = seconds * len(sample.logprobs) / total if total else seconds / n
            record["deepconf_lows"] = online_lows(sample, config.deepconf_window)
            pool.records.append(record)
    if greedy:
        start = time.perf_counter()
        (raw_greedy,) = base_model.sample(images, prompt, 1, **params.replace(temperature=0.0).as_kwargs())
        record = describe_sample(
            raw_greedy,
            options=options,
            index=n,
            wave=0,
            source="greedy",
            deepconf_window=config.deepconf_window,
            deepconf_tail=config.deepconf_tail,
        )
        record["seconds"] = time.perf_counter() - start
        record["deepconf_lows"] = online_lows(raw_greedy, config.deepconf_window)
        pool.greedy = record
    return pool


# -- results --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MethodResult:
    """One method's outcome on one item at one N."""

    answer: str | None
    confidence: float
    tokens: int
    seconds: float
    expert_calls: int = 0
    modules: list[str] = field(default_factory=list)
    trace: list[dict[str, Any]] | None = None
    response: str | None = None
    """The response the answer came from (the judge reads it when no answer was extracted)."""


def _vote(
    voters: Sequence[Mapping[str, Any]], config: CATTSConfig, records: Sequence[Mapping[str, Any]]
) -> tuple[str | None, float, str | None]:
    """(answer, the winner's vote share, a response) of the graph's tally over ``voters``.

    The response is the most confident one behind the answer, else the most confident of ``records``
    (what a judge reads when no answer was extracted).
    """
    tally = scoring.tally(voters, config)
    answer, confidence = pick_answer(tally.votes, tally.votes)
    support = [voters[i] for i in tally.members[answer]] if answer is not None else []
    source = most_confident(support) or most_confident(records)
    return answer, confidence, None if source is None else source["text"]


def _charged(
    vote: tuple[str | None, float, str | None], records: Sequence[Mapping[str, Any]], own_seconds: float
) -> MethodResult:
    """A vote over ``records`` charged with their full cost."""
    answer, confidence, response = vote
    return MethodResult(
        answer=answer,
        confidence=confidence,
        tokens=sum(int(r["n_tokens"]) for r in records),
        seconds=own_seconds + sum(float(r["seconds"]) for r in records),
        response=response,
    )


def greedy(pool: SamplePool) -> MethodResult:
    """The temperature-0 response; confidence ``exp(-NMLP)``."""
    if pool.greedy is None:
        raise ValueError("the pool has no greedy response: draw it with draw_pool(..., greedy=True)")
    record = pool.greedy
    return MethodResult(
        answer=record["answer"],
        confidence=float(record["confidence"]),
        tokens=int(record["n_tokens"]),
        seconds=float(record["seconds"]),
        response=record["text"],
    )


def majority(pool: SamplePool, n: int) -> MethodResult:
    """Majority vote ``V(a) = #{i <= N : ans_i == a}``; confidence = the winner's share."""
    start = time.perf_counter()
    records = pool.first(n)
    vote = _vote(records, CATTSConfig(weighting="majority"), records)
    return _charged(vote, records, time.perf_counter() - start)


def deepconf_offline(
    pool: SamplePool, n: int, *, weighting: str, top_eta: float | None = None
) -> MethodResult:
    """DeepConf offline: votes weighted by a DeepConf confidence, optionally top-eta filtered.

    ``V(a) = sum_{i <= N, ans_i == a, c_i >= q_{1-eta}} c_i`` with ``c_i`` the sample's ``weighting``
    confidence (mean, tail, bottom_percent or lowest_group; computed when the pool was drawn).
    """
    start = time.perf_counter()
    records = pool.first(n)
    config = CATTSConfig(weighting=weighting, top_eta=top_eta, top_logprobs=DEEPCONF_K)  # type: ignore[arg-type]
    return _charged(_vote(records, config, records), records, time.perf_counter() - start)


def online_stop(record: Mapping[str, Any], threshold: float) -> int | None:
    """Tokens a trace had generated when DeepConf online stopped it, or None if it ran to its end.

    The trace stops at the first group confidence below ``threshold``, i.e. at the first record low
    (``record["deepconf_lows"]``) below it, i.e. after ``i + w`` tokens for group ``i`` of the
    pool's window ``w`` (``CATTSConfig.deepconf_window``, the same window as the offline
    confidences). A trace no longer than the window has one group, over the whole trace, known only
    at its end: it can be rejected but saves no tokens; hence windows of tens of tokens, not
    DeepConf's 2048, on replies of a few hundred.
    """
    for tokens, value in record.get("deepconf_lows") or ():
        if value < threshold:
            return int(tokens)
    return None


def deepconf_online(
    pool: SamplePool, n: int, *, warmup: int | None = None, percentile: float = ONLINE_PERCENTILE
) -> MethodResult:
    """DeepConf online with budget N, simulated from the pool's per-sample group confidences.

    As in DeepConf (``deepconf-online.py``): the first ``warmup`` traces (default
    ``min(16, ceil(N / 4))``) are generated in full; the threshold ``s`` is the ``percentile``-th
    percentile of their lowest-group confidences (90: DeepConf-low; 10: DeepConf-high). Each later
    trace is stopped at its first group confidence below ``s`` (:func:`online_stop`) and dropped.
    Voters: warm-up traces with lowest-group confidence ``>= s`` and the traces that were not stopped,
    weighted by their lowest-group confidence. ``tokens`` counts what generation would really cost:
    warm-up traces in full, stopped traces up to their stop, the rest in full; ``seconds`` is charged
    per token in the same way. Samples are used in pool order, so the traces are those of an online
    run with the same seed.
    """
    if not 0.0 <= percentile <= 100.0:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    start = time.perf_counter()
    records = pool.first(n)
    size = min(ONLINE_WARMUP_CAP, max(1, math.ceil(n / 4))) if warmup is None else warmup
    if not 1 <= size <= n:
        raise ValueError(f"warmup must be in [1, N={n}], got {size}")
    warm, later = records[:size], records[size:]
    lowest = [r["deepconf"]["lowest_group"] for r in warm if r.get("deepconf")]
    threshold = float(np.percentile(lowest, percentile)) if lowest else None
    voters = [
        r
        for r in warm
        if r.get("deepconf") and (threshold is None or r["deepconf"]["lowest_group"] >= threshold)
    ]
    tokens = sum(int(r["n_tokens"]) for r in warm)
    seconds = sum(float(r["seconds"]) for r in warm)
    stopped = 0
    for record in later:
        stop = None if threshold is None else online_stop(record, threshold)
        if stop is None:
            voters.append(record)
            tokens += int(record["n_tokens"])
            seconds += float(record["seconds"])
        else:
            stopped += 1
            tokens += stop
            seconds += float(record["seconds"]) * stop / max(1, int(record["n_tokens"]))
    voting = [r for r in voters if r.get("deepconf")]
    config = CATTSConfig(weighting="lowest_group", top_logprobs=DEEPCONF_K)
    answer, confidence, response = _vote(voting, config, records)
    trace = [
        {
            "module": "deepconf_online",
            "decision": f"threshold {threshold if threshold is None else round(threshold, 6)}",
            "reason": f"warm-up {size}, percentile {percentile}; {stopped} of {len(later)} later traces "
            f"stopped; {len(voting)} voters",
            "inputs": {"warmup": size, "threshold": threshold, "stopped": stopped, "voters": len(voting)},
        }
    ]
    return MethodResult(
        answer=answer,
        confidence=confidence,
        tokens=tokens,
        seconds=seconds + time.perf_counter() - start,
        trace=trace,
        response=response,
    )


# -- CA-TTS ---------------------------------------------------------------------------------------


def _catts_config(base: CATTSConfig, policy: str, n: int, seed: int) -> CATTSConfig:
    """The graph's config at budget N: paper draws exactly N; adaptive and expert get N as budget."""
    first = n if policy == "paper" else min(base.n_samples, n)
    return base.replace(policy=policy, n_samples=first, max_samples=n, seed=seed)  # type: ignore[arg-type]


def _modules(trace: Sequence[Mapping[str, Any]]) -> list[str]:
    """The modules that ran, in order (``more_samples`` when the base model drew a later wave)."""
    ran: list[str] = []
    waves = 0
    for entry in trace:
        module = entry.get("module")
        if module == "base_model":
            waves += 1
            module = "more_samples" if waves > 1 else None
        if module in (*_GRAPH_MODULES, "more_samples") and module not in ran:
            ran.append(module)
    return ran


_GRAPH_MODULES = (
    "step_repair",
    "self_consistency",
    "voter",
    "critic",
    "self_reflection",
    "visual_self_check",
)


NEEDS_THE_MODEL = ("self_reflection", "visual_self_check")
"""The modules that need the base model itself: a greedy re-answer, and teacher-forced scoring."""


class CATTSGraphs:
    """The CA-TTS graphs of one evaluation, compiled once and shared by every item and thread.

    The graphs are built on a :class:`~catts_graph.models.ReplayVLM` around ``base_model`` (or on
    ``base_model`` itself when it is one); each run gets its config (policy, N, taus, the item's
    seed) as the invocation's ``context`` and its pool through :meth:`ReplayVLM.serving`. Ablations
    are configs too: a module off is the paper policy with ``disabled_modules``, a boost off is its
    tau at 0. A replay with no model behind it (recorded responses alone) runs every method with
    :data:`NEEDS_THE_MODEL` off, and each run's trace opens with an entry that says why.
    """

    def __init__(self, base_model: BaseVLM, expert: Any, config: CATTSConfig) -> None:
        self.base_model = base_model
        self.expert = expert
        self.config = config
        self.replay = base_model if isinstance(base_model, ReplayVLM) else ReplayVLM(base_model)
        self.roles: dict[str, Any] = dict(resolve_experts(expert, self.replay))
        self._compiled: Any = None
        self._lock = threading.Lock()

    def _graph(self) -> Any:
        """The compiled graph (every run passes its whole config as the context)."""
        with self._lock:
            if self._compiled is None:
                self._compiled = build_graph(
                    self.replay, expert=self.roles, config=self.config.replace(policy="adaptive")
                )
            return self._compiled

    def run(
        self,
        pool: SamplePool,
        n: int,
        graph_input: Mapping[str, Any],
        *,
        policy: str,
        ablation: str | None = None,
    ) -> MethodResult:
        """CA-TTS at budget N through the real graph, its first wave served from the pool.

        ``ablation``: a key of :data:`MODULE_ABLATIONS` (the run, Planner call included, with that
        module disabled) or of :data:`BOOST_ABLATIONS` (that tau set to 0). Ablations are run, never
        extrapolated.
        """
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        if pool.raw is None or len(pool.raw) != len(pool.records):
            raise ValueError(
                "CA-TTS needs the pool's raw samples (draw_pool keeps them in memory; a pool read back "
                "from the store has none)"
            )
        seed = pool.params.seed if pool.params.seed is not None else self.config.seed
        cfg = _catts_config(self.config, policy, n, seed)
        graph = self._graph()
        if ablation in BOOST_ABLATIONS:
            cfg = cfg.replace(**{BOOST_ABLATIONS[ablation]: 0.0})
        elif ablation in MODULE_ABLATIONS:
            cfg = cfg.replace(disabled_modules=(MODULE_ABLATIONS[ablation],))
        elif ablation is not None:
            raise ValueError(f"unknown ablation {ablation!r}; valid: {[*MODULE_ABLATIONS, *BOOST_ABLATIONS]}")
        offline: list[dict[str, Any]] = []
        if self.replay.inner is None:
            off = [m for m in NEEDS_THE_MODEL if m not in cfg.disabled_modules]
            cfg = cfg.replace(disabled_modules=(*cfg.disabled_modules, *off))
            offline.append(
                trace_entry(
                    "replay",
                    f"off: {', '.join(NEEDS_THE_MODEL)}",
                    f"the responses come from {self.replay.source} and no base model was given to "
                    "re-answer (self-reflection) or score (visual self-check) with",
                )
            )
        start = time.perf_counter()
        with self.replay.serving(pool.raw, prompt=pool.prompt, params=pool.params) as served:
            result = graph.invoke(dict(graph_input), context=cfg)
        seconds = time.perf_counter() - start
        usage = result.get("usage", {})
        trace = [*offline, *result.get("trace", [])]
        answer = result.get("answer")
        samples = scoring.voting_samples(result.get("samples", []))
        support = [s for s in samples if s.get("answer") == answer] if answer is not None else samples
        source = most_confident(support) or most_confident(samples)
        return MethodResult(
            answer=answer,
            confidence=float(result.get("confidence", 0.0)),
            tokens=int(usage.get("generated_tokens", 0)),
            seconds=seconds + sum(float(pool.records[i]["seconds"]) for i in served),
            expert_calls=int(usage.get("expert_calls", 0)),
            modules=_modules(trace),
            trace=trace,
            response=None if source is None else source["text"],
        )


# -- dispatch -------------------------------------------------------------------------------------


def run_method(
    spec: MethodSpec,
    pool: SamplePool,
    n: int,
    graph_input: Mapping[str, Any],
    *,
    graphs: CATTSGraphs,
) -> MethodResult:
    """Run the method ``spec`` at N on an item's sample pool."""
    if spec.kind != "catts":
        return run_offline(spec, pool, n, graphs.config)
    assert spec.policy is not None
    return graphs.run(pool, n, graph_input, policy=spec.policy, ablation=spec.ablation)


def run_offline(spec: MethodSpec, pool: SamplePool, n: int, config: CATTSConfig) -> MethodResult:
    """A method that needs no model (every kind but ``catts``) at N on a pool, live or read back
    from the store; ``config`` gives DeepConf's eta (``top_eta``, default 0.1)."""
    if spec.kind == "greedy":
        return greedy(pool)
    if spec.kind == "majority":
        return majority(pool, n)
    if spec.kind == "deepconf":
        assert spec.weighting is not None
        eta = (config.top_eta or DEFAULT_TOP_ETA) if spec.top_eta else None
        return deepconf_offline(pool, n, weighting=spec.weighting, top_eta=eta)
    if spec.kind == "deepconf_online":
        return deepconf_online(pool, n)
    raise ValueError(f"method {spec.name!r} runs the CA-TTS graph; it needs the models (run_method)")
