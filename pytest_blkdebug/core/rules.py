"""Rule data: immutable, validated at construction, described by one schema.

Kinds: ``InjectError`` (armed by an event, fails or alters matching
requests: QEMU's ``[inject-error]`` plus extensions), ``SetState`` (moves the
engine's state on an event), ``BadSector`` (dm-dust: reads of its sectors
fail until they are written) and ``Breakpoint`` (suspends the request that
raises an event; created at run time with ``Disk.break_on``, never read from
a rule file).

Every attribute of the rule-file kinds is one ``Attr`` row in ``SCHEMA``:
its type, default, range or allowed values, its QEMU ini key (or none: an
extension QEMU cannot read) and its help text. That one table drives the
validation here, ``make_rule`` (markers, TOML), the TOML reader's key and
type checks, the ini reader's keys, both dumpers, the marker help and the
report's conditions column, so a new attribute is one row, not five edits.
Event names are checked against a registry when a rule joins an engine, not
here, because custom events are per-engine.
"""

from __future__ import annotations

import errno as errno_module
import re
from dataclasses import dataclass, field
from typing import Any

from .attrs import (
    MAX_ERRNO,
    TYPES,
    Attr,
    check,
    errno_name,
    fail,
    format_value,
    parse_errno,
    parse_iotypes,
)
from .errors import RuleError
from .events import DEFAULT_IOTYPES, IOTYPES

__all__ = [
    "MAX_ERRNO",
    "SCHEMA",
    "TYPES",
    "Attr",
    "BadSector",
    "Breakpoint",
    "InjectError",
    "Rule",
    "SetState",
    "errno_name",
    "make_rule",
    "marker_help",
    "parse_errno",
    "parse_iotypes",
    "rule_name",
]

#: Largest sector whose byte offset still fits QEMU's int64 arithmetic.
MAX_SECTOR = (1 << 63) // 512 - 1
MAX_STATE = (1 << 31) - 1
#: Largest byte offset or length (QEMU's int64 offsets).
MAX_OFFSET = (1 << 63) - 1
#: Largest ``after``/``count``.
MAX_COUNT = (1 << 63) - 1
#: Longest ``delay``/``delay_jitter`` in seconds: more is surely a typo.
MAX_DELAY = 3600.0
CORRUPTIONS: tuple[str, ...] = ("bitflip", "zero", "garbage")

#: The iotypes each lie can apply to, and the default when ``iotype`` is not given.
LIE_IOTYPES: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "corrupt": (frozenset({"read", "write"}), frozenset({"read"})),
    "lost": (frozenset({"write", "write-zeroes", "discard"}), frozenset({"write"})),
    "misdirect": (frozenset({"write", "write-zeroes"}), frozenset({"write"})),
}


# ---------------------------------------------------------------------------
# The schema
# ---------------------------------------------------------------------------

INJECT_ERROR_ATTRS: tuple[Attr, ...] = (
    Attr("event", "event", None, "the event that arms the rule", ini="event", required=True),
    Attr("errno", "errno", errno_module.EIO,
         "the error a matching request fails with (0: let it through; a lie makes it 0)",
         0, MAX_ERRNO, ini="errno"),
    Attr("sector", "int", -1,
         "a 512-byte sector whose first byte the request must contain (-1: any request)",
         -1, MAX_SECTOR, ini="sector"),
    Attr("once", "bool", False, "fail one request, then the rule is gone (count=1)", ini="once"),
    Attr("immediately", "bool", False,
         "fail at once in the asyncio view instead of after a yield", ini="immediately"),
    Attr("iotype", "iotype", DEFAULT_IOTYPES,
         "request types it matches (default: all but block-status; ini: one)", ini="iotype"),
    Attr("state", "int", 0, "armed only when the engine is in this state (0: any)",
         0, MAX_STATE, ini="state"),
    Attr("name", "name", None, "the rule's name in reports and errors", ini="id", optional=True),
    Attr("after", "int", 0, "let the first N requests it would fail pass", 0, MAX_COUNT),
    Attr("count", "int", None, "fail K requests, then the rule is gone (1: once)",
         1, MAX_COUNT, optional=True),
    Attr("probability", "float", 1.0,
         "fail each request it would fail with this probability (seeded, per rule)", 0, 1),
    Attr("offset", "int", None, "first byte of a byte range (with length; instead of sector)",
         0, MAX_OFFSET, optional=True),
    Attr("length", "int", None, "bytes in the range; requests overlapping it match",
         1, MAX_OFFSET, optional=True),
    Attr("delay", "float", 0.0, "seconds the request waits before it proceeds or fails",
         0, MAX_DELAY),
    Attr("delay_jitter", "float", 0.0, "up to this many seconds more, seeded", 0, MAX_DELAY),
    Attr("corrupt", "choice", None,
         "the request succeeds with altered data (read: what it returns; write: what is stored)",
         choices=CORRUPTIONS, optional=True),
    Attr("lost", "bool", False, "a write is acknowledged and not stored"),
    Attr("misdirect", "int", None, "a write is stored at this byte offset instead",
         0, MAX_OFFSET, optional=True),
)  # fmt: skip

SET_STATE_ATTRS: tuple[Attr, ...] = (
    Attr("event", "event", None, "the event that fires the rule", ini="event", required=True),
    Attr(
        "new_state",
        "int",
        None,
        "the state to move to",
        0,
        MAX_STATE,
        ini="new_state",
        required=True,
    ),
    Attr("state", "int", 0, "fires only in this state (0: any)", 0, MAX_STATE, ini="state"),
    Attr("name", "name", None, "the rule's name in reports and errors", ini="id", optional=True),
)

BAD_SECTOR_ATTRS: tuple[Attr, ...] = (
    Attr("sector", "int", None, "the first bad 512-byte sector", 0, MAX_SECTOR, required=True),
    Attr("sectors", "int", 1, "how many sectors from there are bad", 1, MAX_SECTOR + 1),
    Attr(
        "errno",
        "errno",
        errno_module.EIO,
        "the error a read of a bad sector fails with",
        1,
        MAX_ERRNO,
    ),
    Attr("name", "name", None, "the rule's name in reports and errors", optional=True),
)

#: Every rule-file kind's attributes, in the order of its dataclass fields.
SCHEMA: dict[str, tuple[Attr, ...]] = {
    "inject-error": INJECT_ERROR_ATTRS,
    "set-state": SET_STATE_ATTRS,
    "bad-sector": BAD_SECTOR_ATTRS,
}
#: Attributes QEMU itself has (the rest are this project's extensions).
QEMU_KINDS = ("inject-error", "set-state")


def attrs_of(kind: str) -> dict[str, Attr]:
    return {a.name: a for a in SCHEMA[kind]}


_ATTRS = {kind: attrs_of(kind) for kind in SCHEMA}


# ---------------------------------------------------------------------------
# Validation, one function per value type
# ---------------------------------------------------------------------------


def _validate(rule: object, kind: str) -> None:
    set_ = object.__setattr__
    for attr in SCHEMA[kind]:
        set_(rule, attr.name, check(kind, attr, getattr(rule, attr.name)))


def describe_rule(rule: InjectError | SetState | BadSector) -> str:
    """Conditions and effect in one short line, from the schema: every
    attribute that differs from its default (``errno`` always, flags by name)."""
    parts: list[str] = []
    for attr in SCHEMA[rule.kind]:
        if attr.name in ("event", "name", "new_state"):
            continue
        value = getattr(rule, attr.name)
        if attr.type != "errno" and (value is None or value == attr.default):
            continue
        parts.append(
            attr.name if attr.type == "bool" else f"{attr.name}={format_value(attr, value)}"
        )
    return " ".join(parts)


# ---------------------------------------------------------------------------
# The rule kinds
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class InjectError:
    """Fail (or alter) requests once an event arms this rule (QEMU's ``[inject-error]``).

    QEMU's attributes: ``sector`` is a 512-byte sector whose first byte a
    request must contain (-1: any request); ``errno`` 0 lets the matching
    request through while still shadowing the rules armed behind it. The
    extensions (``after``, ``count``, ``probability``, ``offset``/``length``,
    ``delay``, ``delay_jitter`` and the lies ``corrupt``, ``lost``,
    ``misdirect``) are described in ``SCHEMA`` and docs/rule-files.md.
    ``once`` and ``count=1`` are one thing and compare equal: ``once`` is
    True and ``count`` None.
    """

    event: str
    errno: int = errno_module.EIO
    sector: int = -1
    once: bool = False
    immediately: bool = False
    iotype: frozenset[str] = field(default=DEFAULT_IOTYPES)
    state: int = 0
    name: str | None = None
    after: int = 0
    count: int | None = None
    probability: float = 1.0
    offset: int | None = None
    length: int | None = None
    delay: float = 0.0
    delay_jitter: float = 0.0
    corrupt: str | None = None
    lost: bool = False
    misdirect: int | None = None

    kind = "inject-error"

    def __post_init__(self) -> None:
        _validate(self, self.kind)
        set_ = object.__setattr__
        kind = self.kind
        if self.count == 1:
            set_(self, "count", None)
            set_(self, "once", True)
        elif self.count is not None and self.once:
            raise fail(kind, "count", f"once is count=1; once=True with count={self.count}")
        if (self.offset is None) != (self.length is None):
            missing = "length" if self.length is None else "offset"
            raise fail(kind, missing, "offset and length give a byte range: set both")
        if self.offset is not None:
            if self.sector != -1:
                raise fail(kind, "offset", "give a sector or an offset/length range, not both")
            assert self.length is not None
            if self.offset + self.length > MAX_OFFSET + 1:
                raise fail(kind, "length", "offset+length is beyond 2**63")
        lies = _lies(self)
        if len(lies) > 1:
            raise fail(kind, lies[1], f"one lie per rule: {lies[0]} and {lies[1]} are both set")
        if lies:
            lie = lies[0]
            allowed, default = LIE_IOTYPES[lie]
            # A lie replaces the error: QEMU's EIO default becomes 0, and the
            # default iotype set (which has flush) becomes the lie's own.
            if self.errno == errno_module.EIO:
                set_(self, "errno", 0)
            elif self.errno:
                raise fail(
                    kind, "errno", f"{lie} is an effect in place of an errno: leave errno out or 0"
                )
            if self.iotype == DEFAULT_IOTYPES:
                set_(self, "iotype", default)
            elif not self.iotype <= allowed:
                bad = ",".join(t for t in IOTYPES if t in self.iotype - allowed)
                raise fail(
                    kind,
                    "iotype",
                    f"{lie} applies to {', '.join(t for t in IOTYPES if t in allowed)} "
                    f"requests, not {bad}",
                )

    @property
    def lie(self) -> str | None:
        """Which lie the rule tells (``"corrupt"``, ``"lost"``, ``"misdirect"``), if any."""
        lies = _lies(self)
        return lies[0] if lies else None

    def describe(self) -> str:
        """Conditions and effect in one short line, for reports."""
        return describe_rule(self)

    def __str__(self) -> str:
        return f"inject-error {self.event} {self.describe()}"


def _lies(rule: InjectError) -> list[str]:
    # ``is``, not ``in (None, False)``: misdirect=0 is a real offset.
    set_ = [rule.corrupt is not None, rule.lost is True, rule.misdirect is not None]
    return [lie for lie, on in zip(LIE_IOTYPES, set_, strict=True) if on]


@dataclass(frozen=True)
class SetState:
    """Move the engine to ``new_state`` when ``event`` fires (``[set-state]``).

    ``new_state`` is required: QEMU's ini files default it to 0, which is
    almost never meant (the ini reader still does, as QEMU does).
    """

    event: str
    new_state: int
    state: int = 0
    name: str | None = None

    kind = "set-state"

    def __post_init__(self) -> None:
        _validate(self, self.kind)

    def describe(self) -> str:
        cond = f"state={self.state} " if self.state else ""
        return f"{cond}-> {self.new_state}"

    def __str__(self) -> str:
        return f"set-state {self.event} {self.describe()}"


@dataclass(frozen=True)
class BadSector:
    """Sectors whose reads fail until they are written (Linux dm-dust).

    Bad from the moment the disk opens (QEMU's ``none`` event, hence
    ``event``); a successful write, write-zeroes or discard that touches a
    bad sector heals it, as a drive remaps a sector on write.
    """

    sector: int
    sectors: int = 1
    errno: int = errno_module.EIO
    name: str | None = None

    kind = "bad-sector"

    def __post_init__(self) -> None:
        _validate(self, self.kind)
        if self.sector + self.sectors - 1 > MAX_SECTOR:
            raise fail(self.kind, "sectors", f"sectors run past sector {MAX_SECTOR}")

    @property
    def event(self) -> str:
        return "none"

    @property
    def state(self) -> int:
        return 0

    def describe(self) -> str:
        return describe_rule(self)

    def __str__(self) -> str:
        return f"bad-sector {self.describe()}"


@dataclass(frozen=True)
class Breakpoint:
    """Suspend the request that raises ``event``, under ``tag`` (one-shot)."""

    event: str
    tag: str

    kind = "breakpoint"

    def __post_init__(self) -> None:
        if not isinstance(self.event, str) or not self.event:
            raise RuleError(
                f"Breakpoint: event must be a non-empty string, not {self.event!r}",
                kind=self.kind,
                attribute="event",
            )
        if not isinstance(self.tag, str) or not self.tag:
            raise RuleError(
                f"Breakpoint: tag must be a non-empty string, not {self.tag!r}",
                kind=self.kind,
                attribute="tag",
            )

    @property
    def name(self) -> str:
        return f"break:{self.tag}"

    @property
    def state(self) -> int:
        return 0

    def describe(self) -> str:
        return f"tag={self.tag}"

    def __str__(self) -> str:
        return f"breakpoint {self.event} {self.describe()}"


Rule = InjectError | SetState | BadSector
"""A rule that can live in a rule file."""

RULE_KINDS: dict[str, type[InjectError] | type[SetState] | type[BadSector]] = {
    "inject-error": InjectError,
    "set-state": SetState,
    "bad-sector": BadSector,
}


# ---------------------------------------------------------------------------
# Construction from keywords, names, help
# ---------------------------------------------------------------------------


def allowed_text(kind: str) -> str:
    """``(allowed: ...)`` for an unknown attribute: QEMU's first, then the extensions."""
    qemu = [a.name for a in SCHEMA[kind] if a.ini is not None]
    ext = [a.name for a in SCHEMA[kind] if a.ini is None]
    if not qemu:
        return f"(allowed: {', '.join(ext)})"
    text = f"(allowed: {', '.join(qemu)})"
    return f"{text} (extensions: {', '.join(ext)})" if ext else text


def make_rule(kind: str, attrs: dict[str, Any], *, where: str = "") -> Rule:
    """Build a rule of ``kind`` from keyword attributes, as markers and TOML do.

    Unknown attributes and missing required ones are a ``RuleError`` naming
    them (a dataclass would raise a bare ``TypeError``); so is every bad value.
    """
    prefix = f"{where}: " if where else ""
    cls = RULE_KINDS.get(kind)
    if cls is None:
        raise RuleError(f"{prefix}unknown rule kind {kind!r} (allowed: {', '.join(RULE_KINDS)})")
    schema = _ATTRS[kind]
    unknown = [k for k in attrs if k not in schema]
    if unknown:
        reason = f"unknown attribute {unknown[0]!r} {allowed_text(kind)}"
        raise RuleError(f"{prefix}{kind}: {reason}", kind=kind, attribute=unknown[0], reason=reason)
    try:
        for key, value in attrs.items():  # each value first: its error beats "missing ..."
            check(kind, schema[key], value)
        for attr in SCHEMA[kind]:
            if attr.required and attr.name not in attrs:
                reason = "missing event name" if attr.name == "event" else f"missing {attr.name}"
                reason += f" ({attr.help})" if attr.name != "event" else ""
                raise RuleError(f"{kind}: {reason}", kind=kind, attribute=attr.name, reason=reason)
        return cls(**attrs)
    except RuleError as exc:  # where it came from (a marker, a file's line) goes first
        if not prefix:
            raise
        raise RuleError(
            f"{prefix}{exc}", kind=exc.kind, attribute=exc.attribute, reason=exc.reason
        ) from None


#: What ``rule_name`` gives an unnamed rule: ``inject-error#2``.
GENERATED_NAME = re.compile(r"^(?:inject-error|set-state|bad-sector)#\d+$")


def rule_name(rule: Rule, position: int) -> str:
    """A rule's name in its engine: its own, else ``<kind>#<position + 1>``.

    The one place unnamed rules get their names: the engine, the marker code
    checking duplicates and the plugin's never-fired summary all call it, so
    the names agree (``position`` counts every rule of the engine, from 0).
    """
    return rule.name or f"{rule.kind}#{position + 1}"


def marker_help(kind: str) -> str:
    """The ``pytest --markers`` line for a rule marker, from the schema: the
    attribute names, then each one's values, default and meaning."""
    attrs = [a for a in SCHEMA[kind] if not a.required]
    names = ", ".join(a.name for a in attrs)
    details = "; ".join(
        f"{a.name}: {a.help} ({a.allowed()}, default {a.shown_default()})" for a in attrs
    )
    if kind == "inject-error":
        head = "inject_error(event, **attrs): an inject-error rule for this test's blkdebug disks"
    elif kind == "set-state":
        head = (
            "set_state(event, new_state, **attrs): a set-state rule for this test's blkdebug disks"
        )
    else:
        head = f"{kind.replace('-', '_')}(**attrs): a {kind} rule for this test's blkdebug disks"
    return f"{head} (attrs: {names}). {details}. See docs/rule-files.md."


def attribute_help(kind: str) -> list[tuple[str, str, str, str, str]]:
    """(attribute, allowed values, default, ini key or "not in ini", help) rows."""
    return [
        (a.name, a.allowed(), a.shown_default(), a.ini or "not in ini", a.help)
        for a in SCHEMA[kind]
    ]
