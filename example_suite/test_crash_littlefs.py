"""littlefs through power loss: every crash state of a few file updates.

littlefs's block device is one Disk; a recording logs its programs (writes),
erases (discards) and syncs (flushes). Each crash state is opened as a fresh
disk and mounted. The oracle: the filesystem mounts, and each file holds one
of the versions written to it (littlefs updates a file copy-on-write and
commits it atomically at close), never less than the last version whose
close was followed by a completed sync.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_blkdebug import Disk
from pytest_blkdebug.adapters import littlefs as lfs_adapter
from pytest_blkdebug.core.crash import Recording
from pytest_blkdebug.core.crashstates import Crash
from pytest_blkdebug.plugin.crash import CrashCheck

# Power loss is the fault here, not a rule: these pass with --blkdebug-no-rules too.
pytestmark = pytest.mark.no_fault

BLOCK = 4096
BLOCKS = 32

#: (file, contents) in order; the first version of each exists before recording.
VERSIONS = {
    "config.json": [b'{"rate": 100}\n' * 40, b'{"rate": 50}\n' * 300, b'{"rate": 10}\n' * 20],
    "log.txt": [b"boot\n", b"boot\nsample 1\n" * 200],
}
UPDATES = [("config.json", 1), ("log.txt", 1), ("config.json", 2)]


def write(fs: object, name: str, data: bytes) -> None:
    with fs.open(f"data/{name}", "wb") as f:  # type: ignore[attr-defined]
        f.write(data)


def record(tmp_path: Path) -> Recording:
    disk = Disk.create(tmp_path / "flash.img", BLOCK * BLOCKS, events=lfs_adapter.EVENTS)
    fs = lfs_adapter.filesystem(disk, format=True, block_size=BLOCK)
    fs.mkdir("data")
    for name, versions in VERSIONS.items():
        write(fs, name, versions[0])
    with disk.record() as run:
        for name, version in UPDATES:
            write(fs, name, VERSIONS[name][version])
            run.mark(f"{name} {version}")
    fs.unmount()
    disk.close()
    return run


def mount_problem(crash: Crash) -> str | None:
    with crash.open(events=lfs_adapter.EVENTS) as image:
        try:
            fs = lfs_adapter.filesystem(image, block_size=BLOCK)
            files = {n: fs.open(f"data/{n}", "rb").read() for n in fs.listdir("data")}
            fs.unmount()
        except Exception as exc:  # noqa: BLE001 - any failure to mount or read is the finding
            return f"{type(exc).__name__}: {exc}"
    for name, versions in VERSIONS.items():
        if files.get(name) not in versions:
            return f"{name} holds none of its versions: {files.get(name)!r:.60}"
        durable = [int(m.split()[1]) for m in crash.durable_marks if m.split()[0] == name]
        if durable and versions.index(files[name]) < max(durable):
            return f"{name}: version {max(durable)} was closed and synced, and is lost"
    return None


# Proves littlefs's power-loss promise on a device that reorders its cache
# until a sync: whichever unsynced programs and erases survive, and wherever
# a program tears at a sector, the filesystem mounts and every file holds a
# whole version, at least the last one synced.
def test_littlefs_survives_every_crash(blkdebug_crash: CrashCheck, tmp_path: Path) -> None:
    run = record(tmp_path)
    assert {w.operation for w in run.writes} >= {"write", "discard"}
    for crash in blkdebug_crash.states(run, torn=True, max_states=16):
        with blkdebug_crash.check(crash):
            assert mount_problem(crash) is None
