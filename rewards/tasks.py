r"""Seeded toy tasks with exact answers (arithmetic, countdown), their rewards and exact checkers.

Split rule: every problem has a canonical key (operands of ``+``/``*`` and countdown numbers are sorted, so
reordering does not make a new problem) and ``split_of(key)`` assigns it to ``"test"`` when the first 8 bytes of
its SHA-256, mod 100, are below :data:`HELD_OUT_PERCENT`, else to ``"train"``. A train problem can therefore never
appear in the test split, whatever the seeds or sizes.
"""

from __future__ import annotations

import ast
import hashlib
import operator
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

from attnrl.registry import Registry

from .completions import completion_text, last_boxed_content
from .format import format_reward
from .math import accuracy_reward, exact_integer_verdict

HELD_OUT_PERCENT = 10
"""Share (%) of the problem space held out as the ``"test"`` split."""

SPLITS = ("train", "test")


def split_of(key: str) -> str:
    """``"test"`` or ``"train"`` for a canonical problem key, by a stable hash (same in every process)."""
    bucket = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % 100
    return "test" if bucket < HELD_OUT_PERCENT else "train"


def user_prompt(content: str) -> list[dict[str, str]]:
    """A conversational prompt with one user message."""
    return [{"role": "user", "content": content}]


# ---------------------------------------------------------------- arithmetic

_ARITHMETIC_OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul}
_COMMUTATIVE = {"+", "*"}


def sample_arithmetic(
    rng: random.Random,
    ops: tuple[str, ...] = ("+",),
    low: int = 10,
    high: int = 99,
    suffix: str = "Reply with just the number.",
) -> tuple[str, dict]:
    """One ``"What is a <op> b?"`` problem with ``a, b`` uniform in ``[low, high]`` (two-digit by default).

    Returns ``(key, columns)`` with columns ``prompt`` and ``answer`` (the exact result as a string, may be negative
    for ``-``).
    """
    op = rng.choice(ops)
    a, b = rng.randint(low, high), rng.randint(low, high)
    operands = sorted((a, b)) if op in _COMMUTATIVE else (a, b)
    key = f"arithmetic:{operands[0]}{op}{operands[1]}"
    question = f"What is {a} {op} {b}? {suffix}".strip()
    return key, {"prompt": user_prompt(question), "answer": str(_ARITHMETIC_OPS[op](a, b))}


def arithmetic_is_correct(completion, example: dict) -> bool:
    r"""Exact check of one completion (text or messages): its final answer (last ``\boxed{}``, else last number)
    equals the integer ``example["answer"]`` as a number (``"42"``, ``"42.0"``, ``"\boxed{42}"``)."""
    return exact_integer_verdict(completion_text(completion), example["answer"]) is True


# ---------------------------------------------------------------- countdown

_COUNTDOWN_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
_COUNTDOWN_SYMBOLS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}
_LATEX_OPERATORS = {
    r"\times": "*",
    r"\cdot": "*",
    "×": "*",
    "·": "*",
    r"\div": "/",
    "÷": "/",
    r"\left": "",
    r"\right": "",
}
_EQUATION_CHARS = re.compile(r"[0-9+\-*/() ]+")
MAX_EQUATION_CHARS = 200


def _combine(rng: random.Random, left: tuple[int, str], right: tuple[int, str]) -> tuple[int, str] | None:
    """A random op applied to two ``(value, expression)`` leaves, or None if it leaves the positive integers."""
    symbol = rng.choice(list(_COUNTDOWN_SYMBOLS))
    if symbol == "/" and (right[0] == 0 or left[0] % right[0]):
        return None
    value = _COUNTDOWN_SYMBOLS[symbol](left[0], right[0])
    return (int(value), f"({left[1]} {symbol} {right[1]})") if value > 0 else None


def _random_solution(rng: random.Random, numbers: list[int]) -> tuple[int, str] | None:
    """Value and expression of a random binary tree over all ``numbers`` (each once), or None on a dead end."""
    pool = [(number, str(number)) for number in numbers]
    while len(pool) > 1:
        left, right = (pool.pop(rng.randrange(len(pool))) for _ in range(2))
        combined = _combine(rng, left, right)
        if combined is None:
            return None
        pool.append(combined)
    value, expression = pool[0]
    return value, expression[1:-1] if expression.startswith("(") else expression


def sample_countdown(
    rng: random.Random, sizes: tuple[int, ...] = (3, 4), max_number: int = 99, max_target: int = 999
) -> tuple[str, dict]:
    r"""One solvable countdown problem: ``len in sizes`` numbers in ``[1, max_number]`` and a target in
    ``[1, max_target]`` built from a random expression over all of them (intermediate values positive integers).

    Returns ``(key, columns)`` with columns ``prompt``, ``numbers`` (list[int]), ``target`` (int) and ``solution``
    (one reference equation).
    """
    while True:
        numbers = [rng.randint(1, max_number) for _ in range(rng.choice(sizes))]
        solution = _random_solution(rng, numbers)
        if solution is not None and solution[0] <= max_target:
            break
    target, expression = solution
    question = (
        f"Using the numbers {numbers}, create an equation that equals {target}. "
        r"Use each number once with + - * /. Put the equation in \boxed{}."
    )
    key = f"countdown:{sorted(numbers)}->{target}"
    return key, {"prompt": user_prompt(question), "numbers": numbers, "target": target, "solution": expression}


def extract_equation(text: str) -> str | None:
    r"""The equation of a countdown answer: the last ``\boxed{}`` content, else the last non-empty line, with LaTeX
    operators (``\times``, ``\div``, ...) mapped to ``* /``, anything after a ``=`` dropped and a final period removed.
    """
    candidate = last_boxed_content(text)
    if candidate is None:
        lines = [line for line in text.splitlines() if line.strip()]
        if not lines:
            return None
        candidate = lines[-1]
    for latex, plain in _LATEX_OPERATORS.items():
        candidate = candidate.replace(latex, plain)
    return candidate.split("=")[0].strip().rstrip(".").strip()


def _evaluate(node: ast.AST, leaves: list[int]) -> Fraction:
    """Exact value of an arithmetic AST of int literals and ``+ - * /``; appends each literal to ``leaves``."""
    if isinstance(node, ast.BinOp) and type(node.op) in _COUNTDOWN_OPS:
        left, right = _evaluate(node.left, leaves), _evaluate(node.right, leaves)
        return _COUNTDOWN_OPS[type(node.op)](left, right)
    if isinstance(node, ast.Constant) and type(node.value) is int:
        leaves.append(node.value)
        return Fraction(node.value)
    raise ValueError(f"forbidden syntax: {type(node).__name__}")


def check_equation(equation: str | None, numbers: list[int], target: int) -> bool:
    """Whether ``equation`` uses exactly ``numbers`` (each once, no others), only digits, ``+ - * / ( )`` and spaces
    (no unary minus, no decimals), and evaluates exactly to ``target`` (abs tol 1e-6). Never runs ``eval``."""
    if not equation or len(equation) > MAX_EQUATION_CHARS or not _EQUATION_CHARS.fullmatch(equation):
        return False
    leaves: list[int] = []
    try:
        value = _evaluate(ast.parse(equation, mode="eval").body, leaves)
    except (SyntaxError, ValueError, ZeroDivisionError, RecursionError):
        return False
    return sorted(leaves) == sorted(numbers) and abs(value - target) <= 1e-6


def countdown_reward(
    completions: list, numbers: list[list[int]], target: list[int], *, format_score: float = 0.0, **kwargs
) -> list[float]:
    r"""1.0 per completion whose equation (see :func:`extract_equation`) is correct per :func:`check_equation`.

    Otherwise 0.0, or ``format_score`` (TinyZero-style partial credit, off by default; set it with
    ``functools.partial``) when the answer was at least given in a ``\boxed{}``.
    """
    rewards = []
    for completion, example_numbers, example_target in zip(completions, numbers, target, strict=True):
        text = completion_text(completion)
        if check_equation(extract_equation(text), example_numbers, example_target):
            rewards.append(1.0)
        else:
            rewards.append(format_score if last_boxed_content(text) is not None else 0.0)
    return rewards


def countdown_is_correct(completion, example: dict) -> bool:
    """Exact check of one completion (text or messages) against ``example["numbers"]`` and ``example["target"]``."""
    return check_equation(extract_equation(completion_text(completion)), example["numbers"], example["target"])


# ---------------------------------------------------------------- registry


@dataclass(frozen=True)
class Task:
    """A task: its sampler ``(rng, **options) -> (key, columns)``, TRL rewards (correctness first, then format) and
    exact evaluation checker ``is_correct(completion, example) -> bool``."""

    name: str
    sample: Callable[..., tuple[str, dict]]
    reward_funcs: tuple[Callable, ...]
    is_correct: Callable[[object, dict], bool]


def _as_task(obj, name: str) -> Task:
    """A Task as it is, or the Task a function of no arguments returns (a factory named by import path)."""
    if not isinstance(obj, Task) and callable(obj) and not isinstance(obj, type):
        obj = obj()
    if not isinstance(obj, Task):
        raise TypeError(f"it is a {type(obj).__name__}, not an attnrl.rewards.Task (or a function returning one)")
    return obj


def _as_reward(obj, name: str) -> Callable:
    if not callable(obj):
        raise TypeError(f"it is a {type(obj).__name__}, not a TRL reward function (prompts, completions, **columns)")
    return obj


#: tasks by name (:class:`attnrl.registry.Registry`): ``TASKS.register(name, Task(...))``; a recipe's ``task`` also
#: takes the import path of a Task (or of a function returning one), ``my_pkg.tasks:MY_TASK``, found without
#: registration
TASKS: Registry[Task] = Registry("task", check=_as_task)
TASKS.register("arithmetic", Task("arithmetic", sample_arithmetic, (accuracy_reward, format_reward),
                                  arithmetic_is_correct))
TASKS.register("countdown", Task("countdown", sample_countdown, (countdown_reward, format_reward),
                                 countdown_is_correct))

#: TRL reward functions by name; a recipe's ``reward_names`` also takes ``correct`` / ``format`` (the task's own) and
#: import paths ``my_pkg.rewards:my_reward`` (as TRL's ``reward_funcs``)
REWARDS: Registry[Callable] = Registry("reward", check=_as_reward)
REWARDS.register("accuracy", accuracy_reward)
REWARDS.register("format", format_reward)
REWARDS.register("countdown", countdown_reward)
REWARDS.register("visual_anchor", "attnrl.rewards.visual:visual_anchor_reward")  # imported on first use (torch)


def make_examples(task: str, split: str, n: int, seed: int = 0, **options) -> list[dict]:
    """``n`` distinct problems of ``task`` (a name or import path, see :data:`TASKS`) in ``split``, deterministic in ``seed``; ``options`` go to the sampler.

    Each example has ``prompt`` (conversational), the task's gold columns and ``split``. Raises ValueError when the
    split holds fewer than ``n`` distinct problems (e.g. 1000 test additions of two-digit numbers).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    sample = TASKS.get(task).sample
    rng = random.Random(seed)
    examples: dict[str, dict] = {}
    attempts = 0
    while len(examples) < n:
        if attempts == 200 * n + 1000:
            raise ValueError(f"found only {len(examples)} distinct {task} problems for split {split!r}, {n} requested")
        attempts += 1
        key, columns = sample(rng, **options)
        if split_of(key) == split and key not in examples:
            examples[key] = {**columns, "split": split}
    return list(examples.values())


def make_dataset(task: str, split: str, n: int, seed: int = 0, **options):
    """:func:`make_examples` as a ``datasets.Dataset`` (one row per problem), ready for TRL's GRPOTrainer."""
    from datasets import Dataset  # imported here so that verifier worker processes never load datasets/pyarrow

    return Dataset.from_list(make_examples(task, split, n, seed, **options))
