"""Oracle credit: the positive control of the organism study (PREREGISTRATION.md, amendment 3).

Not a user feature: a study-side strategy that knows the task. It uses the organism's exact parser and search
(:mod:`benchmarks.organism.task`) to find the characters that *decide* a completion's outcome, and amplifies their
advantage by ``gamma_amp`` (1.5: the paper's dose; 3: the strong dose), capped at the same share of each row as
the attention strategies' TopQ (q = 0.4).

Decisive tokens, by the sign of the row's group advantage A:

- **A > 0** (the completion is correct): the operand and operator characters (``12+7`` of ``12+7=19``) of every
  consuming step of the successful last line and of its final, target-reaching step. These are the choices that
  made the answer; results, pools, the failed attempts on the last pair and earlier lines are not.
- **A < 0** (the completion is wrong): in every line, the operand and operator characters of the line's *first
  decisive error*, the first consuming step after which the line can no longer succeed: a legal step that turns a
  solvable pool into an unsolvable one (under the search's rules, :func:`benchmarks.organism.task.solvable`), or an
  illegal step (an operand that is not in the pool, inexact arithmetic). Later steps of a doomed line decide
  nothing more, so they are left alone. A wrong row with no such step (a truncated but still viable search) gets
  no amplified token.
- **A = 0**: nothing (the advantage is zero either way).

Cap: at most ceil(q * n) tokens per row (n = its response tokens, the TopQ rounding); the earliest decisive tokens
are kept when there are more. Everything else has gamma = 1, so the oracle is a drop-in for a TopQ strategy of the
same share: only *which* tokens are amplified differs.

The organism's tokenizer has one token per character; :func:`token_char_spans` maps characters to tokens for any
tokenizer all the same (special tokens such as ``</s>`` are never decisive).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from .task import _exact, solvable, verify_trace

#: one arithmetic step with its character offsets; ``consuming`` steps are followed by their new pool
_STEP = re.compile(r"(\d+)([-+*/])(\d+)=(\d+)")
DOSES = {"oracle": 1.5, "oracle_strong": 3.0}  # arm name -> gamma_amp
MAX_INTERMEDIATE = 999  # the organism's CountdownSpec.max_intermediate (the search never tries larger results)


@dataclass(frozen=True)
class Step:
    """One written step ``a op b=r`` of a line: values, and the character span of ``a op b`` in the completion."""

    a: int
    op: str
    b: int
    result: int
    start: int  # offset of the first operand character
    end: int  # offset one past the second operand
    consuming: bool  # followed by a new pool ``[...]`` (it removes two numbers); else an attempt on the last pair


def parse_steps(text: str) -> list[list[Step]]:
    """The steps of each line of ``text`` (offsets into ``text``), lines in order; non-step text is ignored."""
    lines, offset = [], 0
    for line in text.split("\n"):
        steps = []
        for m in _STEP.finditer(line):
            after = line[m.end():m.end() + 2]
            steps.append(Step(int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4)),
                              offset + m.start(1), offset + m.end(3), after == " ["))
        lines.append(steps)
        offset += len(line) + 1
    return lines


def _apply(pool: list[int], step: Step) -> list[int] | None:
    """The pool after a legal step (operands taken from the pool, result appended); None when it is illegal."""
    rest = list(pool)
    for v in (step.a, step.b):
        if v not in rest:
            return None
        rest.remove(v)
    if not _exact(step.a, step.op, step.b, step.result):
        return None
    return [*rest, step.result]


def first_decisive_error(steps: list[Step], numbers: list[int], target: int) -> Step | None:
    """The first consuming step of a line after which the line cannot succeed (illegal, or solvable -> unsolvable)."""
    pool = list(numbers)
    for step in steps:
        if not step.consuming:
            break
        new = _apply(pool, step)
        if new is None:
            return step
        if solvable(pool, target, MAX_INTERMEDIATE) and not solvable(new, target, MAX_INTERMEDIATE):
            return step
        pool = new
    return None


def decisive_char_spans(text: str, numbers: list[int], target: int, advantage: float) -> list[tuple[int, int]]:
    """Character spans ``[start, end)`` of the decisive ``a op b`` of a completion (see the module docstring)."""
    if advantage > 0:
        if not verify_trace(text, numbers, target):
            return []
        lines = [steps for steps, line in zip(parse_steps(text), text.split("\n"), strict=True) if line.strip()]
        last = lines[-1]
        chosen = [s for s in last if s.consuming] + [last[-1]]
        return [(s.start, s.end) for s in chosen]
    if advantage < 0:
        errors = (first_decisive_error(steps, numbers, target) for steps in parse_steps(text))
        return [(s.start, s.end) for s in errors if s is not None]
    return []


def token_char_spans(token_ids: list[int], tokenizer) -> tuple[str, list[tuple[int, int]]]:
    """The decoded completion and the character span of each token in it (special tokens: an empty span)."""
    special = set(tokenizer.all_special_ids)
    pieces = ["" if tid in special else tokenizer.decode([tid]) for tid in token_ids]
    spans, pos = [], 0
    for piece in pieces:
        spans.append((pos, pos + len(piece)))
        pos += len(piece)
    return "".join(pieces), spans


def oracle_mask(completion_ids: torch.Tensor, completion_mask: torch.Tensor, advantages: torch.Tensor,
                problems: list[tuple[list[int], int]], tokenizer, top_q: float = 0.4) -> torch.Tensor:
    """Decisive tokens (B, Tc) bool of a padded batch, at most ceil(top_q * n) per row (the earliest kept).

    completion_ids, completion_mask: (B, Tc); advantages: (B,) group advantages; problems: (numbers, target) per
    row, in the batch's order.
    """
    B, Tc = completion_ids.shape
    if len(problems) != B or advantages.shape[0] != B:
        raise ValueError(f"{len(problems)} problems and {advantages.shape[0]} advantages for {B} rows")
    mask = torch.zeros(B, Tc, dtype=torch.bool)
    for i in range(B):
        n = int(completion_mask[i].sum())
        ids = completion_ids[i, :n].tolist()
        text, spans = token_char_spans(ids, tokenizer)
        decisive = decisive_char_spans(text, *problems[i], float(advantages[i]))
        if not decisive:
            continue
        cap = math.ceil(top_q * n - 1e-9)
        chosen = [t for t, (s, e) in enumerate(spans) if e > s and any(s < de and ds < e for ds, de in decisive)]
        mask[i, chosen[:cap]] = True
    return mask.to(completion_mask.device) & completion_mask.bool()


def oracle_gamma(mask: torch.Tensor, gamma_amp: float) -> torch.Tensor:
    """gamma = 1 + (gamma_amp - 1) [decisive], (B, Tc) float."""
    return 1.0 + (gamma_amp - 1.0) * mask.float()
