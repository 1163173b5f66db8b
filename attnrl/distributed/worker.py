"""What each Ray Train worker runs: the recipe's runner phases (attnrl.recipes.runner.JobRunner) with
data-parallel training.

Rank r of N, on every attempt (after a worker failure Ray Train starts fresh workers and runs this again):

1. if Ray Train holds a checkpoint (``ray.train.get_checkpoint()``), download it and resume from it; its metadata
   carries the base model's held-out accuracy and the global step;
2. ``setup`` (the model moved to this worker's device), then ``evaluate_before`` on rank 0 (first attempt only)
   while the others wait in the process-group set-up;
3. ``build_trainer`` with :class:`RayTrainCheckpointer` (each checkpoint the trainer saves is reported to Ray
   Train) and ``train`` over the process group Ray Train set up (gloo on CPU, nccl on GPU): DDP for the HF Trainer
   (GRPO), gradients averaged by hand for AttnPPOTrainer;
4. every rank fingerprints its trainable weights; ``finish`` saves the adapter (every rank calls it; DDP keeps all
   ranks identical: the fingerprints prove it), then rank 0 evaluates, writes the report and reports adapter +
   report as the final checkpoint, with the results (and every rank's fingerprint) as its metrics.

Ray's own ``RayTrainReportCallback`` is not used: it uploads the newest ``checkpoint-*`` folder of output_dir (a
stale one after a restart) from every rank (duplicate writes on one node); ``prepare_trainer`` only matters for Ray
Data inputs, and the job's datasets are HF datasets.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .config import RayArguments
from .reward_pool import RewardActorPool

_RNG_STATE = re.compile(r"rng_state_(\d+)\.pth?$")  # one per rank: HF's rng_state_<r>.pth, AttnPPO's .pt


class RayTrainCheckpointer(TrainerCallback):
    """Reports each checkpoint the trainer saves (HF Trainer, or AttnPPOTrainer, which calls the same callbacks) to Ray
    Train, which persists it under ``storage_path``.

    Rank 0 uploads the checkpoint folder without the other ranks' RNG states, every other rank its own
    ``rng_state_<rank>.pth`` (``.pt`` for AttnPPOTrainer): Ray merges them into one checkpoint
    (``<ray checkpoint>/checkpoint/``), right on one node or many. Rank 0 attaches ``metadata`` and the global step; the metrics are the latest logged values.
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
                for path in source.iterdir():
                    if _rank_of(path.name) == rank:
                        shutil.copy2(path, target)
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
            if rank == 0:
                checkpoint.set_metadata({**self.metadata, "global_step": state.global_step})
            ray.train.report(latest_metrics(state), checkpoint=checkpoint)


def _rank_of(name: str) -> int | None:
    """The rank whose RNG state file ``name`` is (None: not an RNG state file)."""
    match = _RNG_STATE.match(name)
    return None if match is None else int(match.group(1))


def _other_ranks_rng_states(folder: str, names: list[str]) -> list[str]:
    return [n for n in names if _rank_of(n) not in (None, 0)]


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


def train_worker(config: dict) -> None:
    """Ray Train loop of one worker (see the module docstring); ``config`` comes from :func:`launch`."""
    import ray.train

    runner_cls = config["runner"]
    ray_args: RayArguments = config["ray_args"]
    rank = ray.train.get_context().get_world_rank()
    checkpoint = ray.train.get_checkpoint()
    saved = checkpoint.get_metadata() if checkpoint else {}
    if saved.get("final"):  # the run had finished when this restart happened
        return
    resume_dir = download(checkpoint, Path(config["output_dir"]) / f"resume-rank{rank}") if checkpoint else None

    runner = runner_cls(
        config["job"], runner_cls.for_worker(config["training_args"], config["output_dir"]),
        callbacks=config["callbacks"], resume_from_checkpoint=resume_dir, accuracy_before=saved.get("accuracy_before"),
        evaluate_before=rank == 0 and checkpoint is None, start_step=saved.get("global_step", 0),
    )
    if not ray_args.use_gpu:
        torch.set_num_threads(max(1, int(ray_args.cpus_per_worker)))
    runner.setup()
    if ray_args.use_gpu:
        from ray.train.torch import get_device

        runner.model.to(get_device())
    runner.evaluate_before()
    runner.callbacks.insert(0, RayTrainCheckpointer({"accuracy_before": runner.accuracy_before}))
    with reward_functions(config["reward_funcs"] or runner.rewards(), ray_args) as rewards:
        runner.reward_funcs = rewards
        runner.build_trainer()
        runner.train()
    if resume_dir:
        shutil.rmtree(Path(resume_dir).parent, ignore_errors=True)

    fingerprints = all_ranks(trainable_fingerprint(runner.trainable_model()))
    with tempfile.TemporaryDirectory() as tmp:
        results = runner.finish(tmp, {"num_workers": len(fingerprints), "trainable_sha256": fingerprints})
        if results is None:  # not rank 0
            ray.train.report({})  # every rank reports as often as rank 0
            return
        final = ray.train.Checkpoint.from_directory(tmp)
        final.set_metadata({"final": True})
        ray.train.report(results, checkpoint=final)


@contextmanager
def reward_functions(rewards: list, ray_args: RayArguments):
    """``rewards``, scored in a :class:`RewardActorPool` when ``reward_actors`` > 0."""
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
