"""``python -m hub`` is the same as ``leafgate hub``."""

import sys

from hub.tool import main

sys.exit(main(sys.argv[1:], prog="python -m hub"))
