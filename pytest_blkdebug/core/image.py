"""The host file under a Disk: whole-length I/O and a guard against close.

Two things a bare ``os.pread``/``os.pwrite`` gets wrong, in one place:

- Linux moves at most 0x7ffff000 bytes per call, so one call is not one
  request: reads and writes loop until done, and only a real end of file
  (a read returning nothing) pads with zeroes, as a hole would read.
- A descriptor number is reused by the next ``open`` as soon as it is
  closed. A thread past its request's checks must never write through a
  number that now names another file, so every host call is counted in
  flight and :meth:`Image.close` waits for those calls to end before it
  closes the descriptor. Only host calls are counted, never a request's
  waits (breakpoints, delays), so closing never waits on a test.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import time
from collections import deque
from typing import NamedTuple

#: How long ``close`` waits for host calls in flight (they do not wait on
#: anything of ours, so this is only reached by a stuck kernel call).
CLOSE_TIMEOUT = 30.0
_MAX_IO = 0x7FFFF000  # Linux's per-call limit for read/write

# The process's own symbols include libc's fallocate; ctypes.util.find_library
# would spawn ldconfig and cost every pytest run ~40 ms at import.
_libc = ctypes.CDLL(None, use_errno=True)
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_ZERO_CHUNK = bytes(1 << 20)
_FICLONE = 0x40049409  # linux/fs.h


class Extent(NamedTuple):
    """A run of the image that is all data (``data=True``) or all hole (reads zero)."""

    offset: int
    length: int
    data: bool


class ClosedError(ValueError):
    """I/O on a closed disk (a ``ValueError``, as for a closed Python file)."""


class Image:
    """An open image file: its descriptor and the host calls on it.

    Every method that touches the descriptor enters the in-flight count
    first and checks ``closed`` after, so ``close`` (which sets ``closed``
    first and then waits for the count to drain) and a request can never
    both miss each other.
    """

    __slots__ = (
        "path",
        "fd",
        "readonly",
        "closed",
        "inflight",
        "limit",
        "dirty_event",
        "dirty_check",
    )

    def __init__(self, path: str, *, readonly: bool = False) -> None:
        self.path = path
        self.readonly = readonly
        self.fd = os.open(path, os.O_RDONLY if readonly else os.O_RDWR)
        self.closed = False
        #: One entry per host call in progress (deque append/pop are atomic).
        self.inflight: deque[None] = deque()
        #: Requests must end at or before ``limit`` (the disk's size; -1 once
        #: the disk closes, so the range check every request pays also
        #: catches a closed disk).
        self.limit = 0
        # What the next flush has to do. QEMU tracks dirtiness per node: the
        # raw format node decides whether flush raises flush_to_disk
        # (dirty_event); the blkdebug node whether the flush is checked
        # (dirty_check). They differ only after an empty discard, which
        # dirties the format node without reaching blkdebug.
        self.dirty_event = False
        self.dirty_check = False

    def closed_error(self, message: str | None = None) -> ClosedError:
        return ClosedError(message or f"I/O on closed disk {self.path}")

    def size(self) -> int:
        """The file's current size in bytes."""
        __tracebackhide__ = True
        self.inflight.append(None)
        try:
            if self.closed:
                raise self.closed_error()
            return os.fstat(self.fd).st_size
        finally:
            self.inflight.pop()

    def pread(self, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset``; past the end of the file, zeroes."""
        __tracebackhide__ = True
        self.inflight.append(None)
        try:
            if self.closed:
                raise self.closed_error()
            data = os.pread(self.fd, length, offset)
            if len(data) < length:
                return self._pread_rest(data, offset, length)
            return data
        finally:
            self.inflight.pop()

    def _pread_rest(self, first: bytes, offset: int, length: int) -> bytes:
        """Finish a short read: keep reading; pad only at a real end of file."""
        __tracebackhide__ = True
        parts = [first]
        done = len(first)
        while done < length:
            chunk = os.pread(self.fd, min(length - done, _MAX_IO), offset + done)
            if not chunk:  # end of file: the rest reads as a hole would
                parts.append(bytes(length - done))
                break
            parts.append(chunk)
            done += len(chunk)
        return b"".join(parts)

    def pwrite(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write all of ``data`` at ``offset`` (looping over short writes)."""
        __tracebackhide__ = True
        self.inflight.append(None)
        try:
            if self.closed:
                raise self.closed_error()
            written = os.pwrite(self.fd, data, offset)
            length = len(data) if type(data) is bytes else memoryview(data).nbytes
            if written < length:
                view = memoryview(data).cast("B")
                while written < length:
                    written += os.pwrite(
                        self.fd, view[written : written + _MAX_IO], offset + written
                    )
        finally:
            self.inflight.pop()

    def zero(self, offset: int, length: int, *, unmap: bool = True) -> None:
        """Zero a range: as a hole, or (``unmap=False``) allocated zeroes."""
        __tracebackhide__ = True
        self.inflight.append(None)
        try:
            if self.closed:
                raise self.closed_error()
            punch_hole(self.fd, offset, length)
            if not unmap:
                os.posix_fallocate(self.fd, offset, length)
        finally:
            self.inflight.pop()

    def extents(self, offset: int, length: int) -> list[Extent]:
        """Data/hole runs covering ``[offset, offset+length)``."""
        __tracebackhide__ = True
        self.inflight.append(None)
        try:
            if self.closed:
                raise self.closed_error()
            return extents(self.fd, offset, length)
        finally:
            self.inflight.pop()

    def sync(self) -> None:
        """``fdatasync`` the file (a durable disk's successful flush)."""
        __tracebackhide__ = True
        self.inflight.append(None)
        try:
            if self.closed:
                raise self.closed_error()
            os.fdatasync(self.fd)
        finally:
            self.inflight.pop()

    def truncate(self, size: int) -> None:
        """Set the file's size (adapters whose files shrink and grow)."""
        __tracebackhide__ = True
        self.inflight.append(None)
        try:
            if self.closed:
                raise self.closed_error()
            os.ftruncate(self.fd, size)
        finally:
            self.inflight.pop()

    def close(self, timeout: float = CLOSE_TIMEOUT) -> bool:
        """Refuse new host calls, wait for those in flight, close the descriptor.

        Returns False if host calls were still running after ``timeout``: the
        descriptor then stays open (pointing at ``/dev/null``, read-only), so
        its number is never handed to another file while they run.
        """
        if self.closed:
            return True
        self.closed = True
        deadline = time.monotonic() + timeout
        pause = 0.0001
        while self.inflight:
            if time.monotonic() >= deadline:
                null = os.open(os.devnull, os.O_RDONLY)
                os.dup2(null, self.fd)
                os.close(null)
                return False
            time.sleep(pause)
            pause = min(pause * 2, 0.01)
        os.close(self.fd)
        return True


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Zero a range and free its blocks; fall back to writing zeroes."""
    fallocate = getattr(_libc, "fallocate", None)
    if fallocate is not None:
        fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
        if fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise OSError(err, os.strerror(err))
    end = offset + length
    while offset < end:
        n = min(end - offset, len(_ZERO_CHUNK))
        offset += os.pwrite(fd, _ZERO_CHUNK[:n], offset)


def extents(fd: int, offset: int, length: int) -> list[Extent]:
    """Data/hole runs covering ``[offset, offset+length)`` via SEEK_DATA/HOLE."""
    __tracebackhide__ = True
    result: list[Extent] = []
    end = offset + length
    pos = offset
    while pos < end:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise
            data = end  # only a hole remains
        if data > pos:
            hole_end = min(data, end)
            result.append(Extent(pos, hole_end - pos, False))
            pos = hole_end
            continue
        hole = min(os.lseek(fd, pos, os.SEEK_HOLE), end)
        result.append(Extent(pos, hole - pos, True))
        pos = hole
    return result


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether two paths name one file (symlinks and hard links included)."""
    try:
        sa, sb = os.stat(a), os.stat(b)
    except FileNotFoundError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def copy_sparse(src: str, dst: str) -> None:
    """Copy an image cheaply: a reflink where the filesystem offers one,
    else only the data extents (holes stay holes)."""
    if same_file(src, dst):
        raise ValueError(
            f"template {src} is the image {dst} itself (creating the image would wipe it)"
        )
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        size = os.fstat(fin.fileno()).st_size
        try:
            fcntl.ioctl(fout.fileno(), _FICLONE, fin.fileno())
            return
        except OSError:
            pass
        fout.truncate(size)
        for extent in extents(fin.fileno(), 0, size):
            if extent.data:
                done = 0
                while done < extent.length:
                    at = extent.offset + done
                    n = os.copy_file_range(
                        fin.fileno(), fout.fileno(), extent.length - done, at, at
                    )
                    if n == 0:  # the template shrank under us
                        break
                    done += n
