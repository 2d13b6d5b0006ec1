"""``catts measure scaling``: the hard level's scaling step on another generator seed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from catts_experiments.fresh_scaling import THRESHOLDS, fresh_scaling, render_markdown

ROOT = Path(__file__).resolve().parents[1]


def test_the_thresholds_are_the_reproductions_choice():
    hard = json.loads((ROOT / "docs" / "organism" / "results.json").read_text())["hard"]
    assert hard["thresholds"]["chosen"] == THRESHOLDS


def test_the_tables_render_every_n_slope_and_comparison():
    cell = {"accuracy": 50.0, "ci": [40.0, 60.0], "tokens": 100.0, "expert_calls": 1.0, "items": 2}
    result = {
        "level": 4,
        "seed": 1,
        "test_items": 2,
        "ns": [1, 2],
        "subsets": 16,
        "n_boot": 10,
        "thresholds": dict(THRESHOLDS),
        "scaling": {
            "majority": {"1": cell, "2": cell},
            "catts_paper (expert organism)": {"1": cell, "2": cell},
        },
        "slopes": {
            "majority": {"slope": 1.0, "ci": [0.5, 1.5], "ratio": 1.0, "ratio_ci": [1.0, 1.0]},
            "catts_paper (expert organism)": {
                "slope": 2.5,
                "ci": [1.0, 4.0],
                "ratio": 2.5,
                "ratio_ci": [1.2, 5.0],
            },
        },
        "versus": [
            {
                "method": "catts_paper (expert organism)",
                "n": 2,
                "accuracy": 75.0,
                "reference_accuracy": 50.0,
                "difference": 25.0,
                "difference_ci": [0.0, 50.0],
            }
        ],
        "savings": [],
    }
    text = render_markdown(result, "catts measure scaling --out x")
    assert "```bash\ncatts measure scaling --out x\n```" in text
    assert (
        "| catts_paper (expert organism) | 50.0 [40.0, 60.0] | 50.0 [40.0, 60.0] | 2.50 [1.00, 4.00] | "
        "2.50 [1.20, 5.00] |" in text
    )
    assert "| catts_paper (expert organism) | 2 | 75.0 | 50.0 | +25.0 [0.0, 50.0] |" in text
    assert "adaptive policy" not in text  # no saving measured, no table


def test_the_step_runs_on_the_organisms_and_resumes(tmp_path):
    first = fresh_scaling(test=2, seed=1, run_dir=tmp_path, n_boot=20)
    assert first["seed"] == 1 and first["ns"] == [1, 2, 4, 8, 16, 32]
    methods = set(first["scaling"])
    assert {"majority", "catts_paper (expert organism)", "catts_adaptive (expert organism)"} <= methods
    for per_n in first["scaling"].values():
        assert [cell["items"] for cell in per_n.values()] == [2] * 6
    assert {(v["method"], v["n"]) for v in first["versus"]} >= {("catts_paper (expert organism)", 8)}
    assert fresh_scaling(test=2, seed=1, run_dir=tmp_path, n_boot=20) == first  # read back from the stores


@pytest.mark.parametrize(("name", "arguments"), [("scaling-seed1", "--test 500 --seed 1")])
def test_the_committed_tables_render_from_their_json_byte_for_byte(name: str, arguments: str) -> None:
    docs = ROOT / "docs" / "organism"
    result = json.loads((docs / f"{name}.json").read_text())
    command = f"catts measure scaling {arguments} --threads 1 --out docs/organism/{name}"
    text = (docs / f"{name}.md").read_text()
    assert f"```bash\n{command}\n```" in text
    assert render_markdown(result, command) == text
