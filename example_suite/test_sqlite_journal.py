"""SQLite (rollback-journal mode) meets a failing disk.

SQLite's promise: a transaction is all or nothing, and a failed commit says
so. Each test breaks one step of SQLite's atomic commit (journal write,
journal sync, database write, database sync, journal delete) and checks the
promise: the error SQLite reports, and, after reopening, every committed row
and ``PRAGMA integrity_check = ok``.

Setup: ``app_db.create()`` makes the table and commits 100 rows; the module's
rule file moves the state to 2 when that commit is complete (the journal is
deleted). Fault rules are gated on state 2.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import apsw
import pytest

from pytest_blkdebug import Disk
from pytest_blkdebug.adapters.sqlite import open_database
from pytest_blkdebug.plugin.sweep import Sweep, SweepOutcome

if TYPE_CHECKING:
    from conftest import AppDB

pytestmark = pytest.mark.blkdebug_rules("rules/sqlite-after-setup.ini")

SEED = list(range(100))


def reopened_ids(app_db: AppDB) -> tuple[list[int], str]:
    """Close every connection, open a fresh one: what a restarted process sees."""
    app_db.close_all()
    con = app_db.open()
    return app_db.ids(con), app_db.integrity(con)


# Proves: a write error on the database file during COMMIT is reported as
# SQLITE_IOERR (not swallowed), and the rows committed before are all there,
# intact, after reopening.
@pytest.mark.inject_error("sqlite_db_write", state=2, once=True, name="db-write")
def test_write_error_during_commit_is_reported_and_loses_nothing(
    app_db: AppDB, blkdebug_disk: Disk
) -> None:
    con = app_db.create()
    assert blkdebug_disk.state == 2  # the setup's commit is done
    with pytest.raises(apsw.IOError) as err:
        app_db.insert(con, 100, 100)
    assert err.value.extendedresult == apsw.SQLITE_IOERR_WRITE
    assert blkdebug_disk.rule("db-write").hits == 1
    assert con.vfs.errors[-1].rule == "db-write"
    assert reopened_ids(app_db) == (SEED, "ok")


# Proves: on a full disk the commit fails with SQLITE_FULL, the database stays
# readable, and nothing committed is lost. The rule file is QEMU's own format
# and event (write_aio), shared with the key-value store and littlefs tests.
@pytest.mark.blkdebug_rules("rules/full-disk.ini")
def test_full_disk_fails_the_commit_with_sqlite_full(app_db: AppDB, blkdebug_disk: Disk) -> None:
    con = app_db.create()
    with pytest.raises(apsw.FullError):
        app_db.insert(con, 100, 100)
    # the first write after the setup was the rollback journal's
    assert con.vfs.errors[0].kind == "journal"
    assert blkdebug_disk.rule("disk-full").hits >= 1
    assert app_db.ids(con) == SEED  # reads still work on a full disk
    assert reopened_ids(app_db) == (SEED, "ok")


# Proves: SQLite syncs the journal before it touches the database file: when
# that sync fails the commit fails and the database file is byte-for-byte
# what it was. The rule file fails the first flush after the setup.
@pytest.mark.blkdebug_rules("rules/flaky-flush.toml")
def test_journal_sync_failure_leaves_the_database_file_untouched(
    app_db: AppDB, blkdebug_disk: Disk
) -> None:
    con = app_db.create()
    before = app_db.path.read_bytes()
    with pytest.raises(apsw.IOError) as err:
        app_db.insert(con, 100, 100)
    assert err.value.extendedresult == apsw.SQLITE_IOERR_FSYNC
    failure = con.vfs.errors[-1]
    assert (failure.kind, failure.operation, failure.rule) == ("journal", "sync", "flaky-flush")
    assert app_db.path.read_bytes() == before
    assert reopened_ids(app_db) == (SEED, "ok")


# Proves: when the database file's own sync fails, the whole transaction is
# rolled back from the journal: after reopening, none of its rows exist.
@pytest.mark.inject_error("sqlite_db_sync", state=2, iotype="flush", once=True, name="db-sync")
def test_database_sync_failure_rolls_the_transaction_back(
    app_db: AppDB, blkdebug_disk: Disk
) -> None:
    con = app_db.create()
    with pytest.raises(apsw.IOError) as err:
        app_db.insert(con, 100, 100)
    assert err.value.extendedresult == apsw.SQLITE_IOERR_FSYNC
    assert blkdebug_disk.rule("db-sync").hits == 1
    assert reopened_ids(app_db) == (SEED, "ok")


# Proves: deleting the journal *is* the commit in DELETE mode. When the delete
# fails (SQLITE_IOERR_DELETE) the journal stays hot and the transaction is
# rolled back: all or nothing holds even at the very last step. Same event as
# the rule file's set-state: the setup's delete (state 1) does not arm this
# rule, the next delete (state 2) does.
@pytest.mark.inject_error("sqlite_journal_delete", state=2, once=True, name="journal-delete")
def test_journal_delete_failure_means_not_committed(app_db: AppDB, blkdebug_disk: Disk) -> None:
    con = app_db.create()
    with pytest.raises(apsw.IOError) as err:
        app_db.insert(con, 100, 100)
    assert err.value.extendedresult == apsw.SQLITE_IOERR_DELETE
    assert blkdebug_disk.rule("journal-delete").hits == 1
    assert reopened_ids(app_db) == (SEED, "ok")


# Proves: a state machine can pick "the second commit after the setup": the
# first one moves the state from 2 to 3 and succeeds, the second one fails,
# and after reopening exactly the first one's rows are there.
@pytest.mark.set_state("sqlite_journal_delete", 3, state=2, name="first-commit-done")
@pytest.mark.inject_error("sqlite_db_write", state=3, once=True, name="second-commit")
def test_the_second_commit_fails(app_db: AppDB, blkdebug_disk: Disk) -> None:
    con = app_db.create()
    app_db.insert(con, 100, 10)
    with pytest.raises(apsw.IOError):
        app_db.insert(con, 200, 10)
    assert [(h.old, h.new, h.event) for h in blkdebug_disk.history] == [
        (1, 2, "sqlite_journal_delete"),
        (2, 3, "sqlite_journal_delete"),
    ]
    assert blkdebug_disk.rule("second-commit").hits == 1
    assert reopened_ids(app_db) == ([*SEED, *range(100, 110)], "ok")


# Proves: a QEMU-style sector rule works on SQLite's files: a bad sector in
# the table's root page (page 2 = bytes 4096-8191, sector 8) fails every query
# that reads it with SQLITE_IOERR_READ, while page 1 (the schema) still reads.
# Without "once" the rule stays armed: the sector stays bad.
@pytest.mark.inject_error("read_aio", sector=8, iotype="read", state=2, name="bad-sector")
def test_a_bad_sector_fails_the_queries_that_read_it(app_db: AppDB, blkdebug_disk: Disk) -> None:
    app_db.create()
    app_db.close_all()  # a fresh connection reads from the disk, not its cache
    con = app_db.open()
    assert con.execute("SELECT name FROM sqlite_schema").fetchall() == [("t",)]
    for _ in range(2):
        with pytest.raises(apsw.IOError) as err:
            app_db.ids(con)
        assert err.value.extendedresult == apsw.SQLITE_IOERR_READ
    assert blkdebug_disk.rule("bad-sector").hits == 2


# Proves the order of SQLite's atomic commit, as the engine saw it: journal
# written and synced before the first database write, the database synced,
# then the journal deleted; and how many syncs that takes (errno-0 rules let
# the requests through and count them).
@pytest.mark.inject_error("sqlite_journal_sync", errno=0, iotype="flush", state=2, name="jsync")
@pytest.mark.inject_error("sqlite_db_sync", errno=0, iotype="flush", state=2, name="dbsync")
def test_commit_order_journal_then_database(app_db: AppDB, blkdebug_disk: Disk) -> None:
    con = app_db.create()
    commits = 3
    for n in range(commits):
        app_db.insert(con, 100 + n, 1)
    assert blkdebug_disk.rule("dbsync").hits == commits
    assert blkdebug_disk.rule("jsync").hits >= commits  # at least one journal sync each
    events = [e.name for e in blkdebug_disk.trace if e.kind == "event"]
    last_commit = events[len(events) - 1 - events[::-1].index("sqlite_journal_write") :]
    first = {name: last_commit.index(name) for name in dict.fromkeys(last_commit)}
    assert first["sqlite_journal_sync"] < first["sqlite_db_write"] < first["sqlite_db_sync"]
    assert last_commit[-1] == "sqlite_journal_delete"


# -- the sweep: every write, sync and delete of one commit ---------------------------

SWEEP_ROWS = 20


def sweep_prep(disk: Disk) -> None:
    """The sweep's template: ``app.db`` with the table and the first rows,
    committed on a disk without rules, next to the sweep's image."""
    con = open_database(Path(disk.path).parent, "app.db", engine=disk)
    con.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, payload TEXT)")
    con.execute("BEGIN")
    con.executemany("INSERT INTO t VALUES (?, ?)", rows(0, SWEEP_ROWS))
    con.execute("COMMIT")
    con.close()


def rows(start: int, count: int) -> list[tuple[int, str]]:
    return [(i, f"payload {i} " * 30) for i in range(start, start + count)]


def sweep_commit(disk: Disk) -> apsw.Error | None:
    """One transaction of 10 rows: what a commit reported (None: committed)."""
    con = open_database(Path(disk.path).parent, "app.db", engine=disk)
    try:
        con.execute("BEGIN")
        con.executemany("INSERT INTO t VALUES (?, ?)", rows(100, 10))
        con.execute("COMMIT")
    except apsw.Error as exc:
        if con.in_transaction:
            con.execute("ROLLBACK")
        return exc
    finally:
        con.close()
    return None


def sweep_check(disk: Disk, outcome: SweepOutcome) -> None:
    error = outcome.value
    assert (error is not None) == outcome.hit  # every fault is reported
    if error is not None:
        assert isinstance(error, (apsw.IOError, apsw.FullError))
    con = open_database(Path(disk.path).parent, "app.db", engine=disk)  # a restart
    try:
        ids = [row[0] for row in con.execute("SELECT id FROM t ORDER BY id")]
        committed = [*range(SWEEP_ROWS), *range(100, 110)]
        assert ids == (list(range(SWEEP_ROWS)) if error else committed)
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        con.close()


# Proves: SQLite's atomic commit at every step (SQLite's own ioerr loop): for
# N = 1, 2, ... a fresh copy of a committed database, and the Nth write, sync
# or delete of the next commit fails (the rollback journal's header and pages,
# its syncs, the database pages, the database sync, the journal's delete).
# Each time the commit reports SQLITE_IOERR, and a restarted process finds the
# old rows, none of the new ones and an intact database; the run that reaches
# no fault commits all 10 rows.
def test_every_write_sync_and_delete_of_a_commit(blkdebug_sweep: Sweep) -> None:
    result = blkdebug_sweep.run(
        sweep_commit,
        prep=sweep_prep,
        check=sweep_check,
        iotype=["write", "flush", "discard"],
    )
    # journal pages, sync, journal header, sync, database pages, sync, delete
    shape = " ".join(r.operation for r in result.requests.values())
    assert re.fullmatch(r"(write )+flush write flush (write )+flush discard", shape), shape


def integrity_and_ids(disk: Disk) -> tuple[list[tuple[str]], list[int]]:
    con = open_database(Path(disk.path).parent, "app.db", engine=disk)
    try:
        ok = con.execute("PRAGMA integrity_check").fetchall()
        return ok, [row[0] for row in con.execute("SELECT id FROM t ORDER BY id")]
    finally:
        con.close()


# Proves: SQLite's commit survives a power loss at each of those steps
# (mode="crash"): the Nth write, sync or delete and everything after it never
# reach the disk, and on every crash image the point can leave (unsynced
# writes all lost, or all kept) a restarted SQLite finds an intact database
# with the commit entirely there or not at all: a hot journal rolls it back.
def test_power_loss_at_every_step_of_a_commit(blkdebug_sweep: Sweep) -> None:
    before, after = list(range(SWEEP_ROWS)), [*range(SWEEP_ROWS), *range(100, 110)]
    found = []

    def check(disk: Disk, outcome: SweepOutcome) -> None:
        ok, ids = integrity_and_ids(disk)
        assert ok == [("ok",)]
        assert ids in (before, after)
        found.append(ids == after)

    result = blkdebug_sweep.run(
        sweep_commit,
        prep=sweep_prep,
        check=check,
        iotype=["write", "flush", "discard"],
        mode="crash",
    )
    assert result.points == 19
    assert found[-1] and not any(found[:-1])  # only the run without a power loss commits
