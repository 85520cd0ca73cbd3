"""SQLite (APSW) through power loss: every crash state of a few commits.

The database, its rollback journal and its WAL are Disks on one engine
(``adapters/sqlite.py``); a recording logs their writes, syncs, and the
journal's creation and deletion with the directory syncs that make those
durable. Each crash state is restored into a fresh directory and opened with
Python's own ``sqlite3`` (another SQLite, as after a reboot), which rolls
back a hot journal or replays the WAL. The oracle, per state:

- ``PRAGMA integrity_check`` is ``ok``;
- each transaction is all or nothing (its rows are all there or none);
- every transaction whose commit was followed by a completed sync
  (``crash.durable_marks``) is there.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import apsw
import pytest

from pytest_blkdebug.adapters.sqlite import open_database
from pytest_blkdebug.core.crash import Recording
from pytest_blkdebug.core.crashstates import Crash, CrashList
from pytest_blkdebug.plugin.crash import CrashCheck

# Power loss is the fault here, not a rule: these pass with --blkdebug-no-rules too.
pytestmark = pytest.mark.no_fault

ROWS = 3  # rows per transaction: each row ~1.5 KiB, so a transaction spans pages
TXNS = 3


def rows(txn: int) -> list[tuple[int, int, str]]:
    return [(txn * 100 + i, txn, f"txn {txn} row {i} " * 90) for i in range(ROWS)]


def record_commits(directory: Path, journal_mode: str, synchronous: str) -> Recording:
    """Create app.db (table + transaction 0), then record TXNS commits, each
    marked "txn <k>" once COMMIT returned."""
    directory.mkdir()
    con = open_database(directory, "app.db", journal_mode=journal_mode)
    try:
        con.execute(f"PRAGMA synchronous={synchronous}")
        con.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, txn INTEGER, payload TEXT)")
        con.executemany("INSERT INTO t VALUES (?, ?, ?)", rows(0))
        if journal_mode == "wal":
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        with con.engine.record() as run:
            for txn in range(1, TXNS + 1):
                con.execute("BEGIN")
                con.executemany("INSERT INTO t VALUES (?, ?, ?)", rows(txn))
                con.execute("COMMIT")
                run.mark(f"txn {txn}")
                if journal_mode == "wal" and txn == TXNS - 1:
                    # copy the WAL into the database; the next commit restarts the WAL
                    con.execute("PRAGMA wal_checkpoint")
    finally:
        con.close()
    return run


def violations(crash: Crash, where: Path) -> list[str]:
    """What is wrong with this state once SQLite recovers it (empty: nothing)."""
    if where.exists():  # the previous state's files (and what sqlite3 made of them)
        for leftover in where.iterdir():
            leftover.unlink()
    crash.restore(where)
    try:
        con = sqlite3.connect(where / "app.db")
        try:
            # recovery (rolling back a hot journal, replaying the WAL) need not
            # fsync a copy that is thrown away: that would be most of the time
            con.execute("PRAGMA synchronous=OFF")
            integrity = con.execute("PRAGMA integrity_check").fetchone()[0]
            counts = dict(con.execute("SELECT txn, count(*) FROM t GROUP BY txn").fetchall())
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        return [f"sqlite3 cannot read the database: {exc}"]
    problems = [] if integrity == "ok" else [f"integrity_check: {integrity}"]
    for txn, count in sorted(counts.items()):
        if count != ROWS:
            problems.append(f"txn {txn} is partial: {count} of {ROWS} rows")
    for label in crash.durable_marks:
        txn = int(label.split()[1])
        if txn not in counts:
            problems.append(f"{label} was committed and synced, and is lost")
    if 0 not in counts:
        problems.append("the setup's transaction 0 is lost")
    return problems


def check_all(blkdebug_crash: CrashCheck, crashes: CrashList, tmp_path: Path) -> None:
    for crash in blkdebug_crash.states(crashes):
        with blkdebug_crash.check(crash):
            assert violations(crash, tmp_path / "crash") == []


# Proves SQLite's promise in rollback-journal mode with synchronous=EXTRA:
# whatever subset of its unsynced writes (and of the journal's creation and
# deletion) a power loss keeps, and wherever a write tears at a sector, the
# database reopens intact with whole transactions, and none that was
# committed and then followed by a sync is lost.
def test_rollback_journal_extra_survives_every_crash(
    blkdebug_crash: CrashCheck, tmp_path: Path
) -> None:
    run = record_commits(tmp_path / "db", "delete", "EXTRA")
    crashes = run.crashes(torn=True, max_states=16)
    assert {w.operation for w in run.writes} >= {"create", "delete", "write", "discard"}
    assert len(crashes) > 50
    check_all(blkdebug_crash, crashes, tmp_path)


# Proves the same in WAL mode with synchronous=FULL (the WAL's checksums make
# a torn or missing frame end the log), over two split items.
@pytest.mark.blkdebug_split(2)
def test_wal_full_survives_every_crash(blkdebug_crash: CrashCheck, tmp_path: Path) -> None:
    run = record_commits(tmp_path / "db", "wal", "FULL")
    crashes = run.crashes(torn=True, max_states=16)
    assert len(crashes) > 20
    check_all(blkdebug_crash, crashes, tmp_path)


def find_violations(crashes: CrashList, tmp_path: Path) -> dict[str, list[str]]:
    found = {}
    for crash in crashes:
        problems = violations(crash, tmp_path / "crash")
        if problems:
            found[crash.id] = problems
    return found


# Proves the tool finds why synchronous=FULL is not enough in rollback-journal
# mode (SQLite's documentation: EXTRA also syncs the directory after the
# journal is deleted): a state where the delete of a committed transaction's
# journal is lost while the next transaction's journal sync completed, so the
# stale journal is hot and rolls back a synced commit.
def test_rollback_journal_full_can_lose_a_synced_commit(tmp_path: Path) -> None:
    run = record_commits(tmp_path / "db", "delete", "FULL")
    found = find_violations(run.crashes(max_states=16), tmp_path)
    lost = {i: p for i, p in found.items() if any("is lost" in x for x in p)}
    assert lost, "expected a state that loses a committed, synced transaction"


# Proves the tool finds what synchronous=OFF risks, in both journal modes:
# nothing is synced, so a power loss may keep the database's new pages
# without the journal that could roll them back (rollback mode) or the
# checkpoint's pages without their WAL: a partial transaction or corruption.
@pytest.mark.parametrize("journal_mode", ["delete", "wal"])
def test_synchronous_off_is_caught(journal_mode: str, tmp_path: Path) -> None:
    run = record_commits(tmp_path / "db", journal_mode, "OFF")
    assert not any(c.point.operation == "flush" for c in run.crashes())  # no sync at all
    found = find_violations(run.crashes(max_states=64), tmp_path)
    assert found, "synchronous=OFF survived every crash state: the oracle is too weak"
    assert any(
        "partial" in p or "integrity" in p or "cannot read" in p
        for ps in found.values()
        for p in ps
    )


def test_apsw_is_the_writer() -> None:
    assert apsw.sqlite_lib_version()
