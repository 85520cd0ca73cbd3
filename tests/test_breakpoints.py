"""Breakpoints and concurrency: QEMU's break/resume/remove_break/wait_break
semantics for threads and asyncio, timeouts instead of hangs, and stress runs
whose counters must come out exact."""

from __future__ import annotations

import asyncio
import errno
import random
import threading
from collections import Counter

import pytest

import pytest_blkdebug as bd
from pytest_blkdebug import InjectError, SetState


def make_disk(tmp_path, rules=(), **kwargs):
    kwargs.setdefault("hold_timeout", 10)
    return bd.Disk.create(tmp_path / "img.raw", 1 << 20, rules=list(rules), **kwargs)


def in_thread(call, *args):
    """Run a request in a thread; the returned dict gets 'result' or 'error'."""
    box: dict = {}

    def target():
        try:
            box["result"] = call(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    box["thread"] = thread
    return box


def finish(box, timeout=10):
    box["thread"].join(timeout)
    assert not box["thread"].is_alive(), "request still suspended"
    if "error" in box:
        raise box["error"]
    return box.get("result")


def test_request_is_held_until_resumed_and_others_pass(tmp_path):
    disk = make_disk(tmp_path)
    disk.break_on("write_aio", "A")
    held = in_thread(disk.write, 0, b"a" * 512)
    disk.wait_break("A", timeout=5)
    assert disk.is_suspended("A")
    disk.write(4096, b"b" * 512)  # a second request is not held (one-shot)
    assert disk.read(0, 1) == b"\0"  # the held write has not reached the image
    disk.resume("A")
    finish(held)
    assert disk.read(0, 1) == b"a" and not disk.is_suspended("A")


def test_all_breakpoints_of_an_event_are_consumed_and_each_needs_a_resume(tmp_path):
    disk = make_disk(tmp_path)
    disk.break_on("read_aio", "A")
    disk.break_on("read_aio", "A")
    held = in_thread(disk.read, 0, 512)
    disk.wait_break("A", timeout=5)
    assert disk.read(4096, 512) == bytes(512)  # not suspended: both were consumed
    [(_, hold)] = [entry for entry in disk.engine.suspended if entry[0] == "A"][:1]
    disk.resume("A")
    # one resume of two: the request is still suspended, under the other entry
    assert disk.is_suspended("A") and not hold.released
    held["thread"].join(0.2)
    assert held["thread"].is_alive() and "result" not in held and "error" not in held
    disk.resume("A")
    assert finish(held) == bytes(512) and hold.released and not disk.is_suspended("A")
    with pytest.raises(
        bd.BreakpointError, match="Could not resume request: No such file or directory"
    ):
        disk.resume("A")


def test_two_tags_on_one_event_need_both_resumes(tmp_path):
    disk = make_disk(tmp_path)
    seen = []
    disk.engine.add_observer(lambda what, detail: seen.append((what, detail)))
    disk.break_on("read_aio", "A")
    disk.break_on("read_aio", "B")
    held = in_thread(disk.read, 0, 512)
    disk.wait_break("A", timeout=5)
    assert seen == [("suspend", "B"), ("suspend", "A")]  # newest first, as qemu-io prints
    disk.resume("A")
    disk.resume("B")
    finish(held)


def test_resume_picks_the_most_recently_suspended_request(tmp_path):
    disk = make_disk(tmp_path)
    disk.break_on("write_aio", "A")
    first = in_thread(disk.write, 0, b"1")
    disk.wait_break("A", timeout=5)
    disk.break_on("write_aio", "A")
    second = in_thread(disk.write, 512, b"2")
    while len(disk.engine.suspended) < 2:
        disk.wait_break("A", timeout=5)
    disk.resume("A")
    finish(second)
    assert first["thread"].is_alive()
    disk.resume("A")
    finish(first)


def test_remove_break_resumes_suspended_and_drops_pending(tmp_path):
    disk = make_disk(tmp_path)
    disk.break_on("read_aio", "A")
    disk.break_on("write_aio", "A")
    held = in_thread(disk.read, 0, 512)
    disk.wait_break("A", timeout=5)
    disk.remove_break("A")
    finish(held)
    disk.write(0, b"x")  # the pending write_aio breakpoint went too
    with pytest.raises(
        bd.BreakpointError, match="Could not remove breakpoint Z: No such file or directory"
    ):
        disk.remove_break("Z")


def test_breakpoint_on_unknown_event_is_refused(tmp_path):
    with pytest.raises(
        bd.BreakpointError, match="Could not set breakpoint: No such file or directory"
    ):
        make_disk(tmp_path).break_on("wirte_aio", "A")


def test_state_change_and_arming_happen_before_suspension(tmp_path):
    disk = make_disk(
        tmp_path, [SetState("write_aio", 2), InjectError("write_aio", errno=errno.ENOSPC)]
    )
    disk.break_on("write_aio", "A")
    held = in_thread(disk.write, 0, b"x")
    disk.wait_break("A", timeout=5)
    assert disk.state == 2
    with pytest.raises(OSError) as info:  # already armed while the writer is held
        disk.read(0, 512)
    assert info.value.errno == errno.ENOSPC
    disk.resume("A")
    with pytest.raises(bd.InjectedError):
        finish(held)


def test_wait_break_times_out_naming_the_tag_and_events_seen(tmp_path):
    disk = make_disk(tmp_path, [SetState("read_aio", 1)])
    disk.break_on("write_aio", "W")
    for _ in range(3):
        disk.read(0, 512)
    with pytest.raises(bd.BreakpointTimeout) as info:
        disk.wait_break("W", timeout=0.1)
    message = str(info.value)
    assert "'W'" in message and "read_aio" in message and "W on write_aio" in message


def test_held_request_gives_up_after_hold_timeout(tmp_path):
    disk = make_disk(tmp_path, hold_timeout=0.2)
    disk.break_on("read_aio", "A")
    with pytest.raises(bd.BreakpointTimeout, match="held at breakpoint 'A' on event 'read_aio'"):
        disk.read(0, 512)
    assert not disk.is_suspended("A")


def test_close_resumes_whatever_is_suspended_and_reports_it(tmp_path):
    disk = make_disk(tmp_path)
    disk.break_on("pwritev", "late")
    held = in_thread(disk.write, 0, b"x")
    disk.wait_break("late", timeout=5)
    released = disk.close()
    assert [(tag, hold.operation, hold.event) for tag, hold in released] == [
        ("late", "write", "pwritev")
    ]
    with pytest.raises((OSError, ValueError)):
        finish(held)  # resumed into a closed disk: an error, not a hang


def test_race_two_writers_first_held_at_pwritev(tmp_path):
    # The how-to in docs/breakpoints.md: writer 1 is held after its events but
    # before its data lands; writer 2 completes; resuming 1 makes it win.
    disk = make_disk(tmp_path)
    disk.break_on("pwritev", "w1")
    first = in_thread(disk.write, 0, b"1" * 4096)
    disk.wait_break("w1", timeout=5)
    disk.write(0, b"2" * 4096)
    assert disk.read(0, 4096) == b"2" * 4096
    disk.resume("w1")
    finish(first)
    assert disk.read(0, 4096) == b"1" * 4096


# -- asyncio ------------------------------------------------------------------


def test_async_request_suspends_only_its_task(tmp_path):
    disk = make_disk(tmp_path)

    async def main():
        disk.break_on("read_aio", "A")
        held = asyncio.create_task(disk.aio.read(0, 512))
        await disk.aio.wait_break("A", timeout=5)
        await disk.aio.write(0, b"z" * 512)  # the loop keeps running
        assert not held.done()
        disk.resume("A")
        return await asyncio.wait_for(held, 5)

    assert asyncio.run(main()) == b"z" * 512


@pytest.mark.parametrize("immediately", [False, True])
def test_injected_error_yields_once_unless_immediately(tmp_path, immediately):
    disk = make_disk(tmp_path, [InjectError("read_aio", immediately=immediately)])

    async def main():
        ran = []

        async def other():
            ran.append(True)

        task = asyncio.ensure_future(other())  # scheduled, not yet run
        with pytest.raises(bd.InjectedError):
            await disk.aio.read(0, 512)
        ran_before_error = bool(ran)
        await task
        return ran_before_error

    assert asyncio.run(main()) is (not immediately)


# -- stress: counters must be exact under contention ---------------------------

BAD_SECTORS = [k * 8 + 3 for k in range(16)]  # one per 4 KiB block of the first 64 KiB


def stress_rules():
    rules = [InjectError("none", sector=s, name=f"bad{s}") for s in BAD_SECTORS]
    rules += [SetState("write_aio", 2, state=1), SetState("write_aio", 1, state=2)]
    return rules


def test_threads_stress_counters_exact_with_breakpoints(tmp_path):
    disk = make_disk(tmp_path, stress_rules())
    threads, per_thread = 8, 5000
    observed: list[Counter] = [Counter() for _ in range(threads)]
    done = threading.Event()

    def worker(n):
        rng = random.Random(n)
        for _ in range(per_thread):
            offset = rng.randrange(0, 16) * 4096
            op = rng.random()
            try:
                if op < 0.45:
                    disk.read(offset, 4096)
                elif op < 0.9:
                    observed[n]["writes"] += 1
                    disk.write(offset, b"w" * 4096)
                else:
                    disk.write_zeroes(offset, 4096)
            except bd.InjectedError as exc:
                observed[n][exc.rule] += 1

    def controller():
        rounds = 0
        while not done.is_set():
            disk.break_on("pwritev_zero", "Z")
            try:
                disk.wait_break("Z", timeout=0.5)
            except bd.BreakpointTimeout:
                continue
            disk.resume("Z")
            rounds += 1
        pending = [tag for _, tag in disk.engine.pending_breakpoints]
        if "Z" in pending:
            disk.remove_break("Z")
        controller.rounds = rounds  # type: ignore[attr-defined]

    workers = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    ctl = threading.Thread(target=controller)
    ctl.start()
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    done.set()
    ctl.join(10)
    assert not any(w.is_alive() for w in workers) and not ctl.is_alive()
    total = sum(observed, Counter())
    assert sum(total.values()) > 0
    assert {s.name: s.hits for s in disk.rules if s.kind == "inject-error"} == {
        f"bad{s}": total[f"bad{s}"] for s in BAD_SECTORS
    }
    # Each write_aio fires exactly one rule of the ping-pong pair, and flips the state.
    flips = disk.rule("set-state#17").hits + disk.rule("set-state#18").hits
    assert flips == disk.engine.transitions == total["writes"]
    assert controller.rounds > 0  # type: ignore[attr-defined]


def test_asyncio_stress_counters_exact_with_breakpoints(tmp_path):
    disk = make_disk(tmp_path, stress_rules())
    tasks, per_task = 100, 100

    async def main():
        observed = Counter()
        stop = asyncio.Event()

        async def worker(n):
            rng = random.Random(n)
            for _ in range(per_task):
                offset = rng.randrange(0, 16) * 4096
                try:
                    if rng.random() < 0.5:
                        await disk.aio.read(offset, 4096)
                    else:
                        await disk.aio.write_zeroes(offset, 4096)
                except bd.InjectedError as exc:
                    observed[exc.rule] += 1

        async def controller():
            rounds = 0
            while not stop.is_set():
                disk.break_on("pwritev_zero", "Z")
                try:
                    await disk.aio.wait_break("Z", timeout=0.5)
                except bd.BreakpointTimeout:
                    continue
                disk.resume("Z")
                rounds += 1
            if any(tag == "Z" for _, tag in disk.engine.pending_breakpoints):
                disk.remove_break("Z")
            return rounds

        ctl = asyncio.create_task(controller())
        await asyncio.wait_for(asyncio.gather(*(worker(n) for n in range(tasks))), 120)
        stop.set()
        return observed, await asyncio.wait_for(ctl, 10)

    observed, rounds = asyncio.run(main())
    assert rounds > 0 and sum(observed.values()) > 0
    assert {s.name: s.hits for s in disk.rules if s.kind == "inject-error"} == {
        f"bad{s}": observed[f"bad{s}"] for s in BAD_SECTORS
    }


@pytest.mark.parametrize("how", ["cancelled", "timed-out"])
def test_a_write_given_up_before_pwritev_raises_no_pwritev_done(tmp_path, how):
    """A write abandoned while held at write_aio (its task cancelled, or its
    hold timed out) went on to raise pwritev_done: a set-state rule on it
    fired and a breakpoint on it held the cancelled task for hold_timeout,
    which then ended in BreakpointTimeout instead of CancelledError. QEMU
    raises pwritev_done only for a request that reached pwritev."""
    rules = [SetState("pwritev_done", 7, name="done")]
    disk = make_disk(tmp_path, rules, hold_timeout=0.2 if how == "timed-out" else 10)

    async def scenario():
        disk.break_on("write_aio", "A")
        disk.break_on("pwritev_done", "B")
        task = asyncio.create_task(disk.aio.write(0, b"x" * 512))
        await disk.aio.wait_break("A", timeout=5)
        if how == "cancelled":
            task.cancel()
        with pytest.raises(asyncio.CancelledError if how == "cancelled" else bd.BreakpointTimeout):
            await asyncio.wait_for(task, 5)

    asyncio.run(scenario())
    assert disk.state == 1 and disk.rule("done").hits == 0
    assert disk.engine.pending_breakpoints == [("pwritev_done", "B")]
    assert not disk.dirty and disk.read(0, 512) == bytes(512)
    disk.close()


def test_a_write_cancelled_in_its_delay_ends_cancelled_at_once(tmp_path):
    """A write cancelled while it waited out an injected delay went on to
    raise pwritev_done: a breakpoint there held the cancelled task until
    hold_timeout, so ``asyncio.wait_for(..., 0.2)`` ended after the hold
    timeout with BreakpointTimeout, not TimeoutError. Cancelling abandons the
    request where it waits: nothing after that wait happens."""
    rules = [
        InjectError("write_aio", errno=0, delay=30, name="slow"),
        SetState("pwritev_done", 7, name="done"),
    ]
    disk = make_disk(tmp_path, rules, hold_timeout=30)

    async def scenario():
        disk.break_on("pwritev_done", "B")
        start = asyncio.get_running_loop().time()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(disk.aio.write(0, b"x" * 512), 0.2)
        return asyncio.get_running_loop().time() - start

    assert asyncio.run(scenario()) < 5
    assert disk.state == 1 and disk.rule("done").hits == 0
    assert disk.engine.pending_breakpoints == [("pwritev_done", "B")]
    assert disk.read(0, 512) == bytes(512)
    disk.close()


def test_is_suspended_is_not_fooled_by_a_resume_of_another_tag(tmp_path):
    """``is_suspended`` walked the suspended list without the lock while
    ``resume`` deletes from it in place: a resume of another tag at the
    wrong moment made it skip a request that stayed suspended (a stress run
    of 5 s saw 43 false answers). Here the resume happens at that moment."""
    disk = make_disk(tmp_path)
    disk.break_on("read_aio", "A")
    box = in_thread(disk.read, 0, 512)
    disk.wait_break("A", timeout=5)
    engine = disk.engine

    class ResumedMidWalk:
        """An entry that another thread resumes as the walk reads it."""

        @property
        def tag(self):
            engine._suspended.remove(self)
            return "X"

    engine._suspended.insert(0, ResumedMidWalk())
    assert disk.is_suspended("A")
    disk.resume("A")
    assert finish(box) == bytes(512)
    disk.close()
