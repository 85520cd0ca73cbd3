"""The NBD view of a disk: the protocol (``protocol``), the export server
(``server``) and the ``blkdebug-nbd`` command (``cli``)."""

from __future__ import annotations

from .server import NBDExport

__all__ = ["NBDExport"]
