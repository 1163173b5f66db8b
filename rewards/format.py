r"""Format rewards: 1.0 when a completion's whole text matches a pattern, else 0.0 (TRL reward signature)."""

from __future__ import annotations

import functools
import re

from .completions import NUMBER_PATTERN, completion_text

_BOXED = r"\\boxed\{(?:[^{}]|\{(?:[^{}]|\{[^{}]*\})*\})*\}"  # up to two levels of nested braces inside
_TAIL = r"[\s.,;:!?)\]}*$]*(?:(?:<\|\w+\|>|</s>)\s*)*"  # closing punctuation/markdown, then end-of-turn tokens

DEFAULT_FORMAT_PATTERN = rf"(?s).*?(?:{_BOXED}|{NUMBER_PATTERN}){_TAIL}"
r"""Default format: the text ends with a final answer, i.e. a ``\boxed{...}`` or a standalone number (see
:mod:`attnrl.rewards.completions`), followed only by whitespace, closing punctuation (``. , ; : ! ? ) ] } * $``)
and end-of-turn tokens (``<|im_end|>``, ``</s>``, ...). ``"The answer is 42."`` and ``"\boxed{7}"`` pass;
``"42 apples"``, ``"x^2"`` and ``""`` do not."""


def regex_format_reward(completions: list, *, pattern: str | re.Pattern, **kwargs) -> list[float]:
    """1.0 per completion whose stripped text fully matches ``pattern``, else 0.0. None/empty completions score 0.0."""
    compiled = re.compile(pattern)
    return [float(compiled.fullmatch(completion_text(completion).strip()) is not None) for completion in completions]


def make_regex_format_reward(pattern: str | re.Pattern):
    """A picklable TRL reward scoring 1.0 when the stripped completion fully matches ``pattern`` (use ``(?s)`` to let
    ``.`` cross lines). TRL names it ``regex_format_reward``."""
    return functools.partial(regex_format_reward, pattern=re.compile(pattern))


def format_reward(completions: list, **kwargs) -> list[float]:
    """1.0 per completion that ends with a final answer per :data:`DEFAULT_FORMAT_PATTERN`, else 0.0."""
    return regex_format_reward(completions, pattern=DEFAULT_FORMAT_PATTERN)
