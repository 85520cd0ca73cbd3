"""The request path (core/path.py): operations as data plus one generator,
the drivers' protocol, the effect stage (delay, errno, the lies) and the
store hooks recorders and bad-sector rules rely on."""

from __future__ import annotations

import asyncio
import errno
import random
import threading
import time

import pytest

import pytest_blkdebug as bd
from pytest_blkdebug.core import path
from pytest_blkdebug.core.aio import arun
from pytest_blkdebug.core.decision import Decision
from pytest_blkdebug.core.hold import Hold


@pytest.fixture
def disk(tmp_path):
    with bd.Disk.create(tmp_path / "img", 1 << 16, hold_timeout=10) as d:
        yield d


def decided(monkeypatch, decision: Decision | None) -> None:
    """Make the decision stage return ``decision`` for every request."""
    monkeypatch.setattr(path, "decide", lambda engine, op, offset, length: decision)


def drive(request):
    return path.run(request, hold_timeout=10)


# -- operations as data ------------------------------------------------------------


def test_each_operation_is_written_once_as_data():
    assert set(path.OPERATIONS) == {
        "read",
        "write",
        "write_zeroes",
        "discard",
        "block_status",
        "flush",
    }
    assert path.WRITE.before == ("write_aio", "pwritev") and path.WRITE.after == ("pwritev_done",)
    assert path.READ.events == ("read_aio",)
    assert [op.name for op in path.OPERATIONS.values() if op.stores] == [
        "write",
        "write_zeroes",
        "discard",
    ]


# -- the generator protocol --------------------------------------------------------------


def test_a_request_yields_at_its_host_io_and_returns_its_result(disk):
    disk.write(0, b"abc")
    request = path.read(disk, 0, 3)
    assert next(request) == path.HOST_IO
    with pytest.raises(StopIteration) as stop:
        request.send(None)
    assert stop.value.value == b"abc"


def test_a_held_request_yields_its_hold_then_its_host_io(disk):
    disk.break_on("pwritev", "A")
    request = path.write(disk, 0, b"held")
    hold = next(request)
    assert isinstance(hold, Hold) and hold.tags == ["A"] and disk.is_suspended("A")
    disk.resume("A")
    assert request.send(True) == path.HOST_IO
    assert disk.read(0, 4) == bytes(4)  # not stored until the host I/O runs
    with pytest.raises(StopIteration):
        request.send(None)
    assert disk.read(0, 4) == b"held" and disk.dirty


def test_a_hold_that_timed_out_raises_and_is_abandoned(disk):
    disk.break_on("read_aio", "A")
    request = path.read(disk, 0, 1)
    next(request)
    with pytest.raises(bd.BreakpointTimeout, match="'A'"):
        request.send(False)
    assert not disk.is_suspended("A") and not disk.holds


def test_on_hold_is_called_once_per_request_in_the_blocked_thread(disk):
    disk.break_on("write_aio", "A")
    disk.break_on("pwritev_done", "B")
    seen: list[tuple[str, str]] = []

    def on_hold(hold: Hold) -> None:
        seen.append((hold.event, threading.current_thread().name))

    t = threading.Thread(target=disk.write, args=(0, b"x"), kwargs={"on_hold": on_hold}, name="w")
    t.start()
    disk.wait_break("A")
    disk.resume("A")
    disk.wait_break("B")
    disk.resume("B")
    t.join(10)
    assert seen == [("write_aio", "w")]


def test_an_empty_discard_yields_nothing_and_dirties_only_the_format_node(disk):
    request = path.discard(disk, 0, 0)
    with pytest.raises(StopIteration):
        next(request)
    assert disk.dirty and not disk.image.dirty_check


# -- the effect stage --------------------------------------------------------------------------


def test_a_delay_is_waited_and_counted(disk, monkeypatch):
    decided(monkeypatch, Decision("slow", delay=0.05))
    start = time.monotonic()
    drive(path.write(disk, 0, b"x"))
    assert time.monotonic() - start >= 0.05
    asyncio.run(arun(path.read(disk, 0, 1), hold_timeout=10))
    assert disk.engine.injected_delay == pytest.approx(0.1)
    assert disk.read(0, 1) == b"x"


def test_a_delay_yields_its_seconds(disk, monkeypatch):
    decided(monkeypatch, Decision("slow", delay=2.5))
    request = path.read(disk, 0, 1)
    assert next(request) == 2.5


@pytest.mark.parametrize("immediately", [False, True])
def test_an_errno_reschedules_once_unless_immediately(disk, monkeypatch, immediately):
    decided(monkeypatch, Decision("eio", errno=errno.EIO, immediately=immediately))
    request = path.read(disk, 0, 1)
    if not immediately:
        assert next(request) == path.RESCHEDULE
    with pytest.raises(bd.InjectedError) as info:
        next(request)
    assert info.value.rule == "eio" and info.value.errno == errno.EIO


def test_a_failed_write_still_raises_its_after_events_and_dirties(disk, monkeypatch):
    decided(monkeypatch, Decision("eio", errno=errno.EIO))
    disk.engine.add_rules([bd.SetState("pwritev_done", 5)])
    with pytest.raises(bd.InjectedError):
        drive(path.write(disk, 0, b"x"))
    assert disk.state == 5 and disk.dirty


def test_bitflip_on_read_flips_exactly_the_seeded_bit_and_keeps_the_image(disk, monkeypatch):
    disk.write(0, b"\x00" * 64)
    decided(monkeypatch, Decision("flip", corrupt="bitflip", entropy=8 * 10 + 3))
    data = drive(path.read(disk, 0, 64))
    assert data == b"\x00" * 10 + b"\x08" + b"\x00" * 53
    monkeypatch.undo()
    assert disk.read(0, 64) == b"\x00" * 64


@pytest.mark.parametrize("kind", ["zero", "garbage"])
def test_zero_and_garbage_on_read(disk, monkeypatch, kind):
    disk.write(0, b"\xff" * 32)
    decided(monkeypatch, Decision("lie", corrupt=kind, entropy=1234))
    data = drive(path.read(disk, 0, 32))
    expected = bytes(32) if kind == "zero" else random.Random(1234).randbytes(32)
    assert data == expected


class Recorder:
    def __init__(self) -> None:
        self.stores: list[tuple[str, int, int, bytes | None]] = []
        self.flushes: list[tuple[str, object, bool | None]] = []

    def on_store(self, disk, operation, offset, length, data):
        self.stores.append((operation, offset, length, data))

    def on_flush_begin(self, disk):
        token = object()
        self.flushes.append(("begin", token, None))
        return token

    def on_flush_end(self, disk, token, ok):
        self.flushes.append(("end", token, ok))


@pytest.fixture
def recorder(disk):
    rec = Recorder()
    disk.engine.recorders = (rec,)
    yield rec
    disk.engine.recorders = ()


def test_a_corrupted_write_stores_and_logs_the_corrupted_bytes(disk, monkeypatch, recorder):
    decided(monkeypatch, Decision("flip", corrupt="bitflip", entropy=0))
    drive(path.write(disk, 0, b"\x00\x00"))
    assert disk.image.pread(0, 2) == b"\x01\x00"
    assert recorder.stores == [("write", 0, 2, b"\x01\x00")]


def test_a_lost_write_is_acknowledged_not_stored_not_logged(disk, monkeypatch, recorder):
    decided(monkeypatch, Decision("gone", lost=True))
    drive(path.write(disk, 0, b"lost"))
    drive(path.write_zeroes(disk, 0, 512))
    assert disk.image.pread(0, 4) == bytes(4) and recorder.stores == [] and disk.dirty


def test_a_misdirected_write_lands_elsewhere_and_is_logged_there(disk, monkeypatch, recorder):
    decided(monkeypatch, Decision("astray", misdirect=4096))
    drive(path.write(disk, 0, b"here"))
    assert disk.image.pread(0, 4) == bytes(4) and disk.image.pread(4096, 4) == b"here"
    decided(monkeypatch, Decision("astray", misdirect=disk.size - 2))
    drive(path.write(disk, 0, b"clip"))  # clipped to the image
    assert disk.image.pread(disk.size - 2, 2) == b"cl" and disk.image.size() == disk.size
    assert recorder.stores == [("write", 4096, 4, b"here"), ("write", disk.size - 2, 2, b"cl")]


def test_recorders_hear_every_store_and_flush(disk, recorder):
    disk.engine.add_rules([bd.InjectError("flush_to_disk", once=True, name="f")])
    disk.write(0, b"ab")
    disk.write_zeroes(512, 512)
    disk.discard(1024, 512)
    with pytest.raises(bd.InjectedError):
        disk.flush()
    disk.flush()
    assert recorder.stores == [
        ("write", 0, 2, b"ab"),
        ("write_zeroes", 512, 512, None),
        ("discard", 1024, 512, None),
    ]
    assert [(kind, ok) for kind, _, ok in recorder.flushes] == [
        ("begin", None),
        ("end", False),
        ("begin", None),
        ("end", True),
    ]


@pytest.mark.parametrize("path_taken", ["fast", "full"])
@pytest.mark.parametrize("buffer", [bytearray, memoryview])
def test_recorders_get_immutable_bytes_not_the_callers_buffer(disk, recorder, path_taken, buffer):
    # NBD reuses its write buffer: what the recorder holds must not change
    # when the caller writes into that buffer again (both paths copy, and
    # only when there is a recorder).
    if path_taken == "full":  # a live event sends the write through the generators
        disk.engine.add_rules([bd.InjectError("pwritev_done", sector=100, name="far")])
    raw = bytearray(b"original")
    disk.write(0, buffer(raw))
    raw[:] = b"mutated!"
    ((operation, offset, length, data),) = recorder.stores
    assert (operation, offset, length) == ("write", 0, 8)
    assert type(data) is bytes and data == b"original"


def test_store_watchers_hear_successful_stores(disk, monkeypatch):
    heard = []
    monkeypatch.setattr(disk.engine, "watches_stores", True)
    monkeypatch.setattr(
        disk.engine, "stored", lambda offset, length: heard.append((offset, length))
    )
    disk.write(0, b"x" * 10)
    disk.write_zeroes(100, 5)
    decided(monkeypatch, Decision("eio", errno=errno.EIO))
    with pytest.raises(bd.InjectedError):
        drive(path.write(disk, 0, b"y"))
    assert heard == [(0, 10), (100, 5)]


# -- the rules helper's lies, end to end -----------------------------------------------------------


def test_a_corrupt_rule_lies_to_the_reader(tmp_path):
    rule = bd.InjectError("read_aio", corrupt="zero", name="z")
    with bd.Disk.create(tmp_path / "img", 4096, rules=[rule], seed=1) as disk:
        disk.write(0, b"\xff" * 8)
        assert disk.read(0, 8) == bytes(8)
        assert disk.image.pread(0, 8) == b"\xff" * 8


# -- named keywords -------------------------------------------------------------------------------


def test_create_and_open_take_named_keywords(tmp_path):
    with pytest.raises(TypeError):
        bd.Disk.create(tmp_path / "a", 4096, hold_timout=1)  # type: ignore[call-arg]
    bd.Disk.create(tmp_path / "a", 4096, durable=True).close()
    with pytest.raises(TypeError):
        bd.Disk.open(tmp_path / "a", readonyl=True)  # type: ignore[call-arg]
    with bd.Disk.open(tmp_path / "a", readonly=True, size=8192) as disk:
        assert disk.size == 8192 and disk.readonly


# -- the fast path's gate ------------------------------------------------------------------------


def test_the_gate_follows_events_arming_and_store_watches(disk):
    engine = disk.engine
    read, write = engine.gate(path.READ), engine.gate(path.WRITE)
    assert engine.gate(path.READ) is read  # one per engine and operation
    assert read.check is None and write.check is None
    engine.add_rules([bd.InjectError("cow_read", sector=0, name="idle")])
    assert read.check is None and write.check is None  # no event of theirs is live
    engine.add_rules([bd.InjectError("none", iotype="read", sector=8, name="armed")])
    assert read.check is None  # not armed until "none" fires
    engine.fire("none")
    assert read.check is not None and write.check is None
    assert not path.quiet(engine, path.READ, 4096, 512) and path.quiet(engine, path.READ, 0, 512)
    disk.break_on("read_aio", "b")
    assert read.check(0, 512) and not path.quiet(engine, path.READ, 0, 512)
    disk.remove_break("b")
    assert not read.check(0, 512)
    engine.add_rules([bd.BadSector(sector=64, name="bad")])
    assert write.check(0, 512)  # stores must heal it
    assert read.check(64 * 512, 512) and not read.check(0, 512)
