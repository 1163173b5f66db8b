"""RayArguments: where and how a recipe runs on Ray (parsed beside the job and trainer configs); require_ray()."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class RayArguments:
    """Ray fields of the GRPO and PPO recipes (``attnrl train``, the example scripts). With none of them set, the job
    runs in the calling process."""

    ray_address: str | None = field(
        default=None,
        metadata={"help": "Cluster to join: 'auto', 'ray://host:10001', ... Default: $RAY_ADDRESS (set by "
                  "`ray job submit`) or a new local cluster."},
    )
    num_workers: int = field(
        default=0, metadata={"help": "Data-parallel training workers (Ray Train). 0: no Ray, train in this process "
                             "(unless --ray_address is set: then 1)."},
    )
    use_gpu: bool = field(default=False, metadata={"help": "Train on GPUs (backend nccl); else CPU (gloo)."})
    gpus_per_worker: float = field(default=1.0, metadata={"help": "GPUs reserved per worker (with --use_gpu)."})
    cpus_per_worker: float = field(
        default=1.0, metadata={"help": "CPUs reserved per worker; a CPU worker uses that many torch threads."},
    )
    placement_strategy: str = field(
        default="PACK", metadata={"help": "Placement group strategy: PACK, SPREAD, STRICT_PACK or STRICT_SPREAD."},
    )
    storage_path: str | None = field(
        default=None,
        metadata={"help": "Where Ray Train persists checkpoints and the final adapter + report (local path, "
                  "s3://, gs://; must be shared by all nodes). Default: <output_dir>/ray."},
    )
    max_failures: int = field(
        default=2, metadata={"help": "Worker-group restarts, each resuming from the last checkpoint (-1: no limit)."},
    )
    num_to_keep: int | None = field(
        default=2, metadata={"help": "Checkpoints kept in storage_path (None: all)."},
    )
    reward_actors: int = field(
        default=0, metadata={"help": "Ray actors scoring rewards for each training worker (0: score in the worker)."},
    )
    reward_timeout_s: float = field(
        default=60.0, metadata={"help": "Time bound of one reward call in the reward actors (then: failed, None)."},
    )

    @property
    def use_ray(self) -> bool:
        return self.num_workers > 0 or self.ray_address is not None

    @property
    def workers(self) -> int:
        return max(1, self.num_workers)

    def validate(self) -> None:
        if self.placement_strategy not in ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"):
            raise ValueError(f"placement_strategy={self.placement_strategy!r}: use PACK, SPREAD, STRICT_PACK or "
                             "STRICT_SPREAD")
        if self.num_workers < 0 or self.cpus_per_worker <= 0 or self.reward_actors < 0:
            raise ValueError("num_workers and reward_actors must be >= 0, cpus_per_worker > 0")
        if self.use_gpu and self.gpus_per_worker <= 0:
            raise ValueError("gpus_per_worker must be > 0 with use_gpu")

    def scaling_config(self):
        """Ray Train ScalingConfig: ``workers`` workers, each with its CPUs (and GPUs), placed by the strategy."""
        from ray.train import ScalingConfig

        resources = {"CPU": self.cpus_per_worker, **({"GPU": self.gpus_per_worker} if self.use_gpu else {})}
        return ScalingConfig(num_workers=self.workers, use_gpu=self.use_gpu, resources_per_worker=resources,
                             placement_strategy=self.placement_strategy)

    def run_config(self, output_dir: Path, run_name: str | None = None):
        """Ray Train RunConfig: storage, run name (a folder of it; default: output_dir's name), checkpoints kept and
        restarts on failure."""
        from ray.train import CheckpointConfig, FailureConfig, RunConfig

        return RunConfig(
            name=run_name or output_dir.name,
            storage_path=self.storage_path or str(output_dir / "ray"),
            checkpoint_config=CheckpointConfig(num_to_keep=self.num_to_keep),
            failure_config=FailureConfig(max_failures=self.max_failures),
        )


RAY_MISSING = "Ray is not installed, and num_workers / ray_address need it: pip install 'attnrl[ray]'"


def require_ray() -> None:
    """MissingExtra (one line: what to install) when Ray Train cannot be imported."""
    try:
        import ray.train  # noqa: F401
    except ImportError:
        from attnrl.recipes.config import MissingExtra

        raise MissingExtra(RAY_MISSING) from None
