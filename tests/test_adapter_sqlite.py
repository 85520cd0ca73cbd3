"""The SQLite adapter: real SQLite (APSW) with every file request on the engine.

Each test runs SQLite itself and checks what the engine saw, what SQLite
reported, and what the files hold afterwards, read back both through the
adapter and through Python's own ``sqlite3`` (no injection at all).
"""

from __future__ import annotations

import errno
import os
import sqlite3
import threading
from pathlib import Path

import pytest

apsw = pytest.importorskip("apsw")

from pytest_blkdebug import Disk, Engine, InjectError, RuleError, SetState  # noqa: E402
from pytest_blkdebug.adapters import sqlite as adapter  # noqa: E402
from pytest_blkdebug.adapters.sqlite import (  # noqa: E402
    EVENTS,
    DiskVFS,
    event_name,
    open_database,
    register_events,
)

#: The iotype of the Disk request each operation makes.
IOTYPE = {
    "read": "read",
    "write": "write",
    "sync": "flush",
    "truncate": "discard",
    "delete": "discard",
}


def commit_rows(con: apsw.Connection, start: int, count: int) -> None:
    """One explicit transaction, so an error surfaces at the statement that
    hit it (``with con:`` would replace it with its own rollback error)."""
    con.execute("BEGIN")
    try:
        con.executemany(
            "INSERT INTO t VALUES (?, ?)",
            [(i, f"row {i}" * 20) for i in range(start, start + count)],
        )
        con.execute("COMMIT")
    except apsw.Error:
        if con.in_transaction:
            con.execute("ROLLBACK")
        raise


def seed(directory: Path, journal_mode: str | None = None, rows: int = 100) -> None:
    """A database with ``rows`` committed rows, made without any rule."""
    con = open_database(directory, "app.db", journal_mode=journal_mode)
    con.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, payload TEXT)")
    commit_rows(con, 0, rows)
    con.close()


def ids(con: apsw.Connection) -> list[int]:
    return [r[0] for r in con.execute("SELECT id FROM t ORDER BY id")]


def check_with_stdlib(path: Path) -> list[int]:
    """Read the image with Python's sqlite3: the files are plain SQLite files."""
    con = sqlite3.connect(path)
    try:
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        return [r[0] for r in con.execute("SELECT id FROM t ORDER BY id")]
    finally:
        con.close()


def counting_rules() -> list[InjectError]:
    """An errno-0 rule per adapter event, limited to that operation's iotype.

    Each event arms its own rule (replacing the active list), and the request
    that follows is that rule's hit: ``armed`` counts events, ``hits`` the
    requests that reached the engine's check.
    """
    rules = []
    for kind in adapter.KINDS:
        for op in adapter.OPERATIONS:
            rules.append(
                InjectError(
                    event_name(kind, op), errno=0, iotype=IOTYPE[op], name=event_name(kind, op)
                )
            )
    return rules


def test_every_file_request_goes_through_the_engine(tmp_path: Path) -> None:
    engine = Engine(counting_rules(), events=EVENTS)
    con = open_database(tmp_path, "app.db", engine=engine)
    vfs = con.vfs
    con.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, payload TEXT)")
    for batch in range(3):
        commit_rows(con, batch * 50, 50)
    con.execute("DELETE FROM t WHERE id % 2 = 0")
    con.execute("VACUUM")  # shrinks the file: xTruncate
    assert len(ids(con)) == 75
    stats = dict(vfs.stats)
    con.close()

    # SQLite really used each kind of request, and the engine saw all of them.
    for key in (
        "db_read",
        "db_write",
        "db_sync",
        "db_truncate",
        "journal_write",
        "journal_sync",
        "journal_delete",
    ):
        assert stats.get(key, 0) > 0, f"SQLite made no {key} request: {stats}"
    for kind in adapter.KINDS:
        for op in adapter.OPERATIONS:
            status = engine.rule(event_name(kind, op))
            made = stats.get(f"{kind}_{op}", 0)
            assert status.armed == made, (kind, op, status, made)
            if op in ("read", "write"):
                # every read and write is checked, one hit per request
                assert status.hits == made, (kind, op, status, made)
            else:
                # sync is checked only when the file is dirty, truncate only
                # when it shrinks, delete only when the file is not empty
                assert status.hits <= made, (kind, op, status, made)
    assert engine.rule("sqlite_db_sync").hits > 0
    assert engine.rule("sqlite_journal_delete").hits > 0
    # the trace names the adapter's events next to the Disk's requests
    assert {e.name for e in engine.trace if e.kind == "event"} & set(EVENTS)
    # what went through the engine is a plain SQLite database
    assert sorted(os.listdir(tmp_path)) == ["app.db"]
    assert check_with_stdlib(tmp_path / "app.db") == list(range(1, 150, 2))


@pytest.mark.parametrize(
    ("event", "iotype", "err", "exc_type", "code"),
    [
        ("sqlite_db_write", "write", errno.EIO, "IOError", "SQLITE_IOERR_WRITE"),
        ("sqlite_journal_write", "write", errno.ENOSPC, "FullError", "SQLITE_FULL"),
        ("sqlite_db_write", "write", errno.EDQUOT, "FullError", "SQLITE_FULL"),
        ("sqlite_journal_sync", "flush", errno.EIO, "IOError", "SQLITE_IOERR_FSYNC"),
        ("sqlite_db_sync", "flush", errno.EIO, "IOError", "SQLITE_IOERR_FSYNC"),
        ("sqlite_journal_delete", "discard", errno.EIO, "IOError", "SQLITE_IOERR_DELETE"),
    ],
)
def test_a_failed_commit_reports_sqlites_code_and_loses_nothing(
    tmp_path: Path, event: str, iotype: str, err: int, exc_type: str, code: str
) -> None:
    seed(tmp_path)
    con = open_database(
        tmp_path,
        "app.db",
        rules=[InjectError(event, errno=err, iotype=iotype, once=True, name="f")],
    )
    with pytest.raises(getattr(apsw, exc_type)) as info:
        commit_rows(con, 100, 100)
    assert info.value.extendedresult == getattr(apsw, code)
    assert con.engine.rule("f").hits == 1 and con.engine.rule("f").consumed
    [failure] = con.vfs.errors
    assert (failure.rule, failure.code, failure.error.errno) == ("f", getattr(apsw, code), err)
    assert event == f"sqlite_{failure.kind}_{failure.operation}"
    # the connection goes on: the failed transaction is gone, the old rows are there
    assert ids(con) == list(range(100))
    con.close()
    again = open_database(tmp_path, "app.db")
    assert ids(again) == list(range(100))
    again.close()
    assert check_with_stdlib(tmp_path / "app.db") == list(range(100))


def test_journal_sync_failure_leaves_the_database_file_untouched(tmp_path: Path) -> None:
    seed(tmp_path)
    before = (tmp_path / "app.db").read_bytes()
    con = open_database(
        tmp_path,
        "app.db",
        rules=[InjectError("sqlite_journal_sync", iotype="flush", once=True, name="sync")],
    )
    with pytest.raises(apsw.IOError):
        commit_rows(con, 100, 10)
    # SQLite writes the database only after the journal is durable
    assert con.vfs.stats["db_write"] == 0
    assert (tmp_path / "app.db").read_bytes() == before
    con.close()


def test_a_read_error_fails_the_query_and_once_means_once(tmp_path: Path) -> None:
    seed(tmp_path)
    # sector 8 is page 2; opening reads only page 1
    con = open_database(
        tmp_path,
        "app.db",
        rules=[InjectError("sqlite_db_read", sector=8, iotype="read", once=True, name="bad-read")],
    )
    with pytest.raises(apsw.IOError) as info:
        ids(con)
    assert info.value.extendedresult == apsw.SQLITE_IOERR_READ
    assert ids(con) == list(range(100))  # the rule was consumed
    assert con.engine.rule("bad-read").hits == 1
    con.close()


def test_a_sector_rule_fails_only_requests_covering_that_sector(tmp_path: Path) -> None:
    seed(tmp_path)
    size = (tmp_path / "app.db").stat().st_size
    last_sector = (size - 1) // 512
    con = open_database(
        tmp_path,
        "app.db",
        rules=[InjectError("sqlite_db_read", sector=last_sector, iotype="read", name="last")],
    )
    # page 1 (the header) reads fine; the scan reaches the last page and fails
    assert con.execute("PRAGMA page_count").fetchall()[0][0] == size // 4096
    with pytest.raises(apsw.IOError):
        con.execute("SELECT sum(length(payload)) FROM t").fetchall()
    failure = con.vfs.errors[-1]
    assert failure.error.offset <= last_sector * 512 < failure.error.offset + failure.error.length
    con.close()


@pytest.mark.parametrize("event", ["sqlite_wal_write", "sqlite_wal_sync"])
def test_wal_mode_failures_keep_committed_rows(tmp_path: Path, event: str) -> None:
    seed(tmp_path, journal_mode="wal")
    con = open_database(
        tmp_path,
        "app.db",
        rules=[
            InjectError(
                event, iotype="flush" if event.endswith("sync") else "write", once=True, name="wal"
            )
        ],
    )
    assert con.execute("PRAGMA journal_mode").fetchall() == [("wal",)]
    with pytest.raises(apsw.IOError):
        commit_rows(con, 100, 50)
    assert con.engine.rule("wal").hits == 1
    assert con.vfs.errors[-1].kind == "wal"
    commit_rows(con, 200, 5)  # the connection still works
    con.close()
    again = open_database(tmp_path, "app.db")  # a WAL database: exclusive mode by itself
    assert ids(again) == [*range(100), *range(200, 205)]
    again.close()


def test_journal_mode_truncate_checks_the_truncation(tmp_path: Path) -> None:
    seed(tmp_path, journal_mode="truncate")
    con = open_database(
        tmp_path,
        "app.db",
        journal_mode="truncate",
        rules=[InjectError("sqlite_journal_truncate", iotype="discard", once=True, name="trunc")],
    )
    with pytest.raises(apsw.IOError) as info:
        commit_rows(con, 100, 20)
    assert info.value.extendedresult == apsw.SQLITE_IOERR_TRUNCATE
    assert con.engine.rule("trunc").hits == 1
    con.close()
    again = open_database(tmp_path, "app.db")
    assert ids(again) == list(range(100))
    again.close()


def test_a_full_device_without_any_rule(tmp_path: Path) -> None:
    con = open_database(tmp_path, "app.db", capacity=64 << 10)
    con.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, payload TEXT)")
    with pytest.raises(apsw.FullError):
        commit_rows(con, 0, 1000)
    assert any(e.error.errno == errno.ENOSPC and e.rule is None for e in con.vfs.errors)
    assert ids(con) == []
    con.close()


def test_temporary_files_are_disks_too_and_are_deleted(tmp_path: Path) -> None:
    engine = Engine(
        [InjectError("sqlite_temp_write", errno=0, iotype="write", name="tmp")], events=EVENTS
    )
    con = open_database(tmp_path, "app.db", engine=engine)
    con.execute("PRAGMA temp_store=FILE")
    con.execute("CREATE TEMP TABLE scratch(x)")
    con.execute("PRAGMA temp.cache_size=2")  # make the temporary database spill
    con.execute("BEGIN")
    con.executemany("INSERT INTO scratch VALUES (?)", [("x" * 500,) for _ in range(200)])
    con.execute("COMMIT")
    assert engine.rule("tmp").hits == con.vfs.stats["temp_write"] > 0
    assert any(name.startswith("sqlite-temp-") for name in os.listdir(tmp_path))
    con.close()
    assert os.listdir(tmp_path) == ["app.db"]


def test_state_spans_the_database_and_its_journal(tmp_path: Path) -> None:
    # the journal's deletion (commit 1 done) arms a failure of the database's next write
    disk = Disk.create(
        tmp_path / "unused.img",
        "1M",
        events=EVENTS,
        rules=[
            SetState("sqlite_journal_delete", new_state=2, state=1, name="committed"),
            InjectError("sqlite_db_write", state=2, once=True, name="second"),
        ],
    )
    con = open_database(tmp_path, "app.db", engine=disk)  # share the disk's engine
    con.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, payload TEXT)")
    assert disk.state == 2
    with pytest.raises(apsw.IOError):
        commit_rows(con, 0, 10)
    assert [(c.old, c.new, c.event) for c in disk.history] == [(1, 2, "sqlite_journal_delete")]
    assert disk.rule("second").hits == 1
    con.close()
    disk.close()


def test_a_breakpoint_holds_the_commit_between_journal_sync_and_database_write(
    tmp_path: Path,
) -> None:
    seed(tmp_path)
    before = (tmp_path / "app.db").read_bytes()
    con = open_database(tmp_path, "app.db")
    con.engine.break_on("sqlite_db_write", "db")
    errors: list[BaseException] = []

    def commit() -> None:
        try:
            commit_rows(con, 100, 10)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    worker = threading.Thread(target=commit)
    worker.start()
    try:
        con.engine.wait_break("db", timeout=10)
        # held at the first database write: the journal is complete and synced
        assert (tmp_path / "app.db-journal").stat().st_size > 0
        assert (tmp_path / "app.db").read_bytes() == before
        assert con.vfs.stats["journal_sync"] >= 1
    finally:
        con.engine.remove_break("db")
        worker.join(10)
    assert not worker.is_alive() and not errors
    assert ids(con) == list(range(110))
    con.close()


def test_two_connections_lock_each_other_out(tmp_path: Path) -> None:
    seed(tmp_path)
    with DiskVFS(temp_dir=tmp_path) as vfs:
        a = vfs.connect(tmp_path / "app.db")
        b = vfs.connect(tmp_path / "app.db")
        a.execute("BEGIN IMMEDIATE")
        a.execute("INSERT INTO t VALUES (1000, 'a')")
        with pytest.raises(apsw.BusyError):
            b.execute("BEGIN IMMEDIATE")
        a.execute("COMMIT")
        assert ids(b)[-1] == 1000
        # one image per file however many handles SQLite opens on it
        assert list(vfs.disks) == [str(tmp_path / "app.db")]
    assert vfs.closed and vfs.vfs_name not in apsw.vfs_names()


def test_open_database_unregisters_its_vfs_on_close(tmp_path: Path) -> None:
    con = open_database(tmp_path, "app.db")
    name = con.vfs.vfs_name
    assert name in apsw.vfs_names()
    con.close()
    assert name not in apsw.vfs_names()
    assert not os.path.exists(tmp_path / "app.db-journal")


def test_event_names_and_registration() -> None:
    # the names docs/events.md documents, sqlite_<kind>_<operation>, spelt out
    assert EVENTS == (
        *("sqlite_db_read", "sqlite_db_write", "sqlite_db_sync"),
        *("sqlite_db_truncate", "sqlite_db_delete"),
        *("sqlite_journal_read", "sqlite_journal_write", "sqlite_journal_sync"),
        *("sqlite_journal_truncate", "sqlite_journal_delete"),
        *("sqlite_wal_read", "sqlite_wal_write", "sqlite_wal_sync"),
        *("sqlite_wal_truncate", "sqlite_wal_delete"),
        *("sqlite_temp_read", "sqlite_temp_write", "sqlite_temp_sync"),
        *("sqlite_temp_truncate", "sqlite_temp_delete"),
    )
    assert event_name("journal", "sync") == "sqlite_journal_sync"
    with pytest.raises(ValueError, match="kinds: db, journal, wal, temp"):
        event_name("index", "sync")
    engine = Engine()
    with pytest.raises(RuleError, match="unknown event 'sqlite_journal_sync'"):
        engine.add_rules([InjectError("sqlite_journal_sync")])
    assert register_events(engine) == EVENTS
    engine.add_rules([InjectError("sqlite_journal_sync")])
    assert adapter.pytest_blkdebug_register_events(None) == list(EVENTS)  # type: ignore[arg-type]


def test_connect_rejects_a_journal_mode_sqlite_refuses(tmp_path: Path) -> None:
    with DiskVFS() as vfs, pytest.raises(ValueError, match="refused journal_mode='bogus'"):
        vfs.connect(tmp_path / "app.db", journal_mode="bogus")
    with pytest.raises(NotADirectoryError, match="not a directory"):
        open_database(tmp_path / "missing", "app.db")
