"""launch(): a recipe's job (GRPO or PPO) on a Ray cluster, training data-parallel across Ray Train workers.

Where each part runs: the driver (this process: a laptop, or the head node under ``ray job submit``) only checks
the config, connects to Ray, starts a Ray Train ``TorchTrainer`` and, when it returns, copies the final adapter and
report into ``output_dir``. The workers run :func:`attnrl.distributed.worker.train_worker`: the recipe's runner
phases (:class:`attnrl.recipes.runner.JobRunner`); all of them train (GRPO: DDP; PPO: gradients averaged over the
process group), rank 0 also evaluates the base model before training and the trained model after it, on the
worker's device, and writes the report. Checkpoints and the final adapter + report live in Ray Train's storage (``storage_path``); a
failed worker restarts the whole group (up to ``max_failures`` times), which resumes from the last checkpoint.

Batch sizes keep the HF meaning: ``per_device_train_batch_size`` is per worker, so N workers train on N times the
completions per step; divide it by N to keep the global batch.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from transformers import TrainerCallback

from .config import RayArguments, require_ray

logger = logging.getLogger(__name__)


def launch(
    job,
    training_args,
    ray_args: RayArguments,
    callbacks: Sequence[TrainerCallback] = (),
    reward_funcs: Sequence[Callable] | None = None,
    *,
    runner: type,
) -> dict:
    """Run the job on Ray (see the module docstring); returns the recipe's results dictionary plus ``num_workers``,
    ``trainable_sha256`` (one per rank) and ``ray_checkpoint`` (the final checkpoint's path).

    ``runner``: the recipe's JobRunner class (e.g. :class:`attnrl.recipes.grpo.GRPORunner`); the recipes pass
    their own, so this module never imports a recipe (the recipes import it).
    ``callbacks`` are added to the trainer of every worker; ``reward_funcs`` (picklable TRL reward functions)
    replace the task's rewards named by ``job.reward_names``. Every config check runs here, before Ray starts.
    Connects to ``ray_args.ray_address`` unless Ray is already initialised; a cluster started here is shut down at
    the end. Without Ray installed: MissingExtra saying what to install."""
    require_ray()
    runner.check(job, training_args)
    ray_args.validate()
    check_devices(training_args, ray_args)

    import ray
    from ray.train.torch import TorchConfig, TorchTrainer

    from .worker import train_worker

    output_dir = Path(training_args.output_dir).resolve()
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=ray_args.ray_address)
    try:
        trainer = TorchTrainer(
            train_worker,
            train_loop_config={"job": job, "training_args": training_args, "output_dir": str(output_dir),
                               "ray_args": ray_args, "callbacks": list(callbacks), "reward_funcs": reward_funcs,
                               "runner": runner},
            scaling_config=ray_args.scaling_config(),
            run_config=ray_args.run_config(output_dir, training_args.run_name),
            torch_config=TorchConfig(backend="nccl" if ray_args.use_gpu else "gloo"),
        )
        return collect(trainer.fit(), output_dir)
    finally:
        if started_here:
            ray.shutdown()


def check_devices(training_args, ray_args: RayArguments) -> None:
    """Fails on a GPU run configured for CPU; warns when a restart could not resume (no checkpoints)."""
    if ray_args.use_gpu and training_args.use_cpu:
        raise ValueError("--use_gpu true trains on GPUs: set --use_cpu false")
    if ray_args.max_failures != 0 and training_args.save_strategy == "no":
        logger.warning("save_strategy='no': no checkpoints, so a restart after a failure trains from scratch")


def collect(result, output_dir: Path) -> dict:
    """Copies the final checkpoint's adapter/ and report/ into ``output_dir``; returns its metrics (the results)."""
    with result.checkpoint.as_directory() as final:
        for name in ("adapter", "report"):
            shutil.copytree(Path(final) / name, output_dir / name, dirs_exist_ok=True)
    return {**result.metrics, "ray_checkpoint": result.checkpoint.path}
