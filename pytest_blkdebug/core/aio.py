"""The asyncio view of a Disk: the same operations, awaited.

The operations are the request path's (``path.py``); this module is only
the asyncio driver, ``arun``. A request held at a breakpoint suspends only
its own task, never the loop, so the test (or another task) can resume it.
An injected error from a rule without ``immediately`` yields to the loop
once before it is raised, as QEMU's blkdebug reschedules its coroutine; an
injected delay is an ``asyncio.sleep``. Cancelling the task abandons the
request where it waits.
"""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING, TypeVar, cast

from . import path
from .hold import Hold
from .image import Extent
from .limits import check_timeout
from .path import Request

if TYPE_CHECKING:
    from .disk import Disk

__all__ = ["AsyncDisk", "arun"]

T = TypeVar("T")


async def _released(hold: Hold, timeout: float) -> bool:
    """Wait (this task only) until ``hold`` is released; False on timeout."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def wake() -> None:  # runs in whichever thread resumed the request
        try:
            loop.call_soon_threadsafe(_set_done, done)
        except RuntimeError:  # the loop is gone; nobody is waiting
            pass

    hold.add_callback(wake)
    try:
        await asyncio.wait_for(done, timeout)
    except asyncio.TimeoutError:
        return False
    return True


async def _delay(seconds: float, closing: threading.Event | None) -> None:
    """An injected delay, cut short (within 50 ms) once ``closing`` is set
    (by ``close()``, from any thread)."""
    if closing is None:
        await asyncio.sleep(seconds)
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not closing.is_set():
        remaining = deadline - loop.time()
        if remaining <= 0:
            return
        await asyncio.sleep(min(remaining, 0.05))


async def arun(
    request: Request[T], *, hold_timeout: float, closing: threading.Event | None = None
) -> T:
    """Drive a request in this task: await where it waits (see ``path``);
    ``closing`` (the disk's) cuts an injected delay short."""
    __tracebackhide__ = True
    value: bool | None = None
    error: BaseException | None = None
    while True:
        try:
            wait = request.send(value) if error is None else request.throw(error)
        except StopIteration as stop:
            return cast(T, stop.value)
        value = error = None
        try:
            if isinstance(wait, Hold):
                value = await _released(wait, hold_timeout)
            elif wait == path.RESCHEDULE:
                await asyncio.sleep(0)
            elif not isinstance(wait, str):  # a delay (HOST_IO goes on at once)
                await _delay(wait, closing)
        except asyncio.CancelledError as exc:
            error = exc  # the request abandons its wait, then ends cancelled


class AsyncDisk:
    """``await disk.aio.read(offset, length)`` and the rest of Disk's operations."""

    def __init__(self, disk: Disk) -> None:
        self.disk = disk

    async def _run(self, request: Request[T]) -> T:
        """Drive ``request`` with the disk's hold timeout; its ``close()`` cuts
        an injected delay short."""
        __tracebackhide__ = True
        disk = self.disk
        return await arun(request, hold_timeout=disk.hold_timeout, closing=disk._closing)

    async def read(self, offset: int, length: int) -> bytes:
        __tracebackhide__ = True
        return await self._run(path.read(self.disk, offset, length))

    async def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        __tracebackhide__ = True
        await self._run(path.write(self.disk, offset, data))

    async def write_zeroes(self, offset: int, length: int, *, unmap: bool = True) -> None:
        __tracebackhide__ = True
        await self._run(path.write_zeroes(self.disk, offset, length, unmap))

    async def discard(self, offset: int, length: int) -> None:
        __tracebackhide__ = True
        await self._run(path.discard(self.disk, offset, length))

    async def flush(self) -> None:
        __tracebackhide__ = True
        await self._run(path.flush(self.disk))

    async def block_status(self, offset: int, length: int) -> list[Extent]:
        __tracebackhide__ = True
        return await self._run(path.block_status(self.disk, offset, length))

    async def event(self, name: str) -> None:
        __tracebackhide__ = True
        await self._run(path.event(self.disk, name))

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
