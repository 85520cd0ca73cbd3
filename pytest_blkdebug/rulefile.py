"""Rule files: QEMU's blkdebug ini format (read and write) and TOML (extension).

``load_rules(path)`` picks the reader by suffix: ``.ini``, ``.cfg`` and
``.conf`` are QEMU ini files, accepted and rejected exactly as QEMU 7.2's
``qemu-io`` does, with QEMU's own error texts; ``.toml`` files use
``[[inject-error]]`` / ``[[set-state]]`` arrays of tables with real types.
Every error is a ``RuleFileError`` naming the file and, where there is one,
the line. Where QEMU silently accepts something that is almost certainly a
mistake (text after a closing quote, a duplicate key, a number QEMU wraps),
the file loads as QEMU loads it and a ``RuleFileWarning`` says why.

``dump_ini``/``dump_toml`` write rules back out and ``save_rules`` writes a
file atomically; a file loaded, dumped and loaded again gives equal rules.
"""

from __future__ import annotations

import errno as errno_module
import os
import re
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Union

from .errors import RuleError, RuleFileError
from .events import (
    DEFAULT_IOTYPES,
    IOTYPES,
    QEMU_EVENT_SET,
    EventRegistry,
    unknown_name_message,
)
from .rules import (
    MAX_ERRNO,
    MAX_SECTOR,
    MAX_STATE,
    InjectError,
    Rule,
    SetState,
    errno_name,
)

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

#: QEMU's hint line after "Parameter 'id' expects an identifier".
ID_HINT = "Identifiers consist of letters, digits, '-', '.', '_', starting with a letter."


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

    def __reduce__(self):  # type: ignore[override]
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


def _allowed_suffixes() -> str:
    return ", ".join(INI_SUFFIXES + TOML_SUFFIXES)


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
        shown = suffix or "no suffix"
        raise RuleFileError(
            name,
            None,
            f"unsupported rule file type ({shown}); allowed suffixes: {_allowed_suffixes()}",
        )
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


# ---------------------------------------------------------------------------
# QEMU ini reader
#
# Hand-written on purpose: configparser cannot reproduce QEMU's quirks. QEMU
# 7.2 reads the file with fgets() into a 1024-byte buffer (longer lines are
# split and the rest is read as a new line), classifies each line by its first
# byte only, and parses it with three sscanf() patterns whose partial matches
# decide what is accepted:
#
#     "[%63s \"%63[^\"]\"]"        group header with an id
#     "[%63[^]]]"                  group header
#     " %63s = \"%1023[^\"]\""      key = "value" (and " %63s = \"\"")
#
# sscanf() returns how many conversions succeeded, and QEMU only tests that
# count, so everything after the last conversion is ignored, an unquoted
# value reads as an empty one, and "key=" is a key. Keys are collected per
# group in a QDict (duplicates: the last one wins, kept at the first one's
# place) and validated, in the QDict's hash order, when the next header or
# the end of the file is reached (util/qemu-config.c, util/qemu-option.c).
# Events and iotypes are checked afterwards by blkdebug's add_rule(): all
# [inject-error] groups first, then all [set-state] groups. The emulation
# below follows that order so that the first error reported, and its text,
# are QEMU's.
# ---------------------------------------------------------------------------

_LINE_MAX = 1023  # fgets(line, 1024, fp)
_GROUP_MAX = 63
_ID_MAX = 63
_KEY_MAX = 63
_VALUE_MAX = 1023
_C_SPACE = frozenset(b" \t\n\v\f\r")  # isspace() in the C locale
_QUOTE = ord('"')
_QDICT_BUCKETS = 512

_NUMBER, _BOOL, _STRING = "number", "bool", "string"
_INI_KEYS: dict[str, dict[str, str]] = {
    "inject-error": {
        "event": _STRING,
        "state": _NUMBER,
        "iotype": _STRING,
        "errno": _NUMBER,
        "sector": _NUMBER,
        "once": _BOOL,
        "immediately": _BOOL,
    },
    "set-state": {"event": _STRING, "state": _NUMBER, "new_state": _NUMBER},
}
_BOOL_WORDS = {b"on": True, b"yes": True, b"true": True, b"y": True,
               b"off": False, b"no": False, b"false": False, b"n": False}  # fmt: skip


def _txt(raw: bytes) -> str:
    """Bytes from the file as text for messages (QEMU prints them raw)."""
    return raw.decode("utf-8", "backslashreplace")


def _tdb_hash(key: bytes) -> int:
    """QEMU's QDict hash (qobject/qdict.c), which fixes the validation order."""
    value = (0x238F13AF * len(key)) & 0xFFFFFFFF
    for i, byte in enumerate(key):
        value = (value + (byte << (i * 5 % 24))) & 0xFFFFFFFF
    return (1103515243 * value + 12345) & 0xFFFFFFFF


@dataclass
class _Entry:
    key: bytes
    value: bytes
    line: int


class _QDict:
    """Just enough of QEMU's QDict: replace in place, iterate in bucket order."""

    def __init__(self) -> None:
        self._buckets: dict[int, list[_Entry]] = {}
        self._by_key: dict[bytes, _Entry] = {}

    def put(self, key: bytes, value: bytes, line: int) -> _Entry | None:
        """Store ``key``; return the entry it replaced, if any."""
        old = self._by_key.get(key)
        if old is not None:
            previous = _Entry(old.key, old.value, old.line)
            old.value, old.line = value, line
            return previous
        entry = _Entry(key, value, line)
        self._by_key[key] = entry
        self._buckets.setdefault(_tdb_hash(key) % _QDICT_BUCKETS, []).insert(0, entry)
        return None

    def get(self, key: bytes) -> _Entry | None:
        return self._by_key.get(key)

    def entries(self) -> list[_Entry]:
        return [e for bucket in sorted(self._buckets) for e in self._buckets[bucket]]


@dataclass
class _Group:
    qdict: _QDict
    header_line: int
    index: int  # position in the file, for the output order


@dataclass
class _Opts:
    """One validated group (QEMU's QemuOpts)."""

    kind: str
    header_line: int
    index: int
    values: dict[str, tuple[Any, bytes, int]] = field(
        default_factory=dict
    )  # key: (parsed, raw, line)
    name: str | None = None


class _IniFail(Exception):
    def __init__(self, line: int | None, message: str, unsupported: bool = False) -> None:
        super().__init__(message)
        self.line = line
        self.message = message
        self.unsupported = unsupported


def _skip_space(s: bytes, i: int) -> int:
    while i < len(s) and s[i] in _C_SPACE:
        i += 1
    return i


def _scan_s(s: bytes, i: int, width: int) -> tuple[bytes | None, int]:
    """sscanf ``%<width>s``: skip white space, then read non-white bytes."""
    i = _skip_space(s, i)
    j = i
    while j < len(s) and j - i < width and s[j] not in _C_SPACE:
        j += 1
    return (s[i:j] if j > i else None), j


def _scan_not(s: bytes, i: int, stop: int, width: int) -> tuple[bytes | None, int]:
    """sscanf ``%<width>[^<stop>]``: no white space skipping, at least one byte."""
    j = i
    while j < len(s) and j - i < width and s[j] != stop:
        j += 1
    return (s[i:j] if j > i else None), j


def _strtou64(raw: bytes) -> int | str:
    """QEMU's ``qemu_strtou64(value, NULL, 0, ...)`` on glibc.

    Returns the number, or ``"EINVAL"``/``"ERANGE"``. Like strtoull: leading
    white space and a sign are allowed, ``-N`` wraps modulo 2**64, base 0
    means ``0x`` hex / leading-``0`` octal / decimal, and QEMU rejects any
    trailing byte (that check comes before the range check).
    """
    s, i = raw, _skip_space(raw, 0)
    negative = False
    if i < len(s) and s[i] in b"+-":
        negative = s[i] == ord("-")
        i += 1
    if (
        s[i : i + 2] in (b"0x", b"0X")
        and i + 2 < len(s)
        and chr(s[i + 2]) in "0123456789abcdefABCDEF"
    ):
        base, i = 16, i + 2
    elif s[i : i + 1] == b"0":
        base = 8
    else:
        base = 10
    digits = "0123456789abcdef"[:base]
    start = i
    while i < len(s) and chr(s[i]).lower() in digits:
        i += 1
    if i == start or i != len(s):
        return "EINVAL"
    number = int(s[start:i], base)
    if number > 0xFFFFFFFFFFFFFFFF:
        return "ERANGE"
    return (-number) % (1 << 64) if negative else number


def _as_c_int(value: int) -> int:
    """A uint64 stored into a C ``int`` (two's complement, low 32 bits)."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def _id_wellformed(ident: bytes) -> bool:
    """QEMU's id_wellformed(): an ASCII letter, then letters, digits, - . _"""
    if not ident or not (chr(ident[0]).isascii() and chr(ident[0]).isalpha()):
        return False
    return all(chr(c).isascii() and (chr(c).isalnum() or chr(c) in "-._") for c in ident[1:])


def _fgets(data: bytes) -> list[tuple[int, bytes, bool]]:
    """Split like repeated ``fgets(line, 1024, f)``.

    Returns (physical line number, chunk as a C string, continues a longer
    line). A chunk stops after a newline or 1023 bytes; a NUL byte ends the
    C string sscanf sees, though fgets reads past it.
    """
    chunks: list[tuple[int, bytes, bool]] = []
    pos, line, continued = 0, 1, False
    while pos < len(data):
        newline = data.find(b"\n", pos, pos + _LINE_MAX)
        end = newline + 1 if newline >= 0 else min(pos + _LINE_MAX, len(data))
        chunk = data[pos:end]
        chunks.append((line, chunk.split(b"\0", 1)[0], continued))
        continued = not chunk.endswith(b"\n")
        if not continued:
            line += 1
        pos = end
    return chunks


def _trailing(rest: bytes) -> bytes:
    return rest.strip(bytes(_C_SPACE))


class _IniParser:
    def __init__(self, path: str, registry: EventRegistry) -> None:
        self.path = path
        self.registry = registry
        self.warnings: list[RuleFileWarning] = []
        self.opts: dict[str, list[_Opts]] = {"inject-error": [], "set-state": []}
        self.ids: dict[str, set[bytes]] = {"inject-error": set(), "set-state": set()}
        self.n_groups = 0

    def warn(self, line: int | None, text: str) -> None:
        self.warnings.append(RuleFileWarning(self.path, line, text))

    # -- phase 1: lines (qemu_config_foreach) --------------------------------

    def scan(self, data: bytes) -> None:
        qdict: _Group | None = None
        group = b""  # QEMU's group[] buffer: failed header matches overwrite it
        group_line = 0
        prev_group = b""
        for line, s, continued in _fgets(data):
            if continued:
                self.warn(
                    line,
                    f"line longer than {_LINE_MAX} bytes: QEMU reads the rest of it as a new line",
                )
            if s[:1] == b"\n" or s[:1] == b"#":
                continue
            if s[:1] == b"[":
                new_group = False
                tok, i = _scan_s(s, 1, _GROUP_MAX)
                count = 0
                ident = b""
                if tok is not None:
                    group, group_line, count = tok, line, 1
                    j = _skip_space(s, i)
                    if j < len(s) and s[j] == _QUOTE:
                        val, k = _scan_not(s, j + 1, _QUOTE, _ID_MAX)
                        if val is not None:
                            count, ident = 2, val
                            self._check_header_rest(line, s[k:], b'"]', ident, k - j - 1)
                if count == 2:
                    new_group = True
                    qd = _QDict()
                    qd.put(b"id", ident, line)
                else:
                    tok, i = _scan_not(s, 1, ord("]"), _GROUP_MAX)
                    if tok is not None:
                        group, group_line = tok, line
                        new_group = True
                        qd = _QDict()
                        self._check_header_rest(line, s[i:], b"]", None, 0)
                if new_group:
                    if qdict is not None:
                        self.process_group(prev_group, qdict, qdict.header_line)
                    self.n_groups += 1
                    qdict = _Group(qd, line, self.n_groups)
                    prev_group = group
                    continue
            key, i = _scan_s(s, 0, _KEY_MAX)
            if key is None:
                raise _IniFail(line, "parse error")
            value = b""
            j = _skip_space(s, i)
            if j < len(s) and s[j] == ord("="):
                j = _skip_space(s, j + 1)
                if j < len(s) and s[j] == _QUOTE:
                    val, k = _scan_not(s, j + 1, _QUOTE, _VALUE_MAX)
                    if val is not None:
                        value = val
                        if k >= len(s):
                            self.warn(
                                line,
                                f'missing closing quote after {_txt(key)} = "{_txt(val)}',
                            )
                        elif _trailing(s[k + 1 :]):
                            self.warn(
                                line,
                                f"text after the closing quote is ignored by QEMU: {_txt(_trailing(s[k + 1 :]))!r}",
                            )
            if qdict is None:
                raise _IniFail(line, "no group defined")
            replaced = qdict.qdict.put(key, value, line)
            if replaced is not None:
                self.warn(
                    line,
                    f"duplicate key '{_txt(key)}' (also set on line {replaced.line}): "
                    "QEMU uses the last value",
                )
        if qdict is not None:
            self.process_group(group, qdict, group_line)

    def _check_header_rest(
        self, line: int, rest: bytes, expected: bytes, ident: bytes | None, id_len: int
    ) -> None:
        if ident is not None and id_len >= _ID_MAX and rest[:1] != b'"':
            self.warn(line, f"group id longer than {_ID_MAX} bytes: QEMU truncates it")
            return
        if rest.startswith(expected):
            extra = _trailing(rest[len(expected) :])
            if extra:
                self.warn(
                    line,
                    f"text after the group header is ignored by QEMU: {_txt(extra)!r}",
                )
        elif not _trailing(rest) or ident is not None:
            closing = "'\"]'" if ident is not None else "']'"
            self.warn(line, f"group header does not end with {closing}: QEMU accepts it anyway")

    # -- group validation (qemu_config_do_parse + qemu_opts_from_qdict) ------

    def process_group(self, name: bytes, group: _Group, name_line: int) -> None:
        kind = name.decode("ascii", "replace")
        if name not in (b"inject-error", b"set-state"):
            raise _IniFail(name_line, f"There is no option group '{_txt(name)}'")
        id_entry = group.qdict.get(b"id")
        opts = _Opts(kind, group.header_line, group.index)
        if id_entry is not None:
            ident = id_entry.value
            if not _id_wellformed(ident):
                raise _IniFail(id_entry.line, f"Parameter 'id' expects an identifier\n{ID_HINT}")
            if ident in self.ids[kind]:
                raise _IniFail(id_entry.line, f"Duplicate ID '{_txt(ident)}' for {kind}")
            self.ids[kind].add(ident)
            opts.name = ident.decode("ascii")
        allowed = _INI_KEYS[kind]
        for entry in group.qdict.entries():
            if entry.key == b"id":
                continue
            key = _txt(entry.key)
            typ = allowed.get(entry.key.decode("ascii", "replace"))
            if typ is None:
                raise _IniFail(entry.line, f"Invalid parameter '{key}'")
            parsed: Any
            if typ == _NUMBER:
                parsed = _strtou64(entry.value)
                if parsed == "ERANGE":
                    raise _IniFail(
                        entry.line,
                        f"Value '{_txt(entry.value)}' is too large for parameter '{key}'",
                    )
                if parsed == "EINVAL":
                    raise _IniFail(entry.line, f"Parameter '{key}' expects a number")
            elif typ == _BOOL:
                if entry.value not in _BOOL_WORDS:
                    raise _IniFail(entry.line, f"Parameter '{key}' expects 'on' or 'off'")
                parsed = _BOOL_WORDS[entry.value]
            else:
                parsed = entry.value
            opts.values[key] = (parsed, entry.value, entry.line)
        self.opts[kind].append(opts)

    # -- phase 2: add_rule() for every group ---------------------------------

    def add_rules(self) -> list[Rule]:
        for kind in ("inject-error", "set-state"):
            for opts in self.opts[kind]:
                if "event" not in opts.values:
                    raise _IniFail(opts.header_line, "Missing event name for rule")
                raw, _, line = opts.values["event"]
                if not self._is_event(raw):
                    raise _IniFail(line, f"invalid parameter value: {_txt(raw)}")
                if "iotype" in opts.values:
                    raw, _, line = opts.values["iotype"]
                    if _txt(raw) not in IOTYPES:
                        raise _IniFail(line, f"invalid parameter value: {_txt(raw)}")
        # Only once QEMU would accept the whole file: our own limits.
        everything = sorted(
            self.opts["inject-error"] + self.opts["set-state"], key=lambda o: o.index
        )
        return [self._make_rule(opts) for opts in everything]

    def _is_event(self, raw: bytes) -> bool:
        try:
            name = raw.decode("ascii")
        except UnicodeDecodeError:
            return False
        return name in self.registry

    def _c_int(self, opts: _Opts, key: str, lo: int, hi: int, default: int) -> int:
        if key not in opts.values:
            return default
        number, raw, line = opts.values[key]
        value = _as_c_int(number)
        if not lo <= value <= hi:
            raise _IniFail(
                line,
                f'{key} = "{_txt(raw)}" is {value} in QEMU (a C int); pytest-blkdebug '
                f"supports {key} {lo}..{hi} only",
                unsupported=True,
            )
        self._warn_number(opts, key, value)
        return value

    def _warn_number(self, opts: _Opts, key: str, value: int) -> None:
        number, raw, line = opts.values[key]
        self._number_warning(line, key, raw, number, value)

    def _number_warning(self, line: int, key: str, raw: bytes, number: int, value: int) -> None:
        spelled = _txt(raw)
        if number != value or spelled.strip().startswith("-"):
            self.warn(line, f'QEMU reads {key} = "{spelled}" as {value}')
        elif re.fullmatch(r"\s*[+]?0[0-7]+", spelled) and int(spelled, 10) != value:
            self.warn(line, f'{key} = "{spelled}" is octal in QEMU (= {value})')

    def _sector(self, opts: _Opts) -> int:
        if "sector" not in opts.values:
            return -1
        number, raw, line = opts.values["sector"]
        as_int64 = number - (1 << 64) if number >= 1 << 63 else number
        if as_int64 == -1:
            return -1
        offset = (as_int64 * 512) % (1 << 64)
        if offset >= 1 << 63:
            self.warn(
                line,
                f'sector = "{_txt(raw)}" is beyond any image in QEMU (its byte offset '
                f"wraps to {offset}): it can never match; loaded as sector {MAX_SECTOR}",
            )
            return MAX_SECTOR
        sector = offset // 512
        self._number_warning(line, "sector", raw, number, sector)
        return sector

    def _make_rule(self, opts: _Opts) -> Rule:
        event = opts.values["event"][0].decode("ascii")
        state = self._c_int(opts, "state", 0, MAX_STATE, 0)
        try:
            if opts.kind == "set-state":
                new_state = self._c_int(opts, "new_state", 0, MAX_STATE, 0)
                return SetState(event=event, new_state=new_state, state=state, name=opts.name)
            err = self._c_int(opts, "errno", 0, MAX_ERRNO, errno_module.EIO)
            iotype = opts.values.get("iotype")
            return InjectError(
                event=event,
                errno=err,
                sector=self._sector(opts),
                once=bool(opts.values.get("once", (False,))[0]),
                immediately=bool(opts.values.get("immediately", (False,))[0]),
                iotype=frozenset({_txt(iotype[0])}) if iotype else DEFAULT_IOTYPES,
                state=state,
                name=opts.name,
            )
        except RuleError as exc:  # pragma: no cover - the checks above prevent it
            raise _IniFail(opts.header_line, str(exc), unsupported=True) from None


def _parse_ini(
    data: bytes, path: str, registry: EventRegistry
) -> tuple[list[Rule], list[RuleFileWarning]]:
    parser = _IniParser(path, registry)
    try:
        parser.scan(data)
        rules = parser.add_rules()
    except _IniFail as fail:
        cls = UnsupportedValueError if fail.unsupported else RuleFileError
        raise cls(path, fail.line, fail.message) from None
    return rules, parser.warnings


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
    try:
        import tomllib
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef,import-not-found,unused-ignore]
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
        line = data.count(b"\n", 0, exc.start) + 1
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
    for name in events:
        registry.register(name)
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
    cls = InjectError if kind == "inject-error" else SetState
    try:
        return cls(**table)
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
            if len(rule.name) > _ID_MAX or not _id_wellformed(rule.name.encode("utf-8")):
                raise RuleError(
                    f"{rule.kind} {rule.name!r}: a name written to an ini file becomes a QEMU id, "
                    f"which must start with a letter and contain only letters, digits, '-', '.' "
                    f"and '_' (at most {_ID_MAX}); rename the rule or write TOML"
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
        raise RuleFileError(
            name,
            None,
            f"unsupported rule file type ({suffix or 'no suffix'}); allowed suffixes: {_allowed_suffixes()}",
        )
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
