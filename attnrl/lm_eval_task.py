r"""lm-evaluation-harness hooks of the held-out task that ``attnrl publish`` writes (copied there as
``lm_eval_task/attnrl_lm_eval.py``, next to the task's YAML and jsonl).

lm-eval loads this file through the YAML's ``!function`` tags, which it resolves relative to the YAML's folder, and
:func:`load_held_out` reads the jsonl relative to this file: the task works wherever the published folder is copied
and whatever the working directory (a relative ``data_files`` would resolve against the working directory).

Scoring is attnrl's exact checker (``attnrl eval``): for an integer gold ``answer`` (arithmetic) the final answer of
the completion (the last ``\boxed{}`` content, else the last standalone number) must equal it as a number; this
rule is restated below so that scoring needs no attnrl install. Other tasks (countdown) call attnrl's checker
(``pip install attnrl``). Standard library only, apart from ``datasets`` (an lm-eval dependency).
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

HERE = Path(__file__).resolve().parent
# attnrl.rewards.completions.NUMBER_PATTERN (tests/test_publish_adapters.py checks that both agree)
NUMBER_PATTERN = r"(?<![\w.{}^/])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\w{}^/]|\.\d)"
_NUMBER = re.compile(NUMBER_PATTERN)
_BOXED_OPEN = "\\boxed{"


def load_held_out(data_file: str, **_metadata):
    """The task's ``custom_dataset``: {"test": the held-out problems of ``data_file`` (a jsonl next to this file)}."""
    import datasets

    rows = [json.loads(line) for line in (HERE / data_file).read_text().splitlines() if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def process_results(doc: dict, results: list[str]) -> dict:
    """lm-eval's per-document metric: ``exact_match`` 1.0 when attnrl's checker accepts the generation."""
    return {"exact_match": float(is_correct(results[0], doc))}


def is_correct(completion: str, doc: dict) -> bool:
    gold = as_integer(str(doc["answer"])) if doc.get("answer") is not None else None
    if gold is not None:
        value = as_number(final_answer(completion))
        return value is not None and value == gold
    from attnrl.rewards import TASKS  # tasks without an integer answer: attnrl's own checker

    return bool(TASKS[doc["task"]].is_correct(completion, doc))


def last_boxed_content(text: str) -> str | None:
    start = text.rfind(_BOXED_OPEN)
    if start < 0:
        return None
    depth, begin = 1, start + len(_BOXED_OPEN)
    for index in range(begin, len(text)):
        if text[index] == "{":
            depth += 1
        elif text[index] == "}":
            depth -= 1
            if depth == 0:
                return text[begin:index]
    return None


def final_answer(text: str) -> str | None:
    r"""The last ``\boxed{}`` content, else the last standalone number (thousands separators removed), else None."""
    boxed = last_boxed_content(text)
    if boxed is not None:
        return boxed
    matches = _NUMBER.findall(text)
    return matches[-1].replace(",", "") if matches else None


def _number_literal(text: str | None) -> str | None:
    if text is None:
        return None
    literal = text.strip().rstrip(".").strip().strip("$").strip()
    return literal if _NUMBER.fullmatch(literal) else None


def as_number(text: str | None) -> Fraction | None:
    literal = _number_literal(text)
    return None if literal is None else Fraction(Decimal(literal.replace(",", "")))


def as_integer(text: str | None) -> int | None:
    literal = _number_literal(text)
    return None if literal is None or "." in literal else int(literal.replace(",", ""))
