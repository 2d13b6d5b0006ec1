"""What a reproduction runs (:class:`Plan`), and the small pieces every step shares: the items of a
split (at the plan's generator level), the graph's config, the cached JSON of a step, the run
folder's plan check."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from catts_graph.formatting import json_ready

SHIPPED_CONFIGS = "training/configs/"
"""How a plan names a config that ships with the training package (see :func:`training_config`)."""

CDRL_CONFIG = SHIPPED_CONFIGS + "organism_cdrl.yaml"
"""The CDRL config of the reproduction."""

MMBOUNDARY_CONFIG = SHIPPED_CONFIGS + "mmboundary_organism.yaml"
"""The MMBoundary config of the reproduction (data, SFT, RL)."""

SCALING_METHODS = (
    "majority",
    "deepconf_lowest_group",
    "deepconf_lowest_group+eta",
    "catts_paper",
    "catts_adaptive",
)
"""DeepConf both ways: weighted by lowest-group confidence over every trace, and with its top-10%
filter (eta), which at small N keeps one to three traces."""

EXPERT_METHODS = ("catts_paper", "catts_adaptive")

ABLATIONS = (
    "catts_paper",
    "catts_paper-no_self_consistency",
    "catts_paper-no_self_reflection",
    "catts_paper-no_visual_self_check",
    "catts_paper-no_voter_boost",
    "catts_paper-no_reflection_boost",
    "catts_paper-no_self_check_boost",
)

STEP_FLOORS = (0.5, 0.8, 0.9, 0.95)
"""The adaptive fast path's step floor (the weakest step's confidence, ``exp(-NMLP)`` of the step),
searched on the validation split; below it ``step_repair`` runs."""

THRESHOLD_GRID = {"fast_path_share": (0.5, 0.7, 0.9, 1.0), "fast_path_confidence": (0.5, 0.8, 0.9)}
"""The adaptive fast path's two thresholds, searched on the validation split."""


@dataclass(frozen=True)
class Plan:
    """How much of everything to run. The defaults are the documented run (under an hour on CPU)."""

    model_items: int = 500
    """Test items of the greedy accuracy table of both organisms (and of the fresh-seed check)."""
    fresh_seed: int = 1
    """The generator seed of the fresh scenes: the organisms must hold their accuracy off seed 0."""
    test_items: int = 500
    """Test items of the scaling runs and ablations (each is N = 32 samples and 5 + 2 methods at 6 Ns)."""
    validation_items: int = 100
    probe_items: int = 500
    probe_split: str = "test"
    """The split the probe before and after CDRL reads (``validation`` when tuning CDRL)."""
    perturbs: tuple[str, ...] = ("gaussian", "occlusion")
    levels: tuple[float, ...] = (0.5, 1.0)
    ns: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    subsets: int = 16
    """Random size-N subsets of each item's pool that the offline methods (majority, DeepConf) are
    averaged over at every N below the pool's size."""
    n_boot: int = 1000
    """Bootstrap resamples of the items behind every interval (95%, percentile, seed 0)."""
    ablation_n: int = 8
    threshold_n: int = 8
    cdrl_config: str = CDRL_CONFIG
    cdrl_steps: int | None = None
    """Override of the CDRL config's ``grpo.max_steps``."""
    cdrl_shipped: bool = True
    """The CDRL step places the shipped CDRL organism when it was trained from ``cdrl_config`` and
    the shipped base (:func:`catts_experiments.reproduce.training.shipped_cdrl`; training it again
    writes the same bytes); False trains it (``catts reproduce --train-cdrl``)."""
    mmboundary_config: str = MMBOUNDARY_CONFIG
    mmboundary_data_items: int | None = None
    """Override of the MMBoundary config's training items (``data.limit``)."""
    mmboundary_pretrain_steps: int | None = None
    mmboundary_sft_steps: int | None = None
    mmboundary_rl_steps: int | None = None
    seed: int = 0
    level: int | None = None
    """The synthetic generator level every item is asked at (None: the mix of levels 1-3 the
    organisms trained on; ``HARD_LEVEL``, 4: the hard regime). The items of every step are loaded at
    it, and their ids name it (:func:`catts_graph.eval.synthetic.item_id`); the MMBoundary step's
    probe reads its training config's items."""
    hard_self_expert: bool = False
    """Whether the hard regime's scaling runs CA-TTS with the base organism as its own expert too
    (the mixed levels always do). Off: on the hard level the question is what the expert adds; the
    base as its own expert there (last measured in the run of 2026-12-07: +0.6 points [-1.4, 2.6] over
    majority at N = 8, +2.6 [0.2, 5.1] at N = 1) cost ~6 of the reproduction's minutes and says what
    the mixed levels' runs say. Majority and DeepConf run on the same pools either way."""
    hard_level: int | None = 4
    """The generator level of the hard regime (:data:`catts_graph.eval.synthetic.HARD_LEVEL`), where
    the base organism is unsure: the CA-TTS steps (thresholds, scaling, ablations, step repair,
    reflection) run again on its items, in the run folder's ``level<N>/`` (None: not run)."""
    concurrency: int = 2
    threshold_grid: dict[str, tuple[float, ...]] = field(default_factory=lambda: dict(THRESHOLD_GRID))

    @classmethod
    def quick(cls) -> Plan:
        """A smoke-sized plan (tests): every step runs, on a handful of items."""
        return cls(
            model_items=3,
            test_items=3,
            validation_items=2,
            probe_items=2,
            perturbs=("gaussian",),
            levels=(1.0,),
            ns=(1, 2),
            subsets=2,
            n_boot=50,
            ablation_n=2,
            threshold_n=2,
            cdrl_steps=1,
            mmboundary_data_items=3,
            mmboundary_pretrain_steps=1,
            mmboundary_sft_steps=1,
            mmboundary_rl_steps=1,
            concurrency=1,
            threshold_grid={"fast_path_share": (1.0,), "fast_path_confidence": (0.5,)},
        )


class Organisms:
    """The organisms of a reproduction, loaded once, behind a remembering
    :class:`~catts_graph.models.ReplayVLM`: across the Ns and methods of a run (and across runs), a
    greedy answer or a scoring of the same image and prompt is the same call, computed once."""

    def __init__(self) -> None:
        self._loaded: dict[str, Any] = {}

    def get(self, which: str) -> Any:
        if which not in self._loaded:
            from catts_graph.models.replay import ReplayVLM
            from catts_graph.organism import organism_model

            self._loaded[which] = ReplayVLM(organism_model(which), memo_max_n=1)
        return self._loaded[which]


def log_line(line: str) -> None:
    """Print a progress line at once (a long run is watched through a pipe)."""
    print(line, flush=True)


def items_of(split: str, limit: int, plan: Plan) -> list[Any]:
    """The first ``limit`` synthetic items of ``split`` at the plan's seed and generator level."""
    from catts_graph.eval.synthetic import load_synthetic

    return load_synthetic(split, limit=limit, seed=plan.seed, level=plan.level)


def catts_config(**overrides: Any) -> Any:
    """The graph's config of every run: no expert retries (a reply the organism cannot give does not
    come on a retry), the organisms' longest reply."""
    from catts_graph.config import CATTSConfig

    return CATTSConfig(expert_retries=0, max_new_tokens=256, **overrides)


def cached(path: Path, compute: Callable[[], Any]) -> Any:
    """The JSON at ``path``, computed and written first if absent."""
    if path.is_file():
        return json.loads(path.read_text())
    value = compute()
    path.write_text(json.dumps(json_ready(value), indent=2) + "\n")
    return json.loads(path.read_text())


def check_plan(out: Path, plan: Plan) -> None:
    """A run folder belongs to one plan: resuming it with another would mix their rows."""
    path = out / "plan.json"
    current = json_ready(dataclasses.asdict(plan))
    if path.is_file():
        stored = json.loads(path.read_text())
        # A field added to Plan since the run started reads as its default there.
        defaults = {
            f.name: json_ready(f.default)
            for f in dataclasses.fields(Plan)
            if f.default is not dataclasses.MISSING
        }
        changed = sorted(
            k for k in set(stored) | set(current) if stored.get(k, defaults.get(k)) != current.get(k)
        )
        if changed:
            raise ValueError(f"{out} holds a run with another plan (differs in {changed}); use a new --out")
    path.write_text(json.dumps(current, indent=2) + "\n")
