"""Which arms actually tilt the update: the share of the policy gradient their amplified tokens carry.

    python -m benchmarks.organism.gradient_share                # 512 rollouts of the checkpoint, every arm
    python -m benchmarks.organism.gradient_share --prompts 16   # a quick look

Per token t of row i, the policy-gradient term of GRPO is A_i * d log p(y_t) / d z_t (z: the logits at t), whose
norm is |A_i| * ||onehot(y_t) - softmax(z_t)||_2 (:func:`token_gradient_norms`). An arm that multiplies the
advantage of a set S of tokens by gamma changes the update only as much as S carries of that gradient:

- gradient share of S = sum_{t in S} g_t / sum_t g_t (:func:`gradient_share`), beside the token share |S| / n;
- gradient-weighted mean gamma = sum_t gamma_t g_t / sum_t g_t (:func:`weighted_mean_gamma`). Adam ignores a common
  scale of the whole gradient, so an arm whose amplified tokens carry nearly all of it (share near 1, weighted
  gamma near gamma_amp) is plain GRPO rescaled; an arm that tilts the update has a share well below 1.

For ``trl_top_entropy`` (TRL's ``top_entropy_quantile = 0.2``: only the 20% highest-entropy tokens of the batch
enter the loss) the set is the tokens kept in the loss, and its weighted gamma is the kept share (gamma 1 kept,
0 dropped).

Measured once on rollouts of the organism checkpoint (amendment 3 of PREREGISTRATION.md: 64 ``grpo`` prompts x 8,
sampling seed 0, temperature 1, 160 tokens), every arm on the same rollouts, in batches of 16 prompts x 8 (the
sweep's batch, so per-batch head profiles match). Writes ``gradient_share.json`` and ``gradient_share.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "results" / "organism_sampled"


# ------------------------------------------------------------------------------------------------ the measures
def token_gradient_norms(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """||onehot(y_t) - softmax(z_t)||_2, the norm of d log p(y_t) / d z_t. logits (B, T, V), tokens (B, T) -> (B, T)."""
    probs = torch.softmax(logits.float(), -1)
    p_y = probs.gather(-1, tokens[..., None]).squeeze(-1)
    # ||e_y - p||^2 = (1 - p_y)^2 + sum_{j != y} p_j^2 = 1 - 2 p_y + sum_j p_j^2
    return (1.0 - 2.0 * p_y + (probs * probs).sum(-1)).clamp(min=0.0).sqrt()


def gradient_share(weights: torch.Tensor, selected: torch.Tensor, mask: torch.Tensor) -> float:
    """Share of sum(weights) over ``mask`` that falls on ``selected`` tokens; (B, T) each; NaN when it is all 0."""
    m = mask.bool()
    total = (weights * m).sum()
    return float((weights * (selected.bool() & m)).sum() / total) if total > 0 else float("nan")


def weighted_mean_gamma(weights: torch.Tensor, gamma: torch.Tensor, mask: torch.Tensor) -> float:
    """sum(gamma * weights) / sum(weights) over ``mask``; (B, T) each; NaN when the weights are all 0."""
    m = mask.bool().float()
    total = (weights * m).sum()
    return float((gamma * weights * m).sum() / total) if total > 0 else float("nan")


def group_advantages(rewards: torch.Tensor, group: int) -> torch.Tensor:
    """TRL's group-scaled advantages (reward - group mean) / (group std + 1e-4); rewards (B,) grouped in order."""
    r = rewards.view(-1, group)
    return ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-4)).view(-1)


def top_entropy_keep(entropy: torch.Tensor, mask: torch.Tensor, quantile: float) -> torch.Tensor:
    """TRL's high-entropy mask: tokens whose entropy is at or above the batch's ``quantile`` (over mask). (B, T)."""
    m = mask.bool()
    threshold = torch.quantile(entropy[m].float(), quantile)
    return (entropy >= threshold) & m


# ------------------------------------------------------------------------------------------------ rollouts
@torch.no_grad()
def rollouts(model, tokenizer, rows, group: int, max_new_tokens: int, seed: int):
    """(prompt_ids, prompt_mask, completion_ids, completion_mask) for ``group`` samples of each row, left/right
    padded; completions cut after the first EOS."""
    tokenizer.padding_side = "left"
    texts = [tokenizer.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True)
             for r in rows for _ in range(group)]
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    torch.manual_seed(seed)
    out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                         pad_token_id=tokenizer.pad_token_id)
    completion = out[:, enc["input_ids"].shape[1]:]
    is_eos = completion == tokenizer.eos_token_id
    after_eos = (torch.cumsum(is_eos.long(), 1) - is_eos.long()) > 0
    completion_mask = (~after_eos).long()
    completion = torch.where(after_eos, torch.full_like(completion, tokenizer.pad_token_id), completion)
    return enc["input_ids"], enc["attention_mask"], completion, completion_mask


@torch.no_grad()
def measure(checkpoint: Path, prompts: int = 64, group: int = 8, batch_prompts: int = 16, max_new_tokens: int = 160,
            seed: int = 0) -> dict:
    """Every arm's token share, gradient share and weighted gamma on the same rollouts of the checkpoint."""
    from attnrl.credit.assigner import CreditAssigner
    from attnrl.credit.config import CreditConfig
    from attnrl.credit.strategies import CreditParams, top_q_mask

    from .load import load_organism, load_problems
    from .oracle import DOSES, oracle_mask
    from .sweep import VARIANTS
    from .task import verify_trace

    model, tokenizer = load_organism(checkpoint)
    model.eval()
    problems = load_problems("grpo", checkpoint, n=prompts)
    arms = [a for a in ("uniform", "entropy", "trl_top_entropy", "random", "local_chunk", "local_chunk_scaled",
                        "global_anchor", "global_anchor_scaled", "coupled", "coupled_scaled", *DOSES)]
    sums: dict[str, dict[str, float]] = {a: {"tokens": 0.0, "selected": 0.0, "grad": 0.0, "grad_selected": 0.0,
                                             "grad_gamma": 0.0} for a in arms}
    confident = {"tokens": 0.0, "selected": 0.0, "grad": 0.0, "grad_selected": 0.0}
    generator = torch.Generator().manual_seed(seed)
    assigners = {arm: CreditAssigner(CreditConfig(credit_strategy=VARIANTS[arm][0], **VARIANTS[arm][1]), model,
                                      reduce_across_ranks=False)
                 for arm in arms if arm in VARIANTS and VARIANTS[arm][0] not in ("uniform", "entropy", "random")}
    for b, start in enumerate(range(0, prompts, batch_prompts)):
        rows = [problems[i] for i in range(start, min(start + batch_prompts, prompts))]
        p_ids, p_mask, c_ids, c_mask = rollouts(model, tokenizer, rows, group, max_new_tokens, seed + b)
        texts = tokenizer.batch_decode(c_ids, skip_special_tokens=True)
        specs = [(r["numbers"], r["target"]) for r in rows for _ in range(group)]
        rewards = torch.tensor([float(verify_trace(t, *s)) for t, s in zip(texts, specs, strict=True)])
        adv = group_advantages(rewards, group)
        ids = torch.cat([p_ids, c_ids], 1)
        logits = model(input_ids=ids, attention_mask=torch.cat([p_mask, c_mask], 1)).logits
        logits = logits[:, p_ids.shape[1] - 1:-1]
        norms = token_gradient_norms(logits, c_ids)
        weights = norms * adv.abs()[:, None]
        probs = torch.softmax(logits.float(), -1)
        entropy = -(probs * torch.log(probs.clamp(min=1e-30))).sum(-1)
        p_y = probs.gather(-1, c_ids[..., None]).squeeze(-1)
        mask = c_mask.bool()
        for key, sel in (("tokens", mask), ("selected", (p_y > 0.95) & mask)):
            confident[key] += float(sel.sum())
        confident["grad"] += float((weights * mask).sum())
        confident["grad_selected"] += float((weights * ((p_y > 0.95) & mask)).sum())
        for arm in arms:
            if arm in DOSES:
                selected = oracle_mask(c_ids, c_mask, adv, specs, tokenizer)
                gamma = 1.0 + (DOSES[arm] - 1.0) * selected.float()
            elif arm == "trl_top_entropy":
                selected = top_entropy_keep(entropy, mask, 1.0 - VARIANTS[arm][2]["top_entropy_quantile"])
                gamma = selected.float()
            elif arm == "entropy":
                selected = top_q_mask(entropy, mask, CreditParams().top_q)
                gamma = 1.0 + (CreditParams().gamma_amp - 1.0) * selected.float()
            elif arm == "random":
                scores = torch.rand(mask.shape, generator=generator)
                selected = top_q_mask(scores, mask, CreditParams().top_q)
                gamma = 1.0 + (CreditParams().gamma_amp - 1.0) * selected.float()
            elif arm == "uniform":
                selected, gamma = torch.zeros_like(mask), torch.ones_like(weights)
            else:  # an attention strategy: one assigner per arm (per-batch head profile, as in the sweep)
                gamma = assigners[arm].assign(model, p_ids, p_mask, c_ids, c_mask, batch_size=len(c_ids)).gamma
                selected = (gamma > 1.0) & mask
            s = sums[arm]
            s["tokens"] += float(mask.sum())
            s["selected"] += float((selected & mask).sum())
            s["grad"] += float((weights * mask).sum())
            s["grad_selected"] += float((weights * (selected & mask)).sum())
            s["grad_gamma"] += float((weights * gamma * mask).sum())
    table = {arm: {"token_share": round(s["selected"] / s["tokens"], 4),
                   "gradient_share": round(s["grad_selected"] / s["grad"], 4),
                   "weighted_gamma": round(s["grad_gamma"] / s["grad"], 4)} for arm, s in sums.items()}
    return {"arms": table, "confident_tokens": {
        "token_share": round(confident["selected"] / confident["tokens"], 4),
        "gradient_share": round(confident["grad_selected"] / confident["grad"], 4), "threshold_p": 0.95},
        "settings": {"prompts": prompts, "group": group, "batch_prompts": batch_prompts,
                     "max_new_tokens": max_new_tokens, "seed": seed, "split": "grpo"}}


def format_table(result: dict) -> str:
    lines = ["| arm | amplified tokens | their gradient share | gradient-weighted gamma |", "|---|---|---|---|"]
    for arm, r in result["arms"].items():
        lines.append(f"| {arm} | {100 * r['token_share']:.1f}% | {100 * r['gradient_share']:.1f}% | "
                     f"{r['weighted_gamma']:.3f} |")
    c = result["confident_tokens"]
    lines.append(f"\nTokens with p > {c['threshold_p']}: {100 * c['token_share']:.1f}% of tokens, "
                 f"{100 * c['gradient_share']:.1f}% of the gradient. For trl_top_entropy the set is the tokens kept "
                 "in the loss and its gamma is 1 on them, 0 elsewhere.")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=REPO / "benchmarks" / "organism" / "checkpoint")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    result = measure(args.checkpoint, prompts=args.prompts)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gradient_share.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "gradient_share.md").write_text(format_table(result) + "\n")
    print(format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
