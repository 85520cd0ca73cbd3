"""What an engine shows of itself: rule status, trace entries, state changes.

Kept apart from ``engine.py`` (which re-exports these names) so the engine
module is the state machine only. ``RuleStatus`` is a snapshot (the rows of
``engine.rules``, the report's table); ``RuleView`` (``engine.rule(name)``,
``disk.rule(name)``) is live: every read of ``hits`` or ``armed`` asks the
engine again, so a view kept in a variable never shows stale numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from .decision import Decision
from .events import IOTYPES
from .rules import Rule

if TYPE_CHECKING:
    from .active import Slot
    from .engine import Engine


@dataclass(frozen=True)
class RuleStatus:
    """A rule's counters as they were when read: ``armed`` (times activated),
    ``hits`` (requests it decided: failed, delayed, altered or, with
    ``errno=0``, let through; events it fired on, for
    set-state; reads failed, for bad-sector), ``consumed`` (a ``once`` or
    ``count`` rule used up, a bad-sector rule fully healed), ``active``
    (armed now; for bad-sector: sectors still bad) and ``skipped``
    (requests it matched but let through because of ``after`` or
    ``probability``)."""

    rule: Rule
    name: str
    kind: str
    event: str
    armed: int
    hits: int
    consumed: bool
    active: bool
    skipped: int = 0

    @property
    def fired(self) -> bool:
        return self.hits > 0


class RuleView:
    """A live view of one rule of an engine: each attribute is read now.

    ``snapshot()`` freezes it into a ``RuleStatus``.
    """

    __slots__ = ("_engine", "_slot")

    def __init__(self, engine: Engine, slot: Slot) -> None:
        self._engine = engine
        self._slot = slot

    def snapshot(self) -> RuleStatus:
        with self._engine._lock:  # the arm groups change under other threads
            return self._engine._status(self._slot)

    @property
    def rule(self) -> Rule:
        return self._slot.rule

    @property
    def name(self) -> str:
        return self._slot.name

    @property
    def kind(self) -> str:
        return self._slot.rule.kind

    @property
    def event(self) -> str:
        return self._slot.rule.event

    @property
    def armed(self) -> int:
        return self.snapshot().armed

    @property
    def hits(self) -> int:
        return self._slot.hits

    @property
    def skipped(self) -> int:
        return self._slot.skipped

    @property
    def consumed(self) -> bool:
        return self.snapshot().consumed

    @property
    def active(self) -> bool:
        return self.snapshot().active

    @property
    def fired(self) -> bool:
        return self._slot.hits > 0

    def __repr__(self) -> str:
        return f"<RuleView {self.snapshot()}>"


class TraceEntry(NamedTuple):
    """One event or request: ``kind`` is ``"event"`` or the request's iotype.

    For requests, ``rule`` names the rule that decided it (None: no rule
    matched), ``errno`` the error it got (0: it went through) and
    ``effect`` what else the rule did: ``"delay"``, a lie (``"corrupt"``,
    ``"lost"``, ``"misdirect"``), ``"skipped"`` (let through by ``after``
    or ``probability``), or ``""`` (nothing: an ``errno=0`` rule)."""

    kind: str
    name: str
    offset: int
    length: int
    rule: str | None
    errno: int
    state: int
    effect: str = ""


#: ``TraceEntry.effect`` of a request a rule let through because of
#: ``after`` or ``probability``.
SKIPPED = "skipped"


def effect_of(decision: Decision) -> str:
    """What a decision does besides its errno (``TraceEntry.effect``)."""
    if decision.corrupt is not None:
        return "corrupt"
    if decision.lost:
        return "lost"
    if decision.misdirect is not None:
        return "misdirect"
    return "delay" if decision.delay else ""


class StateChange(NamedTuple):
    old: int
    new: int
    event: str


def trace_entry(raw: tuple[Any, ...]) -> TraceEntry:
    """A raw trace tuple (what the hot path appends) as a ``TraceEntry``."""
    if raw[0] == "event":
        return TraceEntry("event", raw[1], 0, 0, None, 0, raw[2])
    iotype, offset, length, rule, err, state, effect = raw
    return TraceEntry(IOTYPES[iotype], IOTYPES[iotype], offset, length, rule, err, state, effect)
