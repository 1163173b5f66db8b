"""Train a model with attention-aware GRPO + LoRA and report held-out accuracy before and after.

    python examples/train_grpo.py --config examples/configs/grpo_arithmetic_coupled.yaml [--field value ...]
    python examples/train_grpo.py --config ray_configs/local.yaml            # on Ray: 2 local CPU workers
    ray job submit --working-dir . -- python examples/train_grpo.py --config ray_configs/local.yaml

The same as `attnrl train --recipe grpo ...`: attnrl.recipes.grpo.main (fields: --help).
"""

import sys

from attnrl.recipes.grpo import main

if __name__ == "__main__":
    sys.exit(main())
