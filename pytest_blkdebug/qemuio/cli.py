"""``blkdebug-io``: the program that runs qemu-io's commands over a ``Disk``.

``blkdebug-io [-f raw] [-t writeback] [-c COMMAND]... [--report] FILENAME``
runs the commands in order and prints what ``qemu-io -f raw -t writeback``
7.2 prints, line for line (the statistics line after a success has the same
format, other figures). FILENAME is ``blkdebug:CONFIG:IMAGE``,
``blkdebug::IMAGE`` or a plain image. Why: the same script can be run through
real QEMU and through this project, which is how the conformance tests prove
the engine right, and ``--report`` then shows what QEMU cannot (final state,
state history, every rule's counters).

This module holds the program: its own options (``main``, ``_parser``),
opening the image and its rule file (``split_filename``, ``open_disk``), the
``Session`` that runs each command on the Disk (its ``cmd_*`` methods) and the
exit status. The command language itself (the command table, getopt, numbers
with suffixes, pattern bytes, the exact output lines and statistics line)
lives in ``qemu_io.py``: pure text functions, tested line by line against
qemu-io (tests/test_cli.py).

Commands run in one asyncio event loop. An aio command starts a task on the
disk's ``aio`` view and lets it run as far as it can (events, check, and a
breakpoint's suspension happen inside the command, as in QEMU). A synchronous
command calls the Disk's blocking method, or, with ``--sync-via aio`` or when
a pending breakpoint could suspend it, runs as a task and waits for it (the
conformance tests run both ways, so both views are checked against QEMU).
After each command every request runs until it is done or suspended; qemu-io
lets them progress only in commands that poll, so aio completion lines may
come earlier than qemu-io's (and an aio_write's pwritev_done event fires at
once, where qemu-io raises it in the next polling command).
Where qemu-io would wait forever (``aio_flush``, a synchronous request or the
end of the script with a request suspended at a breakpoint; ``wait_break`` for
a tag nothing can reach), blkdebug-io stops with a clear error and exit
status 1 instead. Commands that qemu-io treats as failed (exit status 1) are
the same here: a failed ``read``/``write``/``discard``/``flush``, a pattern
mismatch of ``read -P``, bad arguments, unknown commands and failed
breakpoint commands; an ``aio_read``/``aio_write`` that fails does not count.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import os
import sys
import time
import warnings
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import NoReturn, TextIO

from ..core.disk import (
    DISCARD_SEQ,
    FLUSH_TO_DISK,
    FLUSH_TO_OS,
    READ_SEQ,
    WRITE_SEQ,
    WRITE_ZEROES_SEQ,
    Disk,
)
from ..core.engine import Hold
from ..core.errors import BreakpointError, BreakpointTimeout, RuleError
from ..core.events import EventRegistry
from ..core.rules import Rule
from ..report import format_report
from ..rulefiles import load_rules
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

DEFAULT_WAIT_TIMEOUT = 10.0
CACHE_MODES = ("none", "writeback", "unsafe", "directsync", "writethrough")
#: Loop iterations one settle may take before it gives up on quiescence.
_SETTLE_LIMIT = 10_000
#: The events each synchronous request may raise (a pending breakpoint on one
#: of them could suspend it).
_SYNC_EVENTS = {
    "read": READ_SEQ.before,
    "write": WRITE_SEQ.before + WRITE_SEQ.after,
    "write_zeroes": WRITE_ZEROES_SEQ.before + WRITE_ZEROES_SEQ.after,
    "discard": DISCARD_SEQ.before + DISCARD_SEQ.after,
    "flush": (FLUSH_TO_OS, FLUSH_TO_DISK),
}


class OpenError(Exception):
    """The image or its rule file cannot be opened (qemu-io: can't open device)."""


class _Hang(Exception):
    """The script reached a point where qemu-io would wait forever."""


# ---------------------------------------------------------------------------
# The program's own arguments
# ---------------------------------------------------------------------------


class _UsageError(Exception):
    """A bad blkdebug-io option: main prints it and exits 1 (argparse would exit 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _UsageError(message)


def _parser() -> _Parser:
    p = _Parser(
        prog=PROG,
        add_help=False,
        usage=f"{PROG} [-f raw] [-t writeback] [-c COMMAND]... [--events NAME,...] "
        "[--report] [--wait-timeout SECONDS] FILENAME",
        description="Run qemu-io commands against a raw image through the blkdebug engine. "
        "FILENAME is blkdebug:RULES:IMAGE, blkdebug::IMAGE or IMAGE; RULES is a "
        "QEMU ini (.ini/.cfg/.conf) or TOML rule file. Without -c, commands are "
        "read from standard input, one per line.",
    )
    p.add_argument("-h", "--help", action="store_true", help="show this help and exit")
    p.add_argument(
        "-c",
        "--cmd",
        action="append",
        default=[],
        metavar="COMMAND",
        help="run COMMAND (repeatable), e.g. -c 'read -P 0 0 512'",
    )
    p.add_argument("-f", "--format", default="raw", help="image format: raw only")
    p.add_argument(
        "-t",
        "--cache",
        default="writeback",
        help="cache mode: writeback only (qemu-io's default is writethrough)",
    )
    p.add_argument(
        "--events",
        action="append",
        default=[],
        metavar="NAME,...",
        help="custom event names to register before the rule file is read "
        "(comma-separated, repeatable), so that rules and 'break' can use them",
    )
    p.add_argument(
        "--report",
        action="store_true",
        help="after the commands, print the final state, the state history "
        "and every rule's counters",
    )
    p.add_argument(
        "--wait-timeout",
        type=float,
        default=DEFAULT_WAIT_TIMEOUT,
        metavar="SECONDS",
        help=f"longest wait of wait_break and aio_flush (default "
        f"{DEFAULT_WAIT_TIMEOUT:g}; qemu-io waits forever)",
    )
    p.add_argument(
        "--sync-via",
        choices=("disk", "aio"),
        default="disk",
        help="how read/write/discard/flush reach the image: the Disk's blocking methods "
        "(default) or its asyncio view (the conformance tests run both)",
    )
    p.add_argument("filename", nargs="?", metavar="FILENAME")
    return p


# ---------------------------------------------------------------------------
# Opening FILENAME: the image and its rule file
# ---------------------------------------------------------------------------


def split_filename(filename: str) -> tuple[str | None, str]:
    """``blkdebug:CONFIG:IMAGE`` -> (CONFIG or "" , IMAGE); a plain path -> (None, path).

    As QEMU's blkdebug_parse_filename: the config ends at the first ``:``
    after the prefix, the image is the rest.
    """
    if not filename.startswith("blkdebug:"):
        return None, filename
    rest = filename[len("blkdebug:") :]
    config, sep, image = rest.partition(":")
    if not sep:
        raise OpenError("blkdebug requires both config file and image path")
    return config, image


def open_disk(filename: str, err: TextIO, events: Iterable[str] = ()) -> tuple[Disk, bool]:
    """Open FILENAME as qemu-io would; returns (disk, over_blkdebug).

    ``events`` are custom event names registered before the rule file is
    read: an ini file (which cannot declare events) may then use them, and
    ``break`` may stop on them.
    """
    config, image = split_filename(filename)
    rules: list[Rule] = []
    registry = EventRegistry(events)
    if config:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            rules = load_rules(config, registry=registry)
        for w in caught:
            print(f"{PROG}: warning: {w.message}", file=err)
    if not image:
        raise OpenError("The 'file' block driver requires a file name")
    try:
        disk = Disk.open(image, rules=rules, events=registry.custom, hold_timeout=10.0**7)
    except OSError as exc:
        raise OpenError(
            f"Could not open '{image}': {os.strerror(exc.errno) if exc.errno else exc}"
        ) from None
    if disk.size % 512:
        print(
            f"{PROG}: warning: {image} is {disk.size} bytes, not a multiple of 512: "
            f"qemu-io would round its length up to {-(-disk.size // 512) * 512} bytes",
            file=err,
        )
    return disk, config is not None


# ---------------------------------------------------------------------------
# The session: commands on a Disk in one event loop
# ---------------------------------------------------------------------------


class Session:
    """Runs commands against one disk in one event loop and prints qemu-io's lines."""

    def __init__(
        self,
        disk: Disk,
        over_blkdebug: bool,
        out: TextIO,
        err: TextIO,
        wait_timeout: float = DEFAULT_WAIT_TIMEOUT,
        sync_via_aio: bool = False,
    ) -> None:
        self.disk = disk
        self.sync_via_aio = sync_via_aio
        self.blkdebug = over_blkdebug
        self.out = out
        self.err = err
        self.wait_timeout = wait_timeout
        self.failed = False
        self.tasks: list[asyncio.Task[None]] = []
        self.holds: dict[asyncio.Task[None], list[Hold]] = {}
        self._observer = self._observe  # one bound method, so it can be removed
        disk.engine.add_observer(self._observer)

    def detach(self) -> None:
        """Stop printing breakpoint lines (closing the disk may resume requests)."""
        self.disk.engine.remove_observer(self._observer)

    # -- output and bookkeeping ------------------------------------------------

    def say(self, line: str) -> None:
        print(line, file=self.out)

    def _observe(self, what: str, detail: object) -> None:
        if what == "suspend":
            self.say(f"blkdebug: Suspended request '{detail}'")
            task = asyncio.current_task()
            suspended = self.disk.engine.suspended
            if task is not None and suspended:
                self.holds.setdefault(task, []).append(suspended[0][1])
        elif what == "resume":
            self.say(f"blkdebug: Resuming request '{detail}'")

    def _held(self, task: asyncio.Task[None]) -> Hold | None:
        for hold in self.holds.get(task, ()):
            if not hold.released:
                return hold
        return None

    def _runnable(self) -> list[asyncio.Task[None]]:
        self.tasks = [t for t in self.tasks if not t.done()]
        return [t for t in self.tasks if self._held(t) is None]

    def _spawn(self, coro: Awaitable[None]) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self.tasks.append(task)
        return task

    async def settle(self) -> None:
        """Let every request run until it is done or held at a breakpoint."""
        for _ in range(_SETTLE_LIMIT):
            if not self._runnable():
                return
            await asyncio.sleep(0)

    def _suspended_text(self) -> str:
        entries = [
            f"'{tag}' ({hold.operation} at event {hold.event})"
            for tag, hold in self.disk.engine.suspended
        ]
        return ", ".join(entries) or "none"

    async def _wait_until(self, done: Callable[[], bool], what: str) -> None:
        """Run the loop until ``done()``; _Hang when nothing can make progress
        any more (all requests done or suspended) or after the wait timeout."""
        deadline = time.monotonic() + self.wait_timeout
        spins = 0
        while not done():
            if not self._runnable():
                raise _Hang(what)
            if time.monotonic() > deadline:
                raise _Hang(f"{what} (gave up after {self.wait_timeout:g} s)")
            spins += 1
            await asyncio.sleep(0 if spins < 1000 else 0.001)

    # -- running -----------------------------------------------------------------

    async def run(self, commands: Sequence[str]) -> int:
        try:
            for line in commands:
                if await self.command(line) < 0:
                    self.failed = True
                await self.settle()
            await self._wait_until(
                lambda: not self._pending(), "requests are still suspended at the end of the script"
            )
        except _Hang as hang:
            print(
                f"{PROG}: {hang}; suspended: {self._suspended_text()}; qemu-io would "
                f"wait forever here, so {PROG} stops",
                file=self.err,
            )
            self.failed = True
            for task in self.tasks:
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
        return 1 if self.failed else 0

    def _pending(self) -> list[asyncio.Task[None]]:
        self.tasks = [t for t in self.tasks if not t.done()]
        return self.tasks

    async def command(self, line: str) -> int:
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
            handler: Callable[[Spec, list[str]], Awaitable[int]] = getattr(self, spec.handler)
            return await handler(spec, argv)
        except CommandError as exc:
            if exc.stdout:
                self.say(exc.stdout)
            if exc.stderr:
                print(exc.stderr, file=self.err)
            return exc.status

    # -- request commands --------------------------------------------------------

    async def _sync(self, method: str, *args: object) -> object:
        """One synchronous request, by the Disk's blocking method; as a task on
        its aio view with ``--sync-via aio`` or when a pending breakpoint could
        suspend it (then qemu-io would hang, and the task lets us see it)."""
        pending = {event for event, _ in self.disk.engine.pending_breakpoints}
        if not self.sync_via_aio and not pending.intersection(_SYNC_EVENTS[method]):
            return getattr(self.disk, method)(*args)
        task = self._spawn(getattr(self.disk.aio, method)(*args))
        what = "write -z" if method == "write_zeroes" else method
        await self._wait_until(
            task.done, f"{what} is suspended at a breakpoint and nothing can resume it"
        )
        return task.result()

    async def cmd_read(self, spec: Spec, argv: list[str]) -> int:
        a = parse_read(spec, argv, self.err)
        t0 = time.perf_counter()
        try:
            data = await self._sync("read", a.offset, a.length)
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

    async def cmd_write(self, spec: Spec, argv: list[str]) -> int:
        a = parse_write(spec, argv, self.err)
        t0 = time.perf_counter()
        try:
            if a.zero:
                await self._sync("write_zeroes", a.offset, a.length)
            elif a.length > self.disk.size:  # out of range: fail before building data
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            else:
                data = bytes([a.pattern or 0]) * a.length
                await self._sync("write", a.offset, data)
        except OSError as exc:
            self.say(f"write failed: {strerror(exc)}")
            return -(exc.errno or errno.EIO)
        if not a.quiet:
            self.say(report("wrote", time.perf_counter() - t0, a.offset, a.length, a.csv))
        return 0

    async def cmd_discard(self, spec: Spec, argv: list[str]) -> int:
        a = parse_discard(spec, argv, self.err)
        t0 = time.perf_counter()
        try:
            await self._sync("discard", a.offset, a.length)
        except OSError as exc:
            self.say(f"discard failed: {strerror(exc)}")
            return -(exc.errno or errno.EIO)
        if not a.quiet:
            self.say(report("discard", time.perf_counter() - t0, a.offset, a.length, a.csv))
        return 0

    async def cmd_flush(self, spec: Spec, argv: list[str]) -> int:
        try:
            await self._sync("flush")
        except OSError as exc:  # qemu-io prints nothing, but the command failed
            return -(exc.errno or errno.EIO)
        return 0

    async def cmd_aio_read(self, spec: Spec, argv: list[str]) -> int:
        a = parse_aio(spec, argv, self.err, write=False)

        async def request() -> None:
            t0 = time.perf_counter()
            try:
                data = await self.disk.aio.read(a.offset, a.length)
            except OSError as exc:
                self.say(f"readv failed: {strerror(exc)}")
                return
            if a.pattern is not None and data != bytes([a.pattern]) * a.length:
                self.say(f"Pattern verification failed at offset {a.offset}, {a.length} bytes")
            if not a.quiet:
                if a.verbose:
                    for row in dump_buffer(data, a.offset):
                        self.say(row)
                self.say(report("read", time.perf_counter() - t0, a.offset, a.length, a.csv))

        self._spawn(request())
        await self.settle()
        return 0

    async def cmd_aio_write(self, spec: Spec, argv: list[str]) -> int:
        a = parse_aio(spec, argv, self.err, write=True)
        aio = self.disk.aio

        async def request() -> None:
            t0 = time.perf_counter()
            try:
                if a.zero:
                    await aio.write_zeroes(a.offset, a.length)
                elif a.length > self.disk.size:
                    raise OSError(errno.EIO, os.strerror(errno.EIO))
                else:
                    await aio.write(a.offset, bytes([a.pattern or 0]) * a.length)
            except OSError as exc:
                self.say(f"aio_write failed: {strerror(exc)}")
                return
            if not a.quiet:
                self.say(report("wrote", time.perf_counter() - t0, a.offset, a.length, a.csv))

        self._spawn(request())
        await self.settle()
        return 0

    async def cmd_aio_flush(self, spec: Spec, argv: list[str]) -> int:
        await self._wait_until(
            lambda: not self._pending(), "aio_flush waits for requests suspended at a breakpoint"
        )
        return 0

    async def cmd_length(self, spec: Spec, argv: list[str]) -> int:
        self.say(cvtstr(self.disk.size))
        return 0

    async def cmd_sleep(self, spec: Spec, argv: list[str]) -> int:
        ms = parse_sleep(argv[1])
        await asyncio.sleep(ms / 1000)
        return 0

    # -- breakpoint commands -----------------------------------------------------

    def _no_blkdebug(self, text: str) -> int:
        self.say(f"{text}: {os.strerror(errno.ENOTSUP)}")
        return -errno.ENOTSUP

    async def cmd_break(self, spec: Spec, argv: list[str]) -> int:
        if not self.blkdebug:
            return self._no_blkdebug("Could not set breakpoint")
        try:
            self.disk.break_on(argv[1], argv[2])
        except (BreakpointError, RuleError):
            self.say(f"Could not set breakpoint: {os.strerror(errno.ENOENT)}")
            return -errno.ENOENT
        return 0

    async def cmd_resume(self, spec: Spec, argv: list[str]) -> int:
        if not self.blkdebug:
            return self._no_blkdebug("Could not resume request")
        try:
            self.disk.resume(argv[1])
        except BreakpointError:
            self.say(f"Could not resume request: {os.strerror(errno.ENOENT)}")
            return -errno.ENOENT
        return 0

    async def cmd_remove_break(self, spec: Spec, argv: list[str]) -> int:
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

    async def cmd_wait_break(self, spec: Spec, argv: list[str]) -> int:
        tag = argv[1]
        engine = self.disk.engine
        try:
            await self._wait_until(
                lambda: engine.is_suspended(tag),
                f"wait_break {tag}: no request in flight can reach a breakpoint tagged '{tag}'",
            )
        except _Hang as hang:
            if "gave up" not in str(hang):
                raise
            try:
                engine.wait_break(tag, 0)  # the engine's message: pending, recent events
            except BreakpointTimeout as exc:
                raise _Hang(f"wait_break {tag}: {exc}") from None
        return 0


def main(
    argv: list[str] | None = None,
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    stdin: TextIO | None = None,
) -> int:
    """Entry point of ``blkdebug-io`` (and ``python -m pytest_blkdebug``).

    Returns the exit status: 0, or 1 when opening failed or any command
    failed (qemu-io's rule). ``stdout``/``stderr``/``stdin`` default to the
    process's streams; tests pass their own to run it in-process.
    """
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    parser = _parser()
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    except _UsageError as exc:
        print(f"{PROG}: {exc}\nTry '{PROG} --help' for more information.", file=err)
        return 1
    if args.help:
        out.write(parser.format_help())
        return 0
    if args.format != "raw":
        print(
            f"{PROG}: image format '{args.format}' is not supported: {PROG} works on raw "
            "images only (qcow2's metadata events come from your own code's disk.event())",
            file=err,
        )
        return 1
    if args.cache not in CACHE_MODES:
        print(f"{PROG}: Invalid cache option: {args.cache}", file=err)
        return 1
    if args.cache != "writeback":
        print(
            f"{PROG}: cache mode '{args.cache}' is not supported: {PROG} always behaves "
            "as qemu-io -t writeback (other modes add flushes that change which events "
            "fire)",
            file=err,
        )
        return 1
    if args.wait_timeout <= 0:
        print(f"{PROG}: --wait-timeout must be positive, not {args.wait_timeout:g}", file=err)
        return 1
    if not args.filename:
        print(
            f"{PROG}: missing FILENAME (blkdebug:RULES:IMAGE, blkdebug::IMAGE or IMAGE)\n"
            f"Try '{PROG} --help' for more information.",
            file=err,
        )
        return 1
    events = [name.strip() for chunk in args.events for name in chunk.split(",") if name.strip()]
    try:
        EventRegistry(events)
    except RuleError as exc:
        print(f"{PROG}: --events: {exc}", file=err)
        return 1
    try:
        disk, over_blkdebug = open_disk(args.filename, err, events)
    except (OpenError, RuleError) as exc:
        print(f"{PROG}: can't open device {args.filename}: {exc}", file=err)
        return 1
    commands = args.cmd
    if not commands:
        source = stdin if stdin is not None else sys.stdin
        commands = [line.rstrip("\r\n") for line in source]
    try:
        session = Session(disk, over_blkdebug, out, err, args.wait_timeout, args.sync_via == "aio")
        try:
            status = asyncio.run(session.run(commands))
        finally:
            session.detach()
        if args.report:
            out.write(format_report(disk) + "\n")
    finally:
        disk.close()
    out.flush()
    return status
