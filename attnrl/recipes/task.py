"""RL fine-tuning on a locally generated text task with a LoRA adapter, evaluated before and after: what the GRPO
and PPO recipes share (job arguments, rewards, LoRA, splits, held-out evaluation, the report) and their runner.

:class:`TaskJobRunner` fills in the :class:`~attnrl.recipes.runner.JobRunner` phases for any trainer class taking
TRL's constructor arguments (``model, reward_funcs, args, train_dataset, processing_class, peft_config,
callbacks``): load the model, build train / held-out splits, measure greedy held-out accuracy, train, save the
adapter (peft format), measure again, write a run report (table, reward curve, one response drawn with its
preplan/anchor tokens). A recipe sets ``trainer_cls`` and ``label``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from peft import LoraConfig

from attnrl.attention.capture import attention_layers, layer_types, num_layers
from attnrl.credit.config import CreditConfig, credit_config_from
from attnrl.credit.strategies import strategy_needs
from attnrl.evaluation import EvalResult, evaluate_accuracy
from attnrl.models import DEFAULT_MODEL, load_model_and_tokenizer
from attnrl.registry import RegistryError
from attnrl.report import analyze_response, plot_reward_curve, plot_rhythm, rhythm_html
from attnrl.rewards import REWARDS, TASKS, make_dataset

from .config import ConfigError
from .runner import JobRunner

logger = logging.getLogger(__name__)


@dataclass
class TaskJobArguments:
    """What to train on and how to evaluate; the trainer's own settings live in its config."""

    model_name_or_path: str = field(
        default=DEFAULT_MODEL, metadata={"help": f"'{DEFAULT_MODEL}' (embedded default), a local path or a Hub id."}
    )
    task: str = field(default="arithmetic", metadata={
        "help": f"Task to train on: one of {', '.join(TASKS)}, or the import path of a Task, 'module:TASK'."})
    train_size: int = field(default=2000, metadata={"help": "Number of distinct training problems."})
    eval_size: int = field(default=200, metadata={"help": "Number of held-out problems (greedy accuracy)."})
    task_seed: int = field(default=0, metadata={"help": "Seed of the task generator."})
    reward_names: list[str] = field(
        default_factory=lambda: ["correct"],
        metadata={"help": "Rewards to use: 'correct' (the task's exact/math-verify reward), 'format' (the task's "
                  f"format reward), a registered reward ({', '.join(REWARDS)}) or the import path of a TRL reward "
                  "function, 'module:function'."},
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank (0: train the full model)."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_target_modules: str = field(default="all-linear", metadata={"help": "peft target_modules."})
    eval_max_new_tokens: int = field(default=24, metadata={"help": "Generation budget of the evaluation (tokens)."})
    eval_batch_size: int = field(default=50, metadata={"help": "Prompts per evaluation batch."})
    skip_eval_before: bool = field(default=False, metadata={"help": "Skip the base-model evaluation."})

    def validate(self) -> None:
        """Raise ValueError naming the bad field (no model needed)."""
        try:
            TASKS.get(self.task)  # a registered name or an import path
        except RegistryError as e:
            raise ValueError(f"task={self.task!r} {e.reason}") from e
        if not self.reward_names:
            raise ValueError("reward_names=[]: name at least one reward, e.g. 'correct'")
        for name in self.reward_names:
            if name not in TASK_REWARDS:
                try:
                    REWARDS.get(name)
                except RegistryError as e:
                    raise ValueError(f"reward_names: {name!r} {e.reason} (or 'correct' / 'format', the task's "
                                     "own)") from e
        for name in ("train_size", "eval_size", "eval_batch_size", "eval_max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.lora_r < 0:
            raise ValueError(f"lora_r={self.lora_r} must be >= 0 (0 trains the full model)")


TASK_REWARDS = ("correct", "format")  # reward names meaning the task's own: Task.reward_funcs[0], [1]


def task_rewards(task: str, names: list[str]) -> list:
    """The TRL reward functions ``names`` stand for: 'correct' / 'format' the task's own (first and second of its
    ``reward_funcs``), any other name a reward of :data:`attnrl.rewards.REWARDS` or an import path."""
    own = dict(zip(TASK_REWARDS, TASKS.get(task).reward_funcs))
    return [own[n] if n in own else REWARDS.get(n) for n in names]


def lora_config(job: TaskJobArguments) -> LoraConfig | None:
    """The job's LoRA adapter config (None: train the full model)."""
    if job.lora_r <= 0:
        return None
    return LoraConfig(r=job.lora_r, lora_alpha=job.lora_alpha, target_modules=job.lora_target_modules,
                      task_type="CAUSAL_LM")


def job_datasets(job: TaskJobArguments):
    """(train, held-out) datasets of the job's task; the held-out split is disjoint from training by construction."""
    train_set = make_dataset(job.task, "train", job.train_size, seed=job.task_seed)
    eval_set = make_dataset(job.task, "test", job.eval_size, seed=job.task_seed + 1)
    return train_set, eval_set


def held_out_evaluator(job: TaskJobArguments, tokenizer, eval_set) -> Callable[[object, str], EvalResult]:
    """``evaluate(model, desc) -> EvalResult``: greedy accuracy on the held-out set with the task's checker."""

    def evaluate(model, desc: str) -> EvalResult:
        return evaluate_accuracy(model, tokenizer, eval_set, TASKS.get(job.task).is_correct,
                                 max_new_tokens=job.eval_max_new_tokens, batch_size=job.eval_batch_size, desc=desc)

    return evaluate


class TaskJobRunner(JobRunner):
    """The phases of a task job (see the module docstring); subclasses set ``name``, ``label`` and ``trainer_cls``."""

    label = "attnrl"  # the trainer's name in the report table
    trainer_cls = None

    @classmethod
    def check(cls, job, args) -> None:
        job.validate()
        credit_config_from(args)  # validates the credit fields

    # ---------------------------------------------------------------- phases

    def setup(self) -> None:
        """Config checks, then the model (credit layers checked against it right away), splits and evaluator."""
        self.check(self.job, self.args)
        torch.manual_seed(self.args.seed)
        self.model, self.tokenizer = self.load_model()
        try:
            credit_config_from(self.args).validate_credit_layers(
                num_layers(self.model), attention_layers(self.model), layer_types=layer_types(self.model))
        except (ValueError, OSError) as e:  # a config mistake seen once the model is known, not a training failure
            raise ConfigError(str(e)) from e
        self.train_set, self.eval_set = self.datasets()
        self.evaluate = self.evaluator()

    def evaluate_before(self) -> float | None:
        if self.should_evaluate_before and not self.job.skip_eval_before:
            self.accuracy_before = self.evaluate(self.model, "held-out accuracy (base)").accuracy
            logger.info("base model held-out accuracy: %.1f%%", 100 * self.accuracy_before)
        return self.accuracy_before

    def build_trainer(self) -> None:
        """The trainer; when the config asks for in-training evaluation (eval_strategy, eval_on_start), the
        held-out split is its eval_dataset."""
        evaluating = self.args.eval_strategy != "no" or self.args.eval_on_start
        self.trainer = self.trainer_cls(
            model=self.model, reward_funcs=self.rewards(), args=self.args, train_dataset=self.train_set,
            processing_class=self.tokenizer, peft_config=lora_config(self.job), callbacks=self.callbacks,
            **({"eval_dataset": self.eval_set} if evaluating else {}),
        )

    def finish(self, out_dir: str | Path | None = None, extra: dict | None = None) -> dict | None:
        """Save the adapter to ``out_dir``/adapter (default: output_dir), then on the main process evaluate it and
        write ``out_dir``/report; returns the results there (None elsewhere). ``extra`` joins the results."""
        out_dir = Path(out_dir or self.args.output_dir)
        self.trainer.save_model(str(out_dir / "adapter"))
        if not self.trainer.accelerator.is_main_process:
            return None
        after = self.evaluate(self.trainer.model, "held-out accuracy (trained)")
        results = {**self.results(after, out_dir), **(extra or {})}
        report_dir = out_dir / "report"
        report_dir.mkdir(parents=True, exist_ok=True)
        write_report(report_dir, results, self.trainer, self.tokenizer, after, self.args, label=self.label)
        return results

    # ---------------------------------------------------------------- pieces a subclass may replace

    def load_model(self):
        """(model, tokenizer) of ``job.model_name_or_path``; one that cannot be found or read is a ConfigError."""
        try:
            return load_model_and_tokenizer(self.job.model_name_or_path)
        except (OSError, ValueError) as e:  # transformers: not a folder nor a Hub id it can fetch, no model files in it
            detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(f"model_name_or_path={self.job.model_name_or_path!r} could not be loaded: {detail}") \
                from e

    def datasets(self):
        return job_datasets(self.job)

    def evaluator(self):
        return held_out_evaluator(self.job, self.tokenizer, self.eval_set)

    def rewards(self) -> list:
        """The reward functions: ``reward_funcs`` if given, else the task's, named by ``job.reward_names``."""
        return self.reward_funcs if self.reward_funcs is not None else task_rewards(self.job.task, self.job.reward_names)

    def results(self, after: EvalResult, out_dir: Path) -> dict:
        """The results dictionary written to report/results.json (and returned by the job)."""
        steps, seconds = self.steps_trained, self.train_seconds
        return {
            "algorithm": self.name,
            "model": self.job.model_name_or_path,
            "task": self.job.task,
            "credit_strategy": self.args.credit_strategy,
            "eval_size": after.total,
            "accuracy_before": self.accuracy_before,
            "accuracy_after": after.accuracy,
            "train_steps": self.trainer.state.global_step,
            "train_seconds": round(seconds, 1),
            "seconds_per_step": round(seconds / max(1, steps), 2),
            "adapter_dir": str(out_dir / "adapter"),
            "job": asdict(self.job),
        }


def results_table(results: dict, label: str = "attnrl") -> str:
    """Markdown before/after table of a job's results (``label``: the trainer's name)."""
    before = results["accuracy_before"]
    return "\n".join([
        "| model | held-out accuracy (greedy) |",
        "|---|---|",
        f"| base {results['model']} | {'—' if before is None else f'{100 * before:.1f}%'} |",
        f"| + {label} ({results['credit_strategy']}, {results['train_steps']} steps) | "
        f"{100 * results['accuracy_after']:.1f}% |",
    ])


def write_report(report_dir: Path, results: dict, trainer, tokenizer, after: EvalResult, args,
                 label: str = "attnrl") -> None:
    """results.json, report.md (table), reward_curve.png, rhythm.png/.html of one held-out response, eval records.

    ``args`` supplies the credit settings of the rhythm figure (a CreditConfig or a trainer config); ``label`` names
    the trainer in the table.
    """
    (report_dir / "results.json").write_text(json.dumps(results, indent=2))
    (report_dir / "eval_after.jsonl").write_text("\n".join(json.dumps(r) for r in after.records))
    (report_dir / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=2))
    plot_reward_curve(trainer.state.log_history, report_dir / "reward_curve.png")
    table = results_table(results, label)
    figures = "![reward curve](reward_curve.png)\n"

    sample = next((r for r in after.records if r["correct"] and len(r["completion"]) > 1),
                  next((r for r in after.records if r["completion"]), None))
    if sample is not None:  # draw one held-out response with its preplan/anchor tokens
        # the run's own credit settings when its strategy reads attention alone (the drawing has no entropies)
        credit = args if strategy_needs(args.credit_strategy) == {"attention"} else CreditConfig()
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


def ray_aware_parser(job_cls, config_cls, prog: str | None, description: str):
    """TrlParser over (job arguments, trainer config, RayArguments): the parser of a recipe that can run on Ray."""
    from trl import TrlParser

    from attnrl.distributed.config import RayArguments

    return TrlParser((job_cls, config_cls, RayArguments), prog=prog, description=description)


def run_here_or_on_ray(runner_cls: type[JobRunner], job, args, ray_args=None) -> dict:
    """Run ``runner_cls(job, args)`` in this process, or on Ray Train when ``ray_args`` asks for it; returns results."""
    if ray_args is not None and ray_args.use_ray:
        from attnrl.distributed import launcher

        return launcher.launch(job, args, ray_args, runner=runner_cls)
    return runner_cls(job, args).run()
