"""GRPO with AVAR visual-anchored rewards on synthetic visual reasoning problems (docs/methods.md §2).

    python examples/train_grpo_avar.py --config examples/configs/avar_tiny_qwen2_vl.yaml [--field value ...]

The same as `attnrl train --recipe avar ...`: attnrl.recipes.avar.main (fields: --help).
"""

import sys

from attnrl.recipes.avar import main

if __name__ == "__main__":
    sys.exit(main())
