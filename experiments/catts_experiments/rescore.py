"""What the aggregate rule alone changes, read from a stored run's traces: ``python -m
catts_experiments.rescore STORE``.

A CA-TTS run's trace keeps what the final score is computed from: the weighted votes
(``self_consistency``), the Voter's probabilities (its decision, at three decimals), the Critic's
verdict and criticised answer, the reflected answer and the self-check's winner (``aggregate``).
:func:`rescore_rows` computes the final answer again from them with
:func:`catts_graph.voting.final_scores` and :func:`~catts_graph.voting.override_leader` under a given
``tau1`` / ``tau3`` and with or without the override of the leader, so a rule that changes only the
aggregate (not which modules run) is measured on the stored run without running a model. It first
re-scores under the run's own rule and counts how many stored answers that reproduces (the Voter's
rounding can move a near tie), so the reader sees how far the re-scoring can be trusted.

Used in docs/organism.md ("What CA-TTS does there") for what the override of the leader still changes
once the Voter decides:

    python -m catts_experiments.rescore runs/organism/level4/scaling-expert/results.sqlite --level 4

With ``--ablations`` it removes one module's part of the final score at a time (:data:`ABLATED`: the
Voter's probabilities, the reflected answer with its override, the self-check's winner) and prints,
per N, the full method minus each, paired over the items with a 95% interval: the ablations at every N
of a scaling run, where the reproduction runs them at one N. The modules' calls do not depend on each
other's results under the ``paper`` policy, so the re-scored answer is the ablated run's; ``--check
ABLATIONS_STORE`` counts, at that store's N, how many re-scored answers equal the ablated runs' stored
ones (``<method>-no_voter_boost``, ``-no_reflection_boost``, ``-no_self_check_boost``).
"""

from __future__ import annotations

import argparse
import ast
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["ABLATED", "ablation_rows", "aggregate_inputs", "rescore", "rescore_rows"]

ABLATED: dict[str, tuple[dict[str, Any], str]] = {
    "the Voter's boost": ({"voter_probs": None}, "no_voter_boost"),
    "Self-Reflection": ({"reflected": None, "boosted": False}, "no_reflection_boost"),
    "the Visual Self-Check": ({"self_check_winner": None}, "no_self_check_boost"),
}
"""Each module's part of the final score, as :func:`aggregate_inputs` keys set to nothing, and the
reproduction's ablation method (``<method>-<suffix>``) that runs without it."""


def aggregate_inputs(trace: Iterable[Mapping[str, Any]]) -> dict[str, Any] | None:
    """What the final score was computed from, out of one run's trace; None when no vote was taken
    (one sample under ``skip_modules_at_one_sample``, or no answer)."""
    found: dict[str, Any] = {}
    for entry in trace:
        module, inputs = entry.get("module"), entry.get("inputs") or {}
        if module == "self_consistency":
            found["votes"] = inputs.get("votes")
        elif module == "voter" and str(entry.get("decision", "")).startswith("p = "):
            found["voter_probs"] = ast.literal_eval("{" + entry["decision"][len("p = ") :] + "}")
        elif module == "critic":
            found["criticised"] = inputs.get("sample_answer")
        elif module == "aggregate":
            found["reflected"] = inputs.get("reflected")
            found["boosted"] = bool(inputs.get("reflection_boosted"))
            found["self_check_winner"] = inputs.get("self_check_winner")
    return found if found.get("votes") else None


def rescore(
    inputs: Mapping[str, Any], *, tau1: float, tau2: float = 0.5, tau3: float = 0.5, override: bool = True
) -> str | None:
    """The final answer :func:`aggregate_inputs` gives under these rules (the normalised scale)."""
    from catts_graph.voting import final_scores, override_leader, pick_answer

    votes = inputs["votes"]
    winner = inputs.get("self_check_winner")
    scores = final_scores(
        votes,
        voter_probs=inputs.get("voter_probs"),
        self_check_winner=winner if winner in votes else None,
        tau1=tau1,
        tau2=tau2,
        tau3=tau3,
    )
    if override and inputs.get("boosted") and inputs.get("reflected") is not None:
        scores = override_leader(
            scores, votes, criticised=inputs.get("criticised"), replacement=inputs["reflected"], margin=tau2
        )
    return pick_answer(scores, votes)[0]


def rescore_rows(
    rows: Iterable[Mapping[str, Any]],
    items: Mapping[str, Any],
    *,
    run: Mapping[str, Any],
    other: Mapping[str, Any],
) -> dict[int, dict[str, int]]:
    """Per N: rows with a vote, stored answers the run's own rule (``run``, :func:`rescore`'s
    keywords) reproduces, and the answers ``other`` changes against the stored ones, with how many of
    those it fixes and breaks (by :func:`catts_graph.task.is_correct` on ``items[item_id]``); and the
    rows where the Voter scored the candidates, with how often its most probable answer is right."""
    from catts_graph.task import is_correct

    counts: dict[int, dict[str, int]] = {}
    for row in rows:
        inputs = aggregate_inputs(row["trace"] or [])
        if inputs is None:
            continue
        cell = counts.setdefault(
            int(row["n"]),
            dict.fromkeys(("rows", "reproduced", "changed", "fixed", "broken", "voter", "voter_right"), 0),
        )
        cell["rows"] += 1
        cell["reproduced"] += int(rescore(inputs, **run) == row["answer"])
        probs = inputs.get("voter_probs")
        if probs:
            cell["voter"] += 1
            cell["voter_right"] += int(is_correct(items[row["item_id"]], max(probs, key=probs.get)))
        answer = rescore(inputs, **other)
        if answer != row["answer"]:
            item = items[row["item_id"]]
            right, was_right = is_correct(item, answer), bool(row["correct"])
            cell["changed"] += 1
            cell["fixed"] += int(right and not was_right)
            cell["broken"] += int(was_right and not right)
    return dict(sorted(counts.items()))


def ablation_rows(
    rows: Iterable[Mapping[str, Any]],
    items: Mapping[str, Any],
    *,
    run: Mapping[str, Any],
    n_boot: int = 1000,
    check: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[int, dict[str, Any]]:
    """Per N, over the rows with a vote (at N = 1 there is none: no module's part can be removed
    from a vote): ``rows``, ``reproduced`` (stored answers the run's own rule gives again) and per
    module of :data:`ABLATED` the full method minus the method without it, in points with a paired
    bootstrap 95% interval (:func:`catts_graph.metrics.paired_difference`, seed 0), and the items it
    fixes and breaks. ``check`` (``{suffix: {item_id: stored row}}``, the ablated runs at one N): per
    module, ``agree`` of the re-scored answers of that N's rows equal the stored ones."""
    import numpy as np

    from catts_graph.metrics import paired_difference
    from catts_graph.task import is_correct

    cells: dict[int, dict[str, Any]] = {}
    for row in rows:
        inputs = aggregate_inputs(row["trace"] or [])
        if inputs is None:
            continue
        cell = cells.setdefault(int(row["n"]), {"ids": [], "full": [], "reproduced": 0, "without": {}})
        cell["ids"].append(row["item_id"])
        cell["full"].append(bool(row["correct"]))
        cell["reproduced"] += int(rescore(inputs, **run) == row["answer"])
        for module, (removed, suffix) in ABLATED.items():
            answer = rescore({**inputs, **removed}, **run)
            out = cell["without"].setdefault(module, {"correct": [], "agree": 0, "checked": 0})
            out["correct"].append(is_correct(items[row["item_id"]], answer))
            stored = (check or {}).get(suffix, {}).get(row["item_id"])
            if stored is not None and int(stored["n"]) == int(row["n"]):
                out["checked"] += 1
                out["agree"] += int(stored["answer"] == answer)
    table: dict[int, dict[str, Any]] = {}
    for n, cell in sorted(cells.items()):
        full = np.asarray(cell["full"], dtype=float)
        entry: dict[str, Any] = {"rows": len(full), "reproduced": cell["reproduced"]}
        for module, out in cell["without"].items():
            without = np.asarray(out["correct"], dtype=float)
            difference, (low, high) = paired_difference(100 * full, 100 * without, n_boot=n_boot)
            entry[module] = {
                "difference": difference,
                "ci": [low, high],
                "fixed": int(np.sum((full == 1) & (without == 0))),
                "broken": int(np.sum((full == 0) & (without == 1))),
                **({"agree": out["agree"], "checked": out["checked"]} if out["checked"] else {}),
            }
        table[n] = entry
    return table


def _ablation_table(table: Mapping[int, Mapping[str, Any]]) -> list[str]:
    from catts_graph.formatting import with_interval

    header = ["N", "rows with a vote", "reproduced", *(f"full minus without {m}" for m in ABLATED)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for n, entry in table.items():
        cells = [str(n), str(entry["rows"]), str(entry["reproduced"])]
        for module in ABLATED:
            c = entry[module]
            text = ("+" if c["difference"] > 0 else "") + with_interval(c["difference"], c["ci"], 1)
            cells.append(f"{text} ({c['fixed']} fixed, {c['broken']} broken)")
        lines.append("| " + " | ".join(cells) + " |")
    for n, entry in table.items():
        for module in ABLATED:
            if "checked" in entry[module]:
                c = entry[module]
                lines.append(
                    f"N = {n}, without {module}: {c['agree']} of {c['checked']} re-scored answers are the "
                    "ablated run's"
                )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("store", help="a run's results.sqlite")
    parser.add_argument("--method", default="catts_paper")
    parser.add_argument("--split", default="test")
    parser.add_argument("--level", type=int, default=None, help="the generator level the run used")
    parser.add_argument("--seed", type=int, default=0, help="the generator seed the run used")
    parser.add_argument("--tau1", type=float, default=2.0, help="the run's tau1")
    parser.add_argument("--other-tau1", type=float, default=None, help="default: the run's")
    parser.add_argument("--no-override", action="store_true", help="the other rule without the override")
    parser.add_argument("--ablations", action="store_true", help="each module's part removed, per N")
    parser.add_argument("--check", help="with --ablations: the reproduction's ablations store to agree with")
    args = parser.parse_args(argv)

    from catts_graph.eval.store import read_store
    from catts_graph.eval.synthetic import load_synthetic

    with read_store(Path(args.store)) as store:
        rows = store.results(args.method)
    wanted = {row["item_id"] for row in rows}
    items = {
        item.id: item
        for item in load_synthetic(args.split, limit=len(wanted), seed=args.seed, level=args.level)
        if item.id in wanted
    }
    if set(items) != wanted:
        parser.error(f"{len(wanted - set(items))} items of the store are not the first {args.split} items")
    run = {"tau1": args.tau1}
    if args.ablations:
        check = None
        if args.check:
            with read_store(Path(args.check)) as store:
                check = {
                    suffix: {row["item_id"]: row for row in store.results(f"{args.method}-{suffix}")}
                    for _, suffix in ABLATED.values()
                }
        print(f"{args.method}: each module's part of the final score removed (at {run}), paired")
        print("\n".join(_ablation_table(ablation_rows(rows, items, run=run, check=check))))
        return 0
    other = {
        "tau1": args.tau1 if args.other_tau1 is None else args.other_tau1,
        "override": not args.no_override,
    }
    print(f"{args.method}: re-scored at {run} against the stored answers; the other rule {other}")
    header = ["N", "rows with a vote", "reproduced", "changed by the other rule", "fixed", "broken"]
    header += ["Voter ran", "its choice right"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for n, c in rescore_rows(rows, items, run=run, other=other).items():
        cells = [c[k] for k in ("rows", "reproduced", "changed", "fixed", "broken", "voter", "voter_right")]
        print("| " + " | ".join(str(v) for v in [n, *cells]) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
