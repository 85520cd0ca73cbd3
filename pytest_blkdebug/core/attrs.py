"""One attribute's value type: its check, its range, how it is shown.

The rule schema (``rules.SCHEMA``) is a table of ``Attr`` rows; this module
holds what a row means: ``check`` validates and normalizes one value (the
errors name the rule kind and the attribute, as ``RuleError.kind`` and
``.attribute``), ``format_value`` shows one in reports and help, and
``TYPES`` says which Python (and TOML) types each value type accepts.
"""

from __future__ import annotations

import errno as errno_module
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .errors import RuleError, brief
from .events import DEFAULT_IOTYPES, IOTYPES

MAX_ERRNO = 4095


def class_name(kind: str) -> str:
    """``"inject-error"`` -> ``"InjectError"``: how errors name a rule kind."""
    return kind.title().replace("-", "")


#: Value types: (Python types a rule file or marker may give, how errors name them).
TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "event": ((str,), "a string"),
    "name": ((str,), "a string"),
    "int": ((int,), "an integer"),
    "float": ((int, float), "a number"),
    "bool": ((bool,), "true or false"),
    "errno": ((int, str), 'an errno number or name such as "ENOSPC"'),
    "iotype": ((str, list), "an iotype name or an array of them"),
    "choice": ((str,), "a string"),
}


@dataclass(frozen=True)
class Attr:
    """One attribute of one rule kind: the single place that describes it."""

    name: str
    type: str  # a key of TYPES
    default: Any
    help: str
    lo: float | None = None
    hi: float | None = None
    choices: tuple[str, ...] = ()
    #: QEMU ini key (``"id"`` is the group id), or None: not in ini, an extension.
    ini: str | None = None
    required: bool = False
    #: None is allowed and means "not set".
    optional: bool = False

    def allowed(self) -> str:
        """What values are allowed, for help texts and errors."""
        if self.choices:
            return "one of " + ", ".join(self.choices)
        if self.type == "iotype":
            return "iotype name(s): " + ", ".join(IOTYPES)
        if self.type == "errno":
            return f"errno number 0..{MAX_ERRNO} or name (EIO, ENOSPC, ...)"
        if self.type == "bool":
            return "true or false"
        if self.lo is not None and self.hi is not None:
            return f"{_num(self.lo)}..{_num(self.hi)}"
        return "a non-empty string"

    def shown_default(self) -> str:
        if self.required:
            return "required"
        if self.default is None:
            return "not set"
        return format_value(self, self.default)


def _num(value: float) -> str:
    """A number for an error message, short: an int in full up to 21 digits
    (every valid limit fits), a whole float as an int (``3600``, not
    ``3600.0``); past that, ``1e+300``, or an int's first digits and its
    length, rather than hundreds of digits."""
    if isinstance(value, int):
        text = str(value)
        digits = len(text.lstrip("-"))
        return text if digits <= 21 else f"{text[:8]}... ({digits} digits)"
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else f"{value:g}"


_KINDS = {class_name(k): k for k in ("inject-error", "set-state", "bad-sector")}


def fail(kind: str, attr: str | None, reason: str) -> RuleError:
    """A RuleError about one attribute of one rule kind."""
    return RuleError(f"{class_name(kind)}: {reason}", kind=kind, attribute=attr, reason=reason)


def parse_errno(value: object, *, what: str = "InjectError: errno") -> int:
    """An errno given as a number (``28``), a number in a string (``"28"``,
    as ini files spell it) or a name (``"ENOSPC"``)."""
    prefix, _, attr = what.rpartition(": ")
    kind = _KINDS.get(prefix)

    def fail(reason: str) -> RuleError:
        return RuleError(
            f"{prefix}: {reason}" if prefix else reason, kind=kind, attribute=attr, reason=reason
        )

    if isinstance(value, str):
        text = value.strip()
        if text.isdigit() and text.isascii():
            value = int(text)
        else:
            code = getattr(errno_module, text.upper(), None)
            if not isinstance(code, int) or not text.upper().startswith("E"):
                raise fail(f"unknown errno name {brief(value)} (use e.g. 'EIO' or 'ENOSPC')")
            return code
    if isinstance(value, bool) or not isinstance(value, int):
        raise fail(f"{attr} must be an errno number or name, not {brief(value)}")
    if not 0 <= value <= MAX_ERRNO:
        raise fail(f"{attr}={value} is out of range (0..{MAX_ERRNO})")
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
        raise fail(
            "inject-error",
            "iotype",
            f"iotype must be a name or a list of names, not {brief(value)}",
        ) from None
    bad = [n for n in result if n not in IOTYPES]
    if bad or not result:
        raise fail(
            "inject-error",
            "iotype",
            f"invalid iotype {brief(bad[0] if bad else value)} (allowed: {', '.join(IOTYPES)})",
        )
    return result


def check(kind: str, attr: Attr, value: Any) -> Any:
    """One attribute's value, validated and normalized, or a RuleError naming it."""
    a = attr.name
    if value is None and attr.optional:
        return None
    t = attr.type
    if t == "event":
        if not isinstance(value, str) or not value:
            raise fail(kind, a, f"event must be a non-empty string, not {brief(value)}")
        return value
    if t == "name":
        if not isinstance(value, str) or not value or any(c in value for c in '"\n\r'):
            raise fail(
                kind,
                a,
                f"name must be a non-empty string without quotes or newlines, not {brief(value)}",
            )
        return value
    if t == "bool":
        if not isinstance(value, bool):
            raise fail(kind, a, f"{a} must be True or False, not {brief(value)}")
        return value
    if t == "errno":
        code = parse_errno(value, what=f"{class_name(kind)}: {a}")
        if attr.lo is not None and code < attr.lo:
            raise fail(kind, a, f"{a}={code} is out of range ({_num(attr.lo)}..{MAX_ERRNO})")
        return code
    if t == "iotype":
        return parse_iotypes(value)
    if t == "choice":
        if value not in attr.choices:
            raise fail(kind, a, f"{a} must be one of {', '.join(attr.choices)}, not {brief(value)}")
        return value
    assert attr.lo is not None and attr.hi is not None
    if t == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail(kind, a, f"{a} must be an integer, not {brief(value)}")
    else:  # float
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail(kind, a, f"{a} must be a number, not {brief(value)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise fail(kind, a, f"{a} must be a finite number, not {brief(value)}")
    # Compared before any conversion: Python compares an int with a float
    # exactly, and an int too large for a float is then out of range, not
    # an OverflowError.
    if not attr.lo <= value <= attr.hi:
        raise fail(kind, a, f"{a}={_num(value)} is out of range ({_num(attr.lo)}..{_num(attr.hi)})")
    return value if t == "int" else float(value)


def format_value(attr: Attr, value: Any) -> str:
    """A value as the conditions column and the marker help show it."""
    if attr.type == "errno":
        return errno_name(value)
    if attr.type == "iotype":
        return ",".join(t for t in IOTYPES if t in value)
    if attr.type == "float":
        return f"{value:g}"
    return str(value)
