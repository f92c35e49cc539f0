"""``python -m export``: the same as ``safepolicy export``."""

import sys

from export.cli import main

sys.exit(main())
