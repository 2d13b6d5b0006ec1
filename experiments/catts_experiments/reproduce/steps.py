"""Reproduce the paper's findings on the organism: ``catts organism reproduce``.

One command, on CPU, from the shipped checkpoints (``catts organism train`` rebuilds those):

1. ``models``      clean and noised accuracy of the base and expert organisms, per question kind;
2. ``probe``       the probing experiment before CDRL: accuracy and confidence under noise,
                   occlusion, viewpoint and mosaic (:mod:`catts_graph.eval.probe`);
3. ``cdrl``        CDRL on the base organism with the training pipeline (TRL GRPO,
                   ``training/configs/organism_cdrl.yaml``), then the same probe on the result;
4. ``thresholds``  the adaptive planner's thresholds tuned on the *validation* split;
5. ``scaling``     test-time scaling for N = 1..32: majority voting, DeepConf and CA-TTS with the base
                   organism as its own expert and with the larger expert organism, the adaptive
                   policy's accuracy against the tokens it spent;
6. ``ablations``   CA-TTS without each module / each boost, at one N.

Every step stores its rows in ``<out>`` as it goes (the harness's SQLite stores, the CDRL checkpoint,
JSON files) and is skipped or resumed when run again, so an interrupted run loses nothing. The end
writes ``results.json``, ``results.md`` (the tables of ``docs/organism.md``) and ``figures/*.png``
and prints the tables.

The organism plays the expert through :class:`~catts_graph.organism.expert.OrganismExpert` (Voter
and Critic; it has no Planner, so ``paper`` plans fall back to the default order, recorded in each
trace). Expert retries are off: a reply the organism cannot give is not going to come on a retry.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from catts_graph.formatting import markdown_table, number, with_interval

SHIPPED_CONFIGS = "training/configs/"
"""How a plan names a config that ships with the training package (see :func:`training_config`)."""
CDRL_CONFIG = SHIPPED_CONFIGS + "organism_cdrl.yaml"
"""The CDRL config of the reproduction."""
MMBOUNDARY_CONFIG = SHIPPED_CONFIGS + "mmboundary_organism.yaml"
"""The MMBoundary config of the reproduction (data, SFT, RL)."""
TRAINING_PACKAGE = "catts_training"
"""The training package (``training/catts_training/`` in the repository), run by name: it sits above
the library, which never imports it."""

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
    mmboundary_config: str = MMBOUNDARY_CONFIG
    mmboundary_data_items: int | None = None
    """Override of the MMBoundary config's training items (``data.limit``)."""
    mmboundary_pretrain_steps: int | None = None
    mmboundary_sft_steps: int | None = None
    mmboundary_rl_steps: int | None = None
    seed: int = 0
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


def _log(line: str) -> None:
    print(line, flush=True)


def _items(split: str, limit: int, seed: int) -> list[Any]:
    from catts_graph.eval.synthetic import load_synthetic

    return load_synthetic(split, limit=limit, seed=seed)


def _config(**overrides: Any) -> Any:
    from catts_graph.config import CATTSConfig

    return CATTSConfig(expert_retries=0, max_new_tokens=256, **overrides)


def _cached(path: Path, compute: Callable[[], Any]) -> Any:
    """The JSON at ``path``, computed and written first if absent."""
    if path.is_file():
        return json.loads(path.read_text())
    value = compute()
    path.write_text(json.dumps(value, indent=2) + "\n")
    return value


# -- steps ----------------------------------------------------------------------------------------


def interval(values: Sequence[float], plan: Plan) -> list[float]:
    """The 95% bootstrap interval of the mean of per-item ``values`` (resampled items)."""
    from catts_graph.metrics import bootstrap_interval

    return list(bootstrap_interval(values, n_boot=plan.n_boot, seed=0))


def step_models(out: Path, plan: Plan) -> dict[str, Any]:
    """Greedy accuracy and confidence (whole reply and answer span) per kind of both organisms:
    clean, under full noise, and clean on fresh scenes (another generator seed); each accuracy with
    its bootstrap interval."""
    from catts_graph.organism import organism_model
    from catts_graph.organism.evaluate import organism_rows, summarise

    def compute() -> dict[str, Any]:
        report: dict[str, Any] = {}
        for which in ("base", "expert"):
            vlm = organism_model(which)
            report[which] = {"parameters": sum(p.numel() for p in vlm.model.parameters())}
            for name, noise, seed in (
                ("clean", 0.0, plan.seed),
                ("noise", 1.0, plan.seed),
                ("fresh", 0.0, plan.fresh_seed),
            ):
                rows = organism_rows(vlm, split="test", limit=plan.model_items, noise=noise, seed=seed)
                summary = summarise(rows)
                for kind, cell in summary.items():
                    picked = [float(r["correct"]) for r in rows if kind in ("all", r["kind"])]
                    cell["ci"] = interval(picked, plan)
                report[which][name] = summary
        return report

    return _cached(out / "models.json", compute)


RANDOM_CLIP_SEEDS = (0, 1, 2, 3)
"""Random tiny CLIPs the CLIP organism's map is compared with."""


def step_clip(out: Path, plan: Plan) -> dict[str, Any]:
    """How much of its relevance map each CLIP puts on the object a question names, against that
    object's share of the area (:func:`~catts_graph.organism.clip.relevance_lift`, ``probe_items``
    test items): the CLIP organism CDRL steers its noise with, and random tiny CLIPs."""
    from catts_graph.organism.clip import load_clip_organism, relevance_lift
    from catts_graph.relevance import ClipRelevance

    def compute() -> dict[str, Any]:
        model, tokenizer = load_clip_organism()
        table = {"CLIP organism": relevance_lift(ClipRelevance(model, tokenizer), limit=plan.probe_items)}
        for seed in RANDOM_CLIP_SEEDS:
            table[f"random tiny CLIP (seed {seed})"] = relevance_lift(
                ClipRelevance.tiny(seed), limit=plan.probe_items
            )
        return table

    return _cached(out / "clip.json", compute)


def step_probe(out: Path, plan: Plan, name: str, model_path: Path) -> list[dict[str, Any]]:
    """The probe on one checkpoint (resumable store ``probe-<name>.sqlite``): its summary rows, each
    with the bootstrap interval of its accuracy (``accuracy_ci``)."""
    from catts_graph.eval.probe import probe_model
    from catts_graph.models import TransformersVLM

    vlm = TransformersVLM.from_pretrained(model_path, device="cpu")
    store_path = out / f"probe-{name}.sqlite"
    rows = probe_model(
        vlm,
        _items(plan.probe_split, plan.probe_items, plan.seed),
        perturbs=plan.perturbs,
        levels=(0.0, *plan.levels),
        seed=plan.seed,
        store_path=store_path,
        max_new_tokens=256,
        info={"model": name},
    )
    cells = probe_cells(store_path)
    summary = []
    for row in rows:
        entry = dataclasses.asdict(row)
        cell = cells[_probe_key(row.perturb, row.level)]
        entry["accuracy_ci"] = interval([float(r["correct"]) for r in cell.values()], plan)
        summary.append(entry)
    return summary


def _probe_key(perturb: str, level: float) -> tuple[str, float]:
    from catts_graph.eval.probe import CLEAN

    return (CLEAN, 0.0) if level == 0 else (perturb, float(level))


def probe_cells(store_path: Path) -> dict[tuple[str, float], dict[str, dict[str, Any]]]:
    """The probe's stored rows as ``{(perturb, level): {item_id: row}}`` (clean: ``("clean", 0.0)``)."""
    from catts_graph.eval.store import read_store

    with read_store(store_path) as store:
        rows = store.probe_rows()
    cells: dict[tuple[str, float], dict[str, dict[str, Any]]] = {}
    for row in rows:
        cells.setdefault((row["perturb"], float(row["level"])), {})[row["item_id"]] = row
    return cells


def ratio_intervals(
    ratios: list[dict[str, Any]],
    before: dict[tuple[str, float], dict[str, dict[str, Any]]],
    after: dict[tuple[str, float], dict[str, dict[str, Any]]],
    plan: Plan,
) -> list[dict[str, Any]]:
    """Each drop ratio with its bootstrap interval (``confidence_ratio_ci``, ``nmlp_ratio_ci``).

    The items are resampled jointly: an item's clean and perturbed answers before CDRL and after it
    stay together, and every resample recomputes both drops and their ratio. Items without an NMLP
    (an empty reply) are left out of the NMLP interval.
    """
    from catts_graph.metrics import bootstrap_rows

    def ratio(rows: np.ndarray) -> float:
        drop_before = rows[:, 1].mean() - rows[:, 0].mean()
        drop_after = rows[:, 3].mean() - rows[:, 2].mean()
        return float(drop_after / drop_before) if drop_before else math.nan

    result = []
    for entry in ratios:
        clean, perturbed = _probe_key("clean", 0.0), _probe_key(entry["perturb"], entry["level"])
        cells = (before[clean], before[perturbed], after[clean], after[perturbed])
        ids = sorted(set.intersection(*(set(c) for c in cells)))
        entry = dict(entry)
        for unit, key in (("confidence", "confidence"), ("nmlp", "nmlp")):
            # -NMLP is the confidence in NMLP units: the drop is mean NMLP(clean) - mean NMLP(perturbed).
            sign = 1.0 if unit == "confidence" else -1.0
            rows = [
                [sign * float(c[i][key]) for c in cells]
                for i in ids
                if all(c[i][key] is not None for c in cells)
            ]
            entry[f"{unit}_ratio_ci"] = (
                list(bootstrap_rows(np.array(rows), ratio, n_boot=plan.n_boot, seed=0))
                if rows
                else [math.nan] * 2
            )
        result.append(entry)
    return result


def pooled_calibration(store_path: Path) -> dict[str, float]:
    """ECE and AUROC of ``exp(-NMLP)`` over every probe row (clean and perturbed), clean accuracy
    and the clean rows' mean NMLP (so a ratio that moved because clean answers got surer shows)."""
    from catts_graph import metrics
    from catts_graph.eval.store import read_store

    with read_store(store_path) as store:
        probe = store.probe_rows()
    rows = [(r["level"], r["correct"], r["confidence"]) for r in probe]
    confidences = [float(c) for _, _, c in rows]
    correct = [bool(y) for _, y, _ in rows]
    clean = [bool(y) for level, y, _ in rows if level == 0]
    clean_nmlp = [float(r["nmlp"]) for r in probe if r["level"] == 0 and r["nmlp"] is not None]
    try:
        auroc = metrics.auroc(confidences, correct)
    except ValueError:
        auroc = math.nan
    return {
        "rows": len(rows),
        "ece": metrics.expected_calibration_error(confidences, correct),
        "auroc": auroc,
        "clean_accuracy": metrics.accuracy(clean) if clean else math.nan,
        "clean_nmlp": float(np.mean(clean_nmlp)) if clean_nmlp else math.nan,
    }


def step_cdrl(out: Path, plan: Plan) -> dict[str, Any]:
    """CDRL on the base organism (skipped when ``<out>/cdrl`` already holds the checkpoint)."""
    from catts_graph.organism import organism_path

    target = out / "cdrl"
    summary = target / "cdrl_summary.json"
    if not summary.is_file():
        # Through CDRL's command line, as a user runs it: the library never imports the training
        # package, which sits above it, and the GRPO run gets a process (and memory) of its own.
        command = [
            "cdrl",
            "--config",
            str(training_config(plan.cdrl_config)),
            "--output-dir",
            str(target),
            "--model",
            str(organism_path("base")),
        ]
        if plan.cdrl_steps is not None:
            command += ["--max-steps", str(plan.cdrl_steps)]
        _run_training("cdrl", command, summary)
    return json.loads(summary.read_text())


def training_config(path: str | Path) -> Path:
    """The file a plan's training config names. ``training/configs/NAME`` (how the plan records the
    configs that ship with the training package) is read from wherever that package is installed:
    inside it as ``catts_training/configs/`` in a wheel, beside it in ``training/configs/`` in a source
    checkout; the package is located, not imported. Any other path is read as given."""
    text = str(path)
    if not text.startswith(SHIPPED_CONFIGS):
        return Path(path)
    name = text.removeprefix(SHIPPED_CONFIGS)
    spec = importlib.util.find_spec(TRAINING_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{text}: the training package {TRAINING_PACKAGE} is not installed")
    package = Path(next(iter(spec.submodule_search_locations)))
    for folder in (package / "configs", package.parent / "configs"):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"{text}: not among the configs of {TRAINING_PACKAGE} ({package})")


def _run_training(trainer: str, arguments: list[str], summary: Path) -> None:
    """Run ``python -m catts_training.<trainer>.train ARGUMENTS`` in a process of its own (the library
    never imports the training package, and the run gets its own memory), with this interpreter and
    no working-directory assumption; RuntimeError with its output's tail unless it wrote ``summary``."""
    command = [sys.executable, "-m", f"{TRAINING_PACKAGE}.{trainer}.train", *arguments]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not summary.is_file():
        output = (done.stdout + done.stderr)[-3000:]
        raise RuntimeError(f"{trainer} failed (exit {done.returncode}): {' '.join(command)}\n{output}")


def step_signals(out: Path, plan: Plan) -> dict[str, Any]:
    """Step-level calibration of each step signal of the base organism and of their fusion, with and
    without CLIPScore (the CLIP organism), against the generator's step truth: fitted on
    ``validation_items``, measured on ``probe_items`` test items
    (:func:`~catts_graph.organism.steps.measure_step_calibration`)."""
    from catts_graph.models import TransformersVLM
    from catts_graph.models.encoders import MiniLMEncoder
    from catts_graph.organism import organism_path
    from catts_graph.organism.clip import clip_organism
    from catts_graph.organism.steps import measure_step_calibration

    def compute() -> dict[str, Any]:
        vlm = TransformersVLM.from_pretrained(organism_path("base"), device="cpu")
        return measure_step_calibration(
            vlm,
            validation=plan.validation_items,
            test=plan.probe_items,
            seed=plan.seed,
            similarity=MiniLMEncoder().similarity,
            clip=clip_organism(),
        )

    return _cached(out / "step_signals.json", compute)


def step_mmboundary(out: Path, plan: Plan) -> dict[str, Any]:
    """MMBoundary on the base organism (``catts mmboundary all`` in a process of its own, resumable):
    data, SFT, RL, and the probe of each model on ``probe_items`` items of ``probe_split``; each
    probe's figures with bootstrap intervals over items."""
    import yaml

    from catts_graph.organism import organism_path

    target = out / "mmboundary"
    target.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load(training_config(plan.mmboundary_config).read_text())
    # The shipped base organism wherever the package lies (the config's relative path holds in a
    # checkout's root only), as the CDRL step passes it.
    config["model"] = str(organism_path("base"))
    config["output_dir"] = str(target)
    config["validation"] = {**config["validation"], "limit": plan.validation_items}
    if plan.mmboundary_data_items is not None:
        config["data"] = {**config["data"], "limit": plan.mmboundary_data_items}
    config["probe"] = {
        **(config.get("probe") or {}),
        "benchmark": "synthetic",
        "split": plan.probe_split,
        "limit": plan.probe_items,
    }
    written = target / "config.yaml"
    written.write_text(yaml.safe_dump(config, sort_keys=False))
    summary = target / "mmboundary.json"
    if not summary.is_file():
        command = ["all", "--config", str(written)]
        if plan.mmboundary_pretrain_steps is not None:
            command += ["--pretrain-steps", str(plan.mmboundary_pretrain_steps)]
        if plan.mmboundary_sft_steps is not None:
            command += ["--sft-steps", str(plan.mmboundary_sft_steps)]
        if plan.mmboundary_rl_steps is not None:
            command += ["--rl-steps", str(plan.mmboundary_rl_steps)]
        _run_training("mmboundary", command, summary)
    results = json.loads(summary.read_text())
    reports = {name: json.loads((target / "probe" / f"{name}.json").read_text()) for name in results["probe"]}
    for name, report in reports.items():
        figures = results["probe"][name]
        figures["intervals"] = probe_intervals(report["rows"], report["answers"], figures, plan)
        if name != "base" and "base" in reports:
            figures["accuracy_vs_base"] = paired_accuracy(report["answers"], reports["base"]["answers"], plan)
    return results


def paired_accuracy(answers: dict[str, bool], base: dict[str, bool], plan: Plan) -> dict[str, Any]:
    """Answer accuracy minus the base's on the same items (points), with a paired bootstrap 95%
    interval over the items, and how many items each side alone answers right."""

    if set(answers) != set(base):
        raise ValueError("answers: the probes answered different items; a paired difference needs the same")
    items = sorted(base)
    ours, theirs = [answers[i] for i in items], [base[i] for i in items]
    difference, ci = paired_points(ours, theirs, plan)
    return {
        "difference": difference,
        "ci": ci,
        "fixed": sum(a and not b for a, b in zip(ours, theirs, strict=True)),
        "broken": sum(b and not a for a, b in zip(ours, theirs, strict=True)),
    }


def paired_points(correct: Sequence[bool], other: Sequence[bool], plan: Plan) -> tuple[float, list[float]]:
    """Accuracy of ``correct`` minus ``other`` (the same items, in order), in points, with a paired
    bootstrap 95% interval over the items."""
    from catts_graph.metrics import bootstrap_rows

    rows = np.column_stack([correct, other]).astype(float)
    low, high = bootstrap_rows(rows, lambda r: 100.0 * float(np.mean(r[:, 0] - r[:, 1])), n_boot=plan.n_boot)
    return 100.0 * float(np.mean(rows[:, 0] - rows[:, 1])), [low, high]


def probe_intervals(
    rows: Sequence[dict[str, Any]], answers: dict[str, bool], figures: dict[str, Any], plan: Plan
) -> dict[str, list[float]]:
    """Bootstrap 95% intervals over items (all of an item's steps resampled together) of an MMBoundary
    probe's answer accuracy (``answers``: item id -> correct) and of the ECE and AUROC of its
    expressed and internal levels (the levels' confidences as the probe used them:
    ``figures["level_confidence"]``)."""
    from catts_graph.metrics import auroc, bootstrap_rows, expected_calibration_error

    confidence = figures.get("level_confidence")
    items = list(answers)
    index = {item: k for k, item in enumerate(items)}
    by_item: list[list[dict[str, Any]]] = [[] for _ in items]
    for row in rows:
        by_item[index[row["item"]]].append(row)

    def gather(picked: np.ndarray) -> list[dict[str, Any]]:
        return [row for k in picked for row in by_item[int(k)]]

    def accuracy(picked: np.ndarray) -> float:
        return float(np.mean([answers[items[int(k)]] for k in picked]))

    def calibration(key: str, metric: str) -> Callable[[np.ndarray], float]:
        def statistic(picked: np.ndarray) -> float:
            steps = [
                r
                for r in gather(picked)
                if not r["is_answer"] and r[key] is not None and r["correct"] is not None
            ]
            correct = [bool(r["correct"]) for r in steps]
            if not steps or confidence is None:
                return math.nan
            if metric == "ece":
                return expected_calibration_error([confidence[int(r[key]) - 1] for r in steps], correct)
            if not 0 < sum(correct) < len(correct):
                return math.nan
            score = "fused" if key == "internal" else key
            return auroc([float(r[score]) for r in steps], correct)

        return statistic

    ids = np.arange(len(items), dtype=float).reshape(-1, 1)
    out: dict[str, list[float]] = {}
    statistics = {
        "answer_accuracy": accuracy,
        "expressed_ece": calibration("expressed", "ece"),
        "expressed_auroc": calibration("expressed", "auroc"),
        "internal_ece": calibration("internal", "ece"),
        "internal_auroc": calibration("internal", "auroc"),
    }
    for name, statistic in statistics.items():
        if figures.get(name) is None:
            continue
        low, high = bootstrap_rows(
            ids, lambda rows, f=statistic: f(rows[:, 0].astype(int)), n_boot=plan.n_boot, skip_undefined=True
        )
        out[name] = [low, high]
    return out


def _accuracy_by_n(store_path: Path) -> dict[str, dict[int, dict[str, float]]]:
    """``{method: {n: {"accuracy", "tokens", "expert_calls", "seconds", "items"}}}`` from a run's store."""
    from catts_graph.eval.store import read_store

    with read_store(store_path) as store:
        results = store.results()
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for row in results:
        groups.setdefault((row["method"], int(row["n"])), []).append(row)
    table: dict[str, dict[int, dict[str, float]]] = {}
    for (method, n), rows in sorted(groups.items()):
        table.setdefault(method, {})[n] = {
            "accuracy": 100.0 * sum(r["correct"] for r in rows) / len(rows),
            "tokens": sum(r["tokens"] for r in rows) / len(rows),
            "expert_calls": sum(r["expert_calls"] for r in rows) / len(rows),
            "seconds": sum(r["seconds"] for r in rows) / len(rows),
            "items": len(rows),
        }
    return table


class _Models:
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


def _run(
    out: Path,
    name: str,
    items: Sequence[Any],
    methods: Sequence[str],
    ns: Sequence[int],
    *,
    base: Any,
    expert: Any,
    expert_name: str,
    plan: Plan,
    config: Any,
) -> Path:
    """Evaluate ``methods`` at ``ns`` on ``items`` (resumable store ``<out>/<name>``); its path."""
    from rich.console import Console

    from catts_graph.eval.runner import run_eval
    from catts_graph.organism.expert import OrganismExpert

    return run_eval(
        items,
        methods=methods,
        ns=ns,
        base_model=base,
        expert=OrganismExpert(vlm=expert),
        run_dir=out / name,
        seed=plan.seed,
        concurrency=plan.concurrency,
        config=config,
        model_name="organism:base",
        expert_name=f"organism:{expert_name}",
        console=Console(stderr=True, quiet=True),
    )


def step_thresholds(out: Path, plan: Plan, models: _Models) -> dict[str, Any]:
    """Grid-search the adaptive fast path on the validation split; pick the cheapest setting within
    one point of the best accuracy (ties: fewer tokens). Every grid point sees the same seeded
    samples (one pool drawing per item, kept in memory for the search)."""
    from catts_graph.models.replay import ReplayVLM

    items = _items("validation", plan.validation_items, plan.seed)
    base = ReplayVLM(models.get("base"), memo_max_n=plan.threshold_n)
    expert = models.get("expert")
    grid = []
    for share in plan.threshold_grid["fast_path_share"]:
        for confidence in plan.threshold_grid["fast_path_confidence"]:
            config = _config(fast_path_share=share, fast_path_confidence=confidence)
            table = _accuracy_by_n(
                _run(
                    out / "thresholds",
                    f"share{share:g}-conf{confidence:g}",
                    items,
                    ["catts_adaptive"],
                    [plan.threshold_n],
                    base=base,
                    expert=expert,
                    expert_name="expert",
                    plan=plan,
                    config=config,
                )
            )
            cell = table["catts_adaptive"][plan.threshold_n]
            grid.append({"fast_path_share": share, "fast_path_confidence": confidence, **cell})
    best = max(cell["accuracy"] for cell in grid)
    chosen = min(
        (cell for cell in grid if cell["accuracy"] >= best - 1.0), key=lambda c: (c["tokens"], -c["accuracy"])
    )
    return {
        "grid": grid,
        "chosen": {
            "fast_path_share": chosen["fast_path_share"],
            "fast_path_confidence": chosen["fast_path_confidence"],
        },
        "n": plan.threshold_n,
        "items": len(items),
    }


def method_items(
    store_path: Path, items: Sequence[Any], methods: Sequence[str], ns: Sequence[int], plan: Plan, config: Any
) -> dict[str, dict[str, dict[str, list[float]]]]:
    """Per method and N, per item (in ``items``' order): ``correct`` (0-1), ``tokens`` and
    ``expert_calls``.

    The CA-TTS methods are read from the run's rows (the pool's first N samples). The offline
    methods are recomputed from the stored pools and averaged over ``plan.subsets`` random size-N
    subsets of each pool (seeded per item and N; at N = the pool's size, the whole pool once): one
    draw order would make every N below 32 depend on which samples happened to come first.
    """
    from catts_graph.eval.methods import SamplePool, parse_method, run_offline
    from catts_graph.eval.scoring import judge_answer
    from catts_graph.eval.store import read_store
    from catts_graph.task import item_seed

    table: dict[str, dict[str, dict[str, list[float]]]] = {
        m: {str(n): {"correct": [], "tokens": [], "expert_calls": []} for n in ns} for m in methods
    }
    with read_store(store_path) as store:
        rows = {(r["item_id"], r["method"], int(r["n"])): r for r in store.results()}
        pools = {item.id: SamplePool.from_records(store.get_pool(item.id) or []) for item in items}
    for item in items:
        pool = pools[item.id]
        for method in methods:
            spec = parse_method(method)
            for n in ns:
                cell = table[method][str(n)]
                if spec.kind == "catts":
                    row = rows[item.id, method, n]
                    cell["correct"].append(float(row["correct"]))
                    cell["tokens"].append(float(row["tokens"]))
                    cell["expert_calls"].append(float(row["expert_calls"]))
                    continue
                size = len(pool.records)
                rng = np.random.default_rng([item_seed(plan.seed, item.id), n])
                orders = (
                    [list(range(size))]
                    if n >= size
                    else [rng.permutation(size)[:n].tolist() for _ in range(plan.subsets)]
                )
                correct = tokens = 0.0
                for order in orders:
                    subset = dataclasses.replace(pool, records=[pool.records[i] for i in order])
                    result = run_offline(spec, subset, n, config)
                    correct += judge_answer(item, result.answer, result.response).correct
                    tokens += result.tokens
                cell["correct"].append(correct / len(orders))
                cell["tokens"].append(tokens / len(orders))
                cell["expert_calls"].append(0.0)
    return table


def summarise_methods(
    per_item: dict[str, dict[str, dict[str, list[float]]]], plan: Plan
) -> dict[str, dict[str, dict[str, Any]]]:
    """``{method: {n: {"accuracy", "ci", "tokens", "expert_calls", "items"}}}``, accuracy in points."""
    return {
        method: {
            n: {
                "accuracy": 100.0 * float(np.mean(cell["correct"])),
                "ci": [100.0 * v for v in interval(cell["correct"], plan)],
                "tokens": float(np.mean(cell["tokens"])),
                "expert_calls": float(np.mean(cell["expert_calls"])),
                "items": len(cell["correct"]),
            }
            for n, cell in per_n.items()
        }
        for method, per_n in per_item.items()
    }


def labelled(per_items: dict[str, Any]) -> dict[str, dict[str, dict[str, list[float]]]]:
    """The scaling runs' methods (``{expert: {method: ...}}``) under their row names (:func:`_label`)."""
    return {
        _label(method, expert): per_n
        for expert, table in per_items.items()
        for method, per_n in table.items()
    }


def slopes(
    per_item: dict[str, dict[str, dict[str, list[float]]]], plan: Plan, reference: str = "majority"
) -> dict[str, dict[str, Any]]:
    """Each method's accuracy slope in points per doubling of N (:func:`metrics.scaling_slope` of the
    mean accuracies), its interval with the items resampled jointly across N, and its ratio to
    ``reference``'s slope, resampled jointly with it (the same items in every resample)."""
    from catts_graph import metrics

    nan_pair = [math.nan, math.nan]
    result: dict[str, dict[str, Any]] = {}
    for method, per_n in per_item.items():
        ns = sorted(int(n) for n in per_n)
        entry: dict[str, Any] = {"slope": math.nan, "ci": nan_pair, "ratio": math.nan, "ratio_ci": nan_pair}
        result[method] = entry
        if len(ns) < 2:
            continue
        width = len(ns)

        def slope(rows: np.ndarray, ns: list[int] = ns) -> float:
            return metrics.scaling_slope(ns, rows.mean(axis=0))

        def ratio(rows: np.ndarray, width: int = width) -> float:
            below = slope(rows[:, width:])
            return slope(rows[:, :width]) / below if below else math.nan

        own = 100.0 * np.array([per_n[str(n)]["correct"] for n in ns]).T
        entry["slope"] = slope(own)
        entry["ci"] = list(metrics.bootstrap_rows(own, slope, n_boot=plan.n_boot))
        if reference in per_item and all(str(n) in per_item[reference] for n in ns):
            joint = np.hstack([own, 100.0 * np.array([per_item[reference][str(n)]["correct"] for n in ns]).T])
            entry["ratio"] = ratio(joint)
            entry["ratio_ci"] = list(metrics.bootstrap_rows(joint, ratio, n_boot=plan.n_boot))
    return result


def savings(
    per_item: dict[str, dict[str, dict[str, list[float]]]], plan: Plan, reference: str = "majority"
) -> list[dict[str, Any]]:
    """Each adaptive policy against ``reference`` at N = ``plan.ablation_n`` (8): the accuracy
    difference in points and the share of base tokens saved, each with its interval (items
    resampled jointly), and the cheapest N at which adaptive reaches the reference's accuracy."""
    from catts_graph.metrics import bootstrap_rows

    n = str(plan.ablation_n)
    if reference not in per_item or n not in per_item[reference]:
        return []
    ref = per_item[reference][n]
    ref_accuracy = 100.0 * float(np.mean(ref["correct"]))
    ref_tokens = float(np.mean(ref["tokens"]))

    def difference(rows: np.ndarray) -> float:
        return float(rows[:, 0].mean() - rows[:, 1].mean())

    def saved(rows: np.ndarray) -> float:
        return float(1.0 - rows[:, 0].mean() / rows[:, 1].mean())

    result = []
    for label, per_n in per_item.items():
        if not label.startswith("catts_adaptive") or n not in per_n:
            continue
        own = per_n[n]
        correct = 100.0 * np.column_stack([own["correct"], ref["correct"]])
        tokens = np.column_stack([own["tokens"], ref["tokens"]])
        reaching = [m for m in sorted(per_n, key=int) if 100.0 * np.mean(per_n[m]["correct"]) >= ref_accuracy]
        result.append(
            {
                "method": label,
                "n": plan.ablation_n,
                "accuracy": 100.0 * float(np.mean(own["correct"])),
                "reference_accuracy": ref_accuracy,
                "difference": difference(correct),
                "difference_ci": list(bootstrap_rows(correct, difference, n_boot=plan.n_boot)),
                "tokens": float(np.mean(own["tokens"])),
                "reference_tokens": ref_tokens,
                "saved": saved(tokens),
                "saved_ci": list(bootstrap_rows(tokens, saved, n_boot=plan.n_boot)),
                "matching_n": int(reaching[0]) if reaching else None,
                "matching_saved": (
                    1.0 - float(np.mean(per_n[reaching[0]]["tokens"])) / ref_tokens if reaching else None
                ),
            }
        )
    return result


def step_scaling(out: Path, plan: Plan, models: _Models, thresholds: dict[str, float]) -> dict[str, Any]:
    """Test-time scaling on the test split: ``{"self" | "expert": {method: {n: per-item lists}}}``
    (:func:`method_items`), the base organism as its own expert or the expert organism."""
    items = _items("test", plan.test_items, plan.seed)
    config = _config(**thresholds)
    base = models.get("base")
    result = {}
    for expert, methods in (("self", SCALING_METHODS), ("expert", EXPERT_METHODS)):
        name = f"scaling-{expert}"
        path = _run(
            out,
            name,
            items,
            methods,
            plan.ns,
            base=base,
            expert=base if expert == "self" else models.get("expert"),
            expert_name="base" if expert == "self" else "expert",
            plan=plan,
            config=config,
        )
        result[expert] = _cached(
            out / f"{name}-items.json",
            lambda path=path, methods=methods: method_items(path, items, methods, plan.ns, plan, config),
        )
    return result


def step_repair_comparison(
    out: Path, plan: Plan, models: _Models, thresholds: dict[str, float]
) -> dict[str, Any]:
    """MMBoundary's ``step_repair`` in the adaptive policy against the adaptive policy without it
    (expert organism, the chosen thresholds): the step floor searched on validation at
    ``threshold_n`` (best accuracy, ties: fewer tokens), then on the test items at ``ablation_n``:
    adaptive, adaptive with the floor but the repair disabled (the same routing and expert calls),
    adaptive with ``step_repair``; accuracy, base tokens and expert calls per item, and the paired
    differences. Every run's first wave is half the budget: ``step_repair`` draws from the budget the
    first wave leaves (with the whole budget in the first wave it never runs)."""
    from catts_graph.models.replay import ReplayVLM

    validation = _items("validation", plan.validation_items, plan.seed)
    base = ReplayVLM(models.get("base"), memo_max_n=plan.threshold_n)
    grid = []
    for floor in (None, *STEP_FLOORS):
        config = _config(**thresholds, step_floor=floor, n_samples=max(1, plan.threshold_n // 2))
        name = "off" if floor is None else f"floor{floor:g}"
        table = _accuracy_by_n(
            _run(
                out / "step-repair-validation",
                name,
                validation,
                ["catts_adaptive"],
                [plan.threshold_n],
                base=base,
                expert=models.get("expert"),
                expert_name="expert",
                plan=plan,
                config=config,
            )
        )
        grid.append({"step_floor": floor, **table["catts_adaptive"][plan.threshold_n]})
    floors = [cell for cell in grid if cell["step_floor"] is not None]
    chosen = max(floors, key=lambda c: (c["accuracy"], -c["tokens"]))["step_floor"]
    items = _items("test", plan.test_items, plan.seed)
    rows: dict[str, Any] = {}
    per_item: dict[str, dict[str, list[float]]] = {}
    runs = (
        ("adaptive", None, (), "step-repair-off"),
        ("adaptive + step floor, no repair", chosen, ("step_repair",), "step-floor-only"),
        ("adaptive + step_repair", chosen, (), "step-repair"),
    )
    for label, floor, disabled, name in runs:
        config = _config(
            **thresholds,
            step_floor=floor,
            disabled_modules=disabled,
            n_samples=max(1, plan.ablation_n // 2),
        )
        path = _run(
            out,
            name,
            items,
            ["catts_adaptive"],
            [plan.ablation_n],
            base=models.get("base"),
            expert=models.get("expert"),
            expert_name="expert",
            plan=plan,
            config=config,
        )
        cells = method_items(path, items, ["catts_adaptive"], [plan.ablation_n], plan, config)
        per_item[label] = cells["catts_adaptive"][str(plan.ablation_n)]
        rows[label] = summarise_methods(cells, plan)["catts_adaptive"][str(plan.ablation_n)]

    def paired(other: str) -> tuple[float, list[float]]:
        return paired_points(per_item["adaptive + step_repair"]["correct"], per_item[other]["correct"], plan)

    difference, difference_ci = paired("adaptive")
    # The floor alone routes the same items off the fast path (the same expert calls): what
    # step_repair itself adds.
    own, own_ci = paired("adaptive + step floor, no repair")
    return {
        "grid": grid,
        "chosen": chosen,
        "n": plan.ablation_n,
        "rows": rows,
        "difference": difference,
        "difference_ci": difference_ci,
        "repair_difference": own,
        "repair_difference_ci": own_ci,
    }


def step_reflection(out: Path, plan: Plan, models: _Models) -> dict[str, Any]:
    """What the base organism's reflection on the expert organism's critique adds
    (:func:`~catts_graph.organism.reflection.reflection_effect`, ``test_items`` test items): accuracy
    before and after (the reflected answer where the expert's verdict was ``incorrect``), with an
    oracle critic beside it, intervals, and the paired difference."""
    from catts_graph.metrics import bootstrap_rows
    from catts_graph.organism.reflection import reflection_effect

    effect = _cached(
        out / "reflection.json",
        lambda: reflection_effect(
            models.get("base"), models.get("expert"), split="test", limit=plan.test_items, seed=plan.seed
        ),
    )
    rows = effect["rows"]
    paired = np.array([[r["before"], r["after"], r["after_oracle"]] for r in rows], dtype=float)
    summary = {k: v for k, v in effect.items() if k != "rows"}
    for column, name in ((0, "accuracy_before"), (1, "accuracy_after"), (2, "accuracy_after_oracle")):
        summary[f"{name}_ci"] = interval(paired[:, column].tolist(), plan)
    summary["difference"] = float(np.mean(paired[:, 1] - paired[:, 0]))
    summary["difference_ci"] = list(
        bootstrap_rows(paired, lambda r: float(np.mean(r[:, 1] - r[:, 0])), n_boot=plan.n_boot)
    )
    return summary


def step_ablations(out: Path, plan: Plan, models: _Models, thresholds: dict[str, float]) -> dict[str, Any]:
    """CA-TTS (paper policy, expert organism) without each module or boost, at ``plan.ablation_n``."""
    items = _items("test", plan.test_items, plan.seed)
    config = _config(**thresholds)
    path = _run(
        out,
        "ablations",
        items,
        ABLATIONS,
        [plan.ablation_n],
        base=models.get("base"),
        expert=models.get("expert"),
        expert_name="expert",
        plan=plan,
        config=config,
    )
    table = summarise_methods(method_items(path, items, ABLATIONS, [plan.ablation_n], plan, config), plan)
    return {method: table[method][str(plan.ablation_n)] for method in ABLATIONS}


# -- summary --------------------------------------------------------------------------------------


def drop_ratios(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per perturbation and level above 0: the confidence drop before and after CDRL and their ratio
    (the paper's 4.3x for noise and 4.7x for occlusion), in ``exp(-NMLP)`` and NMLP units. A ratio
    above 1 means CDRL made confidence fall further; with no drop before, the ratio is NaN."""
    result = []
    for old in before:
        if old["level"] == 0:
            continue
        new = next(r for r in after if r["perturb"] == old["perturb"] and r["level"] == old["level"])
        entry: dict[str, Any] = {"perturb": old["perturb"], "level": old["level"]}
        for unit, key in (("confidence", "confidence_drop"), ("nmlp", "confidence_drop_nmlp")):
            entry[f"{unit}_drop_before"] = old[key]
            entry[f"{unit}_drop_after"] = new[key]
            entry[f"{unit}_ratio"] = new[key] / old[key] if old[key] else math.nan
        result.append(entry)
    return result


def _label(method: str, expert: str) -> str:
    """A method's row name: CA-TTS rows say which organism was the expert."""
    if method.startswith(("majority", "deepconf")):
        return method
    return f"{method} ({'base as its own expert' if expert == 'self' else 'expert organism'})"


def _cost_table(headers: Sequence[str], cells: dict[str, dict[str, Any]]) -> list[str]:
    """One row per method: accuracy (points) with its interval, tokens and expert calls per item."""
    return _md(
        headers,
        [
            [
                name,
                with_interval(c["accuracy"], c.get("ci"), 1),
                number(c["tokens"], 0),
                number(c["expert_calls"], 2),
            ]
            for name, c in cells.items()
        ],
    )


def _md(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    return [*markdown_table(headers, rows).splitlines(), ""]


def render_markdown(results: dict[str, Any]) -> str:
    """The result tables of ``docs/organism.md``, from ``results.json``. Brackets are 95% bootstrap
    intervals over the items."""
    lines: list[str] = []
    plan = results["plan"]
    models = results["models"]
    kinds = [k for k in models["base"]["clean"] if k != "all"]
    lines.append(
        f"### The organisms (greedy, {plan['model_items']} test items; fresh: seed {plan['fresh_seed']})"
    )
    lines += _md(
        [
            "model",
            "params",
            "clean acc",
            "fresh-seed acc",
            "conf (reply)",
            "conf (answer)",
            "noised acc",
            "noised conf (reply)",
            "noised conf (answer)",
        ],
        [
            [
                which,
                f"{row['parameters'] / 1e6:.2f}M",
                with_interval(row["clean"]["all"]["accuracy"], row["clean"]["all"].get("ci")),
                with_interval(row["fresh"]["all"]["accuracy"], row["fresh"]["all"].get("ci")),
                number(row["clean"]["all"]["confidence"]),
                number(row["clean"]["all"]["answer_confidence"]),
                with_interval(row["noise"]["all"]["accuracy"], row["noise"]["all"].get("ci")),
                number(row["noise"]["all"]["confidence"]),
                number(row["noise"]["all"]["answer_confidence"]),
            ]
            for which, row in models.items()
        ],
    )
    lines.append("Per question kind (clean accuracy; answer-span confidence):")
    lines.append("")
    lines += _md(
        ["model", *kinds],
        [
            [
                which,
                *(
                    f"{with_interval(row['clean'][k]['accuracy'], row['clean'][k].get('ci'), 2)}; "
                    f"{number(row['clean'][k]['answer_confidence'], 2)}"
                    for k in kinds
                ),
            ]
            for which, row in models.items()
        ],
    )
    if "clip" in results:
        lines.append(
            f"### CLIP relevance on the named object ({plan['probe_items']} test items: colour, count "
            "and position questions)"
        )
        kinds = ("colour", "count", "position")
        lines += _md(
            ["CLIP", "mass on the object", "object's area", "lift (mass / area per item)", *kinds],
            [
                [
                    name,
                    number(row["mass"]),
                    number(row["area"]),
                    number(row["lift"], 2),
                    *(number(row["kinds"].get(kind, math.nan), 2) for kind in kinds),
                ]
                for name, row in results["clip"].items()
            ],
        )
    lines.append(
        f"### Probe: accuracy and confidence as the image is taken away ({plan['probe_items']} test items)"
    )
    probe_rows = []
    for name in ("before", "after"):
        for row in results["probe"][name]:
            probe_rows.append(
                [
                    "base" if name == "before" else "base + CDRL",
                    row["perturb"],
                    number(row["level"], 2),
                    with_interval(row["accuracy"], row.get("accuracy_ci")),
                    number(row["mean_confidence"]),
                    number(row["confidence_drop"]),
                    number(row["confidence_drop_nmlp"]),
                ]
            )
    lines += _md(
        ["model", "perturbation", "level", "accuracy", "confidence", "drop", "drop (NMLP)"], probe_rows
    )
    lines += cdrl_section(results)
    lines.append("")
    thresholds = results["thresholds"]
    lines.append(
        f"### Adaptive thresholds (validation split, {thresholds['items']} items, N={thresholds['n']}, "
        "expert organism)"
    )
    lines += _md(
        ["fast_path_share", "fast_path_confidence", "accuracy", "tokens", "expert calls"],
        [
            [
                number(c["fast_path_share"], 2),
                number(c["fast_path_confidence"], 2),
                number(c["accuracy"], 1),
                number(c["tokens"], 0),
                number(c["expert_calls"], 2),
            ]
            for c in thresholds["grid"]
        ],
    )
    chosen = thresholds["chosen"]
    lines.append(
        f"Chosen: fast_path_share = {chosen['fast_path_share']:g}, "
        f"fast_path_confidence = {chosen['fast_path_confidence']:g}"
    )
    lines.append("")
    lines.append(
        f"### Test-time scaling ({plan['test_items']} test items, accuracy %; majority and DeepConf "
        f"averaged over {plan['subsets']} random size-N subsets of each item's 32 samples)"
    )
    ns = sorted(
        {n for table in results["scaling"].values() for per_n in table.values() for n in map(int, per_n)}
    )
    scaling_rows = []
    for expert, table in results["scaling"].items():
        for method, per_n in table.items():
            label = _label(method, expert)
            fitted = results["slopes"][label]
            scaling_rows.append(
                [
                    label,
                    *(
                        with_interval(per_n[str(n)]["accuracy"], per_n[str(n)]["ci"], 1)
                        if str(n) in per_n
                        else "n/a"
                        for n in ns
                    ),
                    with_interval(fitted["slope"], fitted["ci"], 2),
                    with_interval(fitted["ratio"], fitted["ratio_ci"], 2),
                ]
            )
    lines += _md(
        ["method", *(f"N={n}" for n in ns), "slope (pts / doubling)", "slope / majority's"], scaling_rows
    )
    lines.append("### Cost: mean base-model tokens and expert calls per item")
    cost_rows = []
    for expert, table in results["scaling"].items():
        for method, per_n in table.items():
            cost_rows.append(
                [
                    _label(method, expert),
                    *(
                        f"{number(per_n[str(n)]['tokens'], 0)} / {number(per_n[str(n)]['expert_calls'], 1)}"
                        for n in ns
                    ),
                ]
            )
    lines += _md(["method", *(f"N={n}" for n in ns)], cost_rows)
    if results.get("savings"):
        n = results["savings"][0]["n"]
        lines.append(f"### The adaptive policy against majority voting at N={n}")
        lines += _md(
            [
                "method",
                "accuracy",
                f"majority N={n}",
                "difference (pts)",
                "tokens",
                f"majority N={n} tokens",
                "tokens saved",
                "cheapest N reaching majority's accuracy (tokens saved)",
            ],
            [
                [
                    s["method"],
                    number(s["accuracy"], 1),
                    number(s["reference_accuracy"], 1),
                    with_interval(s["difference"], s["difference_ci"], 1),
                    number(s["tokens"], 0),
                    number(s["reference_tokens"], 0),
                    with_interval(s["saved"], s["saved_ci"], 2),
                    "none"
                    if s["matching_n"] is None
                    else f"N={s['matching_n']} ({number(s['matching_saved'], 2)})",
                ]
                for s in results["savings"]
            ],
        )
    lines.append(f"### Ablations (expert organism, N={plan['ablation_n']}, {plan['test_items']} test items)")
    lines += _cost_table(["method", "accuracy", "tokens", "expert calls"], results["ablations"])
    lines += reflection_section(results)
    lines += mmboundary_section(results)
    return "\n".join(lines).rstrip() + "\n"


def reflection_section(results: dict[str, Any]) -> list[str]:
    """The base organism's reflection on the expert organism's critiques."""
    effect = results.get("reflection")
    if not effect:
        return []
    return [
        f"### Self-reflection on the expert's critique ({effect['items']} test items, greedy)",
        *_md(
            ["", "accuracy", "criticised", "fixed", "broken"],
            [
                [
                    "base organism",
                    with_interval(effect["accuracy_before"], effect["accuracy_before_ci"]),
                    "",
                    "",
                    "",
                ],
                [
                    "after reflecting on the expert organism's critique",
                    with_interval(effect["accuracy_after"], effect["accuracy_after_ci"]),
                    str(effect["criticised"]),
                    str(effect["fixed"]),
                    str(effect["broken"]),
                ],
                [
                    "the same with the true wrong step named (oracle critic)",
                    with_interval(effect["accuracy_after_oracle"], effect["accuracy_after_oracle_ci"]),
                    "",
                    "",
                    "",
                ],
            ],
        ),
        f"Reflection minus base: {with_interval(effect['difference'], effect['difference_ci'])} (paired).",
        "",
    ]


def mmboundary_section(results: dict[str, Any]) -> list[str]:
    """The step-level confidence tables: each signal against the step truth, and the MMBoundary
    probe of the base, SFT and RL models."""
    lines: list[str] = []
    plan = results["plan"]
    signals = results.get("step_signals")
    if signals:
        weights = ", ".join(f"{k} {v:.2f}" for k, v in signals["calibrator"]["weights"].items())
        lines.append(
            f"### Step signals of the base organism against the step truth ({signals['steps']['test']} "
            f"test steps of {plan['probe_items']} items; levels fitted on {signals['steps']['validation']} "
            f"validation steps)"
        )
        rows = [[name, number(v["ece"]), number(v["auroc"])] for name, v in signals["signals"].items()]
        rows.append(
            [f"fused ({weights})", number(signals["fused"]["ece"]), number(signals["fused"]["auroc"])]
        )
        if "fused_without_clip" in signals:
            without = signals["fused_without_clip"]
            rows.append(["fused without clipscore", number(without["ece"]), number(without["auroc"])])
        lines += _md(["signal", "step ECE (level-mapped)", "step AUROC"], rows)
        lines.append(f"Test step accuracy {number(signals['step_accuracy'])}.")
        lines.append("")
    mmb = results.get("mmboundary")
    if mmb:
        lines.append(
            f"### MMBoundary: stated step confidence ({plan['probe_items']} {plan['probe_split']} items, "
            "greedy; levels' confidences measured on validation)"
        )
        rows = []
        for name, label in (
            ("base", "base organism"),
            ("pretrained", "+ statement pre-training"),
            ("sft", "+ SFT"),
            ("rl", "+ SFT + RL"),
        ):
            f = mmb["probe"].get(name)
            if f is None:
                continue
            ci = f.get("intervals", {})
            counts = f.get("expressed_counts") or []
            paired = f.get("accuracy_vs_base")
            rows.append(
                [
                    label,
                    with_interval(f["answer_accuracy"], ci.get("answer_accuracy")),
                    "n/a" if paired is None else with_interval(paired["difference"], paired["ci"], 1),
                    number(f["step_accuracy"]),
                    number(f["parsed_share"]) if f["statement_steps"] and name != "base" else "n/a",
                    number(f["expressed_entropy"]) if any(counts) else "n/a",
                    " / ".join(str(c) for c in counts) if any(counts) else "n/a",
                    with_interval(f["expressed_ece"], ci.get("expressed_ece")),
                    with_interval(f["expressed_auroc"], ci.get("expressed_auroc")),
                    with_interval(f["internal_ece"], ci.get("internal_ece")),
                    with_interval(f["internal_auroc"], ci.get("internal_auroc")),
                ]
            )
        lines += _md(
            [
                "model",
                "answer accuracy",
                "vs base (points, paired)",
                "step accuracy",
                "parsed",
                "level entropy (nats)",
                "levels 1..5",
                "expressed ECE",
                "expressed AUROC",
                "internal ECE",
                "internal AUROC",
            ],
            rows,
        )
        seconds = {stage: mmb[stage]["seconds"] for stage in ("sft", "rl") if stage in mmb}
        sft, rl = mmb.get("sft", {}), mmb.get("rl", {})
        pretrain = mmb.get("pretrain")
        before = (
            f"statement pre-training {pretrain['steps']} steps ({number(pretrain['seconds'], 0)} s, "
            f"levels 1..5 stated {' / '.join(str(c) for c in pretrain['level_counts'])}), "
            if pretrain
            else ""
        )
        lines.append(
            f"Training: {before}{mmb['data']['examples']} stated replies; SFT {sft.get('steps')} steps "
            f"({number(seconds.get('sft', math.nan), 0)} s), RL {rl.get('steps')} steps "
            f"({number(seconds.get('rl', math.nan), 0)} s)."
        )
        lines.append("")
    repair = results.get("step_repair")
    if repair:
        n = repair["n"]
        lines.append(
            f"### Step repair in the adaptive policy (expert organism, N={n}, "
            f"{plan.get('test_items')} test items)"
        )
        lines += _cost_table(["policy", "accuracy", "base tokens", "expert calls"], repair["rows"])
        searched = ", ".join(
            f"{'off' if c['step_floor'] is None else number(c['step_floor'], 2)} {number(c['accuracy'], 1)}"
            for c in repair["grid"]
        )
        lines.append(
            f"Step floor chosen on validation: {number(repair['chosen'], 2)} (accuracy by floor: "
            f"{searched}); step_repair minus adaptive: "
            f"{with_interval(repair['difference'], repair['difference_ci'], 1)} points"
            + (
                "; minus the same floor without the repair (the same routing): "
                f"{with_interval(repair['repair_difference'], repair['repair_difference_ci'], 1)} points."
                if "repair_difference" in repair
                else "."
            )
        )
        lines.append("")
    return lines


def cdrl_section(results: dict[str, Any]) -> list[str]:
    """The CDRL tables: confidence-drop ratios and calibration before/after, and the run's rewards."""
    lines: list[str] = []
    lines.append(
        "### CDRL: confidence-drop ratio (drop after / drop before, each on the model's own answers)"
    )
    lines += _md(
        [
            "perturbation",
            "level",
            "NMLP drop before",
            "NMLP drop after",
            "NMLP ratio",
            "exp(-NMLP) drop before",
            "exp(-NMLP) drop after",
            "exp(-NMLP) ratio",
        ],
        [
            [
                r["perturb"],
                number(r["level"], 2),
                number(r["nmlp_drop_before"]),
                number(r["nmlp_drop_after"]),
                with_interval(r["nmlp_ratio"], r.get("nmlp_ratio_ci"), 2),
                number(r["confidence_drop_before"]),
                number(r["confidence_drop_after"]),
                with_interval(r["confidence_ratio"], r.get("confidence_ratio_ci"), 2),
            ]
            for r in results["ratios"]
        ],
    )
    lines.append("### CDRL: calibration over every probe row")
    calibration = results["calibration"]
    lines += _md(
        ["model", "clean accuracy", "clean NMLP", "ECE", "AUROC", "rows"],
        [
            [
                label,
                number(c["clean_accuracy"]),
                number(c.get("clean_nmlp")),
                number(c["ece"]),
                number(c["auroc"]),
                c["rows"],
            ]
            for label, c in (("base", calibration["before"]), ("base + CDRL", calibration["after"]))
        ],
    )
    rewards = results["cdrl"].get("reward_means", {})
    lines.append(
        f"CDRL: {results['cdrl']['steps']} GRPO steps in {results['cdrl']['seconds']:.0f} s; mean rewards "
        + ", ".join(f"{k} {v:.4g}" for k, v in rewards.items())
    )
    metrics = results["cdrl"].get("metric_means", {})
    if metrics:
        lines.append("")
        lines.append(
            "Logged during training (means over steps): "
            + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        )
    return lines


def cdrl_comparison(
    out: Path, plan: Plan, before: list[dict[str, Any]], after: list[dict[str, Any]]
) -> dict[str, Any]:
    """:func:`compare_probes` of the stores ``probe-base`` and ``probe-cdrl`` in ``out``."""
    return compare_probes(before, after, out / "probe-base.sqlite", out / "probe-cdrl.sqlite", plan)


def compare_probes(
    before: list[dict[str, Any]],
    after: list[dict[str, Any]],
    before_store: Path,
    after_store: Path,
    plan: Plan,
) -> dict[str, Any]:
    """``{"ratios", "calibration"}``: the drop ratios of two probes (summary rows ``before`` and
    ``after``, stores ``before_store`` and ``after_store``) with their intervals, and each probe's
    pooled calibration, clean accuracy and clean NMLP."""
    ratios = ratio_intervals(
        drop_ratios(before, after), probe_cells(before_store), probe_cells(after_store), plan
    )
    return {
        "ratios": ratios,
        "calibration": {"before": pooled_calibration(before_store), "after": pooled_calibration(after_store)},
    }


def cdrl_effect(out: str | Path, plan: Plan, *, log: Callable[[str], None] = _log) -> dict[str, Any]:
    """CDRL alone: the probe on the base organism, CDRL, the probe on the result, the drop ratios and
    calibration (``catts organism cdrl``); resumable in ``out`` like :func:`reproduce`."""
    from catts_graph.organism import organism_path

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _check_plan(out, plan)
    log("[probe before CDRL] ...")
    before = step_probe(out, plan, "base", organism_path("base"))
    log("[cdrl] ...")
    cdrl = step_cdrl(out, plan)
    log("[probe after CDRL] ...")
    after = step_probe(out, plan, "cdrl", out / "cdrl")
    results = _json_ready(
        {
            "plan": dataclasses.asdict(plan),
            "cdrl": cdrl,
            **cdrl_comparison(out, plan, before, after),
        }
    )
    (out / "cdrl.json").write_text(json.dumps(results, indent=2) + "\n")
    markdown = "\n".join(cdrl_section(results)) + "\n"
    (out / "cdrl.md").write_text(markdown)
    log(markdown)
    return results


def _json_ready(value: Any) -> Any:
    """NaN -> None and int keys -> str, so ``results.json`` is strict JSON and reloads identically."""
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _figures(out: Path, results: dict[str, Any]) -> list[Path]:
    from matplotlib.figure import Figure

    from catts_graph.eval.plots import ScalingCurve, plot_probe, plot_scaling
    from catts_graph.eval.probe import ProbeSummaryRow

    folder = out / "figures"
    folder.mkdir(exist_ok=True)
    written = []
    fields = {f.name for f in dataclasses.fields(ProbeSummaryRow)}
    for name in ("before", "after"):
        rows = [
            ProbeSummaryRow(**{k: (math.nan if v is None else v) for k, v in r.items() if k in fields})
            for r in results["probe"][name]
        ]
        written.append(plot_probe(rows, folder / f"probe_{name}.png"))
    curves = {}
    for expert, table in results["scaling"].items():
        for method, per_n in table.items():
            label = _label(method, expert)
            ns = sorted(int(n) for n in per_n)
            curves[label] = ScalingCurve(ns=ns, accuracy=[per_n[str(n)]["accuracy"] for n in ns])
    written.append(plot_scaling(curves, folder / "scaling.png"))
    figure = Figure(figsize=(6.5, 4.2), layout="constrained")
    ax = figure.subplots()
    for expert, table in results["scaling"].items():
        for method, per_n in table.items():
            label = _label(method, expert)
            ns = sorted(int(n) for n in per_n)
            ax.plot(
                [per_n[str(n)]["tokens"] for n in ns],
                [per_n[str(n)]["accuracy"] for n in ns],
                marker="o",
                label=label,
            )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("generated tokens per item (base model)")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    path = folder / "accuracy_vs_tokens.png"
    figure.savefig(path, dpi=120)
    written.append(path)
    return written


def _check_plan(out: Path, plan: Plan) -> None:
    """A run folder belongs to one plan: resuming it with another would mix their rows."""
    path = out / "plan.json"
    current = _json_ready(dataclasses.asdict(plan))
    if path.is_file():
        stored = json.loads(path.read_text())
        # A field added to Plan since the run started reads as its default there.
        defaults = {
            f.name: _json_ready(f.default)
            for f in dataclasses.fields(Plan)
            if f.default is not dataclasses.MISSING
        }
        changed = sorted(
            k for k in set(stored) | set(current) if stored.get(k, defaults.get(k)) != current.get(k)
        )
        if changed:
            raise ValueError(f"{out} holds a run with another plan (differs in {changed}); use a new --out")
    path.write_text(json.dumps(current, indent=2) + "\n")


def reproduce(
    out: str | Path, plan: Plan | None = None, *, log: Callable[[str], None] = _log
) -> dict[str, Any]:
    """Run every step (resuming what ``out`` holds) and write ``results.json``, ``results.md`` and
    ``figures/``; returns the results."""
    import torch

    plan = plan or Plan()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_flush_denormal(True)
    _check_plan(out, plan)
    # Seconds spent per step, summed over every invocation on this folder: a resumed run adds
    # what it computed, so the total is the whole reproduction's cost however often it stopped.
    timings_path = out / "timings.json"
    timings: dict[str, float] = json.loads(timings_path.read_text()) if timings_path.is_file() else {}

    def timed(name: str, work: Callable[[], Any]) -> Any:
        t0 = time.monotonic()
        log(f"[{name}] ...")
        value = work()
        spent = time.monotonic() - t0
        timings[name] = round(timings.get(name, 0.0) + spent, 1)
        timings_path.write_text(json.dumps(timings, indent=2) + "\n")
        log(f"[{name}] done in {spent:.0f} s")
        return value

    from catts_graph.organism import organism_path

    results: dict[str, Any] = {"plan": dataclasses.asdict(plan)}
    results["models"] = timed("models", lambda: step_models(out, plan))
    results["clip"] = timed("clip", lambda: step_clip(out, plan))
    before = timed("probe before CDRL", lambda: step_probe(out, plan, "base", organism_path("base")))
    results["cdrl"] = timed("cdrl", lambda: step_cdrl(out, plan))
    after = timed("probe after CDRL", lambda: step_probe(out, plan, "cdrl", out / "cdrl"))
    results["probe"] = {"before": before, "after": after}
    results.update(cdrl_comparison(out, plan, before, after))
    models = _Models()
    results["thresholds"] = timed("thresholds", lambda: step_thresholds(out, plan, models))
    chosen = results["thresholds"]["chosen"]
    per_item = timed("scaling", lambda: step_scaling(out, plan, models, chosen))
    results["scaling"] = {expert: summarise_methods(table, plan) for expert, table in per_item.items()}
    results["slopes"] = slopes(labelled(per_item), plan)
    results["savings"] = savings(labelled(per_item), plan)
    results["ablations"] = timed("ablations", lambda: step_ablations(out, plan, models, chosen))
    results["reflection"] = timed("reflection", lambda: step_reflection(out, plan, models))
    results["step_repair"] = timed(
        "step repair",
        lambda: _cached(out / "step_repair.json", lambda: step_repair_comparison(out, plan, models, chosen)),
    )
    results["step_signals"] = timed("step signals", lambda: step_signals(out, plan))
    results["mmboundary"] = timed("mmboundary", lambda: step_mmboundary(out, plan))
    results = _json_ready(results)
    results["seconds"] = timings
    results["total_seconds"] = round(sum(timings.values()), 1)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    markdown = render_markdown(results)
    (out / "results.md").write_text(markdown)
    _figures(out, results)
    log(markdown)
    log(f"total {results['total_seconds'] / 60:.1f} min of compute over all runs; results in {out}")
    return results
