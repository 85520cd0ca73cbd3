"""The session: qemu-io's commands run on a Disk, printing qemu-io's lines.

Why a module of its own: ``cli.py`` is the program (its options, opening
FILENAME, the exit status); this is what one script does to one disk. Each
``cmd_*`` method runs one command (``commands.Spec.handler`` names it) and
returns qemu-io's status for it (negative: the command failed, exit status
1). Requests go through ``loop.EventLoop``, which lets them progress only
where qemu-io's event loop would (see loop.py for which commands poll).

A synchronous request while nothing is in flight and no breakpoint is
pending cannot meet another request, so it runs through one of the Disk's
own views instead: its blocking methods (default) or its asyncio view
(``--sync-via aio``); the conformance tests run both, so both are checked
against qemu-io. Where qemu-io would wait forever (``aio_flush``, a
synchronous request or the end of the script with a request suspended at a
breakpoint; ``wait_break`` for a tag nothing in flight can reach), the
session stops with a clear error and exit status 1 instead.
"""

from __future__ import annotations

import asyncio
import errno
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TextIO

from ..core.disk import Disk
from ..core.errors import BreakpointError, RuleError
from .commands import (
    PROG,
    SUPPORTED,
    CommandError,
    Spec,
    breakline,
    check_argc,
    cvtstr,
    dump_buffer,
    find_command,
    parse_aio,
    parse_discard,
    parse_read,
    parse_sleep,
    parse_write,
    report,
    strerror,
)
from .loop import EventLoop, Hang, operation


class Session:
    """Runs commands against one disk and prints what qemu-io prints."""

    def __init__(
        self, disk: Disk, over_blkdebug: bool, out: TextIO, err: TextIO, sync_via_aio: bool = False
    ) -> None:
        self.disk = disk
        self.blkdebug = over_blkdebug
        self.out = out
        self.err = err
        self.sync_via_aio = sync_via_aio
        self.failed = False
        self.loop = EventLoop()
        self._aio_loop: asyncio.AbstractEventLoop | None = None
        self._observer = self._observe  # one bound method, so it can be removed
        disk.engine.add_observer(self._observer)

    def detach(self) -> None:
        """Drop what is still in flight (the script was interrupted) and stop
        printing breakpoint lines, before the disk closes: closing must not
        run a request on."""
        self.loop.cancel()
        self.disk.engine.remove_observer(self._observer)
        if self._aio_loop is not None:
            self._aio_loop.close()

    def say(self, line: str) -> None:
        print(line, file=self.out)

    def _observe(self, what: str, detail: object) -> None:
        if what == "suspend":
            self.say(f"blkdebug: Suspended request '{detail}'")
        elif what == "resume":
            self.say(f"blkdebug: Resuming request '{detail}'")

    def _suspended_text(self) -> str:
        entries = [
            f"'{tag}' ({hold.operation} at event {hold.event})"
            for tag, hold in self.disk.engine.suspended
        ]
        return ", ".join(entries) or "none"

    # -- running -----------------------------------------------------------------

    def run(self, commands: Iterable[str]) -> int:
        """Run the script; the exit status (1 if any command failed or it hung)."""
        try:
            for line in commands:
                if self.command(line) < 0:
                    self.failed = True
            self.loop.poll_until(
                lambda: not self.loop.requests,
                "requests are still suspended at the end of the script",
            )
            self._check_exit_flush()
        except Hang as hang:
            print(
                f"{PROG}: {hang}; suspended: {self._suspended_text()}; qemu-io would "
                f"wait forever here, so {PROG} stops",
                file=self.err,
            )
            self.failed = True
            self.loop.cancel()
        return 1 if self.failed else 0

    def _check_exit_flush(self) -> None:
        """qemu-io flushes the image when it exits (``flush_to_os``, and
        ``flush_to_disk`` if a write came after the last flush): a breakpoint
        still pending on one of them holds that flush, and qemu-io forever."""
        events = (
            ("flush_to_os", "flush_to_disk") if self.disk.image.dirty_event else ("flush_to_os",)
        )
        tags = [
            f"'{tag}' on {event}"
            for event, tag in self.disk.engine.pending_breakpoints
            if event in events
        ]
        if tags:
            raise Hang(
                f"qemu-io flushes the image when it exits, and breakpoint {', '.join(tags)} "
                "would hold that flush"
            )

    def command(self, line: str) -> int:
        argv = breakline(line)
        if not argv:
            return 0
        spec = find_command(argv[0])
        if spec is None:
            print(f'command "{argv[0]}" not found', file=self.err)
            return -errno.EINVAL
        if spec.handler is None:
            print(
                f'{PROG}: command "{argv[0]}" is not supported by {PROG} '
                f"(supported: {', '.join(SUPPORTED)})",
                file=self.err,
            )
            return -errno.ENOTSUP
        usage = check_argc(spec, argv)
        if usage:
            print(usage, file=self.err)
            return -errno.EINVAL
        try:
            handler: Callable[[Spec, list[str]], int] = getattr(self, spec.handler)
            return handler(spec, argv)
        except CommandError as exc:
            if exc.stdout:
                self.say(exc.stdout)
            if exc.stderr:
                print(exc.stderr, file=self.err)
            return exc.status

    # -- request commands --------------------------------------------------------

    def _view(self, method: str, *args: Any) -> Any:
        """The request through the Disk's blocking methods or its asyncio view."""
        if not self.sync_via_aio:
            return getattr(self.disk, method)(*args)
        if self._aio_loop is None:
            self._aio_loop = asyncio.new_event_loop()
        coro: Awaitable[Any] = getattr(self.disk.aio, method)(*args)
        return self._aio_loop.run_until_complete(coro)

    def _sync(self, method: str, *args: Any) -> Any:
        """One synchronous request: it polls the loop until it is done."""
        if not self.loop.requests and not self.disk.engine.pending_breakpoints:
            return self._view(method, *args)
        outcome: list[Any] = []

        def finish(value: Any, error: OSError | None) -> None:
            outcome[:] = [value, error]

        request = self.loop.start(operation(self.disk, method, *args), finish, split=True)
        what = "write -z" if method == "write_zeroes" else method
        self.loop.poll_until(
            lambda: request.done,
            f"{what} is suspended at a breakpoint and nothing can resume it",
            last=request,
        )
        if outcome[1] is not None:
            raise outcome[1]
        return outcome[0]

    def _outside(self, offset: int, length: int) -> bool:
        """Whether a request ends past the image. QEMU's block layer fails it
        with EIO before any event, as the Disk does; checked here first
        because the Disk refuses an end past 2**63 - 1 as a ValueError (a
        bad argument in Python) and a huge write's data need not be built."""
        return offset + length > self.disk.size

    def cmd_read(self, spec: Spec, argv: list[str]) -> int:
        a = parse_read(spec, argv, self.err)
        t0 = time.perf_counter()
        try:
            if self._outside(a.offset, a.length):
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            data = self._sync("read", a.offset, a.length)
        except OSError as exc:
            self.say(f"read failed: {strerror(exc)}")
            return -(exc.errno or errno.EIO)
        elapsed = time.perf_counter() - t0
        status = 0
        assert isinstance(data, bytes)
        if a.pattern is not None:
            start, count = a.pattern_offset, a.pattern_count
            if data[start : start + count] != bytes([a.pattern]) * count:
                self.say(f"Pattern verification failed at offset {a.offset + start}, {count} bytes")
                status = -errno.EINVAL
        if not a.quiet:
            if a.verbose:
                for row in dump_buffer(data, a.offset):
                    self.say(row)
            self.say(report("read", elapsed, a.offset, a.length, a.csv))
        return status

    def cmd_write(self, spec: Spec, argv: list[str]) -> int:
        a = parse_write(spec, argv, self.err)
        t0 = time.perf_counter()
        try:
            if self._outside(a.offset, a.length):
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            if a.zero:
                self._sync("write_zeroes", a.offset, a.length)
            else:
                self._sync("write", a.offset, bytes([a.pattern or 0]) * a.length)
        except OSError as exc:
            self.say(f"write failed: {strerror(exc)}")
            return -(exc.errno or errno.EIO)
        if not a.quiet:
            self.say(report("wrote", time.perf_counter() - t0, a.offset, a.length, a.csv))
        return 0

    def cmd_discard(self, spec: Spec, argv: list[str]) -> int:
        a = parse_discard(spec, argv, self.err)
        t0 = time.perf_counter()
        try:
            if self._outside(a.offset, a.length):
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            self._sync("discard", a.offset, a.length)
        except OSError as exc:
            self.say(f"discard failed: {strerror(exc)}")
            return -(exc.errno or errno.EIO)
        if not a.quiet:
            self.say(report("discard", time.perf_counter() - t0, a.offset, a.length, a.csv))
        return 0

    def cmd_flush(self, spec: Spec, argv: list[str]) -> int:
        try:
            self._sync("flush")
        except OSError as exc:  # qemu-io prints nothing, but the command failed
            return -(exc.errno or errno.EIO)
        return 0

    def cmd_aio_read(self, spec: Spec, argv: list[str]) -> int:
        a = parse_aio(spec, argv, self.err, write=False)
        t0 = time.perf_counter()

        def finish(data: Any, error: OSError | None) -> None:
            if error is not None:
                self.say(f"readv failed: {strerror(error)}")
                return
            if a.pattern is not None and data != bytes([a.pattern]) * a.length:
                self.say(f"Pattern verification failed at offset {a.offset}, {a.length} bytes")
            if not a.quiet:
                if a.verbose:
                    for row in dump_buffer(data, a.offset):
                        self.say(row)
                self.say(report("read", time.perf_counter() - t0, a.offset, a.length, a.csv))

        if self._outside(a.offset, a.length):
            finish(None, OSError(errno.EIO, os.strerror(errno.EIO)))
        else:
            self.loop.start(operation(self.disk, "read", a.offset, a.length), finish, split=True)
        return 0

    def cmd_aio_write(self, spec: Spec, argv: list[str]) -> int:
        a = parse_aio(spec, argv, self.err, write=True)
        t0 = time.perf_counter()

        def finish(value: Any, error: OSError | None) -> None:
            if error is not None:
                self.say(f"aio_write failed: {strerror(error)}")
            elif not a.quiet:
                self.say(report("wrote", time.perf_counter() - t0, a.offset, a.length, a.csv))

        if self._outside(a.offset, a.length):
            finish(None, OSError(errno.EIO, os.strerror(errno.EIO)))
        elif a.zero:
            self.loop.start(
                operation(self.disk, "write_zeroes", a.offset, a.length), finish, split=True
            )
        else:
            data = bytes([a.pattern or 0]) * a.length
            self.loop.start(operation(self.disk, "write", a.offset, data), finish, split=True)
        return 0

    def cmd_aio_flush(self, spec: Spec, argv: list[str]) -> int:
        self.loop.poll_until(
            lambda: not self.loop.requests, "aio_flush waits for requests suspended at a breakpoint"
        )
        return 0

    def cmd_length(self, spec: Spec, argv: list[str]) -> int:
        self.say(cvtstr(self.disk.size))
        return 0

    def cmd_sleep(self, spec: Spec, argv: list[str]) -> int:
        ms = parse_sleep(argv[1])
        self.loop.run_for(ms / 1000)  # qemu-io's main loop runs while it sleeps
        return 0

    # -- breakpoint commands -----------------------------------------------------

    def _no_blkdebug(self, text: str) -> int:
        self.say(f"{text}: {os.strerror(errno.ENOTSUP)}")
        return -errno.ENOTSUP

    def cmd_break(self, spec: Spec, argv: list[str]) -> int:
        if not self.blkdebug:
            return self._no_blkdebug("Could not set breakpoint")
        try:
            self.disk.break_on(argv[1], argv[2])
        except (BreakpointError, RuleError):
            self.say(f"Could not set breakpoint: {os.strerror(errno.ENOENT)}")
            return -errno.ENOENT
        return 0

    def cmd_resume(self, spec: Spec, argv: list[str]) -> int:
        if not self.blkdebug:
            return self._no_blkdebug("Could not resume request")
        try:
            self.disk.resume(argv[1])  # the request runs on inside (loop.EventLoop)
        except BreakpointError:
            self.say(f"Could not resume request: {os.strerror(errno.ENOENT)}")
            return -errno.ENOENT
        return 0

    def cmd_remove_break(self, spec: Spec, argv: list[str]) -> int:
        tag = argv[1]
        if not self.blkdebug:
            return self._no_blkdebug(f"Could not remove breakpoint {tag}")
        engine = self.disk.engine
        pending = any(t == tag for _, t in engine.pending_breakpoints)
        try:
            engine.remove_break(tag)
        except BreakpointError:
            pending = False
        if not pending:
            # qemu-io 7.2 reports ENOENT unless a pending breakpoint was
            # removed, even when it resumed requests suspended under the tag.
            self.say(f"Could not remove breakpoint {tag}: {os.strerror(errno.ENOENT)}")
            return -errno.ENOENT
        return 0

    def cmd_wait_break(self, spec: Spec, argv: list[str]) -> int:
        tag = argv[1]
        engine = self.disk.engine
        if not engine.is_suspended(tag):  # qemu-io polls only while it is not
            self.loop.poll_until(
                lambda: engine.is_suspended(tag),
                f"wait_break {tag}: no request in flight can reach a breakpoint tagged '{tag}'",
            )
        return 0
