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


def _extending_blocks() -> list[str]:
    section = README.split("\n## Extending\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_the_extending_examples_run_as_written(tmp_path):
    """Every Python example of "Extending" runs: the strategy shapes a batch, the reward scores, the task makes a
    dataset, and a model loaded with the user's attention implementation is captured (attnrl:<name>)."""
    import torch
    from attnrl.rewards import TASKS, make_dataset

    from attnrl.credit import CreditInputs, CreditParams, get_strategy
    from attnrl.credit.strategies import STRATEGIES
    from attnrl.utils.tiny import tiny_causal_lm

    strategy, reward, task, attention = _extending_blocks()
    try:
        exec(strategy, {})
        x = CreditInputs(response_mask=torch.ones(2, 8, dtype=torch.bool),
                         fai=torch.arange(16.0).view(2, 8), waad=torch.zeros(2, 8))
        out = get_strategy("late_anchors")(x, CreditParams())
        assert out.gamma[:, :4].eq(1.0).all() and out.gamma[:, 4:].gt(1.0).any()
    finally:
        STRATEGIES.unregister("late_anchors")
    scope: dict = {}
    exec(reward, scope)
    assert scope["length_reward"](["p", "p"], ["short", "x" * 300]) == [1.0, 0.0]
    try:
        exec(task, {})
        rows = make_dataset("times_table", "train", 3)
        assert len(rows) == 3 and TASKS.get("times_table").is_correct(rows[0]["answer"], rows[0])
    finally:
        TASKS.unregister("times_table")
    path = tmp_path / "tiny"
    tiny_causal_lm("llama").save_pretrained(path)
    scope = {"path": str(path)}
    exec(attention, scope)
    from attnrl.credit.assigner import CreditAssigner
    from attnrl.credit.config import CreditConfig

    model = scope["model"]
    CreditAssigner(CreditConfig(credit_strategy="coupled", credit_layers=[1]), model)  # captures it
    assert model.config._attn_implementation == "attnrl:my_attention"
