"""``python -m safepolicy.export``: the same as ``safepolicy export``."""

import sys

from safepolicy.export.cli import main

sys.exit(main())
