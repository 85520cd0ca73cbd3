"""A disk image wrapped by the injection engine.

``Disk`` behaves like QEMU's raw format over blkdebug over a file, in
writeback cache mode: each operation raises the events QEMU raises, in QEMU's
order, checks the armed rules at the point QEMU checks them, and only then
touches the image. What each operation does is written once, in the request
path (``path.py``); ``Disk`` is its blocking view (a request that waits at a
breakpoint or a delay blocks its thread) and ``disk.aio`` its asyncio view.
"""

from __future__ import annotations

import errno
import io
import operator
import os
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from ..nbd.server import DEFAULT_MAX_CONNECTIONS, NBDExport
from . import path as request_path
from .backend import DiskBackend
from .engine import Engine, Hold, RuleStatus, RuleView, StateChange, TraceEntry
from .events import EventRegistry, register_events
from .image import Extent, Image, copy_sparse, create_file, extents
from .limits import MAX_OFFSET, check_timeout
from .path import OnHold, Request, run
from .rules import Rule
from .sizes import parse_size

__all__ = ["Disk", "DiskFile", "Extent", "create_image", "extents"]

if TYPE_CHECKING:
    from .aio import AsyncDisk
    from .crash import Recording

DEFAULT_HOLD_TIMEOUT = 60.0
DEFAULT_WAIT_TIMEOUT = 5.0
T = TypeVar("T")


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
        on_close: Callable[[Disk], object] | None = None,
    ) -> None:
        self.path = os.fspath(path)
        #: Called once, with the disk, after it closed: lets an owner (a crash
        #: state's copy, say) clean up after a Disk without subclassing it.
        self.on_close = on_close
        # Every argument is checked and the file opened before a shared
        # engine is touched: a disk that fails to open leaves no rule there.
        if engine is not None and seed is not None and seed != engine.seed:
            raise ValueError(f"seed={seed}: the shared engine already has seed {engine.seed}")
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
        try:
            #: The addressable size. Usually the file's size; a larger ``size``
            #: suits files that grow (a database's journal): past the file's end
            #: reads give zeroes and writes extend the file.
            self.size = self.image.size() if size is None else size
            if engine is None:
                engine = Engine(rules, events=events, seed=seed)
            else:
                register_events(engine, events)
                engine.add_rules(rules)
        except BaseException:
            self.image.discard()  # no request used it: free the descriptor now
            raise
        self.engine = engine
        self.image.limit = self.size
        #: Set by ``close()`` (``closed`` reads it): requests waiting out an
        #: injected delay stop waiting.
        self._closing = threading.Event()
        #: This disk's requests waiting at breakpoints (the request path adds
        #: and removes them; ``close()`` resumes them).
        self.holds: set[Hold] = set()
        self._aio: AsyncDisk | None = None
        # The fast path's test (path.quiet), kept current by the engine.
        self._read_gate = engine.gate(request_path.READ)
        self._write_gate = engine.gate(request_path.WRITE)
        engine.attach(self)
        if engine.recorders:  # a disk opened while recording (crash.py)
            engine.file_op("open", self.path, disk=self)
        if not engine.opened:
            engine.opened = True
            try:
                self._run(request_path.fire(self, "none", "open"))
            except BaseException:  # held at a breakpoint nobody resumed
                self.close()
                raise

    # -- construction --------------------------------------------------------

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        size: int | str,
        *,
        template: str | os.PathLike[str] | None = None,
        rules: Iterable[Rule] = (),
        events: Iterable[str] = (),
        engine: Engine | None = None,
        readonly: bool = False,
        durable: bool = False,
        hold_timeout: float = DEFAULT_HOLD_TIMEOUT,
        wait_timeout: float = DEFAULT_WAIT_TIMEOUT,
        seed: int | None = None,
    ) -> Disk:
        """Create (or overwrite) a sparse raw image of ``size`` bytes and open it.

        ``template`` copies a prepared image instead (reflink or sparse copy)
        and then sets its size; a template that is the image itself (same
        file, a link to it) is refused rather than wiped. The other keywords
        are the constructor's.
        """
        target = create_image(path, parse_size(size), template)
        return cls(
            target,
            rules=rules,
            events=events,
            engine=engine,
            readonly=readonly,
            durable=durable,
            hold_timeout=hold_timeout,
            wait_timeout=wait_timeout,
            seed=seed,
        )

    @classmethod
    def open(
        cls,
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
    ) -> Disk:
        """Open an existing image (its size is the file's size unless ``size``
        says more: reads past the file's end give zeroes, writes extend it)."""
        return cls(
            path,
            rules=rules,
            events=events,
            engine=engine,
            readonly=readonly,
            durable=durable,
            hold_timeout=hold_timeout,
            wait_timeout=wait_timeout,
            size=size,
            seed=seed,
        )

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

    # -- the request path (path.py), driven in this thread ---------------------

    def _run(self, request: Request[T], on_hold: OnHold | None = None) -> T:
        __tracebackhide__ = True
        return run(request, hold_timeout=self.hold_timeout, on_hold=on_hold, closing=self._closing)

    def read(self, offset: int, length: int, on_hold: OnHold | None = None) -> bytes:
        """Read ``length`` bytes at ``offset`` (events: read_aio).

        ``on_hold(hold)`` is called before the request blocks at a
        breakpoint (servers hand their connection on; see ``path.run``).
        Pass it by keyword; it is not keyword-only because a keyword-only
        parameter costs every call ~40 ns in CPython 3.11 (no specialised call).
        """
        __tracebackhide__ = True
        image = self.image
        check = self._read_gate.check
        if (
            type(offset) is int
            and type(length) is int
            and offset >= 0
            and length >= 0
            and offset + length <= image.limit  # -1 once closed
            and (check is None or not check(offset, length))
        ):
            # The fast path (path.quiet): nothing can apply, so the host I/O
            # is all there is (Image.pread inlined; ``image`` is held while
            # its fd is used, see image.py). A short read takes the full
            # path, which loops.
            data = os.pread(image.fd, length, offset)
            if len(data) == length:
                return data
        return self._run(request_path.read(self, offset, length), on_hold)

    def write(
        self,
        offset: int,
        data: bytes | bytearray | memoryview,
        on_hold: OnHold | None = None,
    ) -> None:
        """Write ``data`` at ``offset`` (events: write_aio, pwritev, pwritev_done;
        ``on_hold``: see ``read``)."""
        __tracebackhide__ = True
        image = self.image
        check = self._write_gate.check
        length = len(data) if type(data) is bytes else memoryview(data).nbytes
        if (
            type(offset) is int
            and offset >= 0
            and offset + length <= image.limit  # -1 once closed
            and not image.readonly
            and (check is None or not check(offset, length))
        ):
            # The fast path (path.quiet): store (Image.pwrite inlined), then
            # the dirty marks, failed or not (path.durability).
            try:
                if os.pwrite(image.fd, data, offset) < length:
                    image.pwrite(offset, data)  # a short write: write it all
            finally:
                image.dirty_event = image.dirty_check = True
            recorders = self.engine.recorders
            if recorders:  # crash.py (path.stored, inlined): what reached the image
                stored = data if type(data) is bytes else bytes(data)  # not the caller's buffer
                for recorder in recorders:
                    recorder.on_store(self, "write", offset, length, stored)
            return
        self._run(request_path.write(self, offset, data), on_hold)

    def write_zeroes(
        self, offset: int, length: int, *, unmap: bool = True, on_hold: OnHold | None = None
    ) -> None:
        """Zero a range (events: pwritev_zero, pwritev_done). ``unmap=False``
        keeps the range allocated (NBD's NO_HOLE; QEMU without MAY_UNMAP)."""
        __tracebackhide__ = True
        self._run(request_path.write_zeroes(self, offset, length, unmap), on_hold)

    def discard(self, offset: int, length: int, *, on_hold: OnHold | None = None) -> None:
        """Discard a range; it reads as zeroes afterwards (no event)."""
        __tracebackhide__ = True
        self._run(request_path.discard(self, offset, length), on_hold)

    def flush(self, *, on_hold: OnHold | None = None) -> None:
        """flush_to_os; if anything was written since the last good flush,
        flush_to_disk and the flush check; a failed flush stays dirty."""
        __tracebackhide__ = True
        self._run(request_path.flush(self), on_hold)

    def block_status(
        self, offset: int, length: int, *, on_hold: OnHold | None = None
    ) -> list[Extent]:
        """Which parts of a range hold data and which are holes (no event)."""
        __tracebackhide__ = True
        return self._run(request_path.block_status(self, offset, length), on_hold)

    def event(self, name: str) -> None:
        """Announce your own I/O: raise ``name`` (registered events only)."""
        __tracebackhide__ = True
        self._run(request_path.event(self, name))

    @property
    def dirty(self) -> bool:
        """Whether the next flush has work to do (and so will be checked)."""
        return self.image.dirty_event

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
        if self.closed:
            raise self.image.closed_error()
        return self.image.fd

    # -- lifetime --------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closing.is_set()

    def close(self) -> list[tuple[str, Hold]]:
        """Close the image, first resuming whatever is still suspended.

        Returns the (tag, hold) entries it had to resume, so callers (the
        pytest plugin) can report a forgotten breakpoint. The image stays.
        """
        if self._closing.is_set():
            return []
        self._closing.set()  # closed; requests in an injected delay stop waiting
        image = self.image
        image.limit = -1  # the range check refuses every new request
        # Drop our reference: the descriptor number is freed once no request
        # in flight holds the image (image.py says why).
        self.image = Image.closed_stub(self.path, self.readonly)
        released = self.engine.release(list(self.holds))
        released += self.engine.detach()
        image.close()
        if self.on_close is not None:
            self.on_close(self)
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
    fd = create_file(target)
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
        self._checkClosed()
        view = memoryview(buffer).cast("B")
        if view.readonly:  # refused before the read, as a file does
            raise TypeError(
                f"readinto() argument must be read-write bytes-like object, "
                f"not {type(buffer).__name__}"
            )
        n = min(len(view), self._disk.size - self._pos)
        if n <= 0:  # at or past the end: end of file, as for any file
            return 0
        data = self._disk.read(self._pos, n)
        view[:n] = data
        self._pos += n
        return n

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        __tracebackhide__ = True
        self._checkClosed()
        n = memoryview(data).nbytes
        self._disk.write(self._pos, data)
        self._pos += n
        return n

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        """As a file's: an int offset (``__index__`` too), whence SEEK_SET,
        SEEK_CUR or SEEK_END; ValueError once closed."""
        self._checkClosed()
        offset = operator.index(offset)
        if whence == os.SEEK_SET:
            base = 0
        elif whence == os.SEEK_CUR:
            base = self._pos
        elif whence == os.SEEK_END:
            base = self._disk.size
        else:
            raise ValueError(f"invalid whence ({whence!r}, should be 0, 1 or 2)")
        if base + offset < 0:
            raise OSError(errno.EINVAL, "negative seek position")
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        self._checkClosed()
        return self._pos

    def fileno(self) -> int:
        """There is none: a descriptor would take I/O around the engine."""
        raise io.UnsupportedOperation(
            "a DiskFile has no descriptor of its own (an fsync or a read through "
            "one would go around the engine): call its sync() for the disk's "
            "flush; disk.fileno() is the image itself, behind the engine"
        )

    def sync(self) -> None:
        """The disk's flush, with its events and check (what ``os.fsync``
        is for a real file)."""
        __tracebackhide__ = True
        self._checkClosed()
        self._disk.flush()
