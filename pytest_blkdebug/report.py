"""Plain-text views of an engine: state, history, rule table, trace, properties.

Pure functions over a ``Disk`` or an ``Engine``: no pytest, no I/O. The pytest
plugin puts them in the ``blkdebug`` report section and in JUnit properties;
``blkdebug-io --report`` prints the same text. Reading an engine through
these functions never changes it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Union

from .core.engine import Engine, RuleStatus, StateChange, TraceEntry
from .core.rules import errno_name

if TYPE_CHECKING:
    from .core.disk import Disk

__all__ = [
    "TRACE_TAIL",
    "format_bad_sectors",
    "format_history",
    "format_report",
    "format_rules",
    "format_size",
    "format_trace",
    "report_properties",
    "rule_rows",
    "trace_rows",
]

#: How many trace entries a report shows by default (the engine keeps 64).
TRACE_TAIL = 20
#: How many state changes a report shows by default.
HISTORY_TAIL = 20

Target = Union["Disk", Engine]


def _engine(target: Target) -> Engine:
    return target if isinstance(target, Engine) else target.engine


def format_size(size: int) -> str:
    """``67108864`` -> ``"64 MiB"``; sizes that are not a whole unit stay bytes."""
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if size >= 1 << shift and size % (1 << shift) == 0:
            return f"{size >> shift} {unit}"
    return f"{size} bytes"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "  ") -> list[str]:
    """Left-aligned columns; the last column is not padded."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = []
    for row in (headers, *rows):
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])] + [row[-1]]
        lines.append((indent + "  ".join(cells)).rstrip())
    return lines


RULE_HEADERS = ("name", "kind", "event", "conditions", "armed", "hits", "consumed", "active")


def rule_rows(rules: Iterable[RuleStatus]) -> list[tuple[str, ...]]:
    """One row of strings per rule, in definition order (see ``RULE_HEADERS``).

    ``armed`` means nothing for set-state and bad-sector rules, ``consumed``
    and ``active`` nothing for set-state rules: they show ``-`` (a bad-sector
    rule is active while a sector is bad, consumed once all are healed).
    """
    rows: list[tuple[str, ...]] = []
    for status in rules:
        inject = status.kind == "inject-error"
        lasting = inject or status.kind == "bad-sector"
        rows.append(
            (
                status.name,
                status.kind,
                status.event,
                status.rule.describe(),
                str(status.armed) if inject else "-",
                str(status.hits),
                ("yes" if status.consumed else "no") if lasting else "-",
                ("yes" if status.active else "no") if lasting else "-",
            )
        )
    return rows


def format_bad_sectors(target: Target) -> list[str]:
    """``bad sectors still bad: 9-10 (dust)``, or nothing when none is left."""
    runs = _engine(target).bad_sectors
    if not runs:
        return []
    shown = ", ".join(
        f"{first}-{first + count - 1} ({name})" if count > 1 else f"{first} ({name})"
        for name, first, count in runs[:20]
    )
    more = f" and {len(runs) - 20} more runs" if len(runs) > 20 else ""
    return [f"bad sectors still bad: {shown}{more}"]


def format_rules(target: Target) -> list[str]:
    """The rule table, or a line saying there are no rules."""
    rules = _engine(target).rules
    if not rules:
        return ["rules: none"]
    return [f"rules ({len(rules)}):", *_table(RULE_HEADERS, rule_rows(rules))]


def format_history(target: Target, tail: int = HISTORY_TAIL) -> str:
    """``"1 -> 2 (write_aio), 2 -> 3 (flush_to_disk)"``: the last ``tail`` changes."""
    engine = _engine(target)
    history: list[StateChange] = engine.history
    total = engine.transitions
    if not total:
        return "no state changes"
    shown = history[-tail:] if tail > 0 else []
    text = ", ".join(f"{c.old} -> {c.new} ({c.event})" for c in shown)
    hidden = total - len(shown)
    if hidden:
        text = f"({hidden} earlier not shown) {text}" if text else f"{hidden} changes not shown"
    return text


TRACE_HEADERS = ("what", "request", "result", "state")


def trace_rows(entries: Iterable[TraceEntry]) -> list[tuple[str, ...]]:
    """One row per event or request; a failed request names its rule."""
    rows: list[tuple[str, ...]] = []
    for entry in entries:
        if entry.kind == "event":
            rows.append(("event", entry.name, "", str(entry.state)))
            continue
        where = f"{entry.length} bytes at {entry.offset}" if entry.kind != "flush" else ""
        rule = entry.rule
        if rule is None:
            result = "ok"
        elif entry.errno == 0:
            result = {
                "skipped": f"ok (let through by rule {rule!r}: after/probability)",
                "delay": f"ok, delayed by rule {rule!r}",
                "corrupt": f"ok, data corrupted by rule {rule!r}",
                "lost": f"ok, but not stored: lost by rule {rule!r}",
                "misdirect": f"ok, but stored elsewhere: misdirected by rule {rule!r}",
            }.get(entry.effect, f"ok (let through by rule {rule!r}, errno=0)")
        else:
            result = (
                f"{errno_name(entry.errno)} {os.strerror(entry.errno)!r} by rule {entry.rule!r}"
            )
        rows.append((entry.kind, where, result, str(entry.state)))
    return rows


def format_trace(target: Target, tail: int = TRACE_TAIL) -> list[str]:
    """The last ``tail`` trace entries as a table (state: after the entry).

    The engine records requests that an armed rule could have decided and
    the events that have rules; other traffic is not traced.
    """
    entries = _engine(target).trace
    if not entries:
        return ["trace: empty"]
    shown = entries[-tail:] if tail > 0 else []
    head = (
        f"trace (last {len(shown)} of {len(entries)} kept):"
        if len(shown) < len(entries)
        else f"trace ({len(entries)}):"
    )
    return [head, *_table(TRACE_HEADERS, trace_rows(shown))]


def format_report(
    target: Target,
    *,
    title: str | None = None,
    trace_tail: int = TRACE_TAIL,
    history_tail: int = HISTORY_TAIL,
) -> str:
    """Everything about one engine in a few lines: the text of a report section.

    ``title`` defaults to the disk's path and size (for a ``Disk``) or
    ``engine`` (for an ``Engine``).
    """
    engine = _engine(target)
    if title is None:
        if isinstance(target, Engine):
            title = "engine"
        else:
            title = f"disk {target.path} ({format_size(target.size)})"
    lines = [
        title,
        f"state: {engine.state}",
        f"history: {format_history(engine, history_tail)}",
        *format_rules(engine),
        *format_bad_sectors(engine),
        *format_trace(engine, trace_tail),
    ]
    return "\n".join(lines)


def report_properties(target: Target, prefix: str = "blkdebug") -> list[tuple[str, int]]:
    """``(name, value)`` pairs for JUnit XML / ``record_property``.

    ``<prefix>.state`` and ``<prefix>.rule.<name>.hits`` for every rule, as
    plain ``str``/``int`` so pytest-xdist can carry them between processes.
    """
    engine = _engine(target)
    props: list[tuple[str, int]] = [(f"{prefix}.state", engine.state)]
    props.extend((f"{prefix}.rule.{s.name}.hits", s.hits) for s in engine.rules)
    return props
