"""``python -m server``: the same as ``safepolicy serve``."""

import sys

from server.cli import main

sys.exit(main())
