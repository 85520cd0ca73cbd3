"""Rule data: immutable, validated at construction.

Three kinds, as in QEMU's blkdebug: ``InjectError`` (armed by an event, fails
matching requests), ``SetState`` (moves the engine's state on an event) and
``Breakpoint`` (suspends the request that raises an event; created at run time
with ``Disk.break_on``, never read from a rule file). Event names are checked
against a registry when a rule joins an engine, not here, because custom
events are per-engine.
"""

from __future__ import annotations

import errno as errno_module
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .errors import RuleError
from .events import DEFAULT_IOTYPES, IOTYPES

#: Largest sector whose byte offset still fits QEMU's int64 arithmetic.
MAX_SECTOR = (1 << 63) // 512 - 1
MAX_STATE = (1 << 31) - 1
MAX_ERRNO = 4095


def _kind_name(obj: object) -> str:
    return type(obj).__name__


def _check_int(rule: object, attr: str, value: object, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RuleError(f"{_kind_name(rule)}: {attr} must be an integer, not {value!r}")
    if not lo <= value <= hi:
        raise RuleError(f"{_kind_name(rule)}: {attr}={value} is out of range ({lo}..{hi})")
    return value


def _check_bool(rule: object, attr: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise RuleError(f"{_kind_name(rule)}: {attr} must be True or False, not {value!r}")
    return value


def _check_event(rule: object, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise RuleError(f"{_kind_name(rule)}: event must be a non-empty string, not {value!r}")
    return value


def _check_name(rule: object, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or any(c in value for c in '"\n\r'):
        raise RuleError(
            f"{_kind_name(rule)}: name must be a non-empty string without quotes or "
            f"newlines, not {value!r}"
        )
    return value


def parse_errno(value: object, *, what: str = "InjectError: errno") -> int:
    """An errno given as a number (``28``) or a name (``"ENOSPC"``)."""
    if isinstance(value, str):
        code = getattr(errno_module, value.strip().upper(), None)
        if not isinstance(code, int) or not value.strip().upper().startswith("E"):
            raise RuleError(f"{what}: unknown errno name {value!r} (use e.g. 'EIO' or 'ENOSPC')")
        return code
    if isinstance(value, bool) or not isinstance(value, int):
        raise RuleError(f"{what} must be an errno number or name, not {value!r}")
    if not 0 <= value <= MAX_ERRNO:
        raise RuleError(f"{what}={value} is out of range (0..{MAX_ERRNO})")
    return value


def errno_name(code: int) -> str:
    """``28`` -> ``"ENOSPC"``; numbers without a name stay numbers."""
    return errno_module.errorcode.get(code, str(code))


def parse_iotypes(value: object) -> frozenset[str]:
    """``None`` (QEMU's default set), one iotype name, or a collection of them."""
    if value is None:
        return DEFAULT_IOTYPES
    names: Iterable[Any] = (value,) if isinstance(value, str) else value  # type: ignore[assignment]
    try:
        result = frozenset(names)
    except TypeError:
        raise RuleError(
            f"InjectError: iotype must be a name or a list of names, not {value!r}"
        ) from None
    bad = [n for n in result if n not in IOTYPES]
    if bad or not result:
        raise RuleError(
            f"InjectError: invalid iotype {bad[0] if bad else value!r} "
            f"(allowed: {', '.join(IOTYPES)})"
        )
    return result


@dataclass(frozen=True)
class InjectError:
    """Fail requests once an event arms this rule (QEMU's ``[inject-error]``).

    ``sector`` is a 512-byte sector whose first byte a request must contain
    (-1: any request); ``errno`` 0 lets the matching request through while
    still shadowing the rules armed behind it.
    """

    event: str
    errno: int = errno_module.EIO
    sector: int = -1
    once: bool = False
    immediately: bool = False
    iotype: frozenset[str] = field(default=DEFAULT_IOTYPES)
    state: int = 0
    name: str | None = None

    kind = "inject-error"

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "event", _check_event(self, self.event))
        set_(self, "errno", parse_errno(self.errno))
        set_(self, "sector", _check_int(self, "sector", self.sector, -1, MAX_SECTOR))
        set_(self, "once", _check_bool(self, "once", self.once))
        set_(self, "immediately", _check_bool(self, "immediately", self.immediately))
        set_(self, "iotype", parse_iotypes(self.iotype))
        set_(self, "state", _check_int(self, "state", self.state, 0, MAX_STATE))
        set_(self, "name", _check_name(self, self.name))

    def describe(self) -> str:
        """Conditions and effect in one short line, for reports."""
        parts = [f"errno={errno_name(self.errno)}"]
        if self.state:
            parts.append(f"state={self.state}")
        if self.sector >= 0:
            parts.append(f"sector={self.sector}")
        if self.iotype != DEFAULT_IOTYPES:
            parts.append("iotype=" + ",".join(t for t in IOTYPES if t in self.iotype))
        if self.once:
            parts.append("once")
        if self.immediately:
            parts.append("immediately")
        return " ".join(parts)

    def __str__(self) -> str:
        return f"inject-error {self.event} {self.describe()}"


@dataclass(frozen=True)
class SetState:
    """Move the engine to ``new_state`` when ``event`` fires (``[set-state]``)."""

    event: str
    new_state: int = 0
    state: int = 0
    name: str | None = None

    kind = "set-state"

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "event", _check_event(self, self.event))
        set_(self, "new_state", _check_int(self, "new_state", self.new_state, 0, MAX_STATE))
        set_(self, "state", _check_int(self, "state", self.state, 0, MAX_STATE))
        set_(self, "name", _check_name(self, self.name))

    def describe(self) -> str:
        cond = f"state={self.state} " if self.state else ""
        return f"{cond}-> {self.new_state}"

    def __str__(self) -> str:
        return f"set-state {self.event} {self.describe()}"


@dataclass(frozen=True)
class Breakpoint:
    """Suspend the request that raises ``event``, under ``tag`` (one-shot)."""

    event: str
    tag: str

    kind = "breakpoint"

    def __post_init__(self) -> None:
        _check_event(self, self.event)
        if not isinstance(self.tag, str) or not self.tag:
            raise RuleError(f"Breakpoint: tag must be a non-empty string, not {self.tag!r}")

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


Rule = InjectError | SetState
"""A rule that can live in a rule file."""

RULE_KINDS: dict[str, type[InjectError] | type[SetState]] = {
    "inject-error": InjectError,
    "set-state": SetState,
}


def make_rule(kind: str, attrs: dict[str, Any], *, where: str = "") -> Rule:
    """Build a rule of ``kind`` from keyword attributes, as markers and TOML do.

    Unknown attributes are a ``RuleError`` naming them and listing the allowed
    ones (a dataclass would raise a bare ``TypeError``).
    """
    prefix = f"{where}: " if where else ""
    cls = RULE_KINDS.get(kind)
    if cls is None:
        raise RuleError(f"{prefix}unknown rule kind {kind!r} (allowed: {', '.join(RULE_KINDS)})")
    allowed = [f for f in cls.__dataclass_fields__]
    unknown = [k for k in attrs if k not in allowed]
    if unknown:
        raise RuleError(
            f"{prefix}{kind}: unknown attribute {unknown[0]!r} (allowed: {', '.join(allowed)})"
        )
    if "event" not in attrs:
        raise RuleError(f"{prefix}{kind}: missing event name")
    try:
        return cls(**attrs)
    except RuleError as exc:
        raise RuleError(f"{prefix}{exc}") from None


def strerror(code: int) -> str:
    return os.strerror(code)
