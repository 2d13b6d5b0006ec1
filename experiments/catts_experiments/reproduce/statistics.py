"""The reproduction's statistics: intervals over items, drop ratios, paired differences, slopes and
savings, computed from the steps' stored rows with :mod:`catts_graph.metrics` (which holds the math:
the bootstrap, :func:`~catts_graph.metrics.paired_difference`,
:func:`~catts_graph.metrics.drop_ratio_interval`, the rule for an undefined AUROC). Every interval
is a 95% percentile bootstrap over the items (``plan.n_boot`` resamples, seed 0)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from catts_experiments.reproduce.plan import Plan
from catts_graph import metrics
from catts_graph.eval.probe import CLEAN
from catts_graph.eval.store import read_store


def interval(values: Sequence[float], plan: Plan) -> list[float]:
    """The 95% bootstrap interval of the mean of per-item ``values`` (resampled items)."""
    return list(metrics.bootstrap_interval(values, n_boot=plan.n_boot, seed=0))


def probe_key(perturb: str, level: float) -> tuple[str, float]:
    """The key of a probe cell in :func:`probe_cells` (every perturbation's level 0 is the clean cell)."""
    return (CLEAN, 0.0) if level == 0 else (perturb, float(level))


def probe_cells(store_path: Path) -> dict[tuple[str, float], dict[str, dict[str, Any]]]:
    """The probe's stored rows as ``{(perturb, level): {item_id: row}}`` (clean: ``("clean", 0.0)``)."""
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

    def ratio(rows: np.ndarray) -> float:
        drop_before = rows[:, 1].mean() - rows[:, 0].mean()
        drop_after = rows[:, 3].mean() - rows[:, 2].mean()
        return float(drop_after / drop_before) if drop_before else math.nan

    result = []
    for entry in ratios:
        clean, perturbed = probe_key("clean", 0.0), probe_key(entry["perturb"], entry["level"])
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
            columns = np.array(rows).T
            entry[f"{unit}_ratio_ci"] = (
                list(metrics.drop_ratio_interval(*columns, n_boot=plan.n_boot, seed=0))
                if rows
                else [math.nan] * 2
            )
        result.append(entry)
    return result


def pooled_calibration(store_path: Path) -> dict[str, float]:
    """ECE and AUROC of ``exp(-NMLP)`` over every probe row (clean and perturbed), clean accuracy
    and the clean rows' mean NMLP (so a ratio that moved because clean answers got surer shows)."""
    from catts_graph import metrics

    with read_store(store_path) as store:
        probe = store.probe_rows()
    rows = [(r["level"], r["correct"], r["confidence"]) for r in probe]
    confidences = [float(c) for _, _, c in rows]
    correct = [bool(y) for _, y, _ in rows]
    clean = [bool(y) for level, y, _ in rows if level == 0]
    clean_nmlp = [float(r["nmlp"]) for r in probe if r["level"] == 0 and r["nmlp"] is not None]
    return {
        "rows": len(rows),
        "ece": metrics.expected_calibration_error(confidences, correct),
        "auroc": metrics.auroc(confidences, correct),
        "clean_accuracy": metrics.accuracy(clean) if clean else math.nan,
        "clean_nmlp": float(np.mean(clean_nmlp)) if clean_nmlp else math.nan,
    }


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
    points = 100.0 * np.column_stack([correct, other]).astype(float)
    difference, (low, high) = metrics.paired_difference(points[:, 0], points[:, 1], n_boot=plan.n_boot)
    return difference, [low, high]


def probe_intervals(
    rows: Sequence[dict[str, Any]], answers: dict[str, bool], figures: dict[str, Any], plan: Plan
) -> dict[str, list[float]]:
    """Bootstrap 95% intervals over items (all of an item's steps resampled together) of an MMBoundary
    probe's answer accuracy (``answers``: item id -> correct) and of the ECE and AUROC of its
    expressed and internal levels (the levels' confidences as the probe used them:
    ``figures["level_confidence"]``)."""
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
                return metrics.expected_calibration_error(
                    [confidence[int(r[key]) - 1] for r in steps], correct
                )
            score = "fused" if key == "internal" else key
            return metrics.auroc([float(r[score]) for r in steps], correct)

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
        value = figures.get(name)
        if value is None or math.isnan(value):  # not measured, or undefined (one class)
            continue
        low, high = metrics.bootstrap_rows(
            ids, lambda rows, f=statistic: f(rows[:, 0].astype(int)), n_boot=plan.n_boot, skip_undefined=True
        )
        out[name] = [low, high]
    return out


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
        row_label(method, expert): per_n
        for expert, table in per_items.items()
        for method, per_n in table.items()
    }


def slopes(
    per_item: dict[str, dict[str, dict[str, list[float]]]], plan: Plan, reference: str = "majority"
) -> dict[str, dict[str, Any]]:
    """Each method's accuracy slope in points per doubling of N (:func:`metrics.scaling_slope` of the
    mean accuracies), its interval with the items resampled jointly across N, and its ratio to
    ``reference``'s slope, resampled jointly with it (the same items in every resample)."""
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
    n = str(plan.ablation_n)
    if reference not in per_item or n not in per_item[reference]:
        return []
    ref = per_item[reference][n]
    ref_accuracy = 100.0 * float(np.mean(ref["correct"]))
    ref_tokens = float(np.mean(ref["tokens"]))

    def saved(rows: np.ndarray) -> float:
        return float(1.0 - rows[:, 0].mean() / rows[:, 1].mean())

    result = []
    for label, per_n in per_item.items():
        if not label.startswith("catts_adaptive") or n not in per_n:
            continue
        own = per_n[n]
        difference, difference_ci = paired_points(own["correct"], ref["correct"], plan)
        tokens = np.column_stack([own["tokens"], ref["tokens"]])
        reaching = [m for m in sorted(per_n, key=int) if 100.0 * np.mean(per_n[m]["correct"]) >= ref_accuracy]
        result.append(
            {
                "method": label,
                "n": plan.ablation_n,
                "accuracy": 100.0 * float(np.mean(own["correct"])),
                "reference_accuracy": ref_accuracy,
                "difference": difference,
                "difference_ci": difference_ci,
                "tokens": float(np.mean(own["tokens"])),
                "reference_tokens": ref_tokens,
                "saved": saved(tokens),
                "saved_ci": list(metrics.bootstrap_rows(tokens, saved, n_boot=plan.n_boot)),
                "matching_n": int(reaching[0]) if reaching else None,
                "matching_saved": (
                    1.0 - float(np.mean(per_n[reaching[0]]["tokens"])) / ref_tokens if reaching else None
                ),
            }
        )
    return result


def versus_majority(
    per_item: dict[str, dict[str, dict[str, list[float]]]],
    plan: Plan,
    ns: Sequence[int],
    reference: str = "majority",
) -> list[dict[str, Any]]:
    """Each CA-TTS row (labels starting ``catts``) against ``reference`` at each N of ``ns``: both
    accuracies in points and the paired difference with its interval (the same items)."""
    result = []
    for label, per_n in per_item.items():
        if not label.startswith("catts"):
            continue
        for n in ns:
            key = str(n)
            if key not in per_n or key not in per_item.get(reference, {}):
                continue
            own, ref = per_n[key]["correct"], per_item[reference][key]["correct"]
            difference, difference_ci = paired_points(own, ref, plan)
            result.append(
                {
                    "method": label,
                    "n": n,
                    "accuracy": 100.0 * float(np.mean(own)),
                    "reference_accuracy": 100.0 * float(np.mean(ref)),
                    "difference": difference,
                    "difference_ci": difference_ci,
                }
            )
    return result


def ablation_effects(per_item: dict[str, dict[str, list[float]]], plan: Plan, full: str) -> dict[str, Any]:
    """Per ablated method of ``per_item`` (``{method: per-item cell}`` at one N): ``full``'s accuracy
    minus its accuracy on the same items, in points, with the paired interval: what the module or
    boost that the ablation removes adds."""
    effects = {}
    for method, cell in per_item.items():
        if method == full:
            continue
        difference, ci = paired_points(per_item[full]["correct"], cell["correct"], plan)
        effects[method] = {"difference": difference, "ci": ci}
    return effects


MODULE_ANSWERS: tuple[str, ...] = ("visual_self_check", "self_reflection")
"""The modules whose own answer a CA-TTS trace records (the self-check's winner, the reflected answer)."""


def module_answers(store_path: Path, items: Sequence[Any], method: str, n: int) -> dict[str, Any]:
    """What the self-check and the reflection answered inside ``method``'s runs at ``n`` (from their
    traces), per question kind and ``all``: how often each ran with an answer (``runs``), and on
    those items how often its answer, the weighted vote's leader, the final answer and (reflection)
    the criticised sample's answer are right. A module whose answer is right less often than the
    vote's leader can only pull the final answer down with its boost.

    ``{module: {kind: {"runs", "module_right", "leader_right", "final_right", "criticised_right"}}}``
    (``criticised_right`` None for the self-check)."""
    from catts_graph.task import is_correct

    counts: dict[str, dict[str, dict[str, Any]]] = {m: {} for m in MODULE_ANSWERS}
    with read_store(store_path) as store:
        rows = {r["item_id"]: r for r in store.results(method) if int(r["n"]) == n}
    for item in items:
        trace = rows[item.id]["trace"] or []
        inputs = {entry["module"]: entry.get("inputs") or {} for entry in trace}
        votes = inputs.get("self_consistency", {}).get("votes") or {}
        leader = max(votes, key=votes.get) if votes else None
        final = inputs.get("aggregate", {})
        answers = {
            "visual_self_check": (final.get("self_check_winner"), None),
            "self_reflection": (final.get("reflected"), inputs.get("critic", {}).get("sample_answer")),
        }
        for module, (answer, criticised) in answers.items():
            if answer is None:
                continue
            for kind in (item.category, "all"):
                cell = counts[module].setdefault(
                    kind,
                    {
                        "runs": 0,
                        "module_right": 0,
                        "leader_right": 0,
                        "final_right": 0,
                        "criticised_right": None,
                    },
                )
                cell["runs"] += 1
                cell["module_right"] += int(is_correct(item, answer))
                cell["leader_right"] += int(is_correct(item, leader))
                cell["final_right"] += int(bool(rows[item.id]["correct"]))
                if module == "self_reflection":
                    cell["criticised_right"] = (cell["criticised_right"] or 0) + int(
                        is_correct(item, criticised)
                    )
    return {
        m: dict(sorted(by_kind.items(), key=lambda kv: (kv[0] == "all", kv[0])))
        for m, by_kind in counts.items()
    }


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
            entry[f"{unit}_ratio"] = new[key] / old[key] if old[key] else math.nan  # drop_ratio's rule
        result.append(entry)
    return result


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


def row_label(method: str, expert: str) -> str:
    """A method's row name: CA-TTS rows say which organism was the expert."""
    if method.startswith(("majority", "deepconf")):
        return method
    return f"{method} ({'base as its own expert' if expert == 'self' else 'expert organism'})"
