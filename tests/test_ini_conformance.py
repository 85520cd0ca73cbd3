"""The ini reader accepts and rejects exactly what real qemu-io 7.2 does.

Several hundred ini files are generated from a fixed seed: hand-picked QEMU
quirks, structured mutations of valid files (quoting, white space around
``=``, indentation, comments, CRLF, case, unknown keys/groups/events, bad
booleans and numbers, hex/octal, ``[group "id"]`` headers, duplicate keys,
long lines, NUL bytes, ...) and random byte-level edits. Each file goes
through ``qemu-io -f raw -t writeback`` and through ``load_rules``:

* both must accept, or both reject; a rejection must be a ``RuleFileError``
  naming the file and a line, whose message is qemu-io's text verbatim;
* when both accept, the parsed rules must predict what qemu-io then did:
  the outcome of ``read 0 512; read 0 512; write 0 512`` (this checks the
  values read for errno, sector, state, new_state, iotype, once and the
  event names) is recomputed from our rules and compared with qemu-io's;
* the one documented difference: values QEMU stores into a C ``int`` that
  end up negative (or errnos above 4095) are refused with
  ``UnsupportedValueError`` although qemu-io accepts them.

qemu-io runs in a thread pool; the whole module takes a few seconds.
"""

from __future__ import annotations

import os
import random
import re
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from qemu_helpers import requires_qemu_io, run_qemu_io

from pytest_blkdebug.core.errors import RuleFileError
from pytest_blkdebug.core.rules import InjectError, Rule, SetState
from pytest_blkdebug.rulefiles.loader import UnsupportedValueError, load_rules

pytestmark = requires_qemu_io

SEED = 7202
MIN_CASES = 300
COMMANDS = ("read 0 512", "read 0 512", "write 0 512")
OPEN_ERROR = "can't open device "

# ---------------------------------------------------------------------------
# Case generation (deterministic)
# ---------------------------------------------------------------------------

TEMPLATES: list[list[str]] = [
    [
        "[inject-error]",
        'event = "read_aio"',
        'errno = "28"',
        'once = "on"',
    ],
    [
        "[set-state]",
        'event = "none"',
        'new_state = "2"',
        "",
        '[inject-error "second"]',
        'event = "read_aio"',
        'state = "2"',
        'errno = "5"',
        'sector = "0"',
        'iotype = "read"',
        'immediately = "off"',
    ],
    [
        "# rules for a write then a read",
        "[inject-error]",
        '  event = "write_aio"',
        '  errno = "13"',
        '  iotype = "write"',
        "",
        "[set-state]",
        '  event = "read_aio"',
        '  state = "1"',
        '  new_state = "3"',
        "",
        "[inject-error]",
        '  event = "read_aio"',
        '  state = "3"',
        '  errno = "1"',
        '  once = "yes"',
    ],
    [
        "[inject-error]",
        'event = "pwritev"',
        'errno = "0x1c"',
        'sector = "1"',
        "",
        "[inject-error]",
        'event = "none"',
        'errno = "0"',
        'iotype = "read"',
        'once = "y"',
        "",
        "[inject-error]",
        'event = "none"',
        'errno = "2"',
    ],
]

KEY_LINE = re.compile(r'^(\s*)(\S+)(\s*)=(\s*)"([^"]*)"(.*)$')
VALID_EVENTS = [
    "read_aio",
    "write_aio",
    "none",
    "pwritev",
    "pwritev_done",
    "flush_to_disk",
    "l2_load",
]
BAD_EVENTS = ["nope", "READ_AIO", "l1_grow.alloc_table", "read_aio ", " read_aio", "", "read-aio"]
GOOD_BOOLS = ["on", "off", "yes", "no", "true", "false", "y", "n"]
BOOLS = [
    "on",
    "off",
    "yes",
    "no",
    "true",
    "false",
    "y",
    "n",
    "ON",
    "Off",
    "1",
    "0",
    "",
    "t",
    "yes ",
]
NUMBERS = [
    "0", "1", "2", "5", "28", "0x1c", "0X1C", "034", "08", "00", "-1", " 5", "\t7", "5 ", "+3", "1k",
    "", "0x", "0b1", "4294967297", "4294967296", "18446744073709551615", "18446744073709551616",
    "99999999999999999999x", "-18446744073709551615", "4096", "2147483648", "36028797018963968",
    "36028797018963969", "-2", "0x7fffffff", "1e3", "- 5", "0x-1", "3.0",
]  # fmt: skip
IOTYPE_VALUES = ["read", "write", "write-zeroes", "discard", "flush", "block-status", "READ", "bogus",
                 "", "read,write", " read"]  # fmt: skip
GROUP_NAMES = ["bogus", "inject_error", "Inject-Error", "set_state", "breakpoint", " inject-error ",
               "inject-error ", "set-state", "inject-error", "INJECT-ERROR"]  # fmt: skip
IDS = ["a", "second", "a.b-c_d", "x1", "1x", "a b", "", "_x", "-x", "x" * 70, "\u00e9t\u00e9", "A"]
UNKNOWN_KEYS = [
    "foo",
    "tag",
    "id",
    "new_state",
    "errno",
    "Event",
    "event.x",
    "#",
    "iotype",
    "sector",
]

SPECIALS: list[bytes] = [
    b"",
    b"\n",
    b"\n\n\n",
    b"\r\n",
    b" \n",
    b"\t\n",
    b"# only a comment\n",
    b"#\n#\n",
    b"  # indented comment\n",
    b"; semicolon comment\n",
    b"[inject-error]\n",
    b"[set-state]\n",
    b"[inject-error]\nevent = \"read_aio\"",
    b"[inject-error]\nevent = \"read_aio",
    b"[inject-error]\nevent = \"read_aio\n",
    b"[inject-error]\nevent = read_aio\n",
    b"[inject-error]\nevent\n",
    b"[inject-error]\nevent =\n",
    b"[inject-error]\nevent = \"\"\n",
    b"[inject-error]\nevent=\"read_aio\"\n",
    b"[inject-error]\nevent= \"read_aio\"\n",
    b"[inject-error]\nevent =\"read_aio\"\n",
    b"[inject-error]\nevent\t=\t\"read_aio\"\n",
    b"[inject-error]\nevent\v=\f\"read_aio\"\n",
    b"[inject-error]\nevent = \"read_aio\" = \"write_aio\"\n",
    b"[inject-error]\nevent = \"read_aio\"x\"\n",
    b"[inject-error]\r\nevent = \"read_aio\"\r\n",
    b"[inject-error]\r\nevent = \"read_aio\"\r\n\r\n",
    b"[inject-error]\revent = \"read_aio\"\r",
    b"\xef\xbb\xbf[inject-error]\nevent = \"read_aio\"\n",
    b"event = \"read_aio\"\n[inject-error]\n",
    b"[]\n",
    b"[\n",
    b"[",
    b"[ ]\nevent = \"read_aio\"\n",
    b"[inject-error]\nevent = \"read_aio\"\n[]\n",
    b"[inject-error]\nevent = \"read_aio\"\n[]\n[set-state]\nevent = \"none\"\n",
    b"[inject-error]\nevent = \"read_aio\"\n[]x \"y\"]\n",
    b"[inject-error]\nevent = \"read_aio\"\n[\n",
    b"[inject-error]\nevent = \"read_aio\"\n[ \n",
    b"[inject-error",
    b"[inject-error\nevent = \"read_aio\"\n",
    b"[[inject-error]]\nevent = \"read_aio\"\n",
    b"[inject-error]]\nevent = \"read_aio\"\n",
    b"[inject-error] trailing\nevent = \"read_aio\"\n",
    b"[inject-error]trailing\nevent = \"read_aio\"\n",
    b"[inject-error \"x\" \"y\"]\nevent = \"read_aio\"\n",
    b"[inject-error\t\"x\"]\nevent = \"read_aio\"\n",
    b"[ inject-error \"x\"]\nevent = \"read_aio\"\n",
    b"[inject-error \"x]\nevent = \"read_aio\"\n",
    b"[inject-error \"x\"\nevent = \"read_aio\"\n",
    b"[inject-error \"x\"]\n[inject-error \"y\"\n",
    b"[inject-error \"a\"]\nevent = \"read_aio\"\n[inject-error \"a\"]\nevent = \"read_aio\"\n",
    b"[inject-error \"a\"]\nevent = \"read_aio\"\n[set-state \"a\"]\nevent = \"read_aio\"\n",
    b"[inject-error]\nid = \"b\"\nevent = \"read_aio\"\n[inject-error \"b\"]\nevent = \"read_aio\"\n",
    b"[inject-error \"a\"]\nid = \"1b\"\nevent = \"read_aio\"\n",
    b"[inject-error \"a\"]\nid = \"b\"\nevent = \"read_aio\"\n[inject-error \"a\"]\nevent = \"none\"\n",
    b"[inject-error]\nkaa = \"1\"\nkab = \"2\"\nevent = \"read_aio\"\n",
    b"[inject-error]\nkab = \"1\"\nkaa = \"2\"\nkab = \"3\"\nevent = \"read_aio\"\n",
    b"[inject-error]\nerrno = \"y\"\nimmediately = \"x\"\nevent = \"read_aio\"\n",
    b"[inject-error]\nonce = \"x\"\nerrno = \"y\"\nsector = \"z\"\nevent = \"read_aio\"\n",
    b"[set-state]\nevent = \"nope\"\n[inject-error]\nstate = \"1\"\n",
    b"[set-state]\nevent = \"read_aio\"\n[inject-error]\nevent = \"nope\"\n",
    b"[inject-error]\nevent = \"nope\"\n[inject-error]\n",
    b"[inject-error]\nevent = \"read_aio\"\niotype = \"x\"\n[inject-error]\nevent = \"nope\"\n",
    b"[inject-error]\nevent = \"r\xffead_aio\"\n",
    b"[inject-error]\nevent = \"read_aio\"\n\xff = \"1\"\n",
    b"[inject-error]\nevent = \"read\x00_aio\"\n",
    b"[inject-error]\n\x00event = \"read_aio\"\n",
    b"[inject-error]\nevent = \"read_aio\"\n\x00\n",
    b"[inject-error]\n" + b"e" * 70 + b" = \"1\"\nevent = \"read_aio\"\n",
    b"[inject-error]\nevent = \"read_aio\"\n" + b"A" * 63 + b"= \"1\"\n",
    b"[inject-error]\nevent = \"read_aio\"\n" + b"A" * 62 + b"= \"1\"\n",
    b"[inject-error" + b"A" * 70 + b"]\nevent = \"read_aio\"\n",
    b"[inject-error \"" + b"a" * 70 + b"\"]\nevent = \"read_aio\"\n",
    b"[inject-error \"" + b"a" * 63 + b"\"]\nevent = \"read_aio\"\n",
    b"[inject-error]\nevent = \"read_aio\"" + b" " * 1100 + b"\n",
    b"[inject-error]\nevent = \"read_aio\"\n#" + b"a" * 1100 + b"\n",
    b"[inject-error]\nevent = \"read_aio\"\n#" + b"a" * 1021 + b"\n",
    b"[inject-error]\nevent = \"read_aio\"\n#" + b"a" * 1022 + b"\n",
    b"#" + b"a" * 1022 + b"[inject-error]\nevent = \"read_aio\"\n",
    b"[inject-error]\nevent = \"read_aio\"\nstate = \"4294967297\"\n",
    b"[inject-error]\nevent = \"read_aio\"\nstate = \"-1\"\n",
    b"[set-state]\nevent = \"none\"\nnew_state = \"-1\"\n",
    b"[inject-error]\nevent = \"read_aio\"\nerrno = \"-1\"\n",
    b"[inject-error]\nevent = \"read_aio\"\nerrno = \"4096\"\n",
    b"[inject-error]\nevent = \"read_aio\"\nsector = \"-1\"\n",
    b"[inject-error]\nevent = \"read_aio\"\nsector = \"0xffffffffffffffff\"\n",
    b"[inject-error]\nevent = \"read_aio\"\nsector = \"18014398509481984\"\n",
    b"[set-state]\nevent = \"read_aio\"\niotype = \"read\"\n",
    b"[set-state]\nevent = \"read_aio\"\ntag = \"A\"\n",
    b"[inject-error]\nevent = \"read_aio\"\ntag = \"A\"\n",
    b"[inject-error]\nevent = \"read_aio\"\nhelp = \"\"\n",
    b"[inject-error]\nevent = \"read_aio\"\ndelay-ns = \"1\"\n",
    b"[set-state]\nevent = \"none\"\nnew_state = \"0\"\n[inject-error]\nevent = \"read_aio\"\nstate = \"1\"\n",
    b"[set-state]\nevent = \"none\"\n[inject-error]\nevent = \"read_aio\"\nstate = \"0\"\n",
    b"[set-state]\nevent = \"read_aio\"\nnew_state = \"5\"\n[set-state]\nevent = \"read_aio\"\n"
    b"new_state = \"7\"\n[inject-error]\nevent = \"write_aio\"\nstate = \"5\"\n[inject-error]\n"
    b"event = \"write_aio\"\nstate = \"7\"\nerrno = \"28\"\n",
    b"[inject-error]\nevent = \"read_aio\"\nerrno = \"0\"\nonce = \"on\"\n[inject-error]\n"
    b"event = \"read_aio\"\nerrno = \"5\"\n",
    b"[inject-error]\nevent = \"read_aio\"\nerrno = \"5\"\nonce = \"on\"\n[inject-error]\n"
    b"event = \"read_aio\"\nerrno = \"28\"\nonce = \"on\"\n[inject-error]\n"
    b"event = \"read_aio\"\nerrno = \"13\"\nonce = \"on\"\n",
    b"[set-state]\nevent = \"read_aio\"\nnew_state = \"2\"\n[set-state]\nevent = \"read_aio\"\n"
    b"state = \"2\"\nnew_state = \"1\"\n[inject-error]\nevent = \"read_aio\"\nstate = \"2\"\nonce = \"on\"\n",
]  # fmt: skip


# Every number for every numeric key, and every boolean for both boolean
# keys, in files where the value read decides the outcome of the commands.
VALUE_TEMPLATES: dict[str, str] = {
    "errno": '[inject-error]\nevent = "read_aio"\nerrno = "{v}"\n',
    "sector": '[inject-error]\nevent = "read_aio"\nerrno = "28"\nsector = "{v}"\n',
    "state": '[set-state]\nevent = "none"\nnew_state = "2"\n'
    '[inject-error]\nevent = "read_aio"\nstate = "{v}"\n',
    "new_state": '[set-state]\nevent = "none"\nnew_state = "{v}"\n'
    '[inject-error]\nevent = "read_aio"\nstate = "5"\nerrno = "28"\n'
    '[inject-error]\nevent = "write_aio"\nstate = "1"\nerrno = "13"\n',
    "once": '[inject-error]\nevent = "read_aio"\nonce = "{v}"\n',
    "immediately": '[inject-error]\nevent = "read_aio"\nimmediately = "{v}"\n',
    "iotype": '[inject-error]\nevent = "none"\niotype = "{v}"\n',
    "event": '[inject-error]\nevent = "{v}"\nerrno = "28"\n',
}
VALUE_CASES: list[bytes] = [
    VALUE_TEMPLATES[key].format(v=value).encode()
    for key, pool in (
        ("errno", NUMBERS),
        ("sector", NUMBERS),
        ("state", NUMBERS),
        ("new_state", NUMBERS),
        ("once", BOOLS),
        ("immediately", BOOLS),
        ("iotype", IOTYPE_VALUES),
        ("event", VALID_EVENTS + BAD_EVENTS),
    )
    for value in pool
]


def _set_value(line: str, value: str) -> str:
    m = KEY_LINE.match(line)
    assert m, line
    return f'{m.group(1)}{m.group(2)}{m.group(3)}={m.group(4)}"{value}"{m.group(6)}'


def _key_lines(lines: list[str], key: str | None = None) -> list[int]:
    out = []
    for i, line in enumerate(lines):
        m = KEY_LINE.match(line)
        if m and (key is None or m.group(2) == key):
            out.append(i)
    return out


def _headers(lines: list[str]) -> list[int]:
    return [i for i, line in enumerate(lines) if line.lstrip().startswith("[")]


Mutation = Callable[[random.Random, list[str]], list[str]]


def _mut_unquote(rng: random.Random, lines: list[str]) -> list[str]:
    i = rng.choice(_key_lines(lines))
    m = KEY_LINE.match(lines[i])
    assert m
    lines[i] = f"{m.group(1)}{m.group(2)} = {m.group(5)}"
    return lines


def _mut_eq_spacing(rng: random.Random, lines: list[str]) -> list[str]:
    i = rng.choice(_key_lines(lines))
    m = KEY_LINE.match(lines[i])
    assert m
    before, after = rng.choice(
        [("", " "), (" ", ""), ("", ""), ("\t", "\t"), ("   ", "  "), (" ", "\t")]
    )
    lines[i] = f'{m.group(1)}{m.group(2)}{before}={after}"{m.group(5)}"{m.group(6)}'
    return lines


def _mut_indent(rng: random.Random, lines: list[str]) -> list[str]:
    i = rng.randrange(len(lines))
    lines[i] = rng.choice([" ", "\t", "  \t", "\v"]) + lines[i]
    return lines


def _mut_comment(rng: random.Random, lines: list[str]) -> list[str]:
    text = rng.choice(["# note", "  # indented", "\t#tab", "; semicolon", "#", "#[inject-error]",
                       '# event = "nope"', "// slashes"])  # fmt: skip
    lines.insert(rng.randrange(len(lines) + 1), text)
    return lines


def _mut_trailing(rng: random.Random, lines: list[str]) -> list[str]:
    i = rng.choice(_key_lines(lines) + _headers(lines))
    lines[i] += rng.choice([" # comment", "x", '"', " ; c", "   ", "\t", ' "more"', "]"])
    return lines


def _mut_blank(rng: random.Random, lines: list[str]) -> list[str]:
    lines.insert(rng.randrange(len(lines) + 1), rng.choice(["", "", " ", "\t", "\r", "   "]))
    return lines


def _mut_case(rng: random.Random, lines: list[str]) -> list[str]:
    i = rng.randrange(len(lines))
    lines[i] = rng.choice([str.upper, str.title, str.swapcase])(lines[i])
    return lines


def _mut_unknown_key(rng: random.Random, lines: list[str]) -> list[str]:
    key = rng.choice(UNKNOWN_KEYS)
    value = rng.choice(["1", "x", "read", "on", ""])
    lines.insert(rng.randrange(1, len(lines) + 1), f'{key} = "{value}"')
    return lines


def _mut_group(rng: random.Random, lines: list[str]) -> list[str]:
    i = rng.choice(_headers(lines))
    m = re.match(r'^(\s*)\[([^\]" ]+)((?: "[^"]*")?)\]$', lines[i])
    if m:
        lines[i] = f"{m.group(1)}[{rng.choice(GROUP_NAMES)}{m.group(3)}]"
    return lines


def _mut_event(rng: random.Random, lines: list[str]) -> list[str]:
    i = rng.choice(_key_lines(lines, "event"))
    lines[i] = _set_value(lines[i], rng.choice(VALID_EVENTS + BAD_EVENTS))
    return lines


def _mut_bool(rng: random.Random, lines: list[str]) -> list[str]:
    key = rng.choice(["once", "immediately"])
    found = _key_lines(lines, key)
    value = rng.choice(BOOLS)
    if found:
        lines[found[0]] = _set_value(lines[found[0]], value)
    else:
        lines.insert(rng.randrange(1, len(lines) + 1), f'{key} = "{value}"')
    return lines


def _mut_number(rng: random.Random, lines: list[str]) -> list[str]:
    key = rng.choice(["errno", "errno", "state", "sector", "sector", "new_state"])
    found = _key_lines(lines, key)
    value = rng.choice(NUMBERS)
    if found:
        lines[found[0]] = _set_value(lines[found[0]], value)
    else:
        headers = _headers(lines)
        lines.insert(rng.choice(headers) + 1, f'{key} = "{value}"')
    return lines


def _mut_iotype(rng: random.Random, lines: list[str]) -> list[str]:
    found = _key_lines(lines, "iotype")
    value = rng.choice(IOTYPE_VALUES)
    if found:
        lines[found[0]] = _set_value(lines[found[0]], value)
    else:
        lines.insert(rng.choice(_headers(lines)) + 1, f'iotype = "{value}"')
    return lines


def _mut_header_id(rng: random.Random, lines: list[str]) -> list[str]:
    i = rng.choice(_headers(lines))
    m = re.match(r'^(\s*)\[([^\]" ]+)', lines[i])
    if m:
        ident = rng.choice(IDS)
        form = rng.choice(['[{g} "{i}"]', '[{g} "{i}" ]', '[{g}"{i}"]', '[{g}  "{i}"]', '[{g} "{i}"] x',
                           '[{g} "{i}', '[{g} "{i}"', '[ {g} "{i}"]'])  # fmt: skip
        lines[i] = m.group(1) + form.format(g=m.group(2), i=ident)
    return lines


def _mut_duplicate_key(rng: random.Random, lines: list[str]) -> list[str]:
    i = rng.choice(_key_lines(lines))
    m = KEY_LINE.match(lines[i])
    assert m
    key = m.group(2)
    pool = {"event": VALID_EVENTS + BAD_EVENTS, "once": BOOLS, "immediately": BOOLS,
            "iotype": IOTYPE_VALUES}.get(key, NUMBERS)  # fmt: skip
    new = _set_value(lines[i], rng.choice(pool))
    lines.insert(i + rng.choice([1, 2]) if i + 2 <= len(lines) else i + 1, new)
    return lines


def _mut_remove_line(rng: random.Random, lines: list[str]) -> list[str]:
    del lines[rng.randrange(len(lines))]
    return lines or [""]


def _mut_move_key_up(rng: random.Random, lines: list[str]) -> list[str]:
    i = rng.choice(_key_lines(lines))
    lines.insert(0, lines.pop(i))
    return lines


def _mut_swap_kind(rng: random.Random, lines: list[str]) -> list[str]:
    i = rng.choice(_headers(lines))
    if "inject-error" in lines[i]:
        lines[i] = lines[i].replace("inject-error", "set-state")
    else:
        lines[i] = lines[i].replace("set-state", "inject-error")
    return lines


def _mut_unclosed_quote(rng: random.Random, lines: list[str]) -> list[str]:
    i = rng.choice(_key_lines(lines))
    lines[i] = lines[i][: lines[i].rindex('"')] + lines[i][lines[i].rindex('"') + 1 :]
    return lines


def _mut_weird_header(rng: random.Random, lines: list[str]) -> list[str]:
    text = rng.choice(["[]", "[", "[ ]", "[inject-error", "[[inject-error]]", "[inject-error]]",
                       "[set-state", "[ set-state]", "[\tinject-error]", "[inject-error\t]"])  # fmt: skip
    lines.insert(rng.randrange(len(lines) + 1), text)
    return lines


def _mut_long_line(rng: random.Random, lines: list[str]) -> list[str]:
    i = rng.randrange(len(lines))
    lines[i] = lines[i] + rng.choice([" ", "#", "x"]) * rng.choice([1010, 1020, 1030, 1100, 2100])
    return lines


def _mut_dup_group(rng: random.Random, lines: list[str]) -> list[str]:
    headers = _headers(lines)
    k = rng.randrange(len(headers))
    end = headers[k + 1] if k + 1 < len(headers) else len(lines)
    return lines + [""] + lines[headers[k] : end]


def _mut_valid_value(rng: random.Random, lines: list[str]) -> list[str]:
    """Benign edits, so that plenty of files are accepted and their values
    matter for the outcome of the commands."""
    i = rng.choice(_key_lines(lines))
    m = KEY_LINE.match(lines[i])
    assert m
    pool = {
        "event": VALID_EVENTS,
        "once": GOOD_BOOLS,
        "immediately": GOOD_BOOLS,
        "iotype": ["read", "write", "write-zeroes", "flush", "discard", "block-status"],
        "sector": ["0", "00", "0x0", "1", "-1", "0x1", " 0", "+0"],
        "state": ["0", "1", "2", "3", "0x2", "02"],
        "new_state": ["0", "1", "2", "3", "0x3", "03"],
    }.get(m.group(2), ["0", "1", "2", "5", "13", "28", "0x1c", "034", "0", "  5"])
    lines[i] = _set_value(lines[i], rng.choice(pool))
    return lines


MUTATIONS: list[Mutation] = [
    _mut_unquote, _mut_eq_spacing, _mut_indent, _mut_comment, _mut_trailing, _mut_blank,
    _mut_case, _mut_unknown_key, _mut_group, _mut_event, _mut_bool, _mut_number, _mut_number,
    _mut_iotype, _mut_header_id, _mut_duplicate_key, _mut_remove_line, _mut_move_key_up,
    _mut_swap_kind, _mut_unclosed_quote, _mut_weird_header, _mut_long_line, _mut_dup_group,
    _mut_bool, _mut_event, _mut_valid_value, _mut_valid_value, _mut_valid_value,
    _mut_valid_value, _mut_eq_spacing, _mut_comment, _mut_indent,
]  # fmt: skip

FUZZ_BYTES = b'"[]= #\t\r\n\x00xX0-_e'


def _encode(lines: list[str], rng: random.Random) -> bytes:
    eol = rng.choice(["\n"] * 8 + ["\r\n", "\r\n"])
    if eol == "\r\n" and rng.random() < 0.7:
        lines = [line for line in lines if line]  # a CRLF blank line is a parse error
    text = eol.join(lines) + (eol if rng.random() < 0.9 else "")
    return text.encode("utf-8")


def _byte_fuzz(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(3)
        pos = rng.randrange(len(buf) + (op == 1))
        if op == 0 and buf:
            del buf[pos]
        elif op == 1:
            buf.insert(pos, rng.choice(FUZZ_BYTES))
        elif buf:
            buf[pos] = rng.choice(FUZZ_BYTES)
    return bytes(buf)


def mutate(rng: random.Random, lines: list[str], count: int) -> list[str]:
    """Apply ``count`` different mutations; one that finds nothing to change
    (an earlier one removed its line) is skipped."""
    for mutation in rng.sample(MUTATIONS, count):
        try:
            lines = mutation(rng, list(lines))
        except IndexError:
            pass
    return lines


def generate_cases() -> list[bytes]:
    rng = random.Random(SEED)
    cases: list[bytes] = list(SPECIALS) + VALUE_CASES
    for template in TEMPLATES:
        cases.append(_encode(list(template), rng))
    for _ in range(320):
        lines = list(rng.choice(TEMPLATES))
        cases.append(_encode(mutate(rng, lines, rng.choice([1, 1, 1, 2, 2, 3])), rng))
    for _ in range(110):
        cases.append(_byte_fuzz(rng, _encode(list(rng.choice(TEMPLATES)), rng)))
    unique: list[bytes] = []
    seen: set[bytes] = set()
    for case in cases:
        if case not in seen:
            seen.add(case)
            unique.append(case)
    return unique


CASES = generate_cases()

# ---------------------------------------------------------------------------
# Running qemu-io and our reader
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class QemuResult:
    accepted: bool
    message: str  # open error text (rejected), or the command outcomes
    outcomes: tuple[str, ...] = ()


def _case_name(index: int) -> str:
    return f"case{index:04d}.ini"


def _run_qemu(directory: Path, index: int) -> QemuResult:
    args = ["-f", "raw", "-t", "writeback"]
    for command in COMMANDS:
        args += ["-c", command]
    args.append(f"blkdebug:{_case_name(index)}:img.raw")
    proc = run_qemu_io(args, cwd=directory, timeout=30)
    output = proc.stdout + proc.stderr
    if OPEN_ERROR in output:
        rest = output[output.index(OPEN_ERROR) + len(OPEN_ERROR) :]
        marker = f"blkdebug:{_case_name(index)}:img.raw: "
        assert rest.startswith(marker), output
        message = rest[len(marker) :]
        return QemuResult(False, message[:-1] if message.endswith("\n") else message)
    outcomes = []
    for line in proc.stdout.splitlines():
        if line.startswith(("read failed: ", "write failed: ")):
            outcomes.append(line.split(": ", 1)[1])
        elif re.match(r"^(read|wrote) 512/512 bytes at offset 0$", line):
            outcomes.append("ok")
    assert len(outcomes) == len(COMMANDS), output
    return QemuResult(True, output, tuple(outcomes))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, QemuResult]]:
    directory = tmp_path_factory.mktemp("ini-conformance")
    with open(directory / "img.raw", "wb") as f:
        f.truncate(1 << 20)
    for index, data in enumerate(CASES):
        (directory / _case_name(index)).write_bytes(data)
    workers = max(2, 2 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(lambda i: _run_qemu(directory, i), range(len(CASES))))
    return directory, dict(enumerate(results))


def predict(rules: list[Rule]) -> tuple[str, ...]:
    """What ``read; read; write`` at offset 0 gives under these rules.

    QEMU's blkdebug, reduced to what these commands touch: the open raises
    ``none``; a read raises ``read_aio`` and checks; a write raises
    ``write_aio``, ``pwritev``, checks, then ``pwritev_done``.
    """
    live = list(rules)
    state = 1
    active: list[InjectError] = []

    def event(name: str) -> None:
        nonlocal state, active
        new_state: int | None = None
        armed: list[InjectError] = []
        for rule in live:
            if rule.event != name or (rule.state and rule.state != state):
                continue
            if isinstance(rule, SetState):
                new_state = rule.new_state if new_state is None else new_state
            else:
                armed.append(rule)
        if armed:
            active = armed
        if new_state is not None:
            state = new_state

    def check(iotype: str) -> str:
        for rule in active:
            if iotype in rule.iotype and rule.sector in (-1, 0):
                if rule.errno == 0:
                    return "ok"
                if rule.once:
                    active.remove(rule)
                    live.remove(rule)
                return os.strerror(rule.errno)
        return "ok"

    outcomes = []
    event("none")
    for command in COMMANDS:
        if command.startswith("read"):
            event("read_aio")
            outcomes.append(check("read"))
        else:
            event("write_aio")
            event("pwritev")
            outcomes.append(check("write"))
            event("pwritev_done")
    return tuple(outcomes)


UNSUPPORTED = re.compile(
    r'^(errno|state|new_state) = ".*" is (-?\d+) in QEMU \(a C int\)', re.DOTALL
)


@pytest.mark.parametrize("index", range(len(CASES)), ids=[f"{i:04d}" for i in range(len(CASES))])
def test_same_verdict_as_qemu_io(index: int, corpus: tuple[Path, dict[int, QemuResult]]) -> None:
    directory, results = corpus
    path = directory / _case_name(index)
    data = CASES[index]
    qemu = results[index]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            rules = load_rules(path)
        except UnsupportedValueError as exc:
            assert qemu.accepted, f"{data!r}: qemu-io rejected ({qemu.message!r}) but we said {exc}"
            m = UNSUPPORTED.match(exc.message)
            assert m, exc.message
            value = int(m.group(2))
            assert value < 0 or (m.group(1) == "errno" and value > 4095), exc.message
            return
        except RuleFileError as exc:
            assert not qemu.accepted, f"{data!r}: qemu-io accepted it, we rejected it: {exc}"
            assert exc.message == qemu.message, f"{data!r}"
            assert exc.path == str(path)
            assert exc.line is not None and 1 <= exc.line <= data.count(b"\n") + 1, exc.line
            return
    assert qemu.accepted, f"{data!r}: qemu-io rejected it ({qemu.message!r}), we accepted {rules}"
    assert predict(rules) == qemu.outcomes, f"{data!r}: rules {rules}"


def test_corpus_is_large_and_mixed(corpus: tuple[Path, dict[int, QemuResult]]) -> None:
    _, results = corpus
    assert len(CASES) >= MIN_CASES
    accepted = sum(r.accepted for r in results.values())
    rejected = len(results) - accepted
    # A corpus that qemu-io (almost) always accepts or rejects proves little.
    assert accepted >= len(CASES) // 5, (accepted, rejected)
    assert rejected >= len(CASES) // 5, (accepted, rejected)
    # ... and one whose accepted files never fail a request tests no values.
    failing = sum(1 for r in results.values() if r.accepted and set(r.outcomes) != {"ok"})
    assert failing >= accepted // 4, failing
    messages = {r.message.split("\n")[0].split("'")[0] for r in results.values() if not r.accepted}
    assert len(messages) >= 10, messages
