"""The main job with PPO instead of GRPO: a critic + GAE + attention-aware credit, LoRA, evaluated before/after.

Same steps as :func:`attnrl.recipes.grpo.run_grpo_job` (its job arguments, rewards and report are reused): load
the model, build train / held-out splits, measure greedy held-out accuracy, train :class:`AttnPPOTrainer` with a
LoRA adapter (the policy's, and a separate one for the critic), measure again, save the checkpoint (policy adapter
in peft format + critic + training state) and the run report.
"""

from __future__ import annotations

from dataclasses import dataclass

from attnrl.recipes.grpo import GRPOJobArguments, run_job
from attnrl.trainers.ppo import AttnPPOConfig, AttnPPOTrainer


@dataclass
class PPOJobArguments(GRPOJobArguments):
    """What to train on and how to evaluate (the same fields as the GRPO job); PPO's own settings live in
    :class:`AttnPPOConfig`. ``lora_r`` also sets the critic's LoRA in ``critic_mode="separate"``."""


def run_ppo_job(job: PPOJobArguments, args: AttnPPOConfig) -> dict:
    """Run the whole job; returns (and writes to ``args.output_dir``/report) the results dictionary."""
    args.validate_ppo()
    results = run_job(job, args, AttnPPOTrainer, "ppo")
    results["critic_mode"] = args.critic_mode
    return results
