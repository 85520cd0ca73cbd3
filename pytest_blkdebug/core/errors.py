"""Every exception pytest-blkdebug raises, in one place.

Users catch these by class: ``InjectedError`` is an ``OSError`` so storage code
that handles I/O errors handles injected ones without knowing this project;
``RuleError`` and ``RuleFileError`` are ``ValueError`` subclasses so a bad rule
never surfaces as a bare ``KeyError`` or ``TypeError`` from inside the package.
"""

from __future__ import annotations

import os


class RuleError(ValueError):
    """A rule, event name or rule attribute is invalid."""


class RuleFileError(RuleError):
    """A rule file could not be read; ``path`` and ``line`` say where."""

    def __init__(self, path: str, line: int | None, message: str) -> None:
        self.path = str(path)
        self.line = line
        self.message = message
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")

    def __reduce__(self) -> tuple[object, ...]:
        # The default pickling passes only the formatted text back to
        # __init__, which needs three arguments; pytest-xdist and
        # multiprocessing send errors between processes.
        return (type(self), (self.path, self.line, self.message))


class InjectedError(OSError):
    """A request failed because a rule told it to.

    Carries the standard ``errno``/``strerror`` plus ``rule`` (the deciding
    rule's name) and the request: ``operation``, ``offset``, ``length``.
    """

    def __init__(self, err: int, rule: str, operation: str, offset: int, length: int) -> None:
        super().__init__(err, os.strerror(err))
        self.rule = rule
        self.operation = operation
        self.offset = offset
        self.length = length

    def __str__(self) -> str:
        return (
            f"[Errno {self.errno}] {self.strerror} (injected by rule {self.rule!r} "
            f"into {self.operation} of {self.length} bytes at offset {self.offset})"
        )

    def __reduce__(self) -> tuple[object, ...]:
        # OSError's default pickling drops our extra arguments; xdist and
        # multiprocessing users need the error to survive a round trip.
        return (type(self), (self.errno, self.rule, self.operation, self.offset, self.length))


class BreakpointError(LookupError):
    """A breakpoint operation named an unknown event or tag (qemu-io's ENOENT)."""


class BreakpointTimeout(TimeoutError):
    """A wait on a breakpoint ran out of time; the message names the tag."""
