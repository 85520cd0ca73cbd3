"""blkdebug-io's event loop on its own: the order in which parked requests
go on, holds, delays, hangs and cancellation (qemuio/loop.py).

The conformance tests (test_aio_conformance.py) show that these rules make
blkdebug-io agree with qemu-io; these pin each rule with hand-made requests,
so a change that breaks one names it.
"""

from __future__ import annotations

import io
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from pytest_blkdebug.core.engine import Engine, Hold
from pytest_blkdebug.core.path import IO_DONE
from pytest_blkdebug.qemuio import cli
from pytest_blkdebug.qemuio.loop import HOST_IO, RESCHEDULE, EventLoop, Hang

Log = list[str]


def request(log: Log, name: str, *waits: Any) -> Generator[Any, None, str]:
    """A request that logs each step and waits for ``waits`` in turn."""
    for wait in waits:
        log.append(f"{name} waits")
        yield wait
    log.append(f"{name} ends")
    return name


def finished(log: Log) -> Any:
    def finish(value: Any, error: OSError | None) -> None:
        log.append(f"finish {value}")

    return finish


def test_a_request_runs_to_its_first_wait_inside_start() -> None:
    log: Log = []
    loop = EventLoop()
    loop.start(request(log, "a", HOST_IO), finished(log))
    assert log == ["a waits"]
    loop.start(request(log, "b"), finished(log))  # nothing to wait for: done at once
    assert log == ["a waits", "b ends", "finish b"]
    assert len(loop.requests) == 1


def test_a_poll_runs_rescheduled_oldest_first_then_host_io_newest_first_then_last() -> None:
    log: Log = []
    loop = EventLoop()
    for name, wait in (("io1", HOST_IO), ("re1", RESCHEDULE), ("io2", HOST_IO), ("re2", 0)):
        loop.start(request(log, name, wait), finished(log))
    sync = loop.start(request(log, "sync", HOST_IO), finished(log))
    log.clear()
    loop.poll_until(lambda: sync.done, "never", last=sync)
    ends = [line for line in log if line.endswith("ends")]
    assert ends == ["re1 ends", "re2 ends", "io2 ends", "io1 ends", "sync ends"]
    assert not loop.requests


def test_nothing_goes_on_without_a_poll() -> None:
    log: Log = []
    loop = EventLoop()
    loop.start(request(log, "a", HOST_IO, HOST_IO), finished(log))
    assert log == ["a waits"]
    assert loop.poll() is True
    assert log == ["a waits", "a waits"]  # one step per poll: it parked again
    assert loop.poll() is True
    assert log[-1] == "finish a"
    assert loop.poll() is False


def test_a_released_hold_runs_the_request_on_inside_the_resume() -> None:
    engine = Engine()
    engine.break_on("read_aio", "A")
    hold = engine.fire("read_aio", "read")
    assert isinstance(hold, Hold)
    log: Log = []
    loop = EventLoop()
    loop.start(request(log, "held", hold, HOST_IO), finished(log))
    assert loop.poll() is False  # a hold is not a poll's business
    engine.resume("A")
    assert log == ["held waits", "held waits"]  # ran on to its host I/O, in resume
    loop.poll_until(lambda: not loop.requests, "never")
    assert log[-1] == "finish held"


def test_poll_until_hangs_when_only_held_requests_are_left() -> None:
    engine = Engine()
    engine.break_on("read_aio", "A")
    hold = engine.fire("read_aio", "read")
    loop = EventLoop()
    log: Log = []
    loop.start(request(log, "held", hold), finished(log))
    loop.start(request(log, "io", HOST_IO), finished(log))
    with pytest.raises(Hang, match="the reason"):
        loop.poll_until(lambda: not loop.requests, "the reason")
    assert "finish io" in log  # the others went on first


def test_a_delay_is_a_timer_that_polls_wait_for() -> None:
    log: Log = []
    loop = EventLoop()
    loop.start(request(log, "slow", 0.05), finished(log))
    assert loop.poll() is False  # not due yet
    start = time.monotonic()
    loop.poll_until(lambda: not loop.requests, "never")
    assert time.monotonic() - start >= 0.04
    assert log[-1] == "finish slow"


def test_errors_finish_the_request_and_cancel_closes_the_rest() -> None:
    log: Log = []
    closed: Log = []

    def failing() -> Generator[Any, None, None]:
        yield HOST_IO
        raise OSError(28, "No space left on device")

    def parked() -> Generator[Any, None, None]:
        try:
            yield HOST_IO
        finally:
            closed.append("closed")

    loop = EventLoop()
    loop.start(failing(), lambda value, error: log.append(str(error)))
    loop.poll()
    assert log == ["[Errno 28] No space left on device"]
    loop.start(parked(), finished(log))
    loop.cancel()
    assert closed == ["closed"] and not loop.requests


def test_run_for_runs_what_is_ready_and_the_delays_due_meanwhile() -> None:
    """qemu-io's ``sleep`` runs its main loop: completions and due timers go
    on; a delay longer than the sleep is still waiting afterwards."""
    log: Log = []
    loop = EventLoop()
    loop.start(request(log, "io", HOST_IO), finished(log))
    loop.start(request(log, "soon", 0.02), finished(log))
    loop.start(request(log, "late", 5.0), finished(log))
    start = time.monotonic()
    loop.run_for(0.1)
    assert 0.09 <= time.monotonic() - start < 1
    assert "finish io" in log and "finish soon" in log and "finish late" not in log
    assert len(loop.requests) == 1
    loop.cancel()


def test_a_poll_runs_host_io_oldest_first_and_completions_newest_first() -> None:
    """QEMU's thread pool runs the I/O of the requests in flight in the order
    they were submitted and lists their completions newest first. The loop
    ran each request's I/O together with its completion, newest first, so of
    two overlapping aio writes the *older* one's data stayed, and an aio read
    did not see the aio write before it (qemu-io: the newer data stays, the
    read sees it). Requests from core/path split at IO_DONE when asked."""

    def split(log: Log, name: str) -> Generator[Any, bool | None, str]:
        log.append(f"{name} waits")
        asked = yield HOST_IO
        log.append(f"{name} io")
        if asked:
            yield IO_DONE
        log.append(f"{name} ends")
        return name

    log: Log = []
    loop = EventLoop()
    for name in ("a", "b", "c"):
        loop.start(split(log, name), finished(log), split=True)
    sync = loop.start(split(log, "sync"), finished(log), split=True)
    log.clear()
    loop.poll_until(lambda: sync.done, "never", last=sync)
    steps = [line for line in log if not line.startswith("finish")]
    assert steps == [
        *("a io", "b io", "c io", "sync io"),
        *("c ends", "b ends", "a ends", "sync ends"),
    ]
    assert not loop.requests


def test_overlapping_aio_requests_see_the_data_in_submission_order(tmp_path: Path) -> None:
    """End to end through blkdebug-io, as qemu-io 7.2 does it (seen in
    repeated runs): the last submitted write's bytes stay, and a read
    submitted after a write reads what it wrote."""
    image = tmp_path / "img.raw"
    with open(image, "wb") as f:
        f.truncate(1 << 20)
    out, err = io.StringIO(), io.StringIO()
    commands = [
        "aio_write -P 1 0 64k",
        "aio_write -P 2 0 512",
        "aio_write -P 3 0 8",
        "aio_read -P 3 0 8",
        "aio_flush",
    ]
    args = [a for c in commands for a in ("-c", c)]
    status = cli.main([*args, str(image)], stdout=out, stderr=err)
    assert status == 0, err.getvalue()
    assert "Pattern verification failed" not in out.getvalue()
    data = image.read_bytes()
    assert data[:8] == b"\3" * 8 and data[8:512] == b"\2" * 504
    assert data[512 : 64 << 10] == b"\1" * ((64 << 10) - 512)
