"""The README stays true to the code: the configuration table and the graph picture."""

from __future__ import annotations

import re
from pathlib import Path

from catts_graph.config import CATTSConfig

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_configuration_table_matches_the_config():
    rows = re.findall(r"^\| `(\w+)` \| `([^`]*)` \| (.*) \|$", README, flags=re.MULTILINE)
    assert rows == CATTSConfig.describe(), "regenerate the README table from CATTSConfig.describe()"


def test_graph_picture_matches_the_snapshot():
    block = README.split("```mermaid", 1)[1].split("```", 1)[0]
    snapshot = (ROOT / "tests" / "snapshots" / "graph.mmd").read_text()
    wanted = [
        line
        for line in snapshot.splitlines()
        if "-->" in line or "-.->" in line or line.strip().endswith(")")
    ]
    missing = [line for line in wanted if line not in block.splitlines()]
    assert not missing, f"README graph is out of date: {missing}"


def test_the_organism_document_shows_the_committed_run() -> None:
    """docs/organism.md quotes, verbatim, the tables `catts organism reproduce` wrote and printed
    (docs/organism/results.md), and every figure it shows is there."""
    document = (ROOT / "docs" / "organism.md").read_text()
    begin, end = "<!-- results: begin -->\n", "<!-- results: end -->"
    quoted = document[document.index(begin) + len(begin) : document.index(end)]
    assert quoted.strip() == (ROOT / "docs" / "organism" / "results.md").read_text().strip()
    for name in ("validation-seed0", "test-seed0", "test-seed1"):  # the CDRL variants (tune-cdrl)
        begin, end = f"<!-- cdrl-tuning {name}: begin -->\n", f"<!-- cdrl-tuning {name}: end -->"
        quoted = document[document.index(begin) + len(begin) : document.index(end)]
        assert (
            quoted.strip() == (ROOT / "docs" / "organism" / "cdrl-tuning" / f"{name}.md").read_text().strip()
        )
    figures = re.findall(r"\]\((organism/figures/[\w.]+\.png)\)", document)
    assert len(figures) >= 4
    for figure in figures:
        assert (ROOT / "docs" / figure).stat().st_size > 5_000


def test_the_readme_thresholds_are_the_config_defaults() -> None:
    """The README says which adaptive thresholds were chosen on the organism's validation split;
    they are the defaults the code ships."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Thresholds") :]
    section = section[: section.index("\n## ")]
    defaults = CATTSConfig()
    for name in ("fast_path_share", "fast_path_confidence"):
        match = re.search(rf"`{name}` = ([0-9]+(?:\.[0-9]+)?)", section)
        assert match, f"README Thresholds section does not state {name}"
        assert float(match.group(1)) == getattr(defaults, name)


def test_the_mechanics_page_quotes_the_measured_tables() -> None:
    """docs/mechanics.md quotes, verbatim, the tables `catts organism tune`, `steps` and `cdrl` wrote."""
    document = (ROOT / "docs" / "mechanics.md").read_text()
    for name in ("voting", "steps", "cdrl"):
        begin, end = f"<!-- {name}: begin -->\n", f"<!-- {name}: end -->"
        quoted = document[document.index(begin) + len(begin) : document.index(end)]
        assert quoted.strip() == (ROOT / "docs" / "organism" / f"{name}.md").read_text().strip(), name
