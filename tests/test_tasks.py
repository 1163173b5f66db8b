"""Tests of attnrl.rewards.tasks: seeded generation, disjoint splits, countdown checking, the task registry."""

import functools
import re

import pytest
from attnrl.rewards import (
    HELD_OUT_PERCENT,
    TASKS,
    check_equation,
    countdown_reward,
    extract_equation,
    make_dataset,
    make_examples,
    split_of,
)
from trl.data_utils import is_conversational


def assistant(content):
    return [{"role": "assistant", "content": content}]


def arithmetic_identity(example):
    """Problem identity read back from the prompt text: operands sorted for commutative ops."""
    a, op, b = re.search(r"What is (\d+) ([-+*]) (\d+)\?", example["prompt"][0]["content"]).groups()
    operands = sorted((int(a), int(b))) if op in "+*" else [int(a), int(b)]
    return op, *operands


def countdown_identity(example):
    return tuple(sorted(example["numbers"])), example["target"]


# ------------------------------------------------------------------ generation and splits


@pytest.mark.parametrize("task", sorted(TASKS))
def test_generation_is_deterministic_in_the_seed(task):
    assert make_examples(task, "train", 20, seed=3) == make_examples(task, "train", 20, seed=3)
    assert make_examples(task, "train", 20, seed=3) != make_examples(task, "train", 20, seed=4)


@pytest.mark.parametrize(
    ("task", "identity", "options"),
    [
        ("arithmetic", arithmetic_identity, {"ops": ("+", "-", "*")}),
        ("countdown", countdown_identity, {}),
    ],
)
def test_held_out_split_is_disjoint_from_train_across_seeds(task, identity, options):
    train = {identity(example) for seed in (0, 1) for example in make_examples(task, "train", 1500, seed, **options)}
    test = {identity(example) for seed in (0, 1) for example in make_examples(task, "test", 300, seed, **options)}
    assert len(train) > 1500 and len(test) > 300
    assert not train & test


def test_split_hash_holds_out_about_the_configured_share():
    held_out = sum(split_of(f"key-{index}") == "test" for index in range(20000)) / 20000
    assert abs(held_out - HELD_OUT_PERCENT / 100) < 0.01
    assert split_of("arithmetic:12+34") == split_of("arithmetic:12+34")


def test_examples_are_distinct_and_tagged_with_their_split():
    examples = make_examples("arithmetic", "test", 200, seed=0)
    assert len({arithmetic_identity(example) for example in examples}) == 200
    assert {example["split"] for example in examples} == {"test"}


def test_exhausted_split_raises():
    with pytest.raises(ValueError, match="distinct arithmetic problems"):
        make_examples("arithmetic", "test", 1000, seed=0)  # ~410 unordered two-digit sums are held out
    with pytest.raises(ValueError, match="split"):
        make_examples("arithmetic", "validation", 1)


def test_arithmetic_problems_and_answers():
    for example in make_examples("arithmetic", "train", 100, seed=0, ops=("+", "-", "*")):
        a, op, b = re.search(
            r"What is (\d+) ([-+*]) (\d+)\? Reply with just the number\.$", example["prompt"][0]["content"]
        ).groups()
        assert 10 <= int(a) <= 99 and 10 <= int(b) <= 99
        assert example["answer"] == str({"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op])


def test_countdown_instances_are_solvable_and_in_range():
    examples = make_examples("countdown", "train", 200, seed=0)
    assert {len(example["numbers"]) for example in examples} == {3, 4}
    assert all(1 <= number <= 99 for example in examples for number in example["numbers"])
    assert all(1 <= example["target"] <= 999 for example in examples)
    assert all(f"equals {example['target']}." in example["prompt"][0]["content"] for example in examples)
    rewards = countdown_reward(
        [rf"\boxed{{{example['solution']}}}" for example in examples],
        [example["numbers"] for example in examples],
        [example["target"] for example in examples],
    )
    assert rewards == [1.0] * len(examples)


def test_make_dataset_builds_a_trl_ready_dataset():
    dataset = make_dataset("countdown", "test", 8, seed=0)
    assert len(dataset) == 8
    assert set(dataset.column_names) == {"prompt", "numbers", "target", "solution", "split"}
    assert is_conversational(dataset[0]) and dataset[0]["prompt"][0]["role"] == "user"
    assert dataset[0] == make_examples("countdown", "test", 8, seed=0)[0]


# ------------------------------------------------------------------ countdown checking

NUMBERS, TARGET = [25, 7, 3, 50], 71


@pytest.mark.parametrize(
    ("equation", "expected"),
    [
        ("50 + 25 - 7 + 3", True),
        ("(25 - 7) * 3 + 50 - 25 - 7", False),  # reuses numbers
        ("50 + 25 - 7 + 3 + 0", False),  # extra number
        ("50 + 25 - 7", False),  # missing number
        ("50 + 25 + 7 - 3", False),  # wrong value
        ("50 + 25 - 7 + 3.0", False),  # decimals
        ("50 + 25 - 7 + 3 ** 1", False),  # power
        ("50 + 25 - -7 + 3", False),  # unary minus
        ("50 + 25 - 7 + 3 + 0*__import__('os')", False),  # forbidden chars
        ("50 + 25 - 7 + 3 / 0", False),  # division by zero
        ("50 25 - 7 + 3", False),  # syntax error
        ("", False),
        (None, False),
        ("(" * 300 + "3" + ")" * 300, False),  # too long / too deep
    ],
)
def test_check_equation(equation, expected):
    assert check_equation(equation, NUMBERS, TARGET) is expected


def test_check_equation_is_exact_with_fractional_intermediates():
    assert check_equation("3 / 2 * 4", [2, 3, 4], 6)
    assert not check_equation("4 / 3", [4, 3], 1)


def test_extract_equation_reads_box_or_last_line_and_normalises_latex():
    assert extract_equation(r"try \boxed{1+1}, final \boxed{(25 - 7) \times 3 \div 2 = 27}") == "(25 - 7) * 3 / 2"
    assert extract_equation("thinking...\n50 + 25 - 7 + 3.\n\n") == "50 + 25 - 7 + 3"
    assert extract_equation("  \n") is None


def test_countdown_reward_forms_and_partial_credit():
    completions = [assistant(r"So \boxed{50 + 25 - 7 + 3}"), r"\boxed{50 + 25 + 7 - 3}", "50+25-7+3", "no idea", None]
    numbers, targets = [NUMBERS] * 5, [TARGET] * 5
    assert countdown_reward(completions, numbers, targets) == [1.0, 0.0, 1.0, 0.0, 0.0]
    partial = functools.partial(countdown_reward, format_score=0.1)
    assert partial(prompts=None, completions=completions, numbers=numbers, target=targets) == [1.0, 0.1, 1.0, 0.0, 0.0]


# ------------------------------------------------------------------ registry


def test_registry_checkers_and_rewards_agree_on_gold_and_wrong_answers():
    arithmetic = make_examples("arithmetic", "test", 5, seed=0)
    countdown = make_examples("countdown", "test", 5, seed=0)
    task_cases = {
        "arithmetic": (arithmetic, [e["answer"] for e in arithmetic], [str(int(e["answer"]) + 1) for e in arithmetic]),
        "countdown": (countdown, [rf"\boxed{{{e['solution']}}}" for e in countdown], [r"\boxed{1 + 1}"] * 5),
    }
    for name, (examples, gold, wrong) in task_cases.items():
        task = TASKS[name]
        assert task.name == name
        assert all(task.is_correct(text, example) for text, example in zip(gold, examples))
        assert all(task.is_correct(assistant(text), example) for text, example in zip(gold, examples))
        assert not any(task.is_correct(text, example) for text, example in zip(wrong, examples))
        columns = {key: [example[key] for example in examples] for key in examples[0] if key != "prompt"}
        for texts, expected in ((gold, 1.0), (wrong, 0.0)):
            completions = [assistant(text) for text in texts]
            correctness = task.reward_funcs[0](
                prompts=[e["prompt"] for e in examples], completions=completions, **columns
            )
            assert correctness == [expected] * 5
            assert task.reward_funcs[1](completions=completions, **columns) == [1.0] * 5
