"""A ``Disk`` as a backend for servers that run many requests per thread (NBD).

``nbd.backend`` defines what the NBD server needs (nbdkit's plugin shape:
a backend, and a handle per connection); ``DiskBackend`` provides it for a
``Disk``, structurally: nothing here imports ``nbd``, and the server imports
nothing from ``core``, so ``Disk.serve_nbd`` imports the server downward.

The one thing a server needs beyond ``Disk``'s methods is to learn that a
request is about to be held at a breakpoint, in the thread that will block,
before it blocks: the NBD connection then hands its socket to a new thread
and keeps serving. A handle takes that ``on_hold`` callback once, when the
connection opens it, and calls it for every hold of a request that handle
runs -- at most once per request, so a request held twice (``write_aio``
then ``pwritev_done``) hands over once.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Protocol

from .engine import Engine

__all__ = ["DiskBackend", "DiskHandle"]

#: Called with what holds the request, in the thread about to block.
OnHold = Callable[[object], None]

# Until the request path's blocking driver takes ``on_hold`` itself, the
# handle learns of a hold from the engine's "suspend" notice, which comes in
# the thread that is about to block; the callback of the request running in
# that thread is kept per thread for the length of the request.
_running = threading.local()
_watched: weakref.WeakSet[Engine] = weakref.WeakSet()
_watched_lock = threading.Lock()


class _Disk(Protocol):
    """The part of ``Disk`` a handle uses (``disk`` imports this module for
    ``serve_nbd``, so this one names no class of ``disk``'s)."""

    path: str
    size: int
    readonly: bool
    engine: Engine

    @property
    def closed(self) -> bool: ...

    def read(self, offset: int, length: int) -> bytes: ...

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None: ...

    def flush(self) -> None: ...

    def discard(self, offset: int, length: int) -> None: ...

    def write_zeroes(self, offset: int, length: int, *, unmap: bool = True) -> None: ...

    def block_status(self, offset: int, length: int) -> Sequence[tuple[int, int, bool]]: ...


def _on_engine(what: str, detail: object) -> None:
    if what != "suspend":
        return
    on_hold = getattr(_running, "on_hold", None)
    if on_hold is not None:
        _running.on_hold = None  # once per request
        on_hold(detail)


def _watch(engine: Engine) -> None:
    with _watched_lock:
        if engine not in _watched:
            engine.add_observer(_on_engine)
            _watched.add(engine)


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
    """One connection's requests to the disk, each reporting its holds."""

    __slots__ = ("disk", "on_hold")

    def __init__(self, disk: _Disk, on_hold: OnHold) -> None:
        self.disk = disk
        self.on_hold = on_hold
        _watch(disk.engine)

    def read(self, offset: int, length: int) -> bytes:
        running = _running
        running.on_hold = self.on_hold
        try:
            return self.disk.read(offset, length)
        finally:
            running.on_hold = None

    def write(self, offset: int, data: memoryview) -> None:
        running = _running
        running.on_hold = self.on_hold
        try:
            self.disk.write(offset, data)
        finally:
            running.on_hold = None

    def flush(self) -> None:
        running = _running
        running.on_hold = self.on_hold
        try:
            self.disk.flush()
        finally:
            running.on_hold = None

    def discard(self, offset: int, length: int) -> None:
        running = _running
        running.on_hold = self.on_hold
        try:
            self.disk.discard(offset, length)
        finally:
            running.on_hold = None

    def write_zeroes(self, offset: int, length: int, *, unmap: bool) -> None:
        running = _running
        running.on_hold = self.on_hold
        try:
            self.disk.write_zeroes(offset, length, unmap=unmap)
        finally:
            running.on_hold = None

    def block_status(self, offset: int, length: int) -> Sequence[tuple[int, int, bool]]:
        return self.disk.block_status(offset, length)  # no event, never held
