"""``python -m tests.powerfs BACKING MOUNTPOINT --control SOCK``: see tests.powerfs.fs."""

import sys

from tests.powerfs.fs import main

sys.exit(main())
