"""Train a model with attention-aware PPO (critic + GAE) + LoRA and report held-out accuracy before and after.

    python examples/train_ppo.py --config examples/configs/ppo_arithmetic_coupled.yaml [--field value ...]
    python examples/train_ppo.py --config ray_configs/local_ppo.yaml         # on Ray: 2 local CPU workers

The same as `attnrl train --recipe ppo ...`: attnrl.recipes.ppo.main (fields: --help).
"""

import sys

from attnrl.recipes.ppo import main

if __name__ == "__main__":
    sys.exit(main())
