"""GRPO with AVAR visual-anchored rewards on synthetic visual reasoning problems (docs/methods.md §2).

    python examples/train_grpo_avar.py --config examples/configs/avar_tiny_qwen2_vl.yaml [--field value ...]
    attnrl train --recipe avar examples/configs/avar_tiny_qwen2_vl.yaml [--field value ...]

Problems are drawn locally with PIL (count the shapes, find the tallest bar; exact integer answers). The reward is
r_acc + 0.3 r_visual + 0.1 r_format (TRL ``reward_weights``), where r_visual is the policy's attention to the image
relative to the system prompt, gated by correctness; credit assignment re-weights token advantages as in
AttnGRPOTrainer. Greedy held-out accuracy and VAS are measured before and after; ``<output_dir>/report/`` gets
``results.json`` and ``log_history.json``. Runs in one process (no Ray fields).

No pretrained vision-language model can be downloaded here, so the default model is a tiny randomly initialised
Qwen2-VL (``tiny-qwen2_vl``; ``tiny-qwen2_5_vl`` also works) with an offline processor: the run shows the pipeline
end to end on CPU, not learning. Point ``model_name_or_path`` at a local Qwen2-VL / Qwen2.5-VL checkpoint for real
training.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from attnrl.multimodal.tasks import VISUAL_TASKS
from attnrl.multimodal.trainer import AVARGRPOConfig

from .runner import JobRunner

logger = logging.getLogger(__name__)

RECIPE = "avar"
TINY_MODELS = ("tiny-qwen2_vl", "tiny-qwen2_5_vl")


@dataclass
class AVARJobArguments:
    """What to train on and how to evaluate; the trainer's settings live in AVARGRPOConfig."""

    model_name_or_path: str = field(
        default="tiny-qwen2_vl", metadata={"help": f"{TINY_MODELS} or a local Qwen2-VL / Qwen2.5-VL checkpoint."})
    tiny_num_layers: int = field(default=4, metadata={"help": "Decoder layers of a tiny model."})
    task: str = field(default="mixed", metadata={"help": "'count', 'bars' or 'mixed'."})
    train_size: int = field(default=64, metadata={"help": "Training problems."})
    eval_size: int = field(default=16, metadata={"help": "Held-out problems (greedy accuracy and VAS)."})
    image_size: int = field(default=112, metadata={"help": "Image side in pixels (112 -> 16 image tokens)."})
    task_seed: int = field(default=0, metadata={"help": "Seed of the problem generator (held-out: seed + 1)."})
    eval_max_new_tokens: int = field(default=16, metadata={"help": "Generation budget of the evaluation (tokens)."})

    def validate(self) -> None:
        """Raise ValueError naming the bad field (no model needed)."""
        if self.task not in (*VISUAL_TASKS, "mixed"):
            raise ValueError(f"task={self.task!r} is unknown; use one of {sorted(VISUAL_TASKS)} or 'mixed'")
        for name in ("tiny_num_layers", "train_size", "eval_size", "image_size", "eval_max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")


def load_model_and_processor(job: AVARJobArguments):
    """(model, processor): a tiny random Qwen-VL built here, or a local checkpoint (SDPA attention)."""
    if job.model_name_or_path in TINY_MODELS:
        from attnrl.utils.tiny_vl import tiny_vl_model, tiny_vl_processor

        family = job.model_name_or_path.removeprefix("tiny-")
        return tiny_vl_model(family, num_layers=job.tiny_num_layers), tiny_vl_processor(family)
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(job.model_name_or_path, attn_implementation="sdpa")
    return model, AutoProcessor.from_pretrained(job.model_name_or_path)


class AVARRunner(JobRunner):
    """The AVAR job's phases: setup (model, layer checks, problems), evaluate_before (accuracy + VAS), build_trainer
    (AVARGRPOTrainer), train, finish (accuracy + VAS again, report)."""

    name = RECIPE

    @classmethod
    def check(cls, job: AVARJobArguments, args: AVARGRPOConfig) -> None:
        from attnrl.credit.config import credit_config_from

        job.validate()
        credit_config_from(args)  # the credit fields

    def setup(self) -> None:
        from attnrl.attention.capture import attention_layers, layer_types, num_layers
        from attnrl.credit.config import credit_config_from
        from attnrl.multimodal.scores import resolve_avar_layers
        from attnrl.multimodal.tasks import make_visual_examples

        job = self.job
        self.check(job, self.args)
        torch.manual_seed(self.args.seed)
        self.model, self.processor = load_model_and_processor(job)
        credit_config_from(self.args).validate_credit_layers(
            num_layers(self.model), attention_layers(self.model), layer_types=layer_types(self.model))
        self.avar_layers = resolve_avar_layers(self.args.avar_layers, num_layers(self.model))
        self.train_rows = make_visual_examples(job.task, job.train_size, job.task_seed, job.image_size)
        self.eval_rows = make_visual_examples(job.task, job.eval_size, job.task_seed + 1, job.image_size)
        self.before = None

    def evaluate(self, model) -> dict[str, float]:
        """{"accuracy", "vas"} of ``model`` on the held-out problems (greedy)."""
        from attnrl.multimodal.evaluation import evaluate_visual

        return evaluate_visual(model, self.processor, self.eval_rows, self.avar_layers,
                               max_new_tokens=self.job.eval_max_new_tokens)

    def evaluate_before(self):
        if self.should_evaluate_before:
            self.before = self.evaluate(self.model)
            self.accuracy_before = self.before["accuracy"]
        return self.accuracy_before

    def rewards(self) -> list:
        from attnrl.rewards import accuracy_reward, format_reward
        from attnrl.rewards.visual import visual_anchor_reward

        # weights: args.reward_weights (r_acc + 0.3 r_visual + 0.1 r_format by default)
        return self.reward_funcs or [accuracy_reward, visual_anchor_reward, format_reward]

    def build_trainer(self) -> None:
        from datasets import Dataset

        from attnrl.multimodal.trainer import AVARGRPOTrainer

        self.trainer = AVARGRPOTrainer(
            model=self.model, reward_funcs=self.rewards(), args=self.args,
            train_dataset=Dataset.from_list(self.train_rows), processing_class=self.processor,
            callbacks=self.callbacks,
        )

    def finish(self, out_dir=None, extra=None) -> dict:
        """Accuracy and VAS after training; ``out_dir``/report/results.json and log_history.json; the results."""
        out_dir = Path(out_dir or self.args.output_dir)
        after = self.evaluate(self.trainer.accelerator.unwrap_model(self.trainer.model))
        steps = self.steps_trained
        before = self.before or {}
        results = {
            "algorithm": RECIPE, "model": self.job.model_name_or_path, "task": self.job.task,
            "credit_strategy": self.args.credit_strategy, "eval_size": len(self.eval_rows),
            "accuracy_before": before.get("accuracy", self.accuracy_before), "accuracy_after": after["accuracy"],
            "vas_before": before.get("vas"), "vas_after": after["vas"], "train_steps": self.trainer.state.global_step,
            "train_seconds": round(self.train_seconds, 1),
            "seconds_per_step": round(self.train_seconds / max(1, steps), 2), "job": asdict(self.job),
            **(extra or {}),
        }
        report = out_dir / "report"
        report.mkdir(parents=True, exist_ok=True)
        (report / "results.json").write_text(json.dumps(results, indent=2))
        (report / "log_history.json").write_text(json.dumps(self.trainer.state.log_history, indent=2))
        return results


def make_parser(prog: str | None = None):
    """TrlParser over (AVARJobArguments, AVARGRPOConfig)."""
    from trl import TrlParser

    return TrlParser((AVARJobArguments, AVARGRPOConfig), prog=prog, description=__doc__.split("\n")[0])


def check(job: AVARJobArguments, args: AVARGRPOConfig) -> None:
    """Every check of the job that needs no model (ValueError naming the field)."""
    AVARRunner.check(job, args)


def run(job: AVARJobArguments, args: AVARGRPOConfig) -> dict:
    """The whole job in this process; returns (and writes to ``args.output_dir``/report) the results."""
    return AVARRunner(job, args).run()


def main(argv: Sequence[str] | None = None, *, prog: str | None = None, traceback: bool = False) -> int:
    """Command line of the recipe (the example script and ``attnrl train --recipe avar``); returns the exit status."""
    import sys

    from .command import recipe_main

    return recipe_main(sys.modules[__name__], argv, prog=prog, traceback=traceback)
