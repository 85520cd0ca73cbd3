"""Crash states of a recording: which writes survive, and the images they make.

The log is cut into *flush epochs*: an epoch ends when a flush (or a
directory sync) completes that makes some write durable. A crash during an
epoch leaves every write durable at its start plus any subset of the writes
that are volatile at its end, applied in completion order (a write that
completed earlier in the epoch is volatile at its end too, so earlier crash
points add nothing new). For each epoch :func:`build` lists:

* ``none`` (every volatile write lost) and ``all`` (every one kept);
* ``p<k>``: the first ``k`` volatile writes in completion order;
* ``s<mask>``: every other subset while the epoch has at most
  ``subset_limit`` (8) volatile writes, else ``r<i>``: ``max_states``
  seeded random subsets;
* with ``torn=True``, ``t<n>.<b>``: the volatile writes before request
  ``n`` kept and request ``n`` cut after ``b`` bytes, at each boundary of a
  tear unit (a sector, or the atomic unit) inside it; with ``garbage=True``,
  ``g<n>.<b>``: the same with the cut-off part holding seeded random bytes
  (``g<n>.0``: the whole write is garbage).

Ids are ``e<epoch>-<choice>``: the same recording and arguments give the same
ids. States with the same *effective* write set (the writes that still
decide a byte or a size of a reachable file) leave the same images and are
listed once. An image is built only when asked (``Crash.open``,
``Crash.restore``), as the base snapshot plus that state's effective
writes, so it costs what was written, not the image's size.
"""

from __future__ import annotations

import hashlib
import os
import random
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .crash import Entry, Flush, Log, Point, Recording, Unit, Write
from .disk import Disk
from .engine import Engine
from .image import copy_sparse as _copy_sparse
from .image import punch_hole as _punch_hole

__all__ = ["Crash", "CrashList", "build"]

_INFINITY = 1 << 62


@dataclass(eq=False)
class Epoch:
    index: int
    point: Point
    end: int  # clock of the point: what completed before it counts
    durable: dict[int, int]  # unit ident -> clock below which its entries are durable
    volatile: list[Entry]
    durable_count: int = 0


#: (entry, bytes of it that reached the disk or None for all, garbage after the cut)
Kept = tuple[Entry, "int | None", bool]


class Crash:
    """One state a power loss could leave (see the module docstring).

    ``kept`` and ``lost`` are the epoch's volatile writes that survived and
    that did not (``torn``: the one cut, with ``cut`` bytes of it written);
    ``durable`` counts the writes every state of the epoch keeps.
    """

    def __init__(
        self,
        recording: Recording,
        log: Log,
        epoch: Epoch,
        choice: str,
        chosen: Sequence[Entry],
        torn: tuple[Entry, int, bool] | None,
        seed: int = 0,
    ) -> None:
        self.recording = recording
        self.seed = seed
        self._log = log
        self._epoch = epoch
        self.id = f"e{epoch.index}-{choice}"
        self.epoch = epoch.index
        self.point = epoch.point
        self._chosen = tuple(chosen)
        self._torn = torn
        picked = {id(e) for e in chosen}
        self.kept: tuple[Write, ...] = tuple(e.write for e in chosen)
        self.lost: tuple[Write, ...] = tuple(
            e.write for e in epoch.volatile if id(e) not in picked and e is not _entry(torn)
        )
        self.torn: Write | None = torn[0].write if torn is not None else None
        self.cut = torn[1] if torn is not None else None
        self.garbage = torn[2] if torn is not None else False
        self.durable = epoch.durable_count
        self.marks: tuple[str, ...] = tuple(m.label for m in log.marks if m.n < epoch.end)
        #: The ids of states that leave the same images (listed once, here).
        self.same_as: list[str] = []
        self.durable_marks: tuple[str, ...] = tuple(
            m.label
            for m in log.marks
            if m.n < epoch.end and m.durable_at is not None and m.durable_at < epoch.end
        )

    def _merge(self, other: Crash) -> None:
        """``other`` leaves the same images at another point: keep its id and
        the marks it knows, so an oracle checks the strictest promises."""
        self.same_as.append(other.id)
        self.marks = _union(self.marks, other.marks)
        self.durable_marks = _union(self.durable_marks, other.durable_marks)

    # -- what the state holds ----------------------------------------------------

    def plan(self) -> dict[str, tuple[Unit, int, list[Kept]] | None]:
        """Per file path: None (absent), or its inode, size and the effective
        writes to apply to the inode's base, in completion order."""
        return _plan(self._log, self._epoch, self._chosen, self._torn)[0]

    def key(self) -> bytes:
        """A digest of the effective write set (equal keys, equal images)."""
        return _plan(self._log, self._epoch, self._chosen, self._torn)[1]

    # -- images ------------------------------------------------------------------

    def restore(self, directory: str | os.PathLike[str], *, temporary: bool = False) -> list[str]:
        """Write every recorded file's crash image into ``directory`` under its
        own file name (files absent in this state are removed from there);
        returns the paths written. Temporary files only with ``temporary``."""
        folder = os.fspath(directory)
        os.makedirs(folder, exist_ok=True)
        plan = self.plan()
        names: dict[str, str] = {}
        written = []
        for path, content in plan.items():
            if content is not None and content[0].temporary and not temporary:
                continue
            name = os.path.basename(path)
            if names.setdefault(name, path) != path:
                raise ValueError(
                    f"cannot restore {path} and {names[name]} into one directory: same name"
                )
            target = os.path.join(folder, name)
            if content is None:
                if os.path.lexists(target):
                    os.unlink(target)
                continue
            _materialize(content, target, self.seed)
            written.append(target)
        return written

    def open(self, disk: Disk | str | os.PathLike[str] | None = None, **kwargs: Any) -> CrashDisk:
        """A fresh ``Disk`` (own engine; ``kwargs`` go to ``Disk``) on a copy
        of ``disk``'s crash image; ``disk`` may be omitted when the recording
        saw one file. Closing it deletes the copy."""
        plan = self.plan()
        path = self._pick(plan, disk)
        content = plan[path]
        if content is None:
            raise FileNotFoundError(f"{path} does not exist in crash state {self.id}")
        # One directory for all copies: a file is cheap to create and remove,
        # a directory costs milliseconds on some file systems.
        folder = os.path.join(self.recording.workdir, "crashes")
        os.makedirs(folder, exist_ok=True)
        name = f"{next(self.recording.crash_count)}-{self.id}-{os.path.basename(path)}"
        target = os.path.join(folder, name)
        _materialize(content, target, self.seed)
        if "engine" not in kwargs:
            kwargs["engine"] = Engine()
        return CrashDisk(target, **kwargs)

    def read(self, disk: Disk | str | os.PathLike[str] | None = None) -> bytes | None:
        """The whole crash image of ``disk`` as bytes (None: the file is absent).
        For small images and tests."""
        with self.open_or_none(disk) as image:
            if image is None:
                return None
            return image.read(0, image.size)

    def open_or_none(self, disk: Disk | str | os.PathLike[str] | None = None) -> _Maybe:
        try:
            return _Maybe(self.open(disk))
        except FileNotFoundError:
            return _Maybe(None)

    def _pick(
        self,
        plan: dict[str, tuple[Unit, int, list[Kept]] | None],
        disk: Disk | str | os.PathLike[str] | None,
    ) -> str:
        if disk is None:
            paths = self.recording.paths
            if len(paths) != 1:
                raise ValueError(
                    f"the recording saw {len(paths)} files ({', '.join(paths) or 'none'}): "
                    "say which one to open"
                )
            return paths[0]
        path = os.path.abspath(
            os.fspath(disk) if isinstance(disk, (str, os.PathLike)) else disk.path
        )
        if path not in plan:
            raise ValueError(f"the recording never saw {path} (files: {', '.join(plan)})")
        return path

    # -- reporting ---------------------------------------------------------------

    def describe(self, limit: int = 12) -> str:
        """The report of this state: id, point, kept and lost writes, marks."""
        lines = [f"crash state {self.id}: power lost at {self.point}"]
        lines.append(
            f"  durable: {self.durable} writes (kept by every state of epoch {self.epoch})"
        )
        lines.append(f"  kept ({len(self.kept)}): {_listing(self.kept, limit)}")
        if self.torn is not None:
            how = "then garbage" if self.garbage else "the rest as before"
            lines.append(f"  torn: {self.torn} cut after {self.cut} bytes, {how}")
        lines.append(f"  lost ({len(self.lost)}): {_listing(self.lost, limit)}")
        lines.append(f"  marks (issued before the point): {', '.join(self.marks) or 'none'}")
        lines.append(f"  durable marks: {', '.join(self.durable_marks) or 'none'}")
        if self.same_as:
            lines.append(f"  same images as: {_listing_ids(self.same_as, limit)}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<Crash {self.id} at {self.point}: kept {len(self.kept)}, lost {len(self.lost)}>"


class _Maybe:
    def __init__(self, disk: CrashDisk | None) -> None:
        self.disk = disk

    def __enter__(self) -> CrashDisk | None:
        return self.disk

    def __exit__(self, *exc: object) -> None:
        if self.disk is not None:
            self.disk.close()


class CrashDisk(Disk):
    """A Disk on a crash image copy; closing it removes the copy (``keep=True`` keeps it)."""

    def __init__(self, path: str, *, keep: bool = False, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self._keep = keep

    def close(self) -> list[tuple[str, Any]]:
        released = super().close()
        if not self._keep:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        return released


class CrashList(list[Crash]):
    """The distinct crash states, in order; ``states`` counts them before
    deduplication, ``epochs`` the flush epochs."""

    states: int = 0
    epochs: int = 0

    def by_id(self, ident: str) -> Crash:
        for crash in self:
            if crash.id == ident:
                return crash
        raise KeyError(f"no crash state {ident!r} (ids: {', '.join(c.id for c in self[:20])} ...)")


def _union(a: tuple[str, ...], b: tuple[str, ...]) -> tuple[str, ...]:
    return a + tuple(label for label in b if label not in a)


def _entry(torn: tuple[Entry, int, bool] | None) -> Entry | None:
    return torn[0] if torn is not None else None


def _is_durable(entry: Entry, epoch: Epoch) -> bool:
    return entry.n < epoch.durable.get(entry.unit.ident, 0)


def _listing_ids(ids: Sequence[str], limit: int) -> str:
    return ", ".join(ids[:limit]) + (f", ... ({len(ids) - limit} more)" if len(ids) > limit else "")


def _listing(writes: Sequence[Write], limit: int) -> str:
    if not writes:
        return "none"
    shown = ", ".join(str(w) for w in writes[:limit])
    return shown + (f", ... ({len(writes) - limit} more)" if len(writes) > limit else "")


# -- epochs and states ------------------------------------------------------------


def epochs(log: Log) -> list[Epoch]:
    """Cut the log at every completed flush that makes something durable."""
    durable: dict[int, int] = {}
    pending: list[Entry] = []
    result: list[Epoch] = []
    durable_count = 0
    events: list[Entry | Flush] = sorted([*log.entries, *log.flushes], key=lambda x: x.n)
    for item in events:
        if isinstance(item, Entry):
            pending.append(item)
            continue
        if not item.ok:
            continue
        ident = item.unit.ident
        if not any(e.unit.ident == ident and e.n < item.begin for e in pending):
            continue
        operation = "dirsync" if item.unit.directory else "flush"
        point = Point(item.number, operation, item.unit.path, 0, 0)
        result.append(
            Epoch(len(result), point, item.n, dict(durable), list(pending), durable_count)
        )
        durable_count += sum(1 for e in pending if e.unit.ident == ident and e.n < item.begin)
        durable[ident] = max(durable.get(ident, 0), item.begin)
        pending = [e for e in pending if not (e.unit.ident == ident and e.n < item.begin)]
    point = Point(log.last_number + 1, "end", "", 0, 0)
    result.append(Epoch(len(result), point, _INFINITY, dict(durable), pending, durable_count))
    return result


def build(
    recording: Recording,
    *,
    torn: bool = False,
    garbage: bool = False,
    max_states: int = 64,
    seed: int = 0,
    subset_limit: int = 8,
) -> CrashList:
    """Every distinct crash state of ``recording`` (see the module docstring)."""
    if max_states < 0 or subset_limit < 0:
        raise ValueError("max_states and subset_limit must not be negative")
    log = recording.log()
    result = CrashList()
    seen: dict[bytes, Crash] = {}
    total = 0
    all_epochs = epochs(log)
    for epoch in all_epochs:
        for choice, chosen, cut in _choices(epoch, torn, garbage, max_states, seed, subset_limit):
            total += 1
            crash = Crash(recording, log, epoch, choice, chosen, cut, seed)
            key = crash.key()
            first = seen.get(key)
            if first is not None:
                first._merge(crash)
                continue
            seen[key] = crash
            result.append(crash)
    result.states = total
    result.epochs = len(all_epochs)
    return result


def _choices(
    epoch: Epoch, torn: bool, garbage: bool, max_states: int, seed: int, subset_limit: int
) -> Iterable[tuple[str, list[Entry], tuple[Entry, int, bool] | None]]:
    volatile = epoch.volatile
    m = len(volatile)
    yield "none", [], None
    if m == 0:
        return
    yield "all", list(volatile), None
    for k in range(1, m):
        yield f"p{k}", volatile[:k], None
    if m <= subset_limit:
        for mask in range(1, (1 << m) - 1):
            if mask & (mask + 1) == 0:  # 0b0..01..1: a prefix, listed already
                continue
            yield f"s{mask:x}", [e for i, e in enumerate(volatile) if mask >> i & 1], None
    else:
        rng = random.Random(f"{seed}/epoch/{epoch.index}")
        for i in range(max_states):
            yield f"r{i}", [e for e in volatile if rng.random() < 0.5], None
    if not (torn or garbage):
        return
    for i, entry in enumerate(volatile):
        if entry.operation not in ("write", "write_zeroes", "discard"):
            continue
        cuts = _cuts(entry)
        if len(cuts) > max_states:
            cuts = sorted(random.Random(f"{seed}/cut/{entry.number}").sample(cuts, max_states))
        if torn:
            for cut in cuts:
                yield f"t{entry.number}.{cut}", volatile[:i], (entry, cut, False)
        if garbage and entry.operation == "write":
            for cut in [0, *cuts]:
                yield f"g{entry.number}.{cut}", volatile[:i], (entry, cut, True)


def _cuts(entry: Entry) -> list[int]:
    """Byte counts at which a write can be cut: tear-unit boundaries inside it."""
    unit = entry.unit.tear_unit
    start, end = entry.offset, entry.offset + entry.length
    first = (start // unit + 1) * unit
    return [b - start for b in range(first, end, unit)]


# -- effective writes and plans -----------------------------------------------------


class _Cover:
    """Disjoint sorted intervals: which bytes later writes decide."""

    __slots__ = ("starts", "ends")

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []

    def covers(self, lo: int, hi: int) -> bool:
        i = bisect_right(self.starts, lo) - 1
        return i >= 0 and self.ends[i] >= hi

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


def _plan(
    log: Log, epoch: Epoch, chosen: Sequence[Entry], torn: tuple[Entry, int, bool] | None
) -> tuple[dict[str, tuple[Unit, int, list[Kept]] | None], bytes]:
    """Resolve a state: which inode each path names, and per reachable inode
    its size and the writes that still decide a byte; plus the state's key."""
    extra = {id(e) for e in chosen}
    kept: dict[int, list[Kept]] = {}
    for entry in log.entries:
        if entry.n >= epoch.end:
            break
        if _is_durable(entry, epoch) or id(entry) in extra:
            kept.setdefault(entry.unit.ident, []).append((entry, None, False))
        elif torn is not None and entry is torn[0]:
            kept.setdefault(entry.unit.ident, []).append((entry, torn[1], torn[2]))
    # which inode each path names: the last kept create/delete, else the
    # one there when recording began
    names: dict[str, Unit | None] = dict(log.paths)
    dir_entries = sorted(
        (e for lst in kept.values() for e, _, _ in lst if e.unit.directory), key=lambda e: e.n
    )
    for entry in dir_entries:
        names[entry.path] = entry.target if entry.operation == "create" else None
    digest = hashlib.blake2b(digest_size=20)
    plan: dict[str, tuple[Unit, int, list[Kept]] | None] = {}
    for path in sorted(names):
        unit = names[path]
        if unit is None:
            plan[path] = None
            digest.update(f"{path}\0-\0".encode())
            continue
        writes = kept.get(unit.ident, [])
        size = unit.base_size
        for entry, cut, garbage in writes:
            if entry.operation == "write":
                size = max(size, entry.offset + (entry.length if cut is None or garbage else cut))
            elif entry.operation == "truncate":
                size = entry.offset
        effective = _effective(writes)
        plan[path] = (unit, size, effective)
        digest.update(f"{path}\0{unit.ident}\0{size}\0".encode())
        for entry, cut, garbage in effective:
            digest.update(f"{entry.n},{cut},{int(garbage)};".encode())
    return plan, digest.digest()


def _effective(writes: list[Kept]) -> list[Kept]:
    """The writes not wholly overwritten by later ones (truncates always stay)."""
    cover = _Cover()
    result: list[Kept] = []
    for item in reversed(writes):
        entry, cut, garbage = item
        if entry.operation == "truncate":
            result.append(item)
            cover.add(entry.offset, _INFINITY)
            continue
        lo = entry.offset
        hi = lo + (entry.length if cut is None or garbage else cut)
        if hi > lo and not cover.covers(lo, hi):
            result.append(item)
        cover.add(lo, hi)
    result.reverse()
    return result


def _materialize(content: tuple[Unit, int, list[Kept]], target: str, seed: int) -> None:
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
                    os.pwrite(
                        fd, entry.data[:written] if cut is not None else entry.data, entry.offset
                    )
            else:
                current = os.fstat(fd).st_size
                end = min(entry.offset + written, current)
                if end > entry.offset:
                    _punch_hole(fd, entry.offset, end - entry.offset)
            if garbage and cut is not None and cut < entry.length:
                rng = random.Random(f"{seed}/garbage/{entry.number}/{cut}")
                os.pwrite(fd, rng.randbytes(entry.length - cut), entry.offset + cut)
        os.ftruncate(fd, size)
    finally:
        os.close(fd)
