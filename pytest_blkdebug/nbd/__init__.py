"""The NBD view of a disk, in nbdkit's shape: a server over a small backend
protocol, and the ``blkdebug-nbd`` command.

Layering, module by module (imports only run downward):

- ``protocol`` (wire constants, layouts, errno mapping), ``backend`` (the
  ``Backend``/``Handle`` protocols the server serves), ``handshake``
  (negotiation), ``connection`` (one client's requests) and ``server``
  (``NBDExport``: listening, admission, shutdown) import nothing outside this
  package. They sit *below* ``core``: ``core.disk`` imports ``server`` for
  ``Disk.serve_nbd`` with an ordinary import, and ``core.backend`` adapts a
  ``Disk`` to the ``Backend`` protocol structurally, without importing it.
- ``cli`` (``blkdebug-nbd``) needs ``Disk``, the rule files (``harness``) and ``report``:
  it belongs to the layer above them, beside ``qemuio``, and only the console
  script and ``__main__`` import it (this ``__init__`` does not, so
  ``core.disk`` importing ``server`` never pulls the upper layer in).

Why not the other ways to keep ``core`` from importing ``nbd``: dropping
``Disk.serve_nbd`` would break the documented API; registering the server
from above at import time, or importing it lazily, would only hide the
dependency; a server generic over a backend is what nbdkit does, and it
leaves the NBD code testable against any backend.
"""

from __future__ import annotations

from .backend import Backend, Handle
from .server import NBDExport

__all__ = ["Backend", "Handle", "NBDExport"]
