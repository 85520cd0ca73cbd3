"""qemu-io's event loop, as blkdebug-io runs it: when each request progresses.

Why: in qemu-io an aio request runs inside its command only until it first
waits: at its host I/O (QEMU's thread pool), at a breakpoint, or when a rule
without ``immediately`` reschedules it. It goes on (completion, its
``pwritev_done`` event, the dirty bookkeeping a later flush looks at) only in
a command that *polls* the event loop. Which command that is decides which
rules its later events arm, so a driver that simply ran every request to its
end would fail other requests than qemu-io does.

What polls, as established against qemu-io 7.2 (``-f raw -t writeback``,
blkdebug over a file; tests/test_aio_conformance.py holds the scripts):

* a synchronous ``read``/``write``/``write -z``/``discard``/``flush`` that
  reaches its own host I/O: the requests parked before it go on, then the
  synchronous one completes. One that does not (out of range, an empty
  ``write -z``/``discard``, a flush of a clean image, an error from an
  ``immediately`` rule) polls nothing;
* ``aio_flush`` and the end of the script (both drain: poll until no request
  is in flight; a suspended request makes qemu-io wait forever);
* ``wait_break TAG``, only while no request is suspended under TAG;
* ``sleep`` (qemu-io's main loop).

``aio_read``/``aio_write``, ``break``, ``resume``, ``remove_break`` and
``length`` do not poll. ``resume``/``remove_break`` run the resumed request
on inside the command, up to its next wait (or its end). Within one poll,
rescheduled requests go on first, oldest first; then the host I/O of the
requests parked at it, oldest first (QEMU's thread pool queues its work in
the order it was submitted: of two overlapping writes in flight, the later
one's data stays, and a read sees the writes submitted before it); then
their completions, newest first (the pool lists finished requests newest
first).

Requests are generators (``operation``) that yield where they wait: a
``Hold`` (breakpoint), ``HOST_IO`` (their host I/O is next), ``RESCHEDULE``
(an injected error's yield to the loop) or a number of seconds (a delay
rule, an extension: a timer). ``EventLoop`` parks each at its yield and
steps it on when qemu-io would. A request started with ``split=True`` (the
session's, from core/path) is sent True at ``HOST_IO`` and stops again at
``IO_DONE`` after its host I/O, so a poll runs every I/O before any
completion.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ..core import path
from ..core.disk import Disk
from ..core.hold import Hold
from ..core.path import HOST_IO, IO_DONE, RESCHEDULE, Wait

Operation = path.Request[Any]


class Hang(Exception):
    """The script reached a point where qemu-io would wait forever."""


# ---------------------------------------------------------------------------
# The operations: core's request path (core/path.py) gives each as a
# generator that yields at its waits, HOST_IO included.
# ---------------------------------------------------------------------------

_OPERATIONS: dict[str, Callable[..., Operation]] = {
    "read": path.read,
    "write": path.write,
    "write_zeroes": path.write_zeroes,
    "discard": path.discard,
    "flush": path.flush,
}


def operation(disk: Disk, name: str, *args: Any) -> Operation:
    """The generator of one request (``name`` is a Disk method's name)."""
    return _OPERATIONS[name](disk, *args)


# ---------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------

Finish = Callable[[Any, "OSError | None"], None]


class _Request:
    """One request in flight: its generator, where it waits, what to do at its end."""

    __slots__ = ("gen", "finish", "split", "waiting", "ticket", "wake", "done")

    def __init__(self, gen: Operation, finish: Finish, split: bool) -> None:
        self.gen = gen
        self.finish = finish
        self.split = split  # stops at IO_DONE when sent True at HOST_IO
        self.waiting: Wait | None = None
        self.ticket = 0  # when it parked: orders the completions of a poll
        self.wake = 0.0  # when a delay it waits for is over (time.monotonic)
        self.done = False


class EventLoop:
    """The requests in flight and the rules by which they progress.

    A request waits for one of: a ``Hold`` (until a resume releases it; it
    then runs on at once), ``HOST_IO`` or ``RESCHEDULE`` (until a poll), or a
    number of seconds (a delay rule: a timer that a poll runs once it is
    due; 0 is a reschedule).
    """

    def __init__(self) -> None:
        self.requests: list[_Request] = []
        self._tickets = 0

    def start(self, gen: Operation, finish: Finish, *, split: bool = False) -> _Request:
        """Run a new request up to its first wait (or its end). ``split``:
        ``gen`` is one of core/path's requests, which stop at ``IO_DONE``
        after their host I/O when sent True at ``HOST_IO``."""
        request = _Request(gen, finish, split)
        self.requests.append(request)
        self._step(request)
        return request

    def _step(self, request: _Request, value: bool | None = None) -> None:
        request.waiting = None
        try:
            waiting = request.gen.send(value)
        except StopIteration as stop:
            self._end(request, stop.value, None)
        except OSError as exc:
            self._end(request, None, exc)
        else:
            if waiting == IO_DONE:  # its completion keeps its place in the pool
                request.waiting = waiting
                return
            self._tickets += 1
            request.ticket = self._tickets
            if isinstance(waiting, Hold):
                request.waiting = waiting
                waiting.add_callback(lambda: self._released(request, waiting))
            elif isinstance(waiting, (int, float)) and waiting > 0:
                request.waiting = float(waiting)
                request.wake = time.monotonic() + waiting
            elif isinstance(waiting, (int, float)):
                request.waiting = RESCHEDULE
            else:
                request.waiting = waiting

    def _end(self, request: _Request, value: Any, error: OSError | None) -> None:
        request.done = True
        self.requests.remove(request)
        request.finish(value, error)

    def _released(self, request: _Request, hold: Hold) -> None:
        """A resume (or remove_break) let the request go: it runs on at once,
        inside the command, as QEMU re-enters the coroutine."""
        if request.waiting is hold and not request.done:
            self._step(request)

    def poll(self, last: _Request | None = None) -> bool:
        """One turn of the loop; False when nothing could progress.

        Rescheduled requests first (oldest first); then the host I/O of the
        requests parked at it (oldest first: the order they were submitted
        in), then their completions (newest first); then the delays that
        are due; ``last``, a synchronous request, goes on after the others,
        whose host I/O started before its own.
        """
        now = time.monotonic()
        others = [r for r in self.requests if r is not last]
        ready = sorted((r for r in others if r.waiting == RESCHEDULE), key=lambda r: r.ticket)
        io = [r for r in others if r.waiting == HOST_IO]
        timers = sorted(
            (r for r in others if isinstance(r.waiting, float) and r.wake <= now),
            key=lambda r: r.wake,
        )
        due_last = last is not None and self._due(last, now)
        for request in ready:
            if not request.done and request.waiting == RESCHEDULE:
                self._step(request)
        for request in sorted((r for r in io if r.split), key=lambda r: r.ticket):
            if not request.done and request.waiting == HOST_IO:
                self._step(request, True)  # its host I/O; it stops at IO_DONE
        if due_last and last is not None and last.split and last.waiting == HOST_IO:
            self._step(last, True)
        for request in sorted(io, key=lambda r: -r.ticket):
            if not request.done and request.waiting in (HOST_IO, IO_DONE):
                self._step(request)  # its completion
        for request in timers:
            if not request.done and self._due(request, now):
                self._step(request)
        if due_last and last is not None and not last.done and self._due(last, now):
            self._step(last)
        return bool(ready or io or timers or due_last)

    @staticmethod
    def _due(request: _Request, now: float) -> bool:
        waiting = request.waiting
        return isinstance(waiting, str) or (isinstance(waiting, float) and request.wake <= now)

    def poll_until(self, done: Callable[[], bool], what: str, last: _Request | None = None) -> None:
        """Poll until ``done()``, sleeping while only delays are left; Hang
        when nothing can progress any more."""
        while not done():
            if self.poll(last):
                continue
            wakes = [r.wake for r in self.requests if isinstance(r.waiting, float)]
            if not wakes:
                raise Hang(what)
            time.sleep(max(0.0, min(wakes) - time.monotonic()))

    def run_for(self, seconds: float) -> None:
        """Run the loop for ``seconds`` (qemu-io's ``sleep``): whatever is
        ready goes on, and so does each delay that falls due meanwhile."""
        deadline = time.monotonic() + seconds
        while True:
            while self.poll():
                pass
            wakes = [r.wake for r in self.requests if isinstance(r.waiting, float)]
            until = min([deadline, *wakes])
            time.sleep(max(0.0, until - time.monotonic()))
            if until >= deadline:
                return

    def cancel(self) -> None:
        """Drop every request in flight (the script stopped)."""
        for request in list(self.requests):
            request.done = True
            request.gen.close()
        self.requests.clear()
