"""How ``step_repair`` continues a weak sample, measured: ``catts measure repair-options``.

The reproduction's step repair (docs/organism.md, "Step repair in the adaptive policy") continues
each weak sample from before its weakest step at the run's temperature (1): another draw of the same
model where it was unsure. Its traces on the hard level read as chance: of the answers the repairs
changed, about as many went from right to wrong as from wrong to right. The option measured here is
the model's likeliest rewrite instead (``repair_temperature=0``, greedy from the kept steps).

Three arms, the adaptive policy at N = 8 (first wave 4, as in the reproduction) with the expert
organism as Voter and Critic, on generator level 4, with the fast-path thresholds and the step floor
the reproduction chose on validation (:data:`CHOSEN`, from ``docs/organism/results.json``):

- ``floor only``: the step floor routes as in the other two, ``step_repair`` disabled: the same
  routing, so the same expert calls up to the repair's own effect on them;
- ``repair at the run's temperature``: the library's default;
- ``greedy repair``: ``repair_temperature=0``.

Every arm sees each item's same seeded samples (the sampling calls are seeded by the item and
remembered), so the paired differences are the repair's and its temperature's alone. Per arm: the
repairs made, the answers they changed, and how many of those went to the right answer and how many
from it. Choice, on validation only: greedy repair becomes the default when its paired difference
over the run-temperature repair has a 95% interval above 0; otherwise the default stays. The test
split reports. Every number is deterministic; wall time is printed, never written to the tables.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from catts_experiments.measured import regenerated_by
from catts_graph.formatting import markdown_table, number, with_interval

__all__ = ["ARMS", "CHOSEN", "choose", "repair_counts", "repair_options", "render_markdown", "summarise"]

LEVEL = 4
"""The hard regime of issue 23."""
N = 8
ARMS: dict[str, dict[str, Any]] = {
    "floor only": {"disabled_modules": ("step_repair",)},
    "repair at the run's temperature": {},
    "greedy repair": {"repair_temperature": 0.0},
}
"""Each arm's changes to the adaptive policy with the chosen thresholds and step floor."""
PAIRS: tuple[tuple[str, str], ...] = (
    ("repair at the run's temperature", "floor only"),
    ("greedy repair", "floor only"),
    ("greedy repair", "repair at the run's temperature"),
)
"""The paired differences reported: each repair against the same routing without it, and greedy
against the default."""


CHOSEN: dict[str, Any] = {"fast_path_share": 0.9, "fast_path_confidence": 0.5, "step_floor": 0.8}
"""The hard regime's fast-path thresholds and step floor the reproduction chose on validation
(``docs/organism/results.json``, ``hard``; a test checks the two agree)."""


def repair_counts(trace: Sequence[Mapping[str, Any]], right: Any) -> dict[str, int]:
    """One run's repairs (the ``step_repair`` trace entry), the answers they changed, and of those
    the ones changed to a right answer and from one; ``right(answer)`` judges an answer."""
    counts = {"repairs": 0, "changed": 0, "to_right": 0, "from_right": 0}
    for entry in trace:
        if entry.get("module") != "step_repair":
            continue
        for repair in (entry.get("inputs") or {}).get("repairs") or []:
            counts["repairs"] += 1
            before, after = repair["answer_before"], repair["answer_after"]
            if before == after:
                continue
            counts["changed"] += 1
            counts["to_right"] += bool(right(after))
            counts["from_right"] += bool(right(before))
    return counts


def summarise(per_arm: Mapping[str, Mapping[str, Any]], n_boot: int = 1000) -> dict[str, Any]:
    """Each arm's accuracy (points, 95% interval), base tokens, expert calls and repair counts per
    the items; each pair's paired difference (:data:`PAIRS`)."""
    from catts_experiments.policy_options import paired
    from catts_graph.metrics import bootstrap_interval

    arms = {}
    for name, cells in per_arm.items():
        correct = cells["correct"]
        low, high = bootstrap_interval(correct, n_boot=n_boot, seed=0)
        arms[name] = {
            "accuracy": 100.0 * sum(correct) / len(correct),
            "ci": [100.0 * low, 100.0 * high],
            "tokens": sum(cells["tokens"]) / len(correct),
            "expert_calls": sum(cells["expert_calls"]) / len(correct),
            **{key: int(sum(c[key] for c in cells["repairs"])) for key in cells["repairs"][0]},
        }
    pairs = [
        {
            "arm": arm,
            "against": other,
            **paired(
                [bool(c) for c in per_arm[arm]["correct"]],
                [bool(c) for c in per_arm[other]["correct"]],
                n_boot=n_boot,
            ),
        }
        for arm, other in PAIRS
    ]
    return {"items": len(next(iter(per_arm.values()))["correct"]), "arms": arms, "pairs": pairs}


def choose(validation: Mapping[str, Any]) -> dict[str, Any]:
    """Greedy repair when its paired difference over the run-temperature repair on validation has an
    interval above 0; otherwise the run's temperature (None)."""
    (pair,) = [p for p in validation["pairs"] if p["arm"] == "greedy repair" and p["against"] != "floor only"]
    adopt = pair["ci"][0] > 0
    return {
        "repair_temperature": 0.0 if adopt else None,
        "rule": "greedy when its paired interval over the run-temperature repair lies above 0",
        "difference": pair["difference"],
        "ci": pair["ci"],
    }


def measure_split(
    split: str, count: int, seed: int, settings: Mapping[str, Any], run_dir: Path
) -> dict[str, dict[str, Any]]:
    """Every arm on ``count`` items of ``split``: per arm, per item, ``correct``, ``tokens``,
    ``expert_calls`` and the repair counts (resumable stores under ``run_dir``)."""
    from catts_experiments.reproduce.plan import Organisms, Plan, catts_config, items_of
    from catts_experiments.reproduce.scaling import run_methods
    from catts_graph.eval.scoring import judge_answer
    from catts_graph.eval.store import read_store
    from catts_graph.models.replay import ReplayVLM

    plan = Plan(seed=seed, level=LEVEL, ablation_n=N)
    models = Organisms()
    base = ReplayVLM(models.get("base"), memo_max_n=N)  # each item's samples drawn once, every arm
    items = items_of(split, count, plan)
    per_arm: dict[str, dict[str, Any]] = {}
    for name, changes in ARMS.items():
        config = catts_config(**settings, **changes, n_samples=N // 2)
        path = run_methods(
            run_dir / f"{split}-seed{seed}",
            name.replace(" ", "-").replace("'", ""),
            items,
            ["catts_adaptive"],
            [N],
            base=base,
            expert=models.get("expert"),
            expert_name="expert",
            plan=plan,
            config=config,
        )
        with read_store(path) as store:
            rows = {row["item_id"]: row for row in store.results() if row["method"] == "catts_adaptive"}
        cells: dict[str, list[Any]] = {"correct": [], "tokens": [], "expert_calls": [], "repairs": []}
        for item in items:
            row = rows[item.id]
            cells["correct"].append(float(row["correct"]))
            cells["tokens"].append(float(row["tokens"]))
            cells["expert_calls"].append(float(row["expert_calls"]))
            cells["repairs"].append(
                repair_counts(
                    row["trace"] or [], lambda answer, item=item: judge_answer(item, answer).correct
                )
            )
        per_arm[name] = cells
    return per_arm


def repair_options(
    *,
    validation: int = 300,
    test: int = 500,
    seed: int = 0,
    run_dir: str | Path | None = None,
    settings: Mapping[str, Any] = CHOSEN,
    n_boot: int = 1000,
) -> dict[str, Any]:
    """The three arms on ``validation`` and ``test`` items of level 4 at generator seed ``seed``, the
    choice made on validation, and the settings they ran under."""
    with tempfile.TemporaryDirectory(prefix="catts-repair-") as scratch:
        folder = Path(run_dir) if run_dir is not None else Path(scratch)
        out: dict[str, Any] = {"level": LEVEL, "n": N, "seed": seed, "n_boot": n_boot}
        out["settings"] = dict(settings)
        for split, count in (("validation", validation), ("test", test)):
            if count:
                out[split] = summarise(measure_split(split, count, seed, settings, folder), n_boot)
    if "validation" in out:
        out["chosen"] = choose(out["validation"])
    return out


_LABELS = {"floor only": "floor only (no repair)"}


def _signed(value: float, interval: Sequence[float]) -> str:
    """A difference with its sign, then its interval: ``+0.7 [0.0, 1.7]``."""
    return ("+" if value > 0 else "") + with_interval(value, interval, 1)


def render_markdown(result: Mapping[str, Any], command: str) -> str:
    """The tables of :func:`repair_options`' result, with the command that regenerates them."""
    settings = ", ".join(f"{key} = {value}" for key, value in sorted(result["settings"].items()))
    lines = [
        "# Step repair's temperature (hard regime, adaptive policy, expert organism)",
        *regenerated_by(command),
        f"The adaptive policy at N = {result['n']} (first wave {result['n'] // 2}) on generator level "
        f"{result['level']} (seed {result['seed']}), with the reproduction's chosen settings ({settings}). "
        "Every arm replays each item's same seeded samples. Accuracy in %, 95% bootstrap intervals over "
        f"items ({result['n_boot']} resamples); differences are paired. Repairs: samples continued from "
        "before their weakest step; changed: repairs whose answer differs from the sample's; to / from "
        "right: changed answers that became the right one / had been it.",
        "",
    ]
    for split in ("validation", "test"):
        if split not in result:
            continue
        summary = result[split]
        rows = [
            [
                _LABELS.get(name, name),
                with_interval(cell["accuracy"], cell["ci"], 1),
                number(cell["expert_calls"], 2),
                number(cell["tokens"], 0),
                cell["repairs"],
                cell["changed"],
                cell["to_right"],
                cell["from_right"],
            ]
            for name, cell in ((name, summary["arms"][name]) for name in ARMS)  # declared order
        ]
        headers = ["arm", "accuracy", "expert calls / item", "base tokens / item", "repairs", "changed"]
        lines += [f"## {split.capitalize()} ({summary['items']} items)", ""]
        lines += [markdown_table([*headers, "to right", "from right"], rows), ""]
        rows = [
            [
                _LABELS.get(p["arm"], p["arm"]),
                _LABELS.get(p["against"], p["against"]),
                _signed(p["difference"], p["ci"]),
                p["fixed"],
                p["broken"],
            ]
            for p in summary["pairs"]
        ]
        lines += [
            markdown_table(["arm", "against", "difference (points)", "items fixed", "items broken"], rows),
            "",
        ]
    if "chosen" in result:
        chosen = result["chosen"]
        verdict = (
            "**greedy repair** (`repair_temperature=0`)."
            if chosen["repair_temperature"] == 0
            else "the run's temperature stays."
        )
        lines += [
            f"Choice on validation ({chosen['rule']}): greedy minus run's temperature "
            f"{_signed(chosen['difference'], chosen['ci'])} points, so {verdict}",
            "",
        ]
    return "\n".join(lines)


# -- command line ---------------------------------------------------------------------------------


def add_measure_repair_options(parser: Any) -> None:
    """``catts measure repair-options``: :func:`repair_options` on level 4, written as a table."""
    from catts_experiments.measured import add_level_arguments, add_output_arguments

    add_level_arguments(parser, validation=300, test=500)
    add_output_arguments(parser, "keep the runs' stores here and resume from them")
    parser.set_defaults(func=_command)


def _command(args: Any) -> int:
    from catts_experiments.measured import run_measured

    command = f"catts measure repair-options --validation {args.validation} --test {args.test}"
    command += f" --seed {args.seed}" if args.seed else ""
    return run_measured(
        args,
        lambda: repair_options(
            validation=args.validation, test=args.test, seed=args.seed, run_dir=args.run_dir
        ),
        command,
        render_markdown,
    )
