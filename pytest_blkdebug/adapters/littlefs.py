"""littlefs on a Disk: littlefs-python's block device callbacks through the engine.

Why: littlefs promises power-loss resilience and handles bad blocks by
relocating. Putting its block device on a ``Disk`` lets a rule fail the
program of one block, an erase, or a sync, and a test check what littlefs
made of it: an error, a relocation, a remount that finds every file intact.

Mapping (block ``b`` starts at byte ``b * block_size``, so at sector
``b * block_size // 512``):

================  ==================  ====================================
littlefs          event, then         Disk request (iotype)
================  ==================  ====================================
``read``          ``lfs_read``        ``read`` (read_aio, read)
``prog``          ``lfs_prog``        ``write`` (write_aio, pwritev, write)
``erase``         ``lfs_erase``       ``discard`` of the block (discard)
``sync``          ``lfs_sync``        ``flush`` (flush_to_os, flush)
================  ==================  ====================================

An erase is a discard (the block reads as zeroes afterwards; littlefs never
assumes an erased value), so ``iotype = "discard"`` rules fail erases and
nothing else, and ``iotype = "write"`` rules fail programs.

Errors: littlefs error codes are negated POSIX errnos, so a failed prog,
erase or sync returns ``-errno`` when littlefs has that code
(``EIO`` -> ``LFS_ERR_IO``, ``ENOSPC`` -> ``LFS_ERR_NOSPC``, ``EILSEQ`` ->
``LFS_ERR_CORRUPT``, ...) and ``LFS_ERR_IO`` otherwise. ``LFS_ERR_CORRUPT``
from prog or erase is littlefs's "bad block": it relocates and the operation
succeeds, so ``errno = "EILSEQ"`` simulates a worn-out block, where ``EIO``
makes the operation fail with ``LittleFSError(-5)``.

Reads cannot fail the littlefs way: littlefs-python's read callback is
``noexcept`` and ignores the callback's return value, so an exception would
only be printed and littlefs would go on with stale buffer contents. A failed
read therefore returns erased-looking bytes (``0xff``), which littlefs's
metadata CRCs reject (mount reports ``LFS_ERR_CORRUPT``; a metadata pair falls
back to its other block), and records the error in ``BlockDevice.errors`` so
a test can see it. File data has no CRC in littlefs: a failed data read is
silently wrong data, exactly as on a device whose driver cannot report errors.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, NamedTuple

import pytest

try:
    from littlefs import LittleFS, LittleFSError, UserContext
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "pytest_blkdebug.adapters.littlefs needs littlefs-python: "
        "pip install 'pytest-blkdebug[littlefs]'"
    ) from exc

from ..core.disk import Disk
from ..core.engine import Engine
from ..core.events import EventRegistry
from ..core.events import register_events as _register_events

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "EVENTS",
    "BlockDevice",
    "DeviceError",
    "filesystem",
    "lfs_error_code",
    "pytest_blkdebug_register_events",
    "register_events",
]

#: Events raised before each block device call, in littlefs's callback order.
EVENTS: tuple[str, ...] = ("lfs_read", "lfs_prog", "lfs_erase", "lfs_sync")
DEFAULT_BLOCK_SIZE = 4096
#: What a failed read returns: erased flash.
READ_FAILURE_FILL = 0xFF

_LFS_CODES = frozenset(-int(code) for code in LittleFSError.Error if int(code) < 0)
LFS_ERR_IO = int(LittleFSError.Error.LFS_ERR_IO)


def lfs_error_code(err: int | None) -> int:
    """The littlefs error code for an errno: ``-errno`` where littlefs defines
    it (its codes are negated errnos), else ``LFS_ERR_IO``."""
    if err is not None and err in _LFS_CODES:
        return -err
    return LFS_ERR_IO


def register_events(target: EventRegistry | Engine | Disk) -> tuple[str, ...]:
    """Register ``EVENTS`` with a registry, or the registry of an engine or disk."""
    return _register_events(target, EVENTS)


@pytest.hookimpl(optionalhook=True)
def pytest_blkdebug_register_events(config: pytest.Config) -> list[str]:
    """The plugin hook: list this module in ``pytest_plugins`` (conftest.py) and
    every disk of the session accepts the littlefs events."""
    return list(EVENTS)


class DeviceError(NamedTuple):
    """One failed block device call: what littlefs asked and what it got back
    (``code``: the littlefs error code returned, 0 for a read)."""

    operation: str
    block: int
    offset: int
    length: int
    error: OSError
    code: int

    @property
    def rule(self) -> str | None:
        return getattr(self.error, "rule", None)


class BlockDevice(UserContext):
    """littlefs-python's block device context over a ``Disk``.

    ``block_count`` defaults to as many whole blocks as the disk holds.
    ``stats`` counts the calls by operation; ``errors`` lists the failed ones.
    """

    def __init__(
        self, disk: Disk, *, block_size: int = DEFAULT_BLOCK_SIZE, block_count: int | None = None
    ) -> None:
        # UserContext.__init__ allocates an in-memory buffer; the disk is ours.
        if block_size < 128 or block_size % 8:
            raise ValueError(
                f"BlockDevice: block_size must be a multiple of 8 and at "
                f"least 128 (littlefs's minimum), not {block_size}"
            )
        if block_count is None:
            block_count = disk.size // block_size
        if block_count < 2 or block_count * block_size > disk.size:
            raise ValueError(
                f"BlockDevice: {block_count} blocks of {block_size} bytes do not fit the "
                f"{disk.size}-byte disk {disk.path} (littlefs needs at least 2 blocks)"
            )
        register_events(disk)
        self.disk = disk
        self.block_size = block_size
        self.block_count = block_count
        self.in_size = block_size * block_count
        self.stats: Counter[str] = Counter()
        self.errors: list[DeviceError] = []

    def _failed(self, operation: str, block: int, off: int, length: int, exc: OSError) -> int:
        code = 0 if operation == "read" else lfs_error_code(exc.errno)
        self.errors.append(DeviceError(operation, block, off, length, exc, code))
        return code

    def read(self, cfg: Any, block: int, off: int, size: int) -> bytearray:
        self.stats["read"] += 1
        offset = block * self.block_size + off
        try:
            self.disk.event("lfs_read")
            return bytearray(self.disk.read(offset, size))
        except OSError as exc:
            # littlefs-python cannot take an error from read (see the module
            # docstring): hand back erased flash and keep the error.
            self._failed("read", block, off, size, exc)
            return bytearray([READ_FAILURE_FILL]) * size

    def prog(self, cfg: Any, block: int, off: int, data: bytes) -> int:
        self.stats["prog"] += 1
        try:
            self.disk.event("lfs_prog")
            self.disk.write(block * self.block_size + off, data)
        except OSError as exc:
            return self._failed("prog", block, off, len(data), exc)
        return 0

    def erase(self, cfg: Any, block: int) -> int:
        self.stats["erase"] += 1
        try:
            self.disk.event("lfs_erase")
            self.disk.discard(block * self.block_size, self.block_size)
        except OSError as exc:
            return self._failed("erase", block, 0, self.block_size, exc)
        return 0

    def sync(self, cfg: Any) -> int:
        self.stats["sync"] += 1
        try:
            self.disk.event("lfs_sync")
            self.disk.flush()
        except OSError as exc:
            return self._failed("sync", 0, 0, 0, exc)
        return 0

    def sector_of(self, block: int, off: int = 0) -> int:
        """The 512-byte sector holding byte ``off`` of ``block`` (for ``sector=`` rules)."""
        return (block * self.block_size + off) // 512

    def __repr__(self) -> str:
        return (
            f"<BlockDevice {self.disk.path} {self.block_count} x {self.block_size} "
            f"bytes, {len(self.errors)} errors>"
        )


def filesystem(
    disk: Disk,
    *,
    format: bool = False,
    mount: bool = True,
    block_size: int = DEFAULT_BLOCK_SIZE,
    block_count: int | None = None,
    **config: Any,
) -> LittleFS:
    """A ``littlefs.LittleFS`` on ``disk``: formatted first if ``format``,
    then mounted if ``mount``. ``filesystem(disk).context`` is the
    ``BlockDevice`` (its ``stats`` and ``errors``).

    Unlike ``LittleFS(mount=True)``, a failed mount raises instead of
    formatting the disk: reformatting would hide the fault under test.
    ``config`` goes to ``littlefs.LFSConfig`` (``read_size``, ``prog_size``,
    ``block_cycles``, ``cache_size``, ``lookahead_size``, ...).
    """
    device = BlockDevice(disk, block_size=block_size, block_count=block_count)
    fs = LittleFS(
        context=device, mount=False, block_size=block_size, block_count=device.block_count, **config
    )
    if format:
        fs.format()
    if mount:
        fs.mount()
    return fs
