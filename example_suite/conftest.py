"""Fixtures of the example suite: real storage code on the test's blkdebug disk.

Each fixture puts one kind of storage on ``blkdebug_disk`` (or on its
engine), so the test's markers and rule files aim at it and the test's
``blkdebug`` report shows the state and the rules that fired:

- ``app_db``: an application's SQLite database (``app.db`` and its journal or
  WAL), all files on Disks sharing ``blkdebug_disk``'s engine;
- ``flash``: a littlefs filesystem on ``blkdebug_disk``, whose image is built
  before the test's disk opens it (``pytest_blkdebug_make_image``);
- ``kv``: the suite's journaled key-value store (``kvstore.py``).

The SQLite and key-value fixtures do their setup I/O on the test's engine
(create the table and commit the first rows; format, commit the first
transaction and reopen). The suite's rule files move the engine from state 1 to state 2
when that setup is complete, and the fault rules are gated on ``state = 2``,
so a fault never hits the setup; the report's state history shows the step.

Tests that inject nothing carry the ``no_fault`` marker: they must pass with
``--blkdebug-no-rules``, which every other test must fail (each one asserts
that its fault happened).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import apsw
import littlefs
import pytest
from kvstore import EVENTS as KV_EVENTS
from kvstore import KVStore

from pytest_blkdebug import Disk
from pytest_blkdebug.adapters import littlefs as lfs_adapter
from pytest_blkdebug.adapters import sqlite as sqlite_adapter

__all__ = ["AppDB"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "no_fault: the test injects nothing; it passes with --blkdebug-no-rules too",
    )
    config.addinivalue_line(
        "markers",
        "littlefs_image: the test's image is built with a formatted littlefs holding "
        "data/config.json (see pytest_blkdebug_make_image in example_suite/conftest.py)",
    )


def pytest_blkdebug_register_events(config: pytest.Config) -> list[str]:
    """The events of the storage code under test, known to every disk here."""
    return [*sqlite_adapter.EVENTS, *lfs_adapter.EVENTS, *KV_EVENTS]


# -- SQLite -------------------------------------------------------------------------


class AppDB:
    """The application's database, ``app.db`` in the test's directory.

    Every file SQLite opens for it is a Disk on ``blkdebug_disk``'s engine.
    ``create()`` is the setup: the table and ``rows`` rows in one commit (in
    WAL mode then checkpointed, so the setup ends with ``sqlite_wal_truncate``).
    """

    def __init__(self, directory: Path, disk: Disk) -> None:
        self.directory = directory
        self.disk = disk
        self.path = directory / "app.db"
        self.connections: list[sqlite_adapter.Connection] = []

    def open(self, journal_mode: str | None = None) -> sqlite_adapter.Connection:
        con = sqlite_adapter.open_database(
            self.directory, "app.db", engine=self.disk, journal_mode=journal_mode
        )
        self.connections.append(con)
        return con

    def create(self, rows: int = 100, journal_mode: str | None = None) -> sqlite_adapter.Connection:
        """The setup: the table and ``rows`` rows in one transaction (one commit)."""
        con = self.open(journal_mode)
        con.execute("BEGIN")
        con.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, payload TEXT)")
        con.executemany("INSERT INTO t VALUES (?, ?)", self.rows(0, rows))
        con.execute("COMMIT")
        if journal_mode == "wal":
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return con

    @staticmethod
    def rows(start: int, count: int) -> list[tuple[int, str]]:
        return [(i, f"payload {i} " * 30) for i in range(start, start + count)]

    @staticmethod
    def insert(con: apsw.Connection, start: int, count: int) -> None:
        """Insert ``count`` rows in one explicit transaction.

        An error surfaces from the statement that hit it; a transaction SQLite
        has not already rolled back is rolled back, as an application would.
        """
        con.execute("BEGIN")
        try:
            con.executemany("INSERT INTO t VALUES (?, ?)", AppDB.rows(start, count))
            con.execute("COMMIT")
        except apsw.Error:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise

    @staticmethod
    def ids(con: apsw.Connection) -> list[int]:
        return [row[0] for row in con.execute("SELECT id FROM t ORDER BY id")]

    @staticmethod
    def integrity(con: apsw.Connection) -> str:
        return "\n".join(row[0] for row in con.execute("PRAGMA integrity_check"))

    def close_all(self) -> None:
        for con in reversed(self.connections):
            try:
                con.close()
            except apsw.Error:
                pass  # a test that left a fault armed; the report shows it


@pytest.fixture
def app_db(blkdebug_disk: Disk, tmp_path: Path) -> Iterator[AppDB]:
    db = AppDB(tmp_path, blkdebug_disk)
    yield db
    db.close_all()


# -- littlefs -----------------------------------------------------------------------

#: What every littlefs image holds before its test starts.
LFS_CONFIG = b'{"sample_rate": 100, "channels": [1, 2, 3]}\n' * 50


def pytest_blkdebug_make_image(
    item: pytest.Item, path: str, size: int, template: str | None
) -> str | None:
    """Images of tests marked ``littlefs_image``: littlefs, formatted and
    holding ``data/config.json``, built on a Disk without rules before the
    test's disk (with its rules) opens the file. The setup's I/O never meets
    a rule, and the test's disk sees littlefs mount it first."""
    if item.get_closest_marker("littlefs_image") is None:
        return None
    with open(path, "wb") as f:
        f.truncate(size)
    with Disk.open(path, events=lfs_adapter.EVENTS) as setup_disk:
        fs = lfs_adapter.filesystem(setup_disk, format=True)
        # files go in a directory: a directory's metadata can be relocated
        # away from a bad block, the root's (the superblock pair) cannot
        fs.mkdir("data")
        with fs.open("data/config.json", "wb") as f:
            f.write(LFS_CONFIG)
        fs.unmount()
    return path


class Flash:
    """littlefs on the test's disk (4 KiB blocks): ``mount()``, ``remount()``
    (what a device does after a reset), ``files()`` of ``data/``; ``CONFIG``
    is what ``data/config.json`` holds in a fresh image."""

    CONFIG = LFS_CONFIG

    def __init__(self, disk: Disk) -> None:
        self.disk = disk
        self.fs: littlefs.LittleFS | None = None

    def mount(self) -> littlefs.LittleFS:
        self.fs = lfs_adapter.filesystem(self.disk)
        return self.fs

    def remount(self) -> littlefs.LittleFS:
        if self.fs is not None:
            try:
                self.fs.unmount()
            except littlefs.LittleFSError:
                pass
            self.fs = None
        return self.mount()

    @property
    def device(self) -> lfs_adapter.BlockDevice:
        assert self.fs is not None, "mount first"
        return self.fs.context  # type: ignore[return-value]

    def files(self) -> dict[str, bytes]:
        assert self.fs is not None, "mount first"
        return {name: self.fs.open(f"data/{name}", "rb").read() for name in self.fs.listdir("data")}


@pytest.fixture
def flash(blkdebug_disk: Disk) -> Flash:
    return Flash(blkdebug_disk)


# -- the key-value store ------------------------------------------------------------


@pytest.fixture
def kv(blkdebug_disk: Disk) -> KVStore:
    """A store with one committed transaction, reopened: the setup writes
    (format, commit) and its end is the reopened store's first read."""
    store = KVStore.format(blkdebug_disk)
    store.commit({"config/name": "sensor-7", "config/rate": "100"})
    return KVStore.open(blkdebug_disk)
