"""Crash states (core/crash.py, core/crashstates.py): the durability model,
the state list, images, and a naive model that the states must equal."""

from __future__ import annotations

import itertools
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_blkdebug import Disk, InjectedError, InjectError
from pytest_blkdebug.core.crashplan import full_plan

SECTOR = 512


def block(value: int, sectors: int = 1) -> bytes:
    return bytes([value]) * (SECTOR * sectors)


def make(tmp_path, sectors: int = 8, **kwargs) -> Disk:
    return Disk.create(tmp_path / "disk.img", sectors * SECTOR, **kwargs)


def images(crashes) -> set[bytes]:
    result = set()
    for crash in crashes:
        data = crash.read()
        assert data is not None
        result.add(data)
    return result


def test_recording_logs_stores_and_flushes_in_order(tmp_path):
    disk = make(tmp_path)
    with disk.record() as run:
        disk.write(0, block(1))
        disk.write_zeroes(512, 512)
        disk.discard(1024, 512)
        disk.flush()
        run.mark("done")
    disk.write(2048, block(9))  # after the recording: not logged
    ops = [(w.number, w.operation, w.offset, w.length) for w in run.writes]
    assert ops == [(1, "write", 0, 512), (2, "write_zeroes", 512, 512), (3, "discard", 1024, 512)]
    assert not disk.engine.recorders
    crashes = run.crashes()
    assert [c.id for c in crashes][:2] == ["e0-none", "e0-all"]
    # the end state is e0-all's image again: listed once, with the marks it knows
    every = crashes.by_id("e0-all")
    assert every.same_as == ["e1-none"]
    assert crashes.states == len(crashes) + 1
    assert every.durable_marks == ()  # no flush after the mark
    assert every.marks == ("done",)


def test_flush_makes_only_earlier_writes_durable(tmp_path):
    disk = make(tmp_path, sectors=4)
    with disk.record() as run:
        disk.write(0, block(1))
        disk.flush()
        disk.write(512, block(2))
    states = {c.id: c for c in run.crashes()}
    # epoch 0: the write may be lost; after the flush it never is
    assert states["e0-none"].read() == bytes(2048)
    for crash in states.values():
        if crash.epoch == 1:
            assert crash.read()[:512] == block(1)
            assert crash.durable == 1
    assert "e1-none" not in states  # e0-all's image
    assert images([states["e0-all"], states["e1-all"]]) == {
        block(1) + bytes(1536),
        block(1) + block(2) + bytes(1024),
    }


def test_a_write_from_a_reused_buffer_is_recorded_as_it_was_stored(tmp_path):
    # The caller (NBD's reused receive buffer) overwrites its bytearray after
    # the write: the recording keeps what reached the image.
    disk = make(tmp_path, sectors=2)
    buffer = bytearray(block(7))
    with disk.record() as run:
        disk.write(0, buffer)
        buffer[:] = block(9)
        disk.write(512, memoryview(buffer))
        buffer[:] = block(5)
    assert run.crashes().by_id("e0-all").read() == block(7) + block(9)


def test_failed_flush_makes_nothing_durable(tmp_path):
    disk = make(
        tmp_path,
        sectors=2,
        events=["fail"],
        rules=[InjectError("fail", iotype="flush", once=True, name="f")],
    )
    with disk.record() as run:
        disk.write(0, block(1))
        disk.event("fail")
        with pytest.raises(InjectedError):
            disk.flush()
    crashes = run.crashes()
    assert crashes.epochs == 1
    assert images(crashes) == {bytes(1024), block(1) + bytes(512)}


def test_flush_issued_before_a_write_completed_does_not_cover_it(tmp_path):
    disk = make(tmp_path, sectors=2)
    run = disk.record().start()
    token = run.on_flush_begin(disk)
    disk.engine.recorders = ()  # write behind the recorder's back, then log it by hand
    disk.write(0, block(3))
    run.on_store(disk, "write", 0, 512, block(3))
    run.on_flush_end(disk, token, True)
    run.stop()
    assert images(run.crashes()) == {bytes(1024), block(3) + bytes(512)}


def test_subsets_prefixes_and_ids_are_deterministic(tmp_path):
    disk = make(tmp_path)
    with disk.record() as run:
        for i in range(3):
            disk.write(i * SECTOR, block(i + 1))
    ids = [c.id for c in run.crashes()]
    assert ids == ["e0-none", "e0-all", "e0-p1", "e0-p2", "e0-s2", "e0-s4", "e0-s5", "e0-s6"]
    assert ids == [c.id for c in run.crashes()]
    assert len(images(run.crashes())) == 8


def test_overwritten_writes_are_deduplicated(tmp_path):
    disk = make(tmp_path, sectors=1)
    with disk.record() as run:
        disk.write(0, block(1))
        disk.write(0, block(2))
    crashes = run.crashes()
    # none, all (= only the second), first only; {second} == all
    assert crashes.states == 4
    assert len(crashes) == 3
    assert images(crashes) == {bytes(512), block(1), block(2)}


def test_many_volatile_writes_are_sampled_with_the_seed(tmp_path):
    disk = make(tmp_path, sectors=16)
    with disk.record() as run:
        for i in range(12):
            disk.write(i * SECTOR, block(i + 1))
    a = run.crashes(max_states=10, seed=1)
    b = run.crashes(max_states=10, seed=1)
    c = run.crashes(max_states=10, seed=2)
    assert [x.id for x in a] == [x.id for x in b]
    assert [x.kept for x in a] == [x.kept for x in b]
    assert [x.kept for x in a] != [x.kept for x in c]
    assert a.states == 1 + 1 + 11 + 10


def test_torn_writes_cut_at_sector_boundaries_but_not_inside_an_atomic_unit(tmp_path):
    disk = make(tmp_path, sectors=16)
    with disk.record() as run:
        disk.write(0, block(7, 8))
    torn = [c for c in run.crashes(torn=True) if c.torn is not None]
    assert [c.cut for c in torn] == [512 * k for k in range(1, 8)]
    assert torn[0].read()[:1024] == block(7) + bytes(512)
    run.device(disk, sector_size=512, atomic=4096)
    assert [c for c in run.crashes(torn=True) if c.torn is not None] == []


def test_garbage_fills_the_cut_part_with_seeded_bytes(tmp_path):
    disk = make(tmp_path, sectors=4)
    with disk.record() as run:
        disk.write(0, block(7, 2))
    garbage = {c.id: c for c in run.crashes(garbage=True) if c.garbage}
    assert sorted(garbage) == ["e0-g1.0", "e0-g1.512"]
    image = garbage["e0-g1.512"].read()
    assert image[:512] == block(7)
    assert image[512:1024] not in (block(7), bytes(512))
    assert image == run.crashes(garbage=True).by_id("e0-g1.512").read()


def test_crash_images_never_touch_the_live_image_or_each_other(tmp_path):
    disk = make(tmp_path, sectors=2)
    disk.write(0, block(5))
    with disk.record() as run:
        disk.write(0, block(6))
    live = disk.read(0, 1024)
    crash = run.crashes().by_id("e0-none")
    first, second = crash.open(), crash.open()
    first.write(0, block(9))
    assert second.read(0, 512) == block(5)  # the base as it was when recording began
    assert disk.read(0, 1024) == live
    first.close()
    second.close()
    assert not os.path.exists(first.path)


def test_restore_writes_every_file_under_its_own_name(tmp_path):
    a = Disk.create(tmp_path / "a.img", 1024)
    b = Disk.create(tmp_path / "b.img", 1024, engine=a.engine)
    with a.record() as run:
        a.write(0, block(1))
        a.flush()
        b.write(0, block(2))
    out = tmp_path / "out"
    crash = run.crashes().by_id("e1-all")
    written = crash.restore(out)
    assert sorted(os.path.basename(p) for p in written) == ["a.img", "b.img"]
    assert (out / "a.img").read_bytes()[:512] == block(1)
    assert (out / "b.img").read_bytes()[:512] == block(2)
    with pytest.raises(ValueError, match="say which one"):
        crash.open()
    with crash.open(b) as image:
        assert image.read(0, 512) == block(2)


def test_files_created_and_deleted_need_a_directory_sync(tmp_path):
    engine_disk = make(tmp_path, sectors=1)
    path = str(tmp_path / "new.log")
    with engine_disk.record() as run:
        with open(path, "wb"):
            pass
        engine = engine_disk.engine
        engine.file_op("create", path)
        with Disk(path, engine=engine, size=4096) as log:
            log.write(0, b"x" * 100)
            log.flush()
            engine.file_op("dirsync", str(tmp_path))
            engine.file_op("truncate", path, size=10, disk=log)
        os.unlink(path)
        engine.file_op("delete", path)
    exists = {
        ident: c.plan()[os.path.abspath(path)] is not None
        for c in run.crashes()
        for ident in [c.id, *c.same_as]
    }
    # before the directory sync the file may be missing (even once its
    # contents are flushed: epoch 1); after it, it is there until the delete
    # is synced (never)
    assert exists["e0-none"] is False
    assert exists["e1-none"] is False
    assert exists["e2-none"] is True
    assert False in {v for k, v in exists.items() if k.startswith("e2")}
    sizes = set()
    for crash in run.crashes():
        content = crash.plan()[os.path.abspath(path)]
        if content is not None:
            sizes.add(content[1])
    assert sizes == {0, 10, 100}  # created empty, written, truncated


def test_marks_become_durable_after_a_later_flush(tmp_path):
    disk = make(tmp_path, sectors=2)
    with disk.record() as run:
        disk.write(0, block(1))
        disk.flush()
        run.mark("txn 1")
        disk.write(512, block(2))
        disk.flush()
        run.mark("txn 2")
    last = run.crashes()[-1]
    assert last.marks == ("txn 1", "txn 2")
    assert last.durable_marks == ("txn 1",)
    report = last.describe()
    assert last.id in report and "same-image state's point): txn 1" in report
    assert "same images as: e2-none" in report


def test_recording_cost_is_one_truthiness_test_when_off(tmp_path):
    disk = make(tmp_path)
    assert disk.engine.recorders == ()


async def _aio_workload(disk: Disk) -> None:
    await disk.aio.write(0, block(4))
    await disk.aio.flush()
    await disk.aio.write_zeroes(512, 512)
    await disk.aio.discard(1024, 512)


def test_asyncio_view_is_recorded(tmp_path):
    import asyncio

    disk = make(tmp_path)
    with disk.record() as run:
        asyncio.run(_aio_workload(disk))
    assert [w.operation for w in run.writes] == ["write", "write_zeroes", "discard"]
    assert run.crashes().epochs == 2


# -- the naive model -----------------------------------------------------------------

SECTORS = 4
ops_strategy = st.lists(
    st.one_of(
        st.tuples(
            st.just("write"),
            st.integers(0, SECTORS - 1),
            st.integers(1, 2),
            st.integers(1, 255),
        ),
        st.tuples(st.just("flush"), st.just(0), st.just(0), st.just(0)),
        st.tuples(st.just("failflush"), st.just(0), st.just(0), st.just(0)),
        st.tuples(st.just("discard"), st.integers(0, SECTORS - 1), st.integers(1, 2), st.just(0)),
        st.tuples(st.just("zero"), st.integers(0, SECTORS - 1), st.integers(1, 2), st.just(0)),
    ),
    max_size=12,
)


def naive_model(ops: list[tuple[str, int, int, int]], base: bytes):
    """Straight from the definitions. Requests are numbered as the recording
    numbers them (stores and completed flushes, failed ones too); at every
    moment t the image is base + the writes durable at t (a successful flush
    numbered below t was issued after them) + any subset of the other writes
    completed before t, applied in completion order."""
    writes: dict[int, tuple[int, int, bytes]] = {}  # number -> (offset, length, data)
    good: list[int] = []  # numbers of successful flushes
    number, dirty = 0, False
    for kind, sector, count, value in ops:
        if kind in ("flush", "failflush"):
            if kind == "failflush" and not dirty:
                continue  # the test skips it: a clean disk's flush is not checked
            number += 1
            if kind == "flush":
                good.append(number)
                dirty = False
            continue
        number += 1
        offset = sector * SECTOR
        length = min(count, SECTORS - sector) * SECTOR
        writes[number] = (
            offset,
            length,
            bytes([value]) * length if kind == "write" else bytes(length),
        )
        dirty = True

    def durable(t: int) -> list[int]:
        return [w for w in writes if any(w < f < t for f in good)]

    def image(numbers: list[int]) -> bytes:
        data = bytearray(base)
        for w in sorted(numbers):
            offset, length, chunk = writes[w]
            data[offset : offset + length] = chunk
        return bytes(data)

    result = set()
    for t in range(1, number + 2):
        kept = durable(t)
        volatile = [w for w in writes if w < t and w not in kept]
        for r in range(len(volatile) + 1):
            for subset in itertools.combinations(volatile, r):
                result.add(image([*kept, *subset]))
    return result, durable, image


@settings(
    # BLKDEBUG_CRASH_EXAMPLES=1000 for a longer search (the suite keeps it short)
    max_examples=int(os.environ.get("BLKDEBUG_CRASH_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(ops=ops_strategy)
def test_crash_images_equal_the_naive_model(tmp_path_factory, ops):
    tmp_path = tmp_path_factory.mktemp("naive")
    disk = Disk.create(tmp_path / "d.img", SECTORS * SECTOR, events=["fail"])
    base = bytes(range(256)) * (SECTORS * SECTOR // 256)
    disk.write(0, base)
    disk.flush()
    with disk.record() as run:
        for kind, sector, count, value in ops:
            offset = sector * SECTOR
            length = min(count, SECTORS - sector) * SECTOR
            if kind == "write":
                disk.write(offset, bytes([value]) * length)
            elif kind == "discard":
                disk.discard(offset, length)
            elif kind == "zero":
                disk.write_zeroes(offset, length)
            elif kind == "flush":
                disk.flush()
            elif disk.dirty:  # a clean disk's flush is not checked (and adds nothing)
                disk.engine.add_rules([InjectError("fail", iotype="flush", once=True)])
                disk.event("fail")
                with pytest.raises(InjectedError):
                    disk.flush()
    crashes = run.crashes(subset_limit=12)
    expected, durable, image = naive_model(ops, base)
    assert images(crashes) == expected
    for crash in run.crashes(torn=True, garbage=True):  # the epoch's shortcut
        # keys and plans a state as a full resolve does; a recycled copy
        # (open) holds what a fresh one (restore) does
        fresh = crash.restore(tmp_path / "fresh")[0]
        with open(fresh, "rb") as f:
            assert crash.read() == f.read(), crash.describe()
        assert crash.key() == full_plan(crash._base, crash._chosen, crash._torn)[1]
        assert crash.plan() == full_plan(crash._base, crash._chosen, crash._torn)[0]
    for crash in crashes:  # each image keeps every write durable at its point
        must = durable(crash.point.number)
        kept = [w.number for w in crash.kept]
        assert not set(must) & set(kept) and all(k < crash.point.number for k in kept)
        assert crash.read() == image([*must, *kept]), crash.describe()
    disk.close()
    run.close()


def test_sqlite_adapter_reports_its_files_coming_and_going(tmp_path):
    sqlite = pytest.importorskip("pytest_blkdebug.adapters.sqlite")
    con = sqlite.open_database(tmp_path, "app.db", journal_mode="delete")
    con.execute("PRAGMA synchronous=EXTRA")
    con.execute("CREATE TABLE t(x)")
    with con.engine.record() as run:
        con.execute("INSERT INTO t VALUES (1)")
    con.close()
    journal = str(tmp_path / "app.db-journal")
    ops = [(w.operation, w.path) for w in run.writes if w.path == journal]
    assert ops[0] == ("create", journal)
    assert ops[-1] == ("delete", journal)
    assert ("discard", journal) in ops  # the delete is checked as a discard first
    points = {c.point.operation for c in run.crashes()}
    # the journal's first sync syncs the directory; EXTRA syncs it after the delete
    assert "dirsync" in points
    syncs = [f for f in run.log().flushes if f.unit.directory]
    assert len(syncs) == 2
    # every state: the database is there, the journal only if its creation was synced
    for crash in run.crashes():
        plan = crash.plan()
        assert plan[str(tmp_path / "app.db")] is not None


# -- files that come and go, against the naive model ------------------------------------

file_ops = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(["write_a", "write_b"]), st.integers(0, 1), st.integers(1, 255)),
        st.tuples(
            st.sampled_from(["flush_a", "flush_b", "create_b", "delete_b", "dirsync"]),
            st.just(0),
            st.just(0),
        ),
    ),
    max_size=10,
)


def naive_files(ops, base_a: bytes) -> set[tuple[bytes, bytes | None]]:
    """(a.img, b.log or None) at every moment, from the definitions: a write
    is durable once a later flush of its file (its inode) completed, a create
    or delete once a later directory sync did; b.log names the inode of the
    last kept create, nothing after a kept delete or before any."""
    done: list[tuple] = []  # (time, kind, target, offset, data)
    flushes: list[tuple[int, object]] = []  # (time, unit): a flush covers earlier items
    inode, exists = 0, False
    for time, (kind, sector, value) in enumerate(ops):
        if kind == "write_a":
            done.append((time, "w", "a", sector * SECTOR, bytes([value]) * SECTOR))
        elif kind == "write_b" and exists:
            done.append((time, "w", inode, sector * SECTOR, bytes([value]) * SECTOR))
        elif kind == "flush_a":
            flushes.append((time, "a"))
        elif kind == "flush_b" and exists:
            flushes.append((time, inode))
        elif kind == "create_b" and not exists:
            inode, exists = inode + 1, True
            done.append((time, "d", "dir", inode, None))
        elif kind == "delete_b" and exists:
            exists = False
            done.append((time, "d", "dir", None, None))
        elif kind == "dirsync":
            flushes.append((time, "dir"))
    result = set()
    for t in range(len(ops) + 1):
        before = [d for d in done if d[0] < t]
        durable = [d for d in before if any(d[0] < f < t and u == d[2] for f, u in flushes)]
        volatile = [d for d in before if d not in durable]
        for r in range(len(volatile) + 1):
            for subset in itertools.combinations(volatile, r):
                kept = sorted([*durable, *subset])
                a = bytearray(base_a)
                named = None
                for _, kind, target, offset, data in kept:
                    if target == "a":
                        a[offset : offset + SECTOR] = data
                    elif kind == "d":
                        named = offset  # the inode a create names, None after a delete
                b = None
                if named is not None:
                    content = bytearray()
                    for _, kind, target, offset, data in kept:
                        if kind == "w" and target == named:
                            content.extend(bytes(max(0, offset + SECTOR - len(content))))
                            content[offset : offset + SECTOR] = data
                    b = bytes(content)
                result.add((bytes(a), b))
    return result


@settings(
    max_examples=int(os.environ.get("BLKDEBUG_CRASH_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(ops=file_ops)
def test_files_that_come_and_go_equal_the_naive_model(tmp_path_factory, ops):
    tmp_path = tmp_path_factory.mktemp("files")
    a = Disk.create(tmp_path / "a.img", 2 * SECTOR)
    base_a = b"\x11" * (2 * SECTOR)
    a.write(0, base_a)
    engine = a.engine
    b_path = str(tmp_path / "b.log")
    b: Disk | None = None
    with a.record() as run:
        for kind, sector, value in ops:
            if kind == "write_a":
                a.write(sector * SECTOR, bytes([value]) * SECTOR)
            elif kind == "write_b" and b is not None:
                b.write(sector * SECTOR, bytes([value]) * SECTOR)
            elif kind == "flush_a":
                a.flush()
            elif kind == "flush_b" and b is not None:
                b.flush()
            elif kind == "create_b" and b is None:
                with open(b_path, "wb"):
                    pass
                engine.file_op("create", b_path)
                b = Disk(b_path, engine=engine, size=2 * SECTOR)
            elif kind == "delete_b" and b is not None:
                b.close()
                b = None
                os.unlink(b_path)
                engine.file_op("delete", b_path)
            elif kind == "dirsync":
                engine.file_op("dirsync", str(tmp_path))
    if b is not None:
        b.close()
    ours = set()
    out = tmp_path / "out"
    for crash in run.crashes(subset_limit=12):
        crash.restore(out)
        image_b = out / "b.log"
        ours.add(((out / "a.img").read_bytes(), image_b.read_bytes() if image_b.exists() else None))
    assert ours == naive_files(ops, base_a)
    a.close()
    run.close()
