"""The log of a recording: what was stored, flushed and promised, in completion order.

Plain data shared by the recorder (``crash.py``, which appends to it) and the
state builder (``crashstates.py``, ``crashplan.py``, which read it). Keeping
it in its own module lets the recorder use the builder without the two
importing each other.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import NamedTuple

DEFAULT_SECTOR_SIZE = 512

# Log items: a store is ``(unit, operation, offset, length, data)``; the
# others start with one of these tags.
_FLUSH, _MARK, _DIR = 1, 2, 3
#: The operations that change a file's contents or size.
CONTENT_OPERATIONS = ("write", "write_zeroes", "discard", "truncate")
#: The operations on a directory's entries.
DIRECTORY_OPERATIONS = ("create", "delete")


class Write(NamedTuple):
    """One logged request that decides what a crash leaves behind.

    ``number`` counts the recording's requests (stores, file operations and
    completed flushes) from 1 in completion order; ``operation`` is
    ``write``, ``write_zeroes``, ``discard``, ``truncate`` (``offset`` is
    the new size), ``create`` or ``delete`` (a directory entry of ``path``).
    """

    number: int
    operation: str
    path: str
    offset: int
    length: int

    def __str__(self) -> str:
        name = os.path.basename(self.path)
        if self.operation == "truncate":
            return f"#{self.number} truncate {name} to {self.offset}"
        if self.operation in DIRECTORY_OPERATIONS:
            return f"#{self.number} {self.operation} {name}"
        return f"#{self.number} {self.operation} {name} {self.offset}+{self.length}"


class Point(NamedTuple):
    """Where the power went: the request that was in progress (``flush``,
    ``dirsync``), or ``end`` for the end of the recording."""

    number: int
    operation: str
    path: str
    offset: int
    length: int

    def __str__(self) -> str:
        if self.operation == "end":
            return f"#{self.number} end of the recording"
        return f"#{self.number} {self.operation} of {os.path.basename(self.path)}"


@dataclass(eq=False)
class Unit:
    """What a flush makes durable: one file's contents (an inode: a path
    recreated after a delete is a new unit) or one directory's entries."""

    ident: int
    path: str
    directory: bool = False
    #: Snapshot of the file when the recording first saw it (None: new, empty).
    base: str | None = None
    base_size: int = 0
    sector_size: int = DEFAULT_SECTOR_SIZE
    atomic: int | None = None
    temporary: bool = False
    truncated: bool = False  # the log holds a truncate of this inode

    @property
    def tear_unit(self) -> int:
        """The granularity of a torn write: the atomic unit, else a sector."""
        return max(self.sector_size, self.atomic or 0)


@dataclass(eq=False)
class Entry:
    """A logged store or directory operation, resolved (see ``Recording.log``)."""

    n: int  # the recording's clock: completion order, shared with flushes and marks
    number: int  # the public request number
    unit: Unit
    operation: str
    offset: int
    length: int
    data: bytes | None
    path: str
    target: Unit | None = None  # the inode a ``create`` makes
    hash: int = 0  # crashplan's, once computed
    _write: Write | None = None

    @property
    def write(self) -> Write:
        if self._write is None:
            self._write = Write(self.number, self.operation, self.path, self.offset, self.length)
        return self._write


@dataclass
class Flush:
    """A completed flush (or directory sync): ``begin`` is the clock when it
    was issued, ``n`` when it completed."""

    n: int
    number: int
    unit: Unit
    begin: int
    ok: bool


@dataclass
class Mark:
    label: str
    n: int
    #: Clock of the first successful flush issued after the mark (None: none).
    durable_at: int | None = None


@dataclass
class Log:
    """The recording in completion order, ready for the state builder."""

    entries: list[Entry] = field(default_factory=list)
    flushes: list[Flush] = field(default_factory=list)
    marks: list[Mark] = field(default_factory=list)
    #: Every file path seen, with the unit that was there when recording began
    #: (None: the path did not exist then).
    paths: dict[str, Unit | None] = field(default_factory=dict)
    last_number: int = 0
