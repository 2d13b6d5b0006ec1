"""``catts``: the command line.

``catts run --image IMG --question TEXT`` answers one question through the CA-TTS graph and shows
the answer, its confidence, the candidates and the modules that ran with their reasons.
``catts config`` lists every configuration field. Every other command (``catts eval``, ``catts train
cdrl``, ``catts reproduce``, ...) lives beside its code and is registered in one table,
:mod:`catts_graph.commands.registry`, which imports only the command being run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from catts_graph.commands import add_threads_argument, print_error, set_threads
from catts_graph.commands.registry import add_commands, resolve_alias
from catts_graph.formatting import json_ready
from catts_graph.images import InputError
from catts_graph.redaction import redact

if TYPE_CHECKING:  # the config (pydantic) is imported by the commands that use it: `catts --help` is faster
    from catts_graph.config import CATTSConfig


def _parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="catts",
        description="Confidence-aware test-time scaling (CA-TTS) and CDRL for multimodal models.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="answer one question about an image")
    run.add_argument("--image", action="append", required=True, help="path, URL or data URI (repeatable)")
    run.add_argument("--question", required=True)
    run.add_argument("--options", nargs="+", help="multiple-choice options, in order (A, B, ...)")
    run.add_argument(
        "--model",
        help="base model: a local directory or hub id (transformers), or package.module:attribute; "
        "default: the base organism, a small Qwen2.5-VL trained here on synthetic scenes (offline)",
    )
    run.add_argument(
        "--expert",
        help="'self', 'organism' (the larger organism model), 'none', a model name (gemini-2.5-pro, "
        "gpt-5, ...) or package.module:attribute; default: 'organism' with the default model, else 'self'",
    )
    run.add_argument(
        "--noise",
        type=float,
        help="also answer with the image(s) under Gaussian noise of this strength in [0, 1] and compare "
        "the confidences",
    )
    run.add_argument("--policy", choices=["adaptive", "paper", "expert"])
    run.add_argument("--n", type=int, help="samples in the first wave")
    run.add_argument("--max-samples", type=int)
    run.add_argument("--max-new-tokens", type=int)
    run.add_argument("--seed", type=int)
    run.add_argument("--allow-url", action="store_true", help="allow http(s) image URLs")
    run.add_argument("--verbose", action="store_true", help="show the libraries' loading bars")
    run.add_argument(
        "--allow-private-urls",
        action="store_true",
        help="allow image URLs on private, loopback and link-local addresses (your own network)",
    )
    run.add_argument("--json", action="store_true", help="print the whole result as JSON")
    add_threads_argument(run)

    commands.add_parser("config", help="list every configuration field with its default")
    add_commands(commands, argv)
    return parser


def _config(args: argparse.Namespace) -> CATTSConfig:
    changes: dict[str, Any] = {}
    for flag, field in (
        ("policy", "policy"),
        ("n", "n_samples"),
        ("max_samples", "max_samples"),
        ("max_new_tokens", "max_new_tokens"),
        ("seed", "seed"),
    ):
        value = getattr(args, flag)
        if value is not None:
            changes[field] = value
    if args.allow_url:
        changes["allow_url_fetch"] = True
    if args.allow_private_urls:
        changes["allow_private_urls"] = True
    from catts_graph.config import CATTSConfig

    base = CATTSConfig.from_env()
    if "n_samples" in changes and "max_samples" not in changes:
        changes["max_samples"] = max(base.max_samples, changes["n_samples"])
    return base.replace(**changes)


def _quiet_loading() -> None:
    """No loading bars from transformers or the Hub on a plain run (``--verbose`` keeps them).

    transformers reads the Hub's setting when it is imported; a process that imported it already
    (a notebook, a test) is switched directly. A user's own ``HF_HUB_DISABLE_PROGRESS_BARS`` wins.
    """
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules and os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1":
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()


def _run(args: argparse.Namespace, console: Console) -> int:
    from catts_graph.graph import build_graph
    from catts_graph.nodes.common import load_step_calibrator
    from catts_graph.specs import ORGANISM, base_model_from_spec, default_base_model_spec, expert_from_spec
    from catts_graph.task import check_inputs

    config = _config(args)
    if config.step_calibrator is not None:
        load_step_calibrator(config.step_calibrator)
    if args.noise is not None and not 0 < args.noise <= 1:
        raise InputError(f"--noise: expected a strength in (0, 1], got {args.noise}")
    given: dict[str, Any] = {"question": args.question, "options": args.options}
    given.update({"image": args.image[0]} if len(args.image) == 1 else {"images": args.image})
    # Every check that needs no model comes before the models load (seconds to minutes).
    question, options, references, images = check_inputs(given, config)
    inputs: dict[str, Any] = {"question": question, "options": options}
    inputs.update({"image": references[0]} if len(references) == 1 else {"images": references})
    if args.json:  # stdout carries the JSON alone
        console = Console(stderr=True)
    if not args.verbose:
        _quiet_loading()
    if args.model is None:
        console.print(
            "[yellow]No --model given: using the base organism, a 1.85M-parameter Qwen2.5-VL trained here "
            "on synthetic scenes (shapes, colours, digits); it knows nothing else. Pass --model "
            "Qwen/Qwen2.5-VL-7B-Instruct (or a local path) for real images.[/]"
        )
    expert_spec = args.expert if args.expert is not None else (ORGANISM if args.model is None else "self")
    with console.status("loading the models"):
        base_model = base_model_from_spec(args.model or default_base_model_spec())
        expert = expert_from_spec(expert_spec)
    set_threads(args.threads, base_model)
    graph = build_graph(base_model, expert=expert, config=config)

    result = _stream(graph, inputs, console)
    _warn_if_every_expert_call_failed(result, console)
    noised: dict[str, Any] | None = None
    if args.noise is not None:
        noised = _stream(graph, _noised_inputs(inputs, images, args.noise, base_model), console)
        _warn_if_every_expert_call_failed(noised, console)
    if args.json:
        print(json_text({**result, "noised": noised} if noised else result))
        return 0
    _show(result, console)
    if noised is not None:
        _show_noise_comparison(result, noised, args.noise, console)
    return 0


def json_text(result: Any) -> str:
    """``result`` as JSON text: a float that is no JSON number (NaN, an infinity) is written as null,
    and anything else JSON has no type for as its string."""
    return json.dumps(json_ready(result), indent=2, default=str, allow_nan=False)


def _warn_if_every_expert_call_failed(result: dict[str, Any], console: Console) -> None:
    """Say first, not only in the trace, when the experts were asked and none answered: the answer
    then stands on the base model's samples alone (a missing key or a provider outage, usually)."""
    calls = [call for entry in result.get("trace", []) for call in entry.get("expert_calls", [])]
    if not calls or any(call["ok"] for call in calls):
        return
    errors = [error for call in calls for error in call["errors"]]
    console.print(
        f"[yellow]warning:[/] every expert call failed ({len(errors)} attempts); the answer rests on "
        f"the base model alone. First error: {escape(errors[0] if errors else 'none recorded')}"
    )


def _stream(graph: Any, inputs: dict[str, Any], console: Console) -> dict[str, Any]:
    result: dict[str, Any] = {}
    with console.status("running") as status:
        for mode, chunk in graph.stream(inputs, stream_mode=["custom", "values"]):
            if mode == "custom":
                status.update(f"{chunk.get('node')}: {chunk.get('event')}")
            else:
                result = chunk
    return result


def _noised_inputs(
    inputs: dict[str, Any], images: Sequence[Any], strength: float, base_model: Any
) -> dict[str, Any]:
    """The same question with every image under Gaussian noise at the base model's input size
    (seeded: the same pixels every run)."""
    from catts_graph.models.base import input_size_of
    from catts_graph.perturb import perturbed_views

    _, noised = perturbed_views(images, "gaussian", strength, 0, input_size=input_size_of(base_model))
    return {
        "question": inputs["question"],
        "options": inputs["options"],
        **({"image": noised[0]} if len(noised) == 1 else {"images": noised}),
    }


def _mean_sample_confidence(result: dict[str, Any]) -> float:
    samples = [s for s in result.get("samples", []) if s.get("source") == "sample"]
    return sum(s["confidence"] for s in samples) / len(samples) if samples else float("nan")


def _show_noise_comparison(
    clean: dict[str, Any], noised: dict[str, Any], strength: float, console: Console
) -> None:
    table = Table(title=f"the same question, image under Gaussian noise (strength {strength:g})")
    for column in ("image", "answer", "confidence", "mean sample exp(-NMLP)", "modules run"):
        table.add_column(column)
    for label, result in (("clean", clean), ("noised", noised)):
        modules = [e["module"] for e in result.get("trace", []) if e["module"] not in ("prepare", "planner")]
        table.add_row(
            label,
            repr(result.get("answer")),
            f"{result.get('confidence', 0.0):.3f}",
            f"{_mean_sample_confidence(result):.3f}",
            ", ".join(dict.fromkeys(modules)),
        )
    console.print(table)


def _show(result: dict[str, Any], console: Console) -> None:
    console.print(
        f"[bold]answer[/] {result.get('answer')!r}   [bold]confidence[/] {result.get('confidence', 0.0):.3f}"
    )
    candidates = Table(title="candidates")
    for column in ("answer", "score", "samples", "mean confidence"):
        candidates.add_column(column)
    samples = [s for s in result.get("samples", []) if s.get("source") == "sample"]
    for answer, score in sorted(result.get("scores", {}).items(), key=lambda item: -item[1]):
        support = [s for s in samples if s.get("answer") == answer]
        mean = sum(s["confidence"] for s in support) / len(support) if support else float("nan")
        candidates.add_row(str(answer), f"{score:.3f}", str(len(support)), f"{mean:.3f}")
    console.print(candidates)
    modules = Table(title="trace")
    for column in ("module", "decision", "reason", "s"):
        modules.add_column(column)
    for entry in result.get("trace", []):
        modules.add_row(entry["module"], entry["decision"], entry["reason"], f"{entry['duration_s']:.2f}")
    console.print(modules)
    usage = result.get("usage", {})
    console.print(
        "usage: "
        + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in usage.items())
    )


def _show_config(console: Console) -> None:
    from catts_graph.config import CATTSConfig, FieldDoc

    table = Table(title="CATTSConfig (environment: CATTS_<FIELD>)")
    for column in FieldDoc._fields:
        table.add_column(column, no_wrap=column == "name")
    for row in CATTSConfig.field_docs():
        table.add_row(*row)
    console.print(table)


def main(argv: Sequence[str] | None = None) -> int:
    argv = resolve_alias(sys.argv[1:] if argv is None else argv)
    args = _parser(argv).parse_args(argv)
    console = Console()
    errors = Console(stderr=True)
    try:
        if args.command == "run":
            return _run(args, console)
        if args.command == "config":
            _show_config(console)
            return 0
        return int(args.func(args))
    except (InputError, ValueError) as err:  # a ConfigError is a ValueError
        return print_error(err)
    except Exception as err:  # a provider or server error: its text may echo a credential
        errors.print(escape(redact("".join(traceback.format_exception(err)))))
        return 1


if __name__ == "__main__":
    sys.exit(main())
