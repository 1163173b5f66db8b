"""Build the organism checkpoint into benchmarks/organism/checkpoint (minutes on 2 CPU cores).

    python benchmarks/organism/build.py                 # the committed checkpoint, from scratch
    python benchmarks/organism/build.py --help          # every setting (model shape, data, SFT, stopping band)

Same as ``python -m attnrl.organism build``; see attnrl/organism/build.py for what it does.
"""

import sys

from attnrl.organism.__main__ import main

if __name__ == "__main__":
    sys.exit(main(["build", *sys.argv[1:]]))
