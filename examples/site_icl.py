"""SITE vs 0-shot vs N-shot in-context learning on three locally generated tasks (docs/methods.md §3).

    python examples/site_icl.py --config examples/configs/site_smollm2.yaml [--any_field value]

For each task: split its (x, y) pairs into train / validation / held-out test; build the task embedding from
``n_prompts`` few-shot prompts of ``n_shots`` train demonstrations; learn the soft head selection on zero-shot train
prompts (frozen model, Adam, keeping the best validated alphas); save the artifact; then measure greedy exact-match
accuracy on the held-out test prompts three ways: 0-shot, ``n_shots``-shot ICL, and 0-shot + SITE. Writes a JSON
file (settings, per-task accuracies, timings) and prints a table.

Tasks (generated here, no download): ``capitalise`` (a lowercase word from the tokenizer's vocabulary -> the word in
capitals), ``next_in_sequence`` (four terms of an arithmetic sequence -> the next), ``capital_city`` (a fixed
country -> capital mapping).
"""

import json
import logging
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from trl import TrlParser

from attnrl.injection import make_artifact, task_embedding, train_head_selection
from attnrl.injection.icl import exact_match, few_shot_prompts, greedy_answers
from attnrl.models import DEFAULT_MODEL, load_model_and_tokenizer
from attnrl.recipes.config import parse_config

logger = logging.getLogger("site_icl")

CAPITALS = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Portugal", "Lisbon"),
    ("Japan", "Tokyo"), ("China", "Beijing"), ("Russia", "Moscow"), ("Egypt", "Cairo"), ("Greece", "Athens"),
    ("Austria", "Vienna"), ("Poland", "Warsaw"), ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Finland", "Helsinki"),
    ("Denmark", "Copenhagen"), ("Ireland", "Dublin"), ("Belgium", "Brussels"), ("Netherlands", "Amsterdam"),
    ("Hungary", "Budapest"), ("Czechia", "Prague"), ("Romania", "Bucharest"), ("Bulgaria", "Sofia"),
    ("Serbia", "Belgrade"), ("Croatia", "Zagreb"), ("Ukraine", "Kyiv"), ("Turkey", "Ankara"), ("Iran", "Tehran"),
    ("Iraq", "Baghdad"), ("Syria", "Damascus"), ("Lebanon", "Beirut"), ("Jordan", "Amman"), ("Israel", "Jerusalem"),
    ("India", "Delhi"), ("Pakistan", "Islamabad"), ("Nepal", "Kathmandu"), ("Thailand", "Bangkok"),
    ("Vietnam", "Hanoi"), ("Indonesia", "Jakarta"), ("Philippines", "Manila"), ("Malaysia", "Kuala Lumpur"),
    ("Korea", "Seoul"), ("Mongolia", "Ulaanbaatar"), ("Kenya", "Nairobi"), ("Ethiopia", "Addis Ababa"),
    ("Nigeria", "Abuja"), ("Ghana", "Accra"), ("Morocco", "Rabat"), ("Algeria", "Algiers"), ("Tunisia", "Tunis"),
    ("Canada", "Ottawa"), ("Mexico", "Mexico City"), ("Cuba", "Havana"), ("Peru", "Lima"), ("Chile", "Santiago"),
    ("Argentina", "Buenos Aires"), ("Colombia", "Bogota"), ("Venezuela", "Caracas"), ("Brazil", "Brasilia"),
    ("Australia", "Canberra"), ("Iceland", "Reykjavik"), ("Switzerland", "Bern"), ("Scotland", "Edinburgh"),
    ("Wales", "Cardiff"), ("Estonia", "Tallinn"), ("Latvia", "Riga"), ("Lithuania", "Vilnius"), ("Cyprus", "Nicosia"),
]


TASKS = ("capitalise", "next_in_sequence", "capital_city")


@dataclass
class SITEJobArguments:
    """The comparison's settings; defaults follow docs/methods.md §3 (M = 50 prompts of N = 10 shots, 400 steps)."""

    model_name_or_path: str = field(default=DEFAULT_MODEL, metadata={"help": "Embedded default, a path or a Hub id."})
    tasks: list[str] = field(default_factory=lambda: ["capitalise", "next_in_sequence", "capital_city"])
    n_prompts: int = field(default=50, metadata={"help": "M: few-shot prompts averaged into the task embedding."})
    n_shots: int = field(default=10, metadata={"help": "N: demonstrations per prompt (embedding and ICL baseline)."})
    steps: int = field(default=400, metadata={"help": "Adam steps of the head selection (batch 1)."})
    lr: float = field(default=0.2, metadata={"help": "Adam learning rate of the alpha logits."})
    val_every: int = field(default=50, metadata={"help": "Validate (and keep the best alphas) every this many steps."})
    val_size: int = field(default=100, metadata={"help": "Validation prompts (fewer if the task has fewer pairs)."})
    test_size: int = field(default=100, metadata={"help": "Held-out test prompts (fewer if the task is smaller)."})
    max_new_tokens: int = field(default=6, metadata={"help": "Greedy generation budget of the evaluation."})
    eval_batch_size: int = field(default=16, metadata={"help": "Prompts per generation batch."})
    seed: int = field(default=0, metadata={"help": "Seed of the task generators, splits and demonstrations."})
    output_json: str = field(default="benchmarks/results/site_smollm2.json", metadata={"help": "Results file."})
    artifact_dir: str = field(default="runs/site", metadata={"help": "Where the SITE artifacts are saved."})

    def validate(self) -> None:
        """Raise ValueError naming the bad field (before the model is loaded)."""
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown or not self.tasks:
            raise ValueError(f"tasks={self.tasks}: use some of {list(TASKS)}")
        for name in ("n_prompts", "steps", "val_every", "val_size", "test_size", "max_new_tokens", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.n_shots < 0 or self.lr <= 0:
            raise ValueError(f"n_shots={self.n_shots} must be >= 0 and lr={self.lr} > 0")


def vocabulary_words(tokenizer, n: int, seed: int) -> list[str]:
    """``n`` lowercase alphabetic words of 4-8 letters that the tokenizer has as single space-prefixed tokens."""
    words = sorted({t[1:] for t in tokenizer.get_vocab() if t.startswith("Ġ") and t[1:].isalpha()
                    and t[1:].islower() and 4 <= len(t) - 1 <= 8})
    return random.Random(seed).sample(words, n)


def task_pairs(name: str, tokenizer, n: int, seed: int) -> list[tuple[str, str]]:
    """Up to ``n`` distinct (x, y) pairs of task ``name``, shuffled."""
    rng = random.Random(f"{name}-{seed}")
    if name == "capitalise":
        return [(w, w.upper()) for w in vocabulary_words(tokenizer, n, seed)]
    if name == "next_in_sequence":
        seqs = [(a, d) for a in range(1, 61) for d in range(2, 13)]
        return [(", ".join(str(a + i * d) for i in range(4)), str(a + 4 * d)) for a, d in rng.sample(seqs, n)]
    if name == "capital_city":
        return rng.sample(CAPITALS, min(n, len(CAPITALS)))
    raise ValueError(f"unknown task {name!r}; use one of {list(TASKS)}")


def split(pairs, val_size: int, test_size: int):
    """(train, val, test): test and val get up to their sizes, leaving at least half of the pairs for training."""
    n_eval = min(val_size + test_size, len(pairs) // 2)
    n_val = min(val_size, n_eval // 2)
    return pairs[n_eval:], pairs[:n_val], pairs[n_val:n_eval]


def run_task(name: str, job: SITEJobArguments, model, tokenizer) -> dict:
    start = time.perf_counter()
    pairs = task_pairs(name, tokenizer, 3 * (job.val_size + job.test_size), job.seed)
    train, val, test = split(pairs, job.val_size, job.test_size)
    logger.info("%s: %d train / %d val / %d test pairs", name, len(train), len(val), len(test))

    # 1. task embedding: mean head outputs at the last token of M few-shot prompts
    queries = random.Random(job.seed).choices(train, k=job.n_prompts)
    few_shot = few_shot_prompts(tokenizer, train, queries, job.n_shots, job.seed)
    embedding = task_embedding(model, tokenizer, [prompt for prompt, _ in few_shot])

    # 2. soft head selection on zero-shot (prompt, target) pairs, best validated alphas kept
    train_0, val_0, test_0 = (few_shot_prompts(tokenizer, [], pairs, 0) for pairs in (train, val, test))
    result = train_head_selection(model, tokenizer, embedding, *zip(*train_0), *zip(*val_0), steps=job.steps,
                                  lr=job.lr, val_every=job.val_every, seed=job.seed)
    site = make_artifact(embedding, result, task=name, model=job.model_name_or_path, n_prompts=job.n_prompts,
                         n_shots=job.n_shots, steps=job.steps, lr=job.lr)
    Path(job.artifact_dir).mkdir(parents=True, exist_ok=True)
    site.save(Path(job.artifact_dir) / f"site_{name}.safetensors")
    train_seconds = time.perf_counter() - start

    # 3. held-out greedy exact match: 0-shot, N-shot ICL, 0-shot + SITE
    targets = [y for _, y in test]
    kw = dict(max_new_tokens=job.max_new_tokens, batch_size=job.eval_batch_size)
    icl = [prompt for prompt, _ in few_shot_prompts(tokenizer, train, test, job.n_shots, job.seed + 1)]
    zero = [prompt for prompt, _ in test_0]
    accuracy = {
        "zero_shot": exact_match(greedy_answers(model, tokenizer, zero, **kw), targets),
        f"icl_{job.n_shots}_shot": exact_match(greedy_answers(model, tokenizer, icl, **kw), targets),
        "site": exact_match(greedy_answers(model, tokenizer, zero, site=site, **kw), targets),
    }
    alphas = site.alphas
    return {
        "task": name, "n_train": len(train), "n_val": len(val), "n_test": len(test), "accuracy": accuracy,
        "best_step": result.best_step, "validation": [{"step": s, "first_token_accuracy": a, "loss": loss}
                                                      for s, a, loss in result.history],
        "alpha_near_0_or_1": float(((alphas < 0.1) | (alphas > 0.9)).float().mean()),
        "seconds_train": train_seconds, "seconds_total": time.perf_counter() - start,
    }


def print_table(rows: list[dict], n_shots: int) -> None:
    cols = ["zero_shot", f"icl_{n_shots}_shot", "site"]
    print(f"{'task':<18}" + "".join(f"{c:>12}" for c in cols) + f"{'n_test':>8}{'best_step':>10}")
    for r in rows:
        print(f"{r['task']:<18}" + "".join(f"{r['accuracy'][c]:>12.3f}" for c in cols)
              + f"{r['n_test']:>8}{r['best_step']:>10}")
    mean = {c: sum(r["accuracy"][c] for r in rows) / len(rows) for c in cols}
    print(f"{'mean':<18}" + "".join(f"{mean[c]:>12.3f}" for c in cols))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    (job,) = parse_config(TrlParser((SITEJobArguments,)))
    job.validate()
    model, tokenizer = load_model_and_tokenizer(job.model_name_or_path)
    model.eval()
    started = time.perf_counter()
    rows = [run_task(name, job, model, tokenizer) for name in job.tasks]
    Path(job.output_json).parent.mkdir(parents=True, exist_ok=True)
    Path(job.output_json).write_text(json.dumps(
        {"settings": asdict(job), "results": rows, "seconds": time.perf_counter() - started}, indent=2))
    print_table(rows, job.n_shots)
