"""A request suspended at breakpoints, and how its waiter learns it may go on.

Separate from the engine so drivers (the blocking and asyncio request
paths, the NBD server) can wait on a ``Hold`` without the engine's
internals; ``engine.py`` re-exports it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class Hold:
    """A request suspended at breakpoints; released after one resume per breakpoint.

    QEMU suspends a request once per breakpoint its event consumed, and any
    ``resume`` of one of those entries advances it, so a hold is a countdown.
    Waiters are a thread (``wait``) or an asyncio future (``add_callback``).
    """

    __slots__ = ("event", "tags", "operation", "_remaining", "_released", "_callbacks", "_lock")

    def __init__(self, event: str, tags: list[str], operation: str) -> None:
        self.event = event
        self.tags = tags
        self.operation = operation
        self._remaining = len(tags)
        self._released = threading.Event()
        self._callbacks: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    def _advance(self) -> None:
        with self._lock:
            self._remaining -= 1
            if self._remaining > 0:
                return
            callbacks, self._callbacks = self._callbacks, []
            self._released.set()
        for callback in callbacks:
            callback()

    @property
    def released(self) -> bool:
        return self._released.is_set()

    def wait(self, timeout: float) -> bool:
        """Block this thread until released; False on timeout."""
        return self._released.wait(timeout)

    def add_callback(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (from the resuming thread) once released."""
        with self._lock:
            if not self._released.is_set():
                self._callbacks.append(callback)
                return
        callback()

    def __repr__(self) -> str:
        return f"<Hold {self.operation} at {self.event} tags={self.tags}>"
