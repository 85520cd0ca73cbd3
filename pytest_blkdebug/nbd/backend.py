"""What the NBD server needs from the thing it serves: nbdkit's plugin shape.

The server (``server``, ``handshake``, ``connection``) is written against
these two small protocols and imports nothing from ``core``: it sits below
the core, so ``core.disk`` can offer ``Disk.serve_nbd`` with an ordinary
import and no layer ever imports upward. ``core.backend.DiskBackend`` is the
``Disk`` seen through them.

As in nbdkit, the backend is asked once per connection for a handle
(nbdkit's ``.open``), and requests go to the handle (``.pread``,
``.pwrite``, ``.flush``, ``.trim``, ``.zero``, ``.extents``; named here as
the ``Disk`` names them). Unlike nbdkit, a handle may block a request at a
breakpoint; it says so *before* blocking, by calling the ``on_hold``
callback the connection gave it, so the connection can hand its socket to
another thread and keep serving (see ``connection``).

Errors: a handle raises ``OSError`` (its errno becomes the NBD error, see
``protocol.nbd_error``); once the backend is ``closed``, a ``ValueError``
means "shut down" (NBD_ESHUTDOWN). FUA is the server's business: it calls
``flush`` after the write.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

__all__ = ["Backend", "Extent", "Handle", "OnHold"]

#: ``(offset, length, data)``: a run that holds data, or (``data`` False)
#: a hole that reads as zeroes. ``core.disk.Extent`` is one.
Extent = tuple[int, int, bool]
#: Called, in the thread that is about to block, with whatever the backend
#: holds the request by (the server does not look at it).
OnHold = Callable[[object], None]


class Handle(Protocol):
    """One connection's view of the backend; every request goes here."""

    def read(self, offset: int, length: int) -> bytes: ...

    def write(self, offset: int, data: memoryview) -> None: ...

    def flush(self) -> None: ...

    def discard(self, offset: int, length: int) -> None: ...

    def write_zeroes(self, offset: int, length: int, *, unmap: bool) -> None: ...

    def block_status(self, offset: int, length: int) -> Sequence[Extent]: ...


class Backend(Protocol):
    """The export's subject: its size and modes, and a handle per connection.

    ``size`` is fixed for the life of the export; ``name`` only labels it in
    messages and ``repr`` (a ``Disk`` gives its path).
    """

    @property
    def size(self) -> int: ...

    @property
    def readonly(self) -> bool: ...

    @property
    def closed(self) -> bool: ...

    @property
    def name(self) -> str: ...

    def connect(self, on_hold: OnHold) -> Handle: ...
