"""``python -m loraplug``: what ``torchrun -m loraplug run RECIPE`` starts on every process."""

import sys

from loraplug.cli.main import main

sys.exit(main())
