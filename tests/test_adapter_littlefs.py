"""The littlefs adapter: real littlefs (littlefs-python) on a Disk.

Each test formats or mounts a real littlefs, makes a block device call fail
through a rule, and checks what littlefs reported and what a remount finds,
including a mount by littlefs-python's own file context with no engine.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

littlefs = pytest.importorskip("littlefs")

from pytest_blkdebug import Disk, Engine, InjectError, RuleError  # noqa: E402
from pytest_blkdebug.adapters.littlefs import (  # noqa: E402
    EVENTS,
    BlockDevice,
    filesystem,
    lfs_error_code,
    register_events,
)

LFS_ERR_IO = -5
LFS_ERR_NOSPC = -28
LFS_ERR_CORRUPT = -84
LFS_ERR_NAMETOOLONG = -36
IOTYPE = {"lfs_read": "read", "lfs_prog": "write", "lfs_erase": "discard", "lfs_sync": "flush"}
PAYLOAD = bytes(range(256)) * 40  # 10 KiB: three data blocks


def prepared(tmp_path: Path, **kwargs: object) -> Disk:
    """A 1 MiB image with a formatted littlefs holding data/a.bin, made
    without any rule, reopened with the given rules."""
    path = tmp_path / "flash.img"
    with Disk.create(path, "1M", events=EVENTS) as disk:
        fs = filesystem(disk, format=True)
        fs.mkdir("data")  # a directory's metadata pair can be relocated; the root's cannot
        with fs.open("data/a.bin", "wb") as f:
            f.write(PAYLOAD)
        fs.unmount()
    return Disk.open(path, events=EVENTS, **kwargs)  # type: ignore[arg-type]


def write_b(fs: littlefs.LittleFS) -> None:
    with fs.open("data/b.bin", "wb") as f:
        f.write(PAYLOAD[::-1])


def files_after_remount(disk: Disk) -> dict[str, bytes]:
    fs = filesystem(disk)
    try:
        return {name: fs.open(f"data/{name}", "rb").read() for name in fs.listdir("data")}
    finally:
        fs.unmount()


def test_every_block_device_call_goes_through_the_engine(tmp_path: Path) -> None:
    rules = [InjectError(e, errno=0, iotype=IOTYPE[e], name=e) for e in EVENTS]
    disk = Disk.create(tmp_path / "flash.img", "1M", events=EVENTS, rules=rules)
    fs = filesystem(disk, format=True)
    for i in range(5):
        with fs.open(f"f{i}.bin", "wb") as f:
            f.write(PAYLOAD[: 1000 * (i + 1)])
    fs.remove("f0.bin")
    fs.unmount()
    stats = dict(fs.context.stats)
    assert all(stats.get(op, 0) > 0 for op in ("read", "prog", "erase", "sync")), stats
    for event, op in zip(EVENTS, ("read", "prog", "erase", "sync"), strict=True):
        status = disk.rule(event)
        assert status.armed == stats[op], (event, status, stats)
        if op == "sync":
            assert 0 < status.hits <= stats[op]  # checked only when something was written
        else:
            assert status.hits == stats[op], (event, status, stats)
    disk.close()
    # a real littlefs image: littlefs-python's own file context mounts it
    ctx = littlefs.UserContextFile(str(tmp_path / "flash.img"))
    plain = littlefs.LittleFS(context=ctx, block_size=4096, block_count=256, mount=False)
    plain.mount()
    assert sorted(plain.listdir("/")) == ["f1.bin", "f2.bin", "f3.bin", "f4.bin"]
    assert plain.open("f4.bin", "rb").read() == PAYLOAD[:5000]
    plain.unmount()
    ctx.close()


@pytest.mark.parametrize(
    ("event", "iotype", "err", "code"),
    [
        ("lfs_prog", "write", errno.EIO, LFS_ERR_IO),
        # the first prog is the commit that creates the file, and littlefs
        # (lfs_file_opencfg) reports NOSPC from that commit as NAMETOOLONG
        ("lfs_prog", "write", errno.ENOSPC, LFS_ERR_NAMETOOLONG),
        ("lfs_erase", "discard", errno.EIO, LFS_ERR_IO),
        ("lfs_sync", "flush", errno.EIO, LFS_ERR_IO),
    ],
)
def test_a_failed_call_is_a_littlefs_error_and_old_files_survive(
    tmp_path: Path, event: str, iotype: str, err: int, code: int
) -> None:
    disk = prepared(
        tmp_path, rules=[InjectError(event, errno=err, iotype=iotype, once=True, name="fault")]
    )
    fs = filesystem(disk)
    with pytest.raises(littlefs.LittleFSError) as info:
        write_b(fs)
    assert info.value.code == code
    [failure] = fs.context.errors
    assert (failure.operation, failure.rule) == (event[4:], "fault")
    assert failure.code == lfs_error_code(err)  # what the device returned to littlefs
    assert disk.rule("fault").hits == 1
    fs.unmount()
    files = files_after_remount(disk)
    assert files["a.bin"] == PAYLOAD
    assert files.get("b.bin", b"") in (b"", PAYLOAD[::-1])  # never a torn file
    disk.close()


@pytest.mark.parametrize(("event", "iotype"), [("lfs_prog", "write"), ("lfs_erase", "discard")])
def test_a_bad_block_is_relocated_and_the_write_succeeds(
    tmp_path: Path, event: str, iotype: str
) -> None:
    # EILSEQ is LFS_ERR_CORRUPT: littlefs's "this block has gone bad"
    disk = prepared(
        tmp_path,
        rules=[InjectError(event, errno=errno.EILSEQ, iotype=iotype, once=True, name="worn")],
    )
    fs = filesystem(disk)
    write_b(fs)  # no error: littlefs moved the data elsewhere
    [failure] = fs.context.errors
    assert failure.code == LFS_ERR_CORRUPT and disk.rule("worn").hits == 1
    fs.unmount()
    assert files_after_remount(disk) == {"a.bin": PAYLOAD, "b.bin": PAYLOAD[::-1]}
    disk.close()


def test_a_failed_read_cannot_be_reported_so_littlefs_sees_corruption(tmp_path: Path) -> None:
    disk = prepared(
        tmp_path, rules=[InjectError("lfs_read", iotype="read", once=True, name="unreadable")]
    )
    device = BlockDevice(disk)
    fs = littlefs.LittleFS(context=device, block_size=4096, block_count=256, mount=False)
    # the first superblock read fails: it reads as erased flash, its CRC fails,
    # and littlefs falls back to the other block of the superblock pair
    fs.mount()
    assert [e.operation for e in device.errors] == ["read"]
    assert disk.rule("unreadable").hits == 1
    assert fs.open("data/a.bin", "rb").read() == PAYLOAD
    fs.unmount()
    disk.close()


def test_mount_failure_does_not_format(tmp_path: Path) -> None:
    # every read fails: mount must raise, not quietly reformat (LittleFS(mount=True) would)
    disk = prepared(tmp_path, rules=[InjectError("lfs_read", iotype="read", name="dead")])
    with pytest.raises(littlefs.LittleFSError) as info:
        filesystem(disk)
    assert info.value.code == LFS_ERR_CORRUPT
    assert disk.rule("dead").hits >= 2
    disk.close()
    clean = Disk.open(tmp_path / "flash.img", events=EVENTS)
    assert files_after_remount(clean) == {"a.bin": PAYLOAD}
    clean.close()


def test_sectors_of_blocks(tmp_path: Path) -> None:
    disk = Disk.create(tmp_path / "f.img", "1M", events=EVENTS)
    device = BlockDevice(disk, block_size=4096)
    assert (device.block_count, device.sector_of(3), device.sector_of(3, 513)) == (256, 24, 25)
    with pytest.raises(ValueError, match=r"512 blocks of 4096 bytes do not fit the 1048576-byte"):
        BlockDevice(disk, block_count=512)
    with pytest.raises(ValueError, match="at least 128"):
        BlockDevice(disk, block_size=64)
    disk.close()


def test_error_codes_and_event_registration() -> None:
    assert lfs_error_code(errno.EIO) == LFS_ERR_IO
    assert lfs_error_code(errno.ENOSPC) == LFS_ERR_NOSPC
    assert lfs_error_code(errno.EILSEQ) == LFS_ERR_CORRUPT
    assert lfs_error_code(errno.EACCES) == LFS_ERR_IO  # littlefs has no such code
    assert lfs_error_code(None) == LFS_ERR_IO
    engine = Engine()
    with pytest.raises(RuleError, match="unknown event 'lfs_prog'"):
        engine.add_rules([InjectError("lfs_prog")])
    assert register_events(engine) == EVENTS == ("lfs_read", "lfs_prog", "lfs_erase", "lfs_sync")
    engine.add_rules([InjectError("lfs_prog")])
    assert os.strerror(errno.EILSEQ)  # the errno a TOML rule can name as "EILSEQ"
