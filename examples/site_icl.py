"""SITE vs 0-shot vs N-shot in-context learning on three locally generated tasks (docs/methods.md §3).

    python examples/site_icl.py --config examples/configs/site_smollm2.yaml [--field value ...]

The same as `attnrl train --recipe site ...`: attnrl.recipes.site.main (fields: --help).
"""

import sys

from attnrl.recipes.site import main

if __name__ == "__main__":
    sys.exit(main())
