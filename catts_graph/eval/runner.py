"""``catts eval``: run methods over a benchmark at several N, item by item, into a resumable store.

For each item the runner draws the sample pool once at the largest N (:func:`~catts_graph.eval.methods.
draw_pool`), runs every method at every N on it, judges the answers, and writes the pool and all the
item's result rows in one transaction. Each item's seed is derived from the run seed and the item id,
so an item's numbers do not depend on the order, the concurrency, or on which items an interrupted
run had finished: a resumed run skips the stored items and ends with the same table as an
uninterrupted one.

With responses generated elsewhere (``catts eval --samples FILE.jsonl``, a
:meth:`~catts_graph.models.ReplayVLM.from_jsonl` as the base model), an item's pool is its first
responses in the file instead of a draw; every item must have as many as the largest N, checked
before any work.

Items run in parallel in a thread pool of ``concurrency`` workers. A local base model serialises its
calls internally (one forward at a time), so the gain comes from overlapping expert calls, a remote
base model's latency, and Python work with the model's compute.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from catts_graph.config import CATTSConfig
from catts_graph.eval.methods import (
    CATTSGraphs,
    MethodSpec,
    SamplePool,
    draw_pool,
    parse_method,
    run_method,
)
from catts_graph.eval.official import official_scorer
from catts_graph.eval.store import ResultStore, db_path, run_lock
from catts_graph.models.base import BaseVLM
from catts_graph.models.replay import ReplayVLM
from catts_graph.task import item_seed

if TYPE_CHECKING:
    from catts_graph.eval.datasets import Item

__all__ = ["DEFAULT_NS", "accuracy_table", "evaluate_item", "run_eval"]

DEFAULT_NS = (1, 2, 4, 8, 16, 32)


def describe(obj: Any) -> str | None:
    """A short, stable name for a model or expert, for the run's meta."""
    if obj is None or isinstance(obj, str):
        return obj
    for attribute in ("model_name", "model"):
        value = getattr(obj, attribute, None)
        if isinstance(value, str):
            return f"{type(obj).__name__}({value})"
    name = getattr(getattr(getattr(obj, "model", None), "config", None), "_name_or_path", None)
    return f"{type(obj).__name__}({name})" if isinstance(name, str) else type(obj).__name__


def _recorded_file(base_model: BaseVLM) -> dict[str, Any] | None:
    recorded = getattr(base_model, "recorded", None) if isinstance(base_model, ReplayVLM) else None
    return None if recorded is None else dataclasses.asdict(recorded)


def evaluate_item(
    item: Item,
    specs: Sequence[MethodSpec],
    ns: Sequence[int],
    *,
    graphs: CATTSGraphs,
    seed: int,
    judge: Any = None,
) -> tuple[SamplePool, list[dict[str, Any]]]:
    """One item's pool and result rows (the keyword arguments of ``ResultStore.put_result``):
    ``correct`` by the strict rule, ``official`` by the benchmark's own
    (:func:`catts_graph.eval.official.official_scorer`, on the judged answer and the response).

    ``graphs`` holds the base model, the expert and the config (and the compiled CA-TTS graphs).
    When the base model holds recorded responses, the item's pool is made of its own.
    """
    from catts_graph.eval.scoring import judge_answer

    scorer = official_scorer(item.benchmark)
    graph_input = item.graph_input()
    n = max(ns) if any(s.needs_samples for s in specs) else 0
    replay = graphs.replay
    pool = draw_pool(
        graphs.base_model,
        graph_input,
        n=n,
        config=graphs.config,
        seed=item_seed(seed, item.id),
        greedy=any(s.kind == "greedy" for s in specs),
        recorded=replay.responses(item.id) if n and replay.has_responses() else None,
    )
    rows = []
    for spec in specs:
        for n in ns:
            result = run_method(spec, pool, n, graph_input, graphs=graphs)
            judgement = judge_answer(item, result.answer, result.response, judge=judge)
            rows.append(
                {
                    "item_id": item.id,
                    "method": spec.name,
                    "n": n,
                    "answer": judgement.answer if judgement.answer is not None else result.answer,
                    "gold": item.answer,
                    "correct": judgement.correct,
                    "official": scorer.score(item, judgement.answer, result.response),
                    "confidence": result.confidence,
                    "category": item.category,
                    "tokens": result.tokens,
                    "expert_calls": result.expert_calls,
                    "seconds": result.seconds,
                    "modules": result.modules,
                    "trace": result.trace,
                }
            )
    return pool, rows


class RateColumn(ProgressColumn):
    """Items per second over this session (resumed items excluded) and the ETA at that rate.

    Rich's own speed estimate divides by the time between recent updates, which explodes when
    several workers finish at once; a run's average rate is the honest figure.
    """

    def render(self, task: Task) -> Text:
        done = task.completed - task.fields.get("resumed", 0)
        elapsed = task.elapsed or 0.0
        if done <= 0 or elapsed <= 0:
            return Text("-- items/s  ETA --:--", style="progress.data.speed")
        rate = done / elapsed
        left = int(round((task.remaining or 0) / rate))
        return Text(f"{rate:.2f} items/s  ETA {left // 60}:{left % 60:02d}", style="progress.data.speed")


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        console=console,
    )


def run_eval(
    benchmark_items: Sequence[Item],
    *,
    methods: Sequence[str],
    ns: Sequence[int],
    base_model: BaseVLM,
    expert: Any,
    run_dir: str | Path,
    seed: int = 0,
    concurrency: int = 1,
    judge: Any = None,
    config: CATTSConfig | None = None,
    model_name: str | None = None,
    expert_name: str | None = None,
    console: Console | None = None,
) -> Path:
    """Evaluate ``methods`` at every N of ``ns`` on the items; returns the store's path.

    ``run_dir`` may hold an earlier run with the same settings: its stored items are skipped (resume);
    other settings raise :class:`~catts_graph.eval.store.MetaMismatch`, and an evaluation still
    running there :class:`~catts_graph.eval.store.RunDirectoryBusy`. ``model_name`` and
    ``expert_name`` are what the meta records for the models (default: derived from the objects).
    """
    items = list(benchmark_items)
    specs = [parse_method(m) for m in methods]
    ns = sorted({int(n) for n in ns})
    _check_run(items, specs, ns, expert, concurrency)
    if isinstance(base_model, ReplayVLM) and base_model.has_responses():
        _check_recorded(base_model, items, specs, ns, expert)
    config = config or CATTSConfig()
    console = console or Console()
    benchmark = items[0].benchmark
    path = db_path(run_dir)
    with run_lock(run_dir), ResultStore(path) as store:
        store.check_meta(
            {
                "benchmark": benchmark,
                "model": model_name or describe(base_model),
                "expert": expert_name if expert_name is not None else describe(expert),
                "judge": describe(judge),
                "seed": seed,
                "ns": ns,
                "methods": [s.name for s in specs],
                "config": config.model_dump(),
                # The recorded samples' bytes: a file changed since is another run, not a resume.
                "samples": _recorded_file(base_model),
            }
        )
        # Outside check_meta: a run stored before the scorers were named resumes.
        store.set_meta({"scorer": {"headline": official_scorer(benchmark).name, "beside": "strict"}})
        expected = {(s.name, n) for s in specs for n in ns}
        todo = [item for item in items if not expected <= store.result_keys(item.id)]
        done = len(items) - len(todo)
        if done:
            console.print(f"resuming {path}: {done} of {len(items)} items already stored")

        # Experts are only resolved (API keys checked) when a CA-TTS method will call them.
        graphs = CATTSGraphs(base_model, expert if any(s.kind == "catts" for s in specs) else None, config)

        def work(item: Item) -> str:
            pool, rows = evaluate_item(item, specs, ns, graphs=graphs, seed=seed, judge=judge)
            with store.transaction():
                store.put_pool(item.id, pool.all_records(), seconds=pool.seconds, tokens=pool.tokens)
                for row in rows:
                    store.put_result(**row)
            return item.id

        started = time.perf_counter()
        with _progress(console) as progress, ThreadPoolExecutor(max_workers=concurrency) as pool_executor:
            task = progress.add_task(benchmark, total=len(items), completed=done, resumed=done)
            futures: set[Future[str]] = {pool_executor.submit(work, item) for item in todo}
            try:
                while futures:
                    finished, futures = wait(futures, return_when=FIRST_EXCEPTION)
                    for future in finished:
                        future.result()
                        progress.advance(task)
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
        elapsed = time.perf_counter() - started
        if todo:
            console.print(f"{len(todo)} items in {elapsed:.1f} s ({len(todo) / elapsed:.2f} items/s)")
        _print_summary(console, store, items, specs, ns, benchmark)
    return path


def _check_run(
    items: Sequence[Item], specs: Sequence[MethodSpec], ns: Sequence[int], expert: Any, concurrency: int
) -> None:
    if not items:
        raise ValueError("no items to evaluate")
    ids = [item.id for item in items]
    if len(set(ids)) != len(ids):
        duplicated = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"item ids must be unique; repeated: {duplicated[:5]}")
    benchmarks = sorted({item.benchmark for item in items})
    if len(benchmarks) != 1:
        raise ValueError(f"one benchmark per run, got {benchmarks}")
    if not specs:
        raise ValueError("methods: give at least one method")
    if len({s.name for s in specs}) != len(specs):
        raise ValueError(f"methods: each method once, got {[s.name for s in specs]}")
    if not ns or min(ns) < 1:
        raise ValueError(f"ns: give budgets N >= 1, got {list(ns)}")
    if expert is None and any(s.needs_planner for s in specs):
        raise ValueError("catts_expert needs a planner expert: pass an expert (or 'self')")
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ValueError(f"concurrency must be an integer >= 1, got {concurrency!r}")


def _check_recorded(
    replay: ReplayVLM, items: Sequence[Item], specs: Sequence[MethodSpec], ns: Sequence[int], expert: Any
) -> None:
    """Recorded responses must cover every item at the largest N; what they cannot give needs a model."""
    recorded = set(replay.item_ids)
    missing = [item.id for item in items if item.id not in recorded]
    if missing:
        raise ValueError(
            f"{replay.source}: no responses for {len(missing)} of the {len(items)} items "
            f"({', '.join(repr(i) for i in missing[:5])}{', ...' if len(missing) > 5 else ''}); every "
            "evaluated item needs its responses (match the file's 'id' to the benchmark's item ids)"
        )
    if any(s.needs_samples for s in specs):
        short = [(item.id, len(replay.responses(item.id))) for item in items]
        short = [(i, count) for i, count in short if count < max(ns)]
        if short:
            raise ValueError(
                f"N={max(ns)} needs {max(ns)} responses per item, but {replay.source} has "
                + ", ".join(f"{count} for item {i!r}" for i, count in short[:5])
                + "; lower --n or record more responses"
            )
    deepconf = [s.name for s in specs if s.kind in ("deepconf", "deepconf_online")]
    if deepconf:
        for item in items:
            for index, sample in enumerate(replay.responses(item.id)[: max(ns)]):
                if sample.logprobs and not sample.top_logprobs:
                    raise ValueError(
                        f"{', '.join(deepconf)}: DeepConf weighs each response by its top log-probs, but "
                        f"response {index} of item {item.id!r} in {replay.source} has no 'top_logprobs'"
                    )
    if replay.inner is None:
        if any(s.kind == "greedy" for s in specs):
            raise ValueError(
                f"greedy needs the model's temperature-0 response, which {replay.source} does not hold: "
                "give the model that generated the responses (--model), or leave greedy out"
            )
        if _uses_self(expert):
            raise ValueError(
                f"expert 'self' is the base model answering as its own expert, and the responses in "
                f"{replay.source} come with no model: give one (--model), or another expert (or none)"
            )


def _uses_self(expert: Any) -> bool:
    specs = expert.values() if isinstance(expert, Mapping) else [expert]
    return any(isinstance(spec, str) and spec.strip().lower() == "self" for spec in specs)


def accuracy_table(
    store: ResultStore, items: Sequence[Item], benchmark: str, *, verdict: str = "correct"
) -> dict[str, dict[int, dict[str, float]]]:
    """``{method: {n: benchmark_metrics(...)}}`` over the stored rows of ``items``, by the
    ``verdict`` column: ``"correct"`` (strict) or ``"official"`` (rows without one are left out)."""
    if verdict not in ("correct", "official"):
        raise ValueError(f"verdict={verdict!r}: expected 'correct' or 'official'")
    from catts_graph.eval.scoring import benchmark_metrics

    by_id = {item.id: item for item in items}
    judged: dict[str, dict[int, list[tuple[Item, bool]]]] = {}
    for row in store.results():
        item = by_id.get(row["item_id"])
        if item is not None and row[verdict] is not None:
            judged.setdefault(row["method"], {}).setdefault(row["n"], []).append((item, row[verdict]))
    return {
        method: {n: benchmark_metrics(benchmark, pairs) for n, pairs in sorted(per_n.items())}
        for method, per_n in judged.items()
    }


def _print_summary(
    console: Console,
    store: ResultStore,
    items: Sequence[Item],
    specs: Sequence[MethodSpec],
    ns: Sequence[int],
    benchmark: str,
) -> None:
    official = accuracy_table(store, items, benchmark, verdict="official")
    strict = accuracy_table(store, items, benchmark)
    ids = {item.id for item in items}
    costs: dict[str, list[dict[str, Any]]] = {}
    for row in store.results():
        if row["item_id"] in ids and row["n"] == max(ns):
            costs.setdefault(row["method"], []).append(row)
    view = Table(
        title=f"{benchmark}: Overall accuracy (%) by N, {len(items)} items, scored by "
        f"{official_scorer(benchmark).name}",
        caption=f"strict: the strict rule at N={max(ns)}; tokens, expert calls and seconds: mean per "
        f"item at N={max(ns)}",
    )
    view.add_column("method", no_wrap=True)
    for n in ns:
        view.add_column(f"N={n}", justify="right")
    for label in ("strict", "tokens", "calls", "s"):
        view.add_column(label, justify="right")
    for spec in specs:
        per_n = official.get(spec.name, {})
        strict_top = strict.get(spec.name, {}).get(max(ns))
        rows = costs.get(spec.name, [])

        def mean(key: str, rows: list[dict[str, Any]] = rows) -> str:
            return f"{sum(r[key] for r in rows) / len(rows):.1f}" if rows else "-"

        view.add_row(
            spec.name,
            *(f"{per_n[n]['Overall']:.1f}" if n in per_n else "-" for n in ns),
            f"{strict_top['Overall']:.1f}" if strict_top else "-",
            mean("tokens"),
            mean("expert_calls"),
            mean("seconds"),
        )
    console.print(view)


# -- command line ---------------------------------------------------------------------------------
