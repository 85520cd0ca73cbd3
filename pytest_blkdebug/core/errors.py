"""Every exception pytest-blkdebug raises, in one place.

Users catch these by class: ``InjectedError`` is an ``OSError`` so storage code
that handles I/O errors handles injected ones without knowing this project;
``RuleError`` and ``RuleFileError`` are ``ValueError`` subclasses so a bad rule
never surfaces as a bare ``KeyError`` or ``TypeError`` from inside the package.
"""

from __future__ import annotations

import os


def brief(value: object, limit: int = 80) -> str:
    """``repr(value)`` for an error message, cut after ``limit`` characters: a
    hostile file's 100,000-entry array or megabyte-long name must not become
    a megabyte of message."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


class RuleError(ValueError):
    """A rule, event name or rule attribute is invalid.

    ``kind`` (``"inject-error"``, ...) and ``attribute`` (``"sector"``) say
    what was wrong when it was one attribute, and ``reason`` is the message
    without the ``InjectError: `` prefix, so that callers (the TOML reader
    pointing at a line, the marker code naming a marker) never parse text.
    """

    def __init__(
        self,
        message: str,
        *,
        kind: str | None = None,
        attribute: str | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.attribute = attribute
        self.reason = message if reason is None else reason

    def __reduce__(self) -> tuple[object, ...]:
        # Keyword arguments are not in ``args``: keep them across pickling
        # (pytest-xdist and multiprocessing send errors between processes).
        return (
            _rebuild_rule_error,
            (type(self), str(self), self.kind, self.attribute, self.reason),
        )


def _rebuild_rule_error(
    cls: type[RuleError], message: str, kind: str | None, attribute: str | None, reason: str
) -> RuleError:
    return cls(message, kind=kind, attribute=attribute, reason=reason)


class RuleFileError(RuleError):
    """A rule file could not be read; ``path`` and ``line`` say where."""

    def __init__(
        self,
        path: str,
        line: int | None,
        message: str,
        *,
        attribute: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.path = str(path)
        self.line = line
        #: The error itself; for an ini file exactly QEMU's text.
        self.message = message
        #: A suggestion of ours ("did you mean ..."), or None. Not part of
        #: ``str()``, which stays QEMU's text for an ini file (blkdebug-io
        #: prints exactly what qemu-io prints); shown after it as an
        #: exception note in tracebacks and by the pytest plugin.
        self.hint = hint
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {message}", attribute=attribute, reason=message)
        if hint and hasattr(self, "add_note"):  # Python 3.11+
            self.add_note(f"hint: {hint}")

    def __reduce__(self) -> tuple[object, ...]:
        # The default pickling passes only the formatted text back to
        # __init__, which needs three arguments; pytest-xdist and
        # multiprocessing send errors between processes.
        return (
            _rebuild_file_error,
            (type(self), self.path, self.line, self.message, self.attribute, self.hint),
        )


def _rebuild_file_error(
    cls: type[RuleFileError],
    path: str,
    line: int | None,
    message: str,
    attribute: str | None,
    hint: str | None,
) -> RuleFileError:
    return cls(path, line, message, attribute=attribute, hint=hint)


def error_text(exc: BaseException) -> str:
    """``str(exc)`` plus its hint, if it has one (``RuleFileError.hint``):
    what a report shows, where a traceback's note would not be seen."""
    hint = getattr(exc, "hint", None)
    return f"{exc} (hint: {hint})" if hint else str(exc)


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
