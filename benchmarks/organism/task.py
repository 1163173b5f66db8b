r"""The organism's task: Countdown with 3-4 numbers, solved by a written search (docs/methods.md §1.4).

Problems come from ``reasoning_gym``'s Countdown generator (numbers, target, one reference expression); answers are
checked by an exact parser of our own (:func:`verify_trace`), whose verdicts agree with reasoning_gym's verifier
(``CountdownDataset.score_answer``, tested) without importing it at training time. The written solution is ours: a
depth-first search whose lines each try one path, e.g. for ``12 7 5 -> 95``::

    12*5=60 [7 60] 60+7=67 60-7=53 60*7=420 x
    12+7=19 [5 19] 19+5=24 19-5=14 19*5=95

A line applies operations to two numbers of the pool (``a op b=r``, larger operand first, the new pool after it
in brackets) until two numbers are left, then tries the final operations on that pair in the fixed order
``+ - * /`` and stops at the first that gives the target; a line whose pair cannot reach the target ends in ``x``
and the search backtracks (next line). Intermediate results are positive integers (``-`` only when ``a > b``,
``/`` only when exact, ``/1`` and results above ``max_intermediate`` never tried). The early choices of a line
decide whether it can succeed at all; with a length budget, so does the order of the lines.

The answer is the completion's **last line**: it must be a path of exact operations that uses every number once
and whose last operation gives the target (:func:`verify_trace`).

Splits (disjoint by construction): a problem's canonical key (sorted numbers and target) is hashed as in
:func:`attnrl.rewards.split_of`; buckets 0-9 are the held-out ``test`` split (the registry's own test split),
10-14 ``val`` (SFT stopping and pilots), 15-44 ``grpo`` (GRPO training) and 45-99 ``sft``.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from functools import lru_cache

from attnrl.rewards import TASKS, Task, completion_text, make_regex_format_reward
from attnrl.rewards.tasks import user_prompt

TASK_NAME = "organism_countdown"
SPLITS = ("test", "val", "grpo", "sft")
_BUCKETS = {"test": (0, 10), "val": (10, 15), "grpo": (15, 45), "sft": (45, 100)}
FINAL_OPS = ("+", "-", "*", "/")

_STEP = r"\d+[-+*/]\d+=\d+"
_POOL = r"\[\d+(?: \d+)*\]"
LINE_PATTERN = re.compile(rf"(?:{_STEP} {_POOL} )+(?:{_STEP} )*{_STEP}(?: x)?")
"""One search line: consuming steps each followed by the new pool, then attempts on the last pair (``x``: failed)."""
TRACE_PATTERN = rf"(?:{LINE_PATTERN.pattern}\n)*{LINE_PATTERN.pattern}"
_STEP_PARTS = re.compile(r"(\d+)([-+*/])(\d+)=(\d+)")


@dataclass(frozen=True)
class CountdownSpec:
    """The problem distribution and the reference search (defaults are this project's choices)."""

    min_numbers: int = field(default=3, metadata={"help": "Fewest numbers in a problem."})
    max_numbers: int = field(default=4, metadata={"help": "Most numbers in a problem."})
    min_value: int = field(default=1, metadata={"help": "Smallest number."})
    max_value: int = field(default=12, metadata={"help": "Largest number."})
    min_target: int = field(default=10, metadata={"help": "Smallest target."})
    max_target: int = field(default=99, metadata={"help": "Largest target."})
    max_intermediate: int = field(default=999, metadata={"help": "Intermediate results above this are not tried."})
    max_failures: int = field(default=2, metadata={"help": "Failed lines a reference trace may show before success."})
    trace_tries: int = field(default=8, metadata={"help": "Random search orders tried to meet max_failures."})

    def validate(self) -> None:
        if not 3 <= self.min_numbers <= self.max_numbers <= 5:
            raise ValueError(f"numbers per problem {self.min_numbers}..{self.max_numbers}: need 3 <= min <= max <= 5")
        if not 1 <= self.min_value <= self.max_value or not 1 <= self.min_target <= self.max_target:
            raise ValueError("need 1 <= min_value <= max_value and 1 <= min_target <= max_target")
        if self.max_failures < 0 or self.trace_tries < 1:
            raise ValueError(f"max_failures={self.max_failures} must be >= 0 and trace_tries={self.trace_tries} >= 1")


# ------------------------------------------------------------------------------------------------ splits and keys
def problem_key(numbers: list[int], target: int) -> str:
    """Canonical key: reordering the numbers does not make a new problem."""
    return f"{TASK_NAME}:{sorted(numbers)}->{target}"


def split_of_key(key: str) -> str:
    """One of :data:`SPLITS` by a stable hash of ``key`` (same bucket rule as :func:`attnrl.rewards.split_of`)."""
    bucket = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % 100
    return next(name for name, (lo, hi) in _BUCKETS.items() if lo <= bucket < hi)


# ------------------------------------------------------------------------------------------------ the search
def _pair_ops(a: int, b: int, cap: int | None) -> list[tuple[str, int, int, int]]:
    """Operations on a pair, larger operand first, in the order + - * /: (op, x, y, result)."""
    x, y = max(a, b), min(a, b)
    out = [("+", x, y, x + y)]
    if x > y:
        out.append(("-", x, y, x - y))
    out.append(("*", x, y, x * y))
    if y > 1 and x % y == 0:
        out.append(("/", x, y, x // y))
    return [o for o in out if cap is None or o[3] <= cap]


def consuming_moves(pool: list[int], cap: int) -> list[tuple[str, int, list[int]]]:
    """Distinct steps on a pool of >= 3 numbers: (step text, result, new pool = the others in order + the result)."""
    moves, seen = [], set()
    for i in range(len(pool)):
        for j in range(i + 1, len(pool)):
            rest = [v for k, v in enumerate(pool) if k not in (i, j)]
            for op, x, y, r in _pair_ops(pool[i], pool[j], cap):
                step = f"{x}{op}{y}={r}"
                if step not in seen:  # equal numbers in the pool give the same step once
                    seen.add(step)
                    moves.append((step, r, [*rest, r]))
    return moves


def final_attempts(pair: list[int], target: int) -> tuple[list[str], bool]:
    """The attempts written on the last pair (up to and including the first hit) and whether one hit."""
    written = []
    for op, x, y, r in _pair_ops(pair[0], pair[1], None):
        written.append(f"{x}{op}{y}={r}")
        if r == target:
            return written, True
    return written, False


def solvable(pool: list[int], target: int, cap: int) -> bool:
    """Whether the search can reach ``target`` from ``pool`` at all."""
    if len(pool) == 2:
        return final_attempts(pool, target)[1]
    return any(solvable(new, target, cap) for _, _, new in consuming_moves(pool, cap))


def search_lines(numbers: list[int], target: int, rng: random.Random, cap: int) -> Iterator[tuple[str, bool]]:
    """Lines of a depth-first search with a random move order at every level: (line, success), in order."""

    def dfs(pool: list[int], prefix: list[str]) -> Iterator[tuple[str, bool]]:
        if len(pool) == 2:
            attempts, hit = final_attempts(pool, target)
            yield " ".join(prefix + attempts) + ("" if hit else " x"), hit
            return
        moves = consuming_moves(pool, cap)
        rng.shuffle(moves)
        for step, _, new in moves:
            yield from dfs(new, [*prefix, step, "[" + " ".join(map(str, new)) + "]"])

    yield from dfs(list(numbers), [])


def write_trace(numbers: list[int], target: int, rng: random.Random, spec: CountdownSpec) -> str | None:
    """A reference solution: the search up to its first success, with at most ``spec.max_failures`` failed lines.

    Tries up to ``spec.trace_tries`` random orders; None when none succeeds soon enough (or the problem has no
    solution under the search's rules).
    """
    for _ in range(spec.trace_tries):
        lines = []
        for line, hit in search_lines(numbers, target, rng, spec.max_intermediate):
            lines.append(line)
            if hit:
                return "\n".join(lines)
            if len(lines) > spec.max_failures:
                break
    return None


# ------------------------------------------------------------------------------------------------ verification
def parse_answer(line: str, numbers: list[int]) -> tuple[str, int] | None:
    """(expression, value) of a final line whose steps are exact and use every number once; None otherwise.

    Steps consume two pool numbers while more than two remain; from then on every step is an attempt on the last
    pair and only the line's last one counts. Nothing is ever ``eval``-ed.
    """
    line = line.strip()
    if not LINE_PATTERN.fullmatch(line) or line.endswith(" x"):
        return None
    pool: list[tuple[int, str]] = [(n, str(n)) for n in numbers]
    steps = _STEP_PARTS.findall(line)
    for k, (a, op, b, r) in enumerate(steps):
        a, b, r = int(a), int(b), int(r)
        if len(pool) == 2 and k != len(steps) - 1:
            continue  # an earlier attempt on the last pair
        ia = next((i for i, (v, _) in enumerate(pool) if v == a), None)
        ib = next((i for i, (v, _) in enumerate(pool) if v == b and i != ia), None)
        if ia is None or ib is None or not _exact(a, op, b, r):
            return None
        expr = f"({pool[ia][1]} {op} {pool[ib][1]})"
        pool = [p for i, p in enumerate(pool) if i not in (ia, ib)] + [(r, expr)]
    if len(pool) != 1:
        return None
    value, expr = pool[0]
    return expr[1:-1] if expr.startswith("(") else expr, value


def _exact(a: int, op: str, b: int, r: int) -> bool:
    if op == "+":
        return a + b == r
    if op == "-":
        return a - b == r and r > 0
    if op == "*":
        return a * b == r
    return b != 0 and a % b == 0 and a // b == r


@lru_cache(maxsize=1)
def _reasoning_gym():
    from reasoning_gym.games.countdown import CountdownConfig, CountdownDataset

    return CountdownConfig, CountdownDataset


def reasoning_gym_score(expression: str, numbers: list[int], target: int) -> float:
    """reasoning_gym's Countdown verifier on an expression (1.0: correct; it gives 0.01/0.05 otherwise)."""
    _, dataset_cls = _reasoning_gym()
    return dataset_cls.score_answer(None, expression, {"metadata": {"numbers": list(numbers), "target": target}})


def verify_trace(completion, numbers: list[int], target: int) -> bool:
    """Whether a completion (text or messages) solves the problem: its last line parses (:func:`parse_answer`:
    exact integer steps that use every number once) to the target.

    No reasoning_gym call at training time (its package imports dependencies that have no wheels for every
    Python, which would keep the sweep off a GPU machine): its verifier is the cross-check instead — it agrees on
    every parsed line of the tests and on all 856 parsed lines of 2,000 sampled organism answers (docs/results.md).
    """
    lines = [line for line in completion_text(completion).splitlines() if line.strip()]
    parsed = parse_answer(lines[-1], numbers) if lines else None
    return parsed is not None and parsed[1] == target


def countdown_trace_reward(prompts, completions, numbers, target, **kwargs) -> list[float]:
    """TRL reward: 1.0 per completion that :func:`verify_trace` accepts, else 0.0."""
    return [float(verify_trace(c, n, t)) for c, n, t in zip(completions, numbers, target, strict=True)]


def is_correct(completion, example: dict) -> bool:
    """The evaluation checker ``(completion, example) -> bool`` of the task registry."""
    return verify_trace(completion, example["numbers"], example["target"])


trace_format_reward = make_regex_format_reward(TRACE_PATTERN)
"""1.0 when the whole completion is well-formed search lines (right or wrong), else 0.0."""


# ------------------------------------------------------------------------------------------------ problems
def prompt_text(numbers: list[int], target: int) -> str:
    return f"{' '.join(map(str, numbers))} -> {target}"


def make_row(numbers: list[int], target: int, split: str, reference: str = "") -> dict:
    """One dataset row: conversational ``prompt`` plus the gold columns the reward reads."""
    return {"prompt": user_prompt(prompt_text(numbers, target)), "numbers": list(numbers), "target": int(target),
            "split": split, "reference": reference}


def _rg_problems(spec: CountdownSpec, seed: int, start: int, stop: int) -> list[tuple[list[int], int, str]]:
    config_cls, dataset_cls = _reasoning_gym()
    config = config_cls(min_numbers=spec.min_numbers, max_numbers=spec.max_numbers, min_value=spec.min_value,
                        max_value=spec.max_value, min_target=spec.min_target, max_target=spec.max_target,
                        seed=seed, size=stop)
    dataset = dataset_cls(config)
    out = []
    for idx in range(start, stop):
        item = dataset[idx]
        out.append((item["metadata"]["numbers"], item["metadata"]["target"], item["answer"]))
    return out


def _rg_chunk(args):
    return _rg_problems(*args)


def generate_problems(spec: CountdownSpec, sizes: dict[str, int], seed: int = 0, workers: int = 1,
                      chunk: int = 2000) -> dict[str, list[dict]]:
    """``sizes[split]`` distinct solvable problems per split, deterministic in ``seed`` (whatever ``workers``).

    reasoning_gym items ``seed + idx`` are drawn in order of ``idx`` and each goes to its hash split until that
    split is full; problems the search cannot solve (reasoning_gym allows negative intermediates) are skipped.
    """
    spec.validate()
    bad = set(sizes) - set(SPLITS)
    if bad:
        raise ValueError(f"unknown splits {sorted(bad)}; use {SPLITS}")
    out: dict[str, list[dict]] = {s: [] for s in sizes}
    seen: set[str] = set()
    start = 0
    pool = None
    if workers > 1:
        import multiprocessing

        pool = multiprocessing.get_context("spawn").Pool(workers)
    try:
        while any(len(out[s]) < n for s, n in sizes.items()):
            if start > 200 * (sum(sizes.values()) + 100):
                raise ValueError(f"could not fill the splits {sizes} from {start} problems; widen the CountdownSpec")
            jobs = [(spec, seed, start + k * chunk, start + (k + 1) * chunk) for k in range(max(1, workers))]
            batches = pool.map(_rg_chunk, jobs) if pool else [_rg_chunk(j) for j in jobs]
            start += chunk * max(1, workers)
            for numbers, target, reference in (p for batch in batches for p in batch):
                key = problem_key(numbers, target)
                split = split_of_key(key)
                if key in seen or split not in out or len(out[split]) >= sizes[split]:
                    continue
                seen.add(key)
                if solvable(numbers, target, spec.max_intermediate):
                    out[split].append(make_row(numbers, target, split, reference))
    finally:
        if pool is not None:
            pool.close()
    return out


def sft_examples(rows: list[dict], spec: CountdownSpec, seed: int, traces_per_problem: int = 1) -> list[dict]:
    """Prompt-completion rows for SFT: ``traces_per_problem`` reference traces (random search orders) per problem.

    Problems without a short enough trace (see :func:`write_trace`) are left out.
    """
    rng = random.Random(seed)
    out = []
    for row in rows:
        for _ in range(traces_per_problem):
            trace = write_trace(row["numbers"], row["target"], rng, spec)
            if trace is not None:
                out.append({**row, "completion": [{"role": "assistant", "content": trace}]})
    return out


def spec_dict(spec: CountdownSpec) -> dict:
    return asdict(spec)


def _sample(rng: random.Random, **options) -> tuple[str, dict]:
    """Registry sampler: one problem drawn with reasoning_gym's generator from ``rng``."""
    spec = CountdownSpec(**options)
    _, dataset_cls = _reasoning_gym()
    while True:
        seed = rng.randrange(2**31)
        (numbers, target, reference), = _rg_problems(spec, seed, 0, 1)
        if solvable(numbers, target, spec.max_intermediate):
            key = problem_key(numbers, target)
            return key, make_row(numbers, target, "", reference)


def register() -> Task:
    """Add the task to :data:`attnrl.rewards.TASKS` (idempotent), so the recipe's evaluator and rewards find it."""
    task = Task(TASK_NAME, _sample, (countdown_trace_reward, trace_format_reward), is_correct)
    TASKS.setdefault(TASK_NAME, task)
    return TASKS[TASK_NAME]


register()
