"""``python -m chada.cli ...``: the ``chada`` command, also for ``torchrun -m chada.cli embed ...``."""

import sys

from chada.cli import main

sys.exit(main())
