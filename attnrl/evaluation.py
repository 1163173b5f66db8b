"""Held-out scores of a (peft) causal LM on a task: greedy accuracy, sampled pass@k, exact checker, progress bar."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm


@dataclass
class EvalResult:
    accuracy: float  # fraction in [0, 1]
    correct: int
    total: int
    records: list[dict]  # one per problem: prompt text, completion, gold columns, correct


@torch.no_grad()
def generate_completions(
    model, tokenizer, prompts: list[list[dict]], *, max_new_tokens: int = 32, batch_size: int = 50,
    do_sample: bool = False, temperature: float = 1.0, desc: str = "generating",
) -> list[str]:
    """Completions (decoded, special tokens removed) for conversational prompts; left-padded batches."""
    was_training = model.training
    model.eval()
    tokenizer.padding_side = "left"
    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    out: list[str] = []
    try:
        for i in tqdm(range(0, len(texts), batch_size), desc=desc, leave=False):
            enc = tokenizer(texts[i : i + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
            enc = enc.to(next(model.parameters()).device)
            gen = model.generate(
                **enc, max_new_tokens=max_new_tokens, do_sample=do_sample,
                temperature=temperature if do_sample else None, top_p=None, top_k=None,
                pad_token_id=tokenizer.pad_token_id,
            )
            out += tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    finally:
        model.train(was_training)
    return out


def evaluate_accuracy(model, tokenizer, examples, is_correct, *, max_new_tokens: int = 32, batch_size: int = 50,
                      desc: str = "evaluating") -> EvalResult:
    """Greedy accuracy on ``examples`` (rows with a conversational ``prompt``) judged by ``is_correct(text, row)``."""
    rows = [dict(r) for r in examples]
    completions = generate_completions(model, tokenizer, [r["prompt"] for r in rows], max_new_tokens=max_new_tokens,
                                       batch_size=batch_size, desc=desc)
    records = []
    for row, completion in zip(rows, completions):
        records.append({**row, "completion": completion, "correct": bool(is_correct(completion, row))})
    correct = sum(r["correct"] for r in records)
    return EvalResult(correct / max(1, len(records)), correct, len(records), records)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem (Chen et al. 2021): 1 - C(n-c, k) / C(n, k), n samples of which c correct.

    The probability that a random k-subset of the n samples holds at least one correct one; needs 1 <= k <= n.
    """
    if not 1 <= k <= n or not 0 <= c <= n:
        raise ValueError(f"pass@k needs 1 <= k <= n and 0 <= c <= n, got n={n}, c={c}, k={k}")
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


@dataclass
class PassAtKResult:
    samples: int  # n: completions sampled per problem
    temperature: float
    pass_at_k: dict[int, float]  # k -> mean over problems of the unbiased estimate, in [0, 1]
    correct_counts: list[int]  # c per problem, in the order of the examples


def evaluate_pass_at_k(model, tokenizer, examples, is_correct, *, ks: list[int], samples: int,
                       temperature: float = 1.0, max_new_tokens: int = 32, batch_size: int = 50,
                       desc: str = "sampling") -> PassAtKResult:
    """pass@k for every k in ``ks`` from ``samples`` sampled completions per example (``batch_size``: completions).

    Seed torch beforehand for reproducible samples.
    """
    if not ks or max(ks) > samples or min(ks) < 1:
        raise ValueError(f"pass@k for k={list(ks)} needs 1 <= k <= samples={samples}; raise --samples")
    rows = [dict(r) for r in examples]
    prompts = [r["prompt"] for r in rows for _ in range(samples)]
    completions = generate_completions(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                                       batch_size=batch_size, do_sample=True, temperature=temperature, desc=desc)
    counts = [
        sum(bool(is_correct(c, row)) for c in completions[i * samples : (i + 1) * samples])
        for i, row in enumerate(rows)
    ]
    scores = {k: sum(pass_at_k(samples, c, k) for c in counts) / max(1, len(counts)) for k in ks}
    return PassAtKResult(samples, temperature, scores, counts)
