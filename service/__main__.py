"""``python -m service`` = ``bmd-node``."""

import sys

from service.cli import main

sys.exit(main())
