"""Powered credit sweep on the organism: the same GRPO budget for every strategy, many paired seeds.

    python -m benchmarks.organism.sweep                       # every cell, 2 at a time (resumes where it stopped)
    python -m benchmarks.organism.sweep --jobs 2 --threads 1  # the CPU setting: two cells at once, one thread each
    python -m benchmarks.organism.sweep --summarize-only      # tables from the cells already done

Run from the repository root.

A *cell* is one (strategy, seed): the organism checkpoint (benchmarks/organism/checkpoint, see build.py) fully
fine-tuned by AttnGRPOTrainer for ``--steps`` steps; greedy accuracy on the first ``--eval-size`` problems of the
checkpoint's ``--eval-split`` (``test``: the held-out set, disjoint from SFT and GRPO problems; ``val`` for pilots)
every ``--eval-every`` steps. Cells run in their own processes (:mod:`benchmarks.harness`, the harness the learning
sweep uses too) through the GRPO recipe's runner phases, and write ``<out>/cells/organism__<strategy>__s<seed>.json``
atomically when they finish, so the sweep resumes with the missing cells; the order is seed-major (every strategy of
seed 0, then seed 1, ...) so that a partial sweep stays paired.
A seed fixes the prompt order, the sampling seed and the ``random`` strategy's scores; the initial weights are the
checkpoint's for every cell. Step 0 (the checkpoint, greedy) is measured once into ``<out>/base__organism.json``.

On one GPU machine the whole sweep is one command, many cells at once on the same device (each cell is a few
million parameters, so dozens fit; the machine's CPU cores, which drive generation, are the limit)::

    python -m benchmarks.organism.sweep --device cuda --jobs 16 --threads 1 --out benchmarks/results/organism_gpu

(``--device`` is part of the budget, so CPU and GPU cells never mix in one results folder.)
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from attnrl.trainers.grpo import UNSHAPED_ADVANTAGES, AttnGRPOTrainer
from benchmarks.harness import Study, SweepCell, cell_name
from benchmarks.harness import main as harness_main

from .oracle import DOSES, oracle_gamma, oracle_mask

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DEFAULT_OUT = HERE.parent / "results" / "organism"
TASK = "organism"
# Credit settings scaled to the organism's answers (see PREREGISTRATION.md for how they were chosen).
SCALED = {"credit_window": 5, "credit_fai_lo": 5, "credit_fai_hi": 46}
# name -> (credit_strategy, credit_* overrides, other GRPOConfig overrides)
VARIANTS: dict[str, tuple[str, dict, dict]] = {
    "uniform": ("uniform", {}, {}),
    "entropy": ("entropy", {}, {}),
    "trl_top_entropy": ("uniform", {}, {"top_entropy_quantile": 0.2}),  # TRL's own high-entropy token mask
    "global_anchor": ("global_anchor", {}, {}),
    "global_anchor_scaled": ("global_anchor", SCALED, {}),
    "coupled": ("coupled", {}, {}),
    "coupled_scaled": ("coupled", SCALED, {}),
    "random": ("random", {}, {}),
    "local_chunk": ("local_chunk", {}, {}),
    "local_chunk_scaled": ("local_chunk", SCALED, {}),
    # the positive control (amendment 3): gamma from oracle.py in place of the uniform strategy's, per dose
    "oracle": ("uniform", {}, {}),
    "oracle_strong": ("uniform", {}, {}),
}
CORE = ("uniform", "entropy", "trl_top_entropy", "global_anchor", "global_anchor_scaled", "coupled", "coupled_scaled")
EXTRA = ("random", "local_chunk", "local_chunk_scaled")
CONTROL = ("oracle", "oracle_strong", "random")  # amendment 3: the positive control and the random arm


@dataclass(frozen=True)
class OrganismBudget:
    """What every cell gets: same checkpoint, prompts, optimiser and rollouts; only strategy and seed vary."""

    checkpoint: str = field(default="benchmarks/organism/checkpoint", metadata={
        "help": "Organism checkpoint folder; a relative one is taken from the repository root (so a results folder "
                "resumes from any clone)."})
    steps: int = field(default=100, metadata={"help": "GRPO steps per cell."})
    eval_every: int = field(default=25, metadata={"help": "Evaluation every this many steps (and at the end)."})
    eval_split: str = field(default="test", metadata={"help": "'test' (held-out) or 'val' (pilots)."})
    eval_size: int = field(default=500, metadata={"help": "Evaluated problems (the same for every cell)."})
    train_size: int = field(default=4000, metadata={"help": "GRPO training problems (the checkpoint's 'grpo')."})
    prompts_per_step: int = field(default=16, metadata={"help": "Prompts per step (x num_generations rollouts)."})
    num_generations: int = field(default=8, metadata={"help": "GRPO group size."})
    learning_rate: float = field(default=1e-4, metadata={"help": "Full fine-tuning learning rate (constant)."})
    temperature: float = field(default=1.0, metadata={"help": "Rollout sampling temperature."})
    max_completion_length: int = field(default=160, metadata={"help": "Rollout and evaluation budget (tokens)."})
    loss_type: str = field(default="dapo", metadata={"help": "TRL loss_type ('dapo': token-level normalisation, "
                                                     "'grpo': per-sequence means, 'dr_grpo', ...)."})
    mask_truncated: int = field(default=0, metadata={"help": "1: leave truncated rollouts out of the loss "
                                                     "(TRL's mask_truncated_completions); 0: keep them."})
    eval_batch_size: int = field(default=100, metadata={"help": "Prompts per evaluation batch."})
    eval_samples: int = field(default=0, metadata={
        "help": "Also sample this many completions per evaluated problem at the rollout temperature and report their "
                "mean success (sampled pass@1, the quantity GRPO optimises); 0: greedy accuracy only."})
    device: str = field(default="cpu", metadata={"help": "'cpu' or 'cuda'."})

    def checkpoint_path(self) -> Path:
        """The checkpoint folder (a relative ``checkpoint`` is taken from the repository root)."""
        path = Path(self.checkpoint)
        return path if path.is_absolute() else REPO / path

    def validate(self) -> None:
        if self.eval_split not in ("test", "val"):
            raise SystemExit(f"--eval-split {self.eval_split!r}: use 'test' (the sweep) or 'val' (pilots)")
        if self.mask_truncated not in (0, 1):
            raise SystemExit(f"--mask-truncated {self.mask_truncated}: use 0 or 1")
        if self.device not in ("cpu", "cuda"):
            raise SystemExit(f"--device {self.device!r}: use 'cpu' or 'cuda'")
        if self.eval_samples < 0:
            raise SystemExit(f"--eval-samples {self.eval_samples}: use 0 (greedy only) or a number of samples")
        if min(self.steps, self.eval_every, self.eval_size, self.train_size, self.prompts_per_step) < 1 or \
                self.num_generations < 2:
            raise SystemExit("steps, eval-every, eval-size, train-size, prompts-per-step must be >= 1 and "
                             "num-generations >= 2")


def job_arguments(budget: OrganismBudget):
    """The recipe's job arguments for a cell: full fine-tuning (lora_r=0), the organism's evaluation settings (the
    checkpoint's step 0 is measured once, not in each cell)."""
    from attnrl.recipes.grpo import GRPOJobArguments

    from .task import TASK_NAME

    return GRPOJobArguments(model_name_or_path=str(budget.checkpoint_path()), task=TASK_NAME, train_size=budget.train_size,
                            eval_size=budget.eval_size, lora_r=0, eval_max_new_tokens=budget.max_completion_length,
                            eval_batch_size=budget.eval_batch_size, skip_eval_before=True)


EVAL_SAMPLING_SEED = 1234  # the same sampling seed at every evaluation of every cell (a paired evaluation)


def evaluator(budget: OrganismBudget, tokenizer, problems=None):
    """``evaluate(model) -> {"accuracy": greedy, "sampled_accuracy": ...}`` in [0, 1] on the evaluation problems.

    ``accuracy``: greedy (the recipe's evaluator). ``sampled_accuracy`` (only when ``budget.eval_samples`` > 0): the
    mean success of ``eval_samples`` completions per problem sampled at the rollout temperature (sampled pass@1),
    drawn under a fixed seed inside ``torch.random.fork_rng`` so that evaluating never moves the training RNG.
    ``problems``: the evaluation problems (default: loaded from the checkpoint).
    """
    import torch
    from attnrl.rewards import TASKS

    from attnrl.evaluation import evaluate_pass_at_k
    from attnrl.recipes.grpo import held_out_evaluator

    job = job_arguments(budget)
    if problems is None:
        problems = eval_problems(budget)
    greedy = held_out_evaluator(job, tokenizer, problems)

    def evaluate(model) -> dict:
        scores = {"accuracy": greedy(model, f"{budget.eval_split} accuracy").accuracy}
        if budget.eval_samples:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(EVAL_SAMPLING_SEED)
                sampled = evaluate_pass_at_k(
                    model, tokenizer, problems, TASKS[job.task].is_correct, ks=[1], samples=budget.eval_samples,
                    temperature=budget.temperature, max_new_tokens=budget.max_completion_length,
                    batch_size=budget.eval_batch_size * budget.eval_samples, desc=f"{budget.eval_split} sampled")
            scores["sampled_accuracy"] = sampled.pass_at_k[1]
        return scores

    return evaluate


def eval_problems(budget: OrganismBudget):
    from . import load_problems

    return load_problems(budget.eval_split, budget.checkpoint_path(), n=budget.eval_size)


def load(budget: OrganismBudget):
    from . import load_organism

    model, tokenizer = load_organism(budget.checkpoint_path())
    return model.to(budget.device), tokenizer


# ------------------------------------------------------------------------------------------------ one cell
CHAR_CLASSES = {"digit": "0123456789", "operator": "+-*/", "equals": "=", "pool": "[] ", "newline": "\n", "fail": "x"}


def credit_positions(gamma, completion_ids, completion_mask, tokenizer) -> dict:
    """Where the amplified tokens (gamma > 1) of one batch sit: relative-position deciles, first line, char class.

    gamma, completion_ids, completion_mask: (B, Tc). Returns counts (summed over steps later) and per-row means.
    """
    import torch

    mask = completion_mask.bool()
    amp = (gamma > 1.0) & mask
    lengths = mask.sum(1, keepdim=True).clamp(min=1)
    pos = torch.arange(mask.shape[1], device=mask.device)[None].expand_as(mask)
    rel = pos.float() / lengths.float()  # in [0, 1)
    deciles = torch.clamp((rel * 10).long(), max=9)
    newline = tokenizer.convert_tokens_to_ids("\n")
    line = torch.cumsum((completion_ids == newline).long(), 1) - (completion_ids == newline).long()  # line index
    out = {
        "tokens": int(mask.sum()), "amplified": int(amp.sum()),
        "amplified_by_decile": [int((amp & (deciles == d)).sum()) for d in range(10)],
        "tokens_by_decile": [int((mask & (deciles == d)).sum()) for d in range(10)],
        "amplified_first_line": int((amp & (line == 0)).sum()), "tokens_first_line": int((mask & (line == 0)).sum()),
    }
    for name, chars in CHAR_CLASSES.items():
        ids = torch.tensor(tokenizer.convert_tokens_to_ids(list(chars)), device=completion_ids.device)
        is_class = torch.isin(completion_ids, ids) & mask
        out[f"amplified_{name}"] = int((amp & is_class).sum())
        out[f"tokens_{name}"] = int(is_class.sum())
    return out


def summarize_positions(records: list[dict]) -> dict:
    """Sum the per-step counts; amplification rates per decile, on the first line and per character class."""
    if not records:
        return {}
    total = {k: (sum(r[k] for r in records) if not isinstance(records[0][k], list)
                 else [sum(r[k][i] for r in records) for i in range(len(records[0][k]))]) for k in records[0]}

    def rate(a, n):
        return round(a / n, 4) if n else None

    summary = {"amplified_frac": rate(total["amplified"], total["tokens"]),
               "rate_by_decile": [rate(a, n) for a, n in zip(total["amplified_by_decile"], total["tokens_by_decile"])],
               "rate_first_line": rate(total["amplified_first_line"], total["tokens_first_line"]),
               "share_first_line": rate(total["amplified_first_line"], total["amplified"])}
    for name in CHAR_CLASSES:
        summary[f"rate_{name}"] = rate(total[f"amplified_{name}"], total[f"tokens_{name}"])
    return {"counts": total, **summary}


def apply_oracle(batch, problems, tokenizer, gamma_amp: float, checks: dict, metrics: dict):
    """The oracle's gamma (B, Tc) for a scored batch (its unshaped group advantages), with its credit metrics.

    ``checks`` counts rows, amplified rows and how many positive-advantage rows the verifier accepts (all of them,
    when the batch's rows and ``problems`` are aligned: the cell records it as a check of the wiring).
    """
    from .task import verify_trace

    advantages = batch.get(UNSHAPED_ADVANTAGES, batch["advantages"])
    if advantages.dim() != 1:
        raise RuntimeError("the oracle needs the group advantages (B,) of the batch")
    mask = oracle_mask(batch["completion_ids"], batch["completion_mask"], advantages, problems, tokenizer)
    response = batch["completion_mask"].bool()
    for i in torch_nonzero(advantages > 0):
        ids = batch["completion_ids"][i][response[i]].tolist()
        checks["positive_rows"] += 1
        checks["positive_rows_verified"] += int(verify_trace(tokenizer.decode(ids, skip_special_tokens=True),
                                                             *problems[i]))
    checks["rows"] += len(problems)
    checks["rows_amplified"] += int(mask.any(1).sum())
    gamma = oracle_gamma(mask, gamma_amp)
    n = response.sum().clamp(min=1)
    metrics["credit/amplified_frac"] = (mask.sum() / n).item()
    metrics["credit/gamma_mean"] = ((gamma * response).sum() / n).item()
    return gamma


def torch_nonzero(flags) -> list[int]:
    return [int(i) for i in flags.nonzero().flatten()]


LOG_KEYS = ("reward", "reward_std", "loss", "entropy", "completions/mean_length", "completions/min_length",
            "completions/max_length", "completions/clipped_ratio", "completions/mean_terminated_length",
            "frac_reward_zero_std", "credit/amplified_frac", "credit/gamma_mean", "credit/dominated_anchor_frac",
            "credit/seconds", "credit/waad_mean", "credit/fai_mean", "credit/local_head_distance",
            "credit/global_head_distance", "step_time")


def cell_config(task: str, strategy: str, seed: int, budget: OrganismBudget, out: Path):
    """The AttnGRPOConfig of one cell: the budget's settings, the variant's credit and TRL settings, the seed."""
    from attnrl.trainers.grpo import AttnGRPOConfig

    credit_strategy, credit_overrides, trl_overrides = VARIANTS[strategy]
    return AttnGRPOConfig(
        output_dir=str(out / "runs" / cell_name(task, strategy, seed)), max_steps=budget.steps,
        learning_rate=budget.learning_rate, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        per_device_train_batch_size=budget.prompts_per_step * budget.num_generations,
        num_generations=budget.num_generations, max_completion_length=budget.max_completion_length,
        temperature=budget.temperature, top_p=1.0, beta=0.0, mask_truncated_completions=bool(budget.mask_truncated),
        loss_type=budget.loss_type, logging_steps=1, save_strategy="no", report_to="none",
        use_cpu=budget.device == "cpu", bf16=False, seed=seed, data_seed=seed, disable_tqdm=True,
        credit_strategy=credit_strategy, credit_seed=seed, **credit_overrides, **trl_overrides,
    )


class OrganismTrainer(AttnGRPOTrainer):
    """Keeps where each batch's amplified tokens sit; in the oracle arms, gamma comes from oracle.py.

    ``cell`` (set by the cell's runner before training): the runner holding ``tokenizer``, ``oracle_dose`` (None
    outside the oracle arms), ``oracle_checks`` and ``positions``.
    """

    cell = None

    def _generate_and_score_completions(self, inputs):
        self._problems = [(row["numbers"], row["target"]) for row in inputs]  # the batch's rows, in order
        return super()._generate_and_score_completions(inputs)

    def _apply_credit(self, batch, result, mode, seconds=None):
        cell = self.cell
        if cell.oracle_dose is not None and mode == "train":
            result.gamma = apply_oracle(batch, self._problems, cell.tokenizer, cell.oracle_dose, cell.oracle_checks,
                                        result.metrics)
        super()._apply_credit(batch, result, mode, seconds)
        if mode == "train":
            cell.positions.append(credit_positions(result.gamma, batch["completion_ids"], batch["completion_mask"],
                                                   cell.tokenizer))


CONFIG_FIELDS = ("credit_strategy", "credit_window", "credit_fai_lo", "credit_fai_hi", "credit_top_q",
                 "credit_gamma_amp", "credit_layers", "credit_num_layers", "credit_head_fraction",
                 "top_entropy_quantile", "learning_rate", "temperature", "beta", "mask_truncated_completions",
                 "loss_type", "scale_rewards", "num_generations", "max_completion_length", "seed")


def cell_runner(task: str, strategy: str, seed: int, budget: OrganismBudget, out: Path):
    """The GRPO recipe's runner for one cell (:class:`benchmarks.harness.SweepCell`): the checkpoint on
    ``budget.device``, its saved ``grpo`` problems, :func:`evaluator` every ``eval_every`` steps, full fine-tuning
    with :class:`OrganismTrainer`; ``finish`` writes the cell's results file."""
    from attnrl.recipes.grpo import GRPORunner

    if strategy not in VARIANTS:
        raise SystemExit(f"unknown strategy {strategy!r}; choose one of {list(VARIANTS)}")
    credit_strategy, credit_overrides, trl_overrides = VARIANTS[strategy]
    out = Path(out)

    class CellRunner(SweepCell, GRPORunner):
        trainer_cls = OrganismTrainer
        oracle_dose = DOSES.get(strategy)

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.oracle_checks = {"positive_rows": 0, "positive_rows_verified": 0, "rows_amplified": 0, "rows": 0}
            self.positions: list[dict] = []

        def load_model(self):
            return load(budget)

        def datasets(self):
            from . import load_problems

            return load_problems("grpo", budget.checkpoint_path(), n=budget.train_size), eval_problems(budget)

        def evaluator(self):
            return evaluator(budget, self.tokenizer, self.eval_set)

        def build_trainer(self) -> None:
            super().build_trainer()
            self.trainer.cell = self

        def score(self, model) -> dict:
            return self.evaluate(model)

        def describe(self, point: dict) -> str:
            sampled = f", sampled {100 * point['sampled_accuracy']:.1f}%" if "sampled_accuracy" in point else ""
            return f"{budget.eval_split} greedy {100 * point['accuracy']:.1f}%{sampled}"

        def cell_result(self) -> dict:
            import torch

            curve, args = self.curve, self.args
            history = [{k: e[k] for k in ("step", *LOG_KEYS) if k in e} for e in self.trainer.state.log_history
                       if "reward" in e]
            return {
                "task": task, "strategy": strategy, "seed": seed, "budget": asdict(budget),
                "credit_strategy": credit_strategy, "credit_overrides": credit_overrides,
                "trl_overrides": trl_overrides, "config": {k: getattr(args, k) for k in CONFIG_FIELDS},
                "accuracy_curve": curve, "final_accuracy": curve[-1]["accuracy"],
                "auc": area_under_curve(curve, base(out)),
                **({"final_sampled_accuracy": curve[-1]["sampled_accuracy"],
                    "sampled_auc": area_under_curve(curve, base(out, "sampled_accuracy"), "sampled_accuracy")}
                   if budget.eval_samples else {}),
                "train_reward_curve": [e.get("reward") for e in history],
                "completion_length_curve": [e.get("completions/mean_length") for e in history],
                "credit_positions": summarize_positions(self.positions),
                **({"oracle_gamma_amp": self.oracle_dose, "oracle_checks": self.oracle_checks}
                   if self.oracle_dose is not None else {}),
                **self.timing(), "threads": torch.get_num_threads(), "log_history": history,
            }

    return CellRunner((task, strategy, seed), budget, out, job_arguments(budget),
                      cell_config(task, strategy, seed, budget, out))


def run_base(task: str, budget: OrganismBudget, out: Path) -> dict:
    """The checkpoint's scores (step 0 of every cell), written to ``<out>/base__<task>.json``."""
    return cell_runner(task, CORE[0], 0, budget, out).run_base()


def run_cell(task: str, strategy: str, seed: int, budget: OrganismBudget, out: Path) -> dict:
    """Train one cell (the recipe's runner phases) and write its results file; returns the results."""
    return cell_runner(task, strategy, seed, budget, out).run()


def base(out: Path, key: str = "accuracy") -> float | None:
    """The checkpoint's score ``key`` (step 0), when measured."""
    path = out / f"base__{TASK}.json"
    return json.loads(path.read_text()).get(key) if path.exists() else None


def area_under_curve(curve: list[dict], base_accuracy: float | None, key: str = "accuracy") -> float | None:
    """Mean of ``key`` over steps (trapezoid rule from step 0 = ``base_accuracy``, when known, to the last point)."""
    from attnrl.analysis.stats import area_under_curve as area

    points = ([(0, base_accuracy)] if base_accuracy is not None else []) + [(p["step"], p[key]) for p in curve]
    if not points:
        return None
    return area([s for s, _ in points], [a for _, a in points])


# ------------------------------------------------------------------------------------------------ the sweep
def check_checkpoint(budget: OrganismBudget) -> None:
    """A clear error before any process starts when the checkpoint was never built."""
    from . import checkpoint_dir

    checkpoint_dir(budget.checkpoint_path())


def summarize(out: Path, tasks=None, strategies=None) -> None:
    from .summarize import summarize

    summarize(out)


STUDY = Study(
    module="benchmarks.organism.sweep", description=__doc__.splitlines()[0], budget_cls=OrganismBudget,
    tasks=(TASK,), default_tasks=(TASK,), strategies=tuple(VARIANTS), default_strategies=CORE,
    default_seeds=tuple(range(12)), cell_runner=cell_runner, summarize=summarize, default_out=DEFAULT_OUT,
    default_jobs=2, default_threads=1, before_sweep=check_checkpoint,
    strategies_help=f"cells per seed; {list(EXTRA)} where the budget allows; {list(CONTROL)}: the positive control "
                    "and random arm of amendment 3",
)


def parse_args(argv=None):
    from benchmarks.harness import parse_args

    return parse_args(STUDY, argv)


def main(argv=None) -> int:
    return harness_main(STUDY, argv)


if __name__ == "__main__":
    sys.exit(main())
