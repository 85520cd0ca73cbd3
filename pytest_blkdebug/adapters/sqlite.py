"""SQLite on Disks: an APSW VFS whose every file is a ``Disk`` on one engine.

Why: SQLite's promise is that a failed commit leaves the database as it was
and a successful one survives. The way to test code that relies on it (and
the promise itself) is to make the disk fail at the moment that matters: the
journal's sync, the first database write of a commit, the WAL append. This
module puts all of SQLite's file I/O through the injection engine, so a rule
file can say exactly that.

Design
------
* **One engine, many files.** ``DiskVFS`` is an ``apsw.VFS``. Each file SQLite
  opens (the database, its rollback journal, its WAL, temporary files) is a
  ``Disk`` on the VFS's single ``Engine``, so state and armed rules span the
  files: a set-state rule on the journal's sync can arm a rule that fails the
  database write that follows it.
* **Events tell the files apart.** Before every request the file raises
  ``sqlite_<kind>_<operation>`` (``EVENTS``): kind ``db``, ``journal``
  (rollback and super-journals), ``wal`` or ``temp`` (temporary databases,
  statement and temporary journals); operation ``read``, ``write``, ``sync``,
  ``truncate`` or ``delete``. Then the ``Disk`` does its own QEMU sequence
  (``read_aio``; ``write_aio``, ``pwritev``, ``pwritev_done``; ``flush_to_os``,
  ``flush_to_disk``), so QEMU-style rules work too. A rule on
  ``sqlite_journal_sync`` with ``iotype = "flush"`` and ``once`` fails the
  journal's sync and nothing else.
* **Files grow; a Disk does not.** A ``Disk`` has a fixed size. Each file is a
  ``Disk`` of ``capacity`` bytes (1 GiB by default, sparse, so it costs
  nothing) whose *logical* size is the image file's own ``st_size``: the
  image is opened at full capacity and then cut back to the logical size, and
  the Disk keeps its capacity as its limit. Writes past the end extend the
  file (``pwrite``), reads past the end return what SQLite expects from a
  short read, ``xFileSize`` is ``fstat``, and ``xTruncate`` is a ``discard``
  of the tail (so it is checked, iotype ``discard``) followed by
  ``ftruncate``. Because the logical size is the file's size, every image is
  a plain SQLite file on disk under its usual name (``app.db``,
  ``app.db-journal``, ``app.db-wal``): reopening, another VFS, or Python's
  own ``sqlite3`` module read it as it is, with nothing to reconstruct. A
  write past ``capacity`` fails with ENOSPC, like a full device.
* **Deletes are checked as a discard.** ``xDelete`` raises
  ``sqlite_<kind>_delete`` and then discards the whole file through the Disk
  before unlinking it, so an inject-error rule armed by that event fails the
  delete (SQLITE_IOERR_DELETE). In DELETE journal mode the journal's deletion
  *is* the commit, which makes this event the natural "committed" marker for
  set-state rules.
* **Errors become SQLite's codes.** An ``OSError`` from the Disk (an
  ``InjectedError`` or a real one) becomes the APSW exception for the
  extended code the unix VFS would return: ``SQLITE_IOERR_READ``,
  ``SQLITE_IOERR_WRITE``, ``SQLITE_IOERR_FSYNC``, ``SQLITE_IOERR_TRUNCATE``,
  ``SQLITE_IOERR_DELETE``; ENOSPC/EDQUOT on a write or truncate become
  ``SQLITE_FULL``. Each failure is also recorded in ``DiskVFS.errors`` with
  the file, the operation and the rule that decided it, since SQLite's own
  message ("disk I/O error") cannot carry that.
* **Locks are in-process.** The VFS implements SQLite's lock levels between
  connections of this process (``apsw.BusyError`` on conflict); it has no
  shared-memory methods, so WAL mode runs with ``locking_mode=EXCLUSIVE``,
  which ``DiskVFS.connect`` sets by itself for ``journal_mode="wal"`` and for
  databases whose header says WAL.
* **xSync is ``Disk.flush()``**: ``flush_to_os``, and when anything was
  written since the last good flush, ``flush_to_disk`` and the flush check.
  Images are not fdatasync'ed unless the Disk is ``durable``: in a test the
  page cache is all any reader sees.

* **Crash recording sees the files come and go.** While a recording runs
  (``engine.record()``, ``core/crash.py``), the VFS reports each file it
  creates, truncates and deletes, and each directory sync, through
  ``engine.file_op``: ``xDelete`` syncs the directory when SQLite asks
  (``syncDir``, set by ``synchronous=EXTRA``), and the first ``xSync`` of a
  journal or WAL opened with ``SQLITE_OPEN_CREATE`` syncs it too, as the unix
  VFS does. So every file (database, journal, WAL) crashes at one point of
  one order, and a created or deleted file is durable only after its
  directory sync. Temporary files are reported as such and not restored.

Entry points: ``open_database(directory, name, engine=...)`` returns a
``Connection`` (an ``apsw.Connection`` with ``.vfs``) whose VFS is closed and
unregistered with it; ``DiskVFS`` is a context manager for several
connections on one engine. ``register_events`` and the
``pytest_blkdebug_register_events`` hook implementation make the event names
known to an engine or to the pytest plugin.
"""

from __future__ import annotations

import errno
import itertools
import os
import tempfile
import threading
import weakref
from collections import Counter
from collections.abc import Iterable
from typing import Any, NamedTuple

import pytest

try:
    import apsw
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "pytest_blkdebug.adapters.sqlite needs APSW: pip install 'pytest-blkdebug[sqlite]'"
    ) from exc

from ..core.disk import Disk
from ..core.engine import Engine
from ..core.events import EventRegistry
from ..core.events import register_events as _register_events
from ..core.rules import Rule
from ..harness import assemble_engine

__all__ = [
    "DEFAULT_CAPACITY",
    "EVENTS",
    "KINDS",
    "OPERATIONS",
    "Connection",
    "DiskVFS",
    "FileError",
    "event_name",
    "open_database",
    "pytest_blkdebug_register_events",
    "register_events",
]

#: The kinds of file SQLite opens, as named in event names.
KINDS: tuple[str, ...] = ("db", "journal", "wal", "temp")
#: The operations that raise an event (xFileSize, locks and xClose do not).
OPERATIONS: tuple[str, ...] = ("read", "write", "sync", "truncate", "delete")
#: Every event this adapter raises: ``sqlite_<kind>_<operation>``.
EVENTS: tuple[str, ...] = tuple(f"sqlite_{k}_{op}" for k in KINDS for op in OPERATIONS)
#: Largest size a file may reach; a write beyond it fails with ENOSPC.
DEFAULT_CAPACITY = 1 << 30

_KIND_BY_FLAG = (
    (apsw.SQLITE_OPEN_MAIN_DB, "db"),
    (apsw.SQLITE_OPEN_MAIN_JOURNAL, "journal"),
    (apsw.SQLITE_OPEN_SUPER_JOURNAL, "journal"),
    (apsw.SQLITE_OPEN_WAL, "wal"),
    (apsw.SQLITE_OPEN_TEMP_DB, "temp"),
    (apsw.SQLITE_OPEN_TEMP_JOURNAL, "temp"),
    (apsw.SQLITE_OPEN_SUBJOURNAL, "temp"),
    (apsw.SQLITE_OPEN_TRANSIENT_DB, "temp"),
)
_IOERR_BY_OPERATION = {
    "read": apsw.SQLITE_IOERR_READ,
    "write": apsw.SQLITE_IOERR_WRITE,
    "sync": apsw.SQLITE_IOERR_FSYNC,
    "truncate": apsw.SQLITE_IOERR_TRUNCATE,
    "delete": apsw.SQLITE_IOERR_DELETE,
}
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_LOCK_NONE, _LOCK_SHARED, _LOCK_RESERVED, _LOCK_PENDING, _LOCK_EXCLUSIVE = range(5)
_names = itertools.count(1)


def event_name(kind: str, operation: str) -> str:
    """``("journal", "sync")`` -> ``"sqlite_journal_sync"`` (names checked)."""
    if kind not in KINDS or operation not in OPERATIONS:
        raise ValueError(
            f"no SQLite event for kind {kind!r} and operation {operation!r} "
            f"(kinds: {', '.join(KINDS)}; operations: {', '.join(OPERATIONS)})"
        )
    return f"sqlite_{kind}_{operation}"


def register_events(target: EventRegistry | Engine | Disk) -> tuple[str, ...]:
    """Register ``EVENTS`` with a registry, or the registry of an engine or disk."""
    return _register_events(target, EVENTS)


@pytest.hookimpl(optionalhook=True)
def pytest_blkdebug_register_events(config: pytest.Config) -> list[str]:
    """The plugin hook: list this module in ``pytest_plugins`` (conftest.py) and
    every disk of the session accepts the SQLite events."""
    return list(EVENTS)


class FileError(NamedTuple):
    """One failed file operation, as SQLite saw it.

    ``rule`` is the name of the rule that decided it (``None`` for a real
    error or a write past the capacity) and ``code`` the SQLite extended
    result code the VFS returned.
    """

    kind: str
    operation: str
    path: str
    error: OSError
    code: int

    @property
    def rule(self) -> str | None:
        return getattr(self.error, "rule", None)


def _kind_for_flags(flags: int) -> str:
    for flag, kind in _KIND_BY_FLAG:
        if flags & flag:
            return kind
    return "temp"


def _kind_for_path(path: str) -> str:
    if path.endswith("-journal") or "-mj" in os.path.basename(path):
        return "journal"
    if path.endswith("-wal"):
        return "wal"
    return "db"


class _Shared:
    """One image opened by one or more SQLite file handles, with its locks."""

    __slots__ = ("disk", "path", "refs", "shared", "reserved", "pending", "exclusive")

    def __init__(self, disk: Disk, path: str) -> None:
        self.disk = disk
        self.path = path
        self.refs = 0
        self.shared = 0  # handles holding SHARED or more
        self.reserved: _File | None = None
        self.pending: _File | None = None
        self.exclusive: _File | None = None


Engineish = Engine | Disk | None


class DiskVFS(apsw.VFS):
    """An APSW VFS that keeps every SQLite file on a ``Disk`` of one engine.

    ``engine`` may be an ``Engine``, a ``Disk`` (its engine is used, e.g. the
    pytest ``blkdebug_disk``) or ``None`` (a new engine with ``rules`` and
    ``events``). Files are created where SQLite names them; temporary files
    go to ``temp_dir``. ``stats`` counts the requests sent to the disks by
    ``"<kind>_<operation>"``; ``errors`` lists every failed one.
    """

    def __init__(
        self,
        engine: Engineish = None,
        *,
        rules: Iterable[Rule] = (),
        events: Iterable[str] = (),
        capacity: int = DEFAULT_CAPACITY,
        name: str | None = None,
        temp_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.engine = engine = assemble_engine(engine, events=events)
        register_events(engine)
        engine.add_rules(rules)
        if capacity <= 0:
            raise ValueError(
                f"DiskVFS: capacity must be a positive number of bytes, not {capacity}"
            )
        self.capacity = capacity
        self.temp_dir = os.fspath(temp_dir) if temp_dir is not None else None
        self.vfs_name = name or f"blkdebug-{os.getpid()}-{next(_names)}"
        self.stats: Counter[str] = Counter()
        self.errors: list[FileError] = []
        self._files: dict[str, _Shared] = {}
        self._lock = threading.RLock()
        self._connections: weakref.WeakSet[Connection] = weakref.WeakSet()
        self._closed = False
        super().__init__(self.vfs_name, base="")

    # -- the images -------------------------------------------------------------

    @property
    def disks(self) -> dict[str, Disk]:
        """The images open right now, by path."""
        with self._lock:
            return {path: shared.disk for path, shared in self._files.items()}

    def _acquire(self, path: str, create: bool, temporary: bool = False) -> _Shared:
        with self._lock:
            shared = self._files.get(path)
            if shared is None:
                shared = _Shared(self._open_image(path, create, temporary), path)
                self._files[path] = shared
            shared.refs += 1
            return shared

    def _release(self, shared: _Shared) -> None:
        with self._lock:
            shared.refs -= 1
            if shared.refs == 0:
                del self._files[shared.path]
                shared.disk.close()

    def _open_image(self, path: str, create: bool, temporary: bool = False) -> Disk:
        """Open an image addressable up to the capacity; its file keeps its logical size."""
        flags = os.O_RDWR | (os.O_CREAT if create else 0)
        recording = bool(self.engine.recorders)
        created = recording and create and not os.path.exists(path)
        try:
            fd = os.open(path, flags, 0o644)
        except FileNotFoundError:
            raise apsw.exception_for(apsw.SQLITE_CANTOPEN) from None
        try:
            capacity = max(self.capacity, os.fstat(fd).st_size)
        finally:
            os.close(fd)
        if created or (recording and temporary):  # a new directory entry (crash.py)
            self.engine.file_op("create", path, temporary=temporary)
        return Disk(path, engine=self.engine, size=capacity)

    # -- apsw.VFS ---------------------------------------------------------------

    # apsw's stub says VFSFile, but APSW takes any object with VFSFile's methods.
    def xOpen(self, name: str | apsw.URIFilename | None, flags: list[int]) -> _File:  # type: ignore[override]  # noqa: N802
        in_flags = flags[0]
        kind = _kind_for_flags(in_flags)
        path: str | None
        if isinstance(name, apsw.URIFilename):
            path = name.filename()
        else:
            path = name
        if path is None:
            fd, path = tempfile.mkstemp(prefix=f"sqlite-{kind}-", dir=self.temp_dir)
            os.close(fd)
        create = bool(in_flags & apsw.SQLITE_OPEN_CREATE)
        shared = self._acquire(path, create, temporary=name is None)
        flags[1] = in_flags
        handle = _File(self, shared, kind, bool(in_flags & apsw.SQLITE_OPEN_DELETEONCLOSE))
        # SQLite's unix VFS syncs the directory at the first sync of a journal
        # or WAL it opened with O_CREAT, so the new file's entry is durable.
        handle.sync_dir = create and kind in ("journal", "wal")
        return handle

    def xDelete(self, filename: str, syncdir: bool) -> None:  # noqa: N802
        """Raise ``sqlite_<kind>_delete``, check it as a discard of the whole
        file, then unlink it."""
        kind = _kind_for_path(filename)
        if not os.path.exists(filename):
            raise apsw.exception_for(apsw.SQLITE_IOERR_DELETE_NOENT)
        with self._lock:
            shared = self._files.get(filename)
            disk = shared.disk if shared is not None else Disk(filename, engine=self.engine)
        try:
            self.stats[f"{kind}_delete"] += 1
            try:
                disk.event(f"sqlite_{kind}_delete")
                size = os.fstat(disk.fileno()).st_size
                if size:
                    disk.discard(0, size)
            except OSError as exc:
                raise self._failed(kind, "delete", filename, exc) from exc
            os.unlink(filename)
            if self.engine.recorders:  # a delete is durable once its directory is synced
                self.engine.file_op("delete", filename)
                if syncdir:
                    self.engine.file_op("dirsync", os.path.dirname(filename))
        finally:
            if shared is None:
                disk.close()

    def _failed(self, kind: str, operation: str, path: str, exc: OSError) -> BaseException:
        """The APSW exception SQLite should see for ``exc``; records it."""
        if exc.errno in _FULL_ERRNOS and operation in ("write", "truncate"):
            code = apsw.SQLITE_FULL
        else:
            code = _IOERR_BY_OPERATION[operation]
        self.errors.append(FileError(kind, operation, path, exc, code))
        return apsw.exception_for(code)

    # -- connections ------------------------------------------------------------

    def connect(
        self,
        path: str | os.PathLike[str],
        *,
        journal_mode: str | None = None,
        flags: int = apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE,
        _owns_vfs: bool = False,
    ) -> Connection:
        """Open ``path`` through this VFS.

        ``journal_mode`` (``"delete"``, ``"truncate"``, ``"persist"``,
        ``"wal"``, ...) is set right after opening; WAL needs
        ``locking_mode=EXCLUSIVE`` here (no shared memory), which is set for
        ``"wal"`` and for a database whose header already says WAL.
        """
        if self._closed:
            raise ValueError(f"DiskVFS {self.vfs_name!r} is closed")
        filename = os.path.abspath(os.fspath(path))
        con = Connection(filename, flags=flags, vfs=self.vfs_name)
        con.vfs = self
        con._owns_vfs = _owns_vfs
        self._connections.add(con)
        try:
            mode = journal_mode.lower() if journal_mode is not None else None
            if mode == "wal" or _header_says_wal(filename):
                con.execute("PRAGMA locking_mode=EXCLUSIVE")
            if mode is not None:
                got = con.execute(f"PRAGMA journal_mode={mode}").fetchall()[0][0]
                if got != mode:
                    raise ValueError(f"SQLite refused journal_mode={mode!r} (it kept {got!r})")
        except BaseException:
            con.close()
            raise
        return con

    def close(self) -> None:
        """Close the connections opened through ``connect`` and unregister."""
        if self._closed:
            return
        self._closed = True
        for con in list(self._connections):
            con._owns_vfs = False
            try:
                con.close()
            except apsw.Error:
                pass  # a connection that cannot write its rollback is still closed
        self.unregister()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> DiskVFS:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<DiskVFS {self.vfs_name} state={self.engine.state} files={len(self._files)}>"


def _header_says_wal(path: str) -> bool:
    """Whether a database file's header has WAL's read/write versions (2, 2).

    Read behind the engine: choosing a locking mode is setup, not I/O under test.
    """
    try:
        with open(path, "rb") as f:
            header = f.read(20)
    except OSError:
        return False
    return (
        len(header) == 20 and header[:16] == b"SQLite format 3\x00" and header[18:20] == b"\x02\x02"
    )


class _File:
    """One SQLite file handle: the requests of one kind of file on one image."""

    def __init__(self, vfs: DiskVFS, shared: _Shared, kind: str, delete_on_close: bool) -> None:
        self.vfs = vfs
        self.shared = shared
        self.disk = shared.disk
        self.kind = kind
        self.path = shared.path
        self.delete_on_close = delete_on_close
        self.sync_dir = False
        self.level = _LOCK_NONE
        self._events = {op: f"sqlite_{kind}_{op}" for op in OPERATIONS}
        self._closed = False

    def _begin(self, operation: str) -> None:
        self.vfs.stats[f"{self.kind}_{operation}"] += 1
        self.disk.event(self._events[operation])

    def _size(self) -> int:
        return os.fstat(self.disk.fileno()).st_size

    def xRead(self, amount: int, offset: int) -> bytes:  # noqa: N802
        try:
            self._begin("read")
            # Up to the logical end; APSW turns a short result into
            # SQLITE_IOERR_SHORT_READ with the rest zero-filled, as SQLite wants.
            n = max(0, min(amount, self._size() - offset))
            return self.disk.read(min(offset, self.disk.size), n)
        except OSError as exc:
            raise self.vfs._failed(self.kind, "read", self.path, exc) from exc

    def xWrite(self, data: Any, offset: int) -> None:  # noqa: N802
        try:
            self._begin("write")
            end = offset + memoryview(data).nbytes
            if end > self.disk.size:
                raise OSError(
                    errno.ENOSPC,
                    f"{os.strerror(errno.ENOSPC)}: write ending at "
                    f"{end} is past the {self.disk.size}-byte capacity of {self.path}",
                )
            self.disk.write(offset, data)
        except OSError as exc:
            raise self.vfs._failed(self.kind, "write", self.path, exc) from exc

    def xSync(self, flags: int) -> None:  # noqa: N802
        try:
            self._begin("sync")
            self.disk.flush()
            if self.sync_dir:
                self.sync_dir = False
                if self.disk.engine.recorders:
                    self.disk.engine.file_op("dirsync", os.path.dirname(self.path))
        except OSError as exc:
            raise self.vfs._failed(self.kind, "sync", self.path, exc) from exc

    def xTruncate(self, newsize: int) -> None:  # noqa: N802
        try:
            self._begin("truncate")
            if newsize > self.disk.size:
                raise OSError(
                    errno.ENOSPC,
                    f"{os.strerror(errno.ENOSPC)}: cannot grow "
                    f"{self.path} past its {self.disk.size}-byte capacity",
                )
            size = self._size()
            if newsize < size:
                self.disk.discard(newsize, size - newsize)
            os.ftruncate(self.disk.fileno(), newsize)
            if self.disk.engine.recorders:
                self.disk.engine.file_op("truncate", self.path, size=newsize, disk=self.disk)
        except OSError as exc:
            raise self.vfs._failed(self.kind, "truncate", self.path, exc) from exc

    def xFileSize(self) -> int:  # noqa: N802
        return self._size()

    def xClose(self) -> None:  # noqa: N802
        if self._closed:
            return
        self._closed = True
        self.xUnlock(_LOCK_NONE)
        self.vfs._release(self.shared)
        if self.delete_on_close:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            else:
                if self.disk.engine.recorders:
                    self.disk.engine.file_op("delete", self.path)

    # -- locks between connections of this process ----------------------------

    def xLock(self, level: int) -> None:  # noqa: N802
        with self.vfs._lock:
            s = self.shared
            if level <= self.level:
                return
            if level == _LOCK_SHARED:
                if s.exclusive not in (None, self) or s.pending not in (None, self):
                    raise apsw.BusyError("database is locked by another connection")
                s.shared += 1
            elif level == _LOCK_RESERVED:
                if s.reserved not in (None, self):
                    raise apsw.BusyError("another connection holds the RESERVED lock")
                s.reserved = self
            else:  # PENDING or EXCLUSIVE
                if s.pending not in (None, self) or s.exclusive not in (None, self):
                    raise apsw.BusyError("another connection is writing")
                s.pending = self
                if s.shared > 1:
                    self.level = _LOCK_PENDING
                    raise apsw.BusyError("readers still hold SHARED locks")
                s.exclusive = self
                level = _LOCK_EXCLUSIVE
            self.level = level

    def xUnlock(self, level: int) -> None:  # noqa: N802
        with self.vfs._lock:
            s = self.shared
            if level >= self.level:
                return
            if level <= _LOCK_SHARED:
                for attr in ("reserved", "pending", "exclusive"):
                    if getattr(s, attr) is self:
                        setattr(s, attr, None)
            if level == _LOCK_NONE and self.level >= _LOCK_SHARED:
                s.shared -= 1
            self.level = level

    def xCheckReservedLock(self) -> bool:  # noqa: N802
        s = self.shared
        return s.reserved is not None or s.pending is not None or s.exclusive is not None

    def xFileControl(self, op: int, ptr: int) -> bool:  # noqa: N802
        return False

    def xSectorSize(self) -> int:  # noqa: N802
        return 512

    def xDeviceCharacteristics(self) -> int:  # noqa: N802
        return apsw.SQLITE_IOCAP_POWERSAFE_OVERWRITE

    def __repr__(self) -> str:
        return f"<sqlite {self.kind} file {self.path}>"


class Connection(apsw.Connection):
    """An ``apsw.Connection`` that knows its ``DiskVFS`` (``con.vfs``): its
    engine, disks, request counts and failures. If the VFS was made for this
    connection (``open_database``), closing the connection closes the VFS."""

    vfs: DiskVFS
    _owns_vfs: bool = False

    @property
    def engine(self) -> Engine:
        return self.vfs.engine

    def close(self, force: bool = False) -> None:
        try:
            super().close(force)
        finally:
            if self._owns_vfs:
                self._owns_vfs = False
                self.vfs.close()


def open_database(
    directory: str | os.PathLike[str],
    name: str = "test.db",
    *,
    engine: Engineish = None,
    rules: Iterable[Rule] = (),
    events: Iterable[str] = (),
    journal_mode: str | None = None,
    capacity: int = DEFAULT_CAPACITY,
) -> Connection:
    """Open (or create) ``directory/name`` with all its file I/O on Disks.

    ``engine`` is an ``Engine`` or a ``Disk`` whose engine to share (the
    pytest ``blkdebug_disk``, so the test's markers and report apply), or
    ``None`` for a new engine with ``rules``. The connection has its own
    ``DiskVFS`` (``con.vfs``), closed and unregistered with the connection.
    Temporary files go to ``directory`` too.
    """
    folder = os.fspath(directory)
    if not os.path.isdir(folder):
        raise NotADirectoryError(f"open_database: {folder!r} is not a directory")
    vfs = DiskVFS(engine, rules=rules, events=events, capacity=capacity, temp_dir=folder)
    try:
        return vfs.connect(os.path.join(folder, name), journal_mode=journal_mode, _owns_vfs=True)
    except BaseException:
        vfs.close()
        raise
