"""SQLite in WAL mode meets a failing disk.

In WAL mode a commit appends frames to the write-ahead log and syncs it; the
database file is only written by checkpoints. Each test breaks one of those
steps and checks that committed rows survive and the failed commit does not.

Setup: ``app_db.create(journal_mode="wal")`` commits 100 rows and checkpoints
them (``PRAGMA wal_checkpoint(TRUNCATE)``); the module's TOML rule file moves
the state to 2 on that truncation. Fault rules are gated on state 2.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import apsw
import pytest

from pytest_blkdebug import Disk

if TYPE_CHECKING:
    from conftest import AppDB

pytestmark = pytest.mark.blkdebug_rules("rules/sqlite-wal-after-setup.toml")

SEED = list(range(100))


def reopened(app_db: AppDB) -> tuple[list[int], str, str]:
    app_db.close_all()
    con = app_db.open()  # a WAL database: the adapter sets exclusive locking by itself
    mode = con.execute("PRAGMA journal_mode").fetchall()[0][0]
    return app_db.ids(con), app_db.integrity(con), mode


# Proves: a failed append to the WAL fails the commit with SQLITE_IOERR_WRITE,
# the connection keeps working, and after reopening the database holds the
# setup's rows plus the later successful commit, and nothing of the failed one.
@pytest.mark.inject_error("sqlite_wal_write", state=2, once=True, name="wal-append")
def test_failed_wal_append(app_db: AppDB, blkdebug_disk: Disk) -> None:
    con = app_db.create(journal_mode="wal")
    with pytest.raises(apsw.IOError) as err:
        app_db.insert(con, 100, 100)
    assert err.value.extendedresult == apsw.SQLITE_IOERR_WRITE
    assert blkdebug_disk.rule("wal-append").hits == 1
    app_db.insert(con, 500, 5)
    assert reopened(app_db) == ([*SEED, *range(500, 505)], "ok", "wal")


# Proves: when the WAL's sync at commit fails (SQLITE_IOERR_FSYNC), the
# transaction is not committed, not even after reopening, although its frames
# reached the file. Same shared rule file as the rollback-journal and
# littlefs tests: the first flush after the setup fails.
@pytest.mark.blkdebug_rules("rules/flaky-flush.toml")
def test_failed_wal_sync(app_db: AppDB, blkdebug_disk: Disk) -> None:
    con = app_db.create(journal_mode="wal")
    with pytest.raises(apsw.IOError) as err:
        app_db.insert(con, 100, 100)
    assert err.value.extendedresult == apsw.SQLITE_IOERR_FSYNC
    failure = con.vfs.errors[-1]
    assert (failure.kind, failure.operation, failure.rule) == ("wal", "sync", "flaky-flush")
    assert reopened(app_db) == (SEED, "ok", "wal")


# Proves: a checkpoint that cannot write the database file fails, and loses
# nothing: the committed rows stay in the WAL, readable at once and after
# reopening. In WAL mode a commit writes no database page, so the first
# database write after the setup is the checkpoint's.
@pytest.mark.inject_error("sqlite_db_write", state=2, once=True, name="checkpoint-write")
def test_failed_checkpoint_loses_nothing(app_db: AppDB, blkdebug_disk: Disk) -> None:
    con = app_db.create(journal_mode="wal")
    app_db.insert(con, 100, 50)
    assert con.vfs.stats["wal_write"] > 0
    with pytest.raises(apsw.IOError):
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    assert blkdebug_disk.rule("checkpoint-write").hits == 1
    assert app_db.ids(con) == list(range(150))
    assert reopened(app_db) == (list(range(150)), "ok", "wal")
