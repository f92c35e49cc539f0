"""``python -m safepolicy.audit ...`` is ``safepolicy audit ...``."""

import sys

from safepolicy.audit.cli import main

sys.exit(main())
