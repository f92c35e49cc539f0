"""``python -m safepolicy.server``: the same as ``safepolicy serve``."""

import sys

from safepolicy.server.cli import main

sys.exit(main())
