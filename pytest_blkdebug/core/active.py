"""The active list: armed rules, indexed for the request check.

Every request asks "which armed rule decides me?", so this is the hottest
code in the project. An ``ActiveIndex`` is an immutable snapshot of the
active list: per iotype, the first rule that matches any sector, and the
sector rules bucketed by 4 KiB page. ``matchers[iotype](offset, length)``
answers "could any armed rule match?" with one dict lookup for an aligned
request of up to 4 KiB, however many rules are armed; ``find`` then picks
the deciding rule (the first in definition order), under the engine's lock.
``Slot`` is one rule inside an engine, with its counters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from .decision import Decision
from .events import IOTYPES, iotype_mask
from .rules import InjectError, Rule

NO_RULE = 1 << 62  # position sentinel: larger than any definition position
# Sector rules are bucketed by 4 KiB page of image: a request looks only at the
# buckets it overlaps (one, for an aligned request of up to 4 KiB), so
# the check costs the same with a thousand armed sector rules as with none.
BUCKET_SHIFT = 12  # also spelled out in matcher's closure


class Slot:
    """One rule inside an engine: the rule plus its counters and fast fields."""

    __slots__ = (
        "rule",
        "name",
        "position",
        "state",
        "mask",
        "offset",
        "errno",
        "once",
        "immediately",
        "new_state",
        "hits",
        "armed_base",
        "consumed",
        "decision",
    )

    def __init__(self, rule: Rule, name: str, position: int) -> None:
        self.rule = rule
        self.name = name
        self.position = position
        self.state = rule.state
        self.hits = 0
        self.armed_base = 0  # arming counts folded in from dropped arm groups
        self.consumed = False
        if isinstance(rule, InjectError):
            self.mask = iotype_mask(rule.iotype)
            self.offset = rule.sector * 512 if rule.sector >= 0 else -1
            self.errno = rule.errno
            self.once = rule.once
            self.immediately = rule.immediately
            # Built once: the engine hands this immutable value to every request it fails.
            self.decision = Decision(name, rule.errno, rule.immediately)
            self.new_state = 0
        else:
            self.mask = self.offset = self.errno = 0
            self.once = self.immediately = False
            self.new_state = rule.new_state


class ActiveIndex:
    """An immutable active list, indexed for the request check.

    For each iotype: the first-defined rule that matches any sector, and the
    sector rules bucketed by 4 KiB page. The deciding rule is the lowest
    position among the candidates, which is exactly "the first rule in the
    active list that matches". ``matchers[iotype](offset, length)`` is the
    lock-free test the hot path runs (None: nothing armed covers that
    iotype); ``find`` picks the rule.
    """

    __slots__ = ("members", "by_iotype", "matchers")

    def __init__(self, members: Sequence[Slot]) -> None:
        self.members = tuple(members)
        any_pos = [NO_RULE] * len(IOTYPES)
        buckets: list[dict[int, list[tuple[int, int]]]] = [{} for _ in IOTYPES]
        for i, slot in enumerate(self.members):
            for t in range(len(IOTYPES)):
                if not slot.mask >> t & 1:
                    continue
                if slot.offset < 0:
                    any_pos[t] = min(any_pos[t], i)
                else:
                    buckets[t].setdefault(slot.offset >> BUCKET_SHIFT, []).append((slot.offset, i))
        self.by_iotype = [
            (any_pos[t], {b: tuple(v) for b, v in buckets[t].items()}) for t in range(len(IOTYPES))
        ]
        self.matchers = tuple(matcher(*entry) for entry in self.by_iotype)

    def find(self, iotype: int, offset: int, length: int) -> Slot | None:
        best, buckets = self.by_iotype[iotype]
        if buckets and length > 0:
            end = offset + length
            for entries in _overlapping(buckets, offset, end):
                for o, p in entries:
                    if offset <= o < end and p < best:
                        best = p
        return None if best == NO_RULE else self.members[best]

    def without(self, slot: Slot) -> ActiveIndex | None:
        rest = [s for s in self.members if s is not slot]
        return ActiveIndex(rest) if rest else None


def _overlapping(
    buckets: dict[int, tuple[tuple[int, int], ...]], offset: int, end: int
) -> list[tuple[tuple[int, int], ...]]:
    """The sector-rule buckets a request ``[offset, end)`` overlaps."""
    first, last = offset >> BUCKET_SHIFT, (end - 1) >> BUCKET_SHIFT
    if last - first < len(buckets):
        keys: Iterable[int] = range(first, last + 1)
    else:  # a huge request: walk the rules' buckets instead of the request's
        keys = [b for b in buckets if first <= b <= last]
    return [buckets[b] for b in keys if b in buckets]


def _any_within(entries: tuple[tuple[int, int], ...], offset: int, end: int) -> bool:
    return any(offset <= o < end for o, _ in entries)


def _any_overlapping(
    buckets: dict[int, tuple[tuple[int, int], ...]], offset: int, end: int
) -> bool:
    return any(_any_within(entries, offset, end) for entries in _overlapping(buckets, offset, end))


def _always(offset: int, length: int) -> bool:
    return True


NO_MATCHERS: tuple[None, ...] = (None,) * len(IOTYPES)


def matcher(
    any_pos: int,
    buckets: dict[int, tuple[tuple[int, int], ...]],
) -> Callable[[int, int], bool] | None:
    """The fastest exact "does any armed rule match" test for one iotype."""
    if any_pos != NO_RULE:
        return _always
    if not buckets:
        return None
    get = buckets.get

    # No generator expressions in here: one would turn offset and length into
    # closure cells and double the cost of this, the hottest function.
    def could_match(offset: int, length: int) -> bool:
        page = offset >> 12  # BUCKET_SHIFT, spelled out: a constant is faster than a cell
        if length > 0 and page == (offset + length - 1) >> 12:
            # The usual case: the request stays within one page, one lookup.
            entries = get(page)
            return entries is not None and _any_within(entries, offset, offset + length)
        return length > 0 and _any_overlapping(buckets, offset, offset + length)

    return could_match
