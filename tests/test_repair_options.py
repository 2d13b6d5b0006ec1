"""``catts measure repair-options``: step_repair's temperature measured at the same routing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from catts_experiments.repair_options import (
    ARMS,
    CHOSEN,
    choose,
    render_markdown,
    repair_counts,
    repair_options,
    summarise,
)

ROOT = Path(__file__).resolve().parents[1]


def test_the_settings_are_the_reproductions_choice():
    hard = json.loads((ROOT / "docs" / "organism" / "results.json").read_text())["hard"]
    assert {**hard["thresholds"]["chosen"], "step_floor": hard["step_repair"]["chosen"]} == CHOSEN


def test_repair_counts_read_the_step_repair_entry():
    trace = [
        {"module": "base_model", "inputs": {"n": 4}},
        {
            "module": "step_repair",
            "inputs": {
                "repairs": [
                    {"answer_before": "A", "answer_after": "A"},  # unchanged
                    {"answer_before": "A", "answer_after": "B"},  # from right
                    {"answer_before": "C", "answer_after": "B"},  # neither
                    {"answer_before": "C", "answer_after": "A"},  # to right
                    {"answer_before": None, "answer_after": "A"},  # to right
                ]
            },
        },
    ]
    assert repair_counts(trace, lambda answer: answer == "A") == {
        "repairs": 5,
        "changed": 4,
        "to_right": 2,
        "from_right": 1,
    }
    assert repair_counts([{"module": "step_repair", "inputs": {}}], bool) == dict.fromkeys(
        ("repairs", "changed", "to_right", "from_right"), 0
    )


def cells(correct, tokens=100.0, calls=1.0, changed=0):
    none = {"repairs": 1, "changed": changed, "to_right": 0, "from_right": 0}
    return {
        "correct": [float(c) for c in correct],
        "tokens": [tokens] * len(correct),
        "expert_calls": [calls] * len(correct),
        "repairs": [none] * len(correct),
    }


def test_the_summary_pairs_the_arms_and_the_choice_follows_its_rule():
    # 8 items: floor only 4 right; run's temperature fixes item 4; greedy fixes items 4-7.
    per_arm = {
        "floor only": cells([1, 1, 1, 1, 0, 0, 0, 0]),
        "repair at the run's temperature": cells([1, 1, 1, 1, 1, 0, 0, 0], tokens=130.0, changed=1),
        "greedy repair": cells([1, 1, 1, 1, 1, 1, 1, 1], tokens=120.0, calls=1.5),
    }
    summary = summarise(per_arm, n_boot=200)
    assert summary["items"] == 8
    arms = summary["arms"]
    assert [arms[name]["accuracy"] for name in ARMS] == [50.0, 62.5, 100.0]
    assert arms["greedy repair"]["expert_calls"] == 1.5 and arms["greedy repair"]["tokens"] == 120.0
    assert arms["repair at the run's temperature"]["changed"] == 8 and arms["floor only"]["repairs"] == 8
    differences = {
        (p["arm"], p["against"]): (p["difference"], p["fixed"], p["broken"]) for p in summary["pairs"]
    }
    assert differences == {
        ("repair at the run's temperature", "floor only"): (12.5, 1, 0),
        ("greedy repair", "floor only"): (50.0, 4, 0),
        ("greedy repair", "repair at the run's temperature"): (37.5, 3, 0),
    }
    chosen = choose(summary)
    assert chosen["repair_temperature"] == 0.0 and chosen["difference"] == 37.5 and chosen["ci"][0] > 0
    # Greedy no better than the default: the default stays.
    per_arm["greedy repair"] = per_arm["repair at the run's temperature"]
    assert choose(summarise(per_arm, n_boot=200))["repair_temperature"] is None
    result = {"level": 4, "n": 8, "seed": 0, "n_boot": 200, "settings": dict(CHOSEN), "validation": summary}
    result["chosen"] = chosen
    text = render_markdown(result, "catts measure repair-options --out x")
    assert "catts measure repair-options --out x" in text and "+37.5" in text and "**greedy repair**" in text


def test_the_measurement_runs_on_the_organisms_and_resumes(tmp_path):
    first = repair_options(validation=2, test=0, run_dir=tmp_path, n_boot=20)
    summary = first["validation"]
    assert summary["items"] == 2 and set(summary["arms"]) == set(ARMS)
    assert summary["arms"]["floor only"]["repairs"] == 0  # disabled: the same routing, no repair
    assert first["settings"] == CHOSEN and "test" not in first
    # Read back from the stores: the same numbers, no model call giving others.
    assert repair_options(validation=2, test=0, run_dir=tmp_path, n_boot=20) == first


@pytest.mark.parametrize(
    ("name", "arguments"),
    [
        ("repair-options", "--validation 300 --test 500"),
        ("repair-options-seed1", "--validation 0 --test 500 --seed 1"),
    ],
)
def test_the_committed_tables_render_from_their_json_byte_for_byte(name: str, arguments: str) -> None:
    docs = ROOT / "docs" / "organism"
    result = json.loads((docs / f"{name}.json").read_text())
    text = (docs / f"{name}.md").read_text()
    command = f"catts measure repair-options {arguments} --threads 1 --out docs/organism/{name}"
    assert f"```bash\n{command}\n```" in text
    assert render_markdown(result, command) == text
    assert ("chosen" in result) == ("validation" in result)
