"""The organism models shipped in the package: they load, answer above a floor, serve as expert and
demo, and the reproduction runs every step."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from catts_experiments.evaluate import evaluate_organism
from catts_experiments.train import CONFIGS, train_organism
from catts_experiments.tune import CDRL_VARIANTS, ship_cdrl
from catts_graph.cli import _parser
from catts_graph.commands.registry import resolve_alias
from catts_graph.organism import organism_model, organism_path
from catts_graph.organism.checkpoint import CDRL_ORGANISM, CHECKPOINT_SETTINGS, weights_checksum
from catts_graph.organism.language import reply_text

ROOT = Path(__file__).resolve().parents[1]
DEMO_IMAGE = ROOT / "examples" / "images" / "shapes.png"

# Floors a few items under what the shipped checkpoints measured on these first 100 test items,
# greedy: base 0.92, expert 0.98 (docs/organism.md has 300 items: 0.910 and 0.970). A retrained or
# broken checkpoint that falls back towards the answer prior (about a quarter overall) fails them.
CLEAN_FLOOR = {"base": 0.88, "expert": 0.95, "base-cdrl": 0.88}


@pytest.fixture(scope="module")
def base_model():
    return organism_model("base")


@pytest.mark.parametrize("which", ["base", "expert"])
def test_the_checkpoints_are_small_and_declare_their_prompts(which: str) -> None:
    folder = organism_path(which)
    assert (folder / "model.safetensors").is_file() and not list(folder.glob("*.bin"))
    assert (folder / "chat_template.jinja").is_file()
    assert sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) < 25_000_000
    declared = json.loads((folder / "catts.json").read_text())
    assert declared["answer_prompt"] == CHECKPOINT_SETTINGS["answer_prompt"]
    # The base organism was taught to read a critique (catts_experiments.reflection); the expert
    # re-answers under its own prompt.
    reflection = "reflection_short" if which == "base" else CHECKPOINT_SETTINGS["reflection_prompt"]
    assert declared["reflection_prompt"] == reflection
    if which == "base":
        assert json.loads((folder / "organism.json").read_text())["reflection"]["steps"] > 0


@pytest.mark.parametrize("which", ["base", "expert", "base-cdrl"])
def test_clean_accuracy_stays_above_its_floor(which: str) -> None:
    vlm = organism_model(which)
    report = evaluate_organism(vlm, split="test", limit=100)
    assert report["all"]["accuracy"] >= CLEAN_FLOOR[which], report
    assert set(report) == {"all", "colour", "count", "compare", "position", "digits"}


def test_the_cdrl_organism_says_what_it_is_and_started_from_the_shipped_base() -> None:
    folder = organism_path(CDRL_ORGANISM)
    assert (folder / "model.safetensors").is_file() and (folder / "catts.json").is_file()
    record = json.loads((folder / "organism.json").read_text())
    assert record["base_checksum"] == weights_checksum(organism_path("base")), (
        "the base organism was retrained: rerun CDRL from it (catts tune cdrl, then catts ship cdrl)"
    )
    assert record["variant"] in CDRL_VARIANTS
    assert record["training"]["steps"] == record["cdrl_config"]["grpo"]["max_steps"]
    assert record["cdrl_config"]["model"] == "catts_graph/organism/checkpoints/base"


def test_ship_cdrl_copies_the_checkpoint_and_records_its_origin(tmp_path: Path) -> None:
    run = tmp_path / "tuning" / "entropy+mix"
    (run / "cdrl").mkdir(parents=True)
    for name in ("model.safetensors", "config.json", "catts.json", "tokenizer.json"):
        (run / "cdrl" / name).write_bytes((organism_path("base") / name).read_bytes())
    summary = {"seconds": 12.5, "steps": 3, "reward_means": {"accuracy": 0.5}, "losses": [0.1]}
    (run / "cdrl" / "cdrl_summary.json").write_text(json.dumps(summary))
    (run / "cdrl.yaml").write_text("model: somewhere\noutput_dir: elsewhere\ngrpo: {max_steps: 3}\n")
    target = ship_cdrl(tmp_path / "tuning", "entropy+mix", tmp_path / "shipped")
    assert (target / "model.safetensors").read_bytes() == (
        organism_path("base") / "model.safetensors"
    ).read_bytes()
    record = json.loads((target / "organism.json").read_text())
    assert record["variant"] == "entropy+mix"
    assert record["base_checksum"] == weights_checksum(organism_path("base"))
    assert record["training"] == {"seconds": 12.5, "steps": 3, "reward_means": {"accuracy": 0.5}}
    assert record["cdrl_config"] == {
        "model": "catts_graph/organism/checkpoints/base",
        "grpo": {"max_steps": 3},
    }
    with pytest.raises(FileNotFoundError, match="no finished CDRL run of 'missing'"):
        ship_cdrl(tmp_path / "tuning", "missing", tmp_path / "other")


def test_the_hard_level_separates_the_organisms(base_model) -> None:
    """On the first 30 validation items of level 4 the shipped base answered 0.733, the expert 0.900
    (docs/organism/hard-level.md has 200 items per set); the table has a row per model and set."""
    from catts_experiments.evaluate import level_accuracy, level_table
    from catts_graph.eval.synthetic import HARD_LEVEL

    models = {"base": base_model, "expert": organism_model("expert")}
    result = level_accuracy(models, level=HARD_LEVEL, items=30, sets=[("validation", 0)])
    base, expert = (result["accuracy"][m]["validation seed 0"]["all"] for m in ("base", "expert"))
    assert base["accuracy"] <= 0.8 and expert["accuracy"] >= 0.85, result
    assert base["low"] <= base["accuracy"] <= base["high"] and base["n"] == 30
    table = level_table(result).splitlines()
    assert table[2] == "| model | set | all | colour | compare | count | digits | position |"
    assert [line.split(" | ")[:2] for line in table[4:]] == [
        ["| base", "validation seed 0"],
        ["| expert", "validation seed 0"],
    ]


def test_the_organism_describes_then_answers(base_model) -> None:
    from catts_graph.eval.synthetic import make_question, render
    from catts_graph.task import base_prompt

    question = make_question("test", 4, kind="digits", level=1)
    (sample,) = base_model.sample(
        [render(question.scene)], base_prompt(question.question, None, base_model), 1, temperature=0.0
    )
    assert sample.text.startswith("digit ") and "\n\\boxed{" in sample.text
    assert reply_text(question).startswith("digit ")


def test_organism_expert_votes_and_critiques(base_model) -> None:
    from catts_graph.eval.synthetic import make_question, render
    from catts_graph.experts import Critic, Voter
    from catts_graph.organism.expert import OrganismExpert

    question = make_question("test", 1, kind="count", level=1)
    image = render(question.scene)
    expert = OrganismExpert(vlm=base_model)
    candidates = [question.answer, str(int(question.answer) + 1)]
    result = Voter(expert).vote(
        question=question.question, options=None, images=[image], candidates=candidates
    )
    assert result.ok and len(result.value) == 2 and abs(sum(result.value) - 1) < 1e-6
    critique = Critic(expert).critique(
        question=question.question,
        options=None,
        images=[image],
        response=f"\\boxed{{{question.answer}}}",
        step=f"\\boxed{{{question.answer}}}",
    )
    assert critique.ok and ("Verdict: correct" in critique.value or "Verdict: incorrect" in critique.value)
    # No Planner: the reply is not JSON, and the role reports it as malformed.
    from catts_graph.experts import Planner

    plan = Planner(expert, retries=0).plan(
        question=question.question,
        options=None,
        images=[image],
        summary={"votes": {}},
        allowed=["self_consistency"],
    )
    assert not plan.ok


def test_the_organism_expert_reads_a_question_once_for_both_roles(base_model) -> None:
    from catts_graph.eval.synthetic import make_question, render
    from catts_graph.experts import Critic, Voter
    from catts_graph.organism.expert import OrganismExpert

    class Counting:
        """The organism, counting its greedy readings (everything else is the organism's)."""

        def __init__(self, vlm: Any) -> None:
            self.vlm, self.readings = vlm, 0

        def __getattr__(self, name: str) -> Any:
            return getattr(self.vlm, name)

        def sample(self, *args: Any, **kwargs: Any) -> Any:
            self.readings += 1
            return self.vlm.sample(*args, **kwargs)

    counting = Counting(base_model)
    expert = OrganismExpert(vlm=counting)

    def ask(expert: OrganismExpert, index: int) -> tuple[Any, Any]:
        question = make_question("test", index, kind="count", level=1)
        images = [render(question.scene)]
        candidates = [question.answer, str(int(question.answer) + 1)]
        vote = Voter(expert).vote(
            question=question.question, options=None, images=images, candidates=candidates
        )
        response = f"\\boxed{{{question.answer}}}"
        critique = Critic(expert).critique(
            question=question.question, options=None, images=images, response=response, step=response
        )
        assert vote.ok and critique.ok
        return vote.value, critique.value

    first = ask(expert, 1)
    assert counting.readings == 1  # the Critic reused the Voter's reading
    ask(expert, 2)
    assert counting.readings == 2
    assert ask(expert, 1) == first and counting.readings == 2  # still kept
    assert ask(OrganismExpert(vlm=base_model), 1) == first  # what an expert keeping nothing says
    with torch.no_grad():
        base_model.model.get_input_embeddings().weight.mul_(1.0)  # written in place: read again
    assert ask(expert, 1) == first and counting.readings == 3


def test_training_runs_and_saves_a_loadable_checkpoint(tmp_path: Path) -> None:
    from catts_graph.models import TransformersVLM

    path = train_organism(
        "base", tmp_path / "m", steps_scale=2 / CONFIGS["base"].steps, validate_items=2, log=lambda line: None
    )
    manifest = json.loads((path / "organism.json").read_text())
    assert manifest["config"]["steps"] == 2 and manifest["examples"] == 2 * CONFIGS["base"].batch_size
    assert set(manifest["validation_accuracy"]) >= {"all"}
    vlm = TransformersVLM.from_pretrained(path, device="cpu")
    assert vlm.tokenizer.convert_tokens_to_ids("<|image_pad|>") == vlm.model.config.image_token_id
    assert len(vlm.tokenizer("blue circle top left;", add_special_tokens=False)["input_ids"]) == 5
    assert vlm.answer_prompt == "answer_short"


def _parse(*argv: str) -> argparse.Namespace:
    words = resolve_alias(argv)
    return _parser(words).parse_args(words)


def test_the_organism_commands_parse_under_their_names_and_their_old_ones() -> None:
    for argv in (("train", "organism"), ("organism", "train")):
        args = _parse(*argv, "--which", "expert", "--minutes", "5")
        assert (args.which, args.minutes) == ("expert", 5.0)
    for argv in (("measure", "organism"), ("organism", "eval")):
        args = _parse(*argv, "--noise", "0.5", "--limit", "10")
        assert (args.which, args.noise, args.limit) == ("base", 0.5, 10)
    for argv in (("reproduce",), ("organism", "reproduce")):
        args = _parse(*argv, "--quick", "--out", "x", "--level", "4")
        assert (args.quick, args.out, args.level, args.workers) == (True, "x", 4, 2)
    assert _parse("reproduce", "--workers", "1").workers == 1
    assert (_parse("reproduce").train_cdrl, _parse("reproduce", "--train-cdrl").train_cdrl) == (False, True)
    assert _parse("measure", "cdrl", "--train-cdrl").train_cdrl
    with pytest.raises(SystemExit):
        _parse("reproduce", "--workers", "3")


def test_the_reproduction_refuses_a_worker_count_before_any_step(tmp_path: Path) -> None:
    from catts_experiments.reproduce import reproduce

    with pytest.raises(ValueError, match=r"workers: 3; expected 1 or 2"):
        reproduce(tmp_path / "run", workers=3)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_the_quick_reproduction_runs_every_step_and_resumes(tmp_path: Path) -> None:
    from catts_experiments.reproduce import Plan, reproduce
    from catts_experiments.reproduce.plan import EXPERT_METHODS, SCALING_METHODS
    from catts_experiments.reproduce.run import TRAINING_STEPS

    out = tmp_path / "run"
    lines: list[str] = []
    # Two workers: the training chain in a process of its own beside the CA-TTS steps.
    results = reproduce(out, Plan.quick(), workers=2, log=lines.append)
    worker = json.loads((out / "timings-worker.json").read_text())
    assert list(worker) == list(TRAINING_STEPS) and all(seconds > 0 for seconds in worker.values())
    assert "Warning" not in (out / "worker.log").read_text()  # the worker's module runs once, quietly
    assert not set(TRAINING_STEPS) & {
        k for k, v in json.loads((out / "timings.json").read_text()).items() if v > 5
    }
    assert 0 < results.wall_seconds < results.total_seconds + 60
    assert (out / "cdrl" / "model.safetensors").is_file()
    exported = json.loads((out / "cdrl" / "catts.json").read_text())
    assert exported == json.loads((organism_path("base") / "catts.json").read_text())
    assert results.cdrl.steps == 1
    assert {(row.perturb, row.level) for row in results.probe.after} == {
        ("gaussian", 0.0),
        ("gaussian", 1.0),
    }
    assert set(results.scaling["self"]) == set(SCALING_METHODS)
    assert set(results.scaling["expert"]) == set(EXPERT_METHODS)
    assert set(results.scaling["self"]["majority"]) == {"1", "2"}
    assert results.ablations is None and results.step_repair is None  # on the hard level only
    assert results.reflection.items == 3 and 0 <= results.reflection.accuracy_after <= 1
    hard = results.hard
    assert hard.plan.level == 4 and (out / "level4" / "scaling-expert").is_dir()
    assert set(hard.scaling["expert"]) == set(EXPERT_METHODS)
    # On the hard level the base is not its own expert (Plan.hard_self_expert): the pool's offline
    # methods only, in their own store.
    assert set(hard.scaling["self"]) == set(SCALING_METHODS) - set(EXPERT_METHODS)
    assert (out / "level4" / "scaling-pool").is_dir() and not (out / "level4" / "scaling-self").exists()
    assert len(hard.ablations) == 7 and len(hard.ablation_effects) == 6
    assert {(v.method, v.n) for v in hard.versus} >= {("catts_paper (expert organism)", 1)}
    assert hard.reflection.items == 3
    assert set(hard.step_repair.rows) == {
        "adaptive",
        "adaptive + step floor, no repair",
        "adaptive + step_repair",
    }
    from catts_graph.eval.store import db_path, read_store

    with read_store(db_path(out / "level4" / "scaling-expert")) as store:
        assert all(row["item_id"].endswith("-level4") for row in store.results())
    assert "## The hard regime (generator level 4" in (out / "results.md").read_text()
    assert {"probability", "entropy", "tokensar", "clipscore"} <= set(results.step_signals.signals)
    assert results.step_signals.fused_without_clip is not None
    mmb = results.mmboundary
    assert set(mmb.probe) == {"base", "pretrained", "sft", "rl"}
    assert mmb.pretrain["steps"] == mmb.sft["steps"] == mmb.rl["steps"] == 1
    assert (out / "mmboundary" / "rl" / "model.safetensors").is_file()
    for name in ("probe_before", "probe_after", "scaling", "accuracy_vs_tokens"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 5_000
    assert (out / "results.md").read_text() == lines[-2]  # the tables are what it printed
    # A second run (one worker) resumes from the stores: nothing is recomputed, the tables are the same.
    again = reproduce(out, Plan.quick(), log=lambda line: None)
    assert [i["workers"] for i in json.loads((out / "wall.json").read_text())["invocations"]] == [2, 1]
    assert again.to_json()["scaling"] == results.to_json()["scaling"] and again.probe == results.probe
    assert again.to_json()["mmboundary"] == results.to_json()["mmboundary"]
    assert again.reflection == results.reflection
    assert again.to_json()["hard"] == results.to_json()["hard"]
    # The timings add up over runs; the resumed run added little (nothing was recomputed).
    assert again.total_seconds - results.total_seconds < 0.25 * results.total_seconds
    assert again.seconds["cdrl"] == pytest.approx(results.seconds["cdrl"], abs=1.0)


def test_the_trained_reply_is_scored_correct_for_every_kind() -> None:
    """The reply the organisms learn names the option's text, which the answer extractor maps back
    to the gold letter; integer answers are boxed as they are."""
    from catts_graph.answers import extract_answer
    from catts_graph.eval.synthetic import KINDS, make_question
    from catts_graph.organism.language import spoken_answer

    for kind in KINDS:
        for index in range(30):
            question = make_question("validation", index, kind=kind)
            options = list(question.options) if question.options else None
            assert extract_answer(reply_text(question), options) == question.answer
            if options:
                assert spoken_answer(question) in options and "\\boxed{" + spoken_answer(question) + "}" in (
                    reply_text(question)
                )


def test_the_word_tokenizer_costs_a_token_a_word_and_round_trips_any_text(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from catts_graph.eval.synthetic import make_question
    from catts_graph.models.tiny import build_tiny_qwen25vl
    from catts_graph.organism.language import organism_words

    words = organism_words(20)
    assert words == organism_words(20)  # deterministic
    assert {"Ġcircle", "Ġtriangle", "boxed", "Ġleft"} <= set(words)
    path = build_tiny_qwen25vl(tmp_path / "m", words=words)
    tokenizer = AutoTokenizer.from_pretrained(path)
    byte_level = AutoTokenizer.from_pretrained(build_tiny_qwen25vl(tmp_path / "b"))
    reply = reply_text(make_question("test", 3, kind="count", level=3))
    ids = tokenizer(reply, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == reply
    assert len(ids) * 2.5 < len(byte_level(reply, add_special_tokens=False)["input_ids"])
    # Words outside the vocabulary, and any Unicode, fall back to bytes and decode back exactly.
    for text in ("zebra crossing ünïcödé 漢字 \\boxed{42}", "  two  spaces\n\tand tabs"):
        assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text


def test_training_resumes_bit_for_bit(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    scale = 4 / CONFIGS["base"].steps
    quiet = {"validate_items": 0, "log": lambda line: None, "threads": 1}
    straight = train_organism("base", tmp_path / "straight", steps_scale=scale, **quiet)
    state = tmp_path / "state"
    stopped = train_organism(
        "base", tmp_path / "split", steps_scale=scale, state_dir=state, stop_after_minutes=0.0, **quiet
    )
    assert stopped is None and (state / "state.pt").is_file()
    resumed = train_organism("base", tmp_path / "split", steps_scale=scale, state_dir=state, **quiet)
    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    manifest = json.loads((resumed / "organism.json").read_text())
    assert manifest["examples"] == 4 * CONFIGS["base"].batch_size
    # Stopped at a step of the schedule: a checkpoint that says so, and the state runs on to the end.
    early_state = tmp_path / "early-state"
    early = train_organism(
        "base", tmp_path / "early", steps_scale=scale, state_dir=early_state, stop_at_step=2, **quiet
    )
    assert early is not None
    early_manifest = json.loads((early / "organism.json").read_text())
    assert (
        early_manifest["stopped_at_step"] == 2
        and early_manifest["examples"] == 2 * CONFIGS["base"].batch_size
    )
    finished = train_organism(
        "base", tmp_path / "finished", steps_scale=scale, state_dir=early_state, **quiet
    )
    c = load_file(finished / "model.safetensors")
    assert all((a[k] == c[k]).all() for k in a)
    assert "stopped_at_step" not in json.loads((finished / "organism.json").read_text())
    with pytest.raises(ValueError, match="stop_at_step=9"):
        train_organism("base", tmp_path / "x", steps_scale=scale, stop_at_step=9, **quiet)


def test_the_clip_organism_trains_saves_and_measures_its_map(tmp_path: Path) -> None:
    """A few real contrastive steps, the checkpoint reloads to the same weights, and the map
    measurement reads a lift for every asked-about object (1 = a map that ignores the question)."""
    import torch

    from catts_experiments.clip import relevance_lift, train_clip_organism
    from catts_graph.organism.clip import ClipOrganismConfig, load_clip_organism
    from catts_graph.relevance import ClipRelevance

    config = ClipOrganismConfig(steps=2, batch_size=8, warmup_steps=1)
    path = train_clip_organism(tmp_path / "clip", config=config, threads=1, log=lambda line: None)
    model, tokenizer = load_clip_organism(path)
    again, _ = load_clip_organism(path)
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True)
    )
    measured = relevance_lift(ClipRelevance(model, tokenizer), limit=6)
    assert measured["n"] == 6 and 0 < measured["area"] < 0.2 and measured["lift"] > 0
    with pytest.raises(FileNotFoundError, match="catts train clip"):
        load_clip_organism(tmp_path / "missing")


def test_the_grounding_loss_is_minus_log_the_softmax_mass_on_the_named_patches() -> None:
    import torch

    from catts_experiments.clip import grounding_loss

    # Two patches, 2-d: patch 0 along the text, patch 1 orthogonal; cosines 1 and 0.
    patches = torch.tensor([[[2.0, 0.0], [0.0, 3.0]]])
    text = torch.tensor([[5.0, 0.0]])
    shares = torch.tensor([[1.0, 0.5]])
    softmax0 = math.exp(2.0) / (math.exp(2.0) + math.exp(0.0))
    mass = softmax0 * 1.0 + (1 - softmax0) * 0.5
    loss = grounding_loss(patches, text, shares, "softmax", 2.0).item()
    assert loss == pytest.approx(-math.log(mass), rel=1e-5)
    # Min-max: cosines less their minimum (1, 0), normalised: all the map on patch 0, share 1.
    assert grounding_loss(patches, text, shares, "minmax").item() == pytest.approx(0.0, abs=1e-6)
    three = torch.tensor([[[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]])  # cosines 1, 0.7071, 0
    lifted = [1.0, 1 / math.sqrt(2), 0.0]
    expected = -math.log((lifted[0] * 0.2 + lifted[1] * 1.0) / sum(lifted))
    loss = grounding_loss(three, text, torch.tensor([[0.2, 1.0, 1.0]]), "minmax").item()
    assert loss == pytest.approx(expected, rel=1e-5)
    # No mass on covered patches: the clamp, not infinity; an unknown kind is refused.
    assert math.isfinite(grounding_loss(patches, text, torch.zeros(1, 2), "minmax").item())
    with pytest.raises(ValueError, match="grounding='max'"):
        grounding_loss(patches, text, shares, "max")


def test_the_clip_batches_know_which_patches_the_phrase_names() -> None:
    """The shares come from the scene: each image's named objects cover a few patches, partly."""
    import random

    from catts_experiments.clip import _batch

    images, positives, negatives, mask, shares = _batch(random.Random(0), 0, 6, 0, 14)
    assert len(images) == len(positives) == len(negatives) == 6 and tuple(shares.shape) == (6, 196)
    assert bool(mask.diagonal().all())
    for row in shares:
        assert 0 < float(row.sum()) < 196 * 0.3 and float(row.max()) <= 1.0 and float(row.min()) >= 0.0


def test_the_shipped_clip_organism_points_at_the_named_object() -> None:
    """The shipped CLIP organism's map puts several times its area's share of relevance on the
    object the question names (16.5 on 200 items; random tiny CLIPs 0.92-1.63; docs/organism.md)."""
    from catts_experiments.clip import relevance_lift
    from catts_graph.organism.clip import load_clip_organism
    from catts_graph.relevance import ClipRelevance

    model, tokenizer = load_clip_organism()
    assert relevance_lift(ClipRelevance(model, tokenizer), limit=40)["lift"] > 8.0
