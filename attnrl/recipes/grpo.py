"""The main job: GRPO with attention-aware credit + LoRA on a locally generated task, evaluated before and after.

Steps (each visible in :func:`run_grpo_job`): load the model, build train / held-out splits, measure greedy
held-out accuracy, train AttnGRPOTrainer with a LoRA adapter, measure again, save the adapter (peft format) and
a run report (table, reward curve, one response drawn with its preplan/anchor tokens).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from peft import LoraConfig

from attnrl.attention.capture import num_layers
from attnrl.credit.config import CreditConfig, credit_config_from
from attnrl.evaluation import EvalResult, evaluate_accuracy
from attnrl.models import DEFAULT_MODEL, load_model_and_tokenizer
from attnrl.report import analyze_response, plot_reward_curve, plot_rhythm, rhythm_html
from attnrl.rewards import TASKS, make_dataset
from attnrl.trainers.grpo import AttnGRPOConfig, AttnGRPOTrainer

logger = logging.getLogger(__name__)


@dataclass
class GRPOJobArguments:
    """What to train on and how to evaluate; the trainer's own settings live in AttnGRPOConfig."""

    model_name_or_path: str = field(
        default=DEFAULT_MODEL, metadata={"help": f"'{DEFAULT_MODEL}' (embedded default), a local path or a Hub id."}
    )
    task: str = field(default="arithmetic", metadata={"help": f"Task to train on: one of {sorted(TASKS)}."})
    train_size: int = field(default=2000, metadata={"help": "Number of distinct training problems."})
    eval_size: int = field(default=200, metadata={"help": "Number of held-out problems (greedy accuracy)."})
    task_seed: int = field(default=0, metadata={"help": "Seed of the task generator."})
    reward_names: list[str] = field(
        default_factory=lambda: ["correct"],
        metadata={"help": "Rewards to use: 'correct' (the task's exact/math-verify reward) and/or 'format'."},
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank (0: train the full model)."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_target_modules: str = field(default="all-linear", metadata={"help": "peft target_modules."})
    eval_max_new_tokens: int = field(default=24, metadata={"help": "Generation budget of the evaluation."})
    eval_batch_size: int = field(default=50, metadata={"help": "Prompts per evaluation batch."})
    skip_eval_before: bool = field(default=False, metadata={"help": "Skip the base-model evaluation."})

    def validate(self) -> None:
        """Raise ValueError naming the bad field (no model needed)."""
        if self.task not in TASKS:
            raise ValueError(f"task={self.task!r} is unknown; choose one of {sorted(TASKS)}")
        bad = [r for r in self.reward_names if r not in ("correct", "format")]
        if bad or not self.reward_names:
            raise ValueError(f"reward_names={self.reward_names}: use 'correct' and/or 'format'")
        for name in ("train_size", "eval_size", "eval_batch_size", "eval_max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.lora_r < 0:
            raise ValueError(f"lora_r={self.lora_r} must be >= 0 (0 trains the full model)")


def task_rewards(task: str, names: list[str]) -> list:
    """The task's TRL reward functions selected by name ('correct' is first in the registry, 'format' second)."""
    correct, fmt = TASKS[task].reward_funcs
    return [{"correct": correct, "format": fmt}[n] for n in names]


def lora_config(job: GRPOJobArguments) -> LoraConfig | None:
    """The job's LoRA adapter config (None: train the full model)."""
    if job.lora_r <= 0:
        return None
    return LoraConfig(r=job.lora_r, lora_alpha=job.lora_alpha, target_modules=job.lora_target_modules,
                      task_type="CAUSAL_LM")


def job_datasets(job: GRPOJobArguments):
    """(train, held-out) datasets of the job's task; the held-out split is disjoint from training by construction."""
    train_set = make_dataset(job.task, "train", job.train_size, seed=job.task_seed)
    eval_set = make_dataset(job.task, "test", job.eval_size, seed=job.task_seed + 1)
    return train_set, eval_set


def held_out_evaluator(job: GRPOJobArguments, tokenizer, eval_set) -> Callable[[object, str], EvalResult]:
    """``evaluate(model, desc) -> EvalResult``: greedy accuracy on the held-out set with the task's checker."""

    def evaluate(model, desc: str) -> EvalResult:
        return evaluate_accuracy(model, tokenizer, eval_set, TASKS[job.task].is_correct,
                                 max_new_tokens=job.eval_max_new_tokens, batch_size=job.eval_batch_size, desc=desc)

    return evaluate


def job_results(job, args, trainer, before: float | None, after: EvalResult, seconds: float, steps: int) -> dict:
    """The results dictionary written to report/results.json (and returned by the job)."""
    return {
        "model": job.model_name_or_path,
        "task": job.task,
        "credit_strategy": args.credit_strategy,
        "eval_size": after.total,
        "accuracy_before": before,
        "accuracy_after": after.accuracy,
        "train_steps": trainer.state.global_step,
        "train_seconds": round(seconds, 1),
        "seconds_per_step": round(seconds / max(1, steps), 2),
        "adapter_dir": str(Path(args.output_dir) / "adapter"),
        "job": asdict(job),
    }


def run_job(job: GRPOJobArguments, args, trainer_cls, algorithm: str) -> dict:
    """The job's steps with any attnrl trainer class taking TRL's constructor arguments (GRPO, PPO).

    Every config check runs before any model work: the job's and the credit fields before loading the model, the
    credit layers against the model's layer count right after loading it (before the base-model evaluation)."""
    job.validate()
    credit = credit_config_from(args)  # validates the credit fields
    out_dir = Path(args.output_dir)
    report_dir = out_dir / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)

    model, tokenizer = load_model_and_tokenizer(job.model_name_or_path)
    credit.validate_credit_layers(num_layers(model))
    train_set, eval_set = job_datasets(job)
    evaluate = held_out_evaluator(job, tokenizer, eval_set)

    before = None if job.skip_eval_before else evaluate(model, "held-out accuracy (base)").accuracy
    if before is not None:
        logger.info("base model held-out accuracy: %.1f%%", 100 * before)

    trainer = trainer_cls(
        model=model, reward_funcs=task_rewards(job.task, job.reward_names), args=args, train_dataset=train_set,
        processing_class=tokenizer, peft_config=lora_config(job),
    )
    t0 = time.time()
    trainer.train()
    seconds = time.time() - t0
    trainer.save_model(str(out_dir / "adapter"))

    after = evaluate(trainer.model, "held-out accuracy (trained)")
    results = {"algorithm": algorithm, **job_results(job, args, trainer, before, after, seconds, trainer.state.global_step)}
    write_report(report_dir, results, trainer, tokenizer, after, args)
    return results


def run_grpo_job(job: GRPOJobArguments, args: AttnGRPOConfig) -> dict:
    """The main job with AttnGRPOTrainer; returns (and writes to ``args.output_dir``/report) the results."""
    return run_job(job, args, AttnGRPOTrainer, "grpo")


_TRAINER_LABELS = {"grpo": "AttnGRPO", "ppo": "AttnPPO"}


def results_table(results: dict) -> str:
    """Markdown before/after table of a job's results."""
    before = results["accuracy_before"]
    return "\n".join([
        "| model | held-out accuracy (greedy) |",
        "|---|---|",
        f"| base {results['model']} | {'—' if before is None else f'{100 * before:.1f}%'} |",
        f"| + {_TRAINER_LABELS.get(results.get('algorithm'), 'attnrl')} ({results['credit_strategy']}, "
        f"{results['train_steps']} steps) | "
        f"{100 * results['accuracy_after']:.1f}% |",
    ])


def write_report(report_dir: Path, results: dict, trainer, tokenizer, after: EvalResult, args) -> None:
    """results.json, report.md (table), reward_curve.png, rhythm.png/.html of one held-out response, eval records.

    ``args`` supplies the credit settings of the rhythm figure (a CreditConfig or a trainer config).
    """
    (report_dir / "results.json").write_text(json.dumps(results, indent=2))
    (report_dir / "eval_after.jsonl").write_text("\n".join(json.dumps(r) for r in after.records))
    (report_dir / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=2))
    plot_reward_curve(trainer.state.log_history, report_dir / "reward_curve.png")
    table = results_table(results)
    figures = "![reward curve](reward_curve.png)\n"

    sample = next((r for r in after.records if r["correct"] and len(r["completion"]) > 1),
                  next((r for r in after.records if r["completion"]), None))
    if sample is not None:  # draw one held-out response with its preplan/anchor tokens
        credit = args if args.credit_strategy in ("local_chunk", "global_anchor", "coupled") else CreditConfig()
        model = trainer.accelerator.unwrap_model(trainer.model)
        analysis = analyze_response(model, tokenizer, sample["prompt"], sample["completion"], credit)
        title = f"{results['task']}: {sample['prompt'][-1]['content']}"
        plot_rhythm(analysis, report_dir / "rhythm.png", title=title)
        (report_dir / "rhythm.html").write_text(rhythm_html(analysis, title=title))
        figures += "\n![attention rhythm](rhythm.png)\n"

    (report_dir / "report.md").write_text(
        f"# Run report\n\n{table}\n\n{results['eval_size']} held-out {results['task']} problems; training took "
        f"{results['train_seconds']} s ({results['seconds_per_step']} s/step).\n\n{figures}"
    )
    print("\n" + table + "\n")
