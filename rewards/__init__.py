"""TRL-style rewards (``(prompts, completions, **columns) -> list[float | None]``) and seeded toy tasks."""

from .completions import as_integer, as_number, completion_text, extract_final_answer, last_boxed_content, last_number
from .format import DEFAULT_FORMAT_PATTERN, format_reward, make_regex_format_reward, regex_format_reward
from .math import (
    DEFAULT_VERIFIER,
    VERIFY_STATS,
    BoundedVerifier,
    Verdict,
    VerifyStats,
    accuracy_reward,
    exact_integer_verdict,
    math_verify_equal,
)
from .tasks import (
    HELD_OUT_PERCENT,
    REWARDS,
    SPLITS,
    TASKS,
    Task,
    check_equation,
    countdown_reward,
    extract_equation,
    make_dataset,
    make_examples,
    split_of,
)

__all__ = [
    "DEFAULT_FORMAT_PATTERN",
    "DEFAULT_VERIFIER",
    "HELD_OUT_PERCENT",
    "REWARDS",
    "SPLITS",
    "TASKS",
    "VERIFY_STATS",
    "BoundedVerifier",
    "Task",
    "Verdict",
    "VerifyStats",
    "accuracy_reward",
    "as_integer",
    "as_number",
    "check_equation",
    "completion_text",
    "countdown_reward",
    "exact_integer_verdict",
    "extract_equation",
    "extract_final_answer",
    "format_reward",
    "last_boxed_content",
    "last_number",
    "make_dataset",
    "make_examples",
    "make_regex_format_reward",
    "math_verify_equal",
    "regex_format_reward",
    "split_of",
]
