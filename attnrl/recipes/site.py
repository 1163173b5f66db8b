"""SITE vs 0-shot vs N-shot in-context learning on three locally generated tasks (docs/methods.md §3).

    python examples/site_icl.py --config examples/configs/site_smollm2.yaml [--field value ...]
    attnrl train --recipe site examples/configs/site_smollm2.yaml [--field value ...]

For each task: split its (x, y) pairs into train / validation / held-out test; measure greedy exact-match accuracy
on the held-out test prompts 0-shot and with ``n_shots``-shot ICL (evaluate_before); build the task embedding from
``n_prompts`` few-shot prompts of ``n_shots`` train demonstrations (build_trainer); learn the soft head selection on
zero-shot train prompts (frozen model, Adam, keeping the best validated alphas) and save the artifact (train);
then measure 0-shot + SITE (finish). Writes a JSON file (settings, per-task accuracies, timings) and prints a table.

Tasks (generated here, no download): ``capitalise`` (a lowercase word from the tokenizer's vocabulary -> the word in
capitals), ``next_in_sequence`` (four terms of an arithmetic sequence -> the next), ``capital_city`` (a fixed
country -> capital mapping).
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from attnrl.models.default import DEFAULT_MODEL

from .runner import JobRunner

logger = logging.getLogger(__name__)

RECIPE = "site"

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
    tasks: list[str] = field(default_factory=lambda: list(TASKS), metadata={"help": f"Some of {list(TASKS)}."})
    n_prompts: int = field(default=50, metadata={"help": "M: few-shot prompts averaged into the task embedding."})
    n_shots: int = field(default=10, metadata={"help": "N: demonstrations per prompt (embedding and ICL baseline)."})
    steps: int = field(default=400, metadata={"help": "Adam steps of the head selection (batch 1)."})
    lr: float = field(default=0.2, metadata={"help": "Adam learning rate of the alpha logits."})
    val_every: int = field(default=50, metadata={"help": "Validate (and keep the best alphas) every this many steps."})
    val_size: int = field(default=100, metadata={"help": "Validation prompts (fewer if the task has fewer pairs)."})
    test_size: int = field(default=100, metadata={"help": "Held-out test prompts (fewer if the task is smaller)."})
    max_new_tokens: int = field(default=6, metadata={"help": "Greedy generation budget of the evaluation (tokens)."})
    eval_batch_size: int = field(default=16, metadata={"help": "Prompts per generation batch."})
    seed: int = field(default=0, metadata={"help": "Seed of the task generators, splits and demonstrations."})
    output_json: str = field(default="runs/site/results.json", metadata={"help": "Results file."})
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
    if len(words) < n:
        raise ValueError(f"task 'capitalise' needs {n} words, the tokenizer has {len(words)} single-token ones; "
                         "drop the task or lower val_size / test_size")
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


class SITERunner(JobRunner):
    """The SITE comparison's phases, each over every task (see the module docstring); ``args`` is unused."""

    name = RECIPE

    def setup(self) -> None:
        from attnrl.models import load_model_and_tokenizer

        job = self.job
        job.validate()
        self.model, self.tokenizer = load_model_and_tokenizer(job.model_name_or_path)
        self.model.eval()
        self.started = time.perf_counter()
        self.tasks: dict[str, dict] = {}
        for name in job.tasks:
            pairs = task_pairs(name, self.tokenizer, 3 * (job.val_size + job.test_size), job.seed)
            train, val, test = split(pairs, job.val_size, job.test_size)
            logger.info("%s: %d train / %d val / %d test pairs", name, len(train), len(val), len(test))
            self.tasks[name] = {"train": train, "val": val, "test": test, "seconds": 0.0}

    def _answers(self, prompts, site=None) -> list[str]:
        from attnrl.injection.icl import greedy_answers

        return greedy_answers(self.model, self.tokenizer, prompts, site=site, max_new_tokens=self.job.max_new_tokens,
                              batch_size=self.job.eval_batch_size)

    def evaluate_before(self) -> None:
        """0-shot and ``n_shots``-shot ICL greedy exact match on each task's held-out test prompts."""
        from attnrl.injection.icl import exact_match, few_shot_prompts

        job = self.job
        for task in self.tasks.values():
            start = time.perf_counter()
            targets = [y for _, y in task["test"]]
            task["zero"] = [prompt for prompt, _ in few_shot_prompts(self.tokenizer, [], task["test"], 0)]
            icl = [p for p, _ in few_shot_prompts(self.tokenizer, task["train"], task["test"], job.n_shots, job.seed + 1)]
            task["accuracy"] = {
                "zero_shot": exact_match(self._answers(task["zero"]), targets),
                f"icl_{job.n_shots}_shot": exact_match(self._answers(icl), targets),
            }
            task["seconds"] += time.perf_counter() - start

    def build_trainer(self) -> None:
        """Each task's embedding: mean head outputs at the last token of M few-shot prompts."""
        from attnrl.injection import task_embedding
        from attnrl.injection.icl import few_shot_prompts

        job = self.job
        for task in self.tasks.values():
            start = time.perf_counter()
            queries = random.Random(job.seed).choices(task["train"], k=job.n_prompts)
            few_shot = few_shot_prompts(self.tokenizer, task["train"], queries, job.n_shots, job.seed)
            task["embedding"] = task_embedding(self.model, self.tokenizer, [prompt for prompt, _ in few_shot])
            task["seconds_train"] = time.perf_counter() - start

    def train(self) -> None:
        """Each task's soft head selection on zero-shot (prompt, target) pairs, best validated alphas kept; the
        artifact saved to ``artifact_dir``/site_<task>.safetensors."""
        from attnrl.injection import make_artifact, train_head_selection
        from attnrl.injection.icl import few_shot_prompts

        job = self.job
        Path(job.artifact_dir).mkdir(parents=True, exist_ok=True)
        for name, task in self.tasks.items():
            start = time.perf_counter()
            train_0, val_0 = (few_shot_prompts(self.tokenizer, [], pairs, 0) for pairs in (task["train"], task["val"]))
            result = train_head_selection(self.model, self.tokenizer, task["embedding"], *zip(*train_0), *zip(*val_0),
                                          steps=job.steps, lr=job.lr, val_every=job.val_every, seed=job.seed)
            task["result"] = result
            task["site"] = make_artifact(task["embedding"], result, task=name, model=job.model_name_or_path,
                                         n_prompts=job.n_prompts, n_shots=job.n_shots, steps=job.steps, lr=job.lr)
            task["site"].save(Path(job.artifact_dir) / f"site_{name}.safetensors")
            task["seconds_train"] += time.perf_counter() - start
        self.train_seconds = sum(task["seconds_train"] for task in self.tasks.values())

    def finish(self, out_dir=None, extra=None) -> dict:
        """0-shot + SITE accuracy per task; writes ``output_json`` and prints the table; returns what it wrote."""
        from attnrl.injection.icl import exact_match

        rows = []
        for name, task in self.tasks.items():
            start = time.perf_counter()
            targets = [y for _, y in task["test"]]
            task["accuracy"]["site"] = exact_match(self._answers(task["zero"], site=task["site"]), targets)
            result, alphas = task["result"], task["site"].alphas
            rows.append({
                "task": name, "n_train": len(task["train"]), "n_val": len(task["val"]), "n_test": len(task["test"]),
                "accuracy": task["accuracy"], "best_step": result.best_step,
                "validation": [{"step": s, "first_token_accuracy": a, "loss": loss} for s, a, loss in result.history],
                "alpha_near_0_or_1": float(((alphas < 0.1) | (alphas > 0.9)).float().mean()),
                "seconds_train": task["seconds_train"],
                "seconds_total": task["seconds"] + task["seconds_train"] + time.perf_counter() - start,
            })
        results = {"settings": asdict(self.job), "results": rows, "seconds": time.perf_counter() - self.started,
                   **(extra or {})}
        path = Path(out_dir) / Path(self.job.output_json).name if out_dir else Path(self.job.output_json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2))
        print_table(rows, self.job.n_shots)
        return results


def print_table(rows: list[dict], n_shots: int) -> None:
    cols = ["zero_shot", f"icl_{n_shots}_shot", "site"]
    print(f"{'task':<18}" + "".join(f"{c:>12}" for c in cols) + f"{'n_test':>8}{'best_step':>10}")
    for r in rows:
        print(f"{r['task']:<18}" + "".join(f"{r['accuracy'][c]:>12.3f}" for c in cols)
              + f"{r['n_test']:>8}{r['best_step']:>10}")
    mean = {c: sum(r["accuracy"][c] for r in rows) / len(rows) for c in cols}
    print(f"{'mean':<18}" + "".join(f"{mean[c]:>12.3f}" for c in cols))


def make_parser(prog: str | None = None):
    """TrlParser over (SITEJobArguments,)."""
    from trl import TrlParser

    return TrlParser((SITEJobArguments,), prog=prog, description=__doc__.split("\n")[0])


def check(job: SITEJobArguments) -> None:
    """Every check of the job that needs no model (ValueError naming the field)."""
    job.validate()


def run(job: SITEJobArguments) -> dict:
    """The whole comparison in this process; returns (and writes to ``job.output_json``) the results."""
    return SITERunner(job, None).run()


def main(argv: Sequence[str] | None = None, *, prog: str | None = None, traceback: bool = False) -> int:
    """Command line of the recipe (the example script and ``attnrl train --recipe site``); returns the exit status."""
    import sys

    from .command import recipe_main

    return recipe_main(sys.modules[__name__], argv, prog=prog, traceback=traceback)
