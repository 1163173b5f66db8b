"""Train a model with attention-aware GRPO + LoRA and report held-out accuracy before and after.

    python examples/train_grpo.py --config examples/configs/grpo_arithmetic_coupled.yaml [--any_field value]

Every field of GRPOJobArguments (attnrl/recipes/grpo.py), AttnGRPOConfig (trl.GRPOConfig + credit_*) and
RayArguments (attnrl/distributed/config.py) can be set in the YAML file or on the command line. With Ray flags the
same job trains data-parallel on a Ray cluster, e.g. 2 local CPU workers or a job on a running cluster:

    python examples/train_grpo.py --config ray_configs/local.yaml --num_workers 2
    ray job submit --working-dir . -- python examples/train_grpo.py --config ray_configs/local.yaml
"""

import logging

from trl import TrlParser

from attnrl.distributed import RayArguments, launch
from attnrl.recipes.config import parse_config
from attnrl.recipes.grpo import GRPOJobArguments, run_grpo_job
from attnrl.trainers.grpo import AttnGRPOConfig

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    parser = TrlParser((GRPOJobArguments, AttnGRPOConfig, RayArguments))
    job, training_args, ray_args = parse_config(parser)  # names the file of a YAML error; CPU-safe bf16
    if ray_args.use_ray:
        results = launch(job, training_args, ray_args)
    else:
        results = run_grpo_job(job, training_args)
    print({k: results[k] for k in ("accuracy_before", "accuracy_after", "train_steps", "seconds_per_step")})
