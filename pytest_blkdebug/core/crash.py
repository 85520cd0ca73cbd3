"""Power loss: record what every disk of an engine stored, then list the images a crash could leave.

``disk.record()`` (the same as ``disk.engine.record()``) returns a
:class:`Recording`. While it runs, the request path tells it about every
write, write-zeroes, discard and flush of every ``Disk`` on the engine, in
completion order, and the adapters tell it about files that come and go
(``engine.file_op``: create, truncate, delete, directory sync). Nothing the
code under test sees changes: reads see unflushed data, as on a real OS.

The durability model (docs/crash.md has its sources):

* a write is *volatile* until a flush of the same file, issued after the
  write completed, has completed; a failed flush makes nothing durable;
  write-zeroes, discard and truncate are writes;
* creating or deleting a file is volatile until its directory is synced;
* a crash keeps every durable write and any subset of the volatile ones, in
  any order (the device reorders its cache), or a volatile write cut at a
  sector boundary (never inside an atomic unit).

``run.crashes()`` (``crashstates.py``) turns the log into crash states, one
flush epoch at a time. This module keeps the log; recording costs one tuple
appended per request, so the code under test runs at nearly full speed.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, cast

from .crashlog import (
    _DIR,
    _FLUSH,
    _MARK,
    DEFAULT_SECTOR_SIZE,
    Entry,
    Flush,
    Log,
    Mark,
    Point,
    Unit,
    Write,
)
from .crashstates import CrashList, build
from .image import copy_sparse as _copy_sparse

if TYPE_CHECKING:
    from .disk import Disk
    from .engine import Engine

__all__ = ["DEFAULT_SECTOR_SIZE", "Point", "Recording", "Write"]


class Recording:
    """The write/flush log of every disk on one engine (see the module docstring).

    Use as ``with disk.record() as run: ...``; then ``run.crashes()``.
    ``workdir`` holds the base snapshots and crash images, in a folder of the
    recording's own (by default a temporary directory removed with the
    recording); ``run.workdir`` is that folder. ``sector_size`` and
    ``atomic`` are the defaults for every file; :meth:`device` sets them per file.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        workdir: str | os.PathLike[str] | None = None,
        sector_size: int = DEFAULT_SECTOR_SIZE,
        atomic: int | None = None,
    ) -> None:
        _check_geometry(sector_size, atomic)
        self.engine = engine
        self.sector_size = sector_size
        self.atomic = atomic
        self._cleanup: Callable[[], object] = _nothing
        if workdir is None:
            self.workdir = tempfile.mkdtemp(prefix="blkdebug-crash-")
            self._cleanup = weakref.finalize(self, shutil.rmtree, self.workdir, True)
        else:
            # A folder of its own in it: two recordings given one workdir
            # must not share snapshot and copy names (the second's base
            # snapshot replaced the first's).
            os.makedirs(workdir, exist_ok=True)
            self.workdir = tempfile.mkdtemp(prefix="recording-", dir=workdir)
        self._log: list[tuple[Any, ...]] = []
        self._append = self._log.append
        self._lock = threading.Lock()
        # Disk -> its unit: a plain dict (a weak one costs a weakref per
        # request); the disks stay referenced until the recording stops.
        self._units: dict[Disk, Unit] = {}
        self._live: dict[str, Unit] = {}  # path -> the inode there now
        self._base: dict[str, Unit | None] = {}  # path -> inode at the start (None: absent)
        self._dirs: dict[str, Unit] = {}
        self._temporary_paths: set[str] = set()
        self._geometry: dict[str, tuple[int, int | None]] = {}
        self._ids = itertools.count(1)
        self._started = False
        self._stopped = False
        self._cached: Log | None = None
        self._cached_size = -1
        self.crash_count = itertools.count(1)
        #: Unmodified crash copies kept for reuse, per unit: (path, content, seed).
        self.pool: dict[int, tuple[str, Any, int]] = {}
        #: The class of the first disk recorded: crash states open their
        #: images with it, so this layer never imports ``Disk`` (the disk
        #: and the engine create recordings; importing them back would be a cycle).
        self.disk_type: type[Disk] | None = None

    # -- lifetime ----------------------------------------------------------------

    def start(self) -> Recording:
        """Snapshot every open disk of the engine and start logging."""
        if self._started:
            raise RuntimeError("this recording was already started")
        self._started = True
        # Listen first, then snapshot: a write that lands between the two
        # (another thread, an NBD client) is then logged, perhaps also in
        # the snapshot, never in neither (lost from every crash image).
        self.engine.recorders = (*self.engine.recorders, self)
        for disk in self.engine.open_disks():
            if not disk.closed:
                self._adopt(disk)
        return self

    def stop(self) -> None:
        """Stop logging (the log and the snapshots stay)."""
        if self._started and not self._stopped:
            self._stopped = True
            self.engine.recorders = tuple(r for r in self.engine.recorders if r is not self)
            self._units.clear()

    @property
    def recording(self) -> bool:
        return self._started and not self._stopped

    def close(self) -> None:
        """Stop, and remove the working directory if the recording made it."""
        self.stop()
        self._cleanup()

    def __enter__(self) -> Recording:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- configuration -----------------------------------------------------------

    def device(
        self, disk: Disk | str | os.PathLike[str], *, sector_size: int, atomic: int | None = None
    ) -> None:
        """Set one file's sector size and atomic unit (``atomic=4096``: an
        aligned 4 KiB unit is never torn), as SQLite's crash VFS models
        device characteristics."""
        _check_geometry(sector_size, atomic)
        path = _path_of(disk)
        self._geometry[path] = (sector_size, atomic)
        with self._lock:
            units = [u for u in self._units.values() if u.path == path]
            units += [u for u in self._live.values() if u.path == path]
            for unit in units:
                unit.sector_size, unit.atomic = sector_size, atomic

    def mark(self, label: str) -> None:
        """Record a promise the code made to its caller ("txn 7 committed").

        A crash lists the marks issued before its point (``marks``) and those
        followed by a completed flush (``durable_marks``)."""
        if type(label) is not str:
            raise TypeError(f"a mark's label is a str, not {label!r}")
        if self._stopped:  # else listed as issued before the end of the recording
            raise RuntimeError(f"mark {label!r}: the recording has stopped")
        self._append((_MARK, label))

    # -- hooks called by the request path and the adapters -----------------------

    def on_store(
        self, disk: Disk, operation: str, offset: int, length: int, data: bytes | None
    ) -> None:
        """A write, write-zeroes or discard reached the image (what was really stored)."""
        # The hot path of a recording (every write): a subscript, not .get(),
        # and the bytes test first (a write's data is bytes by now).
        try:
            unit = self._units[disk]
        except KeyError:
            unit = self._adopt(disk)
        if type(data) is not bytes and data is not None:
            data = bytes(data)  # the caller may reuse its buffer
        self._append((unit, operation, offset, length, data))

    def on_flush_begin(self, disk: Disk) -> tuple[Unit, int]:
        """A flush was issued; the token says which writes it covers."""
        unit = self._units.get(disk) or self._adopt(disk)
        return unit, len(self._log)

    def on_flush_end(self, disk: Disk, token: object, ok: bool) -> None:
        """The flush issued with ``token`` completed (``ok``) or failed."""
        unit, begin = cast("tuple[Unit, int]", token)
        self._append((_FLUSH, unit, begin, ok))

    def on_file_op(self, kind: str, path: str, details: dict[str, Any]) -> None:
        """``create``, ``delete``, ``truncate`` (``size=``), ``dirsync`` of a
        directory, or ``open`` (``disk=``: a disk opened while recording)."""
        path = os.path.abspath(path)
        if kind == "open":
            disk = details["disk"]
            if disk not in self._units:
                self._adopt(disk)
        elif kind == "create":
            with self._lock:
                unit = self._new_unit(path, temporary=bool(details.get("temporary")))
                if unit.temporary:
                    self._temporary_paths.add(path)
                self._live[path] = unit
                self._base.setdefault(path, None)
                disk = details.get("disk")
                if disk is not None:
                    self._units[disk] = unit
                folder = self._dir(os.path.dirname(path))
                self._append((_DIR, folder, "create", path, unit))
        elif kind == "delete":
            with self._lock:
                self._live.pop(path, None)
                folder = self._dir(os.path.dirname(path))
                self._append((_DIR, folder, "delete", path, None))
        elif kind == "truncate":
            size = details.get("size")
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise ValueError(f"truncate of {path}: size= must be an int >= 0, not {size!r}")
            disk = details.get("disk")
            known = self._units.get(disk) if disk is not None else None
            unit = known or self._live.get(path) or self._adopt_path(path)
            self._append((unit, "truncate", size, 0, None))
        elif kind == "dirsync":
            folder = self._dir(path)
            self._append((_FLUSH, folder, len(self._log), True))
        else:
            raise ValueError(
                f"unknown file operation {kind!r} (create, delete, truncate, dirsync, open)"
            )

    # -- units -------------------------------------------------------------------

    def _new_unit(
        self, path: str, *, base: str | None = None, size: int = 0, temporary: bool = False
    ) -> Unit:
        sector_size, atomic = self._geometry.get(path, (self.sector_size, self.atomic))
        return Unit(next(self._ids), path, False, base, size, sector_size, atomic, temporary)

    def _dir(self, path: str) -> Unit:
        unit = self._dirs.get(path)
        if unit is None:
            unit = self._dirs[path] = Unit(next(self._ids), path, directory=True)
        return unit

    def _adopt(self, disk: Disk) -> Unit:
        """The unit behind a disk seen for the first time (snapshot its file)."""
        path = os.path.abspath(disk.path)
        unit = self._adopt_path(path)
        self._units[disk] = unit
        if self.disk_type is None:
            self.disk_type = type(disk)
        return unit

    def _adopt_path(self, path: str) -> Unit:
        with self._lock:
            unit = self._live.get(path)
            if unit is not None:
                return unit
            ident = next(self._ids)
            snapshot = os.path.join(self.workdir, "base", f"{ident}-{os.path.basename(path)}")
            os.makedirs(os.path.dirname(snapshot), exist_ok=True)
            _copy_sparse(path, snapshot)
            unit = self._new_unit(path, base=snapshot, size=os.stat(snapshot).st_size)
            self._live[path] = unit
            self._base.setdefault(path, unit)
            return unit

    # -- the log -----------------------------------------------------------------

    def log(self) -> Log:
        """The log resolved: entries, flushes and marks, request numbers
        assigned (cached until something new is logged). An item's position
        in the log is its clock: appends happen as requests complete."""
        raw = list(self._log)
        if self._cached is not None and self._cached_size == len(raw):
            return self._cached
        result = Log(paths=dict(self._base))
        number = 0
        for n, item in enumerate(raw):
            kind = item[0]
            if kind == _MARK:
                result.marks.append(Mark(item[1], n))
                continue
            number += 1
            if kind == _FLUSH:
                _, unit, begin, ok = item
                result.flushes.append(Flush(n, number, unit, begin, ok))
            elif kind == _DIR:
                _, folder, operation, path, target = item
                result.entries.append(Entry(n, number, folder, operation, 0, 0, None, path, target))
            else:
                unit, operation, offset, length, data = item
                if operation == "truncate":
                    unit.truncated = True
                result.entries.append(
                    Entry(n, number, unit, operation, offset, length, data, unit.path)
                )
        result.last_number = number
        good = [f for f in result.flushes if f.ok]
        for mark in result.marks:
            done = [f.n for f in good if f.begin > mark.n]
            mark.durable_at = min(done) if done else None
        self._cached, self._cached_size = result, len(raw)
        return result

    @property
    def writes(self) -> list[Write]:
        """Every logged store and file operation, in completion order."""
        return [entry.write for entry in self.log().entries]

    @property
    def paths(self) -> list[str]:
        """The files the recording knows (temporary files left out)."""
        return [path for path in self.log().paths if path not in self._temporary_paths]

    def crashes(
        self,
        *,
        torn: bool = False,
        garbage: bool = False,
        max_states: int = 64,
        seed: int = 0,
        subset_limit: int = 8,
    ) -> CrashList:
        """The crash states of the recording: see ``crashstates.build``."""
        return build(
            self,
            torn=torn,
            garbage=garbage,
            max_states=max_states,
            seed=seed,
            subset_limit=subset_limit,
        )

    def __iter__(self) -> Iterator[Write]:
        return iter(self.writes)

    def __repr__(self) -> str:
        state = "recording" if self.recording else "stopped" if self._stopped else "not started"
        return f"<Recording {state}: {len(self._log)} log items, {len(self._live)} files>"


def _nothing() -> None:
    pass


def _check_geometry(sector_size: int, atomic: int | None) -> None:
    for name, value in (("sector_size", sector_size), ("atomic", atomic)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise TypeError(f"{name} must be an int, not {value!r}")
    if sector_size <= 0:
        raise ValueError(f"sector_size must be positive, not {sector_size}")
    if atomic is not None and (atomic <= 0 or atomic % sector_size):
        raise ValueError(
            f"atomic must be a positive multiple of the sector size {sector_size}, not {atomic}"
        )


def _path_of(disk: Disk | str | os.PathLike[str]) -> str:
    if isinstance(disk, (str, os.PathLike)):
        return os.path.abspath(os.fspath(disk))
    return os.path.abspath(disk.path)
