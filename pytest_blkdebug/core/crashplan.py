"""How a crash state becomes files: effective writes, state keys, images.

A state is the durable writes of its epoch plus a choice of volatile ones.
Its *plan* says, per file path, which inode the path names (a create or
delete counts only if kept) and, per inode, its size and its *effective*
writes: those not wholly overwritten by later kept writes. Two states with
the same plan leave the same files, so the state's *key* is a set-hash of
the plan: the sum (mod 2**128) of a hash per name, per size and per
effective write. Sums can be adjusted, so :class:`EpochBase` resolves the
durable part once per epoch and each state only pays for its own choice:
the key of a state whose chosen writes are plain writes, write-zeroes and
discards costs what those writes cost, not what the epoch holds.

An image is the inode's base snapshot (a sparse copy or a reflink, cheap
whatever the image size) plus the effective writes, then its size.
"""

from __future__ import annotations

import hashlib
import os
import random
from bisect import bisect_left, bisect_right
from collections.abc import Sequence

from .crashlog import Entry, Log, Unit
from .image import copy_sparse as _copy_sparse
from .image import punch_hole as _punch_hole

__all__ = ["EpochBase", "Kept", "Plan", "materialize", "update"]

INFINITY = 1 << 62
_MASK = (1 << 128) - 1

#: (entry, bytes of it written or None for all, the rest garbage)
Kept = tuple[Entry, int | None, bool]
#: path -> None (absent) or (inode, size, effective writes in completion order)
Plan = dict[str, tuple[Unit, int, list[Kept]] | None]
Torn = tuple[Entry, int, bool] | None

_CONTENT = frozenset({"write", "write_zeroes", "discard"})


def _h(*parts: object) -> int:
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=16).digest()
    return int.from_bytes(digest, "little")


def _hw(item: Kept) -> int:
    entry, cut, garbage = item
    if cut is None and entry.hash:
        return entry.hash
    value = _h("w", entry.n, entry.path, cut, garbage)
    if cut is None:
        entry.hash = value
    return value


class Cover:
    """Disjoint sorted intervals: the bytes later writes decide."""

    __slots__ = ("starts", "ends")

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []

    def covers(self, lo: int, hi: int) -> bool:
        i = bisect_right(self.starts, lo) - 1
        return i >= 0 and self.ends[i] >= hi

    def gaps(self, lo: int, hi: int) -> list[tuple[int, int]]:
        """The parts of ``[lo, hi)`` not covered."""
        result = []
        i = bisect_right(self.ends, lo)
        pos = lo
        while pos < hi and i < len(self.starts) and self.starts[i] < hi:
            if self.starts[i] > pos:
                result.append((pos, self.starts[i]))
            pos = max(pos, self.ends[i])
            i += 1
        if pos < hi:
            result.append((pos, hi))
        return result

    def add(self, lo: int, hi: int) -> None:
        if hi <= lo:
            return
        i = bisect_left(self.ends, lo)
        j = bisect_right(self.starts, hi)
        if i < j:
            lo = min(lo, self.starts[i])
            hi = max(hi, self.ends[j - 1])
        self.starts[i:j] = [lo]
        self.ends[i:j] = [hi]


def _span(item: Kept) -> tuple[int, int]:
    entry, cut, garbage = item
    lo = entry.offset
    return lo, lo + (entry.length if cut is None or garbage else cut)


def effective(writes: Sequence[Kept]) -> tuple[list[Kept], Cover]:
    """The writes not wholly overwritten by later ones (truncates always
    stay), in order, and the bytes they cover."""
    cover = Cover()
    result: list[Kept] = []
    for item in reversed(writes):
        if item[0].operation == "truncate":
            result.append(item)
            cover.add(item[0].offset, INFINITY)
            continue
        lo, hi = _span(item)
        if hi > lo and not cover.covers(lo, hi):
            result.append(item)
        cover.add(lo, hi)
    result.reverse()
    return result, cover


def _size(unit: Unit, writes: Sequence[Kept], size: int | None = None) -> int:
    size = unit.base_size if size is None else size
    for item in writes:
        entry = item[0]
        if entry.operation == "write":
            size = max(size, _span(item)[1])
        elif entry.operation == "truncate":
            size = entry.offset
    return size


def resolve(log: Log, kept: dict[int, list[Kept]]) -> tuple[Plan, int]:
    """The plan and key of a state from its kept writes per unit (any state)."""
    names: dict[str, Unit | None] = dict(log.paths)
    folders = sorted(
        (item[0] for items in kept.values() for item in items if item[0].unit.directory),
        key=lambda e: e.n,
    )
    for entry in folders:
        names[entry.path] = entry.target if entry.operation == "create" else None
    key = 0
    plan: Plan = {}
    for path in sorted(names):
        unit = names[path]
        key += _h("p", path, unit.ident if unit is not None else -1)
        if unit is None:
            plan[path] = None
            continue
        writes = kept.get(unit.ident, [])
        size = _size(unit, writes)
        eff, _ = effective(writes)
        plan[path] = (unit, size, eff)
        key += _h("s", unit.ident, size) + sum(_hw(item) for item in eff)
    return plan, key & _MASK


class EpochBase:
    """What every state of an epoch shares: its durable writes, resolved once.

    Per reachable inode: the size, the effective durable writes, and their
    visible fragments (disjoint, sorted), so a state's own writes find the
    durable writes they hide with a bisection.
    """

    def __init__(self, log: Log, durable: dict[int, int], end: int) -> None:
        self.log = log
        self.kept: dict[int, list[Kept]] = {}
        for entry in log.entries:
            if entry.n >= end:
                break
            if entry.n < durable.get(entry.unit.ident, 0):
                self.kept.setdefault(entry.unit.ident, []).append((entry, None, False))
        self.plan, self.key = resolve(log, self.kept)
        self.units: dict[int, Unit] = {}
        self.sizes: dict[int, int] = {}
        self.effective: dict[int, list[Kept]] = {}
        self.fragments: dict[int, tuple[list[int], list[int], list[int]]] = {}
        self.pieces: dict[int, int] = {}  # id(entry) -> visible fragments
        for content in self.plan.values():
            if content is None:
                continue
            unit, size, eff = content
            self.units[unit.ident] = unit
            self.sizes[unit.ident] = size
            self.effective[unit.ident] = eff
            self.fragments[unit.ident] = self._fragments(eff)

    def _fragments(self, eff: list[Kept]) -> tuple[list[int], list[int], list[int]]:
        cover = Cover()
        pieces: list[tuple[int, int, int]] = []
        for item in reversed(eff):
            if item[0].operation == "truncate":
                cover.add(item[0].offset, INFINITY)
                continue
            lo, hi = _span(item)
            gaps = cover.gaps(lo, hi)
            self.pieces[id(item[0])] = len(gaps)
            pieces.extend((a, b, id(item[0])) for a, b in gaps)
            cover.add(lo, hi)
        pieces.sort()
        return [p[0] for p in pieces], [p[1] for p in pieces], [p[2] for p in pieces]

    def state(self, chosen: Sequence[Entry], torn: Torn) -> tuple[Plan, int] | None:
        """Plan and key of durable + ``chosen`` (+ ``torn``), or None when the
        choice holds a file operation (then :func:`resolve` decides)."""
        mine: dict[int, list[Kept]] = {}
        for entry in chosen:
            if entry.operation not in _CONTENT or entry.unit.directory:
                return None
            mine.setdefault(entry.unit.ident, []).append((entry, None, False))
        if torn is not None:
            if torn[0].operation not in _CONTENT:
                return None
            mine.setdefault(torn[0].unit.ident, []).append(torn)
        key = self.key
        changed: dict[int, tuple[int, list[Kept]]] = {}
        for ident, writes in mine.items():
            unit = self.units.get(ident)
            if unit is None:  # the inode no path names: its writes change nothing
                continue
            writes.sort(key=lambda item: item[0].n)
            eff, cover = effective(writes)
            hidden = self._hidden(ident, cover)
            size = _size(unit, writes, self.sizes[ident])
            key += sum(_hw(item) for item in eff) - sum(
                _hw(item) for item in self.effective[ident] if id(item[0]) in hidden
            )
            key += _h("s", ident, size) - _h("s", ident, self.sizes[ident])
            kept = [item for item in self.effective[ident] if id(item[0]) not in hidden]
            merged = sorted([*kept, *eff], key=lambda item: item[0].n)
            changed[ident] = (size, merged)
        plan: Plan = dict(self.plan)
        for path, content in plan.items():
            if content is not None and content[0].ident in changed:
                size, merged = changed[content[0].ident]
                plan[path] = (content[0], size, merged)
        return plan, key & _MASK

    def _hidden(self, ident: int, cover: Cover) -> set[int]:
        """The durable writes whose every visible fragment ``cover`` covers."""
        starts, ends, owners = self.fragments[ident]
        counted: dict[int, int] = {}
        for a, b in zip(cover.starts, cover.ends, strict=True):
            i = bisect_right(ends, a)
            while i < len(starts) and starts[i] < b:
                if starts[i] >= a and ends[i] <= b:
                    counted[owners[i]] = counted.get(owners[i], 0) + 1
                i += 1
        return {owner for owner, n in counted.items() if n == self.pieces[owner]}


def state_plan(base: EpochBase, chosen: Sequence[Entry], torn: Torn) -> tuple[Plan, int]:
    """The plan and key of a state: the epoch's shortcut when it applies."""
    quick = base.state(chosen, torn)
    if quick is not None:
        return quick
    return full_plan(base, chosen, torn)


def full_plan(base: EpochBase, chosen: Sequence[Entry], torn: Torn) -> tuple[Plan, int]:
    """The plan and key resolved from every kept write (no shortcut)."""
    kept = {ident: list(items) for ident, items in base.kept.items()}
    for entry in chosen:
        kept.setdefault(entry.unit.ident, []).append((entry, None, False))
    if torn is not None:
        kept.setdefault(torn[0].unit.ident, []).append(torn)
    for items in kept.values():
        items.sort(key=lambda item: item[0].n)
    return resolve(base.log, kept)


def materialize(content: tuple[Unit, int, list[Kept]], target: str, seed: int) -> None:
    """Write one file's crash image: its base snapshot (a sparse copy or a
    reflink), then the state's effective writes, then its size."""
    unit, size, writes = content
    if unit.base is not None:
        _copy_sparse(unit.base, target)
    else:
        with open(target, "wb"):
            pass
    fd = os.open(target, os.O_RDWR)
    try:
        for entry, cut, garbage in writes:
            op = entry.operation
            if op == "truncate":
                os.ftruncate(fd, entry.offset)
                continue
            written = entry.length if cut is None else cut
            if op == "write":
                assert entry.data is not None
                if written:
                    os.pwrite(fd, entry.data if cut is None else entry.data[:written], entry.offset)
            else:
                end = min(entry.offset + written, os.fstat(fd).st_size)
                if end > entry.offset:
                    _punch_hole(fd, entry.offset, end - entry.offset)
            if garbage and cut is not None and cut < entry.length:
                os.pwrite(fd, _garbage(entry, cut, seed), entry.offset + cut)
        os.ftruncate(fd, size)
    finally:
        os.close(fd)


def _garbage(entry: Entry, cut: int, seed: int) -> bytes:
    return random.Random(f"{seed}/garbage/{entry.number}/{cut}").randbytes(entry.length - cut)


def update(
    target: str,
    old: tuple[Unit, int, list[Kept]],
    new: tuple[Unit, int, list[Kept]],
    seed: int,
) -> bool:
    """Turn ``target``, which holds image ``old``, into image ``new`` of the
    same inode by rewriting only the bytes the two disagree on: base data
    again, then the new state's writes there. False (nothing done) when a
    truncate is involved: build it afresh then."""
    unit, _, old_writes = old
    _, size, new_writes = new
    if unit.truncated:
        return False
    # Kept items compare by entry identity, cut and garbage: sets of them
    # tell what the two states disagree on.
    old_set, new_set = set(old_writes), set(new_writes)
    changed = Cover()
    for item in old_set - new_set:
        changed.add(*_span(item))
    for item in new_set - old_set:
        changed.add(*_span(item))
    if not changed.starts:
        os.truncate(target, size)
        return True
    fd = os.open(target, os.O_RDWR)
    base = os.open(unit.base, os.O_RDONLY) if unit.base is not None else -1
    try:
        current = os.fstat(fd).st_size
        for a, b in zip(changed.starts, changed.ends, strict=True):
            middle = min(b, unit.base_size) if base >= 0 else a
            if middle > a:  # the base's bytes again
                os.pwrite(fd, os.pread(base, middle - a, a), a)
            hi = min(b, current)
            if hi > max(a, middle):  # past the base: zeroes
                _punch_hole(fd, max(a, middle), hi - max(a, middle))
        starts, ends = changed.starts, changed.ends
        for item in new_writes:
            lo, hi = _span(item)
            i = bisect_right(ends, lo)
            while i < len(starts) and starts[i] < hi:
                _apply_part(fd, item, max(lo, starts[i]), min(hi, ends[i]), seed)
                i += 1
        os.ftruncate(fd, size)
    finally:
        os.close(fd)
        if base >= 0:
            os.close(base)
    return True


def _apply_part(fd: int, item: Kept, start: int, end: int, seed: int) -> None:
    """Apply the bytes ``[start, end)`` of one kept write."""
    entry, cut, garbage = item
    if entry.operation != "write":
        hi = min(end, os.fstat(fd).st_size)
        if hi > start:
            _punch_hole(fd, start, hi - start)
        return
    assert entry.data is not None
    written = entry.length if cut is None else cut
    split = entry.offset + written
    if start < split:
        stop = min(end, split)
        os.pwrite(fd, entry.data[start - entry.offset : stop - entry.offset], start)
    if garbage and cut is not None and end > split:
        tail = _garbage(entry, cut, seed)
        begin = max(start, split)
        os.pwrite(fd, tail[begin - split : end - split], begin)
