"""The injection engine: rules, state, arming, request checks, counters, gates.

Pure logic, no I/O and no pytest, shared by every ``Disk`` view of one image
(sync, asyncio, file, NBD) and by several disks when a test asks for that. It
reproduces QEMU 7.2's ``blkdebug.c``, whose semantics sit in two functions;
here they are :meth:`Engine.fire` (event phase: set-state, arming,
breakpoints) and :meth:`Engine.check` (request phase: the first armed rule
that matches decides).

Hot path: every request calls ``fire`` for its events and ``check`` once.
Both do a dict lookup or an ``is None`` test and return when nothing can
apply, without taking the lock. Arming reuses a prebuilt index per (event,
state), so re-arming a thousand rules costs the same as arming one, and the
index (``active.py``) finds the deciding rule by iotype and 4 KiB page
instead of walking the active list.

Beyond QEMU: the deciding rule may let a request pass (``after``, a seeded
draw against ``probability``) and its decision may carry a delay or a lie;
each rule's randomness comes from its own stream, seeded from
(``engine.seed``, rule name), so it is reproducible and independent of
other traffic. Bad-sector rules (``badsectors.py``) sit below the active
list, like the device below blkdebug: reads that touch one fail until a
store, reported through ``stored()``, heals it.

Breakpoints (pending ones, the requests they suspend, observers, the disks
attached) are ``breakpoints.py``, a base class of ``Engine`` that shares
its lock and event plans; the status values are ``status.py``.
"""

from __future__ import annotations

import random
import threading
import weakref
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

from .active import (
    NO_MATCHERS,
    ActiveIndex,
    ArmGroup,
    EventPlan,
    Matcher,
    Slot,
    always,
    either,
    holding,
)
from .badsectors import BadMap
from .breakpoints import Breakpoints, Observer, Suspension
from .decision import Decision
from .errors import RuleError
from .events import READ, EventRegistry, register_events
from .hold import Hold
from .rules import BadSector, InjectError, Rule, SetState, rule_name
from .status import SKIPPED, RuleStatus, RuleView, StateChange, TraceEntry, effect_of, trace_entry

__all__ = [
    "Engine",
    "Gate",
    "Hold",
    "Observer",
    "Recorder",
    "RuleStatus",
    "RuleView",
    "StateChange",
    "TraceEntry",
]

if TYPE_CHECKING:
    from .crash import Recording

TRACE_LENGTH = 64
HISTORY_LENGTH = 256


class GatedOperation(Protocol):
    """What a gate needs to know of an operation (``path.Operation`` is one)."""

    @property
    def iotype(self) -> int: ...
    @property
    def events(self) -> tuple[str, ...]: ...
    @property
    def stores(self) -> bool: ...


class Gate:
    """The fast path's one test for an operation: ``check`` is None when
    nothing can apply to any request of it, else a callable ``(offset,
    length) -> bool`` that is False when nothing can apply to that request.

    Nothing can apply when none of the operation's events has a rule or a
    breakpoint, no armed rule can match (the iotype's matcher), and, for
    an operation that stores, no bad-sector rule watches stores. The engine
    recomputes ``check`` (under its lock) whenever one of those changes, so
    a request pays one attribute load and at most one call for all three.
    ``check`` may say True when nothing applies (the request then takes
    the full path, which finds nothing); never False when something does.
    """

    __slots__ = ("events", "iotype", "stores", "check", "pinned")

    def __init__(self, op: GatedOperation) -> None:
        self.events = frozenset(op.events)
        self.iotype = op.iotype
        self.stores = op.stores
        self.check: Matcher | None = None
        #: An event of the operation is live or stores are watched: ``check``
        #: is ``always`` whatever is armed.
        self.pinned = False


class Recorder(Protocol):
    """What the request path tells a recorder (``engine.recorders``; a crash
    ``Recording`` is one): what really reached the image, and each flush's
    start and end. A protocol, so the engine needs no recorder's module."""

    def on_store(
        self, disk: Any, operation: str, offset: int, length: int, data: bytes | None
    ) -> None: ...

    def on_flush_begin(self, disk: Any) -> object: ...

    def on_flush_end(self, disk: Any, token: object, ok: bool) -> None: ...

    def on_file_op(self, kind: str, path: str, details: dict[str, Any]) -> None: ...


def _duplicate(name: str, rule: Rule, by_name: dict[str, Slot], new: list[Slot]) -> str:
    """The error for a second rule called ``name``. A QEMU ini file may give an
    [inject-error] and a [set-state] the same id (QEMU keeps ids per kind); a
    rule name is one per engine, so say that, not only that it repeats."""
    prior = by_name.get(name) or next(s for s in new if s.name == name)
    if name in by_name:
        return f"duplicate rule name {name!r}: the engine already has a rule of that name"
    if prior.rule.kind == rule.kind:
        return f"duplicate rule name {name!r}"
    kinds = " and ".join(f"[{k}]" for k in (prior.rule.kind, rule.kind))
    return (
        f"duplicate rule name {name!r}: rules {kinds} (a QEMU ini file may give "
        "both kinds one id, but a rule name is one per disk: rename one)"
    )


class Engine(Breakpoints):
    """State machine and rule tables for one or more disks.

    Thread-safe: all mutation happens under one lock; the lock-free fast
    paths only read references that are replaced atomically.
    """

    def __init__(
        self,
        rules: Iterable[Rule] = (),
        *,
        events: Iterable[str] = (),
        registry: EventRegistry | None = None,
        trace_length: int = TRACE_LENGTH,
        seed: int | None = None,
    ) -> None:
        if seed is None:
            seed = random.SystemRandom().getrandbits(32)
        elif isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an integer, not {seed!r}")
        #: The seed of every rule's random stream (``probability``,
        #: ``delay_jitter``, corruption): the same seed, the same decisions.
        self.seed: int = seed
        self.registry = registry if registry is not None else EventRegistry()
        register_events(self.registry, events)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._state = 1
        self._history: deque[StateChange] = deque(maxlen=HISTORY_LENGTH)
        self._transitions = 0
        self._slots: list[Slot] = []
        self._by_name: dict[str, Slot] = {}
        self._plans: dict[str, EventPlan] = {}
        #: Events with rules or breakpoints; ``event in engine.live_events`` is
        #: the hot path's test for "raising this event can change anything".
        self.live_events: dict[str, object] = self._plans  # type: ignore[assignment]
        #: The armed rules, None when nothing is armed. Replaced, never mutated,
        #: so the hot path reads it without the lock.
        self.active: ActiveIndex | None = None
        #: Per iotype, the lock-free "could an armed rule match" test, or None
        #: when no armed rule covers that iotype (set together with ``active``).
        self.matchers: tuple[Matcher | None, ...] = NO_MATCHERS
        #: Sectors of bad-sector rules not yet healed (None: none). Replaced, never mutated.
        self._bad: BadMap | None = None
        self._watches_stores = False
        self._suspended: list[Suspension] = []  # most recent first, as QEMU's list
        self._trace: deque[tuple[Any, ...]] = deque(maxlen=trace_length)
        self._trace_append = self._trace.append
        self._observers: tuple[Observer, ...] = ()
        self.opened = False
        self._users = 0  # disks attached (several may share one engine)
        self.disks: weakref.WeakSet[Any] = weakref.WeakSet()  # open ones, for record()
        #: Active recordings (crash.py), whose hooks the request path calls.
        self.recorders: tuple[Recorder, ...] = ()
        #: Seconds of injected delay requests have waited (the request path adds).
        self.injected_delay = 0.0
        self._gates: dict[tuple[frozenset[str], int, bool], Gate] = {}
        self.add_rules(rules)

    # -- rules -------------------------------------------------------------

    def add_rules(self, rules: Iterable[Rule]) -> None:
        """Append rules in definition order (names must be unique).

        All or nothing: every rule is checked before any joins the engine.
        """
        with self._lock:
            new: list[Slot] = []
            names: set[str] = set()
            for rule in rules:
                if not isinstance(rule, (InjectError, SetState, BadSector)):
                    raise RuleError(
                        f"not a rule: {rule!r} (expected InjectError, SetState or BadSector)"
                    )
                self.registry.check(rule.event)
                name = rule_name(rule, len(self._slots) + len(new))
                if name in self._by_name or name in names:
                    raise RuleError(_duplicate(name, rule, self._by_name, new), attribute="name")
                names.add(name)
                new.append(Slot(rule, name, len(self._slots) + len(new), self.seed))
            for slot in new:
                self._slots.append(slot)
                self._by_name[slot.name] = slot
                if isinstance(slot.rule, BadSector):
                    continue
                plan = self._plans.setdefault(slot.rule.event, EventPlan())
                kind_list = plan.injects if isinstance(slot.rule, InjectError) else plan.set_states
                kind_list.append(slot)
            if any(isinstance(slot.rule, BadSector) for slot in new):
                self._bad = BadMap.build(
                    [s for s in new if isinstance(s.rule, BadSector)], self._bad
                )
                self._watches_stores = True
                self._publish(self.active)
            # Arming sets change with the rule set: fold the cached groups'
            # counts into the rules before dropping the groups.
            for plan in self._plans.values():
                for group in plan.groups.values():
                    for member in group.index.members:
                        member.armed_base += group.times
                plan.groups.clear()
            self._regate()

    def _publish(self, active: ActiveIndex | None) -> None:
        """Install a new active list and the matchers the hot path reads."""
        self.active = active
        matchers = active.matchers if active is not None else NO_MATCHERS
        if self._bad is not None:
            listed = list(matchers)
            listed[READ] = either(matchers[READ], self._bad.touches)
            matchers = tuple(listed)
        self.matchers = matchers
        self._regate()

    @property
    def watches_stores(self) -> bool:
        """True when a bad-sector rule exists: the request path then calls
        ``stored(offset, length)`` after each successful store."""
        return self._watches_stores

    @watches_stores.setter
    def watches_stores(self, value: bool) -> None:
        with self._lock:
            self._watches_stores = value
            self._regate()

    def gate(self, op: GatedOperation) -> Gate:
        """The fast path's gate for ``op`` (one per engine and operation; see ``Gate``)."""
        key = (frozenset(op.events), op.iotype, op.stores)
        with self._lock:
            gate = self._gates.get(key)
            if gate is None:
                gate = self._gates[key] = Gate(op)
                self._set_gate(gate)
            return gate

    def _set_gate(self, gate: Gate) -> None:
        live = self._plans
        gate.pinned = bool(live and not live.keys().isdisjoint(gate.events)) or (
            gate.stores and self._watches_stores
        )
        gate.check = always if gate.pinned else self.matchers[gate.iotype]

    def _regate(self) -> None:
        """Recompute every gate: the live events, the matchers or the
        store watch changed (called under the lock, before the change is
        visible to the caller that made it)."""
        for gate in self._gates.values():
            self._set_gate(gate)

    @property
    def rules(self) -> list[RuleStatus]:
        """Every rule's status, in definition order (consumed ones included).

        Linear in the number of rules: the arming counts come from one pass
        over the cached arm groups, not a search per rule."""
        with self._lock:
            armed: dict[Slot, int] = {}
            for plan in self._plans.values():
                for group in plan.groups.values():
                    if group.times:
                        for member in group.index.members:
                            armed[member] = armed.get(member, 0) + group.times
            active = self.active.member_set if self.active else frozenset()
            bad = self._bad.owners() if self._bad is not None else set()
            return [
                self._status(s, s.armed_base + armed.get(s, 0), s in active or s in bad)
                for s in self._slots
            ]

    def _status(
        self, slot: Slot, armed: int | None = None, active: bool | None = None
    ) -> RuleStatus:
        if armed is None:
            armed = self._armed(slot)
        if active is None:
            active = bool(self.active and slot in self.active.member_set) or bool(
                self._bad is not None and slot in self._bad.owners()
            )
        rule = slot.rule
        consumed = slot.consumed
        if isinstance(rule, BadSector):
            consumed = not active
        return RuleStatus(
            rule,
            slot.name,
            rule.kind,
            rule.event,
            armed,
            slot.hits,
            consumed,
            active,
            slot.skipped,
        )

    def rule(self, name: str) -> RuleView:
        """A live view of the rule called ``name`` (KeyError naming the rules
        there are); its counters are read anew on each access."""
        slot = self._by_name.get(name)
        if slot is None:
            known = ", ".join(repr(s.name) for s in self._slots[:50]) or "none"
            more = f" and {len(self._slots) - 50} more" if len(self._slots) > 50 else ""
            raise KeyError(f"no rule named {name!r} (rules: {known}{more})")
        return RuleView(self, slot)

    @property
    def bad_sectors(self) -> list[tuple[str, int, int]]:
        """(rule name, first sector, count) of every run of sectors still bad."""
        bad = self._bad
        return bad.sectors() if bad is not None else []

    def stored(self, offset: int, length: int) -> None:
        """A store (write, write-zeroes, discard) succeeded over ``[offset,
        offset+length)``: bad sectors it touches heal. The request path calls
        this only when ``watches_stores`` is True; the common case (no bad
        sector touched) is one lock-free bisection."""
        bad = self._bad
        if bad is None or not bad.touches(offset, length):
            return
        with self._lock:
            bad = self._bad
            if bad is None:
                return
            before = bad.owners()
            self._bad = bad.healed(offset, length)
            after = self._bad.owners() if self._bad is not None else set()
            for slot in before - after:
                slot.consumed = True
            self._publish(self.active)

    def _armed(self, slot: Slot) -> int:
        total = slot.armed_base
        plan = self._plans.get(slot.rule.event)
        if plan is not None:
            for group in plan.groups.values():
                if slot in group.index.member_set:
                    total += group.times
        return total

    def _drop_groups_with(self, slot: Slot) -> None:
        plan = self._plans[slot.rule.event]
        for state, group in list(plan.groups.items()):
            if slot in group.index.member_set:
                for member in group.index.members:
                    member.armed_base += group.times
                del plan.groups[state]

    # -- state -------------------------------------------------------------

    @property
    def state(self) -> int:
        return self._state

    @property
    def history(self) -> list[StateChange]:
        """Recent state changes, oldest first (the last HISTORY_LENGTH)."""
        with self._lock:
            return list(self._history)

    @property
    def transitions(self) -> int:
        """How many state changes happened in all (history may be truncated)."""
        return self._transitions

    @property
    def trace(self) -> list[TraceEntry]:
        """The most recent entries (TRACE_LENGTH), oldest first: events that
        had rules or breakpoints, events the code announced with
        ``Disk.event``, and every request a rule decided. Plain requests
        and events nothing watches are left out: recording them would cost
        every request more than the check itself."""
        return [trace_entry(raw) for raw in list(self._trace)]

    # -- event phase ---------------------------------------------------------

    def fire(self, event: str, operation: str = "event") -> Hold | None:
        """Raise ``event``: run its set-state rules, arm its inject-error rules,
        consume its breakpoints. Returns a Hold the caller must wait on when a
        breakpoint suspended the request, else None.

        ``event`` must be registered (callers validate user input first). An
        event with nothing registered changes nothing and is not traced: the
        trace keeps requests and the events that mattered.
        """
        plan = self._plans.get(event)
        if plan is None:
            return None
        hits: list[Slot] = []
        hold = None
        # acquire/release rather than ``with``: half the cost on this path.
        self._lock.acquire()
        try:
            state = self._state
            new_state = state
            if plan.set_states:
                # Every set-state rule that holds fires; the first-defined
                # decides, and the change is stored after the whole event.
                for slot in plan.set_states:
                    if slot.state == 0 or slot.state == state:
                        slot.hits += 1
                        if not hits:
                            new_state = slot.new_state
                        hits.append(slot)
            if plan.injects:
                # The inject-error rules that hold replace the active list;
                # the index for (event, state) is built once and reused.
                group = plan.groups.get(state)
                if group is None:
                    members = holding(plan.injects, state)  # not inline: see holding
                    if members:
                        group = plan.groups[state] = ArmGroup(ActiveIndex(members))
                if group is not None:
                    group.times += 1
                    if self._bad is None:
                        self.active = group.index
                        self.matchers = matchers = group.index.matchers
                        for gate in self._gates.values():  # _regate, for a new matcher only
                            if not gate.pinned:
                                gate.check = matchers[gate.iotype]
                    else:
                        self._publish(group.index)
            if plan.breakpoints:
                # All consumed, the newest suspends first (QEMU's rule list is
                # LIFO), after the state change and the arming.
                tags = plan.breakpoints[::-1]
                plan.breakpoints.clear()
                hold = Hold(event, tags, operation)
                for tag in tags:
                    self._suspended.insert(0, Suspension(tag, hold))
                if not plan:
                    del self._plans[event]
                    self._regate()
                self._cond.notify_all()
            if new_state != state:
                self._state = new_state
                self._transitions += 1
                self._history.append(StateChange(state, new_state, event))
            self._trace_append(("event", event, new_state))
        finally:
            self._lock.release()
        if self._observers:
            for slot in hits:
                self._notify("hit", slot.name)
            if hold is not None:
                for tag in hold.tags:
                    self._notify("suspend", tag)
        return hold

    def note_event(self, event: str) -> None:
        """Record an event in the trace even though no rule watches it (used
        for events the user's code announces, which are worth seeing)."""
        self._trace_append(("event", event, self._state))

    # -- request phase -------------------------------------------------------

    def check(self, iotype: int, offset: int, length: int) -> Decision | None:
        """Find the rule that decides this request; see ``decide``.

        The test runs on the immutable index without the lock; only a match
        takes it. The request path runs the same two steps itself:
        ``match = engine.matchers[iotype]; if match is not None and
        match(offset, length): engine.decide(...)``.
        """
        match = self.matchers[iotype]
        if match is None or not match(offset, length):
            return None
        return self.decide(iotype, offset, length)

    def decide(self, iotype: int, offset: int, length: int) -> Decision | None:
        """Count and apply the rule that decides this request.

        The first armed rule that matches decides (QEMU's active list). It
        may let the request pass: ``after`` not used up, the seeded draw
        against ``probability``, or ``errno=0`` with no effect; then None.
        Else its ``Decision`` (an errno, a delay, a lie); a ``once``/``count``
        rule used up is deleted. A read no rule fails or alters that touches
        a bad sector fails with that rule's errno (the device below blkdebug),
        after the delay of a rule that only delays it.
        """
        hit: Slot | None = None
        delayed_by: Slot | None = None
        decided: Decision | None = None
        self._lock.acquire()
        try:
            # Search again under the lock: another thread may have consumed
            # the rule or re-armed the list since the lock-free look.
            active = self.active
            slot = active.find(iotype, offset, length) if active is not None else None
            skipped = slot is not None and slot.gated and slot.skip()
            if slot is not None and not skipped:
                hit = slot
                slot.hits += 1
                decided = slot.draw() if slot.dynamic else slot.decision
                if decided is not None and slot.left:
                    slot.left -= 1
                    if not slot.left:
                        self._consume(slot)
            if (
                iotype == READ
                and self._bad is not None
                and (decided is None or not (decided.errno or decided.corrupt))
            ):
                bad = self._bad.find(offset, length)
                if bad is not None:
                    if decided is not None:  # a rule that only delays: the device
                        delayed_by = hit  # fails the read after the delay
                        decided = Decision(bad.name, bad.errno, delay=decided.delay)
                    else:
                        decided = bad.decision
                    hit = slot = bad
                    bad.hits += 1
            self._trace_append(
                (
                    iotype,
                    offset,
                    length,
                    slot.name if slot is not None else None,
                    decided.errno if decided is not None else 0,
                    self._state,
                    effect_of(decided) if decided is not None else SKIPPED if skipped else "",
                )
            )
        finally:
            self._lock.release()
        if hit is not None and self._observers:
            if delayed_by is not None:
                self._notify("hit", delayed_by.name)
            self._notify("hit", hit.name)
        return decided

    def _consume(self, slot: Slot) -> None:
        """Delete a used-up ``once``/``count`` rule: from the active list and its event."""
        slot.consumed = True
        self._drop_groups_with(slot)
        if self.active is not None:
            self._publish(self.active.without(slot))
        plan = self._plans[slot.rule.event]
        plan.injects.remove(slot)
        if not plan:
            del self._plans[slot.rule.event]
            self._regate()

    # -- recorders -----------------------------------------------------------

    def record(self, **kwargs: Any) -> Recording:
        """A ``Recording`` of every disk on this engine (``with engine.record() as run``)."""
        from .crash import Recording

        return Recording(self, **kwargs)

    def file_op(self, kind: str, path: str, **details: Any) -> None:
        """An adapter's file operation (create, truncate, delete, dirsync) for the recorders."""
        for recorder in self.recorders:
            recorder.on_file_op(kind, path, details)
