"""A ``Disk`` as a backend for servers that run many requests per thread (NBD).

``nbd.backend`` defines what the NBD server needs (nbdkit's plugin shape:
a backend, and a handle per connection); ``DiskBackend`` provides it for a
``Disk``, structurally: nothing here imports ``nbd``, and the server imports
nothing from ``core``, so ``Disk.serve_nbd`` imports the server downward.

The one thing a server needs beyond ``Disk``'s methods is to learn that a
request is about to be held at a breakpoint, in the thread that will block,
before it blocks: the NBD connection then hands its socket to a new thread
and keeps serving. A handle takes that ``on_hold`` callback once, when the
connection opens it, and passes it with every request to the request
path's blocking driver (``path.run``), which calls it before it first
blocks -- at most once per request, so a request held twice (``write_aio``
then ``pwritev_done``) hands over once. No global observer, no thread-local
hand-over: the callback travels with the request.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from .path import OnHold

__all__ = ["DiskBackend", "DiskHandle"]


class _Disk(Protocol):
    """The part of ``Disk`` a handle uses (``disk`` imports this module for
    ``serve_nbd``, so this one names no class of ``disk``'s)."""

    path: str
    size: int
    readonly: bool

    @property
    def closed(self) -> bool: ...

    def read(self, offset: int, length: int, *, on_hold: OnHold | None = None) -> bytes: ...

    def write(
        self, offset: int, data: bytes | bytearray | memoryview, *, on_hold: OnHold | None = None
    ) -> None: ...

    def flush(self, *, on_hold: OnHold | None = None) -> None: ...

    def discard(self, offset: int, length: int, *, on_hold: OnHold | None = None) -> None: ...

    def write_zeroes(
        self, offset: int, length: int, *, unmap: bool = True, on_hold: OnHold | None = None
    ) -> None: ...

    def block_status(
        self, offset: int, length: int, *, on_hold: OnHold | None = None
    ) -> Sequence[tuple[int, int, bool]]: ...


class DiskBackend:
    """``disk`` as an ``nbd.backend.Backend``; the export never closes it."""

    __slots__ = ("disk",)

    def __init__(self, disk: _Disk) -> None:
        self.disk = disk

    @property
    def size(self) -> int:
        return self.disk.size

    @property
    def readonly(self) -> bool:
        return self.disk.readonly

    @property
    def closed(self) -> bool:
        return self.disk.closed

    @property
    def name(self) -> str:
        return self.disk.path

    def connect(self, on_hold: OnHold) -> DiskHandle:
        return DiskHandle(self.disk, on_hold)


class DiskHandle:
    """One connection's requests to the disk, each carrying its ``on_hold``."""

    __slots__ = ("disk", "on_hold")

    def __init__(self, disk: _Disk, on_hold: OnHold) -> None:
        self.disk = disk
        self.on_hold = on_hold

    def read(self, offset: int, length: int) -> bytes:
        return self.disk.read(offset, length, on_hold=self.on_hold)

    def write(self, offset: int, data: memoryview) -> None:
        self.disk.write(offset, data, on_hold=self.on_hold)

    def flush(self) -> None:
        self.disk.flush(on_hold=self.on_hold)

    def discard(self, offset: int, length: int) -> None:
        self.disk.discard(offset, length, on_hold=self.on_hold)

    def write_zeroes(self, offset: int, length: int, *, unmap: bool) -> None:
        self.disk.write_zeroes(offset, length, unmap=unmap, on_hold=self.on_hold)

    def block_status(self, offset: int, length: int) -> Sequence[tuple[int, int, bool]]:
        return self.disk.block_status(offset, length, on_hold=self.on_hold)
