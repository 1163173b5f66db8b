"""The README is a user guide in a fixed order, and its configuration reference is the dataclass's."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

from attnrl.credit.config import CreditConfig
from attnrl.credit.reference import SOURCES, reference_markdown

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def _between(name: str) -> str:
    m = re.search(rf"<!-- {name}:start -->\n(.*?)\n<!-- {name}:end -->", README, re.S)
    assert m, f"README has no {name} block"
    return m.group(1)


def test_configuration_reference_is_generated_from_the_dataclass():
    assert _between("credit-reference") == reference_markdown(), (
        "README's configuration reference differs from CreditConfig: regenerate it with "
        "`python -m attnrl.credit.reference`")
    names = [f.name for f in fields(CreditConfig)]
    assert set(SOURCES) == set(names), "every credit_* field needs a source in attnrl.credit.reference.SOURCES"
    for name in names:
        assert f"| `{name}` |" in README


def test_readme_follows_the_guide_order():
    headings = re.findall(r"^## (.+)$", README, re.M)
    order = ["Install", "Quick start for TRL users", "Configuration reference", "Recipes and the `attnrl` command",
             "Ray", "Extending", "What the evidence says", "Performance"]
    positions = [headings.index(h) for h in order]
    assert positions == sorted(positions), headings
    extending = README.split("\n## Extending\n", 1)[1].split("\n## ", 1)[0]
    for point in ("credit strategy", "reward", "task", "recipe", "attention implementation"):
        assert f"**A {point}" in extending or f"**An {point}" in extending, point


def test_the_step_time_table_is_the_benchmark_results_file():
    table = _between("step-time")
    measured = (Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "step_time_cpu.md").read_text()
    assert table.strip() in measured, "README's step-time table is not the one in benchmarks/results/step_time_cpu.md"
