"""An engine's breakpoints: pending ones, suspended requests, observers.

QEMU's ``break``/``resume``/``remove_break``/``wait_break`` bookkeeping,
the part of the engine that makes requests wait: a breakpoint waits in its
event's plan until the event fires (``Engine.fire`` consumes it and
suspends the request on a ``Hold``, entered here most recent first, as
QEMU's list), and the methods below find, resume or abandon the held
requests. Observers hear every hit, suspension and resume; the disks
attached to the engine are counted so the last one to close resumes
whatever is still held.

``Breakpoints`` is a base class of ``Engine`` and shares its lock and its
event plans (the attributes declared below are set by ``Engine.__init__``);
it adds no state of its own and no method to the hot path.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from .active import EventPlan
from .errors import BreakpointError, BreakpointTimeout
from .events import IOTYPES, EventRegistry
from .hold import Hold
from .rules import Breakpoint

__all__ = ["Breakpoints", "Observer", "Suspension"]


class Suspension(NamedTuple):
    """A request held under ``tag`` (a hold has one entry per tag)."""

    tag: str
    hold: Hold


Observer = Callable[[str, object], None]
"""``observer(what, detail)``: what is "hit", "suspend" or "resume"."""


class Breakpoints:
    """Breakpoints, suspended requests, observers and attached disks of an ``Engine``."""

    # The engine's, set by ``Engine.__init__``.
    registry: EventRegistry
    _lock: threading.Lock
    _cond: threading.Condition
    _plans: dict[str, EventPlan]
    _trace: deque[tuple[Any, ...]]
    #: Suspended requests, most recent first (QEMU's list).
    _suspended: list[Suspension]
    _observers: tuple[Observer, ...]
    #: Disks attached (several may share one engine).
    _users: int
    #: The disks opened on it (a weak set: ``open_disks`` lists them).
    disks: weakref.WeakSet[Any]

    def _regate(self) -> None:
        """Recompute the fast path's gates (the engine's; see ``Engine._regate``)."""
        raise NotImplementedError

    # -- observers -----------------------------------------------------------

    def add_observer(self, observer: Observer) -> None:
        """Call ``observer(what, detail)`` on every hit, suspension and resume."""
        # A tuple replaced whole, so notifying threads never see it mid-change.
        self._observers = (*self._observers, observer)

    def remove_observer(self, observer: Observer) -> None:
        """Stop calling ``observer`` (unknown observers are ignored)."""
        self._observers = tuple(o for o in self._observers if o is not observer)

    def _notify(self, what: str, detail: object) -> None:
        for observer in self._observers:
            observer(what, detail)

    # -- breakpoints ---------------------------------------------------------

    def break_on(self, event: str, tag: str) -> None:
        """Add a one-shot breakpoint (unknown event: BreakpointError, as qemu-io)."""
        Breakpoint(event, tag)  # validates the tag
        if event not in self.registry:
            raise BreakpointError(
                f"Could not set breakpoint: No such file or directory (unknown event {event!r})"
            )
        with self._lock:
            self._plans.setdefault(event, EventPlan()).breakpoints.append(tag)
            self._regate()

    def resume(self, tag: str) -> None:
        """Resume the most recently suspended request with ``tag``."""
        with self._lock:
            for i, entry in enumerate(self._suspended):
                if entry.tag == tag:
                    del self._suspended[i]
                    break
            else:
                raise BreakpointError(
                    f"Could not resume request: No such file or directory (no request "
                    f"suspended under tag {tag!r})"
                )
        self._notify("resume", tag)
        entry.hold._advance()

    def remove_break(self, tag: str) -> None:
        """Drop every pending breakpoint with ``tag`` and resume every request
        suspended under it; error only if there was neither."""
        found = False
        with self._lock:
            for event, plan in list(self._plans.items()):
                if tag in plan.breakpoints:
                    plan.breakpoints[:] = [t for t in plan.breakpoints if t != tag]
                    found = True
                    if not plan:
                        del self._plans[event]
            self._regate()
            count = sum(1 for entry in self._suspended if entry.tag == tag)
        for _ in range(count):
            self.resume(tag)
        if not found and not count:
            raise BreakpointError(f"Could not remove breakpoint {tag}: No such file or directory")

    def is_suspended(self, tag: str) -> bool:
        """Whether a request is suspended under ``tag`` now. Without the lock
        (``wait_break`` calls it holding it), so it walks a copy: ``resume``
        deletes from the list in place, and a walk of the list itself could
        skip an entry that stays."""
        return any(entry.tag == tag for entry in list(self._suspended))

    @property
    def suspended(self) -> list[tuple[str, Hold]]:
        """(tag, hold) for every suspended request entry, most recent first."""
        with self._lock:
            return [(e.tag, e.hold) for e in self._suspended]

    @property
    def pending_breakpoints(self) -> list[tuple[str, str]]:
        """(event, tag) for every breakpoint not yet hit."""
        with self._lock:
            return [(event, tag) for event, plan in self._plans.items() for tag in plan.breakpoints]

    def wait_break(self, tag: str, timeout: float) -> None:
        """Block until a request is suspended under ``tag``; BreakpointTimeout
        (naming the tag, the recent events and requests, and whether the
        breakpoint is still pending) after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not self.is_suspended(tag):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            else:
                return
        raise BreakpointTimeout(self._wait_message(tag, timeout))

    def abandon(self, hold: Hold) -> None:
        """Forget a hold whose waiter gave up (timeout, cancellation)."""
        with self._lock:
            self._suspended = [e for e in self._suspended if e.hold is not hold]

    def release(self, holds: Iterable[Hold]) -> list[tuple[str, Hold]]:
        """Resume the given held requests (a closing disk's own), whatever
        their tags; returns the (tag, hold) entries it resumed."""
        wanted = set(holds)
        with self._lock:
            entries = [e for e in self._suspended if e.hold in wanted]
            self._suspended = [e for e in self._suspended if e.hold not in wanted]
        for entry in entries:
            self._notify("resume", entry.tag)
            entry.hold._advance()
        return [(e.tag, e.hold) for e in entries]

    def _wait_message(self, tag: str, timeout: float) -> str:
        """What a ``wait_break`` timeout says: the tag, whether its breakpoint is
        pending, what else is suspended, and the recent events and requests."""
        recent = [raw[1] if raw[0] == "event" else IOTYPES[raw[0]] for raw in list(self._trace)]
        pending = [f"{t} on {e}" for e, t in self.pending_breakpoints if t == tag]
        where = (
            f"pending breakpoint: {', '.join(pending)}"
            if pending
            else "no breakpoint with that tag is pending"
        )
        seen = ", ".join(recent[-20:]) if recent else "none"
        held = [f"{t!r} ({h.operation} at {h.event})" for t, h in self.suspended]
        others = f"; suspended now: {', '.join(held)}" if held else ""
        return (
            f"no request was suspended under tag {tag!r} within {timeout:g} s "
            f"({where}{others}; recent events and requests: {seen})"
        )

    # -- disks -----------------------------------------------------------------

    def attach(self, disk: object = None) -> None:
        """A disk starts using this engine."""
        with self._lock:
            self._users += 1
            if disk is not None:
                self.disks.add(disk)

    def open_disks(self) -> list[Any]:
        """The disks opened on this engine and not yet freed (some may be
        closed). Under the lock: a weak set walked while another thread
        opens a disk fails with "Set changed size during iteration"."""
        with self._lock:
            return list(self.disks)

    def detach(self) -> list[tuple[str, Hold]]:
        """A disk stops using this engine. When the last one goes, resume
        everything still suspended and drop the pending breakpoints."""
        with self._lock:
            self._users -= 1
            if self._users > 0:
                return []
            holds = [e.hold for e in self._suspended]
            for event, plan in list(self._plans.items()):
                plan.breakpoints.clear()
                if not plan:
                    del self._plans[event]
            self._regate()
        return self.release(holds)
