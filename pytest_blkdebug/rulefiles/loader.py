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

import errno
import os
import stat
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Union

from ..core.errors import RuleError, RuleFileError
from ..core.events import DEFAULT_IOTYPES, IOTYPES, QEMU_EVENT_SET, EventRegistry
from ..core.image import file_kind
from ..core.rules import SCHEMA, Attr, BadSector, InjectError, Rule, SetState, errno_name
from .qemu_ini import ID_HINT as ID_HINT  # re-exported: it used to live here
from .qemu_ini import ID_MAX, IniFail, id_wellformed, parse_ini
from .toml_rules import parse_toml

__all__ = [
    "INI_SUFFIXES",
    "MAX_RULE_FILE_SIZE",
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


#: The largest rule file read (bytes). A real one is a few KiB; this bounds
#: what a mistaken path (a log, an image, /dev/zero behind a link) can cost.
MAX_RULE_FILE_SIZE = 16 << 20


def _read_bytes(path: PathLike, what: str) -> bytes:
    """The file's bytes: a regular file of at most ``MAX_RULE_FILE_SIZE``.

    Opened without blocking, so a FIFO is refused instead of waiting
    forever for a writer; a device (``/dev/zero``) is refused instead of
    read until memory runs out.
    """
    name = os.fspath(path)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise RuleFileError(name, None, f"Could not read {what}: {reason}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):  # what QEMU says, as reading one fails so
            raise OSError(errno.EISDIR, os.strerror(errno.EISDIR))
        if not stat.S_ISREG(st.st_mode):
            raise RuleFileError(
                name, None, f"Could not read {what}: not a regular file ({file_kind(st.st_mode)})"
            )
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_RULE_FILE_SIZE:
            chunk = os.read(fd, MAX_RULE_FILE_SIZE + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > MAX_RULE_FILE_SIZE:
            raise RuleFileError(
                name,
                None,
                f"Could not read {what}: larger than {MAX_RULE_FILE_SIZE >> 20} MiB "
                "(MAX_RULE_FILE_SIZE); is this really a rule file?",
            )
        return b"".join(chunks)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise RuleFileError(name, None, f"Could not read {what}: {reason}") from None
    finally:
        os.close(fd)


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
        rules, collected = parse_toml(data, name, registry), []
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
    return parse_toml(raw, path, registry if registry is not None else EventRegistry())


def _parse_ini(
    data: bytes, path: str, registry: EventRegistry
) -> tuple[list[Rule], list[RuleFileWarning]]:
    """The QEMU ini reader (``qemu_ini``) with its failures and warnings named by ``path``."""
    try:
        rules, found = parse_ini(data, registry)
    except IniFail as fail:
        cls = UnsupportedValueError if fail.unsupported else RuleFileError
        raise cls(path, fail.line, fail.message, hint=fail.hint, attribute=fail.attribute) from None
    return rules, [RuleFileWarning(path, line, text) for line, text in found]


# ---------------------------------------------------------------------------
# Writers
# ---------------------------------------------------------------------------


def _check_rules(rules: Iterable[Rule], kinds: tuple[type, ...], what: str) -> list[Rule]:
    out = list(rules)
    for rule in out:
        if not isinstance(rule, kinds):
            raise RuleError(f"only {what} rules can be written to {_FORMAT[what]}, not {rule!r}")
    return out


_FORMAT = {
    "inject-error and set-state": "a QEMU ini file",
    "inject-error, set-state and bad-sector": "a rule file",
}


def _iotype_list(rule: InjectError) -> list[str]:
    return [t for t in IOTYPES if t in rule.iotype]


def _is_default(attr: Attr, value: object) -> bool:
    return value is None or (value == attr.default and attr.type != "errno")


def _ini_value(rule: Rule, attr: Attr, value: object) -> str:
    if attr.type == "bool":
        return "on"
    if attr.type == "iotype":
        assert isinstance(rule, InjectError)
        kinds = _iotype_list(rule)
        if len(kinds) != 1:
            raise RuleError(
                f"{rule}: QEMU's ini format takes a single iotype per rule (or none for "
                f"the default {', '.join(t for t in IOTYPES if t in DEFAULT_IOTYPES)}); "
                f"this rule has {', '.join(kinds)}. Write TOML, or split it into one "
                "rule per iotype (which is not equivalent with once or errno 0)",
                kind=rule.kind,
                attribute="iotype",
            )
        return kinds[0]
    return str(value)


def _ini_name(rule: Rule, seen: dict[str, set[str]]) -> str:
    """The group header, with the rule's name as QEMU's group id."""
    if rule.name is None:
        return f"[{rule.kind}]"
    if len(rule.name) > ID_MAX or not id_wellformed(rule.name.encode("utf-8")):
        raise RuleError(
            f"{rule.kind} {rule.name!r}: a name written to an ini file becomes a QEMU id, "
            f"which must start with a letter and contain only letters, digits, '-', '.' "
            f"and '_' (at most {ID_MAX}); rename the rule or write TOML",
            kind=rule.kind,
            attribute="name",
        )
    if rule.name in seen[rule.kind]:
        raise RuleError(
            f"{rule.kind} {rule.name!r}: two {rule.kind} rules share this name; QEMU "
            f"rejects duplicate ids ('Duplicate ID ... for {rule.kind}')",
            kind=rule.kind,
            attribute="name",
        )
    seen[rule.kind].add(rule.name)
    return f'[{rule.kind} "{rule.name}"]'


def dump_ini(rules: Iterable[Rule]) -> str:
    """The rules as a QEMU blkdebug config file (``qemu-io`` reads it).

    Written from the rule schema: every attribute with an ini key, when it
    differs from its default (``errno`` always). A rule that uses an
    extension QEMU has no key for (``after``, ``probability``, a lie, ...)
    or a ``bad-sector`` rule is a ``RuleError`` naming it: write TOML.
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
    for rule in _check_rules(rules, (InjectError, SetState), "inject-error and set-state"):
        for attr in SCHEMA[rule.kind]:
            if attr.ini is None and not _is_default(attr, getattr(rule, attr.name)):
                raise RuleError(
                    f"{rule}: QEMU's ini format has no {attr.name!r} ({attr.help}); "
                    "write TOML (save_rules to a .toml file) for rules beyond QEMU's",
                    kind=rule.kind,
                    attribute=attr.name,
                )
        out.append(_ini_name(rule, seen))
        for attr in sorted(SCHEMA[rule.kind], key=lambda a: a.name != "event"):
            value = getattr(rule, attr.name)
            if attr.ini in (None, "id") or _is_default(attr, value):
                continue
            out.append(f'  {attr.ini} = "{_ini_value(rule, attr, value)}"')
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


def _toml_value(rule: Rule, attr: Attr, value: object) -> str:
    if attr.type == "errno":
        assert isinstance(value, int)
        name = errno_name(value)
        return _toml_str(name) if name.startswith("E") else str(value)
    if attr.type == "iotype":
        assert isinstance(rule, InjectError)
        kinds = _iotype_list(rule)
        return (
            _toml_str(kinds[0]) if len(kinds) == 1 else "[" + ", ".join(map(_toml_str, kinds)) + "]"
        )
    if attr.type == "bool":
        return "true" if value else "false"
    if isinstance(value, str):
        return _toml_str(value)
    return repr(value)  # int, or a float (repr round-trips exactly)


def dump_toml(rules: Iterable[Rule], events: Sequence[str] = ()) -> str:
    """The rules as a pytest-blkdebug TOML rule file, from the rule schema.

    ``events`` are written as the top-level ``events`` list, followed by every
    non-QEMU event the rules use, so the file loads back on its own.
    """
    checked = _check_rules(
        rules, (InjectError, SetState, BadSector), "inject-error, set-state and bad-sector"
    )
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
        # name and event first: what a reader looks for
        for attr in sorted(SCHEMA[rule.kind], key=lambda a: a.name not in ("name", "event")):
            value = getattr(rule, attr.name)
            if not attr.required and _is_default(attr, value):
                continue
            out.append(f"{attr.name} = {_toml_value(rule, attr, value)}")
    return "\n".join(out) + "\n"


def save_rules(rules: Iterable[Rule], path: PathLike, *, events: Sequence[str] = ()) -> None:
    """Write the rules to ``path`` (ini or TOML by suffix), atomically.

    The text goes to a temporary file in the same directory, which then
    replaces ``path`` (``os.replace``): readers see the old file or the new
    one, never half of one. A symbolic link is followed (the file it names
    is replaced, the link stays), as ``open(path, "w")`` would. An error
    names ``path``, not the temporary file. ``events`` only matters for TOML.
    """
    name = os.fspath(path)
    suffix = _suffix(name)
    if suffix in INI_SUFFIXES:
        text = dump_ini(rules)
    elif suffix in TOML_SUFFIXES:
        text = dump_toml(rules, events)
    else:
        raise _unsupported_type(name, suffix)
    target = os.path.realpath(name) if os.path.islink(name) else os.path.abspath(name)
    directory = os.path.dirname(target)
    try:
        mode = os.stat(target).st_mode & 0o7777
    except OSError:
        mode = 0o644
    try:
        fd, tmp = tempfile.mkstemp(prefix=".blkdebug-", suffix=suffix, dir=directory)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot write rule file: {exc.strerror}", name) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError) and exc.filename != name:
            raise OSError(exc.errno, f"cannot write rule file: {exc.strerror}", name) from None
        raise
