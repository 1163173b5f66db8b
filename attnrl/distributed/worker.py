"""What each Ray Train worker runs: the main job (attnrl.recipes.grpo) with data-parallel training.

Rank r of N, on every attempt (after a worker failure Ray Train starts fresh workers and runs this again):

1. if Ray Train holds a checkpoint (``ray.train.get_checkpoint()``), download it and resume from it; its metadata
   carries the base model's held-out accuracy and the global step;
2. rank 0 measures the base model's held-out accuracy (first attempt only) while the others wait in DDP set-up;
3. train AttnGRPOTrainer; the HF Trainer runs DDP over the process group Ray Train set up (gloo on CPU, nccl on
   GPU) and :class:`RayTrainCheckpointer` reports each checkpoint it saves to Ray Train;
4. every rank fingerprints its trainable (LoRA) weights; rank 0 alone saves the adapter (DDP keeps all ranks
   identical: the fingerprints prove it), evaluates, writes the report and reports adapter + report as the final
   checkpoint, with the results (and every rank's fingerprint) as its metrics.

Ray's own ``RayTrainReportCallback`` is not used: it uploads the newest ``checkpoint-*`` folder of output_dir (a
stale one after a restart) from every rank (duplicate writes on one node); ``prepare_trainer`` only matters for Ray
Data inputs, and the job's datasets are HF datasets.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from attnrl.attention.capture import num_layers
from attnrl.credit.config import credit_config_from
from attnrl.models import load_model_and_tokenizer
from attnrl.recipes.grpo import (
    GRPOJobArguments,
    held_out_evaluator,
    job_datasets,
    job_results,
    lora_config,
    task_rewards,
    write_report,
)
from attnrl.trainers.grpo import AttnGRPOConfig, AttnGRPOTrainer

from .config import RayArguments
from .reward_pool import RewardActorPool


class RayTrainCheckpointer(TrainerCallback):
    """Reports each checkpoint the HF Trainer saves to Ray Train, which persists it under ``storage_path``.

    Rank 0 uploads the checkpoint folder without the other ranks' RNG states, every other rank its own
    ``rng_state_<rank>.pth``: Ray merges them into one checkpoint (``<ray checkpoint>/checkpoint/``), right on one
    node or many. Rank 0 attaches ``metadata`` and the global step; the metrics are the latest logged values.
    """

    def __init__(self, metadata: dict):
        self.metadata = metadata

    def on_save(self, args, state, control, **kwargs):
        import ray.train

        source = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        rank = args.process_index
        with tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp) / "checkpoint"
            if rank == 0:
                shutil.copytree(source, target, ignore=_other_ranks_rng_states)
            else:
                target.mkdir()
                shutil.copy2(source / f"rng_state_{rank}.pth", target)
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
            if rank == 0:
                checkpoint.set_metadata({**self.metadata, "global_step": state.global_step})
            ray.train.report(latest_metrics(state), checkpoint=checkpoint)


def _other_ranks_rng_states(folder: str, names: list[str]) -> list[str]:
    return [n for n in names if n.startswith("rng_state_") and n != "rng_state_0.pth"]


def latest_metrics(state) -> dict:
    """The latest value of every numeric metric in the trainer's log history, plus ``global_step``."""
    metrics = {k: v for entry in state.log_history for k, v in entry.items() if isinstance(v, (int, float))}
    return {**metrics, "global_step": state.global_step}


def trainable_fingerprint(model) -> str:
    """SHA-256 of the names and bytes of the trainable parameters (the LoRA weights with an adapter)."""
    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters(), key=lambda item: item[0]):
        if param.requires_grad:
            digest.update(name.encode())
            digest.update(param.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def all_ranks(value) -> list:
    """``value`` from every rank, in rank order (a one-item list outside torch.distributed)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [value]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def worker_training_args(args: AttnGRPOConfig, output_dir: str) -> AttnGRPOConfig:
    """The trainer config rebuilt in the worker. The driver's copy cached a single-process device state and sized
    the generation batch for one process; the rebuilt one derives both from this worker's world size (TRL's
    ``steps_per_generation`` is kept, so the generation batch stays ``per_device_train_batch_size`` x workers x it).
    """
    return dataclasses.replace(args, output_dir=output_dir, generation_batch_size=None)


def train_worker(config: dict) -> None:
    """Ray Train loop of one worker (see the module docstring); ``config`` comes from :func:`launch`."""
    import ray.train

    job: GRPOJobArguments = config["job"]
    ray_args: RayArguments = config["ray_args"]
    args = worker_training_args(config["training_args"], config["output_dir"])
    rank = ray.train.get_context().get_world_rank()
    checkpoint = ray.train.get_checkpoint()
    saved = checkpoint.get_metadata() if checkpoint else {}
    if saved.get("final"):  # the run had finished when this restart happened
        return
    resume_dir = download(checkpoint, Path(args.output_dir) / f"resume-rank{rank}") if checkpoint else None

    torch.manual_seed(args.seed)
    model, tokenizer = load_model(job, ray_args)
    credit_config_from(args).validate_credit_layers(num_layers(model))  # before any evaluation or trainer set-up
    train_set, eval_set = job_datasets(job)
    evaluate = held_out_evaluator(job, tokenizer, eval_set)

    before = saved.get("accuracy_before")
    if rank == 0 and checkpoint is None and not job.skip_eval_before:
        before = evaluate(model, "held-out accuracy (base)").accuracy

    with reward_functions(job, ray_args, config["reward_funcs"]) as rewards:
        trainer = AttnGRPOTrainer(
            model=model, reward_funcs=rewards, args=args, train_dataset=train_set, processing_class=tokenizer,
            peft_config=lora_config(job),
            callbacks=[RayTrainCheckpointer({"accuracy_before": before}), *config["callbacks"]],
        )
        start = time.time()
        trainer.train(resume_from_checkpoint=resume_dir)
    if resume_dir:
        shutil.rmtree(Path(resume_dir).parent, ignore_errors=True)
    timing = {"seconds": time.time() - start, "steps": trainer.state.global_step - saved.get("global_step", 0)}

    fingerprints = all_ranks(trainable_fingerprint(trainer.model))
    if rank == 0:
        finish(trainer, tokenizer, evaluate, job, args, before, fingerprints, timing)
    else:
        ray.train.report({})  # every rank reports as often as rank 0


def load_model(job: GRPOJobArguments, ray_args: RayArguments):
    """The job's model on this worker's device; a CPU worker uses as many torch threads as it reserved CPUs."""
    model, tokenizer = load_model_and_tokenizer(job.model_name_or_path)
    if ray_args.use_gpu:
        from ray.train.torch import get_device

        model.to(get_device())
    else:
        torch.set_num_threads(max(1, int(ray_args.cpus_per_worker)))
    return model, tokenizer


@contextmanager
def reward_functions(job: GRPOJobArguments, ray_args: RayArguments, override: list | None):
    """The job's rewards (or ``override``), scored in a :class:`RewardActorPool` when ``reward_actors`` > 0."""
    rewards = override or task_rewards(job.task, job.reward_names)
    if not ray_args.reward_actors:
        yield rewards
        return
    with RewardActorPool(rewards, ray_args.reward_actors, ray_args.reward_timeout_s) as pool:
        yield pool.reward_funcs


def download(checkpoint, target: Path) -> str:
    """The HF checkpoint folder inside a Ray Train checkpoint, copied to ``target`` (emptied first)."""
    shutil.rmtree(target, ignore_errors=True)
    checkpoint.to_directory(str(target))
    return str(target / "checkpoint")


def finish(trainer, tokenizer, evaluate, job, args, before, fingerprints, timing) -> None:
    """Rank 0: save the adapter, evaluate, write the report; report both as the final checkpoint."""
    import ray.train

    with tempfile.TemporaryDirectory() as tmp:
        trainer.save_model(str(Path(tmp) / "adapter"))
        after = evaluate(trainer.model, "held-out accuracy (trained)")
        results = job_results(job, args, trainer, before, after, timing["seconds"], timing["steps"])
        results.update(num_workers=len(fingerprints), trainable_sha256=fingerprints)
        report_dir = Path(tmp) / "report"
        report_dir.mkdir()
        write_report(report_dir, results, trainer, tokenizer, after, args)
        final = ray.train.Checkpoint.from_directory(tmp)
        final.set_metadata({"final": True})
        ray.train.report(results, checkpoint=final)
