"""Unit tests for pytest_blkdebug.rulefiles: readers, writers, errors, warnings.

Whether the ini reader accepts and rejects what QEMU does, and with QEMU's
message, is proven against real qemu-io in test_ini_conformance.py; here the
messages of a few quirks are compared with qemu-io too, and everything QEMU
cannot tell (line numbers, names, warnings, TOML, writing) is tested alone.
"""

from __future__ import annotations

import errno
import os
import stat
import string
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from qemu_helpers import requires_qemu_io, run_qemu_io

from pytest_blkdebug.core.errors import RuleError, RuleFileError
from pytest_blkdebug.core.events import DEFAULT_IOTYPES, IOTYPES, QEMU_EVENTS, EventRegistry
from pytest_blkdebug.core.rules import (
    MAX_SECTOR,
    MAX_STATE,
    Breakpoint,
    InjectError,
    Rule,
    SetState,
)
from pytest_blkdebug.rulefiles.loader import (
    RuleFileWarning,
    UnsupportedValueError,
    dump_ini,
    dump_toml,
    load_rules,
    loads_ini,
    loads_toml,
    save_rules,
)

ALL_KEYS_INI = """\
# every key, in both groups
[inject-error "first"]
  event = "write_aio"
  state = "3"
  errno = "0x1c"
  sector = "8"
  iotype = "write"
  once = "on"
  immediately = "yes"

[set-state]
  event = "read_aio"
  state = "1"
  new_state = "3"

[inject-error]
  event = "none"
"""


def write(tmp_path: Path, name: str, data: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def load_quietly(path: Path, **kwargs: object) -> list[Rule]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuleFileWarning)
        return load_rules(path, **kwargs)  # type: ignore[arg-type]


def load_error(path: Path, **kwargs: object) -> RuleFileError:
    with pytest.raises(RuleFileError) as info:
        load_quietly(path, **kwargs)
    return info.value


# ---------------------------------------------------------------------------
# Choosing the reader, reading the file
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["r.ini", "r.cfg", "r.conf", "R.INI", "dir.d/r.Conf"])
def test_ini_suffixes(tmp_path: Path, name: str) -> None:
    (tmp_path / "dir.d").mkdir()
    path = write(tmp_path, name, '[inject-error]\nevent = "read_aio"\n')
    assert load_rules(path) == [InjectError(event="read_aio")]


def test_toml_suffix(tmp_path: Path) -> None:
    path = write(tmp_path, "r.toml", '[[inject-error]]\nevent = "read_aio"\n')
    assert load_rules(path) == [InjectError(event="read_aio")]


@pytest.mark.parametrize("name", ["r.txt", "r.json", "rules", "r.ini.bak", "r.yaml"])
def test_unknown_suffix_is_refused(tmp_path: Path, name: str) -> None:
    path = write(tmp_path, name, '[inject-error]\nevent = "read_aio"\n')
    err = load_error(path)
    assert err.path == str(path) and err.line is None
    for suffix in (".ini", ".cfg", ".conf", ".toml"):
        assert suffix in err.message


@pytest.mark.parametrize("name", ["missing.ini", "missing.toml"])
def test_missing_file(tmp_path: Path, name: str) -> None:
    err = load_error(tmp_path / name)
    assert err.path == str(tmp_path / name)
    assert os.strerror(errno.ENOENT) in err.message
    assert str(err).startswith(f"{tmp_path / name}: ")


def test_missing_ini_uses_qemu_wording(tmp_path: Path) -> None:
    err = load_error(tmp_path / "missing.ini")
    assert err.message == "Could not read blkdebug config file: No such file or directory"


def test_directory_is_unreadable(tmp_path: Path) -> None:
    (tmp_path / "d.ini").mkdir()
    err = load_error(tmp_path / "d.ini")
    assert err.path == str(tmp_path / "d.ini")
    assert os.strerror(errno.EISDIR) in err.message


def test_path_objects_and_strings(tmp_path: Path) -> None:
    path = write(tmp_path, "r.ini", '[inject-error]\nevent = "read_aio"\n')
    assert load_rules(str(path)) == load_rules(path)


# ---------------------------------------------------------------------------
# The QEMU ini reader: values
# ---------------------------------------------------------------------------


def test_all_keys(tmp_path: Path) -> None:
    rules = load_rules(write(tmp_path, "all.ini", ALL_KEYS_INI))
    assert rules == [
        InjectError(
            event="write_aio",
            state=3,
            errno=28,
            sector=8,
            iotype=frozenset({"write"}),
            once=True,
            immediately=True,
            name="first",
        ),
        SetState(event="read_aio", state=1, new_state=3),
        InjectError(event="none"),
    ]


@pytest.mark.filterwarnings("ignore:.*set-state without new_state")  # QEMU's default, on purpose
def test_defaults(tmp_path: Path) -> None:
    rules = load_rules(
        write(tmp_path, "d.ini", '[inject-error]\nevent = "l2_load"\n[set-state]\nevent = "none"\n')
    )
    inject, set_state = rules
    assert isinstance(inject, InjectError) and isinstance(set_state, SetState)
    assert (inject.errno, inject.sector, inject.state) == (errno.EIO, -1, 0)
    assert (inject.once, inject.immediately, inject.iotype) == (False, False, DEFAULT_IOTYPES)
    assert "block-status" not in inject.iotype
    assert (set_state.new_state, set_state.state) == (0, 0)
    assert inject.name is None and set_state.name is None


@pytest.mark.parametrize(
    ("text", "value"),
    [("28", 28), ("0x1c", 28), ("0X1C", 28), ("034", 28), (" 28", 28), ("+28", 28), ("\t28", 28),
     ("0", 0), ("00", 0), ("4294967324", 28), ("-18446744073709551588", 28)],
)  # fmt: skip
def test_numbers(tmp_path: Path, text: str, value: int) -> None:
    path = write(tmp_path, "n.ini", f'[inject-error]\nevent = "read_aio"\nerrno = "{text}"\n')
    (rule,) = load_quietly(path)
    assert isinstance(rule, InjectError) and rule.errno == value


@pytest.mark.parametrize(
    ("text", "message"),
    [("", "Parameter 'errno' expects a number"), ("1k", "Parameter 'errno' expects a number"),
     ("5 ", "Parameter 'errno' expects a number"), ("08", "Parameter 'errno' expects a number"),
     ("0x", "Parameter 'errno' expects a number"), ("1e3", "Parameter 'errno' expects a number"),
     ("99999999999999999999x", "Parameter 'errno' expects a number"),
     ("18446744073709551616", "Value '18446744073709551616' is too large for parameter 'errno'")],
)  # fmt: skip
def test_bad_numbers(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, "n.ini", f'[inject-error]\nevent = "read_aio"\nerrno = "{text}"\n')
    err = load_error(path)
    assert (err.message, err.line) == (message, 3)


@pytest.mark.parametrize(
    ("text", "value"),
    [("on", True), ("yes", True), ("true", True), ("y", True),
     ("off", False), ("no", False), ("false", False), ("n", False)],
)  # fmt: skip
def test_booleans(tmp_path: Path, text: str, value: bool) -> None:
    path = write(tmp_path, "b.ini", f'[inject-error]\nevent = "read_aio"\nonce = "{text}"\n')
    (rule,) = load_rules(path)
    assert isinstance(rule, InjectError) and rule.once is value


@pytest.mark.parametrize("text", ["ON", "1", "0", "", "t", "On", "yes "])
def test_bad_booleans(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, "b.ini", f'[inject-error]\nevent = "read_aio"\nimmediately = "{text}"\n')
    err = load_error(path)
    assert (err.message, err.line) == ("Parameter 'immediately' expects 'on' or 'off'", 3)


@pytest.mark.parametrize("iotype", IOTYPES)
def test_single_iotype(tmp_path: Path, iotype: str) -> None:
    path = write(tmp_path, "i.ini", f'[inject-error]\nevent = "none"\niotype = "{iotype}"\n')
    (rule,) = load_rules(path)
    assert isinstance(rule, InjectError) and rule.iotype == frozenset({iotype})


def test_sector_wraps_like_qemu(tmp_path: Path) -> None:
    # QEMU multiplies the sector by 512 in 64 bits: 2**55 lands on byte 0.
    path = write(
        tmp_path, "s.ini", '[inject-error]\nevent = "read_aio"\nsector = "36028797018963969"\n'
    )
    with pytest.warns(RuleFileWarning, match="as 1"):
        (rule,) = load_rules(path)
    assert isinstance(rule, InjectError) and rule.sector == 1


@pytest.mark.parametrize("text", ["-1", "0xffffffffffffffff", "18446744073709551615"])
def test_sector_minus_one_is_any(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, "s.ini", f'[inject-error]\nevent = "read_aio"\nsector = "{text}"\n')
    (rule,) = load_quietly(path)
    assert isinstance(rule, InjectError) and rule.sector == -1


@pytest.mark.parametrize("text", ["-2", "18014398509481984"])
def test_sector_beyond_any_image(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, "s.ini", f'[inject-error]\nevent = "read_aio"\nsector = "{text}"\n')
    with pytest.warns(RuleFileWarning, match="never match"):
        (rule,) = load_rules(path)
    assert isinstance(rule, InjectError) and rule.sector == MAX_SECTOR


def test_state_is_a_c_int(tmp_path: Path) -> None:
    path = write(tmp_path, "s.ini", '[set-state]\nevent = "none"\nnew_state = "4294967298"\n')
    with pytest.warns(RuleFileWarning, match=r'new_state = "4294967298" as 2') as record:
        (rule,) = load_rules(path)
    assert rule == SetState(event="none", new_state=2)
    assert record[0].message.line == 3  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("key", "text"),
    [("errno", "-1"), ("errno", "4096"), ("errno", "0xffffffff"), ("state", "-1"),
     ("state", "2147483648"), ("new_state", "-5")],
)  # fmt: skip
def test_values_qemu_accepts_but_we_cannot_model(tmp_path: Path, key: str, text: str) -> None:
    group = "set-state" if key == "new_state" else "inject-error"
    path = write(tmp_path, "u.ini", f'[{group}]\nevent = "read_aio"\n{key} = "{text}"\n')
    with pytest.raises(UnsupportedValueError) as info:
        load_rules(path)
    assert isinstance(info.value, RuleFileError)
    assert info.value.line == 3 and info.value.path == str(path)
    assert f'{key} = "{text}"' in info.value.message


# ---------------------------------------------------------------------------
# The QEMU ini reader: syntax quirks, errors with file and line
# ---------------------------------------------------------------------------

# (file text, line our error names, qemu-io's message). The message column is
# what qemu-io 7.2 printed; test_quirk_messages_match_qemu_io re-asks it.
QUIRKS: list[tuple[str, int, str]] = [
    ('[inject-error]\nevent = read_aio\n', 2, "invalid parameter value: "),
    ('[inject-error]\nevent="read_aio"\n', 2, "Invalid parameter 'event=\"read_aio\"'"),
    ('[inject-error]\nevent= "read_aio"\n', 2, "Invalid parameter 'event='"),
    ('[inject-error]\n  # indented\nevent = "read_aio"\n', 2, "Invalid parameter '#'"),
    ('; comment\n[inject-error]\nevent = "read_aio"\n', 1, "no group defined"),
    ('[inject-error]\n   \nevent = "read_aio"\n', 2, "parse error"),
    ('[inject-error]\r\n\r\nevent = "read_aio"\r\n', 2, "parse error"),
    ('[inject-error]\nevent = "read_aio"\nfoo = "1"\n', 3, "Invalid parameter 'foo'"),
    ('[bogus]\nevent = "read_aio"\n', 1, "There is no option group 'bogus'"),
    ('[ inject-error ]\nevent = "read_aio"\n', 1, "There is no option group ' inject-error '"),
    ('[Inject-Error]\nevent = "read_aio"\n', 1, "There is no option group 'Inject-Error'"),
    ('[inject-error]\nerrno = "5"\n', 1, "Missing event name for rule"),
    ('[inject-error]\n\nevent = "nope"\n', 3, "invalid parameter value: nope"),
    ('[inject-error]\nevent = "l1_grow.alloc_table"\n', 2,
     "invalid parameter value: l1_grow.alloc_table"),
    ('[inject-error]\nevent = "READ_AIO"\n', 2, "invalid parameter value: READ_AIO"),
    ('[inject-error]\nevent = "read_aio"\niotype = "bogus"\n', 3, "invalid parameter value: bogus"),
    ('[set-state]\nevent = "read_aio"\ntag = "A"\n', 3, "Invalid parameter 'tag'"),
    ('[set-state]\nevent = "read_aio"\nerrno = "5"\n', 3, "Invalid parameter 'errno'"),
    ('[inject-error]\nevent = "read_aio"\nerrno = ""\n', 3, "Parameter 'errno' expects a number"),
    ('[inject-error "a"]\nevent = "read_aio"\n[inject-error "a"]\nevent = "none"\n', 3,
     "Duplicate ID 'a' for inject-error"),
    ('[inject-error "1st"]\nevent = "read_aio"\n', 1,
     "Parameter 'id' expects an identifier\n"
     "Identifiers consist of letters, digits, '-', '.', '_', starting with a letter."),
    ('[inject-error]\nevent = "read_aio"\n[]\n', 3, "There is no option group ']'"),
    ('[inject-error]\nevent = "read_aio"\n[]\n[set-state]\nevent = "none"\n', 3,
     "Invalid parameter '[]'"),
    # validation order: QDict hash order inside a group, not file order
    ('[inject-error]\nerrno = "x"\nimmediately = "x"\nevent = "read_aio"\n', 3,
     "Parameter 'immediately' expects 'on' or 'off'"),
    # ... and add_rule() checks every [inject-error] before any [set-state]
    ('[set-state]\nevent = "nope"\n[inject-error]\nerrno = "5"\n', 3,
     "Missing event name for rule"),
    ('\xef\xbb\xbf[inject-error]\nevent = "read_aio"\n', 1, "no group defined"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "line", "message"), QUIRKS, ids=[str(i) for i in range(len(QUIRKS))]
)
def test_quirk_errors_name_file_and_line(
    tmp_path: Path, text: str, line: int, message: str
) -> None:
    path = write(tmp_path, "q.ini", text.encode("latin-1"))
    err = load_error(path)
    assert (err.path, err.line, err.message) == (str(path), line, message)
    assert str(err) == f"{path}:{line}: {message}"


@requires_qemu_io
@pytest.mark.parametrize(
    ("text", "line", "message"), QUIRKS, ids=[str(i) for i in range(len(QUIRKS))]
)
def test_quirk_messages_match_qemu_io(tmp_path: Path, text: str, line: int, message: str) -> None:
    write(tmp_path, "q.ini", text.encode("latin-1"))
    (tmp_path / "img.raw").write_bytes(b"\0" * 65536)
    proc = run_qemu_io(["-f", "raw", "-c", "read 0 512", "blkdebug:q.ini:img.raw"], cwd=tmp_path)
    prefix = "qemu-io: can't open device blkdebug:q.ini:img.raw: "
    assert proc.stderr.startswith(prefix), proc.stderr
    assert proc.stderr[len(prefix) :].rstrip("\n") == message


ACCEPTED = [
    '[inject-error]\nevent ="read_aio"\n',
    '[inject-error]\n\tevent = "read_aio"\n',
    '# comment\n[inject-error]\nevent = "read_aio"\n',
    '[inject-error]\r\nevent = "read_aio"\r\n',
    '[inject-error "x"]\nevent = "read_aio"\n',
    '[ inject-error "x"]\nevent = "read_aio"\n',
    '[inject-error]\n\n\n\nevent = "read_aio"\n',
    '[inject-error]\nevent\v=\f"read_aio"\n',
    '[inject-error]\nevent = "read_aio"',
]


@pytest.mark.parametrize("text", ACCEPTED)
def test_quirks_qemu_accepts(tmp_path: Path, text: str) -> None:
    rules = load_quietly(write(tmp_path, "a.ini", text))
    assert [r.event for r in rules] == ["read_aio"]


@pytest.mark.parametrize("text", ["", "\n", "\n\n", "# nothing\n", "#\n#\n"])
def test_empty_files(tmp_path: Path, text: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_rules(write(tmp_path, "e.ini", text)) == []


@pytest.mark.filterwarnings("ignore:.*set-state without new_state")  # QEMU's default, on purpose
def test_group_id_becomes_the_name(tmp_path: Path) -> None:
    text = (
        '[inject-error "second-write"]\nevent = "write_aio"\n[set-state "go.2"]\nevent = "none"\n'
    )
    rules = load_rules(write(tmp_path, "n.ini", text))
    assert [r.name for r in rules] == ["second-write", "go.2"]


def test_id_key_in_the_body_sets_the_name(tmp_path: Path) -> None:
    text = '[inject-error "a"]\nid = "b"\nevent = "write_aio"\n'
    with pytest.warns(RuleFileWarning, match="duplicate key 'id'"):
        (rule,) = load_rules(write(tmp_path, "n.ini", text))
    assert rule.name == "b"


@pytest.mark.filterwarnings("ignore:.*set-state without new_state")  # QEMU's default, on purpose
def test_same_id_in_both_groups_is_fine(tmp_path: Path) -> None:
    text = '[inject-error "a"]\nevent = "write_aio"\n[set-state "a"]\nevent = "none"\n'
    assert [r.name for r in load_rules(write(tmp_path, "n.ini", text))] == ["a", "a"]


def test_rules_keep_file_order(tmp_path: Path) -> None:
    text = (
        '[set-state]\nevent = "none"\nnew_state = "2"\n'
        '[inject-error]\nevent = "read_aio"\n'
        '[set-state]\nevent = "read_aio"\nnew_state = "3"\n'
        '[inject-error]\nevent = "write_aio"\n'
    )
    rules = load_rules(write(tmp_path, "o.ini", text))
    assert [(r.kind, r.event) for r in rules] == [
        ("set-state", "none"),
        ("inject-error", "read_aio"),
        ("set-state", "read_aio"),
        ("inject-error", "write_aio"),
    ]


def test_nul_byte_ends_the_line_for_qemu(tmp_path: Path) -> None:
    err = load_error(write(tmp_path, "z.ini", b'[inject-error]\nevent = "read\0_aio"\n'))
    assert (err.line, err.message) == (2, "invalid parameter value: read")


def test_non_utf8_bytes_are_escaped_in_messages(tmp_path: Path) -> None:
    err = load_error(write(tmp_path, "z.ini", b'[inject-error]\nevent = "r\xffad"\n'))
    assert err.message == "invalid parameter value: r\\xffad"
    str(err).encode("utf-8")  # printable


def test_long_line_is_split_like_fgets(tmp_path: Path) -> None:
    text = '[inject-error]\nevent = "read_aio"\n#' + "a" * 1100 + "\n"
    err = load_error(write(tmp_path, "l.ini", text))
    assert err.line == 3
    assert err.message == "Invalid parameter '" + "a" * 63 + "'"


def test_custom_events_need_a_registry(tmp_path: Path) -> None:
    path = write(tmp_path, "c.ini", '[inject-error]\nevent = "journal_commit"\n')
    err = load_error(path)
    assert (err.line, err.message) == (2, "invalid parameter value: journal_commit")
    registry = EventRegistry(["journal_commit"])
    assert load_rules(path, registry=registry) == [InjectError(event="journal_commit")]


# ---------------------------------------------------------------------------
# Warnings
# ---------------------------------------------------------------------------

WARNINGS = [
    ('[inject-error]\nerrno = "5"\nevent = "read_aio"\nerrno = "28"\n', 4, "duplicate key 'errno'"),
    ('[inject-error]\nevent = "read_aio" # why\n', 2, "text after the closing quote"),
    ('[inject-error]\nevent = "read_aio"x\n', 2, "text after the closing quote"),
    ('[inject-error] x\nevent = "read_aio"\n', 1, "text after the group header"),
    ('[inject-error "x" ]\nevent = "read_aio"\n', 1, "does not end with"),
    ('[inject-error]\nevent = "read_aio', 2, "missing closing quote"),
    ('[inject-error]\nevent = "read_aio"\nstate = "010"\n', 3, "octal"),
    ('[inject-error]\nevent = "read_aio"\nerrno = "4294967301"\n', 3, "as 5"),
    ('[inject-error]\nevent = "read_aio"\nerrno = "-18446744073709551611"\n', 3, "as 5"),
    ('[inject-error]\nevent = "read_aio"\n#' + "a" * 1022 + "# rest\n", 3, "longer than 1023"),
    ('[inject-error "' + "a" * 70 + '"]\nevent = "read_aio"\n', 1, "truncates"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "line", "fragment"), WARNINGS, ids=[str(i) for i in range(len(WARNINGS))]
)
def test_warnings(tmp_path: Path, text: str, line: int, fragment: str) -> None:
    path = write(tmp_path, "w.ini", text)
    with pytest.warns(RuleFileWarning) as record:
        load_rules(path)
    matching = [w.message for w in record if fragment in str(w.message)]
    assert matching, [str(w.message) for w in record]
    warning = matching[0]
    assert isinstance(warning, RuleFileWarning)
    assert (warning.path, warning.line) == (str(path), line)
    assert str(warning).startswith(f"{path}:{line}: ")


def test_duplicate_key_last_wins(tmp_path: Path) -> None:
    text = '[inject-error]\nerrno = "5"\nevent = "read_aio"\nerrno = "28"\n'
    with pytest.warns(RuleFileWarning, match="also set on line 2"):
        (rule,) = load_rules(write(tmp_path, "d.ini", text))
    assert isinstance(rule, InjectError) and rule.errno == 28


def test_warning_points_at_the_caller(tmp_path: Path) -> None:
    path = write(tmp_path, "d.ini", '[inject-error]\nevent = "read_aio" x\n')
    with pytest.warns(RuleFileWarning) as record:
        load_rules(path)
    assert record[0].filename == __file__


def test_clean_files_do_not_warn(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_rules(write(tmp_path, "all.ini", ALL_KEYS_INI))
        load_rules(
            write(tmp_path, "crlf.ini", ALL_KEYS_INI.replace("\n\n", "\n").replace("\n", "\r\n"))
        )


def test_rejected_files_do_not_warn(tmp_path: Path) -> None:
    path = write(tmp_path, "r.ini", '[inject-error]\nerrno = "5" x\nerrno = "6"\n')
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(RuleFileError, match="Missing event name"):
            load_rules(path)


# ---------------------------------------------------------------------------
# TOML
# ---------------------------------------------------------------------------

ALL_KEYS_TOML = """\
# every key
events = ["journal_commit", "wal.sync"]

[[inject-error]]
name = "first"
event = "journal_commit"
state = 3
errno = "ENOSPC"
sector = 8
iotype = ["read", "write"]
once = true
immediately = true

[[set-state]]
event = "read_aio"
state = 1
new_state = 3

[[inject-error]]
event = "wal.sync"
errno = 13
iotype = "flush"
"""


def test_toml_all_keys(tmp_path: Path) -> None:
    registry = EventRegistry()
    rules = load_rules(write(tmp_path, "all.toml", ALL_KEYS_TOML), registry=registry)
    assert rules == [
        InjectError(
            event="journal_commit",
            state=3,
            errno=errno.ENOSPC,
            sector=8,
            iotype=frozenset({"read", "write"}),
            once=True,
            immediately=True,
            name="first",
        ),
        SetState(event="read_aio", state=1, new_state=3),
        InjectError(event="wal.sync", errno=13, iotype=frozenset({"flush"})),
    ]
    assert registry.custom == ("journal_commit", "wal.sync")


def test_toml_inline_arrays(tmp_path: Path) -> None:
    text = 'inject-error = [{event = "read_aio", errno = 28}, {event = "none"}]\n'
    rules = load_rules(write(tmp_path, "i.toml", text))
    assert rules == [InjectError(event="read_aio", errno=28), InjectError(event="none")]


def test_toml_custom_event_without_events_list(tmp_path: Path) -> None:
    path = write(tmp_path, "c.toml", '[[inject-error]]\nevent = "journal_commit"\n')
    err = load_error(path)
    assert err.line == 2 and "unknown event 'journal_commit'" in err.message
    assert load_rules(path, registry=EventRegistry(["journal_commit"]))[0].event == "journal_commit"


def test_toml_registry_untouched_when_the_file_fails(tmp_path: Path) -> None:
    registry = EventRegistry()
    text = 'events = ["journal_commit"]\n[[inject-error]]\nevent = "journal_commit"\nonce = 1\n'
    with pytest.raises(RuleFileError):
        load_rules(write(tmp_path, "f.toml", text), registry=registry)
    assert registry.custom == ()


def test_toml_unknown_event_suggests(tmp_path: Path) -> None:
    err = load_error(write(tmp_path, "s.toml", '[[inject-error]]\nevent = "wirte_aio"\n'))
    assert "did you mean 'write_aio'" in err.message and err.line == 2


TOML_ERRORS: list[tuple[str, int | None, str]] = [
    ('foo = 1\n', 1, "unknown top-level key 'foo'"),
    ('[[inject-error]]\nevent = "read_aio"\n[breakpoint]\ntag = "A"\n', 3,
     "unknown top-level key 'breakpoint'"),
    ('events = "journal_commit"\n', 1, "events must be an array"),
    ('events = ["bad name"]\n', 1, "invalid event name 'bad name'"),
    ('[inject-error]\nevent = "read_aio"\n', 1, "write [[inject-error]]"),
    ('inject-error = [1]\n', 1, "must be tables"),
    ('[[inject-error]]\nerrno = 5\n', 1, "missing event"),
    ('[[inject-error]]\nevent = "read_aio"\n\nonce = 1\n', 4, "once must be true or false"),
    ('[[inject-error]]\nevent = "read_aio"\nerrno = 5.0\n', 3, "errno must be an errno number"),
    ('[[inject-error]]\nevent = "read_aio"\nerrno = true\n', 3, "errno must be an errno number"),
    ('[[inject-error]]\nevent = "read_aio"\nerrno = "EBOGUS"\n', 3, "unknown errno name 'EBOGUS'"),
    ('[[inject-error]]\nevent = "read_aio"\nerrno = 4096\n', 3, "out of range"),
    ('[[inject-error]]\nevent = "read_aio"\nsector = -2\n', 3, "out of range"),
    ('[[inject-error]]\nevent = "read_aio"\nstate = true\n', 3, "state must be an integer"),
    ('[[inject-error]]\nevent = "read_aio"\niotype = "bogus"\n', 3, "invalid iotype 'bogus'"),
    ('[[inject-error]]\nevent = "read_aio"\niotype = [1]\n', 3, "iotype must be"),
    ('[[inject-error]]\nevent = "read_aio"\niotype = []\n', 3, "invalid iotype"),
    ('[[inject-error]]\nevent = "read_aio"\nnew_state = 2\n', 3, "unknown key 'new_state'"),
    ('[[set-state]]\nevent = "read_aio"\nerrno = 2\n', 3, "unknown key 'errno'"),
    ('[[set-state]]\nevent = "read_aio"\nnew_state = -1\n', 3, "out of range"),
    ('[[set-state]]\nevent = 5\n', 2, "event must be a string"),
    ('[[set-state]]\nevent = "read_aio"\nname = ""\n', 3, "name must be"),
    ('[[set-state]]\nevent = "read_aio"\n[set-state.extra]\nx = 1\n', 3, "unknown key 'extra'"),
    ('[[inject-error]]\nevent = "read_aio"\n\n[[inject-error]]\nevent = "x"\n', 5,
     "unknown event 'x'"),
    ('x = [\n', (1, 2), "TOML syntax error"),  # tomllib: line 1; tomli on 3.10: 2 (end of input)
    ('[[inject-error]]\nevent = "read_aio"\nonce = tru\n', 3, "TOML syntax error"),
    ('a = 1\na = 2\n', 2, "TOML syntax error"),
    ('[[inject-error]]\nevent = "read_aio\n', 2, "TOML syntax error"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "line", "fragment"), TOML_ERRORS, ids=[str(i) for i in range(len(TOML_ERRORS))]
)
def test_toml_errors(tmp_path: Path, text: str, line: int | tuple[int, ...], fragment: str) -> None:
    path = write(tmp_path, "e.toml", text)
    err = load_error(path)
    assert fragment in err.message
    assert err.path == str(path)
    assert err.line in (line if isinstance(line, tuple) else (line,))
    assert str(err).startswith(f"{path}:{err.line}: ")


def test_toml_not_utf8(tmp_path: Path) -> None:
    err = load_error(write(tmp_path, "u.toml", b'# ok\n[[inject-error]]\nevent = "\xff"\n'))
    assert err.line == 3 and "UTF-8" in err.message


def test_toml_order_follows_the_file(tmp_path: Path) -> None:
    text = (
        '[[set-state]]\nevent = "none"\nnew_state = 0\n[[inject-error]]\nevent = "read_aio"\n'
        '[[set-state]]\nevent = "read_aio"\nnew_state = 0\n[[inject-error]]\nevent = "write_aio"\n'
    )
    rules = load_rules(write(tmp_path, "o.toml", text))
    assert [(r.kind, r.event) for r in rules] == [
        ("set-state", "none"),
        ("inject-error", "read_aio"),
        ("set-state", "read_aio"),
        ("inject-error", "write_aio"),
    ]


def test_loads_helpers() -> None:
    assert loads_ini('[inject-error]\nevent = "none"\n') == [InjectError(event="none")]
    assert loads_toml('[[set-state]]\nevent = "none"\nnew_state = 0\n') == [
        SetState(event="none", new_state=0)
    ]
    with pytest.raises(RuleFileError) as info:
        loads_ini('[inject-error]\nevent = "x"\n', path="inline")
    assert str(info.value) == "inline:2: invalid parameter value: x"


# ---------------------------------------------------------------------------
# Writers and round trips
# ---------------------------------------------------------------------------

SAMPLE: list[Rule] = [
    SetState(event="none", new_state=2),
    InjectError(event="read_aio", errno=28, state=2, sector=4, once=True, name="second-read"),
    InjectError(event="write_aio", errno=0, iotype=frozenset({"write"}), immediately=True),
    SetState(event="read_aio", state=2, new_state=0, name="back"),
    InjectError(event="none", iotype=frozenset({"block-status"})),
]


def test_dump_ini_round_trip(tmp_path: Path) -> None:
    text = dump_ini(SAMPLE)
    assert '[inject-error "second-read"]' in text and '[set-state "back"]' in text
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_rules(write(tmp_path, "r.ini", text)) == SAMPLE


def test_dump_toml_round_trip(tmp_path: Path) -> None:
    rules = [*SAMPLE, InjectError(event="journal_commit", iotype=frozenset({"read", "flush"}))]
    text = dump_toml(rules, events=["unused_event"])
    registry = EventRegistry()
    assert load_rules(write(tmp_path, "r.toml", text), registry=registry) == rules
    assert registry.custom == ("unused_event", "journal_commit")


@pytest.mark.parametrize("suffix", [".ini", ".toml", ".cfg", ".conf"])
def test_save_rules(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"rules{suffix}"
    path.write_text("old")
    path.chmod(0o640)
    save_rules(SAMPLE, path)
    assert load_rules(path) == SAMPLE
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_save_rules_new_file_and_events(tmp_path: Path) -> None:
    path = tmp_path / "new.toml"
    save_rules([InjectError(event="wal_sync")], path, events=["wal_sync"])
    registry = EventRegistry()
    assert load_rules(path, registry=registry) == [InjectError(event="wal_sync")]
    assert registry.custom == ("wal_sync",)


def test_save_rules_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "rules.ini"
    path.write_text("old contents")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError(errno.EIO, "simulated failure")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="simulated"):
        save_rules(SAMPLE, path)
    assert path.read_text() == "old contents"
    assert [p.name for p in tmp_path.iterdir()] == ["rules.ini"]


def test_save_rules_refuses_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(RuleFileError, match=r"\.toml"):
        save_rules(SAMPLE, tmp_path / "rules.json")
    assert not (tmp_path / "rules.json").exists()


@pytest.mark.parametrize(
    ("rules", "fragment"),
    [
        ([InjectError(event="none", iotype=frozenset({"read", "write"}))], "single iotype"),
        ([InjectError(event="none", iotype=frozenset(IOTYPES))], "single iotype"),
        ([InjectError(event="none", name="1st")], "QEMU id"),
        ([InjectError(event="none", name="has space")], "QEMU id"),
        ([InjectError(event="none", name="a" * 64)], "QEMU id"),
        (
            [
                SetState(event="none", new_state=0, name="x"),
                SetState(event="read_aio", new_state=0, name="x"),
            ],
            "share",
        ),
        ([Breakpoint(event="none", tag="A")], "only inject-error and set-state"),  # type: ignore[list-item]
    ],
)
def test_dump_ini_refuses_what_qemu_cannot_read(rules: list[Rule], fragment: str) -> None:
    with pytest.raises(RuleError, match=fragment):
        dump_ini(rules)


def test_dump_ini_same_name_in_both_kinds_is_fine(tmp_path: Path) -> None:
    rules = [SetState(event="none", new_state=2, name="x"), InjectError(event="none", name="x")]
    text = dump_ini(rules)
    assert '[set-state "x"]' in text and '[inject-error "x"]' in text
    assert load_rules(write(tmp_path, "same.ini", text)) == rules


def test_dump_toml_escapes_names(tmp_path: Path) -> None:
    rules = [InjectError(event="none", name="tab\there \\ back\x7f é")]
    assert load_rules(write(tmp_path, "e.toml", dump_toml(rules))) == rules


# Hypothesis: any rule list survives a round trip through either format.

ID_CHARS = string.ascii_letters + string.digits + "-._"
qemu_ids = st.builds(
    lambda first, rest: first + rest,
    st.sampled_from(string.ascii_letters),
    st.text(ID_CHARS, max_size=20),
)
toml_names = st.text(
    st.characters(blacklist_characters='"\n\r', blacklist_categories=("Cs",)),
    min_size=1,
    max_size=20,
)


def inject_errors(names: st.SearchStrategy[str], iotypes: st.SearchStrategy[frozenset[str]]):  # type: ignore[no-untyped-def]
    return st.builds(
        InjectError,
        event=st.sampled_from(QEMU_EVENTS),
        errno=st.integers(0, 4095),
        sector=st.one_of(st.just(-1), st.integers(0, MAX_SECTOR)),
        once=st.booleans(),
        immediately=st.booleans(),
        iotype=iotypes,
        state=st.integers(0, MAX_STATE),
        name=st.one_of(st.none(), names),
    )


def set_states(names: st.SearchStrategy[str]):  # type: ignore[no-untyped-def]
    return st.builds(
        SetState,
        event=st.sampled_from(QEMU_EVENTS),
        new_state=st.integers(0, MAX_STATE),
        state=st.integers(0, MAX_STATE),
        name=st.one_of(st.none(), names),
    )


def unique_names(rules: list[Rule]) -> bool:
    seen = [(r.kind, r.name) for r in rules if r.name is not None]
    return len(seen) == len(set(seen))


ini_iotypes = st.one_of(
    st.just(DEFAULT_IOTYPES), st.sampled_from(IOTYPES).map(lambda t: frozenset({t}))
)
ini_rule_lists = st.lists(
    st.one_of(inject_errors(qemu_ids, ini_iotypes), set_states(qemu_ids)), max_size=8
).filter(unique_names)
toml_rule_lists = st.lists(
    st.one_of(
        inject_errors(toml_names, st.frozensets(st.sampled_from(IOTYPES), min_size=1)),
        set_states(toml_names),
    ),
    max_size=8,
)

HYPOTHESIS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@HYPOTHESIS
@given(rules=ini_rule_lists)
def test_ini_round_trip_property(tmp_path: Path, rules: list[Rule]) -> None:
    path = tmp_path / "rt.ini"
    save_rules(rules, path)
    assert load_quietly(path) == rules


@HYPOTHESIS
@given(rules=toml_rule_lists)
def test_toml_round_trip_property(tmp_path: Path, rules: list[Rule]) -> None:
    path = tmp_path / "rt.toml"
    save_rules(rules, path)
    assert load_rules(path) == rules


@requires_qemu_io
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rules=ini_rule_lists)
def test_dumped_ini_is_accepted_by_qemu_io(tmp_path: Path, rules: list[Rule]) -> None:
    (tmp_path / "img.raw").write_bytes(b"\0" * 65536)
    (tmp_path / "d.ini").write_text(dump_ini(rules))
    args = ["-f", "raw", "-t", "writeback", "-c", "length", "blkdebug:d.ini:img.raw"]
    proc = run_qemu_io(args, cwd=tmp_path)
    assert "can't open device" not in proc.stdout + proc.stderr, proc.stderr


# ---------------------------------------------------------------------------
# Fuzz: nothing but RuleFileError ever escapes load_rules
# ---------------------------------------------------------------------------

INI_ALPHABET = st.sampled_from(
    ["[", "]", '"', "=", " ", "\t", "\n", "\r", "#", "\0", "\xff", "inject-error", "set-state",
     "event", "errno", "sector", "state", "new_state", "once", "iotype", "read_aio", "on", "0x",
     "-1", "7", "id", "a"]
)  # fmt: skip
TOML_ALPHABET = st.sampled_from(
    ["[[inject-error]]", "[[set-state]]", "[inject-error]", "events", "event", "errno", "sector",
     "state", "new_state", "once", "iotype", "name", " = ", "\n", '"read_aio"', '"ENOSPC"', "5",
     "-1", "true", "[", "]", "{", "}", ",", '"', "'", "#", "1e3", "[[", "]]", '"x"', "\\"]
)  # fmt: skip


def check_only_rule_file_errors(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    registry = EventRegistry()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuleFileWarning)
        try:
            rules = load_rules(path, registry=registry)
        except RuleFileError as exc:
            assert exc.path == str(path)
            assert exc.line is None or exc.line >= 1
            return
    for rule in rules:
        assert isinstance(rule, (InjectError, SetState)) and rule.event in registry


FUZZ = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@FUZZ
@given(data=st.binary(max_size=400))
@pytest.mark.parametrize("suffix", [".ini", ".toml"])
def test_fuzz_bytes(tmp_path: Path, suffix: str, data: bytes) -> None:
    check_only_rule_file_errors(tmp_path / f"fuzz{suffix}", data)


@FUZZ
@given(text=st.text(max_size=300))
@pytest.mark.parametrize("suffix", [".ini", ".toml"])
def test_fuzz_text(tmp_path: Path, suffix: str, text: str) -> None:
    check_only_rule_file_errors(tmp_path / f"fuzz{suffix}", text.encode("utf-8", "surrogatepass"))


@FUZZ
@given(parts=st.lists(INI_ALPHABET, max_size=60))
def test_fuzz_ini_tokens(tmp_path: Path, parts: list[str]) -> None:
    check_only_rule_file_errors(tmp_path / "fuzz.ini", "".join(parts).encode("latin-1"))


@FUZZ
@given(parts=st.lists(TOML_ALPHABET, max_size=60))
def test_fuzz_toml_tokens(tmp_path: Path, parts: list[str]) -> None:
    check_only_rule_file_errors(tmp_path / "fuzz.toml", "".join(parts).encode())


def test_deeply_nested_toml(tmp_path: Path) -> None:
    check_only_rule_file_errors(tmp_path / "deep.toml", b"x = " + b"[" * 100000 + b"]" * 100000)


def test_warning_survives_pickling() -> None:
    import pickle

    warning = pickle.loads(pickle.dumps(RuleFileWarning("r.ini", 3, "duplicate key 'errno'")))
    assert (warning.path, warning.line, warning.text) == ("r.ini", 3, "duplicate key 'errno'")
    assert str(warning) == "r.ini:3: duplicate key 'errno'"


@pytest.mark.parametrize(
    ("name", "data", "cls", "line"),
    [
        pytest.param(
            "bad.ini", '[inject-error]\n  event = "nope"\n', RuleFileError, 2, id="ini-error"
        ),
        pytest.param(
            "wide.ini",
            '[inject-error]\n  event = "read_aio"\n  errno = "-1"\n',
            UnsupportedValueError,
            3,
            id="unsupported",
        ),
        pytest.param("rules.txt", "", RuleFileError, None, id="no-line"),
    ],
)
def test_rule_file_error_survives_pickling(
    tmp_path: Path, name: str, data: str, cls: type[RuleFileError], line: int | None
) -> None:
    # Errors from real loads, as pytest-xdist and multiprocessing pickle
    # them; an UnsupportedValueError must come back as that subclass.
    import pickle

    with pytest.raises(RuleFileError) as info:
        load_rules(write(tmp_path, name, data))
    error = info.value
    assert type(error) is cls
    assert error.line == line
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is cls
    assert (copy.path, copy.line, copy.message) == (error.path, error.line, error.message)
    assert copy.path.endswith(name)
    assert str(copy) == str(error)
