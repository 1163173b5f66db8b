"""In-context-learning prompts and greedy evaluation, for comparing 0-shot, N-shot and SITE on a task.

Prompt format (plain text, no chat template): ``"Q: x1\\nA: y1\\n\\n...Q: x\\nA: y"``; the answer is read up to
the end of its line. Where the prompt ends is tokenizer-aware (:func:`split_answer`): the last prompt token must be
the one that predicts the answer's first real token, since SITE injects there and trains on that prediction.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Sequence

import torch

from .site import TaskEmbedding

__all__ = ["exact_match", "few_shot_prompts", "greedy_answers", "icl_prompt", "split_answer"]


def icl_prompt(demos: Sequence[tuple[str, str]], query: str) -> str:
    """The prompt text up to ``"A:"`` for ``query`` after ``demos`` (x, y) pairs (none: zero-shot)."""
    return "".join(f"Q: {x}\nA: {y}\n\n" for x, y in demos) + f"Q: {query}\nA:"


def split_answer(tokenizer, prompt: str, answer: str) -> tuple[str, str]:
    """(prompt, target) with prompt + target == prompt + " " + answer, the space on the side the tokenizer puts it:
    in the target when it merges with the answer (``" Paris"``), in the prompt when it is a token of its own
    (SmolLM2 before digits: ``" 48"`` -> ``" "``, ``"4"``, ``"8"``), so the target's first token is never a bare space."""
    first = tokenizer.tokenize(" " + answer)[0]
    if tokenizer.convert_tokens_to_string([first]).strip():
        return prompt, " " + answer
    return prompt + " ", answer


def few_shot_prompts(tokenizer, pool: Sequence[tuple[str, str]], queries: Sequence[tuple[str, str]], n_shots: int,
                     seed: int = 0) -> list[tuple[str, str]]:
    """(prompt, target) per (x, y) query, after ``n_shots`` demonstrations drawn from ``pool`` (never the query)."""
    rng = random.Random(seed)
    out = []
    for x, y in queries:
        demos = rng.sample([p for p in pool if p[0] != x], n_shots) if n_shots else []
        out.append(split_answer(tokenizer, icl_prompt(demos, x), y))
    return out


@torch.no_grad()
def greedy_answers(model, tokenizer, prompts: Sequence[str], *, site: TaskEmbedding | None = None,
                   max_new_tokens: int = 8, batch_size: int = 16) -> list[str]:
    """Greedy answers (first line of the completion, stripped); SITE injected at each prompt's last token if given."""
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    answers = []
    for i in range(0, len(prompts), batch_size):
        batch = tokenizer(list(prompts[i : i + batch_size]), return_tensors="pt", padding=True).to(device)
        Tp = batch["input_ids"].shape[1]
        with site.active(model, Tp - 1) if site is not None else contextlib.nullcontext():
            out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
        for row in out[:, Tp:]:
            answers.append(tokenizer.decode(row, skip_special_tokens=True).split("\n")[0].strip())
    return answers


def exact_match(answers: Sequence[str], targets: Sequence[str]) -> float:
    """Fraction of answers equal to their target (both stripped)."""
    return sum(a.strip() == t.strip() for a, t in zip(answers, targets, strict=True)) / len(targets)
