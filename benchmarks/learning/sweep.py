"""Learning benchmark: the same GRPO budget for every credit strategy, several seeds, two tasks.

    python -m benchmarks.learning.sweep                      # the full sweep (resumes where it stopped)
    python -m benchmarks.learning.sweep --jobs 2 --threads 1 # two cells at a time, one thread each
    python -m benchmarks.learning.sweep --summarize-only     # table + plots from the cells already done

Run from the repository root.

A *cell* is one (task, strategy, seed): SmolLM2-135M-Instruct + LoRA trained with AttnGRPOTrainer for
``--steps`` steps (the GRPO recipe's runner), held-out greedy accuracy measured every ``--eval-every`` steps on the
same held-out problems. Cells, resume, atomic cell files and the base model's step 0 are
:mod:`benchmarks.harness`'s; at the end :mod:`benchmarks.learning.summarize` writes ``summary.json``,
``summary.md`` and the plots next to them.

Budget (``SweepBudget``): chosen so 6 strategies x 3 seeds x 2 tasks fit about two hours of a 2-core CPU. It is a
much smaller budget than the main job's and the papers' (see README, "Learning benchmark").
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchmarks.harness import Study, SweepCell, cell_name
from benchmarks.harness import main as harness_main

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
    """The recipe's GRPO runner for one cell (:class:`benchmarks.harness.SweepCell`): the budget's datasets;
    held-out accuracy every ``eval_every`` steps; ``finish`` writes the cell's results file instead of an adapter and
    a report."""
    from attnrl.recipes.grpo import GRPORunner

    class CellRunner(SweepCell, GRPORunner):
        def datasets(self):
            return task_data(task, budget)

        def score(self, model) -> dict:
            return {"accuracy": self.evaluate(model, f"held-out {task}").accuracy}

        def describe(self, point: dict) -> str:
            return f"held-out {100 * point['accuracy']:.1f}%"

        def cell_result(self) -> dict:
            base_strategy, credit_overrides = VARIANTS.get(strategy, (strategy, {}))
            return {
                "task": task, "strategy": strategy, "seed": seed, "budget": asdict(budget),
                "credit_strategy": base_strategy, "credit_overrides": credit_overrides,
                "task_settings": TASK_SETTINGS[task], "accuracy_curve": self.curve,
                "final_accuracy": self.curve[-1]["accuracy"], **self.timing(),
                "log_history": [e for e in self.trainer.state.log_history if "loss" in e or "reward" in e],
            }

    return CellRunner((task, strategy, seed), budget, Path(out), job_arguments(task, budget),
                      cell_config(task, strategy, seed, budget, out))


def summarize(out: Path, tasks, strategies) -> None:
    from .summarize import summarize

    summarize(out, tasks, strategies)


STUDY = Study(
    module="benchmarks.learning.sweep", description=__doc__.splitlines()[0], budget_cls=SweepBudget,
    tasks=tuple(TASK_SETTINGS), default_tasks=tuple(TASK_SETTINGS), strategies=(*STRATEGIES, *VARIANTS),
    default_strategies=STRATEGIES, default_seeds=(0, 1, 2), cell_runner=cell_runner, summarize=summarize,
    default_out=DEFAULT_OUT, default_jobs=1, default_threads=2, strategies_help=f"strategies, or variants of them: {VARIANTS}",
)


def run_base(task: str, budget: SweepBudget, out: Path) -> dict:
    """Greedy held-out accuracy of the base model (step 0 of every cell of ``task``)."""
    return cell_runner(task, STRATEGIES[0], 0, budget, out).run_base()


def run_cell(task: str, strategy: str, seed: int, budget: SweepBudget, out: Path) -> dict:
    """Train one cell (the recipe's runner phases) and write its results file; returns the results."""
    return cell_runner(task, strategy, seed, budget, out).run()


def parse_args(argv=None):
    from benchmarks.harness import parse_args

    return parse_args(STUDY, argv)


def main(argv=None) -> int:
    return harness_main(STUDY, argv)


if __name__ == "__main__":
    sys.exit(main())
