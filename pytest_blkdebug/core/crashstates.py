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

import os
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .crashlog import Entry, Flush, Log, Point, Unit, Write
from .crashplan import INFINITY, EpochBase, Kept, Plan, materialize, state_plan, update

if TYPE_CHECKING:
    from .crash import Recording
    from .disk import Disk

__all__ = ["Crash", "CrashList", "build"]


@dataclass(eq=False)
class Epoch:
    index: int
    point: Point
    end: int  # clock of the point: what completed before it counts
    durable: dict[int, int]  # unit ident -> clock below which its entries are durable
    volatile: list[Entry]
    durable_count: int = 0
    marks: tuple[str, ...] = ()
    durable_marks: tuple[str, ...] = ()
    _base: EpochBase | None = None

    def base(self, log: Log) -> EpochBase:
        if self._base is None:
            self._base = EpochBase(log, self.durable, self.end)
        return self._base


Content = tuple[Unit, int, list[Kept]]


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
        self._base = epoch.base(log)
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
        self.marks = epoch.marks
        self.durable_marks = epoch.durable_marks
        #: The ids of states that leave the same images (listed once, here).
        self.same_as: list[str] = []
        self._key: int | None = None

    def _merge(self, other: Crash) -> None:
        """``other`` leaves the same images at another point: keep its id and
        the marks it knows, so an oracle checks the strictest promises."""
        self.same_as.append(other.id)
        self.marks = _union(self.marks, other.marks)
        self.durable_marks = _union(self.durable_marks, other.durable_marks)

    # -- what the state holds ----------------------------------------------------

    def plan(self) -> Plan:
        """Per file path: None (absent), or its inode, size and the effective
        writes to apply to the inode's base, in completion order."""
        return state_plan(self._base, self._chosen, self._torn)[0]

    def key(self) -> int:
        """A set-hash of the effective write set (equal keys, equal images)."""
        if self._key is None:
            self._key = state_plan(self._base, self._chosen, self._torn)[1]
        return self._key

    # -- images ------------------------------------------------------------------

    def restore(
        self,
        directory: str | os.PathLike[str],
        *,
        temporary: bool = False,
        root: str | os.PathLike[str] | None = None,
    ) -> list[str]:
        """Write every recorded file's crash image into ``directory`` under its
        own file name (files absent in this state are removed from there);
        returns the paths written. Temporary files only with ``temporary``.
        With ``root``, a file under that directory keeps its place relative
        to it (``root/data/x.db`` goes to ``directory/data/x.db``)."""
        folder = os.fspath(directory)
        os.makedirs(folder, exist_ok=True)
        top = os.path.abspath(root) if root is not None else None
        plan = self.plan()
        names: dict[str, str] = {}
        written = []
        for path, content in plan.items():
            if content is not None and content[0].temporary and not temporary:
                continue
            name = os.path.basename(path)
            if top is not None and os.path.dirname(path).startswith(top + os.sep):
                name = os.path.relpath(path, top)
            if names.setdefault(name, path) != path:
                raise ValueError(
                    f"cannot restore {path} and {names[name]} into one directory: same name"
                )
            target = os.path.join(folder, name)
            if os.sep in name:
                os.makedirs(os.path.dirname(target), exist_ok=True)
            # A new file in every case: writing into what is there would
            # write through a symlink or a hard link (to the live image, say).
            if os.path.lexists(target):
                os.unlink(target)
            if content is None:
                continue
            materialize(content, target, self.seed)
            written.append(target)
        return written

    def open(
        self,
        disk: Disk | str | os.PathLike[str] | None = None,
        *,
        keep: bool = False,
        **kwargs: Any,
    ) -> Disk:
        """A fresh ``Disk`` (own engine; ``kwargs`` go to ``Disk``) on a copy
        of ``disk``'s crash image; ``disk`` may be omitted when the recording
        saw one file. Closing it deletes the copy (``keep=True`` keeps it); an
        unmodified copy is recycled into the next state's image of the same
        file by rewriting only what differs."""
        plan = self.plan()
        path = self._pick(plan, disk)
        content = plan[path]
        if content is None:
            raise FileNotFoundError(f"{path} does not exist in crash state {self.id}")
        pool = self.recording.pool
        pooled = pool.pop(content[0].ident, None) if "engine" not in kwargs else None
        # A copy made with another seed holds other garbage bytes: not reusable.
        reusable = pooled is not None and pooled[2] == self.seed
        if reusable and pooled is not None and update(pooled[0], pooled[1], content, self.seed):
            target = pooled[0]
        else:
            if pooled is not None:
                os.unlink(pooled[0])
            # One directory for all copies: a file is cheap to create and
            # remove, a directory costs milliseconds on some file systems.
            folder = os.path.join(self.recording.workdir, "crashes")
            os.makedirs(folder, exist_ok=True)
            name = f"{next(self.recording.crash_count)}-{os.path.basename(path)}"
            target = os.path.join(folder, name)
            materialize(content, target, self.seed)
        disk_type = self.recording.disk_type
        if disk_type is None:  # pragma: no cover - a path in the plan was stored by a disk
            raise RuntimeError("the recording saw no disk to open its crash images with")
        if "engine" in kwargs:
            return disk_type(target, on_close=_CrashCopy(target, keep, None, None), **kwargs)
        # A fresh engine (the disk's own: the recorded engine may be one that
        # only works where it was made, a sweep point's), knowing the recorded
        # one's custom events so that the same code runs on the copy; its
        # only recorder the tracker that tells whether the copy can be
        # reused unchanged; the
        # stamp tells whether anything wrote the file behind the engine
        # (through ``fileno()``, or its path): any write moves its mtime.
        os.utime(target, ns=(_STAMP, _STAMP))
        tracker = _Modified()
        events = (*self.recording.engine.registry.custom, *kwargs.pop("events", ()))
        crash_disk = disk_type(
            target,
            events=events,
            on_close=_CrashCopy(target, keep, (pool, content, self.seed), tracker),
            **kwargs,
        )
        crash_disk.engine.recorders = (tracker,)
        return crash_disk

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
        plan: Plan,
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
        where = "the point" if not self.same_as else "the point or a same-image state's point"
        lines.append(f"  marks (issued before {where}): {', '.join(self.marks) or 'none'}")
        lines.append(
            f"  durable marks (flushed before {where}): {', '.join(self.durable_marks) or 'none'}"
        )
        if self.same_as:
            lines.append(f"  same images as: {_listing_ids(self.same_as, limit)}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<Crash {self.id} at {self.point}: kept {len(self.kept)}, lost {len(self.lost)}>"


class _Maybe:
    def __init__(self, disk: Disk | None) -> None:
        self.disk = disk

    def __enter__(self) -> Disk | None:
        return self.disk

    def __exit__(self, *exc: object) -> None:
        if self.disk is not None:
            self.disk.close()


class _CrashCopy:
    """A crash copy's ``on_close``: delete the copy, or keep it, or (unmodified)
    hand it to the pool for the next state of the same file."""

    def __init__(
        self,
        path: str,
        keep: bool,
        pool: tuple[dict[int, tuple[str, Content, int]], Content, int] | None,
        tracker: _Modified | None,
    ) -> None:
        self.path = path
        self.keep = keep
        self.pool = pool
        self.tracker = tracker

    def __call__(self, disk: object) -> None:
        if self.keep:
            return
        path = self.path
        if (
            self.pool is not None
            and self.tracker is not None
            and not self.tracker.modified
            and _stamped(path)
        ):
            pool, content, seed = self.pool
            previous = pool.get(content[0].ident)
            pool[content[0].ident] = (self.path, content, seed)
            if previous is None:
                return
            path = previous[0]
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


#: The mtime (ns) a crash copy gets when it is handed out: still there at
#: close, nothing wrote the file (a write sets the current time).
_STAMP = 1_000_000_000


def _stamped(path: str) -> bool:
    try:
        return os.stat(path).st_mtime_ns == _STAMP
    except FileNotFoundError:
        return False


class _Modified:
    """A recorder that only notes whether anything was stored (or truncated)."""

    modified = False

    def on_store(
        self, disk: object, operation: str, offset: int, length: int, data: object
    ) -> None:
        self.modified = True

    def on_flush_begin(self, disk: object) -> None:
        return None

    def on_flush_end(self, disk: object, token: object, ok: bool) -> None:
        pass

    def on_file_op(self, kind: str, path: str, details: object) -> None:
        self.modified = True


class CrashList(list[Crash]):
    """The distinct crash states, in order; ``states`` counts them before
    deduplication, ``epochs`` the flush epochs."""

    states: int = 0
    epochs: int = 0

    def by_id(self, ident: str) -> Crash:
        for crash in self:
            if crash.id == ident or ident in crash.same_as:
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
    result.append(Epoch(len(result), point, INFINITY, dict(durable), pending, durable_count))
    for epoch in result:
        epoch.marks = tuple(m.label for m in log.marks if m.n < epoch.end)
        epoch.durable_marks = tuple(
            m.label
            for m in log.marks
            if m.n < epoch.end and m.durable_at is not None and m.durable_at < epoch.end
        )
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
    for name, value in (("max_states", max_states), ("subset_limit", subset_limit)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, not {value!r}")
    if max_states < 0 or subset_limit < 0:
        raise ValueError("max_states and subset_limit must not be negative")
    log = recording.log()
    result = CrashList()
    seen: dict[int, Crash] = {}
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
