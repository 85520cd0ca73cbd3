"""The key-value store (``kvstore.py``) through power loss: every crash state.

A recording logs the store's writes and flushes while it commits and
checkpoints; each crash state (every subset of the unflushed writes of each
flush epoch, and each write torn at a sector) is opened as a fresh disk and
recovered with ``KVStore.open``. The oracle: recovery succeeds and returns
the data after some prefix of the commits, never less than the commits whose
promise ("commit <k>", marked when ``commit`` returned) was followed by a
completed flush, never a commit that had not started.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import pytest
from kvstore import (
    CRC,
    EVENTS,
    JOURNAL_BASE,
    SLOT_SIZE,
    SNAPSHOT_BASE,
    SNAPSHOT_MAX,
    SUPER,
    SUPER_MAGIC,
    KVStore,
    _crc,
)

from pytest_blkdebug import Disk
from pytest_blkdebug.core.crash import Recording
from pytest_blkdebug.core.crashstates import Crash
from pytest_blkdebug.plugin.crash import CrashCheck

# Power loss is the fault here, not a rule: these pass with --blkdebug-no-rules too.
pytestmark = pytest.mark.no_fault

SETUP = {"config/name": "sensor-7", "config/rate": "100"}
WORKLOAD: list[dict[str, str | None] | None] = [  # a dict commits, None checkpoints
    {"reading/1": "20.5", "reading/2": "20.7"},
    None,
    {"reading/1": None, "config/rate": "50"},
    {"reading/3": "21.0", "reading/4": "21.2", "reading/5": "21.1"},
    None,
    {"reading/6": "20.9"},
]


def models() -> list[dict[str, str]]:
    """The data after 0, 1, 2, ... commits."""
    result = [dict(SETUP)]
    for changes in WORKLOAD:
        if changes is None:
            continue
        data = dict(result[-1])
        for key, value in changes.items():
            if value is None:
                data.pop(key, None)
            else:
                data[key] = value
        result.append(data)
    return result


def record(tmp_path: Path, store_class: type[KVStore]) -> Recording:
    disk = Disk.create(tmp_path / "kv.img", "4M", events=EVENTS)
    store = store_class.format(disk)
    store.commit(SETUP)
    store = store_class.open(disk)
    with disk.record() as run:
        commits = 0
        for changes in WORKLOAD:
            if changes is None:
                store.checkpoint()
            else:
                store.commit(changes)
                commits += 1
                run.mark(f"commit {commits}")
    disk.close()
    return run


def recovery_problem(crash: Crash) -> str | None:
    """What is wrong with the store recovered from this state (None: nothing)."""
    expected = models()
    with crash.open() as image:
        try:
            data = KVStore.open(image).snapshot()
        except Exception as exc:  # noqa: BLE001 - any failure to recover is the finding
            return f"recovery failed: {type(exc).__name__}: {exc}"
    if data not in expected:
        return f"recovered data matches no prefix of the commits: {data}"
    commits = expected.index(data)
    durable = max((int(m.split()[1]) for m in crash.durable_marks), default=0)
    if commits < durable:
        return f"commit {durable} was committed and flushed, but recovery has only {commits}"
    started = len(crash.marks) + 1  # the marked ones, and one in progress
    if commits > started:
        return f"recovery has {commits} commits, only {started} had started"
    return None


# Proves the store's recovery survives every crash state of a workload of
# commits and checkpoints: whichever unflushed writes a power loss keeps (any
# subset, any order), and wherever one tears at a sector, reopening yields the
# data after a prefix of the commits that includes every flushed one.
def test_kvstore_survives_every_crash(blkdebug_crash: CrashCheck, tmp_path: Path) -> None:
    run = record(tmp_path, KVStore)
    for crash in blkdebug_crash.states(run, torn=True):
        with blkdebug_crash.check(crash):
            assert recovery_problem(crash) is None


class NoBarrierStore(KVStore):
    """The store with one fsync removed: the checkpoint writes the snapshot
    and then, without flushing it first, its commit record (the superblock
    that points at it)."""

    def _write_generation(
        self, generation: int, data: Mapping[str, str], *, announce: bool
    ) -> None:
        snapshot = json.dumps(data, sort_keys=True).encode()
        offset = SNAPSHOT_BASE + (generation % 2) * SNAPSHOT_MAX
        if announce:
            self.disk.event("checkpoint")
        self.disk.write(offset, snapshot)
        # (KVStore flushes here)
        head = SUPER.pack(SUPER_MAGIC, generation, offset, len(snapshot), _crc(snapshot))
        self.disk.write((generation % 2) * SLOT_SIZE, head + CRC.pack(_crc(head)))
        self.disk.flush()
        self.generation, self.journal_pos = generation, JOURNAL_BASE


# Proves the tool catches a missing fsync: without the flush between the
# snapshot and the superblock, a power loss can keep the new superblock and
# lose the snapshot it points at, and recovery fails (a state the in-order
# prefixes never show: only reordering finds it).
def test_missing_fsync_before_the_commit_record_is_caught(tmp_path: Path) -> None:
    run = record(tmp_path, NoBarrierStore)
    crashes = run.crashes()
    found = {c.id: p for c in crashes if (p := recovery_problem(c)) is not None}
    assert found, "the store without its barrier survived every crash state"
    assert all("recovery failed" in p for p in found.values()), found
    assert not [c.id for c in crashes if c.id in found and c.id.split("-")[1][0] == "p"]
