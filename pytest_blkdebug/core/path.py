"""The request path: every operation written once, as data and one generator.

Why generators: a request waits at a few points (a breakpoint's ``Hold``, an
injected delay, its host I/O), and *how* it waits is the caller's business
-- a blocked thread (``Disk``, ``DiskFile``, the NBD server, the adapters),
a suspended asyncio task (``disk.aio``), or blkdebug-io's model of qemu-io's
event loop. So each operation is one generator that yields where it may
wait, and a *driver* decides how to wait. What an operation does, in which
order, and what QEMU does at each step is written here once.

Stages, in order, each a named function below:

1. ``range_check``  -- types, 2**63, the image's range (EIO), read-only (EPERM),
   before any event; a closed disk fails here.
2. ``events_before`` -- the operation's events (set-state, arming, breakpoints).
3. ``decide``       -- the armed rule that decides the request (a ``Decision``).
4. ``effect``       -- delay, then errno (the request fails here).
5. store (``HOST_IO`` yield, then ``store_*``/``load``) -- the host I/O and
   the lies (corrupt, lost, misdirect); recorders and bad-sector healing
   hear what was really stored.
6. ``events_after`` -- e.g. ``pwritev_done``, raised whether or not it failed.
7. ``durability``   -- the dirty marks a later flush looks at (QEMU bumps its
   write generation once the request is over, failed or not).

What a generator yields (the driver's protocol):

- a ``Hold``: wait until it is released; send back True, or False when the
  wait timed out (None counts as released);
- ``HOST_IO``: the host I/O comes next. Blocking and asyncio drivers go on
  at once; blkdebug-io parks the request here, as QEMU's thread pool does.
  A driver that sends True back (blkdebug-io) gets ``IO_DONE`` from a read
  or a store once its host I/O is done, before the rest of the request
  (events after, the result): QEMU's pool runs the I/O of the requests in
  flight in the order they were submitted, and their completions later;
- ``RESCHEDULE``: an injected error is about to be raised; asyncio yields
  to the loop once (QEMU's blkdebug reschedules its coroutine), unless the
  rule says ``immediately``;
- a float: an injected delay in seconds (sleep, or ``await asyncio.sleep``).

A driver may ``throw`` an exception in at a yield (a cancelled task, a
breakpoint nobody can resume): the request abandons its hold and ends with
that exception. The blocking driver is ``run``; the asyncio one is
``aio.arun``. ``Disk.read``/``Disk.write`` keep one documented fast path
(``quiet``) for requests nothing can apply to.
"""

from __future__ import annotations

import errno
import os
import random
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, cast

from . import events as iotypes
from .decision import Decision
from .errors import BreakpointTimeout, InjectedError
from .hold import Hold
from .image import Extent
from .limits import check_request

if TYPE_CHECKING:
    from .disk import Disk
    from .engine import Engine

__all__ = [
    "BLOCK_STATUS",
    "DISCARD",
    "FLUSH",
    "HOST_IO",
    "IO_DONE",
    "OPERATIONS",
    "READ",
    "RESCHEDULE",
    "WRITE",
    "WRITE_ZEROES",
    "Operation",
    "Request",
    "block_status",
    "discard",
    "event",
    "fire",
    "flush",
    "quiet",
    "read",
    "run",
    "write",
    "write_zeroes",
]

T = TypeVar("T")
#: What a request yields: a Hold, HOST_IO, IO_DONE, RESCHEDULE, or a delay in seconds.
Wait = Hold | str | float
#: A request: a generator of waits that returns the operation's result.
Request = Generator[Wait, "bool | None", T]
OnHold = Callable[[Hold], None]

HOST_IO = "host-io"
IO_DONE = "io-done"
RESCHEDULE = "reschedule"


@dataclass(frozen=True, slots=True)
class Operation:
    """What one operation does around its request check, as data.

    ``before`` events are raised, then the request is decided as ``iotype``,
    then (on success) the image is touched, then ``after`` events are raised
    whether or not the request failed. ``stores``: it changes the image, so
    a read-only disk refuses it, recorders hear it and a flush has work to
    do after it. For flush, ``before`` is ``flush_to_os`` (always) and
    ``flush_to_disk`` (only when the disk is dirty).
    """

    name: str
    iotype: int
    before: tuple[str, ...] = ()
    after: tuple[str, ...] = ()
    stores: bool = False
    #: Every event a request of this operation may raise.
    events: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "events", self.before + self.after)


READ = Operation("read", iotypes.READ, ("read_aio",))
WRITE = Operation("write", iotypes.WRITE, ("write_aio", "pwritev"), ("pwritev_done",), True)
WRITE_ZEROES = Operation(
    "write_zeroes", iotypes.WRITE_ZEROES, ("pwritev_zero",), ("pwritev_done",), True
)
DISCARD = Operation("discard", iotypes.DISCARD, stores=True)
BLOCK_STATUS = Operation("block_status", iotypes.BLOCK_STATUS)
FLUSH = Operation("flush", iotypes.FLUSH, ("flush_to_os", "flush_to_disk"))
#: Every operation by name (a Disk method's name).
OPERATIONS = {op.name: op for op in (READ, WRITE, WRITE_ZEROES, DISCARD, BLOCK_STATUS, FLUSH)}

_delay_lock = threading.Lock()


# -- 1. range check --------------------------------------------------------------


def range_check(disk: Disk, op: Operation, offset: Any, length: Any) -> tuple[int, int]:
    """Plain ints inside the image, on an open disk; stores on a writable one.

    Fails before any event: ValueError (closed disk, or a value past 2**63),
    TypeError (not an int; both naming the argument), EIO outside the image
    (as QEMU), EPERM for a store on a read-only disk.
    """
    __tracebackhide__ = True
    image = disk.image
    if (
        type(offset) is not int
        or type(length) is not int
        or offset < 0
        or length < 0
        or offset + length > image.limit
    ):
        if image.limit < 0:
            raise image.closed_error()
        offset, length = check_request(offset, length)  # TypeError/ValueError
        if offset < 0 or length < 0 or offset + length > image.limit:
            raise OSError(
                errno.EIO,
                f"{os.strerror(errno.EIO)}: {op.name} of {length} bytes at "
                f"offset {offset} is outside the {disk.size}-byte image {disk.path}",
            )
    if op.stores and image.readonly:
        raise OSError(
            errno.EPERM,
            f"{os.strerror(errno.EPERM)}: {op.name} of {length} bytes at offset "
            f"{offset} refused: disk {disk.path} is read-only",
        )
    return offset, length


# -- 2. and 6. events ------------------------------------------------------------


def hold(disk: Disk, held: Hold, settled: bool = False) -> Generator[Wait, bool | None, None]:
    """Wait at a breakpoint: the driver waits, this decides what follows.

    ``settled``: the request is past its host I/O, so a close that resumes
    it lets it end as it would have; before that, a close fails it with
    ValueError without touching the image. A timed-out wait abandons the
    hold and raises ``BreakpointTimeout``.
    """
    __tracebackhide__ = True
    disk.holds.add(held)
    released: bool | None = True
    try:
        if not disk.closed:  # else closed before the hold was listed: nothing to wait for
            released = yield held
    except BaseException:  # the driver gave up (cancelled, nobody can resume)
        disk.engine.abandon(held)
        raise
    finally:
        disk.holds.discard(held)
    tags = ", ".join(map(repr, held.tags))
    if disk.closed:
        disk.engine.abandon(held)  # what close() did not resume stays listed no more
        if settled:
            return
        raise disk.image.closed_error(
            f"disk {disk.path} was closed while its {held.operation} was held at breakpoint {tags}"
        )
    if released is False:
        disk.engine.abandon(held)
        raise BreakpointTimeout(
            f"{held.operation} held at breakpoint {tags} on event {held.event!r} "
            f"was not resumed within {disk.hold_timeout:g} s"
        )


def fire(
    disk: Disk, event: str, operation: str, settled: bool = False
) -> Generator[Wait, bool | None, None]:
    """Raise one event; wait if a breakpoint holds the request."""
    __tracebackhide__ = True
    held = disk.engine.fire(event, operation)
    if held is not None:
        yield from hold(disk, held, settled)


def events_before(disk: Disk, op: Operation) -> Generator[Wait, bool | None, None]:
    """The events raised before the request is decided."""
    __tracebackhide__ = True
    engine = disk.engine
    live = engine.live_events
    for name in op.before:
        if name in live:
            held = engine.fire(name, op.name)
            if held is not None:
                yield from hold(disk, held)


def events_after(disk: Disk, op: Operation) -> Generator[Wait, bool | None, None]:
    """The events raised once the request is over (failed or not); none once
    the disk is closed."""
    __tracebackhide__ = True
    engine = disk.engine
    live = engine.live_events
    for name in op.after:
        if name in live and not disk.closed:
            held = engine.fire(name, op.name)
            if held is not None:
                yield from hold(disk, held, settled=True)


def _watched(disk: Disk, events: tuple[str, ...]) -> bool:
    """Whether any of ``events`` has a rule or breakpoint (else an events
    stage has nothing to do and is skipped)."""
    live = disk.engine.live_events
    return bool(live) and not live.keys().isdisjoint(events)


# -- 3. and 4. decision and effect --------------------------------------------------


def decide(engine: Engine, op: Operation, offset: int, length: int) -> Decision | None:
    """The deciding rule's Decision; the lock-free pre-check first."""
    match = engine.matchers[op.iotype]
    if match is None or not match(offset, length):
        return None
    return engine.decide(op.iotype, offset, length)


def effect(
    disk: Disk, op: Operation, decision: Decision, offset: int, length: int
) -> Generator[Wait, bool | None, None]:
    """Delay, then fail: a delay is waited (and counted in
    ``engine.injected_delay``); an errno raises ``InjectedError`` after one
    ``RESCHEDULE`` unless the rule says ``immediately``. Lies act at the store.
    A disk closed during the delay (``close()`` cuts it short) fails the
    request, as it fails one held at a breakpoint."""
    __tracebackhide__ = True
    if decision.delay > 0:
        with _delay_lock:
            disk.engine.injected_delay += decision.delay
        yield decision.delay
        if disk.closed:
            raise disk.image.closed_error(
                f"disk {disk.path} was closed while its {op.name} waited out an injected delay"
            )
    if decision.errno:
        if not decision.immediately:
            yield RESCHEDULE
        raise InjectedError(decision.errno, decision.rule, op.name, offset, length)


def corrupted(data: bytes | bytearray | memoryview, decision: Decision) -> bytes:
    """``data`` as the decision alters it: one seeded bit flipped, all zero,
    or seeded garbage (``random.Random(entropy)``)."""
    raw = bytes(data)
    if not raw or decision.corrupt is None:
        return raw
    if decision.corrupt == "zero":
        return bytes(len(raw))
    if decision.corrupt == "garbage":
        return random.Random(decision.entropy).randbytes(len(raw))
    bit = decision.entropy % (len(raw) * 8)
    flipped = bytearray(raw)
    flipped[bit // 8] ^= 1 << (bit % 8)
    return bytes(flipped)


# -- 5. store -----------------------------------------------------------------------


def load(disk: Disk, offset: int, length: int, decision: Decision | None) -> bytes:
    """Read from the image; a ``corrupt`` decision alters what is returned
    (the image keeps the truth)."""
    __tracebackhide__ = True
    data = disk.image.pread(offset, length)
    if decision is not None and decision.corrupt is not None:
        return corrupted(data, decision)
    return data


def _target(disk: Disk, offset: int, length: int, decision: Decision | None) -> tuple[int, int]:
    """Where a store really lands: its own range, nowhere (``lost``: length
    0), or the ``misdirect`` offset (clipped to the image)."""
    if decision is None:
        return offset, length
    if decision.lost:
        return offset, 0
    if decision.misdirect is not None:
        start = decision.misdirect
        return start, max(0, min(length, disk.image.limit - start))
    return offset, length


def stored(disk: Disk, op: Operation, offset: int, length: int, data: bytes | None) -> None:
    """Tell the recorders and the bad-sector rules what really reached the image."""
    __tracebackhide__ = True
    engine = disk.engine
    for recorder in engine.recorders:
        recorder.on_store(disk, op.name, offset, length, data)
    if engine.watches_stores:
        engine.stored(offset, length)


def store_write(
    disk: Disk,
    offset: int,
    length: int,
    data: bytes | bytearray | memoryview,
    decision: Decision | None,
) -> None:
    """Write ``data`` (as the decision alters or moves it, if it does)."""
    __tracebackhide__ = True
    at, n = offset, length
    if decision is not None:
        if decision.corrupt is not None:
            data = corrupted(data, decision)
        at, n = _target(disk, offset, length, decision)
        if n == 0 and length:
            return  # lost (or misdirected off the image): acknowledged, not stored
        if n < length:
            data = memoryview(data).cast("B")[:n]
    disk.image.pwrite(at, data)
    engine = disk.engine
    if engine.recorders or engine.watches_stores:
        stored(disk, WRITE, at, n, bytes(data))


def store_zeroes(
    disk: Disk, op: Operation, offset: int, length: int, unmap: bool, decision: Decision | None
) -> None:
    """Zero (write_zeroes) or punch (discard) a range, unless lost or moved."""
    __tracebackhide__ = True
    at, n = _target(disk, offset, length, decision)
    if n == 0:
        return
    engine = disk.engine
    # Allocated zeroes past the file's end (a disk larger than its file)
    # extend it, as a write does; a recorder hears that as a truncate.
    grows = not unmap and bool(engine.recorders) and at + n > disk.image.size()
    disk.image.zero(at, n, unmap=unmap)
    if engine.recorders or engine.watches_stores:
        stored(disk, op, at, n, None)
        if grows:
            engine.file_op("truncate", disk.path, size=at + n, disk=disk)


# -- 7. durability --------------------------------------------------------------------


def durability(disk: Disk) -> None:
    """A request that changes the image (failed or not) leaves work for the
    next flush: ``flush_to_disk`` and the flush check."""
    image = disk.image
    image.dirty_event = image.dirty_check = True


# -- the operations -------------------------------------------------------------------


def _store(
    disk: Disk,
    op: Operation,
    offset: int,
    length: int,
    data: bytes | bytearray | memoryview | None,
    unmap: bool = True,
) -> Generator[Wait, bool | None, None]:
    """The request of an operation that changes the image (write with
    ``data``, else write-zeroes or discard): events before, decision,
    effect, store, then events after and durability whether it failed or
    not. A request given up before it was decided (cancelled or timed out
    at a breakpoint of its events before) raises no events after: QEMU
    raises pwritev_done only for a request that reached pwritev. A request
    its driver abandons (a cancelled task, an interrupt: a BaseException
    that is no Exception) or drops (``close()`` of the generator) ends where
    it waited: no events after, so no breakpoint can hold it again."""
    __tracebackhide__ = True
    reached = False
    failure: Exception | None = None
    try:
        if _watched(disk, op.before):
            yield from events_before(disk, op)
        reached = True
        decision = decide(disk.engine, op, offset, length)
        if decision is not None:
            yield from effect(disk, op, decision, offset, length)
        split = yield HOST_IO
        if data is not None:
            store_write(disk, offset, length, data, decision)
        else:
            store_zeroes(disk, op, offset, length, unmap, decision)
        if split:
            yield IO_DONE
    except GeneratorExit:
        raise
    except Exception as exc:  # the request failed: events after all the same
        if not reached:
            raise
        failure = exc
    except BaseException:  # abandoned by its driver: it ends here
        if reached:
            durability(disk)
        raise
    try:
        if _watched(disk, op.after):
            yield from events_after(disk, op)
    finally:
        durability(disk)
    if failure is not None:
        raise failure


def read(disk: Disk, offset: int, length: int) -> Request[bytes]:
    """Read ``length`` bytes at ``offset`` (events: read_aio)."""
    __tracebackhide__ = True
    offset, length = range_check(disk, READ, offset, length)
    if _watched(disk, READ.before):
        yield from events_before(disk, READ)
    decision = decide(disk.engine, READ, offset, length)
    if decision is not None:
        yield from effect(disk, READ, decision, offset, length)
    split = yield HOST_IO
    data = load(disk, offset, length, decision)
    if split:
        yield IO_DONE
    return data


def write(disk: Disk, offset: int, data: bytes | bytearray | memoryview) -> Request[None]:
    """Write ``data`` at ``offset`` (events: write_aio, pwritev, pwritev_done)."""
    __tracebackhide__ = True
    if type(data) is bytes:
        length = len(data)
    else:
        view = memoryview(data)
        if not view.c_contiguous:  # the host write would refuse it, after the events
            raise BufferError(
                "write data must be a C-contiguous buffer (bytes(data) copies a strided one)"
            )
        length = view.nbytes
    offset, length = range_check(disk, WRITE, offset, length)
    yield from _store(disk, WRITE, offset, length, data)


def _empty(disk: Disk, op: Operation) -> None:
    """An empty write-zeroes or discard: QEMU's block layer finishes it
    itself, nothing reaches blkdebug (no event, no check). An empty discard
    still moves the format node's write generation on, so the next flush
    raises flush_to_disk without being checked; an empty write-zeroes
    returns before that (qemu-io 7.2, seen by the conformance tests)."""
    if op is DISCARD:
        disk.image.dirty_event = True


def write_zeroes(disk: Disk, offset: int, length: int, unmap: bool = True) -> Request[None]:
    """Zero a range (events: pwritev_zero, pwritev_done); ``unmap=False``
    keeps it allocated (NBD's NO_HOLE; QEMU without MAY_UNMAP)."""
    __tracebackhide__ = True
    offset, length = range_check(disk, WRITE_ZEROES, offset, length)
    if not length:
        return _empty(disk, WRITE_ZEROES)
    yield from _store(disk, WRITE_ZEROES, offset, length, None, unmap)


def discard(disk: Disk, offset: int, length: int) -> Request[None]:
    """Discard a range; it reads as zeroes afterwards (no event)."""
    __tracebackhide__ = True
    offset, length = range_check(disk, DISCARD, offset, length)
    if not length:
        return _empty(disk, DISCARD)
    yield from _store(disk, DISCARD, offset, length, None)


def block_status(disk: Disk, offset: int, length: int) -> Request[list[Extent]]:
    """Which parts of a range hold data and which are holes (no event)."""
    __tracebackhide__ = True
    offset, length = range_check(disk, BLOCK_STATUS, offset, length)
    decision = decide(disk.engine, BLOCK_STATUS, offset, length)
    if decision is not None:
        yield from effect(disk, BLOCK_STATUS, decision, offset, length)
    yield HOST_IO
    return disk.image.extents(offset, length)


def flush(disk: Disk) -> Request[None]:
    """``flush_to_os``; if anything changed since the last good flush,
    ``flush_to_disk`` and the flush check; a failed flush stays dirty.
    Recorders hear the flush begin (before its events) and end (ok or not).

    A flush covers what was written before it: as QEMU's nodes take their
    write generation when their flush begins (the format node's before its
    events, blkdebug's before its check), each dirty mark is taken then, so
    a write that lands while the flush is held, delayed or syncing leaves
    its mark for the next flush. A read-only disk's flush does nothing, as
    QEMU's."""
    __tracebackhide__ = True
    image = disk.image
    if image.limit < 0:
        raise image.closed_error()
    if image.readonly:
        return  # QEMU's flush of a read-only node ends at once: no event, no check
    recorders = disk.engine.recorders
    tokens = [(r, r.on_flush_begin(disk)) for r in recorders] if recorders else []
    ok = False
    event_dirty, image.dirty_event = image.dirty_event, False
    try:
        to_os, to_disk = FLUSH.before
        if to_os in disk.engine.live_events:
            yield from fire(disk, to_os, FLUSH.name)
        if event_dirty and to_disk in disk.engine.live_events:
            yield from fire(disk, to_disk, FLUSH.name)
        check_dirty, image.dirty_check = image.dirty_check, False
        if check_dirty:
            try:
                decision = decide(disk.engine, FLUSH, 0, 0)
                if decision is not None:
                    yield from effect(disk, FLUSH, decision, 0, 0)
                yield HOST_IO
                if disk.durable:
                    image.sync()
            except BaseException:
                image.dirty_check = True  # a failed flush stays dirty
                raise
        ok = True
    except BaseException:
        if event_dirty:
            image.dirty_event = True
        raise
    finally:
        for recorder, token in tokens:
            recorder.on_flush_end(disk, token, ok)


def event(disk: Disk, name: str, operation: str | None = None) -> Request[None]:
    """Raise ``name`` as the user's own I/O (registered events only)."""
    __tracebackhide__ = True
    image = disk.image
    if image.limit < 0:
        raise image.closed_error()
    engine = disk.engine
    engine.registry.check(name)
    if name not in engine.live_events:
        engine.note_event(name)  # fire() traces only events with rules
    yield from fire(disk, name, operation or f"event {name}")


# -- the fast path ------------------------------------------------------------------------


def quiet(engine: Engine, op: Operation, offset: int, length: int) -> bool:
    """Whether nothing can apply to this request: none of its events has a
    rule or breakpoint, no armed rule can match it, and (for stores) no
    bad-sector rule watches stores -- the engine's ``Gate`` for the
    operation, which it keeps current as rules arm and events go live.
    Then ``Disk.read``/``write`` do the host I/O directly, which is the
    only shortcut past the generators; a write still tells the recorders
    what it stored. (They inline this test, holding their gates; it is
    kept here as the one definition.)"""
    check = engine.gate(op).check
    return check is None or not check(offset, length)


# -- the blocking driver -------------------------------------------------------------------


def run(
    request: Request[T],
    *,
    hold_timeout: float,
    on_hold: OnHold | None = None,
    closing: threading.Event | None = None,
) -> T:
    """Run a request in this thread, blocking where it waits.

    ``closing`` (the disk's, set by ``close()``) cuts an injected delay short.

    ``on_hold(hold)`` is called, in this thread, before it first blocks at
    a breakpoint (at most once per request: the NBD server hands its
    connection to another thread then). A hold in the process's only thread
    can never be resumed (nothing else can call ``resume``): it fails at
    once with ``BreakpointTimeout`` instead of waiting ``hold_timeout``.
    """
    __tracebackhide__ = True
    value: bool | None = None
    error: BaseException | None = None
    while True:
        try:
            wait = request.send(value) if error is None else request.throw(error)
        except StopIteration as stop:
            return cast(T, stop.value)
        value = error = None
        if isinstance(wait, Hold):
            if threading.active_count() == 1:
                error = BreakpointTimeout(
                    f"{wait.operation} held at breakpoint {', '.join(map(repr, wait.tags))} "
                    f"on event {wait.event!r} can never be resumed: it runs in the "
                    "process's only thread, so nothing can call resume() (resume it "
                    "from another thread, or issue the request through disk.aio)"
                )
                continue
            if on_hold is not None:
                on_hold(wait)
                on_hold = None
            value = wait.wait(hold_timeout)
        elif not isinstance(wait, str):  # HOST_IO and RESCHEDULE: go on at once
            if closing is None:
                time.sleep(wait)
            else:
                closing.wait(wait)
