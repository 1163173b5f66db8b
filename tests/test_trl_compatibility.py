"""docs/trl_compatibility.md holds: each feature family it calls tested names tests that exist, and the families it
lists without a test of their own behave as it says (gradient checkpointing, top_entropy_quantile, AsyncGRPO)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
PAGE = REPO / "docs" / "trl_compatibility.md"


def _rows() -> list[tuple[str, str, list[str]]]:
    """(family, status, [tests/file.py::test_name, ...]) of the page's table."""
    rows = []
    for line in PAGE.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 4 or cells[0] in ("feature family", "") or set(cells[0]) <= {"-"}:
            continue
        rows.append((cells[0], cells[1], re.findall(r"tests/[\w/]+\.py::\w+", cells[3])))
    return rows


def _test_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}


def test_every_family_tested_here_names_tests_that_exist():
    rows = _rows()
    families = " ".join(f for f, _, _ in rows).lower()
    for required in ("vllm", "tools", "environment", "rollout_func", "num_iterations", "loss_type",
                     "top_entropy_quantile", "liger", "gradient checkpointing", "peft", "reward model", "evaluation",
                     "asyncgrpotrainer", "deepspeed"):
        assert required in families, f"docs/trl_compatibility.md lists no row for {required!r}"
    statuses = {s for _, s, _ in rows}
    assert statuses <= {"tested here on CPU", "supported, untested on GPU", "refused"}, statuses
    for family, status, tests in rows:
        if status in ("tested here on CPU", "refused"):
            assert tests, f"{family!r} is {status!r} but names no test"
        for ref in tests:
            file, name = ref.split("::")
            assert (REPO / file).exists(), f"{family!r} names {ref}, whose file does not exist"
            assert name in _test_names(REPO / file), f"{family!r} names {ref}, which does not exist"


def test_async_grpo_config_is_refused_naming_the_way_out(grpo_trainer, tmp_path):
    from trl.experimental.async_grpo import AsyncGRPOConfig

    from attnrl.trainers.grpo import AttnGRPOTrainer, refuse_async_config

    args = AsyncGRPOConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, bf16=False)
    with pytest.raises(TypeError, match="not supported by attnrl.*AttnGRPOTrainer.*use_vllm"):
        refuse_async_config(args)
    with pytest.raises(TypeError, match="AsyncGRPOTrainer is not a GRPOTrainer subclass"):
        AttnGRPOTrainer(model="unused-never-loaded", reward_funcs=lambda **k: [0.0], args=args)


def _losses_and_gamma(trainer):
    trainer.train()
    return [e["loss"] for e in trainer.state.log_history if "loss" in e], trainer.last_credit.gamma


def test_gradient_checkpointing_trains_on_the_same_credit(grpo_trainer, tmp_path):
    """The on-policy statistics come from the loss forward; with gradient checkpointing that forward is recomputed
    in the backward pass, which must neither change gamma nor log the step's credit twice."""
    torch.manual_seed(0)
    plain_losses, plain_gamma = _losses_and_gamma(grpo_trainer(output_dir=tmp_path / "a", seed=0))
    torch.manual_seed(0)
    trainer = grpo_trainer(output_dir=tmp_path / "b", seed=0, gradient_checkpointing=True,
                           gradient_checkpointing_kwargs={"use_reentrant": False})
    losses, gamma = _losses_and_gamma(trainer)
    torch.testing.assert_close(gamma, plain_gamma)
    assert losses == pytest.approx(plain_losses, rel=1e-5)
    assert gamma.max() > 1.0
    logged = [e for e in trainer.state.log_history if "credit/gamma_mean" in e]
    assert len(logged) == 1


def test_top_entropy_quantile_masks_the_loss_and_credit_still_shapes(grpo_trainer):
    """TRL's high-entropy token mask and attnrl's gamma compose: both are per-token factors of the loss."""
    trainer = grpo_trainer(top_entropy_quantile=0.5)
    trainer.train()
    assert trainer.last_credit.gamma.max() > 1.0
    logged = {k for e in trainer.state.log_history for k in e}
    assert "credit/amplified_frac" in logged and "loss" in logged


def test_trl_is_pinned_to_the_minor_release_the_tests_ran_on():
    from importlib.metadata import version

    import tomllib
    from packaging.requirements import Requirement

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    trl = next(Requirement(d) for d in deps if Requirement(d).name == "trl")
    assert trl.specifier.contains(version("trl")), (str(trl.specifier), version("trl"))
    bounds = {s.operator: s.version for s in trl.specifier}
    assert bounds.keys() == {">=", "<"} and bounds[">="].split(".")[:2] == version("trl").split(".")[:2]
