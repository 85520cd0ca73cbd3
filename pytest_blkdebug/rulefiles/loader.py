"""Rule files: QEMU's blkdebug ini format (read and write) and TOML (extension).

``load_rules(path)`` picks the reader by suffix: ``.ini``, ``.cfg`` and
``.conf`` are QEMU ini files, accepted and rejected exactly as QEMU 7.2's
``qemu-io`` does, with QEMU's own error texts; ``.toml`` files use
``[[inject-error]]`` / ``[[set-state]]`` arrays of tables with real types.
Every error is a ``RuleFileError`` naming the file and, where there is one,
the line. Where QEMU silently accepts something that is almost certainly a
mistake (text after a closing quote, a duplicate key, a number QEMU wraps),
the file loads as QEMU loads it and a ``RuleFileWarning`` says why.

The QEMU ini emulation itself lives in ``qemu_ini``; this module reads the
file, names it in errors and warnings, and holds the TOML reader.

``dump_ini``/``dump_toml`` write rules back out and ``save_rules`` writes a
file atomically; a file loaded, dumped and loaded again gives equal rules.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, Union

from ..core.errors import RuleError, RuleFileError
from ..core.events import (
    DEFAULT_IOTYPES,
    IOTYPES,
    QEMU_EVENT_SET,
    EventRegistry,
    register_events,
    unknown_name_message,
)
from ..core.rules import RULE_KINDS, InjectError, Rule, SetState, errno_name
from .qemu_ini import ID_HINT as ID_HINT  # re-exported: it used to live here
from .qemu_ini import ID_MAX, IniFail, id_wellformed, parse_ini

__all__ = [
    "INI_SUFFIXES",
    "TOML_SUFFIXES",
    "RuleFileWarning",
    "UnsupportedValueError",
    "dump_ini",
    "dump_toml",
    "load_rules",
    "loads_ini",
    "loads_toml",
    "save_rules",
]

PathLike = Union[str, "os.PathLike[str]"]

INI_SUFFIXES: tuple[str, ...] = (".ini", ".cfg", ".conf")
TOML_SUFFIXES: tuple[str, ...] = (".toml",)


class RuleFileWarning(UserWarning):
    """A rule file loads, but probably not the way its author meant.

    ``path``, ``line`` and ``text`` say where and what; ``str()`` is
    ``"path:line: text"``.
    """

    def __init__(self, path: str, line: int | None, text: str) -> None:
        self.path = str(path)
        self.line = line
        self.text = text
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {text}")

    def __reduce__(self) -> tuple[object, ...]:
        # Keep path/line/text across pickling (pytest-xdist, multiprocessing).
        return (type(self), (self.path, self.line, self.text))


class UnsupportedValueError(RuleFileError):
    """QEMU accepts this ini value, but pytest-blkdebug cannot model it.

    QEMU stores ``errno``, ``state`` and ``new_state`` in a C ``int``: a value
    that becomes negative there (``"-1"``, ``"0xffffffff"``) or an errno above
    4095 is accepted by ``qemu-io`` with meaningless results. pytest-blkdebug
    refuses these files instead; it is the one documented difference in what
    the ini reader accepts.
    """


# ---------------------------------------------------------------------------
# Helpers shared by the readers and writers
# ---------------------------------------------------------------------------


def _suffix(path: PathLike) -> str:
    return Path(os.fspath(path)).suffix.lower()


def _unsupported_type(path: str, suffix: str) -> RuleFileError:
    return RuleFileError(
        path,
        None,
        f"unsupported rule file type ({suffix or 'no suffix'}); "
        f"allowed suffixes: {', '.join(INI_SUFFIXES + TOML_SUFFIXES)}",
    )


def _read_bytes(path: PathLike, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise RuleFileError(os.fspath(path), None, f"Could not read {what}: {reason}") from None


def _emit(collected: list[RuleFileWarning], stacklevel: int) -> None:
    for warning in collected:
        warnings.warn(warning, stacklevel=stacklevel + 1)


def load_rules(path: PathLike, *, registry: EventRegistry | None = None) -> list[Rule]:
    """Read the rules of one rule file, in definition order.

    The suffix picks the format: ``.ini``/``.cfg``/``.conf`` (QEMU's blkdebug
    config) or ``.toml``. Event names are checked against ``registry`` (a
    fresh ``EventRegistry()`` by default: QEMU's 48 names); a TOML file's
    ``events = [...]`` are registered in it, so pass your engine's registry
    to collect them. Raises ``RuleFileError`` naming the file (and line);
    warns with ``RuleFileWarning`` about what QEMU accepts but is probably a
    mistake.
    """
    name = os.fspath(path)
    suffix = _suffix(name)
    if registry is None:
        registry = EventRegistry()
    if suffix in INI_SUFFIXES:
        data = _read_bytes(name, "blkdebug config file")
        rules, collected = _parse_ini(data, name, registry)
    elif suffix in TOML_SUFFIXES:
        data = _read_bytes(name, "rule file")
        rules, collected = _parse_toml(data, name, registry)
    else:
        raise _unsupported_type(name, suffix)
    _emit(collected, stacklevel=2)
    return rules


def loads_ini(
    data: bytes | str, *, path: str = "<string>", registry: EventRegistry | None = None
) -> list[Rule]:
    """``load_rules`` for QEMU ini text already in memory (``path`` names it in errors)."""
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    rules, collected = _parse_ini(raw, path, registry if registry is not None else EventRegistry())
    _emit(collected, stacklevel=2)
    return rules


def loads_toml(
    data: bytes | str, *, path: str = "<string>", registry: EventRegistry | None = None
) -> list[Rule]:
    """``load_rules`` for TOML text already in memory (``path`` names it in errors)."""
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    rules, collected = _parse_toml(raw, path, registry if registry is not None else EventRegistry())
    _emit(collected, stacklevel=2)
    return rules


def _parse_ini(
    data: bytes, path: str, registry: EventRegistry
) -> tuple[list[Rule], list[RuleFileWarning]]:
    """The QEMU ini reader (``qemu_ini``) with its failures and warnings named by ``path``."""
    try:
        rules, found = parse_ini(data, registry)
    except IniFail as fail:
        cls = UnsupportedValueError if fail.unsupported else RuleFileError
        raise cls(path, fail.line, fail.message) from None
    return rules, [RuleFileWarning(path, line, text) for line, text in found]


# ---------------------------------------------------------------------------
# TOML reader (extension)
# ---------------------------------------------------------------------------

_TOML_KEYS: dict[str, tuple[str, ...]] = {
    "inject-error": (
        "name",
        "event",
        "state",
        "errno",
        "sector",
        "iotype",
        "once",
        "immediately",
    ),
    "set-state": ("name", "event", "state", "new_state"),
}
_TOML_TOP = ("events", "inject-error", "set-state")


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
    return tomllib


def _key_pattern(key: str) -> str:
    k = re.escape(key)
    return rf"(?:{k}|\"{k}\"|'{k}')"


class _TomlLines:
    """Best-effort line numbers: tomllib does not report them for values."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()

    def _find(self, pattern: str, start: int = 0, stop: int | None = None) -> list[int]:
        rx = re.compile(pattern)
        end = len(self.lines) if stop is None else stop
        return [n + 1 for n in range(start, end) if rx.match(self.lines[n])]

    def tables(self, kind: str) -> list[int]:
        return self._find(rf"\s*\[\[\s*{_key_pattern(kind)}\s*\]\]")

    def top_key(self, key: str) -> int | None:
        hits = self._find(rf"\s*(?:\[+\s*)?{_key_pattern(key)}\s*(?:[.=\]])")
        return hits[0] if hits else None

    def key_in_table(self, table_line: int | None, key: str) -> int | None:
        if table_line is None:
            return None
        end = len(self.lines)
        for n in range(table_line, len(self.lines)):
            if self.lines[n].lstrip().startswith("["):
                end = n
                break
        hits = self._find(rf"\s*{_key_pattern(key)}\s*[.=]", table_line, end)
        if not hits:  # a sub-table: [inject-error.key]
            hits = self._find(rf"\s*\[+[^\]]*\.\s*{_key_pattern(key)}\s*[.\]]", end)
        return hits[0] if hits else table_line


def _type_name(value: object) -> str:
    return {bool: "a boolean", int: "an integer", str: "a string", float: "a float",
            list: "an array", dict: "a table"}.get(type(value), type(value).__name__)  # fmt: skip


def _parse_toml(
    data: bytes, path: str, registry: EventRegistry
) -> tuple[list[Rule], list[RuleFileWarning]]:
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
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message, line = _toml_error(exc, text)
        raise RuleFileError(path, line, f"TOML syntax error: {message}") from None
    except RecursionError:
        raise RuleFileError(path, None, "TOML syntax error: nesting too deep") from None
    where = _TomlLines(text)

    def fail(line: int | None, message: str) -> RuleFileError:
        return RuleFileError(path, line, message)

    for key in doc:
        if key not in _TOML_TOP:
            raise fail(
                where.top_key(key),
                f"unknown top-level key {key!r} (allowed: {', '.join(_TOML_TOP)})",
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
    for kind_no, kind in enumerate(("inject-error", "set-state")):
        tables = doc.get(kind, [])
        if not isinstance(tables, list):
            raise fail(
                where.top_key(kind),
                f"{kind} must be an array of tables: write [[{kind}]], not [{kind}]",
            )
        headers = where.tables(kind)
        for i, table in enumerate(tables):
            line = headers[i] if i < len(headers) else where.top_key(kind)
            if not isinstance(table, dict):
                raise fail(line, f"{kind} entries must be tables, not {_type_name(table)}")
            rule = _toml_rule(kind, table, line, where, scratch, fail)
            placed.append((line or 0, kind_no, i, rule))
    register_events(registry, events)
    return [rule for *_, rule in sorted(placed, key=lambda p: p[:3])], []


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


_TOML_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "name": ((str,), "a string"),
    "event": ((str,), "a string"),
    "state": ((int,), "an integer"),
    "new_state": ((int,), "an integer"),
    "sector": ((int,), "an integer"),
    "errno": ((int, str), 'an errno number or name such as "ENOSPC"'),
    "once": ((bool,), "true or false"),
    "immediately": ((bool,), "true or false"),
    "iotype": ((str, list), "an iotype name or an array of them"),
}


def _toml_rule(
    kind: str,
    table: dict[str, Any],
    line: int | None,
    where: _TomlLines,
    registry: EventRegistry,
    fail: Any,
) -> Rule:
    allowed = _TOML_KEYS[kind]
    for key, value in table.items():
        key_line = where.key_in_table(line, key)
        if key not in allowed:
            raise fail(
                key_line,
                f"[[{kind}]]: unknown key {key!r} (allowed: {', '.join(allowed)})",
            )
        types, wanted = _TOML_TYPES[key]
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if ok and key == "iotype" and isinstance(value, list):
            ok = all(isinstance(v, str) for v in value)
        if not ok:
            raise fail(
                key_line,
                f"[[{kind}]]: {key} must be {wanted}, not {_type_name(value)} {value!r}",
            )
    if "event" not in table:
        raise fail(line, f"[[{kind}]]: missing event name")
    if table["event"] not in registry:
        raise fail(
            where.key_in_table(line, "event"),
            f"[[{kind}]]: " + unknown_name_message("event", table["event"], registry.names),
        )
    try:
        return RULE_KINDS[kind](**table)
    except RuleError as exc:
        # rules.py says "InjectError: <attribute> ..." (or "... invalid iotype").
        text = re.sub(r"^(?:InjectError|SetState): ", "", str(exc))
        m = re.match(r"(\w+)", text)
        bad = m.group(1) if m and m.group(1) in table else None
        if bad is None and "iotype" in text:
            bad = "iotype"
        at = where.key_in_table(line, bad) if bad else line
        raise fail(at, f"[[{kind}]]: {text}") from None


# ---------------------------------------------------------------------------
# Writers
# ---------------------------------------------------------------------------


def _check_rules(rules: Iterable[Rule]) -> list[Rule]:
    out = list(rules)
    for rule in out:
        if not isinstance(rule, (InjectError, SetState)):
            raise RuleError(
                f"only inject-error and set-state rules can be written to a rule file, not {rule!r}"
            )
    return out


def _iotype_list(rule: InjectError) -> list[str]:
    return [t for t in IOTYPES if t in rule.iotype]


def dump_ini(rules: Iterable[Rule]) -> str:
    """The rules as a QEMU blkdebug config file (``qemu-io`` reads it).

    A rule's ``name`` becomes the group id (``[inject-error "name"]``), which
    QEMU accepts and ignores, so it must be a QEMU identifier (a letter, then
    letters, digits, ``-``, ``.``, ``_``; at most 63) and unique among the
    rules of its kind. QEMU's ini takes one ``iotype`` per rule, so only the
    default set or a single iotype can be written. Custom event names are
    written as they are: pytest-blkdebug reads them back (given a registry
    that knows them), QEMU itself rejects them.
    """
    out = [
        "# blkdebug rules (QEMU blkdebug config format), written by pytest-blkdebug",
        "",
    ]
    seen: dict[str, set[str]] = {"inject-error": set(), "set-state": set()}
    for rule in _check_rules(rules):
        if rule.name is not None:
            if len(rule.name) > ID_MAX or not id_wellformed(rule.name.encode("utf-8")):
                raise RuleError(
                    f"{rule.kind} {rule.name!r}: a name written to an ini file becomes a QEMU id, "
                    f"which must start with a letter and contain only letters, digits, '-', '.' "
                    f"and '_' (at most {ID_MAX}); rename the rule or write TOML"
                )
            if rule.name in seen[rule.kind]:
                raise RuleError(
                    f"{rule.kind} {rule.name!r}: two {rule.kind} rules share this name; QEMU "
                    f"rejects duplicate ids ('Duplicate ID ... for {rule.kind}')"
                )
            seen[rule.kind].add(rule.name)
            out.append(f'[{rule.kind} "{rule.name}"]')
        else:
            out.append(f"[{rule.kind}]")
        out.append(f'  event = "{rule.event}"')
        if rule.state:
            out.append(f'  state = "{rule.state}"')
        if isinstance(rule, InjectError):
            out.append(f'  errno = "{rule.errno}"')
            if rule.sector != -1:
                out.append(f'  sector = "{rule.sector}"')
            if rule.iotype != DEFAULT_IOTYPES:
                kinds = _iotype_list(rule)
                if len(kinds) != 1:
                    raise RuleError(
                        f"{rule}: QEMU's ini format takes a single iotype per rule (or none for "
                        f"the default {', '.join(t for t in IOTYPES if t in DEFAULT_IOTYPES)}); "
                        f"this rule has {', '.join(kinds)}. Write TOML, or split it into one "
                        "rule per iotype (which is not equivalent with once or errno 0)"
                    )
                out.append(f'  iotype = "{kinds[0]}"')
            if rule.once:
                out.append('  once = "on"')
            if rule.immediately:
                out.append('  immediately = "on"')
        else:
            out.append(f'  new_state = "{rule.new_state}"')
        out.append("")
    return "\n".join(out)


def _toml_str(value: str) -> str:
    out = ['"']
    for ch in value:
        code = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch in "\b\t\n\f\r":
            out.append({"\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}[ch])
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def dump_toml(rules: Iterable[Rule], events: Sequence[str] = ()) -> str:
    """The rules as a pytest-blkdebug TOML rule file.

    ``events`` are written as the top-level ``events`` list, followed by every
    non-QEMU event the rules use, so the file loads back on its own.
    """
    checked = _check_rules(rules)
    names: list[str] = []
    for name in list(events) + [r.event for r in checked]:
        if name not in names and (name in events or name not in QEMU_EVENT_SET):
            names.append(name)
    EventRegistry(names)  # validates the names
    out = ["# blkdebug rules, written by pytest-blkdebug"]
    if names:
        out.append("events = [" + ", ".join(_toml_str(n) for n in names) + "]")
    for rule in checked:
        out += ["", f"[[{rule.kind}]]"]
        if rule.name is not None:
            out.append(f"name = {_toml_str(rule.name)}")
        out.append(f"event = {_toml_str(rule.event)}")
        if rule.state:
            out.append(f"state = {rule.state}")
        if isinstance(rule, InjectError):
            name = errno_name(rule.errno)
            out.append(f"errno = {_toml_str(name) if name.startswith('E') else rule.errno}")
            if rule.sector != -1:
                out.append(f"sector = {rule.sector}")
            if rule.iotype != DEFAULT_IOTYPES:
                kinds = _iotype_list(rule)
                shown = (
                    _toml_str(kinds[0])
                    if len(kinds) == 1
                    else "[" + ", ".join(map(_toml_str, kinds)) + "]"
                )
                out.append(f"iotype = {shown}")
            if rule.once:
                out.append("once = true")
            if rule.immediately:
                out.append("immediately = true")
        else:
            out.append(f"new_state = {rule.new_state}")
    return "\n".join(out) + "\n"


def save_rules(rules: Iterable[Rule], path: PathLike, *, events: Sequence[str] = ()) -> None:
    """Write the rules to ``path`` (ini or TOML by suffix), atomically.

    The text goes to a temporary file in the same directory, which then
    replaces ``path`` (``os.replace``): readers see the old file or the new
    one, never half of one. ``events`` only matters for TOML.
    """
    name = os.fspath(path)
    suffix = _suffix(name)
    if suffix in INI_SUFFIXES:
        text = dump_ini(rules)
    elif suffix in TOML_SUFFIXES:
        text = dump_toml(rules, events)
    else:
        raise _unsupported_type(name, suffix)
    directory = os.path.dirname(os.path.abspath(name))
    try:
        mode = os.stat(name).st_mode & 0o7777
    except OSError:
        mode = 0o644
    fd, tmp = tempfile.mkstemp(prefix=".blkdebug-", suffix=suffix, dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, name)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
