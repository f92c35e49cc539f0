import sys

from safepolicy.training.cli import main

sys.exit(main())
