"""The active list: armed rules, indexed for the request check.

Every request asks "which armed rule decides me?", so this is the hottest
code in the project. An ``ActiveIndex`` is an immutable snapshot of the
active list: per iotype, the first rule that matches any sector, and the
rules with a place (a ``sector``, or an ``offset``/``length`` byte range)
bucketed by 4 KiB page. ``matchers[iotype](offset, length)`` answers "could
any armed rule match?" with one dict lookup for an aligned request of up to
4 KiB, however many rules are armed; ``find`` then picks the deciding rule
(the first in definition order), under the engine's lock. A range wider than
``WIDE_BUCKETS`` pages is not copied into every page it spans: such ranges
sit in one list sorted by start with a running maximum of their ends, so the
"any overlap?" test is one bisection whatever their width and number.

``Slot`` is one rule inside an engine: its counters, its fast fields and,
for rules that need randomness, its own seeded stream.
"""

from __future__ import annotations

import random
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from itertools import accumulate

from .decision import Decision
from .events import IOTYPES, iotype_mask
from .rules import BadSector, InjectError, Rule

NO_RULE = 1 << 62  # position sentinel: larger than any definition position
# Placed rules are bucketed by 4 KiB page of image: a request looks only at the
# buckets it overlaps (one, for an aligned request of up to 4 KiB), so
# the check costs the same with a thousand armed sector rules as with none.
BUCKET_SHIFT = 12  # also spelled out in matcher's closure
#: A byte range spanning more pages than this goes to the wide list.
WIDE_BUCKETS = 16

Entry = tuple[int, int, int]  # (first byte, end byte, position in the active list)


def rule_stream(seed: int, name: str) -> random.Random:
    """The seeded stream of one rule: from (engine seed, rule name) only, so a
    rule's decisions do not depend on what other rules or requests did."""
    return random.Random(f"blkdebug:{seed}:{name}")


class Slot:
    """One rule inside an engine: the rule plus its counters and fast fields."""

    __slots__ = (
        "rule",
        "name",
        "position",
        "state",
        "mask",
        "start",
        "end",
        "errno",
        "immediately",
        "new_state",
        "hits",
        "skipped",
        "armed_base",
        "consumed",
        "decision",
        "left",
        "after_left",
        "probability",
        "gated",
        "dynamic",
        "rng",
    )

    def __init__(self, rule: Rule, name: str, position: int, seed: int = 0) -> None:
        self.rule = rule
        self.name = name
        self.position = position
        self.state = rule.state
        self.hits = 0
        self.skipped = 0  # requests it matched but let through (after, probability)
        self.armed_base = 0  # arming counts folded in from dropped arm groups
        self.consumed = False
        self.mask = self.start = self.end = self.errno = self.new_state = 0
        self.immediately = self.gated = self.dynamic = False
        self.left = self.after_left = 0
        self.probability = 1.0
        self.decision: Decision | None = None
        self.rng: random.Random | None = None
        if isinstance(rule, InjectError):
            self._inject(rule, name, seed)
        elif isinstance(rule, BadSector):
            self.start, self.end = rule.sector * 512, (rule.sector + rule.sectors) * 512
            self.errno = rule.errno
            self.decision = Decision(name, rule.errno)
        else:
            self.new_state = rule.new_state

    def _inject(self, rule: InjectError, name: str, seed: int) -> None:
        self.mask = iotype_mask(rule.iotype)
        if rule.offset is not None and rule.length is not None:
            self.start, self.end = rule.offset, rule.offset + rule.length
        elif rule.sector >= 0:
            self.start = rule.sector * 512
            self.end = self.start + 1  # the request must contain the sector's first byte
        else:
            self.start = self.end = -1
        self.errno = rule.errno
        self.immediately = rule.immediately
        self.left = 1 if rule.once else (rule.count or 0)  # 0: never consumed
        self.after_left = rule.after
        self.probability = rule.probability
        self.gated = rule.after > 0 or rule.probability < 1.0
        self.dynamic = rule.delay_jitter > 0 or rule.corrupt in ("bitflip", "garbage")
        if rule.probability < 1.0 or self.dynamic:
            self.rng = rule_stream(seed, name)
        has_effect = bool(rule.errno or rule.delay or rule.delay_jitter or rule.lie)
        if has_effect:
            # Built once: the engine hands this immutable value to every request it decides.
            self.decision = Decision(
                name,
                rule.errno,
                rule.immediately,
                rule.delay,
                rule.corrupt,
                rule.lost,
                rule.misdirect,
            )

    def skip(self) -> bool:
        """A gated rule matched: True when it lets this request pass (``after``
        not used up yet, or the seeded draw against ``probability`` says so)."""
        if self.after_left:
            self.after_left -= 1
            self.skipped += 1
            return True
        if self.rng is not None and self.probability < 1.0:
            if self.rng.random() >= self.probability:
                self.skipped += 1
                return True
        return False

    def draw(self) -> Decision:
        """A decision with this request's seeded jitter and corruption entropy."""
        rule = self.rule
        assert isinstance(rule, InjectError) and self.rng is not None and self.decision
        delay = rule.delay
        if rule.delay_jitter:
            delay += self.rng.random() * rule.delay_jitter
        entropy = self.rng.getrandbits(64) if rule.corrupt in ("bitflip", "garbage") else 0
        d = self.decision
        return Decision(
            d.rule, d.errno, d.immediately, delay, d.corrupt, d.lost, d.misdirect, entropy
        )


def holding(slots: list[Slot], state: int) -> list[Slot]:
    """The rules whose state condition holds. A helper, not an inline
    comprehension, because a comprehension in ``fire`` would make ``state`` a
    closure cell there and slow every event down."""
    return [s for s in slots if s.state == 0 or s.state == state]


class ArmGroup:
    """The inject-error rules one event arms in one state, counted once per arming."""

    __slots__ = ("index", "times")

    def __init__(self, index: ActiveIndex) -> None:
        self.index = index
        self.times = 0


class EventPlan:
    """Everything registered on one event, in definition order."""

    __slots__ = ("injects", "set_states", "breakpoints", "groups")

    def __init__(self) -> None:
        self.groups: dict[int, ArmGroup] = {}  # state -> what this event arms in it
        self.injects: list[Slot] = []
        self.set_states: list[Slot] = []
        self.breakpoints: list[str] = []  # tags, oldest first

    def __bool__(self) -> bool:
        return bool(self.injects or self.set_states or self.breakpoints)


class _Wide:
    """Wide byte ranges of one iotype: sorted by start, with running max of ends."""

    __slots__ = ("starts", "max_ends", "entries")

    def __init__(self, entries: list[Entry]) -> None:
        self.entries = sorted(entries)
        self.starts = [e[0] for e in self.entries]
        self.max_ends = list(accumulate((e[1] for e in self.entries), max))

    def overlaps(self, offset: int, end: int) -> bool:
        i = bisect_left(self.starts, end)  # entries[:i] start before the request ends
        return i > 0 and self.max_ends[i - 1] > offset

    def best(self, offset: int, end: int, best: int) -> int:
        for _s, e, p in self.entries[: bisect_left(self.starts, end)]:
            if e > offset and p < best:
                best = p
        return best


class ActiveIndex:
    """An immutable active list, indexed for the request check.

    For each iotype: the first-defined rule that matches any sector, the
    placed rules bucketed by 4 KiB page, and the wide ranges. The deciding
    rule is the lowest position among the candidates, which is exactly "the
    first rule in the active list that matches". ``matchers[iotype](offset,
    length)`` is the lock-free test the hot path runs (None: nothing armed
    covers that iotype); ``find`` picks the rule.
    """

    __slots__ = ("members", "member_set", "by_iotype", "matchers")

    def __init__(self, members: Sequence[Slot]) -> None:
        self.members = tuple(members)
        self.member_set = frozenset(self.members)
        any_pos = [NO_RULE] * len(IOTYPES)
        buckets: list[dict[int, list[Entry]]] = [{} for _ in IOTYPES]
        wide: list[list[Entry]] = [[] for _ in IOTYPES]
        for i, slot in enumerate(self.members):
            first, last = slot.start >> BUCKET_SHIFT, (slot.end - 1) >> BUCKET_SHIFT
            for t in range(len(IOTYPES)):
                if not slot.mask >> t & 1:
                    continue
                if slot.start < 0:
                    any_pos[t] = min(any_pos[t], i)
                elif last - first >= WIDE_BUCKETS:
                    wide[t].append((slot.start, slot.end, i))
                else:
                    for b in range(first, last + 1):
                        buckets[t].setdefault(b, []).append((slot.start, slot.end, i))
        self.by_iotype = [
            (
                any_pos[t],
                {b: tuple(v) for b, v in buckets[t].items()},
                _Wide(wide[t]) if wide[t] else None,
            )
            for t in range(len(IOTYPES))
        ]
        self.matchers = tuple(matcher(*entry) for entry in self.by_iotype)

    def find(self, iotype: int, offset: int, length: int) -> Slot | None:
        best, buckets, wide = self.by_iotype[iotype]
        if length > 0:
            end = offset + length
            if buckets:
                for entries in _overlapping(buckets, offset, end):
                    for s, e, p in entries:
                        if s < end and offset < e and p < best:
                            best = p
            if wide is not None:
                best = wide.best(offset, end, best)
        return None if best == NO_RULE else self.members[best]

    def without(self, slot: Slot) -> ActiveIndex | None:
        rest = [s for s in self.members if s is not slot]
        return ActiveIndex(rest) if rest else None


def _overlapping(
    buckets: dict[int, tuple[Entry, ...]], offset: int, end: int
) -> list[tuple[Entry, ...]]:
    """The placed-rule buckets a request ``[offset, end)`` overlaps."""
    first, last = offset >> BUCKET_SHIFT, (end - 1) >> BUCKET_SHIFT
    if last - first < len(buckets):
        keys: Iterable[int] = range(first, last + 1)
    else:  # a huge request: walk the rules' buckets instead of the request's
        keys = [b for b in buckets if first <= b <= last]
    return [buckets[b] for b in keys if b in buckets]


def _any_within(entries: tuple[Entry, ...], offset: int, end: int) -> bool:
    for s, e, _ in entries:
        if s < end and offset < e:
            return True
    return False


def _any_overlapping(buckets: dict[int, tuple[Entry, ...]], offset: int, end: int) -> bool:
    for entries in _overlapping(buckets, offset, end):
        if _any_within(entries, offset, end):
            return True
    return False


def always(offset: int, length: int) -> bool:
    """The matcher of a rule that matches any sector (and a ``Gate``'s test
    when one of its operation's events is live)."""
    return True


NO_MATCHERS: tuple[None, ...] = (None,) * len(IOTYPES)
Matcher = Callable[[int, int], bool]


def matcher(
    any_pos: int,
    buckets: dict[int, tuple[Entry, ...]],
    wide: _Wide | None = None,
) -> Matcher | None:
    """The fastest exact "does any armed rule match" test for one iotype."""
    if any_pos != NO_RULE:
        return always
    if wide is not None:
        overlaps = wide.overlaps
        if not buckets:
            return lambda offset, length: length > 0 and overlaps(offset, offset + length)
        return lambda offset, length: (
            length > 0
            and (
                overlaps(offset, offset + length)
                or _any_overlapping(buckets, offset, offset + length)
            )
        )
    if not buckets:
        return None
    # The same buckets keyed by their first byte: an aligned request of up
    # to a page is one ``in`` on its own offset (no shift to compute).
    starts = {page << BUCKET_SHIFT: entries for page, entries in buckets.items()}

    # No generator expressions in here: one would turn offset and length into
    # closure cells and double the cost of this, the hottest function. Every
    # bytecode counts: after the request's system call they run with cold
    # caches and predictors, at about twice their cost in a tight loop (in
    # bench_engine's armed-rules row this test cost ~100 ns with a shift, an
    # end page and ``buckets.get``; ~55 ns in this form).
    def could_match(offset: int, length: int) -> bool:
        if offset & 4095 or length > 4096 or not length:  # BUCKET_SHIFT's page, spelled out
            page = offset >> 12
            if page == (offset + length - 1) >> 12 and length > 0:  # within one page
                return page in buckets and _any_within(buckets[page], offset, offset + length)
            return length > 0 and _any_overlapping(buckets, offset, offset + length)
        # The usual case: an aligned request within one page, one lookup.
        return offset in starts and _any_within(starts[offset], offset, offset + length)

    return could_match


def either(first: Matcher | None, second: Matcher) -> Matcher:
    """A matcher that also asks ``second`` (bad sectors beside the active list)."""
    if first is None:
        return second
    if first is always:
        return always
    return lambda offset, length: first(offset, length) or second(offset, length)
