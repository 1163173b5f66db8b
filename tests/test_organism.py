"""benchmarks.organism (the study's model organism): the Countdown-search task, its verifier and reward, the tokenizer, the builder, the sweep helpers."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from attnrl.rewards import TASKS, split_of

from benchmarks import harness
from benchmarks.organism import (
    TASK_NAME,
    CountdownSpec,
    OrganismBuildConfig,
    OrganismModelConfig,
    build_info,
    build_organism,
    countdown_trace_reward,
    generate_problems,
    load_organism,
    load_problems,
    organism_tokenizer,
    parse_answer,
    verify_trace,
    write_trace,
)
from benchmarks.organism import summarize as organism_summarize
from benchmarks.organism import sweep as organism_sweep
from benchmarks.organism.task import (
    LINE_PATTERN,
    TRACE_PATTERN,
    problem_key,
    reasoning_gym_score,
    search_lines,
    sft_examples,
    solvable,
    split_of_key,
    trace_format_reward,
)

REPO = Path(__file__).resolve().parent.parent
ORGANISM = REPO / "benchmarks" / "organism"
RIGHT = "12*5=60 [7 60] 60+7=67 60-7=53 60*7=420 x\n12+7=19 [5 19] 19+5=24 19-5=14 19*5=95"


def _load_sweep():
    return organism_sweep


@pytest.fixture(scope="module")
def problems():
    return generate_problems(CountdownSpec(), {"sft": 40, "test": 6, "val": 4, "grpo": 8}, seed=3)


# ------------------------------------------------------------------------------------------------ the task
def test_generated_solutions_are_verified_correct(problems):
    examples = sft_examples(problems["sft"], CountdownSpec(), seed=0, traces_per_problem=2)
    assert len(examples) >= 60  # most problems have a short enough search
    for example in examples:
        trace = example["completion"][0]["content"]
        numbers, target = example["numbers"], example["target"]
        assert verify_trace(trace, numbers, target), trace
        expression, value = parse_answer(trace.splitlines()[-1], numbers)
        assert value == target and reasoning_gym_score(expression, numbers, target) == 1.0  # reasoning_gym agrees
        lines = trace.splitlines()
        assert all(line.endswith(" x") for line in lines[:-1]) and not lines[-1].endswith(" x")
        assert len(lines) <= CountdownSpec().max_failures + 1
        assert trace_format_reward([trace]) == [1.0]


def test_splits_are_disjoint_and_follow_the_hash(problems):
    keys = {split: {problem_key(r["numbers"], r["target"]) for r in rows} for split, rows in problems.items()}
    assert {s: len(k) for s, k in keys.items()} == {"sft": 40, "test": 6, "val": 4, "grpo": 8}
    for split, split_keys in keys.items():
        assert all(split_of_key(k) == split for k in split_keys)
        for other, other_keys in keys.items():
            assert other == split or not split_keys & other_keys
    # the held-out split is the registry's own test split, so the registry can never train on it
    assert all(split_of(k) == "test" for k in keys["test"]) and all(split_of(k) == "train" for k in keys["sft"])
    for rows in problems.values():
        assert all(solvable(r["numbers"], r["target"], CountdownSpec().max_intermediate) for r in rows)


def test_problem_generation_is_deterministic():
    a = generate_problems(CountdownSpec(), {"val": 3, "grpo": 3}, seed=5)
    b = generate_problems(CountdownSpec(), {"val": 3, "grpo": 3}, seed=5)
    c = generate_problems(CountdownSpec(), {"val": 3, "grpo": 3}, seed=6)
    assert a == b and a != c
    row = a["val"][0]
    assert write_trace(row["numbers"], row["target"], random.Random(1), CountdownSpec()) == \
        write_trace(row["numbers"], row["target"], random.Random(1), CountdownSpec())


def test_search_is_a_depth_first_search_over_every_path():
    lines = list(search_lines([12, 7, 5], 95, random.Random(0), cap=999))
    assert sum(hit for _, hit in lines) == 1  # only 12+7=19 then 19*5 reaches 95
    assert len(lines) == 9  # 3 pairs x (+ - *): no exact division among 12, 7, 5
    assert lines[-1] != lines[0] and len({line for line, _ in lines}) == 9
    assert all(LINE_PATTERN.fullmatch(line) for line, _ in lines)
    assert not solvable([2, 3, 5], 99, cap=999) and solvable([2, 3, 5], 25, cap=999)


@pytest.mark.parametrize(("completion", "reward"), [
    (RIGHT, 1.0),
    (RIGHT.splitlines()[-1], 1.0),  # the last line alone is the answer
    ([{"role": "assistant", "content": RIGHT}], 1.0),  # conversational completion
    (RIGHT + "\n", 1.0),
    (RIGHT.replace("19*5=95", "19*5=96"), 0.0),  # wrong arithmetic
    (RIGHT.replace("12+7=19 [5 19] 19+5=24 19-5=14 19*5=95", "12+7=20 [5 20] 20*5=100 19*5=95"), 0.0),
    (RIGHT.splitlines()[0], 0.0),  # a failed line last
    (RIGHT + " x", 0.0),
    (RIGHT[:-3], 0.0),  # cut off
    ("12+7=19 [5 19] 19*5=95 extra", 0.0),  # not the line grammar
    ("19*5=95", 0.0),  # 19 is not one of the numbers; 12 and 7 unused
    ("12+6=18 [5 18] 18*5=90", 0.0),  # 6 is not a number of the problem
    ("12+7=19 [5 19] 19*5=95 19+5=24", 0.0),  # the last attempt is what counts
    ("", 0.0),
])
def test_reward_is_one_exactly_for_correct_answers(completion, reward):
    assert countdown_trace_reward(["p"], [completion], numbers=[[12, 7, 5]], target=[95], split=["test"]) == [reward]


def test_verifier_agrees_with_reasoning_gym_on_right_and_wrong_lines(problems):
    """verify_trace runs without reasoning_gym; its verdict must equal reasoning_gym's on every parsable line."""
    rng = random.Random(0)
    examples = sft_examples(problems["sft"], CountdownSpec(), seed=1, traces_per_problem=2)
    checked = right = 0
    for example in examples:
        numbers, target = example["numbers"], example["target"]
        for line in example["completion"][0]["content"].splitlines():
            # the line; a dead end without its mark (exact steps, wrong value); one digit changed (mostly unparsable)
            variants = [line, line.removesuffix(" x")] + [_change_one_digit(line, rng) for _ in range(3)]
            for text in variants:
                parsed = parse_answer(text, numbers)
                if parsed is None:
                    continue
                ours = verify_trace(text, numbers, target)
                assert ours == (reasoning_gym_score(parsed[0], numbers, target) == 1.0), (text, numbers, target)
                checked += 1
                right += ours
    assert checked >= 60 and 0 < right < checked  # both verdicts occur


def _change_one_digit(line: str, rng: random.Random) -> str:
    digits = [i for i, ch in enumerate(line) if ch.isdigit()]
    i = rng.choice(digits)
    return line[:i] + str((int(line[i]) + rng.randrange(1, 10)) % 10) + line[i + 1:]


def test_reasoning_gym_verifier_and_registry():
    assert reasoning_gym_score("(12 + 7) * 5", [12, 7, 5], 95) == 1.0
    assert reasoning_gym_score("12 * 7 + 5", [12, 7, 5], 95) < 1.0
    task = TASKS[TASK_NAME]
    assert task.is_correct(RIGHT, {"numbers": [12, 7, 5], "target": 95})
    assert not task.is_correct("x", {"numbers": [12, 7, 5], "target": 95})
    assert task.reward_funcs[0] is countdown_trace_reward
    assert task.reward_funcs[1]([RIGHT, "12 apples"]) == [1.0, 0.0]


def test_four_number_lines_consume_two_steps_before_the_pair():
    numbers, target = [3, 4, 5, 6], 3 * 4 + 5 * 6
    line = "4*3=12 [5 6 12] 6*5=30 [12 30] 30+12=42"
    assert verify_trace(line, numbers, target)
    assert parse_answer(line, numbers) == ("(6 * 5) + (4 * 3)", 42)  # written as 30+12
    assert not verify_trace("4*3=12 [5 6 12] 30+12=42", numbers, target)  # 30 not in the pool, 5 and 6 unused
    assert not verify_trace("4*3=12 [5 6 12] 12+12=24 [5 6 24] 24+6=30", numbers, 30)  # 12 used twice
    assert not verify_trace("4*3=12 [5 6 12] 12+6=18 [5 18] 18*5=90", numbers + [1], 90)  # 1 never used
    assert verify_trace("4*3=12 [5 6 12] 12+6=18 [5 18] 18*5=90", numbers, 90)


def test_spec_validation_names_the_problem():
    with pytest.raises(ValueError, match="numbers per problem"):
        CountdownSpec(min_numbers=2).validate()
    with pytest.raises(ValueError, match="unknown splits"):
        generate_problems(CountdownSpec(), {"training": 3})


# ------------------------------------------------------------------------------------------------ tokenizer
def test_tokenizer_round_trips_and_renders_prompts():
    tok = organism_tokenizer()
    assert len(tok) == 100 and (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    ids = tok(RIGHT, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(RIGHT) and tok.decode(ids) == RIGHT  # one token per character
    prompt = [{"role": "user", "content": "12 7 5 -> 95"}]
    assert tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True) == "12 7 5 -> 95\n"
    full = tok.apply_chat_template([*prompt, {"role": "assistant", "content": RIGHT}], tokenize=False)
    assert full == f"12 7 5 -> 95\n{RIGHT}</s>"
    assert tok.decode(tok(full, add_special_tokens=False)["input_ids"], skip_special_tokens=True) == full[:-4]


def test_trace_pattern_accepts_whole_traces_only():
    import re

    assert re.fullmatch(TRACE_PATTERN, RIGHT) and not re.fullmatch(TRACE_PATTERN, RIGHT + "\nhello")


# ------------------------------------------------------------------------------------------------ builder
TINY_MODEL = OrganismModelConfig(hidden_size=32, num_layers=3, num_heads=4, intermediate_size=64, max_positions=256)


def _tiny_config(out: Path, **overrides) -> OrganismBuildConfig:
    settings = dict(out_dir=str(out), sft_problems=24, grpo_problems=12, val_problems=6, test_problems=6,
                    stop_eval_size=4, max_steps=4, eval_every=2, stop_accuracy=0.0, band_low=0.0, band_high=1.0,
                    batch_size=4, warmup_steps=1, max_new_tokens=24, eval_batch_size=8, threads=1, workers=1,
                    model=TINY_MODEL)
    return OrganismBuildConfig(**{**settings, **overrides})


def test_builder_writes_a_loadable_checkpoint(tmp_path):
    out = tmp_path / "checkpoint"
    info = build_organism(_tiny_config(out, stop_accuracy=1.0, band_high=1.0))  # never stops early: all 4 steps
    for name in ("config.json", "model.safetensors", "tokenizer.json", "build_info.json", "problems/test.jsonl",
                 "problems/val.jsonl", "problems/grpo.jsonl"):
        assert (out / name).stat().st_size > 0, name
    assert info == build_info(out)
    assert info["sft_steps"] == 4 and [p["step"] for p in info["val_curve"]] == [2, 4]
    assert info["val_accuracy"] == info["val_curve"][-1]["val_accuracy"] and info["val_eval_size"] == 4
    assert info["split_sizes"] == {"test": 6, "val": 6, "grpo": 12, "sft": 24}
    assert info["sft_answer_tokens"]["mean"] >= 20 and info["data_seed"] == 0
    model, tokenizer = load_organism(out)
    assert info["parameters"] == sum(p.numel() for p in model.parameters())
    assert model.config.num_hidden_layers == 3 and len(tokenizer) == 100
    test = load_problems("test", out)
    assert len(test) == 6 and set(test.column_names) >= {"prompt", "numbers", "target"}
    keys = {s: {problem_key(r["numbers"], r["target"]) for r in load_problems(s, out)} for s in ("test", "val", "grpo")}
    assert not (keys["test"] & keys["val"] or keys["test"] & keys["grpo"] or keys["val"] & keys["grpo"])
    enc = tokenizer.apply_chat_template([test[0]["prompt"]], add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)
    assert model.generate(**enc, max_new_tokens=3, do_sample=False).shape[1] == enc["input_ids"].shape[1] + 3
    with pytest.raises(ValueError, match="holds 6"):
        load_problems("test", out, n=7)


def test_builder_stops_at_the_first_evaluation_in_the_band(tmp_path):
    info = build_organism(_tiny_config(tmp_path / "c", stop_accuracy=0.0))  # any accuracy >= 0: stop at step 2
    assert info["sft_steps"] == 2 and len(info["val_curve"]) == 1 and info["in_band"]


def test_builder_is_deterministic(tmp_path):
    a = build_organism(_tiny_config(tmp_path / "a", max_steps=2))
    b = build_organism(_tiny_config(tmp_path / "b", max_steps=2))
    from safetensors.torch import load_file

    wa, wb = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a["val_curve"][0]["val_accuracy"] == b["val_curve"][0]["val_accuracy"]


def test_builder_outside_the_band_saves_and_raises(tmp_path):
    with pytest.raises(RuntimeError, match="outside"):
        build_organism(_tiny_config(tmp_path / "c", max_steps=2, stop_accuracy=0.9, band_low=0.9, band_high=1.0))
    assert build_info(tmp_path / "c")["in_band"] is False


def test_bad_build_settings_fail_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="band_low"):
        _tiny_config(tmp_path, band_low=0.6, stop_accuracy=0.3).validate()
    with pytest.raises(ValueError, match="stop_eval_size"):
        _tiny_config(tmp_path, stop_eval_size=7).validate()
    with pytest.raises(ValueError, match="multiple of num_heads"):
        OrganismModelConfig(hidden_size=30, num_heads=4).validate()
    with pytest.raises(FileNotFoundError, match="build it with"):
        load_organism(tmp_path / "missing")


def test_command_line_reaches_nested_settings():
    from benchmarks.organism.build import config_from_args, parse_args

    cfg = config_from_args(parse_args(["--max-steps", "7", "--model-hidden-size", "64",
                                       "--task-max-value", "9", "--out-dir", "/x"]))
    assert (cfg.max_steps, cfg.model.hidden_size, cfg.task.max_value, cfg.out_dir) == (7, 64, 9, "/x")
    assert cfg.model.num_layers == OrganismModelConfig().num_layers


# ------------------------------------------------------------------------------------------------ sweep helpers
def test_sweep_variants_budget_and_curve_area():
    sweep = _load_sweep()
    from attnrl.credit.config import CreditConfig

    for name, (strategy, credit, trl) in sweep.VARIANTS.items():
        CreditConfig(credit_strategy=strategy, **credit).validate_credit()
        assert set(trl) <= {"top_entropy_quantile"}, name
    assert set(sweep.CORE) | set(sweep.EXTRA) | set(sweep.CONTROL) == set(sweep.VARIANTS)
    budget = sweep.OrganismBudget(steps=3, learning_rate=1e-3, checkpoint="/c", eval_split="val")
    args = sweep.parse_args(harness.budget_args(budget))
    assert sweep.OrganismBudget(**{k: getattr(args, k) for k in sweep.OrganismBudget.__dataclass_fields__}) == budget
    assert sweep.OrganismBudget().checkpoint_path() == ORGANISM / "checkpoint"  # relative to the repository root
    assert budget.checkpoint_path() == Path("/c")
    with pytest.raises(SystemExit, match="eval-split"):
        sweep.OrganismBudget(eval_split="train").validate()
    curve = [{"step": 50, "accuracy": 0.4}, {"step": 100, "accuracy": 0.6}]
    assert sweep.area_under_curve(curve, 0.2) == pytest.approx((50 * 0.3 + 50 * 0.5) / 100)
    assert sweep.area_under_curve(curve, None) == pytest.approx(0.5)
    with pytest.raises(SystemExit, match="eval-samples"):
        sweep.OrganismBudget(eval_samples=-1).validate()
    sampled = [{"step": 50, "accuracy": 0.4, "sampled_accuracy": 0.1}, {"step": 100, "accuracy": 0.6,
                                                                          "sampled_accuracy": 0.3}]
    assert sweep.area_under_curve(sampled, 0.0, "sampled_accuracy") == pytest.approx((50 * 0.05 + 50 * 0.2) / 100)
    todo = harness.pending_cells([sweep.TASK], ["uniform", "coupled"], [0, 1], Path("/nonexistent"))
    assert todo == [("organism", "uniform", 0), ("organism", "coupled", 0), ("organism", "uniform", 1),
                    ("organism", "coupled", 1)]  # seed-major


def test_results_folder_refuses_another_budget_but_not_a_setting_added_since(tmp_path):
    sweep = _load_sweep()
    from dataclasses import asdict

    old = {k: v for k, v in asdict(sweep.OrganismBudget()).items() if k != "eval_samples"}  # a folder from before
    (tmp_path / "budget.json").write_text(json.dumps(old))
    harness.check_budget_matches(tmp_path, sweep.OrganismBudget())  # the new setting at its default
    with pytest.raises(SystemExit, match="eval_samples"):
        harness.check_budget_matches(tmp_path, sweep.OrganismBudget(eval_samples=4))


def test_sampled_evaluation_is_seeded_and_leaves_the_training_rng_alone(tmp_path):
    sweep = _load_sweep()
    build_organism(_tiny_config(tmp_path / "ckpt", max_steps=2))
    budget = sweep.OrganismBudget(checkpoint=str(tmp_path / "ckpt"), eval_split="val", eval_size=4, eval_samples=3,
                                  max_completion_length=12, eval_batch_size=2)
    model, tokenizer = sweep.load(budget)
    evaluate = sweep.evaluator(budget, tokenizer)
    torch.manual_seed(7)
    first = evaluate(model)
    after_eval = torch.rand(3)
    torch.manual_seed(7)
    assert torch.equal(after_eval, torch.rand(3))  # evaluating drew nothing from the global generator
    assert evaluate(model) == first  # the same samples at every evaluation
    assert set(first) == {"accuracy", "sampled_accuracy"} and 0 <= first["sampled_accuracy"] <= 1
    assert set(sweep.evaluator(sweep.OrganismBudget(**{**budget.__dict__, "eval_samples": 0}), tokenizer)(model)) \
        == {"accuracy"}


def test_credit_positions_count_where_amplified_tokens_sit():
    sweep = _load_sweep()
    tok = organism_tokenizer()
    text = "1+2=3\n4x"
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"] + [tok.pad_token_id] * 2])
    mask = torch.tensor([[1] * len(text) + [0, 0]])
    gamma = torch.ones(1, len(text) + 2)
    gamma[0, 1] = gamma[0, 7] = 1.5  # the '+' (first line) and the 'x' (second line)
    gamma[0, 8] = 1.5  # padding never counts
    pos = sweep.credit_positions(gamma, ids, mask, tok)
    assert (pos["tokens"], pos["amplified"]) == (8, 2)
    assert pos["amplified_first_line"] == 1 and pos["tokens_first_line"] == 6  # "1+2=3\n": the newline ends line 0
    assert (pos["amplified_operator"], pos["tokens_operator"], pos["amplified_fail"]) == (1, 1, 1)
    assert pos["amplified_by_decile"][1] == 1 and pos["amplified_by_decile"][8] == 1  # 1/8 and 7/8
    summary = sweep.summarize_positions([pos, pos])
    assert summary["amplified_frac"] == 0.25 and summary["share_first_line"] == 0.5
    assert summary["counts"]["tokens"] == 16


@pytest.mark.slow
def test_sweep_cell_runs_on_a_tiny_checkpoint(tmp_path):
    build_organism(_tiny_config(tmp_path / "ckpt"))
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "benchmarks.organism.sweep", "--checkpoint", str(tmp_path / "ckpt"), "--steps", "2",
           "--eval-every", "1", "--eval-size", "4", "--train-size", "8", "--prompts-per-step", "2",
           "--num-generations", "2", "--max-completion-length", "16", "--seeds", "0", "--strategies", "coupled_scaled",
           "trl_top_entropy", "--jobs", "1", "--eval-samples", "2", "--out", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=REPO)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    cell = json.loads((out / "cells" / "organism__coupled_scaled__s0.json").read_text())
    assert [p["step"] for p in cell["accuracy_curve"]] == [1, 2] and len(cell["train_reward_curve"]) == 2
    assert 0 <= cell["final_sampled_accuracy"] <= 1 and cell["sampled_auc"] is not None
    assert "sampled_accuracy" in json.loads((out / "base__organism.json").read_text())
    assert cell["config"]["credit_window"] == 5 and cell["config"]["credit_fai_hi"] == 46
    assert 0 < cell["credit_positions"]["amplified_frac"] < 1 and cell["wall_seconds"] > 0
    assert cell["machine"]["torch"] and "cpu_flags" in cell["machine"]  # what its floating point depends on
    peer = json.loads((out / "cells" / "organism__trl_top_entropy__s0.json").read_text())
    assert peer["config"]["top_entropy_quantile"] == 0.2 and peer["credit_positions"]["amplified_frac"] == 0
    assert (out / "base__organism.json").exists()


# ------------------------------------------------------------------------------------------------ sweep summary
def _load_summarize():
    return organism_summarize


def _summary_cell(strategy: str, seed: int, final: float) -> dict:
    return {"task": "organism", "strategy": strategy, "seed": seed, "final_accuracy": final, "auc": final - 0.01,
            "accuracy_curve": [{"step": 5, "accuracy": final - 0.02}, {"step": 10, "accuracy": final}],
            "train_reward_curve": [0.1, 0.2, 0.3], "completion_length_curve": [100.0, 90.0], "seconds_per_step": 1.0,
            "credit_positions": {"amplified_frac": 0.4, "rate_first_line": 0.5, "rate_by_decile": [0.4] * 10}}


def test_sweep_summary_of_a_sampled_budget_tests_the_sampled_metric(tmp_path):
    summarize = _load_summarize()
    (tmp_path / "cells").mkdir()
    for seed in range(3):
        for i, strategy in enumerate(summarize.CORE):
            cell = _summary_cell(strategy, seed, 0.30)  # greedy: every strategy equal
            sampled = 0.20 + 0.01 * i + 0.001 * seed
            cell.update(final_sampled_accuracy=sampled, sampled_auc=sampled - 0.01)
            for point in cell["accuracy_curve"]:
                point["sampled_accuracy"] = sampled
            (tmp_path / "cells" / f"organism__{strategy}__s{seed}.json").write_text(json.dumps(cell))
    (tmp_path / "budget.json").write_text(json.dumps({"eval_samples": 4}))
    (tmp_path / "base__organism.json").write_text(json.dumps({"accuracy": 0.25, "sampled_accuracy": 0.15}))
    table = {r["strategy"]: r for r in summarize.summarize(tmp_path)}
    coupled = table["coupled"]
    assert coupled["final_sampled_accuracy_vs_uniform"]["mean"] == pytest.approx(0.05)
    assert coupled["final_sampled_accuracy_vs_uniform"]["holm_p"] == 1.0
    assert coupled["final_accuracy_vs_uniform"]["mean"] == pytest.approx(0.0)  # greedy reported alongside
    text = (tmp_path / "summary.md").read_text()
    assert "Primary metric: final sampled" in text and "greedy 25.0%, sampled 15.0%" in text
    assert "| coupled | 3 | 25.1" in text  # the primary column is the sampled metric
    assert "| 2 | 20.2 | 21.2 |" in text  # the cell matrix shows the primary metric
    assert "| uniform | 3 | 15.0 | 20.1 | 20.1 |" in text  # the sampled curve from the sampled step 0
    assert json.loads((tmp_path / "summary.json").read_text())["metrics"][0] == "final_sampled_accuracy"
    # 3 seeds, every difference +5 points: the sign test cannot reach 0.05, the CI reaches past +2 points
    assert coupled["final_sampled_accuracy_verdict"]["verdict"] == "inconclusive"
    assert "not shown before 6 complete seeds (3 of 12 now)" in text and "- coupled:" not in text
    assert json.loads((tmp_path / "summary.json").read_text())["answer"] == "inconclusive"
    table = [dict(r, seeds=list(range(7))) for r in table.values()]
    text = summarize.conclusion(table, "final_sampled_accuracy")
    assert "provisional: 7 of 12 seeds complete" in text and "- coupled: **inconclusive**" in text
    assert "**inconclusive** (provisional" in text


def _diff(mean: float, lo: float, hi: float, p: float, holm_p: float) -> dict:
    return {"mean": mean, "ci95": [lo, hi], "sign_test_p": p, "holm_p": holm_p}


def test_sweep_verdicts_follow_amendment_2():
    summarize = _load_summarize()
    verdict = summarize.verdict
    assert verdict(None) is None
    better = verdict(_diff(0.03, 0.01, 0.05, 0.006, 0.03))
    assert better == {"verdict": "better", "holm": True, "gain_bound": 0.05, "loss_bound": 0.01}
    assert verdict(_diff(0.03, 0.01, 0.05, 0.006, 0.2))["holm"] is False  # better on the uncorrected p only
    assert verdict(_diff(0.03, 0.01, 0.05, 0.07, 0.2))["verdict"] == "inconclusive"  # CI above 0, sign test not
    assert verdict(_diff(-0.03, -0.05, -0.01, 0.006, 0.03))["verdict"] == "worse"
    assert verdict(_diff(0.002, -0.01, 0.015, 0.8, 1.0))["verdict"] == "no gain >= 2 points"
    assert verdict(_diff(-0.02, -0.04, 0.001, 0.07, 0.4))["verdict"] == "no gain >= 2 points"  # a loss not excluded
    assert verdict(_diff(0.01, -0.005, 0.02, 0.4, 1.0))["verdict"] == "inconclusive"  # +2 points not excluded

    def table(*labels, holm=True):
        names = summarize.ATTENTION_STRATEGIES
        return [{"strategy": n, "final_sampled_accuracy_verdict": {"verdict": v, "holm": holm}}
                for n, v in zip(names, labels)]

    answer = summarize.overall_answer
    assert answer(table("better", "inconclusive", "worse", "worse"), "final_sampled_accuracy") == "yes"
    assert answer(table("better", "inconclusive", "inconclusive", "worse", holm=False),
                  "final_sampled_accuracy") == "inconclusive"
    assert answer(table(*["no gain >= 2 points"] * 4), "final_sampled_accuracy") == "no effect as large as the papers'"
    assert answer(table("worse", "no gain >= 2 points", "no gain >= 2 points", "inconclusive"),
                  "final_sampled_accuracy") == "mixed"
    assert answer(table("better", "better", "better"), "final_sampled_accuracy") is None  # one strategy missing


def test_sweep_summary_pairs_complete_seeds_and_adjusts(tmp_path):
    summarize = _load_summarize()
    sweep = _load_sweep()
    assert summarize.CORE == sweep.CORE and summarize.EXTRA == sweep.EXTRA and summarize.CONTROL == sweep.CONTROL
    (tmp_path / "cells").mkdir()
    finals = {s: 0.30 + 0.01 * i for i, s in enumerate(summarize.CORE)}
    for seed in range(4):
        for strategy in summarize.CORE + ("random",):
            if strategy == "coupled" and seed == 3:
                continue  # seed 3 is incomplete: the core analysis must leave it out
            final = finals.get(strategy, 0.30) + 0.001 * seed
            (tmp_path / "cells" / f"organism__{strategy}__s{seed}.json").write_text(
                json.dumps(_summary_cell(strategy, seed, final)))
    (tmp_path / "base__organism.json").write_text(json.dumps({"accuracy": 0.25}))
    table = {r["strategy"]: r for r in summarize.summarize(tmp_path)}
    assert table["uniform"]["seeds"] == [0, 1, 2] and table["coupled"]["seeds"] == [0, 1, 2]
    assert table["random"]["seeds"] == [0, 1, 2, 3]  # second pass: every seed shared with uniform
    coupled = table["coupled"]["final_accuracy_vs_uniform"]
    assert coupled["mean"] == pytest.approx(0.05) and coupled["wins"] == 3 and coupled["sign_test_p"] == 0.25
    assert coupled["holm_p"] == 1.0  # six comparisons, each p = 0.25
    random_vs = table["random"]["final_accuracy_vs_uniform"]  # amendment 3's family (here its only member)
    assert table["random"]["pass"] == "control" and random_vs["holm_p"] == random_vs["sign_test_p"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["complete_core_seeds"] == [0, 1, 2]
    versus = {v["scaled"]: v for v in summary["scaled_vs_default"]}
    assert versus["coupled_scaled"]["final_accuracy"]["mean"] == pytest.approx(0.01)
    assert (tmp_path / "learning_curves.png").stat().st_size > 0
    text = (tmp_path / "summary.md").read_text()
    assert "| coupled | 3 | 35.1" in text
    assert "| 3 | 30.3 | 31.3 | 32.3 | 33.3 | 34.3 |  | 36.3 | 30.3 |" in text  # seed 3 in the cell matrix
    assert (tmp_path / "credit_positions.png").stat().st_size > 0
    assert (tmp_path / "paired_differences.png").stat().st_size > 0 and "paired_differences.png" in text
    assert set(summarize.CHAR_CLASSES) == set(sweep.CHAR_CLASSES)
