"""The main job with PPO instead of GRPO: a critic + GAE + attention-aware credit, LoRA, evaluated before/after.

    python examples/train_ppo.py --config examples/configs/ppo_arithmetic_coupled.yaml [--field value ...]
    attnrl train --recipe ppo examples/configs/ppo_arithmetic_coupled.yaml [--field value ...]
    attnrl train ray_configs/local_ppo.yaml                   # the same job on Ray Train workers

Every field of PPOJobArguments (the GRPO job's), AttnPPOConfig (transformers.TrainingArguments + PPO fields +
credit_*) and RayArguments is a YAML key and a flag. The phases are the GRPO job's
(:class:`attnrl.recipes.task.TaskJobRunner`) with :class:`AttnPPOTrainer` (whose ``callbacks`` are
called as the HF Trainer calls them): the policy gets a LoRA adapter and
the separate critic another; the saved adapter folder holds the policy adapter (peft format) and ``critic/``.
On Ray each worker runs the same phases; checkpoints (policy, critic, optimizer, RNG of every rank) go through Ray
Train and a restarted worker group resumes from the last one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from attnrl.trainers.ppo import AttnPPOConfig, AttnPPOTrainer

from .task import TaskJobArguments, TaskJobRunner, ray_aware_parser, run_here_or_on_ray

RECIPE = "ppo"


@dataclass
class PPOJobArguments(TaskJobArguments):
    """What to train on and how to evaluate (the same fields as the GRPO job); PPO's own settings live in
    :class:`AttnPPOConfig`. ``lora_r`` also sets the critic's LoRA in ``critic_mode="separate"``."""


class PPORunner(TaskJobRunner):
    """The PPO job's phases with :class:`AttnPPOTrainer`; ``finish`` saves on every process (a collective
    save: the trainer synchronises its processes and writes each one's RNG state)."""

    name = RECIPE
    label = "AttnPPO"
    trainer_cls = AttnPPOTrainer

    @classmethod
    def check(cls, job, args: AttnPPOConfig) -> None:
        super().check(job, args)
        args.validate_ppo()

    def finish(self, out_dir=None, extra=None):
        out_dir = Path(out_dir or self.args.output_dir)
        (out_dir / "adapter").mkdir(parents=True, exist_ok=True)  # every process writes its RNG state there
        return super().finish(out_dir, {"critic_mode": self.args.critic_mode, **(extra or {})})

    def trainable_model(self):
        """Policy, critic (separate mode) and value head: every module PPO trains."""
        from torch import nn

        t = self.trainer
        return nn.ModuleList([m for m in (t.model, t.critic, t.value_head) if m is not None])


def make_parser(prog: str | None = None):
    """TrlParser over (PPOJobArguments, AttnPPOConfig, RayArguments)."""
    return ray_aware_parser(PPOJobArguments, AttnPPOConfig, prog, __doc__.split("\n")[0])


def check(job: PPOJobArguments, args: AttnPPOConfig, ray_args=None) -> None:
    """Every check of the job that needs no model (ValueError naming the field)."""
    PPORunner.check(job, args)
    if ray_args is not None:
        ray_args.validate()


def run(job: PPOJobArguments, args: AttnPPOConfig, ray_args=None) -> dict:
    """The job in this process, or on Ray when ``ray_args`` asks for it; returns the results dictionary."""
    return run_here_or_on_ray(PPORunner, job, args, ray_args)


def run_ppo_job(job: PPOJobArguments, args: AttnPPOConfig) -> dict:
    """Run the whole job in this process; returns (and writes to ``args.output_dir``/report) the results."""
    return PPORunner(job, args).run()


def main(argv: Sequence[str] | None = None, *, prog: str | None = None, traceback: bool = False) -> int:
    """Command line of the recipe (the example script and ``attnrl train --recipe ppo``); returns the exit status."""
    import sys

    from .command import recipe_main

    return recipe_main(sys.modules[__name__], argv, prog=prog, traceback=traceback)
