"""QEMU 7.2's blkdebug config (ini) reader, emulated byte for byte.

Hand-written on purpose: ``configparser`` cannot reproduce QEMU's quirks, and
a rule file must be accepted or rejected exactly as ``qemu-io`` does, with
QEMU's own first error and its text. QEMU 7.2 reads the file with ``fgets()``
into a 1024-byte buffer (longer lines are split and the rest is read as a new
line), classifies each line by its first byte only, and parses it with three
``sscanf()`` patterns whose partial matches decide what is accepted::

    "[%63s \"%63[^\"]\"]"        group header with an id
    "[%63[^]]]"                  group header
    " %63s = \"%1023[^\"]\""      key = "value" (and " %63s = \"\"")

``sscanf()`` returns how many conversions succeeded, and QEMU only tests that
count, so everything after the last conversion is ignored, an unquoted value
reads as an empty one, and ``key=`` is a key. Keys are collected per group in
a QDict (duplicates: the last one wins, kept at the first one's place) and
validated, in the QDict's hash order, when the next header or the end of the
file is reached (util/qemu-config.c, util/qemu-option.c); numbers go through
``qemu_strtou64`` (base 0, ``-N`` wraps) and are stored in C ``int``s.
Events and iotypes are checked afterwards by blkdebug's ``add_rule()``: all
``[inject-error]`` groups first, then all ``[set-state]`` groups. The
emulation follows that order.

Where QEMU silently accepts something that is almost certainly a mistake, the
parser records a warning ``(line, text)``; values QEMU accepts but this
project cannot model raise ``IniFail`` with ``unsupported=True``. This module
knows nothing of files or paths: ``rulefile`` reads the file and turns
``IniFail`` and the warnings into ``RuleFileError`` / ``RuleFileWarning``.
"""

from __future__ import annotations

import difflib
import errno as errno_module
import re
from dataclasses import dataclass, field
from typing import Any

from ..core.errors import RuleError
from ..core.events import DEFAULT_IOTYPES, IOTYPES, EventRegistry
from ..core.rules import (
    MAX_ERRNO,
    MAX_SECTOR,
    MAX_STATE,
    QEMU_KINDS,
    SCHEMA,
    InjectError,
    Rule,
    SetState,
)

__all__ = ["ID_HINT", "ID_MAX", "IniFail", "id_wellformed", "parse_ini"]

#: QEMU's hint line after "Parameter 'id' expects an identifier".
ID_HINT = "Identifiers consist of letters, digits, '-', '.', '_', starting with a letter."

_LINE_MAX = 1023  # fgets(line, 1024, fp)
_GROUP_MAX = 63
ID_MAX = 63
_KEY_MAX = 63
_VALUE_MAX = 1023
_C_SPACE = frozenset(b" \t\n\v\f\r")  # isspace() in the C locale
_QUOTE = ord('"')
_QDICT_BUCKETS = 512

_NUMBER, _BOOL, _STRING = "number", "bool", "string"
_INI_TYPES = {"int": _NUMBER, "errno": _NUMBER, "bool": _BOOL, "event": _STRING, "iotype": _STRING}
#: QEMU's keys per group, from the rule schema (the attributes with an ini key).
_INI_KEYS: dict[str, dict[str, str]] = {
    kind: {a.ini: _INI_TYPES[a.type] for a in SCHEMA[kind] if a.ini not in (None, "id")}
    for kind in QEMU_KINDS
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


class IniFail(Exception):
    """The first error in the file: QEMU's text, or (``unsupported``) one of ours.

    ``line`` is the physical line at fault, or ``None``; ``hint`` a
    suggestion of ours that follows QEMU's text ("did you mean ...").
    """

    def __init__(
        self,
        line: int | None,
        message: str,
        unsupported: bool = False,
        hint: str | None = None,
        attribute: str | None = None,
    ) -> None:
        super().__init__(message)
        self.line = line
        self.message = message
        self.unsupported = unsupported
        self.hint = hint
        #: The attribute whose value is at fault, where QEMU's text leaves it unsaid.
        self.attribute = attribute


def _did_you_mean(value: str, known: list[str]) -> str | None:
    close = difflib.get_close_matches(value, known, n=3, cutoff=0.6)
    return f"did you mean {', '.join(repr(c) for c in close)}?" if close else None


def _key_hint(kind: str, key: str) -> str | None:
    """Why a key QEMU calls invalid probably is: no spaces around '=', a typo,
    or one of pytest-blkdebug's extensions, which only TOML files take."""
    if "=" in key:
        name = key.split("=", 1)[0]
        return f"QEMU reads {key!r} as one key: write {name} = \"...\" with spaces around '='"
    if any(a.name == key and a.ini is None for a in SCHEMA[kind]):
        return f"{key!r} is a pytest-blkdebug extension, which QEMU's ini format lacks: write TOML"
    return _did_you_mean(key, list(_INI_KEYS[kind]))


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


def id_wellformed(ident: bytes) -> bool:
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
    def __init__(self, registry: EventRegistry) -> None:
        self.registry = registry
        self.warnings: list[tuple[int | None, str]] = []
        self.opts: dict[str, list[_Opts]] = {"inject-error": [], "set-state": []}
        self.ids: dict[str, set[bytes]] = {"inject-error": set(), "set-state": set()}
        self.n_groups = 0

    def warn(self, line: int | None, text: str) -> None:
        self.warnings.append((line, text))

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
                        val, k = _scan_not(s, j + 1, _QUOTE, ID_MAX)
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
                raise IniFail(line, "parse error")
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
                raise IniFail(line, "no group defined")
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
        if ident is not None and id_len >= ID_MAX and rest[:1] != b'"':
            self.warn(line, f"group id longer than {ID_MAX} bytes: QEMU truncates it")
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
            raise IniFail(name_line, f"There is no option group '{_txt(name)}'")
        id_entry = group.qdict.get(b"id")
        opts = _Opts(kind, group.header_line, group.index)
        if id_entry is not None:
            ident = id_entry.value
            if not id_wellformed(ident):
                raise IniFail(id_entry.line, f"Parameter 'id' expects an identifier\n{ID_HINT}")
            if ident in self.ids[kind]:
                raise IniFail(id_entry.line, f"Duplicate ID '{_txt(ident)}' for {kind}")
            self.ids[kind].add(ident)
            opts.name = ident.decode("ascii")
        allowed = _INI_KEYS[kind]
        for entry in group.qdict.entries():
            if entry.key == b"id":
                continue
            key = _txt(entry.key)
            typ = allowed.get(entry.key.decode("ascii", "replace"))
            if typ is None:
                raise IniFail(entry.line, f"Invalid parameter '{key}'", hint=_key_hint(kind, key))
            parsed: Any
            if typ == _NUMBER:
                parsed = _strtou64(entry.value)
                if parsed == "ERANGE":
                    raise IniFail(
                        entry.line,
                        f"Value '{_txt(entry.value)}' is too large for parameter '{key}'",
                    )
                if parsed == "EINVAL":
                    raise IniFail(entry.line, f"Parameter '{key}' expects a number")
            elif typ == _BOOL:
                if entry.value not in _BOOL_WORDS:
                    raise IniFail(entry.line, f"Parameter '{key}' expects 'on' or 'off'")
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
                    raise IniFail(opts.header_line, "Missing event name for rule")
                raw, _, line = opts.values["event"]
                if not self._is_event(raw):
                    hint = _did_you_mean(_txt(raw), list(self.registry.names))
                    raise IniFail(
                        line, f"invalid parameter value: {_txt(raw)}", hint=hint, attribute="event"
                    )
                if "iotype" in opts.values:
                    raw, _, line = opts.values["iotype"]
                    if _txt(raw) not in IOTYPES:
                        hint = _did_you_mean(_txt(raw), list(IOTYPES))
                        raise IniFail(line, f"invalid parameter value: {_txt(raw)}", hint=hint)
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
            raise IniFail(
                line,
                f'{key} = "{_txt(raw)}" is {value} in QEMU (a C int); pytest-blkdebug '
                f"supports {key} {lo}..{hi} only",
                unsupported=True,
            )
        self._number_warning(line, key, raw, number, value)
        return value

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
        sector = int(offset) // 512
        self._number_warning(line, "sector", raw, number, sector)
        return sector

    def _make_rule(self, opts: _Opts) -> Rule:
        event = opts.values["event"][0].decode("ascii")
        state = self._c_int(opts, "state", 0, MAX_STATE, 0)
        try:
            if opts.kind == "set-state":
                if "new_state" not in opts.values:  # issue 12 item 20, kept as QEMU reads it
                    self.warn(
                        opts.header_line,
                        "set-state without new_state: QEMU moves to state 0 "
                        "(TOML files, markers and Python require new_state)",
                    )
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
            raise IniFail(opts.header_line, str(exc), unsupported=True) from None


def parse_ini(
    data: bytes, registry: EventRegistry
) -> tuple[list[Rule], list[tuple[int | None, str]]]:
    """The rules of a QEMU blkdebug config file, in definition order.

    Event names are checked against ``registry``. Returns the rules and the
    warnings as ``(line, text)`` pairs, in the order found; raises
    ``IniFail`` for the first error QEMU (or this project) reports.
    """
    parser = _IniParser(registry)
    parser.scan(data)
    rules = parser.add_rules()
    return rules, parser.warnings
