r"""Reading the text and the final answer out of a TRL completion.

Final-answer extraction rule (shared by every reward here):

1. if the text contains ``\boxed{...}``, the answer is the content of the **last** one (braces balanced);
2. otherwise it is the **last standalone number** in the text: an optional ``-``, digits (``1,000``-style thousands
   separators allowed, removed), optional decimals. A number glued to a word, to LaTeX structure (``{``, ``}``,
   ``^``, ``_``) or to ``/`` does not count, so ``\frac{1}{2}``, ``2^{10}``, ``1/2`` or ``x1`` yield no number and
   ``10-3`` yields ``3`` (the ``-`` of a binary minus is not a sign).
"""

from __future__ import annotations

import re
from decimal import Decimal
from fractions import Fraction

NUMBER_PATTERN = r"(?<![\w.{}^/])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\w{}^/]|\.\d)"
_NUMBER = re.compile(NUMBER_PATTERN)
_BOXED_OPEN = "\\boxed{"


def completion_text(completion) -> str:
    """Text of one completion: a string, or a conversational list of messages (content of the last message).

    ``None``, an empty list or a ``None`` content give ``""``; multimodal content parts keep their ``text`` parts.
    """
    if completion is None:
        return ""
    if isinstance(completion, str):
        return completion
    if not completion:
        return ""
    content = completion[-1].get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if part.get("type") == "text")


def last_boxed_content(text: str) -> str | None:
    r"""Content of the last ``\boxed{...}`` in ``text`` (nested braces allowed), or None if absent or unclosed."""
    start = text.rfind(_BOXED_OPEN)
    if start < 0:
        return None
    depth = 1
    begin = start + len(_BOXED_OPEN)
    for index in range(begin, len(text)):
        if text[index] == "{":
            depth += 1
        elif text[index] == "}":
            depth -= 1
            if depth == 0:
                return text[begin:index]
    return None


def last_number(text: str) -> str | None:
    """The last standalone number in ``text`` with thousands separators removed (e.g. ``"1000"``), or None."""
    matches = _NUMBER.findall(text)
    return matches[-1].replace(",", "") if matches else None


def extract_final_answer(text: str) -> str | None:
    r"""The final answer of ``text`` per the module rule: last ``\boxed{}`` content, else last number, else None."""
    boxed = last_boxed_content(text)
    return boxed if boxed is not None else last_number(text)


def _number_literal(text: str | None) -> str | None:
    """``text`` without a final period and surrounding whitespace or ``$``, if what remains is a plain number."""
    if text is None:
        return None
    literal = text.strip().rstrip(".").strip().strip("$").strip()
    return literal if _NUMBER.fullmatch(literal) else None


def as_number(text: str | None) -> Fraction | None:
    """Exact value of a plain integer/decimal literal (``"-12"``, ``"0.50"``, ``"1,000"``, ``"$7$."``), else None."""
    literal = _number_literal(text)
    return None if literal is None else Fraction(Decimal(literal.replace(",", "")))


def as_integer(text: str | None) -> int | None:
    """Value of a plain integer literal (``"42"``, ``"-7"``, ``"1,000"``; not ``"2.0"``), else None."""
    literal = _number_literal(text)
    return None if literal is None or "." in literal else int(literal.replace(",", ""))
