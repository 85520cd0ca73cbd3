"""``python -m pytest_blkdebug``: the same as ``blkdebug-io``."""

from __future__ import annotations

import sys

from .qemuio.cli import main

sys.exit(main())
