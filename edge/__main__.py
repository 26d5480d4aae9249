"""``python -m edge`` is the same as the ``leafgate`` command."""

import sys

from edge.cli import main

sys.exit(main())
