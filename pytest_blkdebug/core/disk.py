"""A disk image wrapped by the injection engine.

``Disk`` behaves like QEMU's raw format over blkdebug over a file, in
writeback cache mode: each operation raises the events QEMU raises, in QEMU's
order, checks the armed rules at the point QEMU checks them, and only then
touches the image. The sequences are data (the ``*_SEQ`` constants) so they
can be read in one place and shared by the sync and asyncio (``aio.py``) views.
"""

from __future__ import annotations

import errno
import io
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..nbd.server import DEFAULT_MAX_CONNECTIONS, NBDExport
from .backend import DiskBackend
from .engine import Engine, Hold, RuleStatus, RuleView, StateChange, TraceEntry
from .errors import BreakpointTimeout, InjectedError
from .events import BLOCK_STATUS, DISCARD, FLUSH, READ, WRITE, WRITE_ZEROES, EventRegistry
from .image import ClosedError, Extent, Image, copy_sparse, extents
from .limits import MAX_OFFSET, check_request, check_timeout
from .rules import Rule
from .sizes import parse_size

__all__ = ["Disk", "DiskFile", "Extent", "create_image", "extents"]

if TYPE_CHECKING:
    from .aio import AsyncDisk
    from .crash import Recording

DEFAULT_HOLD_TIMEOUT = 60.0
DEFAULT_WAIT_TIMEOUT = 5.0


@dataclass(frozen=True)
class Sequence:
    """What one operation does around its request check.

    ``before`` events are raised, then the request is checked as ``iotype``,
    then (on success) the image is touched, then ``after`` events are raised
    whether or not the request failed. ``dirties`` marks operations after
    which a flush has work to do, failed or not (QEMU bumps its write
    generation in either case, once the request is over: after the ``after``
    events, so a flush beside a write held at ``pwritev_done`` finds the
    disk clean).
    """

    operation: str
    before: tuple[str, ...]
    iotype: int
    after: tuple[str, ...] = ()
    dirties: bool = False


READ_SEQ = Sequence("read", ("read_aio",), READ)
WRITE_SEQ = Sequence("write", ("write_aio", "pwritev"), WRITE, ("pwritev_done",), True)
WRITE_ZEROES_SEQ = Sequence(
    "write_zeroes", ("pwritev_zero",), WRITE_ZEROES, ("pwritev_done",), True
)
DISCARD_SEQ = Sequence("discard", (), DISCARD, (), True)
BLOCK_STATUS_SEQ = Sequence("block_status", (), BLOCK_STATUS)
#: flush: ``flush_to_os`` always; only when dirty ``flush_to_disk`` and the check.
FLUSH_TO_OS, FLUSH_TO_DISK = "flush_to_os", "flush_to_disk"


class Disk:
    """An image file plus the engine that decides which requests fail.

    Open with :meth:`create` (a new sparse image) or :meth:`open` (an existing
    one). Several disks may share one engine (``engine=``), so rules and state
    span files, as a database and its journal do.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        rules: Iterable[Rule] = (),
        events: Iterable[str] = (),
        engine: Engine | None = None,
        readonly: bool = False,
        durable: bool = False,
        hold_timeout: float = DEFAULT_HOLD_TIMEOUT,
        wait_timeout: float = DEFAULT_WAIT_TIMEOUT,
        size: int | None = None,
        seed: int | None = None,
    ) -> None:
        self.path = os.fspath(path)
        if engine is None:
            engine = Engine(rules, events=events, seed=seed)
        elif seed is not None and seed != engine.seed:
            raise ValueError(f"seed={seed}: the shared engine already has seed {engine.seed}")
        else:
            for name in events:
                engine.registry.register(name)
            engine.add_rules(rules)
        self.engine = engine
        self.readonly = readonly
        #: fdatasync on a successful flush (off: the page cache is all any
        #: reader in a test can see, and syncing costs milliseconds).
        self.durable = durable
        self.hold_timeout = check_timeout("hold_timeout", hold_timeout)
        self.wait_timeout = check_timeout("wait_timeout", wait_timeout)
        if size is not None and not (isinstance(size, int) and 0 <= size <= MAX_OFFSET):
            raise ValueError(f"size must be an int from 0 to 2**63 - 1, got {size!r}")
        #: The host file (descriptor, whole-length I/O, the guard against close).
        self.image = Image(self.path, readonly=readonly)
        #: The addressable size. Usually the file's size; a larger ``size``
        #: suits files that grow (a database's journal): past the file's end
        #: reads give zeroes and writes extend the file.
        self.size = self.image.size() if size is None else size
        # Requests must end at or before _limit; close() sets it to -1 so the
        # range check, which every request pays anyway, also catches closed disks.
        self._limit = self.size
        # QEMU tracks dirtiness per node: the raw format node decides whether
        # flush raises flush_to_disk; the blkdebug node whether the flush is
        # checked. They differ only after a zero-length discard, which
        # dirties the format node without reaching blkdebug.
        self._dirty_event = False
        self._dirty_check = False
        self._closed = False
        self._holds: set[Hold] = set()  # this disk's requests waiting at breakpoints
        self._aio: AsyncDisk | None = None
        engine.attach()
        engine.disks.add(self)
        if engine.recorders:  # a disk opened while recording (crash.py)
            engine.file_op("open", self.path, disk=self)
        if not engine.opened:
            engine.opened = True
            self._wait(engine.fire("none", "open"))

    # -- construction --------------------------------------------------------

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        size: int | str,
        *,
        template: str | os.PathLike[str] | None = None,
        **kwargs: object,
    ) -> Disk:
        """Create (or overwrite) a sparse raw image of ``size`` bytes and open it.

        ``template`` copies a prepared image instead (reflink or sparse copy)
        and then sets its size.
        """
        target = create_image(path, parse_size(size), template)
        return cls(target, **kwargs)  # type: ignore[arg-type]

    @classmethod
    def open(cls, path: str | os.PathLike[str], **kwargs: object) -> Disk:
        """Open an existing image (its size is the file's size)."""
        return cls(path, **kwargs)  # type: ignore[arg-type]

    # -- engine views --------------------------------------------------------

    @property
    def state(self) -> int:
        return self.engine.state

    @property
    def history(self) -> list[StateChange]:
        return self.engine.history

    @property
    def rules(self) -> list[RuleStatus]:
        return self.engine.rules

    def rule(self, name: str) -> RuleView:
        return self.engine.rule(name)

    @property
    def trace(self) -> list[TraceEntry]:
        return self.engine.trace

    @property
    def registry(self) -> EventRegistry:
        return self.engine.registry

    # -- the request path ----------------------------------------------------

    def _wait(self, hold: Hold | None, done: bool = False) -> None:
        """Block this thread while a breakpoint holds its request.

        ``done``: the request's outcome is settled (it is past its host I/O),
        so a close that resumes it lets it end as it would have.
        """
        __tracebackhide__ = True
        if hold is None:
            return
        if threading.active_count() == 1:
            # Nobody else can ever call resume(): fail now, not after hold_timeout.
            self.engine.abandon(hold)
            raise BreakpointTimeout(
                f"{hold.operation} held at breakpoint {', '.join(map(repr, hold.tags))} "
                f"on event {hold.event!r} can never be resumed: it runs in the process's "
                "only thread, so nothing can call resume() (resume it from another "
                "thread, or issue the request through disk.aio)"
            )
        self._holds.add(hold)
        try:
            released = hold.wait(self.hold_timeout)
        finally:
            self._holds.discard(hold)
        self._after_hold(hold, released, done)

    def _after_hold(self, hold: Hold, released: bool, done: bool = False) -> None:
        __tracebackhide__ = True
        if self._closed:
            if done:  # its data is on disk (or its error decided): end as it would have
                return
            # close() resumed it before its host I/O: do not touch the image.
            raise ClosedError(
                f"disk {self.path} was closed while its {hold.operation} was held at "
                f"breakpoint {', '.join(map(repr, hold.tags))}"
            )
        if not released:
            self.engine.abandon(hold)
            raise BreakpointTimeout(
                f"{hold.operation} held at breakpoint {', '.join(map(repr, hold.tags))} "
                f"on event {hold.event!r} was not resumed within {self.hold_timeout:g} s"
            )

    def _bad_request(self, operation: str, offset: object, length: object) -> Exception:
        """The error for a request that failed the range check: closed disk
        (ValueError), a bad type or a value past 2**63 (TypeError/ValueError
        naming the argument), or outside the image (EIO, as QEMU)."""
        if self._closed:
            return self.image.closed_error()
        try:
            offset, length = check_request(offset, length)
        except (TypeError, ValueError) as exc:
            return exc
        if 0 <= offset and 0 <= length and offset + length <= self._limit:
            # An int subclass (numpy, IntEnum...) that is in range: refuse it
            # rather than guess; callers pass plain ints.
            return TypeError(
                f"offset and length must be int, not {type(offset).__name__} "
                f"and {type(length).__name__}"
            )
        return OSError(
            errno.EIO,
            f"{os.strerror(errno.EIO)}: {operation} of {length} bytes at "
            f"offset {offset} is outside the {self.size}-byte image {self.path}",
        )

    def _refuse_readonly(self, operation: str, offset: int, length: int) -> None:
        __tracebackhide__ = True
        if self.readonly:
            raise OSError(
                errno.EPERM,
                f"{os.strerror(errno.EPERM)}: {operation} of {length} bytes at offset "
                f"{offset} refused: disk {self.path} is read-only",
            )

    def _begin(self, seq: Sequence, offset: int, length: int) -> None:
        """Range check, ``before`` events, request check. Raises on failure."""
        __tracebackhide__ = True
        if (
            type(offset) is not int
            or type(length) is not int
            or offset < 0
            or length < 0
            or offset + length > self._limit
        ):
            raise self._bad_request(seq.operation, offset, length)
        if seq.dirties:
            self._refuse_readonly(seq.operation, offset, length)
        engine = self.engine
        for event in seq.before:
            if event in engine.live_events:
                self._wait(engine.fire(event, seq.operation))
        slot = engine.check(seq.iotype, offset, length)
        if slot is not None and slot.errno:
            raise InjectedError(slot.errno, slot.rule, seq.operation, offset, length)

    def _end(self, seq: Sequence) -> None:
        __tracebackhide__ = True
        engine = self.engine
        try:
            for event in seq.after:
                if event in engine.live_events and not self._closed:
                    self._wait(engine.fire(event, seq.operation), done=True)
        finally:
            if seq.dirties:
                self._dirty_event = self._dirty_check = True

    # read and write are READ_SEQ and WRITE_SEQ unrolled by hand: they are the
    # hot path, and a loop over a one-event tuple costs a tenth of a read.

    def read(self, offset: int, length: int) -> bytes:
        """Read ``length`` bytes at ``offset`` (events: read_aio)."""
        __tracebackhide__ = True
        if (
            type(offset) is not int
            or type(length) is not int
            or offset < 0
            or length < 0
            or offset + length > self._limit
        ):
            raise self._bad_request("read", offset, length)
        engine = self.engine
        if "read_aio" in engine.live_events:
            hold = engine.fire("read_aio", "read")
            if hold is not None:
                self._wait(hold)
        match = engine.matchers[READ]
        if match is not None and match(offset, length):
            slot = engine.decide(READ, offset, length)
            if slot is not None and slot.errno:
                raise InjectedError(slot.errno, slot.rule, "read", offset, length)
        return self.image.pread(offset, length)

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` at ``offset`` (events: write_aio, pwritev, pwritev_done)."""
        __tracebackhide__ = True
        length = len(data) if type(data) is bytes else memoryview(data).nbytes
        if type(offset) is not int or offset < 0 or offset + length > self._limit:
            raise self._bad_request("write", offset, length)
        if self.readonly:
            self._refuse_readonly("write", offset, length)
        engine = self.engine
        live = engine.live_events
        reached = False
        try:
            if "write_aio" in live:
                hold = engine.fire("write_aio", "write")
                if hold is not None:
                    self._wait(hold)
            if "pwritev" in live:
                hold = engine.fire("pwritev", "write")
                if hold is not None:
                    self._wait(hold)
            reached = True
            match = engine.matchers[WRITE]
            if match is not None and match(offset, length):
                slot = engine.decide(WRITE, offset, length)
                if slot is not None and slot.errno:
                    raise InjectedError(slot.errno, slot.rule, "write", offset, length)
            self.image.pwrite(offset, data)
            if engine.recorders:  # crash.py: what reached the image
                for recorder in engine.recorders:
                    recorder.on_store(self, "write", offset, length, data)  # type: ignore[arg-type]
            if engine.watches_stores:  # bad sectors heal when written
                engine.stored(offset, length)
        finally:
            try:
                if "pwritev_done" in engine.live_events and not self._closed:
                    hold = engine.fire("pwritev_done", "write")
                    if hold is not None:
                        self._wait(hold, done=True)
            finally:
                if reached:  # dirty once the request is over (see Sequence)
                    self._dirty_event = self._dirty_check = True

    def write_zeroes(self, offset: int, length: int, *, unmap: bool = True) -> None:
        """Zero a range (events: pwritev_zero, pwritev_done). ``unmap=False``
        keeps the range allocated (NBD's NO_HOLE; QEMU without MAY_UNMAP)."""
        __tracebackhide__ = True
        if self._skip_empty("write_zeroes", offset, length):
            return
        try:
            self._begin(WRITE_ZEROES_SEQ, offset, length)
            self.image.zero(offset, length, unmap=unmap)
            if self.engine.recorders:
                self._stored("write_zeroes", offset, length, None)
            if self.engine.watches_stores:
                self.engine.stored(offset, length)
        finally:
            self._end(WRITE_ZEROES_SEQ)

    def discard(self, offset: int, length: int) -> None:
        """Discard a range; it reads as zeroes afterwards (no event)."""
        __tracebackhide__ = True
        if self._skip_empty("discard", offset, length):
            return
        try:
            self._begin(DISCARD_SEQ, offset, length)
            self.image.zero(offset, length)
            if self.engine.recorders:
                self._stored("discard", offset, length, None)
            if self.engine.watches_stores:
                self.engine.stored(offset, length)
        finally:
            self._end(DISCARD_SEQ)

    def _skip_empty(self, operation: str, offset: int, length: int) -> bool:
        """Range-check a write-zeroes or discard; True if it is empty.

        QEMU's block layer finishes an empty one itself: nothing reaches
        blkdebug (no event, no check). An empty discard still moves the format
        node's write generation on, so the next flush raises flush_to_disk
        without being checked; an empty write-zeroes returns before that and
        leaves the disk as clean as it was (qemu-io 7.2, seen by the
        conformance tests).
        """
        __tracebackhide__ = True
        if (
            type(offset) is not int
            or type(length) is not int
            or offset < 0
            or length < 0
            or offset + length > self._limit
        ):
            raise self._bad_request(operation, offset, length)
        self._refuse_readonly(operation, offset, length)
        if length:
            return False
        if operation == "discard":
            self._dirty_event = True
        return True

    def _stored(self, operation: str, offset: int, length: int, data: object) -> None:
        """Tell the recordings (crash.py) what reached the image."""
        __tracebackhide__ = True
        for recorder in self.engine.recorders:
            recorder.on_store(self, operation, offset, length, data)  # type: ignore[arg-type]

    def flush(self) -> None:
        """flush_to_os; if anything was written since the last good flush,
        flush_to_disk and the flush check; a failed flush stays dirty."""
        __tracebackhide__ = True
        if self._closed:
            raise self._bad_request("flush", 0, 0)
        recorders = self.engine.recorders
        if not recorders:
            return self._flush()
        tokens = [(r, r.on_flush_begin(self)) for r in recorders]
        ok = False
        try:
            self._flush()
            ok = True
        finally:
            for recorder, token in tokens:
                recorder.on_flush_end(self, token, ok)

    def _flush(self) -> None:
        __tracebackhide__ = True
        engine = self.engine
        self._wait(engine.fire(FLUSH_TO_OS, "flush"))
        if self._dirty_event:
            self._wait(engine.fire(FLUSH_TO_DISK, "flush"))
        if self._dirty_check:
            slot = engine.check(FLUSH, 0, 0)
            if slot is not None and slot.errno:
                raise InjectedError(slot.errno, slot.rule, "flush", 0, 0)
        self._flushed()

    def _flushed(self) -> None:
        __tracebackhide__ = True
        if self._dirty_check and self.durable:
            self.image.sync()
        self._dirty_event = self._dirty_check = False

    def block_status(self, offset: int, length: int) -> list[Extent]:
        """Which parts of a range hold data and which are holes (no event)."""
        __tracebackhide__ = True
        self._begin(BLOCK_STATUS_SEQ, offset, length)
        return self.image.extents(offset, length)

    def event(self, name: str) -> None:
        """Announce your own I/O: raise ``name`` (registered events only)."""
        __tracebackhide__ = True
        if self._closed:
            raise self.image.closed_error()
        engine = self.engine
        engine.registry.check(name)
        if name not in engine.live_events:
            engine.note_event(name)  # fire() traces only events with rules
        self._wait(engine.fire(name, f"event {name}"))

    @property
    def dirty(self) -> bool:
        """Whether the next flush has work to do (and so will be checked)."""
        return self._dirty_event

    def record(self, **kwargs: Any) -> Recording:
        """``self.engine.record()``: log every disk of the engine (crash.py)."""
        return self.engine.record(**kwargs)

    # -- breakpoints ---------------------------------------------------------

    def break_on(self, event: str, tag: str) -> None:
        """Suspend the next request that raises ``event``, under ``tag``."""
        self.engine.break_on(event, tag)

    def resume(self, tag: str) -> None:
        """Resume the most recently suspended request with ``tag``."""
        self.engine.resume(tag)

    def remove_break(self, tag: str) -> None:
        """Drop pending breakpoints with ``tag`` and resume their requests."""
        self.engine.remove_break(tag)

    def wait_break(self, tag: str, timeout: float | None = None) -> None:
        """Return once a request is suspended under ``tag`` (or time out)."""
        limit = self.wait_timeout if timeout is None else check_timeout("timeout", timeout)
        self.engine.wait_break(tag, limit)

    def is_suspended(self, tag: str) -> bool:
        return self.engine.is_suspended(tag)

    # -- other views -----------------------------------------------------------

    @property
    def aio(self) -> AsyncDisk:
        """The same operations for asyncio callers (``await disk.aio.read(...)``)."""
        if self._aio is None:
            from .aio import AsyncDisk

            self._aio = AsyncDisk(self)
        return self._aio

    def fileobj(self) -> DiskFile:
        """An ``io.RawIOBase`` over the disk, for code that wants a file."""
        return DiskFile(self)

    def serve_nbd(
        self,
        *,
        socket_path: str | os.PathLike[str] | None = None,
        tcp: bool = False,
        host: str = "127.0.0.1",
        port: int = 0,
        name: str = "",
        readonly: bool = False,
        description: str | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        handshake_timeout: float = 30.0,
    ) -> NBDExport:
        """Export this disk over NBD until the export is closed (docs/nbd.md).

        The NBD server sits below the core and serves any backend; this
        disk is served through ``core.backend.DiskBackend``.
        """
        return NBDExport(
            DiskBackend(self),
            socket_path=socket_path,
            tcp=tcp,
            host=host,
            port=port,
            name=name,
            readonly=readonly,
            description=description,
            max_connections=max_connections,
            handshake_timeout=handshake_timeout,
        )

    def fileno(self) -> int:
        """The image's descriptor, for reading it behind the engine's back
        (ValueError once the disk is closed, as for a closed file)."""
        if self._closed:
            raise self.image.closed_error()
        return self.image.fd

    # -- lifetime --------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> list[tuple[str, Hold]]:
        """Close the image, first resuming whatever is still suspended.

        Returns the (tag, hold) entries it had to resume, so callers (the
        pytest plugin) can report a forgotten breakpoint. The image stays.
        """
        if self._closed:
            return []
        self._closed = True
        self._limit = -1
        released = self.engine.release(list(self._holds))
        released += self.engine.detach()
        self.image.close()  # waits for host calls in flight: none may hit a reused fd
        return released

    def __enter__(self) -> Disk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Disk {self.path} size={self.size} state={self.state}>"


def create_image(
    path: str | os.PathLike[str], size: int, template: str | os.PathLike[str] | None = None
) -> str:
    """Make a raw image of ``size`` bytes at ``path`` (replacing any file there):
    sparse, so a 1 GiB image costs one ``ftruncate``; or a cheap copy of
    ``template`` (reflink or sparse copy) set to ``size``."""
    target = os.fspath(path)
    if template is not None:
        copy_sparse(os.fspath(template), target)
        os.truncate(target, size)
        return target
    fd = os.open(target, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)
    return target


class DiskFile(io.RawIOBase):
    """A seekable binary file over a Disk; every read and write goes through
    the engine. ``flush()`` is a no-op as for any unbuffered file; call
    ``sync()`` for the disk's flush (events, check)."""

    def __init__(self, disk: Disk) -> None:
        self._disk = disk
        self._pos = 0

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return not self._disk.readonly

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        __tracebackhide__ = True
        view = memoryview(buffer).cast("B")
        n = min(len(view), self._disk.size - self._pos)
        if n <= 0:  # at or past the end: end of file, as for any file
            return 0
        data = self._disk.read(self._pos, n)
        view[:n] = data
        self._pos += n
        return n

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        __tracebackhide__ = True
        n = memoryview(data).nbytes
        self._disk.write(self._pos, data)
        self._pos += n
        return n

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._disk.size}[whence]
        if base + offset < 0:
            raise OSError(errno.EINVAL, "negative seek position")
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def sync(self) -> None:
        __tracebackhide__ = True
        self._disk.flush()
