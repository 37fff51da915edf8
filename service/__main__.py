"""``python -m service`` = ``bmd-node``."""

import sys

from service.cli.main import main

sys.exit(main())
