"""Attacks on the core's data safety (issue 12): huge reads, close under
load, a template that is the image itself, bad numbers, read-only and closed
disks, and breakpoints nobody can resume. Each test failed before its fix.

Part of the hostile suite: tests/test_hostile.py indexes every attack."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
import traceback

import pytest

import pytest_blkdebug as bd
from pytest_blkdebug import InjectError, SetState
from pytest_blkdebug.core import image as image_module
from pytest_blkdebug.core.limits import check_timeout

LINUX_MAX_IO = 0x7FFFF000


# -- 1. reads over ~2 GiB --------------------------------------------------------


@pytest.fixture
def one_huge_test_at_a_time():
    """A 2 GiB read needs 4 GiB of memory for a moment: let one process of
    the machine (xdist workers, parallel runs) do it at a time."""
    with open(os.path.join(tempfile.gettempdir(), "pytest-blkdebug-huge.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
        fcntl.flock(lock, fcntl.LOCK_UN)


def test_a_read_past_the_per_call_limit_returns_the_real_data(tmp_path, one_huge_test_at_a_time):
    # A sparse image just past Linux's per-call limit, with data at its end.
    size = LINUX_MAX_IO + 8192
    with bd.Disk.create(tmp_path / "huge.img", size) as disk:
        disk.write(size - 4, b"tail")
        data = disk.read(0, size)
        assert len(data) == size
        assert data[-4:] == b"tail"
        del data


@pytest.fixture
def short_reads(monkeypatch):
    """The kernel's short reads, small: at most 1000 bytes per pread call."""
    real = os.pread

    def pread(fd: int, n: int, offset: int) -> bytes:
        return real(fd, min(n, 1000), offset)

    monkeypatch.setattr(image_module.os, "pread", pread)


@pytest.mark.parametrize("how", ["disk", "file", "aio"])
def test_short_host_reads_are_finished_not_padded(tmp_path, short_reads, how):
    with bd.Disk.create(tmp_path / "img", 8192) as disk:
        disk.write(0, bytes(range(256)) * 32)
        if how == "disk":
            data = disk.read(0, 8192)
        elif how == "file":
            data = disk.fileobj().read(8192)
        else:
            data = asyncio.run(disk.aio.read(0, 8192))
    assert data == bytes(range(256)) * 32


def test_a_read_past_the_end_of_a_growing_file_pads_with_zeroes(tmp_path):
    path = tmp_path / "short.img"
    path.write_bytes(b"x" * 100)
    with bd.Disk.open(path, size=4096) as disk:
        assert disk.read(0, 200) == b"x" * 100 + bytes(100)


# -- 2. close under load -------------------------------------------------------------


def test_close_under_load_never_writes_into_the_next_file(tmp_path):
    leaks = 0
    for round_ in range(60):
        disk = bd.Disk.create(tmp_path / "a.img", 1 << 16)
        stop = threading.Event()

        def writer(disk: bd.Disk = disk, stop: threading.Event = stop) -> None:
            while not stop.is_set():
                try:
                    disk.write(0, b"\xaa" * 4096)
                except (OSError, ValueError):
                    return

        threads = [threading.Thread(target=writer) for _ in range(4)]
        for t in threads:
            t.start()
        disk.close()
        other = tmp_path / f"b{round_}.img"
        fd = os.open(other, os.O_RDWR | os.O_CREAT, 0o644)  # likely reuses the number
        os.ftruncate(fd, 1 << 16)
        stop.set()
        for t in threads:
            t.join(10)
        os.close(fd)
        if b"\xaa" in other.read_bytes():
            leaks += 1
    assert leaks == 0


def test_a_closed_disk_refuses_host_io_with_valueerror(tmp_path):
    disk = bd.Disk.create(tmp_path / "img", 4096)
    image = disk.image
    disk.close()
    with pytest.raises(ValueError, match="closed"):
        image.pwrite(0, b"x")
    with pytest.raises(ValueError, match="closed"):
        disk.fileno()


# -- 3. a template that is the image itself --------------------------------------------


@pytest.mark.parametrize("link", ["same", "symlink", "hardlink"])
def test_create_refuses_a_template_that_is_the_image_itself(tmp_path, link):
    template = tmp_path / "golden.img"
    template.write_bytes(b"precious" * 512)
    target = template
    if link == "symlink":
        target = tmp_path / "link.img"
        target.symlink_to(template)
    elif link == "hardlink":
        target = tmp_path / "hard.img"
        os.link(template, target)
    with pytest.raises(ValueError, match="template"):
        bd.Disk.create(target, 8192, template=template)
    assert template.read_bytes() == b"precious" * 512


def test_create_from_a_template_still_copies(tmp_path):
    template = tmp_path / "golden.img"
    template.write_bytes(b"g" * 4096)
    with bd.Disk.create(tmp_path / "copy.img", 8192, template=template) as disk:
        assert disk.read(0, 4096) == b"g" * 4096 and disk.size == 8192


# -- 4. a write held at pwritev_done when the disk closes ---------------------------------


def test_a_write_held_after_its_data_landed_ends_normally_when_the_disk_closes(tmp_path):
    disk = bd.Disk.create(tmp_path / "img", 4096, hold_timeout=10)
    disk.break_on("pwritev_done", "late")
    box: dict[str, object] = {}

    def write() -> None:
        try:
            disk.write(0, b"landed")
            box["ok"] = True
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc

    t = threading.Thread(target=write)
    t.start()
    disk.wait_break("late")
    released = disk.close()
    t.join(10)
    assert [tag for tag, _ in released] == ["late"]
    assert box == {"ok": True}
    assert (tmp_path / "img").read_bytes()[:6] == b"landed"


def test_a_write_held_before_its_data_landed_fails_when_the_disk_closes(tmp_path):
    disk = bd.Disk.create(tmp_path / "img", 4096, hold_timeout=10)
    disk.break_on("pwritev", "early")
    box: dict[str, object] = {}

    def write() -> None:
        try:
            disk.write(0, b"never")
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc

    t = threading.Thread(target=write)
    t.start()
    disk.wait_break("early")
    disk.close()
    t.join(10)
    assert isinstance(box["error"], ValueError)
    assert (tmp_path / "img").read_bytes() == bytes(4096)


# -- 6. timeouts ---------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [math.nan, math.inf, -1, 0, 1e300])
def test_bad_timeouts_are_refused_naming_the_argument(tmp_path, bad):
    with pytest.raises(ValueError, match="hold_timeout"):
        bd.Disk.create(tmp_path / "a", 4096, hold_timeout=bad)
    with pytest.raises(ValueError, match="wait_timeout"):
        bd.Disk.create(tmp_path / "b", 4096, wait_timeout=bad)
    with bd.Disk.create(tmp_path / "c", 4096) as disk:
        disk.break_on("read_aio", "A")
        with pytest.raises(ValueError, match="timeout"):
            disk.wait_break("A", timeout=bad)
        with pytest.raises(ValueError, match="timeout"):
            asyncio.run(disk.aio.wait_break("A", timeout=bad))


def test_check_timeout():
    assert check_timeout("t", 2) == 2.0
    with pytest.raises(TypeError, match="t must be a number"):
        check_timeout("t", "5")
    with pytest.raises(TypeError, match="t must be a number"):
        check_timeout("t", True)


# -- 12. bad offsets and lengths --------------------------------------------------------------


@pytest.mark.parametrize(
    "call, args, error, name",
    [
        ("read", (0.0, 512), TypeError, "offset"),
        ("read", (0, 512.0), TypeError, "length"),
        ("read", (True, 1), TypeError, "offset"),
        ("write", (512.5, b"x"), TypeError, "offset"),
        ("write_zeroes", ("0", 512), TypeError, "offset"),
        ("discard", (0, None), TypeError, "length"),
        ("block_status", (0.0, 512), TypeError, "offset"),
        ("read", (2**63, 1), ValueError, "offset"),
        ("write", (2**64, b"x"), ValueError, "offset"),
        ("write_zeroes", (0, 2**63), ValueError, "length"),
        ("read", (2**62, 2**62), ValueError, "offset \\+ length"),
    ],
)
def test_bad_numbers_fail_before_any_event(tmp_path, call, args, error, name):
    rules = [
        SetState(ev, 2, name=f"s-{ev}") for ev in ("read_aio", "write_aio", "pwritev_zero")
    ] + [InjectError("none", once=True, name="once")]
    with bd.Disk.create(tmp_path / "img", 1 << 20, rules=rules) as disk:
        with pytest.raises(error, match=name):
            getattr(disk, call)(*args)
        assert disk.state == 1 and not disk.dirty
        assert not disk.rule("once").consumed and disk.rule("once").hits == 0


# -- 13. read-only disks ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, args",
    [("write", (0, b"x" * 512)), ("write_zeroes", (0, 512)), ("discard", (0, 512))],
)
def test_a_read_only_disk_refuses_writes_before_any_event(tmp_path, call, args):
    path = tmp_path / "img"
    bd.Disk.create(path, 4096).close()
    rules = [SetState(ev, 2) for ev in ("write_aio", "pwritev_zero", "pwritev_done")]
    with bd.Disk.open(path, readonly=True, rules=rules) as disk:
        with pytest.raises(OSError, match="read-only") as info:
            getattr(disk, call)(*args)
        assert info.value.errno == errno.EPERM
        assert disk.state == 1 and not disk.dirty and disk.trace == []

        async def via_aio() -> None:
            await getattr(disk.aio, call)(*args)

        with pytest.raises(OSError, match="read-only"):
            asyncio.run(via_aio())
        assert disk.state == 1 and not disk.dirty


# -- 14. closed disks ------------------------------------------------------------------------


def test_event_on_a_closed_disk_does_not_move_the_state(tmp_path):
    disk = bd.Disk.create(tmp_path / "img", 4096, rules=[SetState("read_aio", 2, name="s")])
    engine = disk.engine
    disk.close()
    assert engine.state == 1
    with pytest.raises(ValueError, match="closed"):
        disk.event("read_aio")
    with pytest.raises(ValueError, match="closed"):
        asyncio.run(disk.aio.event("read_aio"))
    assert engine.state == 1


# -- 15. DiskFile past the end ---------------------------------------------------------------


def test_diskfile_read_past_the_end_is_end_of_file(tmp_path):
    with bd.Disk.create(tmp_path / "img", 4096) as disk:
        f = disk.fileobj()
        f.seek(4096)
        assert f.read(10) == b""
        f.seek(10_000)
        assert f.read(10) == b""
        assert f.read() == b""


# -- 21. a breakpoint nobody can resume ------------------------------------------------------


def test_a_breakpoint_hit_in_the_only_thread_fails_at_once_naming_the_tag(tmp_path):
    # A subprocess, so no other thread (pytest-xdist's, a leftover) is alive.
    script = f"""
import time, pytest_blkdebug as bd
disk = bd.Disk.create({str(tmp_path / "img")!r}, 4096, hold_timeout=30)
disk.break_on("write_aio", "lonely")
start = time.monotonic()
try:
    disk.write(0, b"x")
except bd.BreakpointTimeout as exc:
    print(round(time.monotonic() - start), exc)
print(disk.is_suspended("lonely"))
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert out.startswith("0 ") and "'lonely'" in out and "only thread" in out
    assert out.strip().endswith("False")


# -- 22. injected errors end at the user's line ------------------------------------------------


@pytest.mark.parametrize("call", ["read", "write", "flush", "aio_write"])
def test_injected_error_tracebacks_hide_the_package_frames(tmp_path, call):
    rule = InjectError("none", iotype=["read", "write", "flush"])
    with bd.Disk.create(tmp_path / "img", 4096, rules=[rule]) as disk:
        disk.write_zeroes(0, 512)  # dirty, so flush is checked
        with pytest.raises(bd.InjectedError) as info:
            if call == "read":
                disk.read(0, 512)
            elif call == "write":
                disk.write(0, b"x")
            elif call == "flush":
                disk.flush()
            else:
                asyncio.run(disk.aio.write(0, b"x"))
    frames = [f for f, _ in traceback.walk_tb(info.tb)]
    package = os.path.dirname(bd.__file__)
    ours = [f for f in frames if f.f_code.co_filename.startswith(package)]
    assert ours, "the request path should be in the traceback"
    assert all(f.f_locals.get("__tracebackhide__") for f in ours), [
        f.f_code.co_name for f in ours if not f.f_locals.get("__tracebackhide__")
    ]


# -- a write that lands while a flush runs -----------------------------------------------------


@pytest.mark.parametrize("via", ["disk", "aio"])
def test_a_write_during_a_flush_keeps_the_disk_dirty(tmp_path, monkeypatch, via):
    """The flush cleans the disk before its host sync, not after: a write
    that lands during the sync (another thread, another NBD connection) is
    not covered by it, so the next flush must still do flush_to_disk and
    its check (found by attacking the request path; it used to clean after)."""
    with bd.Disk.create(tmp_path / "img", 8192, durable=True) as disk:
        real_sync = image_module.Image.sync
        landed = []

        def sync_with_a_write_landing(image):
            if not landed:
                landed.append(True)
                disk.write(4096, b"late")  # lands while the host flush runs
            real_sync(image)

        monkeypatch.setattr(image_module.Image, "sync", sync_with_a_write_landing)
        disk.write(0, b"early")
        if via == "disk":
            disk.flush()
        else:
            asyncio.run(disk.aio.flush())
        assert landed and disk.dirty
        disk.engine.add_rules([InjectError("flush_to_disk", once=True, name="next")])
        with pytest.raises(bd.InjectedError):
            disk.flush()  # not skipped: the late write still needs it
        assert disk.rule("next").hits == 1 and disk.dirty  # a failed flush stays dirty
        disk.flush()
        assert not disk.dirty


def test_a_failed_host_sync_leaves_the_disk_dirty(tmp_path, monkeypatch):
    with bd.Disk.create(tmp_path / "img", 8192, durable=True) as disk:
        disk.write(0, b"data")

        def failing_sync(image):
            raise OSError(errno.EIO, "fdatasync failed")

        monkeypatch.setattr(image_module.Image, "sync", failing_sync)
        with pytest.raises(OSError, match="fdatasync failed"):
            disk.flush()
        assert disk.dirty
        monkeypatch.undo()
        disk.flush()
        assert not disk.dirty


# -- DiskFile closed, bad seeks ----------------------------------------------------------------


def test_a_closed_diskfile_refuses_io_as_a_closed_file_does(tmp_path):
    """A write through a closed file object reached the disk (and a read,
    seek or sync worked): a closed file refuses them with ValueError."""
    with bd.Disk.create(tmp_path / "img", 4096) as disk:
        f = disk.fileobj()
        f.write(b"kept")
        f.close()
        assert f.closed
        for call in (
            lambda: f.write(b"LOST"),
            lambda: f.read(4),
            lambda: f.readinto(bytearray(4)),
            lambda: f.seek(0),
            lambda: f.tell(),
            lambda: f.sync(),
        ):
            with pytest.raises(ValueError, match="closed file"):
                call()
        assert disk.read(0, 8) == b"kept\0\0\0\0"


@pytest.mark.parametrize(
    "args, error",
    [
        ((0, 5), ValueError),
        ((0, os.SEEK_DATA), ValueError),
        ((1.5,), TypeError),
        (("1",), TypeError),
    ],
)
def test_diskfile_seek_refuses_a_bad_whence_or_offset_as_a_file_does(tmp_path, args, error):
    """A bad whence was a bare KeyError; a float offset was kept as the
    position (1.5) and failed at the next read."""
    with bd.Disk.create(tmp_path / "img", 4096) as disk:
        f = disk.fileobj()
        f.seek(7)
        with pytest.raises(error):
            f.seek(*args)
        assert f.tell() == 7


def test_diskfile_seek_takes_any_integer_like_offset(tmp_path):
    """An offset with ``__index__`` (numpy's integers) is an int, as for a file."""

    class Index:
        def __index__(self) -> int:
            return 3

    with bd.Disk.create(tmp_path / "img", 4096) as disk:
        disk.write(0, b"abcdef")
        f = disk.fileobj()
        assert f.seek(Index()) == 3
        assert type(f.tell()) is int
        assert f.read(2) == b"de"


# -- a disk that fails to open leaves a shared engine as it was ----------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"hold_timeout": math.nan},
        {"wait_timeout": 0},
        {"size": -1},
        {"path": "missing.img"},
    ],
)
def test_a_disk_that_fails_to_open_adds_no_rule_to_a_shared_engine(tmp_path, bad):
    """Its rules joined the shared engine before the arguments were checked
    and the file opened: the first disk's reads failed with a rule of a disk
    that never opened, and opening it again said "duplicate rule name"."""
    with bd.Disk.create(tmp_path / "a.img", 4096) as first:
        bd.Disk.create(tmp_path / "b.img", 4096).close()
        kwargs = dict(bad)
        path = tmp_path / kwargs.pop("path", "b.img")
        rule = InjectError("read_aio", name="of-b")
        with pytest.raises((ValueError, OSError)):
            bd.Disk.open(path, engine=first.engine, rules=[rule], **kwargs)
        assert [r.name for r in first.rules] == []
        assert first.read(0, 4) == bytes(4)
        with bd.Disk.open(tmp_path / "b.img", engine=first.engine, rules=[rule]):
            assert [r.name for r in first.rules] == ["of-b"]


def test_a_disk_whose_open_event_is_never_resumed_is_closed_not_left_attached(tmp_path):
    """A breakpoint on "none" set before the first disk opens holds the open;
    in the only thread it fails at once, and the half-made disk stayed
    attached: the engine counted a user that could never close."""
    script = f"""
import pytest_blkdebug as bd
engine = bd.Engine()
engine.break_on("none", "at-open")
try:
    bd.Disk.create({str(tmp_path / "img")!r}, 4096, engine=engine)
except bd.BreakpointTimeout:
    pass
print(engine._users, sum(not d.closed for d in engine.disks), engine.suspended)
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert out.split() == ["0", "0", "[]"]


# -- buffers that cannot take the request, refused before any event ---------------------------


@pytest.mark.parametrize("via", ["sync", "aio"])
def test_a_non_contiguous_write_buffer_fails_before_any_event(tmp_path, via):
    """A strided memoryview raised its events, changed the state and used up
    a once rule before the host write refused it (BufferError)."""
    rules = [SetState("write_aio", 2, name="s"), InjectError("write_aio", once=True, name="once")]
    with bd.Disk.create(tmp_path / "img", 4096, rules=rules) as disk:
        strided = memoryview(b"abcdefgh")[::2]
        with pytest.raises(BufferError, match="contiguous"):
            if via == "sync":
                disk.write(0, strided)
            else:
                asyncio.run(disk.aio.write(0, strided))
        assert disk.state == 1 and not disk.dirty
        assert not disk.rule("once").consumed and disk.rule("once").hits == 0


def test_diskfile_readinto_a_read_only_buffer_fails_before_the_read(tmp_path):
    """readinto(bytes) read the disk (its events, a once rule, a breakpoint)
    and only then failed to store the data; a file refuses it first."""
    rules = [SetState("read_aio", 2, name="s"), InjectError("read_aio", once=True, name="once")]
    with bd.Disk.create(tmp_path / "img", 4096, rules=rules) as disk:
        f = disk.fileobj()
        with pytest.raises(TypeError, match="read-write"):
            f.readinto(b"1234")
        assert disk.state == 1 and f.tell() == 0
        assert not disk.rule("once").consumed


# -- writes landing while a flush is held or delayed --------------------------------------------


def _flush_counters():
    """A set-state rule counting flush_to_disk events, and a delaying
    errno-0 rule (armed at open) counting the flushes that were checked."""
    return [
        SetState("flush_to_disk", 1, name="to-disk"),
        InjectError("none", iotype="flush", errno=0, delay=0.3, name="checked"),
    ]


def test_a_write_during_a_held_flush_makes_the_next_flush_raise_flush_to_disk(tmp_path):
    """The flush cleaned the disk after its hold, so a write landing while
    it was held at flush_to_disk counted as flushed: the next flush raised
    no flush_to_disk. QEMU's format node takes its write generation when the
    flush starts, so the next flush raises flush_to_disk; blkdebug's node
    takes its own after the events, so that flush is not checked again."""
    with bd.Disk.create(tmp_path / "img", 8192, rules=_flush_counters()) as disk:
        disk.write(0, b"early")
        disk.break_on("flush_to_disk", "F")
        flusher = threading.Thread(target=disk.flush)
        flusher.start()
        disk.wait_break("F", timeout=5)
        disk.write(4096, b"late")  # lands while the flush is held
        disk.resume("F")
        flusher.join(10)
        assert disk.dirty
        disk.flush()
        assert disk.rule("to-disk").hits == 2
        assert disk.rule("checked").hits == 1
        assert not disk.dirty


@pytest.mark.parametrize("via", ["disk", "aio"])
def test_a_write_during_a_delayed_flush_leaves_work_for_the_next_flush(tmp_path, via):
    """A write landing during the flush's injected delay (after its check
    began) counted as flushed: the next flush neither raised flush_to_disk
    nor was checked. QEMU takes both write generations before the check."""
    with bd.Disk.create(tmp_path / "img", 8192, rules=_flush_counters()) as disk:
        disk.write(0, b"early")
        if via == "disk":
            checked = threading.Event()
            disk.engine.add_observer(lambda what, name: name == "checked" and checked.set())
            flusher = threading.Thread(target=disk.flush)
            flusher.start()
            assert checked.wait(10)  # decided: the flush is starting its delay
            disk.write(4096, b"late")
            flusher.join(10)
        else:

            async def scenario():
                flush = asyncio.create_task(disk.aio.flush())
                await asyncio.sleep(0)  # the flush runs to its delay
                await disk.aio.write(4096, b"late")
                await flush

            asyncio.run(scenario())
        assert disk.dirty
        disk.flush()
        assert disk.rule("to-disk").hits == 2
        assert disk.rule("checked").hits == 2
        assert not disk.dirty


def test_a_disk_closed_as_its_request_is_suspended_fails_it_at_once(tmp_path):
    """close() resumes the holds it finds; one made just before (the request
    suspended, not yet listed on its disk: here an observer closes the disk
    at that moment) waited out hold_timeout, and its suspension stayed
    listed on the shared engine after the request had ended."""
    a = bd.Disk.create(tmp_path / "a.img", 4096, hold_timeout=30)
    b = bd.Disk.create(tmp_path / "b.img", 4096, engine=a.engine)  # keeps the engine in use
    a.engine.add_observer(lambda what, detail: what == "suspend" and a.close())
    a.break_on("read_aio", "A")
    box = {}

    def read():
        try:
            a.read(0, 1)
        except ValueError as exc:
            box["error"] = exc

    reader = threading.Thread(target=read)
    reader.start()
    reader.join(10)
    assert not reader.is_alive() and "closed" in str(box["error"])
    assert a.engine.suspended == [] and not b.is_suspended("A")
    b.close()


def test_create_refuses_a_template_that_is_a_fifo_instead_of_waiting(tmp_path):
    """A FIFO as the template: opening it waited forever for a writer."""
    os.mkfifo(tmp_path / "fifo")
    box = {}

    def create():
        try:
            bd.Disk.create(tmp_path / "img", 4096, template=tmp_path / "fifo")
        except ValueError as exc:
            box["error"] = exc

    creator = threading.Thread(target=create, daemon=True)  # a regression hangs here
    creator.start()
    creator.join(10)
    assert not creator.is_alive(), "Disk.create is waiting for a writer to the FIFO"
    assert "not a regular file (a FIFO)" in str(box["error"])
    with pytest.raises(IsADirectoryError):
        bd.Disk.create(tmp_path / "img", 4096, template=tmp_path)


@pytest.mark.parametrize("readonly", [False, True])
def test_open_refuses_an_image_that_is_a_fifo_or_a_directory(tmp_path, readonly):
    """Disk.open of a FIFO read-only waited forever for a writer (read-write
    it opened as a 0-byte disk); a directory opened read-only became a disk
    whose reads failed with EISDIR."""
    os.mkfifo(tmp_path / "fifo")
    box = {}

    def open_fifo():
        try:
            bd.Disk.open(tmp_path / "fifo", readonly=readonly)
        except ValueError as exc:
            box["error"] = exc

    opener = threading.Thread(target=open_fifo, daemon=True)  # a regression hangs here
    opener.start()
    opener.join(10)
    assert not opener.is_alive(), "Disk.open is waiting for a writer to the FIFO"
    assert "not a regular file (a FIFO)" in str(box["error"])
    with pytest.raises(IsADirectoryError):
        bd.Disk.open(tmp_path, readonly=readonly)


@pytest.mark.parametrize("template", [False, True])
def test_create_over_a_fifo_refuses_it_instead_of_waiting(tmp_path, template):
    """Disk.create at a path that is a FIFO: from a template it waited
    forever for a reader; without one it failed with a bare EINVAL."""
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "t.img").write_bytes(b"t" * 512)
    box = {}

    def create():
        try:
            bd.Disk.create(
                tmp_path / "fifo", 4096, template=template and tmp_path / "t.img" or None
            )
        except ValueError as exc:
            box["error"] = exc

    creator = threading.Thread(target=create, daemon=True)  # a regression hangs here
    creator.start()
    creator.join(10)
    assert not creator.is_alive(), "Disk.create is waiting for a reader of the FIFO"
    assert "fifo is not a regular file (a FIFO)" in str(box["error"])


def test_recording_starts_while_another_thread_opens_disks(tmp_path):
    """``engine.record()`` walked the engine's weak set of disks while
    another thread added to it: "RuntimeError: Set changed size during
    iteration" (within a second, most runs). It walks a copy taken under
    the engine's lock, where disks are added."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often: the race shows at once
    first = bd.Disk.create(tmp_path / "img", 4096)
    engine = first.engine
    others = [bd.Disk.open(tmp_path / "img", engine=engine) for _ in range(300)]
    stop = threading.Event()

    def open_and_close():
        while not stop.is_set():
            bd.Disk.open(tmp_path / "img", engine=engine).close()

    opener = threading.Thread(target=open_and_close)
    opener.start()
    try:
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            recording = engine.record()
            recording.start()
            recording.stop()
    finally:
        stop.set()
        opener.join(10)
        sys.setswitchinterval(old)
        for disk in [first, *others]:
            disk.close()


@pytest.mark.parametrize("via", ["thread", "aio"])
def test_close_cuts_an_injected_delay_short(tmp_path, via):
    """A request waiting out an injected delay kept waiting after close()
    (up to the rule's delay: an hour at most), so a thread doing I/O kept
    the interpreter from exiting long after the test ended. close() now
    ends the wait, and the request fails as one held at a breakpoint does."""
    rules = [InjectError("read_aio", errno=0, delay=60, name="slow")]
    disk = bd.Disk.create(tmp_path / "img", 4096, rules=rules)
    slowed = threading.Event()
    disk.engine.add_observer(lambda what, name: name == "slow" and slowed.set())
    box = {}
    start = time.monotonic()
    if via == "thread":

        def read():
            try:
                disk.read(0, 512)
            except ValueError as exc:
                box["error"] = exc

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        assert slowed.wait(10)
        disk.close()
        reader.join(10)
        assert not reader.is_alive()
    else:

        async def scenario():
            task = asyncio.create_task(disk.aio.read(0, 512))
            await asyncio.sleep(0)  # the read is in its delay
            assert slowed.is_set()
            threading.Thread(target=disk.close).start()
            with pytest.raises(ValueError) as info:
                await asyncio.wait_for(task, 10)
            box["error"] = info.value

        asyncio.run(scenario())
    assert time.monotonic() - start < 10
    assert "closed while its read waited out an injected delay" in str(box["error"])


def test_a_disk_that_fails_to_open_frees_its_descriptor_at_once(tmp_path):
    """Its image was retired like a used one: the number stayed open for as
    long as anything kept the error (a failed test's report, a caller's
    ``except ... as exc``), whose traceback holds the half-made Disk."""
    bd.Disk.create(tmp_path / "img", 4096).close()
    before = len(os.listdir("/proc/self/fd"))
    kept = []
    for _ in range(5):
        with pytest.raises(TypeError) as info:
            bd.Disk.open(tmp_path / "img", events="not-a-list")
        kept.append(info.value)
    assert len(os.listdir("/proc/self/fd")) == before
