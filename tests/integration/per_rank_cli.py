"""`saehealth` under torchrun with one argument that differs by rank, as when a checkpoint is broken on one node:
every `{rank}` in the arguments becomes this process's rank."""

import os
import sys

from saehealth.cli import main

if __name__ == "__main__":
    rank = os.environ.get("RANK", "0")
    main([arg.replace("{rank}", rank) for arg in sys.argv[1:]])
