"""Train a model with attention-aware PPO (critic + GAE) + LoRA and report held-out accuracy before and after.

    python examples/train_ppo.py --config examples/configs/ppo_arithmetic_coupled.yaml [--any_field value]

Every field of PPOJobArguments (attnrl/recipes/ppo.py, the same as the GRPO job's) and of AttnPPOConfig
(transformers.TrainingArguments + PPO fields + credit_*) can be set in the YAML file or on the command line.
"""

import logging

from trl import TrlParser

from attnrl.recipes.config import parse_config
from attnrl.recipes.ppo import PPOJobArguments, run_ppo_job
from attnrl.trainers.ppo import AttnPPOConfig

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    job, training_args = parse_config(TrlParser((PPOJobArguments, AttnPPOConfig)))
    results = run_ppo_job(job, training_args)
    print({k: results[k] for k in ("accuracy_before", "accuracy_after", "train_steps", "seconds_per_step")})
