"""``python -m loraplug``: what ``torchrun -m loraplug run RECIPE`` starts on every process."""

import sys

from loraplug.cli.main import main

if __name__ == "__main__":  # not when a spawned child re-imports the main module
    sys.exit(main())
