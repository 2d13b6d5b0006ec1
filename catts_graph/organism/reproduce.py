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
import json
import math
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from catts_graph.formatting import markdown_table, number

ROOT = Path(__file__).resolve().parents[2]
CDRL_CONFIG = "training/configs/organism_cdrl.yaml"
"""The CDRL config of the reproduction, relative to the repository root."""

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
THRESHOLD_GRID = {"fast_path_share": (0.5, 0.7, 0.9, 1.0), "fast_path_confidence": (0.5, 0.8, 0.9)}
"""The adaptive fast path's two thresholds, searched on the validation split."""


@dataclass(frozen=True)
class Plan:
    """How much of everything to run. The defaults are the documented run (under an hour on CPU)."""

    model_items: int = 200
    """Test items of the greedy accuracy table of both organisms."""
    test_items: int = 100
    """Test items of the scaling runs and ablations (each is N = 32 samples and 5 + 2 methods at 6 Ns)."""
    validation_items: int = 60
    probe_items: int = 100
    perturbs: tuple[str, ...] = ("gaussian", "occlusion", "viewpoint", "mosaic")
    levels: tuple[float, ...] = (0.5, 1.0)
    ns: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    ablation_n: int = 8
    threshold_n: int = 8
    cdrl_config: str = CDRL_CONFIG
    cdrl_steps: int | None = None
    """Override of the CDRL config's ``grpo.max_steps``."""
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
            ablation_n=2,
            threshold_n=2,
            cdrl_steps=1,
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


def step_models(out: Path, plan: Plan) -> dict[str, Any]:
    """Greedy accuracy and confidence per kind of both organisms, clean and under full noise."""
    from catts_graph.organism import organism_model
    from catts_graph.organism.evaluate import evaluate_organism

    def compute() -> dict[str, Any]:
        report = {}
        for which in ("base", "expert"):
            vlm = organism_model(which)
            report[which] = {
                "parameters": sum(p.numel() for p in vlm.model.parameters()),
                "clean": evaluate_organism(vlm, split="test", limit=plan.model_items, seed=plan.seed),
                "noise": evaluate_organism(
                    vlm, split="test", limit=plan.model_items, noise=1.0, seed=plan.seed
                ),
            }
        return report

    return _cached(out / "models.json", compute)


def step_probe(out: Path, plan: Plan, name: str, model_path: Path) -> list[dict[str, Any]]:
    """The probe on one checkpoint (resumable store ``probe-<name>.sqlite``)."""
    from catts_graph.eval.probe import probe_model
    from catts_graph.models import TransformersVLM

    vlm = TransformersVLM.from_pretrained(model_path, device="cpu")
    rows = probe_model(
        vlm,
        _items("test", plan.probe_items, plan.seed),
        perturbs=plan.perturbs,
        levels=(0.0, *plan.levels),
        seed=plan.seed,
        store_path=out / f"probe-{name}.sqlite",
        max_new_tokens=256,
        info={"model": name},
    )
    return [dataclasses.asdict(row) for row in rows]


def pooled_calibration(store_path: Path) -> dict[str, float]:
    """ECE and AUROC of ``exp(-NMLP)`` over every probe row (clean and perturbed), and clean accuracy."""
    from catts_graph import metrics
    from catts_graph.eval.store import read_store

    with read_store(store_path) as store:
        rows = [(r["level"], r["correct"], r["confidence"]) for r in store.probe_rows()]
    confidences = [float(c) for _, _, c in rows]
    correct = [bool(y) for _, y, _ in rows]
    clean = [bool(y) for level, y, _ in rows if level == 0]
    try:
        auroc = metrics.auroc(confidences, correct)
    except ValueError:
        auroc = math.nan
    return {
        "rows": len(rows),
        "ece": metrics.expected_calibration_error(confidences, correct),
        "auroc": auroc,
        "clean_accuracy": metrics.accuracy(clean) if clean else math.nan,
    }


def step_cdrl(out: Path, plan: Plan) -> dict[str, Any]:
    """CDRL on the base organism (skipped when ``<out>/cdrl`` already holds the checkpoint)."""
    from catts_graph.organism import organism_path

    target = out / "cdrl"
    summary = target / "cdrl_summary.json"
    if not summary.is_file():
        # Through CDRL's command line, as a user runs it: the library never imports training/,
        # which sits above it, and the GRPO run gets a process (and memory) of its own.
        path = Path(plan.cdrl_config)
        command = [
            sys.executable,
            "-m",
            "training.cdrl.train",
            "cdrl",
            "--config",
            str(path if path.is_absolute() else ROOT / path),
            "--output-dir",
            str(target),
            "--model",
            str(organism_path("base")),
        ]
        if plan.cdrl_steps is not None:
            command += ["--max-steps", str(plan.cdrl_steps)]
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
        if done.returncode != 0 or not summary.is_file():
            output = (done.stdout + done.stderr)[-3000:]
            raise RuntimeError(f"CDRL failed (exit {done.returncode}): {' '.join(command)}\n{output}")
    return json.loads(summary.read_text())


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
) -> dict[str, dict[int, dict[str, float]]]:
    from rich.console import Console

    from catts_graph.eval.runner import run_eval
    from catts_graph.organism.expert import OrganismExpert

    path = run_eval(
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
    return _accuracy_by_n(path)


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
            table = _run(
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


def step_scaling(out: Path, plan: Plan, models: _Models, thresholds: dict[str, float]) -> dict[str, Any]:
    items = _items("test", plan.test_items, plan.seed)
    config = _config(**thresholds)
    base = models.get("base")
    options = {"base": base, "plan": plan, "config": config}
    return {
        "self": _run(
            out, "scaling-self", items, SCALING_METHODS, plan.ns, expert=base, expert_name="base", **options
        ),
        "expert": _run(
            out,
            "scaling-expert",
            items,
            EXPERT_METHODS,
            plan.ns,
            expert=models.get("expert"),
            expert_name="expert",
            **options,
        ),
    }


def step_ablations(out: Path, plan: Plan, models: _Models, thresholds: dict[str, float]) -> dict[str, Any]:
    items = _items("test", plan.test_items, plan.seed)
    table = _run(
        out,
        "ablations",
        items,
        ABLATIONS,
        [plan.ablation_n],
        base=models.get("base"),
        expert=models.get("expert"),
        expert_name="expert",
        plan=plan,
        config=_config(**thresholds),
    )
    return {method: table[method][plan.ablation_n] for method in ABLATIONS}


# -- summary --------------------------------------------------------------------------------------


def slopes(table: dict[str, dict[int, dict[str, float]]]) -> dict[str, float]:
    """Each method's accuracy slope in points per doubling of N (:func:`metrics.scaling_slope`)."""
    from catts_graph import metrics

    result = {}
    for method, per_n in table.items():
        ns = sorted(per_n)
        result[method] = (
            metrics.scaling_slope(ns, [per_n[n]["accuracy"] for n in ns]) if len(ns) >= 2 else math.nan
        )
    return result


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


def _md(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    return [*markdown_table(headers, rows).splitlines(), ""]


def render_markdown(results: dict[str, Any]) -> str:
    """The result tables of ``docs/organism.md``, from ``results.json``."""
    lines: list[str] = []
    models = results["models"]
    kinds = [k for k in models["base"]["clean"] if k != "all"]
    lines.append("### The organisms (greedy, test split)")
    lines += _md(
        ["model", "params", "clean acc", *kinds, "clean conf", "noised acc", "noised conf"],
        [
            [
                which,
                f"{row['parameters'] / 1e6:.2f}M",
                number(row["clean"]["all"]["accuracy"]),
                *(number(row["clean"][k]["accuracy"]) for k in kinds),
                number(row["clean"]["all"]["confidence"]),
                number(row["noise"]["all"]["accuracy"]),
                number(row["noise"]["all"]["confidence"]),
            ]
            for which, row in models.items()
        ],
    )
    lines.append("### Probe: accuracy and confidence as the image is taken away")
    probe_rows = []
    for name in ("before", "after"):
        for row in results["probe"][name]:
            probe_rows.append(
                [
                    "base" if name == "before" else "base + CDRL",
                    row["perturb"],
                    number(row["level"], 2),
                    number(row["accuracy"]),
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
    lines.append("### Test-time scaling (test split, accuracy %)")
    ns = sorted(
        {n for table in results["scaling"].values() for per_n in table.values() for n in map(int, per_n)}
    )
    scaling_rows = []
    for expert, table in results["scaling"].items():
        fitted = results["slopes"][expert]
        for method, per_n in table.items():
            label = _label(method, expert)
            scaling_rows.append(
                [
                    label,
                    *(number(per_n.get(str(n), {}).get("accuracy", math.nan), 1) for n in ns),
                    number(fitted[method], 2),
                ]
            )
    lines += _md(["method", *(f"N={n}" for n in ns), "slope (pts / doubling)"], scaling_rows)
    lines.append("### Cost: mean tokens and expert calls per item")
    cost_rows = []
    for expert, table in results["scaling"].items():
        for method, per_n in table.items():
            label = _label(method, expert)
            cost_rows.append(
                [
                    label,
                    *(
                        f"{number(per_n[str(n)]['tokens'], 0)} / {number(per_n[str(n)]['expert_calls'], 1)}"
                        for n in ns
                    ),
                ]
            )
    lines += _md(["method", *(f"N={n}" for n in ns)], cost_rows)
    lines.append(f"### Ablations (expert organism, N={results['plan']['ablation_n']})")
    lines += _md(
        ["method", "accuracy", "tokens", "expert calls"],
        [
            [method, number(c["accuracy"], 1), number(c["tokens"], 0), number(c["expert_calls"], 2)]
            for method, c in results["ablations"].items()
        ],
    )
    return "\n".join(lines).rstrip() + "\n"


def cdrl_section(results: dict[str, Any]) -> list[str]:
    """The CDRL tables: confidence-drop ratios and calibration before/after, and the run's rewards."""
    lines: list[str] = []
    lines.append("### CDRL: confidence-drop ratio (drop after / drop before)")
    lines += _md(
        [
            "perturbation",
            "level",
            "drop before",
            "drop after",
            "ratio",
            "NMLP drop before",
            "NMLP drop after",
            "NMLP ratio",
        ],
        [
            [
                r["perturb"],
                number(r["level"], 2),
                number(r["confidence_drop_before"]),
                number(r["confidence_drop_after"]),
                number(r["confidence_ratio"], 2),
                number(r["nmlp_drop_before"]),
                number(r["nmlp_drop_after"]),
                number(r["nmlp_ratio"], 2),
            ]
            for r in results["ratios"]
        ],
    )
    lines.append("### CDRL: calibration over every probe row")
    calibration = results["calibration"]
    lines += _md(
        ["model", "clean accuracy", "ECE", "AUROC", "rows"],
        [
            [label, number(c["clean_accuracy"]), number(c["ece"]), number(c["auroc"]), c["rows"]]
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
            "ratios": drop_ratios(before, after),
            "calibration": {
                "before": pooled_calibration(out / "probe-base.sqlite"),
                "after": pooled_calibration(out / "probe-cdrl.sqlite"),
            },
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
    for name in ("before", "after"):
        rows = [
            ProbeSummaryRow(**{k: (math.nan if v is None else v) for k, v in r.items()})
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
        if stored != current:
            changed = sorted(k for k in set(stored) | set(current) if stored.get(k) != current.get(k))
            raise ValueError(f"{out} holds a run with another plan (differs in {changed}); use a new --out")
    else:
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
    before = timed("probe before CDRL", lambda: step_probe(out, plan, "base", organism_path("base")))
    results["cdrl"] = timed("cdrl", lambda: step_cdrl(out, plan))
    after = timed("probe after CDRL", lambda: step_probe(out, plan, "cdrl", out / "cdrl"))
    results["probe"] = {"before": before, "after": after}
    results["ratios"] = drop_ratios(before, after)
    results["calibration"] = {
        "before": pooled_calibration(out / "probe-base.sqlite"),
        "after": pooled_calibration(out / "probe-cdrl.sqlite"),
    }
    models = _Models()
    results["thresholds"] = timed("thresholds", lambda: step_thresholds(out, plan, models))
    chosen = results["thresholds"]["chosen"]
    results["scaling"] = timed("scaling", lambda: step_scaling(out, plan, models, chosen))
    results["slopes"] = {expert: slopes(table) for expert, table in results["scaling"].items()}
    results["ablations"] = timed("ablations", lambda: step_ablations(out, plan, models, chosen))
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
