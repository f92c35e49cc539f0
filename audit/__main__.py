"""``python -m audit ...`` is ``safepolicy audit ...``."""

import sys

from audit.cli import main

sys.exit(main())
