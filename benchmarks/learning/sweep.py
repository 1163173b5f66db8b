"""Learning benchmark: the same GRPO budget for every credit strategy, several seeds, two tasks.

    python benchmarks/learning/sweep.py                      # the full sweep (resumes where it stopped)
    python benchmarks/learning/sweep.py --jobs 2 --threads 1 # two cells at a time, one thread each
    python benchmarks/learning/sweep.py --summarize-only     # table + plots from the cells already done

A *cell* is one (task, strategy, seed): SmolLM2-135M-Instruct + LoRA trained with AttnGRPOTrainer for
``--steps`` steps, held-out greedy accuracy measured every ``--eval-every`` steps on the same held-out problems.
Each cell runs in its own process and writes ``<out>/cells/<task>__<strategy>__s<seed>.json`` when it finishes
(atomically), so an interrupted sweep resumes with the cells that are missing; a cell cut off half-way is run again
from its start. Step 0 (the base model, greedy, hence the same for every strategy and seed) is measured once per
task into ``<out>/base__<task>.json``. At the end :mod:`summarize` writes ``summary.json``, ``summary.md`` and the
plots next to them.

Budget (``SweepBudget``): chosen so 6 strategies x 3 seeds x 2 tasks fit about two hours of a 2-core CPU. It is a
much smaller budget than the main job's and the papers' (see README, "Learning benchmark").
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE.parent / "results" / "learning"
STRATEGIES = ("uniform", "random", "entropy", "local_chunk", "global_anchor", "coupled")
# Variants: a strategy run with other credit settings, named here. The window W=10 and FAI horizon [s+10, s+100]
# of docs/methods.md §1.2 were chosen for chains of thought hundreds of tokens long; with 16-24 token completions
# most tokens have no query in that horizon, so 'coupled_short' scales both down (a default of ours, not the
# paper's).
VARIANTS: dict[str, tuple[str, dict]] = {
    "coupled_short": ("coupled", {"credit_window": 4, "credit_fai_lo": 2, "credit_fai_hi": None}),
}

# Per-task settings (defaults of this benchmark, not the papers'). Countdown is the two-number variant (numbers
# <= 50, target <= 200): the base model solves about a fifth of those greedily, while on three-number Countdown it
# solved 0 of 100 (no reward signal for GRPO at this budget).
TASK_SETTINGS: dict[str, dict] = {
    "arithmetic": {"options": {}, "max_completion_length": 16, "eval_max_new_tokens": 16},
    "countdown": {
        "options": {"sizes": [2], "max_number": 50, "max_target": 200},
        "max_completion_length": 24,
        "eval_max_new_tokens": 24,
    },
}


@dataclass(frozen=True)
class SweepBudget:
    """What every cell gets: same model, data, optimiser and number of rollouts; only strategy and seed vary."""

    model: str = field(default="smollm2-135m-instruct", metadata={"help": "Model name or local path."})
    steps: int = field(default=12, metadata={"help": "GRPO steps per cell."})
    eval_every: int = field(default=6, metadata={"help": "Held-out evaluation every this many steps."})
    eval_size: int = field(default=200, metadata={"help": "Held-out problems (the same for every cell)."})
    train_size: int = field(default=2000, metadata={"help": "Distinct training problems."})
    prompts_per_step: int = field(default=2, metadata={"help": "Prompts per step (x num_generations rollouts)."})
    num_generations: int = field(default=8, metadata={"help": "GRPO group size."})
    learning_rate: float = field(default=2e-4, metadata={"help": "LoRA learning rate (constant)."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    temperature: float = field(default=0.8, metadata={"help": "Rollout sampling temperature."})


def cell_name(task: str, strategy: str, seed: int) -> str:
    return f"{task}__{strategy}__s{seed}"


def write_json_atomic(path: Path, payload: dict) -> None:
    """Write ``payload`` to ``path`` through a temporary file, so a reader never sees half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------ one cell
def task_data(task: str, budget: SweepBudget):
    """(train, held-out) datasets; the held-out split is disjoint from training by construction."""
    from attnrl.rewards import make_dataset

    options = TASK_SETTINGS[task]["options"]
    train = make_dataset(task, "train", budget.train_size, seed=0, **options)
    held_out = make_dataset(task, "test", budget.eval_size, seed=1, **options)
    return train, held_out


def job_arguments(task: str, budget: SweepBudget):
    """The main job's arguments for this cell (LoRA adapter and held-out evaluation as in ``attnrl.recipes.grpo``;
    the base model is measured once per task, not in each cell)."""
    from attnrl.recipes.grpo import GRPOJobArguments

    return GRPOJobArguments(model_name_or_path=budget.model, task=task, train_size=budget.train_size,
                            eval_size=budget.eval_size, lora_r=budget.lora_r, lora_alpha=2 * budget.lora_r,
                            eval_max_new_tokens=TASK_SETTINGS[task]["eval_max_new_tokens"], skip_eval_before=True)


def cell_config(task: str, strategy: str, seed: int, budget: SweepBudget, out: Path):
    """The AttnGRPOConfig of one cell: the budget's settings, the strategy's credit settings, the seed."""
    from attnrl.trainers.grpo import AttnGRPOConfig

    base_strategy, credit_overrides = VARIANTS.get(strategy, (strategy, {}))
    return AttnGRPOConfig(
        output_dir=str(out / "runs" / cell_name(task, strategy, seed)), max_steps=budget.steps,
        learning_rate=budget.learning_rate, lr_scheduler_type="constant",
        per_device_train_batch_size=budget.prompts_per_step * budget.num_generations,
        num_generations=budget.num_generations, max_completion_length=TASK_SETTINGS[task]["max_completion_length"],
        temperature=budget.temperature, beta=0.0, logging_steps=1, save_strategy="no", report_to="none",
        use_cpu=True, bf16=False, seed=seed, data_seed=seed, disable_tqdm=True,
        credit_strategy=base_strategy, credit_seed=seed, **credit_overrides,
    )


def cell_runner(task: str, strategy: str, seed: int, budget: SweepBudget, out: Path):
    """The recipe's GRPO runner for one cell: the budget's datasets; held-out accuracy every ``eval_every`` steps
    (a callback); ``finish`` writes the cell's results file instead of an adapter and a report."""
    from transformers import TrainerCallback

    from attnrl.recipes.grpo import GRPORunner

    name = cell_name(task, strategy, seed)

    class HeldOutAccuracy(TrainerCallback):
        """Greedy held-out accuracy every ``eval_every`` steps and at the last step (into ``runner.curve``)."""

        def on_step_end(self, args, state, control, model=None, **kwargs):
            step = state.global_step
            if step % budget.eval_every == 0 or step == state.max_steps:
                t0 = time.time()
                runner.curve.append({"step": step, "accuracy": runner.evaluate(model, f"held-out {task}").accuracy,
                                     "seconds": round(time.time() - t0, 1)})
                print(f"[{name}] step {step}: held-out {100 * runner.curve[-1]['accuracy']:.1f}%", flush=True)

    class CellRunner(GRPORunner):
        def datasets(self):
            return task_data(task, budget)

        def finish(self, out_dir=None, extra=None) -> dict:
            base_strategy, credit_overrides = VARIANTS.get(strategy, (strategy, {}))
            wall = self.train_seconds
            eval_seconds = sum(point["seconds"] for point in self.curve)
            result = {
                "task": task, "strategy": strategy, "seed": seed, "budget": asdict(budget),
                "credit_strategy": base_strategy, "credit_overrides": credit_overrides,
                "task_settings": TASK_SETTINGS[task], "accuracy_curve": self.curve,
                "final_accuracy": self.curve[-1]["accuracy"], "wall_seconds": round(wall, 1),
                "train_seconds": round(wall - eval_seconds, 1),
                "seconds_per_step": round((wall - eval_seconds) / budget.steps, 2),
                "log_history": [e for e in self.trainer.state.log_history if "loss" in e or "reward" in e],
            }
            write_json_atomic(out / "cells" / f"{name}.json", result)
            return result

    runner = CellRunner(job_arguments(task, budget), cell_config(task, strategy, seed, budget, out),
                        callbacks=[HeldOutAccuracy()])
    runner.curve = []
    return runner


def run_base(task: str, budget: SweepBudget, out: Path) -> None:
    """Greedy held-out accuracy of the base model (step 0 of every cell of ``task``): the runner's set-up and
    base-model evaluation."""
    from dataclasses import replace

    runner = cell_runner(task, "uniform", 0, budget, out)
    runner.job = replace(runner.job, skip_eval_before=False)
    runner.setup()
    t0 = time.time()
    accuracy = runner.evaluate_before()
    write_json_atomic(out / f"base__{task}.json", {"task": task, "accuracy": accuracy,
                                                   "seconds": round(time.time() - t0, 1), "budget": asdict(budget)})


def run_cell(task: str, strategy: str, seed: int, budget: SweepBudget, out: Path) -> dict:
    """Train one cell (the recipe's runner phases) and write its results file; returns the results."""
    return cell_runner(task, strategy, seed, budget, out).run()


# ------------------------------------------------------------------------------------------------ the sweep
def pending_cells(tasks, strategies, seeds, out: Path) -> list[tuple[str, str, int]]:
    """Cells without a finished results file, in sweep order (seed-major, so partial sweeps stay balanced)."""
    return [
        (task, strategy, seed)
        for seed in seeds for task in tasks for strategy in strategies
        if not (out / "cells" / f"{cell_name(task, strategy, seed)}.json").exists()
    ]


def budget_args(budget: SweepBudget) -> list[str]:
    return [arg for key, value in asdict(budget).items() for arg in (f"--{key.replace('_', '-')}", str(value))]


def run_in_subprocess(what: list[str], budget, out: Path, threads: int, log_name: str,
                      script: Path | None = None) -> int:
    """Run ``script`` (default: this one) with ``what`` (``--cell ...`` / ``--base ...``) in a fresh process; log to
    ``out/logs``. Another script must take the same arguments (``--cell``, ``--base``, the budget's, ``--out``)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    log = out / "logs" / f"{log_name}.log"
    with log.open("w") as handle:
        cmd = [sys.executable, str(script or Path(__file__).resolve()), *what, *budget_args(budget), "--out", str(out)]
        return subprocess.run(cmd, env=env, stdout=handle, stderr=subprocess.STDOUT).returncode


def sweep(tasks, strategies, seeds, budget, out: Path, jobs: int, threads: int, script: Path | None = None) -> int:
    """Run every missing cell (``jobs`` at a time) with ``script`` (see run_in_subprocess); returns the number of
    cells that failed."""
    from tqdm.auto import tqdm

    for sub in ("cells", "logs", "runs"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    check_budget_matches(out, budget)
    for task in tasks:
        if not (out / f"base__{task}.json").exists():
            print(f"base model on {task} ...", flush=True)
            if run_in_subprocess(["--base", task], budget, out, threads * jobs, f"base__{task}", script) != 0:
                raise SystemExit(f"the base-model evaluation of {task} failed; see {out / 'logs'}")
    todo = pending_cells(tasks, strategies, seeds, out)
    total = len(tasks) * len(strategies) * len(seeds)
    print(f"{total - len(todo)}/{total} cells already done; running {len(todo)} ({jobs} at a time)", flush=True)
    failures = 0
    with tqdm(total=len(todo), desc="learning sweep", unit="cell") as bar, ThreadPoolExecutor(jobs) as pool:
        def one(cell):
            name = cell_name(*cell)
            rc = run_in_subprocess(["--cell", cell[0], cell[1], str(cell[2])], budget, out, threads, name, script)
            bar.update(1)
            bar.set_postfix_str(f"last: {name} {'ok' if rc == 0 else f'FAILED rc={rc}'}")
            return rc

        failures = sum(rc != 0 for rc in pool.map(one, todo))
    if failures:
        print(f"{failures} cells failed; their logs are in {out / 'logs'}; run the same command again to retry them")
    return failures


def check_budget_matches(out: Path, budget: SweepBudget) -> None:
    """Refuse to mix budgets in one results folder (resuming with other settings would mix incomparable cells)."""
    marker = out / "budget.json"
    if marker.exists():
        # a setting added since the folder was started counts as its default there
        saved = {**asdict(type(budget)()), **json.loads(marker.read_text())}
        if saved != asdict(budget):
            changed = {k: (saved.get(k), v) for k, v in asdict(budget).items() if saved.get(k) != v}
            raise SystemExit(f"{out} holds cells of another budget (changed: {changed}); pass another --out or "
                             "the same settings")
    else:
        write_json_atomic(marker, asdict(budget))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=list(TASK_SETTINGS), choices=list(TASK_SETTINGS))
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=[*STRATEGIES, *VARIANTS],
                        help=f"strategies, or variants of them: {VARIANTS}")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=1, help="cells run at the same time")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per cell")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--summarize-only", action="store_true", help="only rebuild the table and plots")
    parser.add_argument("--cell", nargs=3, metavar=("TASK", "STRATEGY", "SEED"), help=argparse.SUPPRESS)
    parser.add_argument("--base", metavar="TASK", help=argparse.SUPPRESS)
    for key, spec in SweepBudget.__dataclass_fields__.items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=type(spec.default), default=spec.default,
                            help=spec.metadata["help"])
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    budget = SweepBudget(**{key: getattr(args, key) for key in SweepBudget.__dataclass_fields__})
    if args.base:
        run_base(args.base, budget, args.out)
        return 0
    if args.cell:
        task, strategy, seed = args.cell
        run_cell(task, strategy, int(seed), budget, args.out)
        return 0
    failures = 0 if args.summarize_only else sweep(args.tasks, args.strategies, args.seeds, budget, args.out,
                                                   args.jobs, args.threads)
    sys.path.insert(0, str(HERE))
    from summarize import summarize

    summarize(args.out, args.tasks, args.strategies)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
