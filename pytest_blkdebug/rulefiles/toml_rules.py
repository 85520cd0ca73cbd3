"""The TOML rule-file reader (an extension: QEMU reads only its ini format).

``[[inject-error]]``, ``[[set-state]]`` and ``[[bad-sector]]`` arrays of
tables (or inline arrays of inline tables) with real types, and a top-level
``events = [...]`` of custom event names. Keys, their types and their
checks all come from the rule schema (``core.rules.SCHEMA``); this module
adds what a file needs: errors that name the file and the line.

``tomllib`` reports no line numbers for values, so ``_TomlLines`` finds them
afterwards, best effort. It indexes the text once (table headers, top-level
keys, keys per section, the opening brace of each inline table) so a file of
thousands of rules costs linear time, and it is only asked for a key's line
when that key is at fault.
"""

from __future__ import annotations

import re
import sys
from bisect import bisect_left
from collections.abc import Callable
from types import ModuleType
from typing import Any, cast

from ..core.errors import RuleError, RuleFileError, brief
from ..core.events import EventRegistry, register_events, unknown_name_message
from ..core.rules import RULE_KINDS, SCHEMA, TYPES, Rule, attrs_of, make_rule

__all__ = ["TOML_TOP", "parse_toml"]

TOML_TOP: tuple[str, ...] = ("events", *RULE_KINDS)

# A bare, "basic" or 'literal' key at the start of a line, then = or . (dotted key).
_KEY_LINE = re.compile(r"""\s*(?:"([^"]*)"|'([^']*)'|([A-Za-z0-9_-]+))\s*[.=]""")
_HEADER = re.compile(r"""\s*\[(\[?)\s*(?:"([^"]*)"|'([^']*)'|([A-Za-z0-9_-]+))\s*([.\]])""")
_SUBKEY = re.compile(
    r"""\s*\[\[?\s*(?:"[^"]*"|'[^']*'|[A-Za-z0-9_-]+)\s*\.\s*"""
    r"""(?:"([^"]*)"|'([^']*)'|([A-Za-z0-9_-]+))"""
)
_LONG_INT = re.compile(r"[0-9_]{4000,}")


def _tomllib() -> ModuleType:
    # Imported on first use so the ini reader works without tomli on 3.10.
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        try:
            # tomli ships its types; the ignore is for a 3.10 without it installed.
            import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]
        except ModuleNotFoundError:
            raise RuleError(
                "reading TOML rule files on Python 3.10 needs 'tomli' (pip install tomli)"
            ) from None
    return cast(ModuleType, tomllib)  # tomli is untyped where it is absent


def _first(match: re.Match[str], *groups: int) -> str:
    return next(g for g in (match.group(i) for i in groups) if g is not None)


class _TomlLines:
    """Best-effort line numbers (1-based), from one pass over the text."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        #: per kind, the line of each ``[[kind]]`` header, in order
        self.headers: dict[str, list[int]] = {}
        #: top-level key -> first line that names it (a key, a [table] or [[array]])
        self.top: dict[str, int] = {}
        self.section_end: dict[int, int] = {}  # header line -> line after its section
        self.braces: list[int] = []  # the line of every '{' outside a header, in order
        self._keys: dict[int, dict[str, int]] = {}  # header line -> its keys' lines
        self._subkeys: dict[int, dict[str, int]] = {}  # [[kind]] line -> [kind.key] lines
        section = 0  # header line of the current section (0: top level)
        array, array_name = 0, ""  # the last [[kind]] header
        for n, line in enumerate(self.lines, 1):
            header = _HEADER.match(line)
            if header:
                name = _first(header, 2, 3, 4)
                self.top.setdefault(name, n)
                if header.group(1) and header.group(5) == "]":
                    self.headers.setdefault(name, []).append(n)
                    array, array_name = n, name
                elif header.group(5) == "." and name == array_name:
                    sub = _SUBKEY.match(line)
                    if sub:
                        self._subkeys.setdefault(array, {}).setdefault(_first(sub, 1, 2, 3), n)
                self.section_end[section] = n
                section = n
                continue
            if section == 0:
                key = _KEY_LINE.match(line)
                if key:
                    self.top.setdefault(_first(key, 1, 2, 3), n)
            self.braces.extend([n] * line.count("{"))
        self.section_end[section] = len(self.lines) + 1

    def top_key(self, key: str) -> int | None:
        return self.top.get(key)

    def _section_keys(self, header: int) -> dict[str, int]:
        keys = self._keys.get(header)
        if keys is None:
            keys = self._keys[header] = {}
            for n in range(header + 1, self.section_end.get(header, header + 1)):
                m = _KEY_LINE.match(self.lines[n - 1])
                if m:
                    keys.setdefault(_first(m, 1, 2, 3), n)
        return keys

    def key_in_table(self, table_line: int | None, key: str | None) -> int | None:
        """The line of ``key`` in the ``[[kind]]`` table starting at
        ``table_line`` (the table's own line when not found there)."""
        if table_line is None or key is None or table_line not in self.section_end:
            return table_line
        found = self._section_keys(table_line).get(key)
        if found is None:
            found = self._subkeys.get(table_line, {}).get(key, table_line)
        return found

    def inline_table(self, kind: str, index: int) -> int | None:
        """The line of the ``index``-th inline table of ``kind = [...]``."""
        start = self.top.get(kind)
        if start is None:
            return None
        first = bisect_left(self.braces, start)
        if first + index >= len(self.braces):
            return start
        return self.braces[first + index]


def _type_name(value: object) -> str:
    return {bool: "a boolean", int: "an integer", str: "a string", float: "a float",
            list: "an array", dict: "a table"}.get(type(value), type(value).__name__)  # fmt: skip


def _toml_error(exc: Exception, text: str) -> tuple[str, int | None]:
    message = str(exc)
    line = getattr(exc, "lineno", None)
    m = re.match(r"^(.*) \(at line (\d+), column \d+\)$", message, re.DOTALL)
    if m:
        message, line = m.group(1), line or int(m.group(2))
    m = re.match(r"^(.*) \(at end of document\)$", message, re.DOTALL)
    if m:
        message, line = m.group(1), line or max(1, len(text.splitlines()))
    msg = getattr(exc, "msg", None)
    if isinstance(msg, str) and msg:
        message = msg
    return message, line


def _decode(data: bytes, path: str) -> dict[str, Any]:
    """The TOML document, or a RuleFileError naming the file and line."""
    try:
        tomllib = _tomllib()
    except RuleError as exc:  # pragma: no cover - Python 3.10 without tomli
        raise RuleFileError(path, None, str(exc)) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line: int | None = data.count(b"\n", 0, exc.start) + 1
        raise RuleFileError(path, line, f"not valid UTF-8 ({exc.reason})") from None
    try:
        doc: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message, line = _toml_error(exc, text)
        raise RuleFileError(path, line, f"TOML syntax error: {message}") from None
    except RecursionError:
        raise RuleFileError(path, None, "TOML syntax error: nesting too deep") from None
    except ValueError as exc:
        # Python refuses to convert integers of more than 4,300 digits
        # (sys.set_int_max_str_digits): far beyond any rule's range anyway.
        m = _LONG_INT.search(text)
        line = text.count("\n", 0, m.start()) + 1 if m else None
        raise RuleFileError(path, line, f"number too large ({exc})") from None
    return doc


def parse_toml(data: bytes, path: str, registry: EventRegistry) -> list[Rule]:
    """The rules of a TOML rule file, in file order; registers its ``events``
    in ``registry`` only once the whole file is valid."""
    doc = _decode(data, path)
    where = _TomlLines(data.decode("utf-8"))

    def fail(line: int | None, message: str, attribute: str | None = None) -> RuleFileError:
        return RuleFileError(path, line, message, attribute=attribute)

    for key in doc:
        if key not in TOML_TOP:
            raise fail(
                where.top_key(key),
                f"unknown top-level key {key!r} (allowed: {', '.join(TOML_TOP)})",
            )
    # Register custom events in a scratch registry: the caller's registry is
    # only touched once the whole file is valid.
    scratch = EventRegistry(registry.custom)
    events = doc.get("events", [])
    if not isinstance(events, list) or not all(isinstance(e, str) for e in events):
        raise fail(where.top_key("events"), "events must be an array of event names (strings)")
    for name in events:
        try:
            scratch.register(name)
        except RuleError as exc:
            raise fail(where.top_key("events"), str(exc)) from None

    placed: list[tuple[int, int, int, Rule]] = []
    for kind_no, kind in enumerate(RULE_KINDS):
        tables = doc.get(kind, [])
        if not isinstance(tables, list):
            raise fail(
                where.top_key(kind),
                f"{kind} must be an array of tables: write [[{kind}]], not [{kind}]",
            )
        headers = where.headers.get(kind, [])
        for i, table in enumerate(tables):
            line = headers[i] if i < len(headers) else where.inline_table(kind, i - len(headers))
            if not isinstance(table, dict):
                raise fail(line, f"{kind} entries must be tables, not {_type_name(table)}")

            def at(key: str | None, line: int | None = line) -> int | None:
                return where.key_in_table(line, key)

            rule = _toml_rule(kind, table, line, at, scratch, fail)
            placed.append((line or 0, kind_no, i, rule))
    register_events(registry, events)
    return [rule for *_, rule in sorted(placed, key=lambda p: p[:3])]


def _toml_rule(
    kind: str,
    table: dict[str, Any],
    line: int | None,
    at: Callable[[str | None], int | None],
    registry: EventRegistry,
    fail: Callable[..., RuleFileError],
) -> Rule:
    """One table as a rule: keys and types from the schema, values checked by the rule."""
    schema = attrs_of(kind)
    allowed = ", ".join(a.name for a in SCHEMA[kind])
    for key, value in table.items():
        attr = schema.get(key)
        if attr is None:
            raise fail(at(key), f"[[{kind}]]: unknown key {brief(key)} (allowed: {allowed})", key)
        types, wanted = TYPES[attr.type]
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if ok and attr.type == "iotype" and isinstance(value, list):
            ok = all(isinstance(v, str) for v in value)
        if not ok:
            raise fail(
                at(key),
                f"[[{kind}]]: {key} must be {wanted}, not {_type_name(value)} {brief(value)}",
                key,
            )
    if "event" in schema and "event" in table and table["event"] not in registry:
        raise fail(
            at("event"),
            f"[[{kind}]]: " + unknown_name_message("event", table["event"], registry.names),
            "event",
        )
    try:
        return make_rule(kind, table)
    except RuleError as exc:
        bad = exc.attribute if exc.attribute in table else None
        raise fail(at(bad) if bad else line, f"[[{kind}]]: {exc.reason}", exc.attribute) from None
