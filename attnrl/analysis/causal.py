"""The causal test of the preplan-and-anchor premise (docs/methods.md §1): do the tokens the credit rules amplify
steer the rest of a response more than other tokens do?

Protocol (:func:`causal_premise`), per held-out problem:

1. Sample one response (``CausalConfig.temperature``, seeded; 0 = greedy).
2. Compute per-token statistics over [prompt; response] with the trainer's own code: :class:`CreditAssigner` under
   the given :class:`CreditConfig` (strategy forced to ``coupled``), responses batched ``stats_batch_size`` at a
   time like a rollout batch (so a ``per_batch`` head split is taken over that batch), plus the policy's token
   entropy (of logits / temperature, as TRL computes it).
3. Selectors, each a set of response positions: ``anchor`` = TopQ(FAI), ``preplan`` = TopQ(|WAAD_t - WAAD_{t+1}|),
   ``coupled`` = gamma > 1 under the coupled strategy (anchors and introducers), ``entropy`` = TopQ(entropy),
   ``random`` = every position (the ``random`` strategy takes a uniform random q-subset, so a uniform draw from
   that subset is a uniform draw from the response). TopQ runs over the whole response (EOS included), as in the
   trainer; then only *eligible* positions are kept: not special tokens, and at least ``answer_gap`` tokens
   (default: the FAI horizon start H_lo = 10) before the first token of the final answer, so that the answer
   itself and the tokens that influence it only through the immediate local context are left out. Responses cut
   off by ``max_new_tokens`` have no final answer and are skipped (``require_eos``).
4. From each selector draw the same number ``k = min(interventions_per_selector, smallest eligible selector)`` of
   positions uniformly without replacement, so every selector gets equal counts within a problem.
5. Intervene on one position t at a time: replace token c_t by the policy's most likely OTHER token at t
   (argmax of the next-token logits at t with c_t, special tokens and undecodable ids excluded). Measured:

   - ``logp_drop`` (teacher-forced, nats): log p(a | prompt, c_<t, c_t, c_(t, a)) - log p(a | prompt, c_<t, c'_t,
     c_(t, a)) where a = the original final-answer tokens and c_(t, a) the ORIGINAL tokens between t and the
     answer (kept fixed). Positive: the answer became less likely. ``logp_abs`` = its absolute value,
     ``logp_abs_gt1`` = [|drop| > 1 nat] (robust to the heavy tail of single large changes).
   - with ``regenerate`` (default): greedy regeneration of the rest after the replaced prefix [c_<t, c'_t] and,
     as the control, after the unchanged prefix [c_<t, c_t] (same decoding rule, same length budget
     ``max_new_tokens`` in total), then ``flip`` = |correct(replaced) - correct(control)| (0/1) and
     ``answer_change`` = [final answer(replaced) != final answer(control)] (useful when the model is rarely right).
     The greedy control isolates the token: the sampled original continuation is never compared with a greedy one.

Per selector and measure: the mean over problems of the per-problem mean over its k interventions, a percentile
bootstrap CI resampling problems (not tokens), the ratio to ``random`` and the paired difference to ``random``
(bootstrap CI, exact sign test over problems, minimum detectable difference), and the number of interventions.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from attnrl.credit.assigner import CreditAssigner
from attnrl.credit.config import CreditConfig
from attnrl.credit.strategies import top_q_mask, waad_jumps
from attnrl.rewards.completions import NUMBER_PATTERN

from .stats import bootstrap_ci, bootstrap_ratio_ci, minimum_detectable_difference, paired_bootstrap_ci, sign_test

SELECTORS = ("anchor", "preplan", "coupled", "entropy", "random")
REGEN_MEASURES = ("flip", "answer_change")
TF_MEASURES = ("logp_drop", "logp_abs", "logp_abs_gt1")
MEASURE_HELP = {
    "flip": "correctness flip rate |correct(replaced) - correct(control)|, greedy regeneration",
    "answer_change": "final answer differs from the control's, greedy regeneration",
    "logp_drop": "drop of log p(original answer), teacher-forced (nats)",
    "logp_abs": "|change| of log p(original answer), teacher-forced (nats)",
    "logp_abs_gt1": "share of interventions moving log p(original answer) by more than 1 nat",
}
MEASURE_LABEL = {
    "flip": "correctness flip rate",
    "answer_change": "answer change rate",
    "logp_drop": "drop of log p(answer) (nats)",
    "logp_abs": "|change| of log p(answer) (nats)",
    "logp_abs_gt1": "share with |change| > 1 nat",
}
_NUMBER = re.compile(NUMBER_PATTERN)
_BOXED = "\\boxed{"


@dataclass
class CausalConfig:
    """Settings of the causal premise test (defaults ours)."""

    interventions_per_selector: int = field(
        default=4, metadata={"help": "k: positions intervened on per selector per response (equal for all)."}
    )
    temperature: float = field(default=0.8, metadata={"help": "Sampling temperature of the responses (0 = greedy)."})
    max_new_tokens: int = field(default=256, metadata={"help": "Length budget of responses and regenerations."})
    seed: int = field(default=0, metadata={"help": "Seed of the sampling and of the position draws."})
    answer_gap: int | None = field(
        default=None,
        metadata={"help": "Positions closer than this to the first answer token are not intervened on (their "
                  "influence is local, not the long-range steering FAI measures). None: credit_fai_lo (10)."},
    )
    require_eos: bool = field(
        default=True,
        metadata={"help": "Skip responses cut off by max_new_tokens (their last number is not a final answer)."},
    )
    selectors: tuple[str, ...] = field(default=SELECTORS, metadata={"help": f"Selectors compared, from {SELECTORS}."})
    regenerate: bool = field(
        default=True,
        metadata={"help": "Also regenerate greedily after each intervention (flip / answer_change); False: "
                  "teacher-forced log-prob only (much cheaper)."},
    )
    sample_batch_size: int = field(default=16, metadata={"help": "Prompts per sampling generate call."})
    stats_batch_size: int = field(default=8, metadata={"help": "Responses per statistics forward (head split)."})
    regen_batch_size: int = field(default=64, metadata={"help": "Rows per regeneration generate call."})
    n_boot: int = field(default=10000, metadata={"help": "Bootstrap resamples."})
    level: float = field(default=0.95, metadata={"help": "Confidence level of the intervals."})

    def validate(self) -> None:
        """Raise ValueError naming the bad field and the fix."""
        unknown = [s for s in self.selectors if s not in SELECTORS]
        if unknown or not self.selectors:
            raise ValueError(f"selectors={list(self.selectors)}: use a non-empty subset of {list(SELECTORS)}")
        if "random" not in self.selectors:
            raise ValueError("selectors must include 'random': every effect is reported relative to it")
        if self.interventions_per_selector < 1:
            raise ValueError(f"interventions_per_selector={self.interventions_per_selector} must be >= 1")
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature} must be >= 0 (0 = greedy)")
        if self.answer_gap is not None and self.answer_gap < 1:
            raise ValueError(f"answer_gap={self.answer_gap} must be >= 1 (or None for credit_fai_lo)")
        if self.max_new_tokens < 2:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} must be >= 2")
        for name in ("sample_batch_size", "stats_batch_size", "regen_batch_size", "n_boot"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if not 0 < self.level < 1:
            raise ValueError(f"level={self.level} must lie in (0, 1)")

    def measures(self) -> tuple[str, ...]:
        return (REGEN_MEASURES if self.regenerate else ()) + TF_MEASURES


# ------------------------------------------------------------------------------------------------ answers


def final_answer_span(text: str) -> tuple[int, int] | None:
    r"""Character span [start, end) of the final answer: the content of the last ``\boxed{}`` (balanced braces),
    else the last standalone number (the rule of :mod:`attnrl.rewards.completions`); None when there is none."""
    start = text.rfind(_BOXED)
    if start >= 0:
        depth, begin = 1, start + len(_BOXED)
        for i in range(begin, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                return (begin, i) if i > begin else None
    matches = list(_NUMBER.finditer(text))
    return (matches[-1].start(), matches[-1].end()) if matches else None


def last_line_span(text: str) -> tuple[int, int] | None:
    """Character span [start, end) of the last non-empty line (stripped), e.g. an answer written on the last line."""
    end = len(text.rstrip())
    if end == 0:
        return None
    start = text.rfind("\n", 0, end) + 1
    while text[start].isspace():
        start += 1
    return start, end


_STEP = re.compile(r"\d+[-+*/]\d+=\d+")


def last_step_span(text: str) -> tuple[int, int] | None:
    """Character span of the last ``a op b=r`` step, e.g. the final operation of a written search (giving the target)."""
    matches = list(_STEP.finditer(text))
    return (matches[-1].start(), matches[-1].end()) if matches else None


ANSWER_SPANS = {"final": final_answer_span, "last_line": last_line_span, "last_step": last_step_span}


def final_answer(text: str, span_fn: Callable[[str], tuple[int, int] | None] = final_answer_span) -> str | None:
    """The final answer's text (stripped), or None."""
    span = span_fn(text)
    return None if span is None else text[span[0] : span[1]].strip()


def token_char_ends(tokenizer, ids: Sequence[int]) -> list[int]:
    """ends[j] = length of decode(ids[: j + 1]) (special tokens skipped): token j covers [ends[j-1], ends[j])."""
    return [len(tokenizer.decode(list(ids[: j + 1]), skip_special_tokens=True)) for j in range(len(ids))]


def answer_token_span(ends: list[int], span: tuple[int, int] | None) -> tuple[int, int] | None:
    """Inclusive token range (a0, a1) of the tokens overlapping the character span, or None."""
    if span is None:
        return None
    s, e = span
    starts = [0] + ends[:-1]
    hit = [j for j in range(len(ends)) if ends[j] > s and starts[j] < e and ends[j] > starts[j]]
    return (hit[0], hit[-1]) if hit else None


# ------------------------------------------------------------------------------------------------ records


@dataclass
class Intervention:
    """One replaced token and what followed. Log-probs in nats; None where not measured."""

    position: int  # index in the response
    original_token: int
    replacement_token: int
    original_text: str
    replacement_text: str
    logp_answer: float | None = None  # log p(original answer), original context
    logp_answer_replaced: float | None = None  # same, with the token replaced (teacher-forced)
    correct_control: bool | None = None
    correct_replaced: bool | None = None
    answer_control: str | None = None
    answer_replaced: str | None = None

    def measure(self, name: str) -> float | None:
        if name in TF_MEASURES:
            if self.logp_answer is None or self.logp_answer_replaced is None:
                return None
            drop = self.logp_answer - self.logp_answer_replaced
            return {"logp_drop": drop, "logp_abs": abs(drop), "logp_abs_gt1": float(abs(drop) > 1.0)}[name]
        if self.correct_control is None:
            return None
        if name == "flip":
            return float(self.correct_replaced != self.correct_control)
        if name == "answer_change":
            return float(self.answer_replaced != self.answer_control)
        raise KeyError(f"unknown measure {name!r}; use one of {REGEN_MEASURES + TF_MEASURES}")


@dataclass
class ProblemRecord:
    """One problem: its sampled response, the positions each selector drew, and the interventions (by position)."""

    index: int
    completion: str
    num_tokens: int
    correct: bool
    answer: str | None
    answer_tokens: tuple[int, int] | None
    finished: bool = True  # ended with EOS
    eligible: int = 0  # eligible positions
    selector_sizes: dict[str, int] = field(default_factory=dict)  # eligible positions in each selector's set
    selected: dict[str, list[int]] = field(default_factory=dict)
    interventions: dict[int, Intervention] = field(default_factory=dict)
    skipped: str | None = None  # why no intervention was made

    def selector_value(self, selector: str, measure: str) -> float | None:
        """Mean of ``measure`` over the selector's interventions (None if undefined for this problem)."""
        vals = [self.interventions[p].measure(measure) for p in self.selected.get(selector, [])]
        if not vals or any(v is None for v in vals):
            return None
        return float(np.mean(vals))

    def to_json(self) -> dict:
        d = asdict(self)
        d["interventions"] = [asdict(v) for _, v in sorted(self.interventions.items())]
        return d


@dataclass
class CausalResult:
    config: dict
    credit: dict
    records: list[ProblemRecord]
    summary: dict
    seconds: float
    meta: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"meta": self.meta, "config": self.config, "credit": self.credit, "seconds": round(self.seconds, 1),
                "summary": self.summary, "records": [r.to_json() for r in self.records]}


# ------------------------------------------------------------------------------------------------ model work


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _eos_ids(model, tokenizer) -> set[int]:
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    gen = getattr(model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None)
    ids |= set(eos) if isinstance(eos, (list, tuple)) else ({eos} if eos is not None else set())
    return ids


def _excluded_ids(model, tokenizer, vocab_size: int) -> torch.Tensor:
    """Bool (V,) mask of ids never used as a replacement: special tokens and ids the tokenizer cannot decode."""
    bad = torch.zeros(vocab_size, dtype=torch.bool)
    for i in set(tokenizer.all_special_ids) | _eos_ids(model, tokenizer):
        if i is not None and 0 <= i < vocab_size:
            bad[i] = True
    bad[len(tokenizer):] = True
    return bad


def _prompt_text(tokenizer, prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)


def _left_pad(rows: list[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = r
        mask[i, width - len(r):] = 1
    return ids, mask


def _right_pad(rows: list[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
        mask[i, : len(r)] = 1
    return ids, mask


def _trim_at_eos(ids: torch.Tensor, eos: set[int]) -> torch.Tensor:
    """ids up to and including the first EOS (the trainer's completion mask covers it)."""
    for j, t in enumerate(ids.tolist()):
        if t in eos:
            return ids[: j + 1]
    return ids


@torch.no_grad()
def _generate(model, tokenizer, prefixes: list[torch.Tensor], max_new_tokens: int, temperature: float = 0.0):
    """Continuations (1-D, EOS trimmed) of left-padded ``prefixes``; greedy unless temperature > 0."""
    ids, mask = _left_pad(prefixes, tokenizer.pad_token_id)
    dev = _device(model)
    sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if temperature > 0 else dict(
        do_sample=False, temperature=None, top_k=None, top_p=None)
    out = model.generate(input_ids=ids.to(dev), attention_mask=mask.to(dev), max_new_tokens=max_new_tokens,
                         pad_token_id=tokenizer.pad_token_id, **sampling)
    eos = _eos_ids(model, tokenizer)
    return [_trim_at_eos(row.cpu(), eos) for row in out[:, ids.shape[1]:]]


@torch.no_grad()
def sample_responses(model, tokenizer, prompts: list, config: CausalConfig, progress: bool = False):
    """[(prompt_ids (Tp,), completion_ids (Tc,))] per prompt: sampled at config.temperature (0: greedy), seeded."""
    from tqdm.auto import tqdm

    torch.manual_seed(config.seed)
    prompt_ids = [
        tokenizer(_prompt_text(tokenizer, p), return_tensors="pt", add_special_tokens=False)["input_ids"][0]
        for p in prompts
    ]
    out = []
    for i in tqdm(range(0, len(prompt_ids), config.sample_batch_size), desc="sampling", disable=not progress,
                  leave=False):
        chunk = prompt_ids[i : i + config.sample_batch_size]
        out += list(zip(chunk, _generate(model, tokenizer, chunk, config.max_new_tokens, config.temperature)))
    return out


@torch.no_grad()
def response_statistics(assigner: CreditAssigner, model, tokenizer, pairs, batch_size: int) -> list[dict]:
    """Per response, 1-D tensors over its tokens: waad, fai (NaN where undefined), gamma (coupled), anchor (bool).

    Computed by ``assigner`` on batches of ``batch_size`` responses (prompts left-, completions right-padded).
    """
    dev = _device(model)
    out: list[dict] = []
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i : i + batch_size]
        p_ids, p_mask = _left_pad([p for p, _ in chunk], tokenizer.pad_token_id)
        c_ids, c_mask = _right_pad([c for _, c in chunk], tokenizer.pad_token_id)
        res = assigner.assign(model, p_ids.to(dev), p_mask.to(dev), c_ids.to(dev), c_mask.to(dev))
        for row, (_, c) in enumerate(chunk):
            n = len(c)
            out.append({"waad": res.waad[row, :n].float().cpu(), "fai": res.fai[row, :n].float().cpu(),
                        "gamma": res.gamma[row, :n].float().cpu(), "anchor": res.roles["anchors"][row, :n].cpu()})
    return out


def _cache_kwarg(model) -> str:
    """Name of the forward's KV-cache argument ('cache' in recent transformers, 'past_key_values' before)."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@torch.no_grad()
def original_forward(model, prompt_ids: torch.Tensor, completion_ids: torch.Tensor):
    """(logits (Tc, V) predicting each response token from everything before it (float32, CPU), KV cache)."""
    ids = torch.cat([prompt_ids, completion_ids])[None].to(_device(model))
    n = len(completion_ids)
    out = model(input_ids=ids, use_cache=True, logits_to_keep=n + 1)
    cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
    return out.logits[0, :n].float().cpu(), cache


def token_entropy(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Entropy (nats) of softmax(logits / T) per row (T = 1 when temperature is 0). (Tc, V) -> (Tc,)."""
    logp = torch.log_softmax(logits / (temperature if temperature > 0 else 1.0), -1)
    return -(logp.exp() * logp).sum(-1)


@torch.no_grad()
def _replaced_answer_logprob(model, cache, tp: int, tokens: torch.Tensor, p: int, a0: int, a1: int) -> float:
    """log p(tokens[a0..a1]) when response token p is replaced (``tokens``: the response with the replacement).

    Reuses the original's KV cache up to the replaced position: only tokens p..a1 are run.
    """
    import copy

    prefix = copy.deepcopy(cache)
    prefix.crop(-(prefix.get_seq_length() - (tp + p)))  # keep the first tp + p positions
    n_ans = a1 - a0 + 1
    ids = tokens[p : a1 + 1][None].to(_device(model))
    out = model(input_ids=ids, use_cache=True, logits_to_keep=n_ans + 1, **{_cache_kwarg(model): prefix})
    logp = torch.log_softmax(out.logits[0, :n_ans].float(), -1)
    return float(logp.gather(-1, ids[0, -n_ans:, None]).sum())


@torch.no_grad()
def intervene(
    model,
    tokenizer,
    prompt_ids: torch.Tensor,
    completion_ids: torch.Tensor,
    positions: Sequence[int],
    *,
    verify: Callable[[str], bool] | None,
    answer_tokens: tuple[int, int] | None,
    max_new_tokens: int,
    logits: torch.Tensor | None = None,
    cache=None,
    span_fn: Callable[[str], tuple[int, int] | None] = final_answer_span,
    regen_batch_size: int = 64,
) -> dict[int, Intervention]:
    """Replace each response position in ``positions`` by the most likely other token, one at a time.

    prompt_ids (Tp,), completion_ids (Tc,): the original sequence. ``answer_tokens``: inclusive response range of
    the final answer (positions must lie before it) or None (no teacher-forced measure). ``verify(text) -> bool``
    judges a response text; None skips the regeneration. ``logits`` (Tc, V) and ``cache``: the output of
    :func:`original_forward` (computed when not given). Returns {position: Intervention}.
    """
    positions = sorted(set(int(p) for p in positions))
    Tc, Tp = len(completion_ids), len(prompt_ids)
    bad = [p for p in positions if not 0 <= p < Tc or (answer_tokens is not None and p >= answer_tokens[0])]
    if bad:
        raise ValueError(f"positions {bad} are outside the response [0, {Tc}) or not before the answer "
                         f"tokens {answer_tokens}; intervene only before the final answer")
    if logits is None or cache is None:
        logits, cache = original_forward(model, prompt_ids, completion_ids)
    excluded = _excluded_ids(model, tokenizer, logits.shape[-1])
    c = completion_ids.cpu()
    result: dict[int, Intervention] = {}
    for p in positions:
        row = logits[p].clone()
        row[excluded] = -math.inf
        row[c[p]] = -math.inf
        alt = int(row.argmax())
        result[p] = Intervention(p, int(c[p]), alt, tokenizer.decode([int(c[p])]), tokenizer.decode([alt]))
    if not positions:
        return result

    if answer_tokens is not None:
        a0, a1 = answer_tokens
        base = float(torch.log_softmax(logits[a0 : a1 + 1], -1).gather(-1, c[a0 : a1 + 1, None]).sum())
        for p in positions:
            replaced = c.clone()
            replaced[p] = result[p].replacement_token
            result[p].logp_answer = base
            result[p].logp_answer_replaced = _replaced_answer_logprob(model, cache, Tp, replaced, p, a0, a1)

    if verify is not None:
        prefixes, keys = [], []
        for p in positions:
            head = torch.cat([prompt_ids.cpu(), c[:p]])
            prefixes += [torch.cat([head, c[p : p + 1]]), torch.cat([head, torch.tensor([result[p].replacement_token])])]
            keys += [(p, "control"), (p, "replaced")]
        budget = max_new_tokens - min(positions) - 1
        for i in range(0, len(prefixes), regen_batch_size):
            conts = _generate(model, tokenizer, prefixes[i : i + regen_batch_size], max(1, budget))
            for (p, kind), prefix, cont in zip(keys[i : i + regen_batch_size], prefixes[i : i + regen_batch_size],
                                               conts):
                cont = cont[: max(0, max_new_tokens - p - 1)]  # the same total length budget as the original
                text = tokenizer.decode(torch.cat([prefix[Tp:], cont]).tolist(), skip_special_tokens=True)
                ok, ans = bool(verify(text)), final_answer(text, span_fn)
                if kind == "control":
                    result[p].correct_control, result[p].answer_control = ok, ans
                else:
                    result[p].correct_replaced, result[p].answer_replaced = ok, ans
    return result


# ------------------------------------------------------------------------------------------------ selection


def selector_masks(stats: dict, entropy: torch.Tensor, top_q: float) -> dict[str, torch.Tensor]:
    """Bool (Tc,) sets of each selector over one response (TopQ over the whole response, as the trainer does)."""
    mask = torch.ones(1, len(entropy), dtype=torch.bool)
    return {
        "anchor": stats["anchor"].bool(),
        "preplan": top_q_mask(waad_jumps(stats["waad"][None], mask), mask, top_q)[0],
        "coupled": stats["gamma"] > 1.0,
        "entropy": top_q_mask(entropy[None], mask, top_q)[0],
        "random": mask[0],
    }


def draw_positions(sets: dict[str, torch.Tensor], eligible: torch.Tensor, k: int, rng: np.random.Generator,
                   selectors: Sequence[str]) -> dict[str, list[int]]:
    """k' = min(k, smallest eligible set) positions per selector, uniformly without replacement (sorted)."""
    pools = {s: torch.nonzero(sets[s] & eligible).flatten().tolist() for s in selectors}
    k_eff = min([k] + [len(v) for v in pools.values()])
    return {s: sorted(int(x) for x in rng.choice(pools[s], size=k_eff, replace=False)) if k_eff else []
            for s in selectors}


# ------------------------------------------------------------------------------------------------ the test


def causal_premise(
    model,
    tokenizer,
    examples: Sequence[dict],
    is_correct: Callable[[str, dict], bool],
    config: CausalConfig | None = None,
    credit: CreditConfig | None = None,
    *,
    span_fn: Callable[[str], tuple[int, int] | None] = final_answer_span,
    progress: bool = True,
    meta: dict | None = None,
) -> CausalResult:
    """Run the premise test (module docstring) on ``examples`` (rows with a ``prompt``: chat messages or text).

    ``is_correct(response_text, example) -> bool`` is the task's verifier; ``credit`` the statistics settings
    (default :class:`CreditConfig`, i.e. W = 10, FAI horizon [s+10, s+100], q = 0.4).
    """
    from tqdm.auto import tqdm

    config = config or CausalConfig()
    config.validate()
    credit = dataclasses.replace(credit or CreditConfig(), credit_strategy="coupled")
    if not examples:
        raise ValueError("no examples: pass at least one problem")
    missing = [i for i, e in enumerate(examples) if "prompt" not in e]
    if missing:
        raise ValueError(f"examples {missing[:5]} have no 'prompt' column")
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token = tokenizer.eos_token")
    gap = config.answer_gap if config.answer_gap is not None else max(1, credit.credit_fai_lo)
    assigner = CreditAssigner(credit, model)  # validates the credit settings and the capture before any work
    was_training = model.training
    model.eval()
    tokenizer.padding_side = "left"
    start = time.time()
    try:
        pairs = sample_responses(model, tokenizer, [e["prompt"] for e in examples], config, progress)
        stats = response_statistics(assigner, model, tokenizer, pairs, config.stats_batch_size)
        eos = _eos_ids(model, tokenizer)
        special = set(tokenizer.all_special_ids) | eos
        records = []
        for i, ((p_ids, c_ids), st, ex) in enumerate(
            tqdm(list(zip(pairs, stats, examples)), desc="interventions", disable=not progress)
        ):
            text = tokenizer.decode(c_ids.tolist(), skip_special_tokens=True)
            span = span_fn(text)
            ans_tok = answer_token_span(token_char_ends(tokenizer, c_ids.tolist()), span)
            rec = ProblemRecord(
                index=i, completion=text, num_tokens=len(c_ids), correct=bool(is_correct(text, ex)),
                answer=None if span is None else text[span[0]:span[1]].strip(), answer_tokens=ans_tok,
                finished=bool(len(c_ids)) and int(c_ids[-1]) in eos,
            )
            records.append(rec)
            if config.require_eos and not rec.finished:
                rec.skipped = "the response hit max_new_tokens before EOS (no final answer)"
                continue
            logits, cache = original_forward(model, p_ids, c_ids)
            sets = selector_masks(st, token_entropy(logits, config.temperature), credit.credit_top_q)
            eligible = torch.tensor([t not in special for t in c_ids.tolist()])
            if ans_tok is not None:
                eligible[max(0, ans_tok[0] - gap + 1):] = False
            rec.eligible = int(eligible.sum())
            rec.selector_sizes = {s: int((sets[s] & eligible).sum()) for s in config.selectors}
            rng = np.random.default_rng([config.seed, i])
            rec.selected = draw_positions(sets, eligible, config.interventions_per_selector, rng, config.selectors)
            positions = sorted({p for v in rec.selected.values() for p in v})
            if not positions:
                rec.skipped = "no eligible position in some selector's set (response too short?)"
                continue
            rec.interventions = intervene(
                model, tokenizer, p_ids, c_ids, positions,
                verify=(lambda t, ex=ex: is_correct(t, ex)) if config.regenerate else None,
                answer_tokens=ans_tok, max_new_tokens=config.max_new_tokens, logits=logits, cache=cache,
                span_fn=span_fn, regen_batch_size=config.regen_batch_size,
            )
    finally:
        model.train(was_training)
    summary = summarize(records, config.selectors, config.measures(), n_boot=config.n_boot, level=config.level,
                        seed=config.seed)
    return CausalResult(asdict(config), asdict(credit), records, summary, time.time() - start, dict(meta or {}))


# ------------------------------------------------------------------------------------------------ tasks

COT_SUFFIX = "Let's think step by step."
PremiseProblems = tuple[list[dict], Callable[[str, dict], bool], str]  # (examples, is_correct, answer-span name)
PREMISE_TASKS: dict[str, Callable[..., PremiseProblems]] = {}
"""Task name -> ``problems(n, *, seed, terms, model_name) -> (examples, is_correct, answer-span name)``: tasks whose
premise-test problems differ from their registry's held-out split (see :func:`register_premise_task`)."""


def register_premise_task(name: str, problems: Callable[..., PremiseProblems]) -> None:
    """Give task ``name`` its own premise-test problems (idempotent for the same function).

    ``problems(n, *, seed, terms, model_name)`` returns ``n`` held-out examples (rows with ``prompt`` and the task's
    gold columns), the verifier ``is_correct(response_text, example)`` and the name of the answer span in
    :data:`ANSWER_SPANS`; ``model_name`` is the model under test (for problems saved with a model), ``terms`` the
    arithmetic option (ignored elsewhere). A task without one uses its registry's held-out split
    (:func:`premise_task`)."""
    if PREMISE_TASKS.get(name, problems) is not problems:
        raise ValueError(f"premise task {name!r} is already registered")
    PREMISE_TASKS[name] = problems


def _arithmetic_premise(n: int, *, seed: int = 1, terms: int = 2, **_) -> PremiseProblems:
    """Two-digit sums of ``terms`` (2 or 3) numbers with a chain-of-thought instruction."""
    from attnrl.rewards.tasks import TASKS, make_examples, user_prompt

    if terms not in (2, 3):
        raise ValueError(f"terms={terms}: arithmetic problems add 2 or 3 numbers")
    if terms == 2:
        return make_examples("arithmetic", "test", n, seed=seed, suffix=COT_SUFFIX), TASKS["arithmetic"].is_correct, \
            "final"
    import random

    rng = random.Random(seed)  # a third term for each held-out two-term problem
    examples = []
    for ex in make_examples("arithmetic", "test", n, seed=seed, suffix=""):
        a, b = (int(x) for x in ex["prompt"][0]["content"].removeprefix("What is ").rstrip("?").split(" + "))
        c = rng.randint(10, 99)
        examples.append({"prompt": user_prompt(f"What is {a} + {b} + {c}? {COT_SUFFIX}"), "answer": str(a + b + c)})
    return examples, TASKS["arithmetic"].is_correct, "final"


def _countdown_premise(n: int, *, seed: int = 1, **_) -> PremiseProblems:
    """Two-number Countdown (numbers <= 50) with the chain-of-thought instruction."""
    from attnrl.rewards.tasks import TASKS, make_examples, user_prompt

    examples = make_examples("countdown", "test", n, seed=seed, sizes=(2,), max_number=50, max_target=200)
    for ex in examples:
        ex["prompt"] = user_prompt(ex["prompt"][0]["content"] + " " + COT_SUFFIX)
    return examples, TASKS["countdown"].is_correct, "final"


register_premise_task("arithmetic", _arithmetic_premise)
register_premise_task("countdown", _countdown_premise)


def premise_task(task: str, n: int, *, seed: int = 1, terms: int = 2, model_name: str | Path | None = None
                 ) -> PremiseProblems:
    """(examples, is_correct, answer-span name) for the premise test on ``n`` held-out problems of ``task`` (ours).

    ``arithmetic``: two-digit sums of ``terms`` (2 or 3) numbers with a chain-of-thought instruction;
    ``countdown``: two-number Countdown (numbers <= 50) with the same instruction; a task given its own problems
    by :func:`register_premise_task`: those (``model_name`` passed on); any other task registered in
    :data:`attnrl.rewards.TASKS`: its held-out split (``make_examples(task, "test", n, seed=seed)``), its checker and
    the ``final`` answer span (the last ``\\boxed{}`` or number).
    """
    from attnrl.rewards.tasks import TASKS, make_examples

    if task in PREMISE_TASKS:
        return PREMISE_TASKS[task](n, seed=seed, terms=terms, model_name=model_name)
    if task in TASKS:
        return make_examples(task, "test", n, seed=seed), TASKS[task].is_correct, "final"
    raise ValueError(f"task={task!r} is unknown; use one of {sorted(set(TASKS) | set(PREMISE_TASKS))}")


def run_causal_analysis(
    model, tokenizer, out_dir: str | Path, *, task: str = "arithmetic", problems: int = 48, name: str = "causal",
    config: CausalConfig | None = None, credit: CreditConfig | None = None, terms: int = 2,
    model_name: str | Path | None = None, answer_span: str | None = None, progress: bool = True,
    meta: dict | None = None,
) -> tuple[CausalResult, dict[str, Path]]:
    """The premise test on ``problems`` held-out problems of ``task`` (:func:`premise_task`; ``model_name``: the
    model's name or folder, passed to a task whose problems come with the model), written to ``out_dir`` as
    ``<name>.json/.md/.png`` (:func:`write_causal_report`). ``answer_span`` (a key of :data:`ANSWER_SPANS`)
    overrides the task's. Returns (result, paths)."""
    if problems < 1:
        raise ValueError(f"problems={problems} must be >= 1")
    if answer_span is not None and answer_span not in ANSWER_SPANS:
        raise ValueError(f"answer_span={answer_span!r}: use one of {sorted(ANSWER_SPANS)}")
    (config or CausalConfig()).validate()
    examples, verify, span = premise_task(task, problems, terms=terms, model_name=model_name)
    span = answer_span or span
    meta = {"task": task, "terms": terms, "answer_span": span, **(meta or {})}
    result = causal_premise(model, tokenizer, examples[:problems], verify, config, credit, span_fn=ANSWER_SPANS[span],
                            progress=progress, meta=meta)
    return result, write_causal_report(result, out_dir, name)


# ------------------------------------------------------------------------------------------------ summary


def summarize(records: Sequence[ProblemRecord], selectors: Sequence[str], measures: Sequence[str], *,
              n_boot: int = 10000, level: float = 0.95, seed: int = 0) -> dict:
    """Per measure and selector: mean over problems (CI), interventions, ratio and paired difference to random.

    A problem counts for a measure when every selector's value is defined on it (so the comparison is paired).
    """
    out: dict = {"num_problems": len(records), "num_skipped": sum(r.skipped is not None for r in records),
                 "sample_accuracy": float(np.mean([r.correct for r in records])) if records else float("nan"),
                 "mean_response_tokens": float(np.mean([r.num_tokens for r in records])) if records else float("nan"),
                 "level": level, "measure_help": {m: MEASURE_HELP.get(m, m) for m in measures}, "measures": {}}
    nan = float("nan")
    for m in measures:
        rows = []
        for r in records:
            vals = {s: r.selector_value(s, m) for s in selectors}
            if all(v is not None for v in vals.values()):
                rows.append((r, vals))
        per: dict = {}
        base = np.array([v["random"] for _, v in rows])
        for s in selectors:
            x = np.array([v[s] for _, v in rows])
            entry = {"problems": len(rows), "interventions": sum(len(r.selected[s]) for r, _ in rows)}
            rel = [p / (r.answer_tokens[0] if r.answer_tokens else r.num_tokens) for r, _ in rows for p in r.selected[s]]
            entry["mean_relative_position"] = float(np.mean(rel)) if rel else nan  # position / answer start
            if len(rows):
                entry["mean"], entry["lo"], entry["hi"] = bootstrap_ci(x, n_boot, level, seed)
                if s != "random":
                    diff = x - base
                    entry["ratio_to_random"] = list(bootstrap_ratio_ci(x, base, n_boot, level, seed))
                    entry["diff_to_random"] = list(paired_bootstrap_ci(x, base, n_boot, level, seed))
                    entry["sign_test_p"] = sign_test(diff)
                    entry["problems_above_random"] = int((diff > 0).sum())
                    entry["problems_below_random"] = int((diff < 0).sum())
                    entry["mdd"] = minimum_detectable_difference(diff) if len(rows) > 1 else nan
            else:
                entry.update(mean=nan, lo=nan, hi=nan)
            per[s] = entry
        if "flip" == m:
            for s in selectors:
                ivs = [r.interventions[p] for r, _ in rows for p in r.selected[s]]
                per[s]["broke"] = sum(bool(iv.correct_control and not iv.correct_replaced) for iv in ivs)
                per[s]["fixed"] = sum(bool(iv.correct_replaced and not iv.correct_control) for iv in ivs)
        out["measures"][m] = per
    return out


def format_table(summary: dict) -> str:
    """Markdown table: one row per (measure, selector)."""
    pct = int(round(100 * summary["level"]))
    lines = [f"problems: {summary['num_problems']} ({summary['num_skipped']} skipped), sampled accuracy "
             f"{summary['sample_accuracy']:.3f}, mean response {summary['mean_response_tokens']:.0f} tokens", "",
             f"| measure | selector | mean | {pct}% CI | ratio to random ({pct}% CI) | diff to random ({pct}% CI) "
             "| sign p (problems above/below random) | n problems | n interventions | mean position / answer start |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for m, per in summary["measures"].items():
        for s, e in per.items():
            ratio = diff = p = "—"
            if "ratio_to_random" in e:
                r, d = e["ratio_to_random"], e["diff_to_random"]
                ratio = f"{r[0]:.2f} [{r[1]:.2f}, {r[2]:.2f}]"
                diff = f"{d[0]:+.3f} [{d[1]:+.3f}, {d[2]:+.3f}]"
                p = f"{e['sign_test_p']:.3g} ({e.get('problems_above_random', '?')}/{e.get('problems_below_random', '?')})"
            lines.append(f"| {m} | {s} | {e['mean']:.3f} | [{e['lo']:.3f}, {e['hi']:.3f}] | {ratio} | {diff} | {p} "
                         f"| {e['problems']} | {e['interventions']} | {e.get('mean_relative_position', math.nan):.2f} |")
    return "\n".join(lines)


def plot_causal(summary: dict, path: str | Path, title: str = "causal premise test") -> None:
    """PNG: one panel per measure, bars = mean effect per selector with CI, dashed line = the random selector."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measures = list(summary["measures"])
    cols = min(3, len(measures))
    rows = math.ceil(len(measures) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.9 * rows), squeeze=False)
    for ax in axes.flat[len(measures):]:
        ax.axis("off")
    for ax, m in zip(axes.flat, measures):
        per = summary["measures"][m]
        names = list(per)
        means = np.array([per[s]["mean"] for s in names])
        err = np.array([[per[s]["mean"] - per[s]["lo"], per[s]["hi"] - per[s]["mean"]] for s in names]).T
        colours = ["#9e9e9e" if s == "random" else "#e76f51" for s in names]
        ax.bar(range(len(names)), means, yerr=err, capsize=4, color=colours)
        if "random" in per and not math.isnan(per["random"]["mean"]):
            ax.axhline(per["random"]["mean"], color="k", ls="--", lw=1, label="random")
            ax.legend(fontsize=8)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_title(f"{m}: {MEASURE_LABEL.get(m, m)}", fontsize=9)
        ax.set_ylabel(MEASURE_LABEL.get(m, m), fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{title} ({int(round(100 * summary['level']))}% bootstrap CI over problems)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_causal_report(result: CausalResult, out_dir: str | Path, name: str) -> dict[str, Path]:
    """Write ``<name>.json`` (everything), ``<name>.md`` (the table) and ``<name>.png`` (the plot) to ``out_dir``."""
    import json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{name}.json", "md": out / f"{name}.md", "png": out / f"{name}.png"}
    paths["json"].write_text(json.dumps(_finite(result.to_json()), indent=1, allow_nan=False))
    paths["md"].write_text(f"# Causal premise test: {name}\n\n{format_table(result.summary)}\n")
    plot_causal(result.summary, paths["png"], title=name)
    return paths


def load_causal_result(path: str | Path) -> CausalResult:
    """A :class:`CausalResult` back from its ``<name>.json`` (e.g. to summarise it again)."""
    import json

    d = json.loads(Path(path).read_text())
    records = []
    for r in d["records"]:
        ivs = {iv["position"]: Intervention(**iv) for iv in r.pop("interventions")}
        r["answer_tokens"] = tuple(r["answer_tokens"]) if r["answer_tokens"] is not None else None
        records.append(ProblemRecord(**r, interventions=ivs))
    return CausalResult(d["config"], d["credit"], records, d["summary"], d.get("seconds", 0.0), d.get("meta", {}))


def _finite(x):
    """NaN/inf -> None, recursively (strict JSON)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x
