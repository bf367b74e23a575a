"""``python -m lmtune`` (also what torchrun and accelerate launch run)."""

import sys

from lmtune.cli.main import main

sys.exit(main())
