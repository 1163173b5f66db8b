"""Train a model with attention-aware GRPO + LoRA and report held-out accuracy before and after.

    python examples/train_grpo.py --config examples/configs/grpo_arithmetic_coupled.yaml [--any_field value]

Every field of GRPOJobArguments (attnrl/recipes/grpo.py) and of AttnGRPOConfig (trl.GRPOConfig + credit_*) can be
set in the YAML file or on the command line.
"""

import logging

from trl import TrlParser

from attnrl.recipes.grpo import GRPOJobArguments, run_grpo_job
from attnrl.trainers.grpo import AttnGRPOConfig

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    job, training_args = TrlParser((GRPOJobArguments, AttnGRPOConfig)).parse_args_and_config()
    results = run_grpo_job(job, training_args)
    print({k: results[k] for k in ("accuracy_before", "accuracy_after", "train_steps", "seconds_per_step")})
