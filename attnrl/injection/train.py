"""Learning SITE's soft head selection (docs/methods.md §3).

The model is frozen; the only parameters are the logits (L, H) of alpha = sigmoid(logit), initialised to 0.
Adam (lr 0.2), 400 steps, batch 1 of zero-shot prompts, loss = cross-entropy of the first target token at the last
prompt position. Every ``val_every`` steps the alphas are validated and the BEST are kept (the released code keeps
the last — a bug). Default validation: first-target-token accuracy on held-out prompts (ties: lower loss, then the
earlier step).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .site import TaskEmbedding, attention_heads, soft_injection

__all__ = ["HeadSelectionResult", "first_target_tokens", "first_token_scores", "make_artifact", "train_head_selection"]


def first_target_tokens(tokenizer, prompts: Sequence[str], targets: Sequence[str]) -> torch.Tensor:
    """(N,) id of each target's first token as the tokenizer splits prompt + target. ValueError when the target does
    not start a new token, or starts with a whitespace-only token (a degenerate objective: see icl.split_answer)."""
    out = []
    for prompt, target in zip(prompts, targets, strict=True):
        head = tokenizer(prompt)["input_ids"]
        full = tokenizer(prompt + target)["input_ids"]
        if len(full) <= len(head) or full[: len(head)] != head:
            raise ValueError(f"target {target!r} does not start a new token after prompt {prompt[-20:]!r}")
        if not tokenizer.decode([full[len(head)]]).strip():
            raise ValueError(f"target {target!r} starts with a whitespace-only token; move the space into the prompt")
        out.append(full[len(head)])
    return torch.tensor(out)


def _last_logits(model, tokenizer, prompts: Sequence[str], injection=None) -> torch.Tensor:
    """(N, V) next-token logits at each prompt's last token; ``injection`` = (embedding, alphas) or None."""
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    batch = tokenizer(list(prompts), return_tensors="pt", padding=True).to(device)
    ctx = soft_injection(model, *injection, batch["input_ids"].shape[1] - 1) if injection else contextlib.nullcontext()
    with ctx:
        return model(**batch, use_cache=False, logits_to_keep=1).logits[:, -1].float()


@torch.no_grad()
def first_token_scores(model, tokenizer, prompts, targets: torch.Tensor, injection=None, batch_size: int = 16):
    """(accuracy, mean cross-entropy) of the first target token over ``prompts``."""
    correct, loss = 0, 0.0
    for i in range(0, len(prompts), batch_size):
        logits = _last_logits(model, tokenizer, prompts[i : i + batch_size], injection)
        gold = targets[i : i + batch_size].to(logits.device)
        correct += int((logits.argmax(-1) == gold).sum())
        loss += float(F.cross_entropy(logits, gold, reduction="sum"))
    return correct / len(prompts), loss / len(prompts)


@dataclass
class HeadSelectionResult:
    """The best logits, the step they were validated at, and every validation (step, accuracy, loss)."""

    logits: torch.Tensor
    best_step: int
    history: list[tuple[int, float, float]] = field(default_factory=list)


def train_head_selection(
    model,
    tokenizer,
    embedding: torch.Tensor,
    train_prompts: Sequence[str],
    train_targets: Sequence[str],
    val_prompts: Sequence[str],
    val_targets: Sequence[str],
    *,
    steps: int = 400,
    lr: float = 0.2,
    val_every: int = 50,
    seed: int = 0,
    validate: Callable[[torch.Tensor], tuple[float, float]] | None = None,
) -> HeadSelectionResult:
    """Learn alpha logits (L, H) for ``embedding``; returns the best validated ones (validated every ``val_every``
    steps and after the last). ``validate(alphas) -> (accuracy, loss)`` overrides the default first-token scores."""
    layout = attention_heads(model)
    train_gold = first_target_tokens(tokenizer, train_prompts, train_targets)
    val_gold = first_target_tokens(tokenizer, val_prompts, val_targets)
    validate = validate or (lambda alphas: first_token_scores(model, tokenizer, val_prompts, val_gold,
                                                              (embedding, alphas)))
    logits = torch.zeros(len(layout.modules), layout.num_heads, requires_grad=True)
    optimiser = torch.optim.Adam([logits], lr=lr)
    order = random.Random(seed)
    frozen = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in frozen:
        p.requires_grad_(False)
    was_training = model.training
    model.eval()
    best: tuple[float, float] | None = None
    result = HeadSelectionResult(logits.detach().clone(), 0)
    try:
        for step in range(1, steps + 1):
            i = order.randrange(len(train_prompts))
            out = _last_logits(model, tokenizer, [train_prompts[i]], (embedding, torch.sigmoid(logits)))
            loss = F.cross_entropy(out, train_gold[i : i + 1].to(out.device))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            if step % val_every == 0 or step == steps:
                accuracy, val_loss = validate(torch.sigmoid(logits.detach()))
                result.history.append((step, accuracy, val_loss))
                if best is None or (accuracy, -val_loss) > best:
                    best = (accuracy, -val_loss)
                    result.logits, result.best_step = logits.detach().clone(), step
    finally:
        for p, flag in frozen:
            p.requires_grad_(flag)
        model.train(was_training)
    return result


def make_artifact(embedding: torch.Tensor, result: HeadSelectionResult, **metadata) -> TaskEmbedding:
    """The saveable SITE artifact of a trained head selection (metadata: task, model, shots, ...)."""
    best = next(acc for step, acc, _ in result.history if step == result.best_step)
    return TaskEmbedding(embedding, result.logits,
                         {**metadata, "best_step": result.best_step, "best_val_accuracy": best})
