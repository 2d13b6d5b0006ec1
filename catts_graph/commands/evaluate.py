"""``catts eval``, ``catts probe`` and ``catts report``: the evaluation harness on the command line.

The commands turn model names into models (:mod:`catts_graph.specs`) and call the harness
(:mod:`catts_graph.eval`); the harness itself takes models, never names.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from catts_graph.commands import add_threads_argument, print_error, set_threads
from catts_graph.config import CATTSConfig
from catts_graph.eval.datasets import BENCHMARKS, DatasetUnavailable
from catts_graph.eval.methods import method_names, parse_method
from catts_graph.eval.probe import (
    PERTURB_ALIASES,
    parse_levels,
    parse_perturbs,
    probe_summary,
    run_probe,
    summary_table,
)
from catts_graph.eval.report import method_summaries, write_report
from catts_graph.eval.runner import DEFAULT_NS, run_eval
from catts_graph.eval.store import DB_FILENAME, StoreError, read_store
from catts_graph.formatting import number
from catts_graph.perturb import PERTURBATIONS


def add_eval(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``catts eval``."""
    parser.description = (
        "Draw each item's samples once at the largest N, run every method at every N on "
        "them, and store the results in RUN_DIR/results.sqlite, item by item. Rerun the same command "
        "to resume an interrupted run."
    )
    parser.add_argument("--benchmark", required=True, help=BENCHMARK_HELP)
    parser.add_argument(
        "--source", help="a local export (JSON, JSONL, parquet or a folder); default: the hub"
    )
    parser.add_argument("--split", help="dataset split (default: the benchmark's usual one)")
    parser.add_argument("--image-dir", help="folder that relative image paths are resolved against")
    parser.add_argument("--limit", type=int, help="evaluate only the first K items")
    parser.add_argument(
        "--method",
        type=_method_list,
        required=True,
        help="comma-separated methods, from: " + ", ".join(method_names()),
    )
    parser.add_argument(
        "--n", type=_int_list, default=list(DEFAULT_NS), help="budgets N (default 1,2,4,8,16,32)"
    )
    parser.add_argument(
        "--model",
        help="base model: a local directory or hub id, or package.module:attribute; "
        "default: the base organism (offline; it knows only the synthetic benchmark's scenes). With "
        "--samples: the model that scores them (visual self-check) and re-answers (self-reflection); "
        "without it those two modules are off",
    )
    parser.add_argument(
        "--samples",
        metavar="FILE.jsonl",
        help="responses generated elsewhere, one JSON line each: 'id' (the item's), 'text', "
        "'token_logprobs' and optionally 'top_logprobs', or vLLM's OpenAI-format 'logprobs' as they "
        "come; the methods vote on these instead of sampling",
    )
    parser.add_argument(
        "--expert",
        help="'self' (default; 'none' with --samples and no --model), 'organism' (the larger organism "
        "model, for the synthetic benchmark), 'none', a model name (gemini-2.5-pro, gpt-5, ...; needs "
        "the provider's API key) or package.module:attribute",
    )
    parser.add_argument(
        "--judge",
        help="LLM judge for answers the rules cannot extract: a model name or "
        "package.module:attribute (default: rules only)",
    )
    parser.add_argument("--run-dir", required=True, help="where the results go (and are resumed from)")
    parser.add_argument("--concurrency", type=int, default=4, help="items evaluated at once (default 4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--max-new-tokens", type=int, help="longest response (default: CATTS_MAX_NEW_TOKENS or 1024)"
    )
    add_threads_argument(parser)
    parser.set_defaults(func=eval_command)


def eval_command(args: argparse.Namespace, console: Console | None = None) -> int:
    """``catts eval``: load the benchmark and models, run, print the accuracy table."""
    from catts_graph.eval.datasets import load_benchmark
    from catts_graph.eval.store import MetaMismatch
    from catts_graph.nodes.common import load_step_calibrator
    from catts_graph.specs import (
        ORGANISM_BASE,
        base_model_from_spec,
        default_base_model_spec,
        expert_from_spec,
        judge_from_spec,
    )

    console = console or Console()
    try:
        writable_run_dir(args.run_dir)
        config = CATTSConfig.from_env()
        if args.max_new_tokens is not None:
            config = config.replace(max_new_tokens=args.max_new_tokens)
        if config.step_calibrator is not None:  # checked whole before any model loads
            load_step_calibrator(config.step_calibrator)
        items = load_benchmark(
            args.benchmark, source=args.source, split=args.split, limit=args.limit, image_dir=args.image_dir
        )
        expert_spec = args.expert
        if args.samples is not None:
            from catts_graph.models.replay import ReplayVLM

            if expert_spec is None and args.model is None:
                expert_spec = "none"
                console.print("[yellow]--samples without --model: no expert ('self' needs the model).[/]")
            with console.status("reading the responses"):
                inner = base_model_from_spec(args.model) if args.model is not None else None
                base_model = ReplayVLM.from_jsonl(args.samples, inner)
            model_name = f"samples:{args.samples}" + (f" scored by {args.model}" if args.model else "")
        else:
            if args.model is None:
                console.print(
                    "[yellow]No --model given: using the base organism (it knows only synthetic scenes).[/]"
                )
            with console.status("loading the base model"):
                base_model = base_model_from_spec(args.model or default_base_model_spec())
            model_name = args.model or ORGANISM_BASE
        expert_spec = expert_spec if expert_spec is not None else "self"
        set_threads(args.threads, base_model)
        run_eval(
            items,
            methods=args.method,
            ns=args.n,
            base_model=base_model,
            expert=expert_from_spec(expert_spec),
            run_dir=args.run_dir,
            seed=args.seed,
            concurrency=args.concurrency,
            judge=judge_from_spec(args.judge),
            config=config,
            model_name=model_name,
            expert_name=expert_spec,
            console=console,
        )
    except (MetaMismatch, ValueError, DatasetUnavailable) as err:
        return print_error(err)
    return 0


BENCHMARK_HELP = (
    f"{', '.join(BENCHMARKS)} (synthetic: scenes generated here, offline; the others come from the "
    "Hugging Face Hub or --source)"
)


def writable_run_dir(run_dir: str) -> Path:
    """``run_dir``, created if needed; a ValueError naming ``--run-dir`` when it cannot be written
    (checked before any model loads)."""
    path = Path(run_dir).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise ValueError(
            f"--run-dir {run_dir!r}: cannot create or write it ({error.strerror or error}); "
            "pass a folder you can write"
        ) from None
    return path


def add_probe(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``catts probe``."""
    parser.description = (
        "Answer each item clean and under each perturbation kind and level; store the rows "
        "in RUN_DIR/results.sqlite (resumable) and print accuracy, confidence, drops, ECE and AUROC."
    )
    parser.add_argument("--benchmark", required=True, help=BENCHMARK_HELP)
    parser.add_argument("--source", help="a local export (JSON, JSONL, parquet); default: the hub dataset")
    parser.add_argument("--split", help="dataset split (default: the benchmark's usual one)")
    parser.add_argument("--image-dir", help="folder that relative image paths are resolved against")
    parser.add_argument("--limit", type=int, help="probe only the first K items")
    parser.add_argument(
        "--perturb",
        default="noise,occlusion,viewpoint,mosaic",
        help=f"comma-separated kinds: {', '.join([*PERTURB_ALIASES, *PERTURBATIONS])}",
    )
    parser.add_argument("--levels", default="0,0.25,0.5,0.75,1", help="comma-separated strengths in [0, 1]")
    parser.add_argument(
        "--model",
        help="base model: a local directory or hub id, or package.module:attribute; "
        "default: the base organism (offline; it knows only the synthetic benchmark's scenes)",
    )
    parser.add_argument("--run-dir", required=True, help="folder of results.sqlite (created; resumed)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n", type=int, default=1, help="samples per item and level (1: greedy)")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature when n > 1")
    parser.add_argument("--max-new-tokens", type=int, default=1024)
    parser.add_argument(
        "--judge",
        help="LLM judge for answers the rules cannot extract: a model name or "
        "package.module:attribute (default: rules only)",
    )
    add_threads_argument(parser)
    parser.set_defaults(func=_probe_command)


def _probe_command(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from catts_graph.eval.datasets import load_benchmark
    from catts_graph.images import InputError
    from catts_graph.specs import (
        ORGANISM_BASE,
        base_model_from_spec,
        default_base_model_spec,
        judge_from_spec,
    )

    console = Console()
    try:
        writable_run_dir(args.run_dir)
        kinds = parse_perturbs(args.perturb)
        levels = parse_levels(args.levels)
        items = load_benchmark(
            args.benchmark, source=args.source, split=args.split, limit=args.limit, image_dir=args.image_dir
        )
        judge = judge_from_spec(args.judge)
        if args.model is None:
            console.print(
                "[yellow]No --model given: using the base organism (it knows only synthetic scenes); "
                "pass --model Qwen/Qwen2.5-VL-7B-Instruct (or a local path) for real images.[/]"
            )
        model_spec = args.model or default_base_model_spec()
        with console.status("loading the base model"):
            base_model = base_model_from_spec(model_spec)
        set_threads(args.threads, base_model)
        store_path = Path(args.run_dir) / DB_FILENAME
        total = len(items) * (1 + len(kinds) * sum(level > 0 for level in levels))
        with Progress(
            TextColumn("probe"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        ) as bar:
            task = bar.add_task("probe", total=total)
            run = run_probe(
                items,
                base_model=base_model,
                perturbs=kinds,
                levels=levels,
                n=args.n,
                seed=args.seed,
                store_path=store_path,
                temperature=args.temperature,
                max_new_tokens=args.max_new_tokens,
                judge=judge,
                info={
                    "model": args.model or ORGANISM_BASE,
                    "benchmark": args.benchmark,
                    "judge": args.judge,
                },
                progress=lambda: bar.advance(task),
            )
    except (InputError, ValueError, FileNotFoundError, DatasetUnavailable) as err:
        return print_error(err)
    console.print(f"{run.written} rows answered, {run.skipped} already stored, in {store_path}")
    console.print(summary_table(probe_summary(store_path), title=f"probe: {args.benchmark}"))
    console.print(f"report with plots: catts report {args.run_dir}")
    return 0


def add_report(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``catts report RUN_DIR``: write RUN_DIR/report.md with tables and PNG plots
    from RUN_DIR/results.sqlite."""
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a folder written by catts eval / catts probe")
    parser.set_defaults(func=_report_command)


def _report_command(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    try:
        path = write_report(args.run_dir)
    except (FileNotFoundError, ValueError, StoreError) as err:
        return print_error(err)
    summaries = method_summaries(Path(args.run_dir) / DB_FILENAME)
    if summaries:
        with read_store(Path(args.run_dir) / DB_FILENAME) as store:
            scorer = (store.meta.get("scorer") or {}).get("headline", "official")
        table = Table(
            title="accuracy at the largest N",
            caption=f"accuracy: the official scorer ({scorer}), strict only where a row has no official "
            "verdict; strict: the strict rule",
        )
        for column in ("method", "N", "accuracy %", "95% interval", "strict %", "slope", "ECE", "AUROC"):
            table.add_column(
                column, justify="left" if column == "method" else "right", no_wrap=column == "method"
            )
        for s in summaries:
            top = s.cells[-1]
            interval = escape(f"[{top.lower:.1f}, {top.upper:.1f}]")
            table.add_row(
                s.method,
                str(top.n),
                f"{top.accuracy:.1f}" if top.official else f"{top.accuracy:.1f} (strict only)",
                interval,
                f"{top.strict:.1f}",
                number(s.slope, 2),
                number(s.ece),
                number(s.auroc),
            )
        console.print(table)
    plot_dir = path.parent / "plots"
    pngs = sorted(p.name for p in plot_dir.glob("*.png")) if plot_dir.is_dir() else []
    console.print(f"wrote {path}" + (f" and {len(pngs)} plots in {plot_dir}" if pngs else ""))
    return 0


def _int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers like 1,2,4,8, got {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return values


def _method_list(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    try:
        for name in names:
            parse_method(name)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return names
