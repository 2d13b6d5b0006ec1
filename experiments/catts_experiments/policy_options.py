"""The policy options of issue 23 against the paper's rules: ``catts measure policy-options``.

Each option, a :class:`~catts_graph.config.CATTSConfig` field (or two), changes one rule of the
``paper`` policy; each is measured alone against the paper's rule, with the expert organism as Voter
and Critic, on the hard regime (generator level 4):

- ``reflection_boost='incorrect'``: the reflected answer gets tau2 only when the Critic's verdict
  is ``incorrect`` (the paper boosts it whatever the verdict), at N = 8;
- ``critic_target='leader'``: the Critic criticises the vote leader's most confident sample (the
  paper: the least confident sample), at N = 8;
- ``skip_modules_at_one_sample``: at N = 1 no module runs and no expert is called, at N = 1;
- ``reflection_override`` (two fields at once: ``reflection_boost='override'`` with
  ``critic_target='leader'``): the Critic criticises the leader, and after an ``incorrect`` verdict
  a different reflected answer takes the lead instead of getting tau2 among the votes (the rule
  under which the reflection helps alone: the expert's critique of the answer that would be given);
- ``tau3=0.1``, the visual self-check as a tie-break: its winner's boost below one vote's share at
  N = 8 (1/8), against the paper's 0.5, which outweighs half the votes (inside the full method its
  winner is right less often than the vote's leader: docs/organism.md, "What the modules answer").
  Measured on top of the override of the leader (the library's rule since it was adopted) and paired
  with that arm, so it answers whether the self-check should weigh less in the graph as it runs now;
- ``tau1=2``, the Voter decides when it is sure: its probability weighs twice the whole vote, so a
  Voter sure of one answer (p = 1 against 0) outweighs every vote share plus the self-check's boost
  (tau1 > 1 + tau3), while a hedging Voter leaves the vote to decide. The paper's 0.5 lets a vote
  share margin above one half overrule a sure Voter. Raised by reading the reproduction's level-4
  traces (inside the full method the Voter's choice is right on 82% of the items where it runs at
  N = 32, the final answer on 76%), so its test split is not fresh for this option: the fresh
  generator seed is. Measured on top of the override of the leader and paired with that arm.

One arm is no option: ``defaults@N=1``, the library's defaults (:data:`LIBRARY_RULES`) at one sample,
paired with the sample it answers, so that "CA-TTS at N = 1 never below a single sample" is measured
as shipped, on fresh scenes too.

Pairing. Each item's 8 samples are drawn once (:func:`~catts_graph.eval.methods.draw_pool`, seeded
by the item), and every arm replays them through the real graph
(:class:`~catts_graph.eval.methods.CATTSGraphs`); every other call (the base's greedy reflection,
the self-check's scoring, the expert's greedy reading and scoring) is deterministic and remembered
(:class:`~catts_graph.models.ReplayVLM` with ``memo_max_n=1``), so two arms differ only where the
option leads them apart. :func:`measure_split` checks it: every N = 8 arm must see the same vote.

Choice (:func:`choose`, on validation only; the test split reports): an accuracy option
(``reflection_boost``, ``critic_target``, ``reflection_override``, ``tau3``) becomes the default when
its paired difference's 95% interval lies above 0; ``skip_modules_at_one_sample`` when it changes no
validation item's answer and calls the expert less. Otherwise the paper's rule stays. Every number
is deterministic (seeded samples, greedy calls, seeded bootstrap); wall time is printed, never
written to the tables.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from catts_experiments.measured import regenerated_by
from catts_graph.config import PAPER_REFLECTION, PAPER_TAU1
from catts_graph.formatting import markdown_table, number, with_interval

__all__ = [
    "ARMS",
    "LIBRARY_RULES",
    "OPTIONS",
    "Arm",
    "arm_row",
    "choose",
    "measure_split",
    "paired",
    "policy_options",
    "render_markdown",
    "summarise",
]

LEVEL = 4
"""The hard regime of issue 23 (:data:`catts_graph.eval.synthetic.HARD_LEVEL`)."""
POOL_N = 8


@dataclass(frozen=True)
class Arm:
    """The paper policy at budget ``n`` with ``changes`` to its config."""

    n: int
    changes: dict[str, Any] = field(default_factory=dict)


SELF_CHECK_TIEBREAK = 0.1
"""The tie-break boost of the self-check's winner: below one vote's share at N = 8 (1/8)."""
PAPER_TAU3 = 0.5
"""The paper's boost of the self-check's winner."""
VOTER_DECIDES = 2.0
"""The Voter's weight at which a sure Voter outweighs the whole vote and the self-check's boost."""

PAPER_RULES: dict[str, Any] = {
    **PAPER_REFLECTION,
    "skip_modules_at_one_sample": False,
    "tau3": PAPER_TAU3,
    "tau1": PAPER_TAU1,
}
"""The paper's rule for each option, set explicitly: the baseline stays the paper's whatever the
library's defaults become."""

LIBRARY_RULES: dict[str, Any] = {
    "reflection_boost": "override",
    "critic_target": "leader",
    "skip_modules_at_one_sample": True,
    "tau1": VOTER_DECIDES,
}
"""The library's defaults for the options (what validation adopted); the ``defaults@N=1`` arm runs
them at one sample, against the sample it answers (no option: a check that CA-TTS as shipped is
never below a single sample)."""

ARMS: dict[str, Arm] = {
    "paper": Arm(POOL_N),
    "reflection_boost=incorrect": Arm(POOL_N, {"reflection_boost": "incorrect"}),
    "critic_target=leader": Arm(POOL_N, {"critic_target": "leader"}),
    "paper@N=1": Arm(1),
    "skip_modules_at_one_sample": Arm(1, {"skip_modules_at_one_sample": True}),
    "reflection_override": Arm(POOL_N, {"reflection_boost": "override", "critic_target": "leader"}),
    "self_check_tiebreak": Arm(
        POOL_N, {"reflection_boost": "override", "critic_target": "leader", "tau3": SELF_CHECK_TIEBREAK}
    ),
    "voter_decides": Arm(
        POOL_N, {"reflection_boost": "override", "critic_target": "leader", "tau1": VOTER_DECIDES}
    ),
    "defaults@N=1": Arm(1, dict(LIBRARY_RULES)),
}
OPTIONS: dict[str, tuple[str, str]] = {
    "reflection_boost": ("reflection_boost=incorrect", "paper"),
    "critic_target": ("critic_target=leader", "paper"),
    "skip_modules_at_one_sample": ("skip_modules_at_one_sample", "paper@N=1"),
    "reflection_override": ("reflection_override", "paper"),
    "tau3": ("self_check_tiebreak", "reflection_override"),
    "tau1": ("voter_decides", "reflection_override"),
}
"""Each option: (its arm, the arm it is paired with: the paper's rules, or for ``tau3`` and ``tau1``
the override of the leader, the library's rule they are measured on)."""
OPTION_VALUES: dict[str, Any] = {
    "reflection_boost": "incorrect",
    "critic_target": "leader",
    "skip_modules_at_one_sample": True,
    "reflection_override": ARMS["reflection_override"].changes,
    "tau3": SELF_CHECK_TIEBREAK,
    "tau1": VOTER_DECIDES,
}
PAPER_VALUES: dict[str, Any] = {
    **PAPER_RULES,
    "reflection_override": {field: PAPER_RULES[field] for field in ARMS["reflection_override"].changes},
}
"""Each option's value in the paper's rules (an option of several fields: a value per field)."""


REFERENCES: tuple[str, ...] = (f"majority@N={POOL_N}", "first sample", f"mean of the {POOL_N} samples")
"""The references each item's pool gives, in the tables' order."""
VERDICTS: tuple[str, ...] = ("correct", "incorrect", "unsure", "none")
"""The Critic's verdicts, in the tables' order (``none``: no critique)."""


def _log(line: str) -> None:
    print(line, flush=True)


class _Pools:
    """The organisms behind remembering replays, and each arm's compiled graph."""

    def __init__(self, base: Any, expert: Any, config: Any) -> None:
        from catts_graph.eval.methods import CATTSGraphs
        from catts_graph.models.replay import ReplayVLM
        from catts_graph.organism.expert import OrganismExpert

        self.base = ReplayVLM(base, memo_max_n=1)
        self.config = config
        critic = OrganismExpert(vlm=ReplayVLM(expert, memo_max_n=1))
        self.graphs = {
            name: CATTSGraphs(self.base, critic, config.replace(**arm.changes)) for name, arm in ARMS.items()
        }


def _trace_input(trace: Sequence[Mapping[str, Any]], module: str, key: str) -> Any:
    found = [entry.get("inputs", {}).get(key) for entry in trace if entry.get("module") == module]
    return found[-1] if found else None


def arm_row(result: Any, item: Any) -> dict[str, Any]:
    """What one arm did on one item: its answer and whether it is right, expert calls, base tokens,
    the modules that ran, the Critic's verdict and criticised sample, the reflected answer and
    whether it was boosted, and the vote (the pairing check)."""
    from catts_graph.task import is_correct

    trace = result.trace or []
    return {
        "answer": result.answer,
        "correct": bool(is_correct(item, result.answer)),
        "expert_calls": result.expert_calls,
        "tokens": result.tokens,
        "modules": result.modules,
        "verdict": _trace_input(trace, "critic", "verdict"),
        "criticised": _trace_input(trace, "critic", "sample"),
        "reflected": _trace_input(trace, "aggregate", "reflected"),
        "boosted": _trace_input(trace, "aggregate", "reflection_boosted"),
        "votes": _trace_input(trace, "self_consistency", "votes"),
    }


def measure_item(
    pools: _Pools, item: Any, seed: int, stored: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Every arm on one item's pool, with the references: majority at N = 8, the pool's first
    sample (the one N = 1 sees) and the mean accuracy of its samples. With ``stored`` (the item's
    row from a run before an arm was added), only the arms it lacks run, on the same pool (drawn
    again from the item's seed), and the pairing check covers the stored arms too."""
    from catts_graph.eval.methods import draw_pool, majority
    from catts_graph.task import is_correct, item_seed

    graph_input = {"images": list(item.images), "question": item.question, "options": item.options}
    pool = draw_pool(
        pools.base, graph_input, n=POOL_N, config=pools.config, seed=item_seed(seed, item.id), greedy=False
    )
    arms = dict(stored["arms"]) if stored is not None else {}
    for name, arm in ARMS.items():
        if name not in arms:
            arms[name] = arm_row(pools.graphs[name].run(pool, arm.n, graph_input, policy="paper"), item)
    votes = {json.dumps(row["votes"], sort_keys=True) for name, row in arms.items() if ARMS[name].n == POOL_N}
    if len(votes) != 1:
        raise RuntimeError(f"item {item.id}: the N = {POOL_N} arms saw different votes {votes}; not paired")
    return {
        "item": item.id,
        "kind": item.category,
        "arms": arms,
        "majority": bool(is_correct(item, majority(pool, POOL_N).answer)),
        "first_sample": bool(is_correct(item, pool.records[0]["answer"])),
        "sample_mean": float(np.mean([is_correct(item, r["answer"]) for r in pool.records])),
    }


def measure_split(
    pools: _Pools,
    split: str,
    items: int,
    *,
    seed: int = 0,
    rows_path: Path | None = None,
    log: Callable[[str], None] = _log,
) -> list[dict[str, Any]]:
    """Per-item rows of ``items`` level-4 items of ``split``; with ``rows_path`` each row is appended
    to that JSON-lines file as it is measured, and rows already there are read back (resumed)."""
    from catts_graph.eval.synthetic import load_synthetic

    done: dict[str, dict[str, Any]] = {}
    if rows_path is not None and rows_path.is_file():
        for line in rows_path.read_text().splitlines():
            row = json.loads(line)
            done[row["item"]] = row
    rows = []
    start = time.perf_counter()
    for k, item in enumerate(load_synthetic(split, limit=items, seed=seed, level=LEVEL)):
        row = done.get(item.id)
        if row is None or set(ARMS) - set(row["arms"]):
            # A new item, or one measured before an arm was added: its missing arms run (the later
            # line of an item is the one read back).
            row = measure_item(pools, item, seed, row)
            if rows_path is not None:
                with rows_path.open("a") as file:
                    file.write(json.dumps(row, sort_keys=True) + "\n")
        rows.append(row)
        if (k + 1) % 50 == 0:
            log(f"{split}: {k + 1}/{items} items, {time.perf_counter() - start:.0f} s")
    return rows


def paired(option: Sequence[bool], paper: Sequence[bool], n_boot: int = 1000) -> dict[str, Any]:
    """Accuracy of ``option`` minus ``paper`` on the same items, in points, with a paired bootstrap
    95% interval (the items resampled, seed 0), and the items each alone answers right."""
    from catts_graph.metrics import bootstrap_rows

    rows = np.column_stack([option, paper]).astype(float)
    low, high = bootstrap_rows(rows, lambda r: 100.0 * float(np.mean(r[:, 0] - r[:, 1])), n_boot=n_boot)
    return {
        "difference": 100.0 * float(np.mean(rows[:, 0] - rows[:, 1])),
        "ci": [low, high],
        "fixed": int(sum(a and not b for a, b in zip(option, paper, strict=True))),
        "broken": int(sum(b and not a for a, b in zip(option, paper, strict=True))),
    }


def _accuracy(values: Sequence[float], n_boot: int) -> dict[str, Any]:
    from catts_graph.metrics import bootstrap_interval

    low, high = bootstrap_interval(values, n_boot=n_boot, seed=0)
    return {"accuracy": 100.0 * float(np.mean(values)), "ci": [100.0 * low, 100.0 * high]}


def summarise(rows: Sequence[Mapping[str, Any]], n_boot: int = 1000) -> dict[str, Any]:
    """Each arm's accuracy (points, 95% interval), expert calls and base tokens per item; each
    option's paired difference against its paper arm; the references; what the Critic said."""
    arms = {}
    for name, arm in ARMS.items():
        cells = [row["arms"][name] for row in rows]
        arms[name] = {
            "n": arm.n,
            **_accuracy([float(c["correct"]) for c in cells], n_boot),
            "expert_calls": float(np.mean([c["expert_calls"] for c in cells])),
            "tokens": float(np.mean([c["tokens"] for c in cells])),
        }
    options = {}
    for option, (name, paper) in OPTIONS.items():
        ours = [bool(row["arms"][name]["correct"]) for row in rows]
        theirs = [bool(row["arms"][paper]["correct"]) for row in rows]
        changed = sum(row["arms"][name]["answer"] != row["arms"][paper]["answer"] for row in rows)
        options[option] = {
            "arm": name,
            "paper_arm": paper,
            "answers_changed": changed,
            **paired(ours, theirs, n_boot),
        }
    values = {
        REFERENCES[0]: [float(row["majority"]) for row in rows],
        REFERENCES[1]: [float(row["first_sample"]) for row in rows],
        REFERENCES[2]: [row["sample_mean"] for row in rows],
    }
    references = {name: _accuracy(v, n_boot) for name, v in values.items()}
    # Each arm against what the same samples give without the expert: majority voting at N = 8,
    # the first sample (all that N = 1 sees) at N = 1; paired over the items.
    versus = {}
    for name, arm in ARMS.items():
        reference, key = (REFERENCES[0], "majority") if arm.n == POOL_N else (REFERENCES[1], "first_sample")
        versus[name] = {
            "reference": reference,
            **paired(
                [bool(row["arms"][name]["correct"]) for row in rows], [bool(row[key]) for row in rows], n_boot
            ),
        }
    paper = [row["arms"]["paper"] for row in rows]
    verdicts = {}
    for name in VERDICTS:
        verdict = None if name == "none" else name
        cells = [c for c in paper if c["verdict"] == verdict]
        verdicts[name] = {
            "items": len(cells),
            "answer_right": sum(c["correct"] for c in cells),
        }
    leader_is_least = sum(
        row["arms"]["paper"]["criticised"] == row["arms"]["critic_target=leader"]["criticised"]
        for row in rows
    )
    return {
        "items": len(rows),
        "arms": arms,
        "options": options,
        "references": references,
        "versus_references": versus,
        "critic_verdicts": verdicts,
        "same_criticised_sample": leader_is_least,
    }


def choose(validation: Mapping[str, Any]) -> dict[str, Any]:
    """The default of each option from the validation summary (the rule in the module docstring)."""
    chosen = {}
    for option, comparison in validation["options"].items():
        arm, paper = validation["arms"][comparison["arm"]], validation["arms"][comparison["paper_arm"]]
        if option == "skip_modules_at_one_sample":
            adopt = comparison["answers_changed"] == 0 and arm["expert_calls"] < paper["expert_calls"]
            why = (
                f"changes {comparison['answers_changed']} answers; expert calls per item "
                f"{arm['expert_calls']:.2f} against {paper['expert_calls']:.2f}"
            )
        else:
            adopt = comparison["ci"][0] > 0.0
            low, high = comparison["ci"]
            why = f"{comparison['difference']:+.1f} points [{low:+.1f}, {high:+.1f}]"
        chosen[option] = {
            "default": OPTION_VALUES[option] if adopt else PAPER_VALUES[option],
            "adopted": adopt,
            "why": why,
        }
    return chosen


def library_defaults(chosen: Mapping[str, Any]) -> dict[str, Any]:
    """The field values :func:`choose`'s choices make: each single-field option's default, then every
    adopted option of several fields applied over them (``reflection_override`` sets two fields).

    >>> library_defaults({"critic_target": {"default": "least_confident", "adopted": False},
    ...                   "reflection_override": {"default": {"critic_target": "leader"}, "adopted": True}})
    {'critic_target': 'leader'}
    """
    # In the options' declared order, whatever order ``chosen`` came in (JSON read back sorts it).
    names = [name for name in OPTIONS if name in chosen] + [name for name in chosen if name not in OPTIONS]
    values = {
        name: chosen[name]["default"] for name in names if not isinstance(chosen[name]["default"], dict)
    }
    for name in names:
        cell = chosen[name]
        if isinstance(cell["default"], dict) and cell["adopted"]:
            values.update(cell["default"])
    return values


def policy_options(
    *,
    validation: int = 300,
    test: int = 600,
    seed: int = 0,
    run_dir: str | Path | None = None,
    n_boot: int = 1000,
    base: Any = None,
    expert: Any = None,
    log: Callable[[str], None] = _log,
) -> dict[str, Any]:
    """Measure every arm on ``validation`` and ``test`` level-4 items, choose on validation.

    ``base`` / ``expert``: the models (default: the shipped base and expert organisms).
    ``run_dir``: per-item rows kept there (``validation.jsonl``, ``test.jsonl``), so a run resumes.
    """
    from catts_graph.config import CATTSConfig
    from catts_graph.organism import organism_model
    from catts_graph.organism.language import MAX_NEW_TOKENS

    config = CATTSConfig(expert_retries=0, max_new_tokens=MAX_NEW_TOKENS, **PAPER_RULES)
    pools = _Pools(base or organism_model("base"), expert or organism_model("expert"), config)
    folder = None if run_dir is None else Path(run_dir)
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"level": LEVEL, "seed": seed, "pool_n": POOL_N, "n_boot": n_boot}
    for split, items in (("validation", validation), ("test", test)):
        rows_path = None if folder is None else folder / f"{split}.jsonl"
        start = time.perf_counter()
        rows = measure_split(pools, split, items, seed=seed, rows_path=rows_path, log=log)
        log(f"{split}: {len(rows)} items in {time.perf_counter() - start:.0f} s")
        result[split] = summarise(rows, n_boot)
    result["chosen"] = choose(result["validation"])
    return result


_ARM_LABELS = {
    "paper": "paper policy",
    "reflection_boost=incorrect": "reflection_boost='incorrect'",
    "critic_target=leader": "critic_target='leader'",
    "paper@N=1": "paper policy",
    "skip_modules_at_one_sample": "skip_modules_at_one_sample=True",
    "reflection_override": "reflection_boost='override', critic_target='leader'",
    "self_check_tiebreak": f"reflection_boost='override', critic_target='leader', tau3={SELF_CHECK_TIEBREAK}",
    "voter_decides": f"reflection_boost='override', critic_target='leader', tau1={VOTER_DECIDES}",
    "defaults@N=1": "the library's defaults",
}


def render_markdown(result: Mapping[str, Any], command: str) -> str:
    """The tables of :func:`policy_options`' result, with the command that regenerates them."""

    def points(cell: Mapping[str, Any]) -> str:
        return with_interval(cell["accuracy"], cell["ci"], 1)

    lines = [
        "# Policy options against the paper's rules (hard regime, expert organism)",
        *regenerated_by(command),
        f"CA-TTS, `paper` policy, with the expert organism as Voter and Critic, on generator level "
        f"{result['level']} (seed {result['seed']}). Each item's {result['pool_n']} samples are drawn "
        "once and replayed in every arm, so two arms differ only by the option. Accuracy in %, 95% "
        f"bootstrap intervals over items ({result['n_boot']} resamples); differences are paired.",
        "",
    ]
    for split in ("validation", "test"):
        summary = result[split]
        lines += [f"## {split.capitalize()} ({summary['items']} items)", ""]
        rows = []
        for name in ARMS:  # the declared order, whatever order the JSON kept
            cell = summary["arms"][name]
            rows.append(
                [
                    _ARM_LABELS[name],
                    cell["n"],
                    points(cell),
                    number(cell["expert_calls"], 2),
                    number(cell["tokens"], 0),
                ]
            )
        lines += [
            markdown_table(["arm", "N", "accuracy", "expert calls / item", "base tokens / item"], rows),
            "",
        ]
        rows = []
        for option in OPTIONS:
            cell = summary["options"][option]
            rows.append(
                [
                    f"{_ARM_LABELS[cell['arm']]} (N = {summary['arms'][cell['arm']]['n']})",
                    _ARM_LABELS[cell["paper_arm"]],
                    with_interval(cell["difference"], cell["ci"], 1),
                    cell["fixed"],
                    cell["broken"],
                    cell["answers_changed"],
                ]
            )
        lines += [
            markdown_table(
                [
                    "option",
                    "against",
                    "difference (points)",
                    "items fixed",
                    "items broken",
                    "answers changed",
                ],
                rows,
            ),
            "",
        ]
        refs = [[name, points(summary["references"][name])] for name in REFERENCES]
        lines += [markdown_table(["reference (same samples)", "accuracy"], refs), ""]
        rows = []
        for name in ARMS:
            cell = summary["versus_references"][name]
            rows.append(
                [
                    f"{_ARM_LABELS[name]} (N = {summary['arms'][name]['n']})",
                    cell["reference"],
                    with_interval(cell["difference"], cell["ci"], 1),
                    cell["fixed"],
                    cell["broken"],
                ]
            )
        lines += [
            markdown_table(
                [
                    "arm",
                    "against (same samples)",
                    "difference (points)",
                    "items it alone gets",
                    "items it loses",
                ],
                rows,
            ),
            "",
        ]
        verdicts = summary["critic_verdicts"]
        lines += [
            "The Critic's verdicts in the paper arm (N = 8; the paper arm's final answer right / items): "
            + ", ".join(
                f"{v} {verdicts[v]['answer_right']}/{verdicts[v]['items']}"
                for v in VERDICTS
                if verdicts[v]["items"]
            )
            + ". The leader's sample is the least confident one on "
            + f"{summary['same_criticised_sample']} items.",
            "",
        ]
    fresh = result["seed"] != 0
    lines += [
        "## What this seed's validation would choose (the library's defaults are seed 0's)"
        if fresh
        else "## Defaults (chosen on validation)",
        "",
    ]
    rows = []
    for option in OPTIONS:
        cell = result["chosen"][option]
        default = cell["default"]
        shown = (
            ", ".join(f"{k}={v!r}" for k, v in sorted(default.items()))
            if isinstance(default, dict)
            else repr(default)
        )
        rows.append([option, shown, "option" if cell["adopted"] else "paper's rule", cell["why"]])
    lines += [markdown_table(["field", "default", "from", "validation"], rows), ""]
    defaults = ", ".join(f"`{name}={value!r}`" for name, value in library_defaults(result["chosen"]).items())
    lines += [
        f"Every adopted option applied: {defaults}; the library's defaults come from seed 0's validation "
        "(`policy-options.md`), this seed is a check on fresh scenes."
        if fresh
        else f"The library's defaults, every adopted option applied: {defaults}.",
        "",
    ]
    return "\n".join(lines)


# -- command line ---------------------------------------------------------------------------------


def add_measure_policy_options(parser: Any) -> None:
    """``catts measure policy-options``: :func:`policy_options` on level 4, written as a table."""
    from catts_experiments.measured import add_level_arguments, add_output_arguments

    add_level_arguments(parser, validation=300, test=600)
    add_output_arguments(parser, "keep per-item rows here and resume from them")
    parser.set_defaults(func=_command)


def _command(args: Any) -> int:
    from catts_experiments.measured import run_measured

    command = f"catts measure policy-options --validation {args.validation} --test {args.test}"
    command += f" --seed {args.seed}" if args.seed else ""
    return run_measured(
        args,
        lambda: policy_options(
            validation=args.validation, test=args.test, seed=args.seed, run_dir=args.run_dir
        ),
        command,
        render_markdown,
    )
