"""Held-out accuracy of a (peft) causal LM on a task: greedy decoding, exact checker, progress bar."""

from __future__ import annotations

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
