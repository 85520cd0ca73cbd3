"""The asyncio view of a Disk: the same operations, awaited.

A request held at a breakpoint suspends only its own task, never the loop,
so the test (or another task) can resume it. An injected error from a rule
without ``immediately`` yields to the loop once before it is raised, as
QEMU's blkdebug reschedules its coroutine; ``immediately = on`` raises at
once. The sequences are the Disk's (``disk.*_SEQ``); only the waiting
differs.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from .disk import (
    BLOCK_STATUS_SEQ,
    DISCARD_SEQ,
    FLUSH_TO_DISK,
    FLUSH_TO_OS,
    READ_SEQ,
    WRITE_SEQ,
    WRITE_ZEROES_SEQ,
    Extent,
    Sequence,
)
from .engine import Hold
from .errors import InjectedError
from .events import FLUSH
from .limits import check_timeout

if TYPE_CHECKING:
    from .disk import Disk


class AsyncDisk:
    """``await disk.aio.read(offset, length)`` and the rest of Disk's operations."""

    def __init__(self, disk: Disk) -> None:
        self.disk = disk

    async def _wait(self, hold: Hold | None, done: bool = False) -> None:
        __tracebackhide__ = True
        if hold is None:
            return
        loop = asyncio.get_running_loop()
        released = loop.create_future()

        def wake() -> None:  # runs in whichever thread resumed the request
            try:
                loop.call_soon_threadsafe(_set_done, released)
            except RuntimeError:  # the loop is gone; nobody is waiting
                pass

        hold.add_callback(wake)
        disk = self.disk
        disk._holds.add(hold)
        try:
            await asyncio.wait_for(released, disk.hold_timeout)
        except asyncio.TimeoutError:
            disk._after_hold(hold, False, done)
        except asyncio.CancelledError:
            disk.engine.abandon(hold)
            raise
        finally:
            disk._holds.discard(hold)
        disk._after_hold(hold, True, done)

    async def _fire(self, events: tuple[str, ...], operation: str, done: bool = False) -> None:
        __tracebackhide__ = True
        engine = self.disk.engine
        for event in events:
            if event in engine.live_events and not self.disk.closed:
                await self._wait(engine.fire(event, operation), done)

    async def _check(self, iotype: int, operation: str, offset: int, length: int) -> None:
        __tracebackhide__ = True
        slot = self.disk.engine.check(iotype, offset, length)
        if slot is not None and slot.errno:
            if not slot.immediately:
                await asyncio.sleep(0)
            raise InjectedError(slot.errno, slot.rule, operation, offset, length)

    async def _begin(self, seq: Sequence, offset: int, length: int) -> None:
        __tracebackhide__ = True
        disk = self.disk
        if (
            type(offset) is not int
            or type(length) is not int
            or offset < 0
            or length < 0
            or offset + length > disk._limit
        ):
            raise disk._bad_request(seq.operation, offset, length)
        if seq.dirties:
            disk._refuse_readonly(seq.operation, offset, length)
        await self._fire(seq.before, seq.operation)
        await self._check(seq.iotype, seq.operation, offset, length)

    async def _end(self, seq: Sequence) -> None:
        """``after`` events, then dirty: QEMU bumps its write generation once
        the request is over (see ``disk.Sequence``)."""
        __tracebackhide__ = True
        try:
            await self._fire(seq.after, seq.operation, done=True)
        finally:
            if seq.dirties:
                self.disk._dirty_event = self.disk._dirty_check = True

    async def read(self, offset: int, length: int) -> bytes:
        __tracebackhide__ = True
        await self._begin(READ_SEQ, offset, length)
        return self.disk.image.pread(offset, length)

    async def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        __tracebackhide__ = True
        length = memoryview(data).nbytes
        disk = self.disk
        if type(offset) is not int or offset < 0 or offset + length > disk._limit:
            raise disk._bad_request("write", offset, length)
        disk._refuse_readonly("write", offset, length)
        try:
            await self._begin(WRITE_SEQ, offset, length)
            disk.image.pwrite(offset, data)
            if disk.engine.recorders:
                disk._stored("write", offset, length, data)
        finally:
            await self._end(WRITE_SEQ)

    async def write_zeroes(self, offset: int, length: int, *, unmap: bool = True) -> None:
        __tracebackhide__ = True
        if self.disk._skip_empty("write_zeroes", offset, length):
            return
        try:
            await self._begin(WRITE_ZEROES_SEQ, offset, length)
            self.disk.image.zero(offset, length, unmap=unmap)
            if self.disk.engine.recorders:
                self.disk._stored("write_zeroes", offset, length, None)
        finally:
            await self._end(WRITE_ZEROES_SEQ)

    async def discard(self, offset: int, length: int) -> None:
        __tracebackhide__ = True
        if self.disk._skip_empty("discard", offset, length):
            return
        try:
            await self._begin(DISCARD_SEQ, offset, length)
            self.disk.image.zero(offset, length)
            if self.disk.engine.recorders:
                self.disk._stored("discard", offset, length, None)
        finally:
            await self._end(DISCARD_SEQ)

    async def flush(self) -> None:
        __tracebackhide__ = True
        disk = self.disk
        if disk.closed:
            raise disk._bad_request("flush", 0, 0)
        recorders = disk.engine.recorders
        if not recorders:
            return await self._flush()
        tokens = [(r, r.on_flush_begin(disk)) for r in recorders]
        ok = False
        try:
            await self._flush()
            ok = True
        finally:
            for recorder, token in tokens:
                recorder.on_flush_end(disk, token, ok)

    async def _flush(self) -> None:
        __tracebackhide__ = True
        disk = self.disk
        await self._fire((FLUSH_TO_OS,), "flush")
        if disk._dirty_event:
            await self._fire((FLUSH_TO_DISK,), "flush")
        if disk._dirty_check:
            await self._check(FLUSH, "flush", 0, 0)
        disk._flushed()

    async def block_status(self, offset: int, length: int) -> list[Extent]:
        __tracebackhide__ = True
        await self._begin(BLOCK_STATUS_SEQ, offset, length)
        return self.disk.image.extents(offset, length)

    async def event(self, name: str) -> None:
        __tracebackhide__ = True
        if self.disk.closed:
            raise self.disk.image.closed_error()
        engine = self.disk.engine
        engine.registry.check(name)
        if name not in engine.live_events:
            engine.note_event(name)  # fire() traces only events with rules
        await self._wait(engine.fire(name, f"event {name}"))

    async def wait_break(self, tag: str, timeout: float | None = None) -> None:
        """Like ``Disk.wait_break`` but lets the loop run while waiting."""
        limit = self.disk.wait_timeout if timeout is None else check_timeout("timeout", timeout)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        engine = self.disk.engine
        while not engine.is_suspended(tag):
            if loop.time() >= deadline:
                # Let the engine build the message (tag, pending, recent events).
                engine.wait_break(tag, 0)
            await asyncio.sleep(0.001)


def _set_done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
