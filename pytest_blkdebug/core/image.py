"""The host file under a Disk: whole-length I/O and a descriptor that
outlives every request that may still use it.

Two things a bare ``os.pread``/``os.pwrite`` gets wrong, in one place:

- Linux moves at most 0x7ffff000 bytes per call, so one call is not one
  request: reads and writes loop until done, and only a real end of file
  (a read returning nothing) pads with zeroes, as a hole would read.
- A descriptor number is reused by the next ``open`` as soon as it is
  closed, so a thread past its request's checks could write through a
  number that now names another file. ``Image.close`` therefore never frees
  the number while a request may hold it: it atomically points the number
  at a directory (``dup2``: a read fails with EISDIR, a write with EBADF;
  calls already in the kernel finish on the image) and the number itself is
  closed when the ``Image`` object is freed. Every user of ``fd`` holds the
  ``Image`` (a method's ``self``, the fast path's local), and ``Disk.close``
  drops its own reference, so that happens as soon as the last request in
  flight returns. No per-request bookkeeping: the hot path pays nothing.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import stat
import weakref
from collections.abc import Callable
from typing import NamedTuple

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
    """An open image file: its descriptor, the host calls on it, and the
    request-facing state of the disk over it (``limit``, dirty marks)."""

    __slots__ = (
        "path",
        "fd",
        "readonly",
        "closed",
        "limit",
        "dirty_event",
        "dirty_check",
        "_free",
        "__weakref__",
    )

    def __init__(self, path: str, *, readonly: bool = False, fd: int | None = None) -> None:
        self.path = path
        self.readonly = readonly
        self.closed = False
        self._free: Callable[[], object] | None = None
        if fd is None:
            fd = _open_image(path, readonly)
            self._free = weakref.finalize(self, os.close, fd)  # freed with the object
        self.fd = fd
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

    @classmethod
    def closed_stub(cls, path: str, readonly: bool) -> Image:
        """What a closed Disk keeps: no descriptor, every request refused."""
        stub = cls(path, readonly=readonly, fd=-1)
        stub.closed = True
        stub.limit = -1
        return stub

    def closed_error(self, message: str | None = None) -> ClosedError:
        return ClosedError(message or f"I/O on closed disk {self.path}")

    def size(self) -> int:
        """The file's current size in bytes."""
        if self.closed:
            raise self.closed_error()
        return os.fstat(self.fd).st_size

    def pread(self, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset``; past the end of the file, zeroes."""
        if self.closed:
            raise self.closed_error()
        data = os.pread(self.fd, min(length, _MAX_IO), offset)
        if len(data) < length:
            return self._pread_rest(data, offset, length)
        return data

    def _pread_rest(self, first: bytes, offset: int, length: int) -> bytes:
        """Finish a short read: keep reading; pad only at a real end of file."""
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
        if self.closed:
            raise self.closed_error()
        written = os.pwrite(self.fd, data, offset)
        length = len(data) if type(data) is bytes else memoryview(data).nbytes
        if written < length:
            view = memoryview(data).cast("B")
            while written < length:
                written += os.pwrite(self.fd, view[written : written + _MAX_IO], offset + written)

    def zero(self, offset: int, length: int, *, unmap: bool = True) -> None:
        """Zero a range: as a hole, or (``unmap=False``) allocated zeroes."""
        if self.closed:
            raise self.closed_error()
        punch_hole(self.fd, offset, length)
        if not unmap:
            os.posix_fallocate(self.fd, offset, length)

    def extents(self, offset: int, length: int) -> list[Extent]:
        """Data/hole runs covering ``[offset, offset+length)``."""
        if self.closed:
            raise self.closed_error()
        return extents(self.fd, offset, length)

    def sync(self) -> None:
        """``fdatasync`` the file (a durable disk's successful flush)."""
        if self.closed:
            raise self.closed_error()
        os.fdatasync(self.fd)

    def truncate(self, size: int) -> None:
        """Set the file's size (adapters whose files shrink and grow)."""
        if self.closed:
            raise self.closed_error()
        os.ftruncate(self.fd, size)

    def discard(self) -> None:
        """Close an image no request has used (a Disk that failed to open):
        its descriptor is freed now, not when the object is collected."""
        self.closed = True
        self.limit = -1
        if self._free is not None:
            self._free()

    def close(self) -> None:
        """Refuse new calls and retire the descriptor (see the module's
        docstring): calls in flight fail or finish, none reaches another file."""
        if self.closed or self.fd < 0:
            return
        self.closed = True
        self.limit = -1
        dead = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.dup2(dead, self.fd, inheritable=False)
        finally:
            os.close(dead)


def _open_image(path: str, readonly: bool) -> int:
    """The image's descriptor: a regular file or a block device. Opened
    without blocking (a FIFO opened read-only waits for a writer), and
    refused if it is a directory, a FIFO, a socket or a character device."""
    return _open_checked(path, os.O_RDONLY if readonly else os.O_RDWR, block_device=True)


def create_file(path: str) -> int:
    """``path`` as a new, empty regular file (an existing one is emptied),
    open for reading and writing. Opened without blocking, and refused if
    something else is there (a FIFO would wait for a reader)."""
    flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
    return _open_checked(path, flags, block_device=False, refused="; not replaced")


def _open_checked(path: str, flags: int, *, block_device: bool, refused: str = "") -> int:
    """``os.open`` that never waits on a special file: opened non-blocking,
    then refused unless a regular file (or, with ``block_device``, a block
    device), then made blocking again for the I/O."""
    fd = os.open(path, flags | os.O_NONBLOCK, 0o644)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
        if not (stat.S_ISREG(mode) or (block_device and stat.S_ISBLK(mode))):
            raise ValueError(f"image {path} is not a regular file ({file_kind(mode)}){refused}")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


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


_KINDS = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


def file_kind(mode: int) -> str:
    """What a file that is not a regular one is, for an error (``st_mode``)."""
    return _KINDS.get(stat.S_IFMT(mode), "a special file")


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
    # Opened without blocking: a FIFO would wait forever for a writer.
    fd = os.open(src, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), src)
        if not stat.S_ISREG(mode):
            raise ValueError(f"template {src} is not a regular file ({file_kind(mode)})")
    except BaseException:
        os.close(fd)
        raise
    with open(fd, "rb") as fin, open(create_file(dst), "wb") as fout:
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
