"""Greedy held-out accuracy and VAS of a vision-language model on TRL-style rows (prompt, image, answer)."""

from __future__ import annotations

import torch

from attnrl.attention.collect import collect_statistics
from attnrl.rewards import accuracy_reward

from .scores import visual_attention_score
from .tokens import empty_system_error, token_sets

__all__ = ["evaluate_visual", "prompt_inputs"]


def prompt_inputs(processor, rows: list[dict]) -> dict:
    """Left-padded processor inputs (input_ids, attention_mask, pixel_values, ...) of the rows' chat prompts, with
    each row's image before its user text (as TRL builds them)."""
    processor.tokenizer.padding_side = "left"
    texts = []
    for row in rows:
        messages = [dict(m) for m in row["prompt"]]
        user = messages[-1]
        messages[-1] = {**user, "content": [{"type": "image"}, {"type": "text", "text": user["content"]}]}
        texts.append(processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
    return processor(images=[[row["image"]] for row in rows], text=texts, padding=True, return_tensors="pt")


@torch.no_grad()
def evaluate_visual(model, processor, rows: list[dict], layers, *, max_new_tokens: int = 16,
                    batch_size: int = 8) -> dict[str, float]:
    """{"accuracy": greedy exact-answer accuracy, "vas": mean VAS of the prompts over ``layers``}.

    ValueError before any generation when a prompt has no system tokens (VAS is undefined without S)."""
    device = next(model.parameters()).device
    batches = []
    for i in range(0, len(rows), batch_size):  # every prompt's token sets are checked before any generation
        inputs = prompt_inputs(processor, rows[i : i + batch_size])
        sets = token_sets(inputs["input_ids"], inputs["attention_mask"], processor)
        empty = [i + int(r) for r in (sets.system.sum(1) == 0).nonzero().flatten()]
        if empty:
            raise empty_system_error(empty, "VAS of the evaluation rows")
        batches.append((rows[i : i + batch_size], inputs, sets))
    correct, vas = [], []
    for chunk, inputs, sets in batches:
        inputs = inputs.to(device)
        T = inputs["input_ids"].shape[1]
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        texts = processor.batch_decode(out[:, T:], skip_special_tokens=True)
        correct += accuracy_reward(texts, [row["answer"] for row in chunk])
        extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
        stats = collect_statistics(model, layers, inputs["input_ids"], inputs["attention_mask"],
                                   torch.full_like(inputs["input_ids"][:, 0], T), key_masks=sets.key_masks().to(device),
                                   **extra)
        vas += visual_attention_score({layer: s.span_mass for layer, s in stats.items()}, sets.user).tolist()
    return {"accuracy": sum(c or 0.0 for c in correct) / len(rows), "vas": sum(vas) / len(vas)}
