"""``python -m edge.bench``: the side-by-side benchmark."""

import sys

from . import main

sys.exit(main(sys.argv[1:]))
