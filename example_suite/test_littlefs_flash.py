"""littlefs (the embedded filesystem) meets failing flash.

littlefs promises that files survive power loss and bad blocks. Each test
fails one block device operation (program, erase, sync, read) and checks what
littlefs reports and what a remount (a device reset) finds.

Setup: the image is built before the test's disk opens it (the
``littlefs_image`` marker and ``pytest_blkdebug_make_image`` in conftest.py):
a formatted 1 MiB littlefs holding ``data/config.json``. The module's rule
file moves the state to 2 on the first block read, i.e. once littlefs mounts.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import TYPE_CHECKING

import littlefs
import pytest

from pytest_blkdebug import Disk

if TYPE_CHECKING:
    from conftest import Flash

pytestmark = [
    pytest.mark.littlefs_image,
    pytest.mark.blkdebug(size="1M"),
    pytest.mark.blkdebug_rules("rules/lfs-in-service.toml"),
]

LFS_ERR_IO = -5
LFS_ERR_NOSPC = -28
LFS_ERR_CORRUPT = -84
LOG = bytes(range(256)) * 48  # 12 KiB: three 4 KiB data blocks


def write_log(fs: littlefs.LittleFS, name: str = "data/log.bin") -> None:
    with fs.open(name, "wb") as f:
        f.write(LOG)


# Proves: a failed program (write) of a flash block is reported as LFS_ERR_IO,
# and after a reset the filesystem mounts with the old file intact and the new
# one either absent or empty, never half-written.
@pytest.mark.inject_error("lfs_prog", state=2, once=True, name="prog")
def test_failed_program(flash: Flash, blkdebug_disk: Disk) -> None:
    fs = flash.mount()
    with pytest.raises(littlefs.LittleFSError) as err:
        write_log(fs)
    assert err.value.code == LFS_ERR_IO
    assert blkdebug_disk.rule("prog").hits == 1
    flash.remount()
    files = flash.files()
    assert files["config.json"] == flash.CONFIG
    assert files.get("log.bin", b"") == b""


# Proves: a failed block erase is reported as LFS_ERR_IO and damages nothing.
@pytest.mark.inject_error("lfs_erase", state=2, once=True, name="erase")
def test_failed_erase(flash: Flash, blkdebug_disk: Disk) -> None:
    fs = flash.mount()
    with pytest.raises(littlefs.LittleFSError) as err:
        write_log(fs)
    assert err.value.code == LFS_ERR_IO
    assert flash.device.errors[-1].operation == "erase"
    assert blkdebug_disk.rule("erase").hits == 1
    flash.remount()
    assert flash.files()["config.json"] == flash.CONFIG


# Proves: a failed sync surfaces from close() as LFS_ERR_IO; after a reset the
# new file exists but is empty (its data was never committed) and the old file
# is intact. Same shared rule file as the SQLite and key-value store tests.
@pytest.mark.blkdebug_rules("rules/flaky-flush.toml")
def test_failed_sync(flash: Flash, blkdebug_disk: Disk) -> None:
    fs = flash.mount()
    with pytest.raises(littlefs.LittleFSError) as err:
        write_log(fs)
    assert err.value.code == LFS_ERR_IO
    assert flash.device.errors[-1].operation == "sync"
    assert blkdebug_disk.rule("flaky-flush").hits == 1
    flash.remount()
    assert flash.files() == {"config.json": flash.CONFIG, "log.bin": b""}


# Proves: littlefs handles a worn-out block by itself: the erase fails with
# EILSEQ (LFS_ERR_CORRUPT, "bad block"), littlefs relocates, the write
# succeeds, and after a reset both files read back exactly. The fault is real
# (the rule fired once) and invisible to the application.
@pytest.mark.blkdebug_rules("rules/lfs-worn-block.toml")
def test_worn_block_is_relocated(flash: Flash, blkdebug_disk: Disk) -> None:
    fs = flash.mount()
    write_log(fs)
    [failure] = flash.device.errors
    assert (failure.operation, failure.code) == ("erase", LFS_ERR_CORRUPT)
    assert blkdebug_disk.rule("worn-block").hits == 1
    flash.remount()
    assert flash.files() == {"config.json": flash.CONFIG, "log.bin": LOG}


# Proves: on a full device, appending to a file fails with LFS_ERR_NOSPC and
# the file keeps its old content. The rule file is QEMU's full-disk rule,
# shared with the SQLite and key-value store tests.
@pytest.mark.blkdebug_rules("rules/full-disk.ini")
def test_full_device(flash: Flash, blkdebug_disk: Disk) -> None:
    fs = flash.mount()
    with pytest.raises(littlefs.LittleFSError) as err:
        with fs.open("data/config.json", "ab") as f:
            f.write(LOG)
    assert err.value.code == LFS_ERR_NOSPC
    assert blkdebug_disk.rule("disk-full").hits >= 1
    assert all(e.error.errno == errno.ENOSPC for e in flash.device.errors)
    flash.remount()
    assert flash.files() == {"config.json": flash.CONFIG}


# Proves two things about reads. littlefs-python cannot pass a read error to
# littlefs, so a dead read path shows up as corruption: mount fails with
# LFS_ERR_CORRUPT. And the adapter's mount never reformats on failure (plain
# LittleFS(mount=True) would): the image is intact, as littlefs-python's own
# file context, with no engine, shows. The rule is gated on state 1, so only
# the very first read arms it; without "once" it stays armed and fails them all.
@pytest.mark.inject_error("lfs_read", state=1, iotype="read", name="dead-reads")
def test_unreadable_flash_fails_the_mount_without_reformatting(
    flash: Flash, blkdebug_disk: Disk
) -> None:
    with pytest.raises(littlefs.LittleFSError) as err:
        flash.mount()
    assert err.value.code == LFS_ERR_CORRUPT
    assert blkdebug_disk.rule("dead-reads").hits >= 2
    context = littlefs.UserContextFile(blkdebug_disk.path)
    try:
        plain = littlefs.LittleFS(context=context, block_size=4096, block_count=256, mount=False)
        plain.mount()
        assert plain.open("data/config.json", "rb").read() == flash.CONFIG
    finally:
        context.close()
    assert Path(blkdebug_disk.path).stat().st_size == 1 << 20
