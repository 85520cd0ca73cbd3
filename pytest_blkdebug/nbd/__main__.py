"""``python -m pytest_blkdebug.nbd``: the ``blkdebug-nbd`` command."""

import sys

from .cli import main

sys.exit(main())
