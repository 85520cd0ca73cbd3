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
rescheduled requests go on first, oldest first, then the host I/O
completions, newest first (QEMU's thread pool lists its requests newest
first).

Requests are generators (``operation``) that yield where they wait: a
``Hold`` (breakpoint), ``HOST_IO`` (their host I/O is next), ``RESCHEDULE``
(an injected error's yield to the loop). ``EventLoop`` parks each at its
yield and steps it on when qemu-io would.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

from ..core import path
from ..core.disk import Disk
from ..core.engine import Hold
from ..core.path import HOST_IO, RESCHEDULE

Wait = Hold | str | float
Operation = Generator[Wait, Any, Any]


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

    __slots__ = ("gen", "finish", "waiting", "ticket", "done")

    def __init__(self, gen: Operation, finish: Finish) -> None:
        self.gen = gen
        self.finish = finish
        self.waiting: Wait | None = None
        self.ticket = 0  # when it parked: orders the completions of a poll
        self.done = False


class EventLoop:
    """The requests in flight and the rules by which they progress."""

    def __init__(self) -> None:
        self.requests: list[_Request] = []
        self._tickets = 0

    def start(self, gen: Operation, finish: Finish) -> _Request:
        """Run a new request up to its first wait (or its end)."""
        request = _Request(gen, finish)
        self.requests.append(request)
        self._step(request)
        return request

    def _step(self, request: _Request) -> None:
        request.waiting = None
        try:
            waiting = request.gen.send(None)
        except StopIteration as stop:
            self._end(request, stop.value, None)
        except OSError as exc:
            self._end(request, None, exc)
        else:
            self._tickets += 1
            request.ticket = self._tickets
            request.waiting = waiting
            if isinstance(waiting, Hold):
                waiting.add_callback(lambda: self._released(request, waiting))

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

        Rescheduled requests first (oldest first), then host I/O completions
        (newest first); ``last``, a synchronous request, completes after the
        others, whose host I/O started before its own.
        """
        rescheduled = sorted(
            (r for r in self.requests if r.waiting == RESCHEDULE and r is not last),
            key=lambda r: r.ticket,
        )
        completed = sorted(
            (r for r in self.requests if r.waiting == HOST_IO and r is not last),
            key=lambda r: -r.ticket,
        )
        ready = rescheduled + completed
        if last is not None and isinstance(last.waiting, str):
            ready.append(last)
        for request in ready:
            if not request.done and isinstance(request.waiting, str):
                self._step(request)
        return bool(ready)

    def poll_until(self, done: Callable[[], bool], what: str, last: _Request | None = None) -> None:
        """Poll until ``done()``; Hang when nothing can progress any more."""
        while not done():
            if not self.poll(last):
                raise Hang(what)

    def held(self) -> list[Hold]:
        return [r.waiting for r in self.requests if isinstance(r.waiting, Hold)]

    def cancel(self) -> None:
        """Drop every request in flight (the script stopped)."""
        for request in list(self.requests):
            request.done = True
            request.gen.close()
        self.requests.clear()
