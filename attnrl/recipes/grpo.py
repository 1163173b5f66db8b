"""The main job: GRPO with attention-aware credit + LoRA on a locally generated task, evaluated before and after.

    python examples/train_grpo.py --config examples/configs/grpo_arithmetic_coupled.yaml [--field value ...]
    attnrl train examples/configs/grpo_arithmetic_coupled.yaml [--field value ...]
    attnrl train ray_configs/local.yaml                       # the same job on Ray Train workers

Every field of GRPOJobArguments, AttnGRPOConfig (trl.GRPOConfig + credit_*) and RayArguments
(attnrl/distributed/config.py) is a YAML key and a flag. Without Ray flags (``num_workers`` 0, no ``ray_address``)
the job runs in this process (:class:`GRPORunner`: load the model, build train / held-out splits, measure greedy
held-out accuracy, train AttnGRPOTrainer with a LoRA adapter, save the adapter, measure again, write a report);
with them it runs data-parallel on Ray (:func:`attnrl.distributed.launch`), the same phases in each worker.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from attnrl.trainers.grpo import AttnGRPOConfig, AttnGRPOTrainer

from .task import (  # noqa: F401  (re-exported: the job's building blocks)
    TaskJobArguments,
    TaskJobRunner,
    held_out_evaluator,
    job_datasets,
    lora_config,
    ray_aware_parser,
    results_table,
    run_here_or_on_ray,
    task_rewards,
    write_report,
)

RECIPE = "grpo"


@dataclass
class GRPOJobArguments(TaskJobArguments):
    """What to train on and how to evaluate; the trainer's own settings live in AttnGRPOConfig."""


class GRPORunner(TaskJobRunner):
    """The GRPO job's phases (:class:`attnrl.recipes.task.TaskJobRunner`) with AttnGRPOTrainer."""

    name = RECIPE
    label = "AttnGRPO"
    trainer_cls = AttnGRPOTrainer

    @classmethod
    def for_worker(cls, args: AttnGRPOConfig, output_dir: str) -> AttnGRPOConfig:
        """The config rebuilt in a Ray worker. The driver's copy cached a single-process device state and sized the
        generation batch for one process; the rebuilt one derives both from the worker's world size (TRL's
        ``steps_per_generation`` is kept, so the generation batch is ``per_device_train_batch_size`` x workers x it).
        """
        import dataclasses

        return dataclasses.replace(args, output_dir=output_dir, generation_batch_size=None)


def make_parser(prog: str | None = None):
    """TrlParser over (GRPOJobArguments, AttnGRPOConfig, RayArguments)."""
    return ray_aware_parser(GRPOJobArguments, AttnGRPOConfig, prog, __doc__.split("\n")[0])


def check(job: GRPOJobArguments, args: AttnGRPOConfig, ray_args=None) -> None:
    """Every check of the job that needs no model (ValueError naming the field)."""
    GRPORunner.check(job, args)
    if ray_args is not None:
        ray_args.validate()


def run(job: GRPOJobArguments, args: AttnGRPOConfig, ray_args=None) -> dict:
    """The job in this process, or on Ray when ``ray_args`` asks for it; returns the results dictionary."""
    return run_here_or_on_ray(GRPORunner, job, args, ray_args)


def run_grpo_job(job: GRPOJobArguments, args: AttnGRPOConfig) -> dict:
    """The main job in this process; returns (and writes to ``args.output_dir``/report) the results."""
    return GRPORunner(job, args).run()


def main(argv: Sequence[str] | None = None, *, prog: str | None = None, traceback: bool = False) -> int:
    """Command line of the recipe (the example script and ``attnrl train --recipe grpo``); returns the exit status."""
    import sys

    from .command import recipe_main

    return recipe_main(sys.modules[__name__], argv, prog=prog, traceback=traceback)
