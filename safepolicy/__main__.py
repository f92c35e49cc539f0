"""``python -m safepolicy``: the same dispatcher as the ``safepolicy`` console script."""

import sys

from safepolicy.cli import main

sys.exit(main())
