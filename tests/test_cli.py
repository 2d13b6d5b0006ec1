"""``catts run`` and ``catts config`` on the command line."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from catts_graph.cli import main
from catts_graph.experts import ROLES
from catts_graph.testing import Reply, ScriptedExpert, ScriptedVLM

ROOT = Path(__file__).resolve().parents[1]
DEMO_IMAGE = ROOT / "examples" / "images" / "shapes.png"


def scripted_base_model() -> ScriptedVLM:
    """Named on the command line as ``tests.test_cli:scripted_base_model``."""
    return ScriptedVLM.answering(
        Reply("Three red circles. \\boxed{3}", -0.2), Reply("I count two. \\boxed{2}", -1.5)
    )


def test_run_shows_answer_candidates_and_trace(capsys, monkeypatch):
    # The scripted vote (weighted share 0.88) would take the fast path at the default 0.7.
    monkeypatch.setenv("CATTS_FAST_PATH_SHARE", "1.0")
    code = main(
        [
            "run",
            "--image",
            str(DEMO_IMAGE),
            "--question",
            "How many red circles?",
            "--model",
            "tests.test_cli:scripted_base_model",
            "--expert",
            "none",
            "--n",
            "4",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "answer '3'" in out
    assert "candidates" in out and "trace" in out
    for module in ("prepare", "base_model", "planner", "self_consistency", "aggregate"):
        assert module in out


def test_run_json_gives_the_whole_result(capsys):
    code = main(
        [
            "run",
            "--image",
            str(DEMO_IMAGE),
            "--question",
            "How many red circles?",
            "--model",
            "tests.test_cli:scripted_base_model",
            "--expert",
            "none",
            "--n",
            "4",
            "--json",
        ]
    )
    result = json.loads(capsys.readouterr().out)
    assert code == 0
    assert result["answer"] == "3"
    # Weights 1/0.2 = 5 (two samples) and 1/1.5 (two): S(3) = 10 / (10 + 4/3).
    assert result["scores"]["3"] == pytest.approx(10 / (10 + 4 / 3))
    assert len(result["samples"]) == 4


def test_run_reports_bad_input_clearly(capsys, tmp_path):
    code = main(
        [
            "run",
            "--image",
            str(tmp_path / "missing.png"),
            "--question",
            "Q",
            "--model",
            "tests.test_cli:scripted_base_model",
            "--expert",
            "none",
        ]
    )
    assert code == 2
    assert "image: no file at" in capsys.readouterr().err


def test_config_lists_every_field(capsys):
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    for field in ("policy", "n_samples", "tau1", "close_margin", "max_image_pixels"):
        assert field in out


def readme_run_arguments() -> list[str]:
    """The arguments of the ``catts run`` in the README's install-and-run command."""
    readme = (ROOT / "README.md").read_text()
    block = readme[readme.index("## Install and run") :]
    start = block.index("```bash\n") + len("```bash\n")
    command = block[start : block.index("\n```", start)]
    return shlex.split(command.split("&& catts run", 1)[1])


@pytest.mark.slow
def test_the_readme_demo_answers_offline_and_confidence_falls_under_noise(tmp_path):
    """The README's run command: no --model, no key, no network: the organisms answer correctly,
    and the same question about the noised image is answered with less confidence."""
    arguments = readme_run_arguments()
    assert "--model" not in arguments and "--noise" in arguments
    env = {"CATTS_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    completed = subprocess.run(
        [sys.executable, "-m", "catts_graph.cli", "run", *arguments, "--json"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=ROOT,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout)  # stdout is the JSON alone; notes go to stderr
    assert "base organism" in completed.stderr
    assert "Loading weights" not in completed.stderr and "Warning" not in completed.stderr  # no chatter
    noised = result["noised"]
    assert result["answer"] == "3"  # the showcase image has three red circles
    assert noised["answer"] in {None, *(str(n) for n in range(10))}  # what the noised run answered
    assert [entry["module"] for entry in result["trace"]][:3] == ["prepare", "base_model", "planner"]

    def mean_confidence(run: dict) -> float:
        samples = [s for s in run["samples"] if s["source"] == "sample"]
        return sum(s["confidence"] for s in samples) / len(samples)

    assert mean_confidence(noised) < mean_confidence(result) - 0.05


def test_noise_strength_is_checked_before_any_model_loads(capsys):
    code = main(
        ["run", "--image", str(DEMO_IMAGE), "--question", "Q", "--noise", "1.5", "--model", "no/such/model"]
    )
    assert code == 2
    assert "--noise: expected a strength in (0, 1], got 1.5" in capsys.readouterr().err


def test_run_with_noise_compares_the_two_confidences(capsys):
    question = ["run", "--image", str(DEMO_IMAGE), "--question", "How many red circles?"]
    scripted = ["--model", "tests.test_cli:scripted_base_model", "--expert", "none", "--n", "4"]
    code = main([*question, *scripted, "--noise", "0.5"])
    out = capsys.readouterr().out
    assert code == 0
    assert "image under Gaussian noise (strength 0.5)" in out
    assert "clean" in out and "noised" in out


# --- what a user meets (issue 11, items 4, 5 and 8) ----------------------------------------------

KEY = "sk-proj-Q3v9ZtX1bN7mLp2WcR8kHs4YdF6gJa0E"


def failing_expert() -> ScriptedExpert:
    """Named on the command line: every expert call fails, as with a revoked key."""
    return ScriptedExpert(replies={role: PermissionError(f"401 Unauthorized: {KEY}") for role in ROLES})


class LeakyModel(ScriptedVLM):
    def sample(self, *args, **kwargs):
        raise RuntimeError(f"POST https://llm.example/v1 failed: 401, Authorization: Bearer {KEY}")


def leaky_base_model() -> LeakyModel:
    return LeakyModel(lambda call: [])


def run_args(*extra: str, question: str = "How many red circles?") -> list[str]:
    model = ["--model", "tests.test_cli:scripted_base_model", "--expert", "none"]
    return ["run", "--image", str(DEMO_IMAGE), "--question", question, *model, *extra]


def test_errors_go_to_stderr_and_json_stdout_stays_clean(capsys):
    code = main([*run_args("--json", question="   ")])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert "question: is empty" in err


@pytest.mark.parametrize(
    ("question", "message"),
    [("   ", "question: is empty"), ("\udcff\udcfe", "question: not valid UTF-8 text")],
)
def test_the_question_is_checked_before_any_model_loads(capsys, question, message):
    # A model that does not exist: loading it would be the error, were it tried first.
    code = main(["run", "--image", str(DEMO_IMAGE), "--question", question, "--model", "no/such/model"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "no/such/model" not in err


def test_a_url_error_suggests_the_flag(capsys):
    code = main(["run", "--image", f"https://example.com/chart.png?key={KEY}", "--question", "Q"])
    err = capsys.readouterr().err
    assert code == 2 and "pass --allow-url on the command line" in err
    assert KEY not in err and "[REDACTED]" in err


def test_an_unexpected_error_is_printed_without_the_credential_it_echoes(capsys):
    code = main(
        ["run", "--image", str(DEMO_IMAGE), "--question", "Q", "--model", "tests.test_cli:leaky_base_model"]
    )
    err = capsys.readouterr().err
    assert code == 1 and "RuntimeError" in err and "Traceback" in err
    assert KEY not in err and "Bearer [REDACTED]" in err


@pytest.mark.parametrize("json_mode", [False, True])
def test_run_says_up_front_when_every_expert_call_failed(capsys, monkeypatch, json_mode):
    monkeypatch.setenv("CATTS_FAST_PATH_SHARE", "1.0")
    monkeypatch.setenv("CATTS_EXPERT_BACKOFF", "0")
    args = run_args(
        "--expert", "tests.test_cli:failing_expert", "--n", "4", *(["--json"] if json_mode else [])
    )
    code = main(args)
    out, err = capsys.readouterr()
    assert code == 0
    shown = " ".join((err if json_mode else out).split())  # rich wraps at the terminal's width
    assert (
        "warning: every expert call failed" in shown and "the answer rests on the base model alone" in shown
    )
    assert KEY not in shown and "401 Unauthorized: [REDACTED]" in shown
    if json_mode:
        assert json.loads(out)["answer"] == "3"
    else:
        assert shown.index("warning: every expert call failed") < shown.index("answer '3'")


def test_no_warning_when_an_expert_answered_or_none_was_asked(capsys):
    assert main(run_args("--n", "4")) == 0
    assert "warning" not in capsys.readouterr().out


# --- the command line a newcomer meets (issue 25, item 5) ---------------------------------------


@pytest.mark.parametrize("command", ["eval", "probe"])
def test_help_lists_every_benchmark_and_expert(capsys, command):
    from catts_graph.eval.datasets import BENCHMARKS

    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps the help text
    assert done.value.code == 0
    assert all(name in out for name in BENCHMARKS) and "synthetic: scenes generated here, offline" in out
    if command == "eval":
        assert "'organism' (the larger organism model" in out


def eval_args(tmp_path, *extra: str) -> list[str]:
    return [
        "eval", "--benchmark", "synthetic", "--limit", "1", "--method", "majority", "--n", "1",
        "--run-dir", str(tmp_path / "run"), *extra,
    ]  # fmt: skip


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    return err


@pytest.fixture
def hub_unreachable(monkeypatch):
    """No network: a connection to the Hub fails at once, and nothing may go on to retry it."""
    import socket

    from huggingface_hub import constants

    def refuse(*args, **kwargs):
        raise OSError(101, "Network is unreachable")

    def must_not_be_called(*args, **kwargs):
        raise AssertionError("tried the Hub after it was found unreachable (retries for ~30 s)")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr("urllib.request.getproxies", dict)
    monkeypatch.setattr("datasets.load_dataset", must_not_be_called)
    monkeypatch.setattr("catts_graph.models.TransformersVLM.from_pretrained", must_not_be_called)


@pytest.mark.parametrize("command", ["run", "eval"])
@pytest.mark.parametrize(
    ("model", "says"),
    [
        ("/nonexistent", "model '/nonexistent': no such folder; expected a model folder"),
        ("./models/base", "model './models/base': no such folder"),
        ("Qwen/Qwen2.5-VL-7B-Instruct", "the Hugging Face Hub is unreachable (cannot connect to"),
    ],
)
def test_a_model_that_cannot_load_is_one_line(capsys, tmp_path, hub_unreachable, command, model, says):
    args = run_args("--model", model) if command == "run" else eval_args(tmp_path, "--model", model)
    code = main(args)
    assert code == 2 and says in one_line_error(capsys)


def test_a_folder_without_a_model_is_one_line(capsys, tmp_path):
    code = main(run_args("--model", str(tmp_path)))
    err = one_line_error(capsys)
    assert code == 2 and f"model {str(tmp_path)!r}: cannot load it (" in err and "Traceback" not in err


@pytest.mark.parametrize("command", ["eval", "probe"])
def test_a_hub_benchmark_offline_is_one_line_at_once(capsys, tmp_path, hub_unreachable, command):
    args = ["--benchmark", "mathvista", "--run-dir", str(tmp_path / "run"), "--model", "tests.test_cli:x"]
    code = main([command, *args, *(["--method", "majority"] if command == "eval" else [])])
    err = one_line_error(capsys)
    assert code == 2 and "cannot load mathvista: the Hugging Face Hub is unreachable" in err
    assert "the synthetic benchmark needs no Hub" in err


@pytest.mark.parametrize("command", ["eval", "probe"])
def test_an_unwritable_run_dir_is_one_line_before_any_model_loads(capsys, tmp_path, command):
    (tmp_path / "file").write_text("not a folder")
    run_dir = str(tmp_path / "file" / "run")
    args = ["--benchmark", "synthetic", "--run-dir", run_dir, "--model", "no/such/model"]
    code = main([command, *args, *(["--method", "majority"] if command == "eval" else [])])
    err = one_line_error(capsys)
    assert code == 2 and f"--run-dir {run_dir!r}: cannot create or write it" in err


@pytest.mark.parametrize("command", ["run", "eval"])
def test_a_missing_api_key_says_which_variable_to_set(capsys, tmp_path, monkeypatch, command):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    if command == "run":
        args = run_args("--model", "tests.test_cli:scripted_base_model", "--expert", "gpt-5")
    else:
        args = eval_args(tmp_path, "--model", "tests.test_cli:scripted_base_model", "--expert", "gpt-5")
        args[args.index("majority")] = "catts_paper"
    code = main(args)
    assert code == 2 and "expert 'gpt-5' needs an API key: set OPENAI_API_KEY" in one_line_error(capsys)


# --- threads (issue 25, item 6) ------------------------------------------------------------------


@pytest.fixture
def threads_set(monkeypatch) -> list[int]:
    """The intra-op thread counts a command sets (recorded, not applied to this test process)."""
    import torch

    calls: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    return calls


class _Parameters:
    def __init__(self, count: int) -> None:
        self.count = count

    def parameters(self):
        return [type("P", (), {"numel": lambda _: self.count})()]


def test_threads_default_to_one_for_a_small_torch_model(threads_set, tiny_vlm):
    from catts_graph.commands import ONE_THREAD_BELOW, set_threads

    assert set_threads(None, tiny_vlm) == 1 and threads_set == [1]  # the tiny Qwen2.5-VL
    large = type("Large", (), {"model": _Parameters(ONE_THREAD_BELOW)})()
    assert set_threads(None, large) is None and set_threads(None, scripted_base_model()) is None
    assert set_threads(3, large) == 3 and threads_set == [1, 3]


@pytest.mark.parametrize("command", ["run", "eval"])
def test_threads_option_sets_torchs_threads(capsys, tmp_path, threads_set, command):
    model = ["--model", "tests.test_cli:scripted_base_model"]
    args = (
        run_args(*model, "--threads", "3")
        if command == "run"
        else eval_args(tmp_path, *model, "--threads", "3")
    )
    assert main(args) == 0 and threads_set == [3]
    with pytest.raises(SystemExit) as done:
        main([*args[:-1], "0"])
    assert (
        done.value.code == 2 and "expected a whole number of threads >= 1, got '0'" in capsys.readouterr().err
    )
