"""pytest glue for pytest-blkdebug (fixtures, markers, options, reports)."""

from __future__ import annotations
