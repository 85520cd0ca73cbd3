"""qemu-io 7.2's command language, as ``blkdebug-io`` speaks it.

Everything here is about *text*: which commands exist and their usage lines
(``SPECS``), how a command line splits into words (``breakline``) and options
(``GetOpt``, glibc getopt with permutation), how numbers parse (``cvtnum``:
qemu_strtosz with suffixes b/k/M/G/T/P/E, fractions and 0x hex; ``c_strtol``
for pattern bytes and ``sleep``), what each command's arguments mean
(``parse_read``/``parse_write``/``parse_discard``/``parse_aio``/``parse_sleep``
into a ``Request``) and the exact lines qemu-io prints (``report``: the
success and statistics lines, ``cvtstr``/``timestr``, ``dump_buffer`` for
``-v``). A wrong argument raises ``CommandError`` with qemu-io's own message
and status.

Why a module of its own: these are pure functions of strings, checked line by
line against the real qemu-io (tests/test_cli.py, the conformance tests), and
none of them touches a disk or the event loop. ``cli.py`` holds the program
around them: its own options, opening the image and rule file, and the
``Session`` that runs the parsed commands on a ``Disk`` (each ``Spec.handler``
names a ``Session`` method).
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TextIO

#: The program name that prefixes blkdebug-io's own warnings and errors.
PROG = "blkdebug-io"
#: BDRV_REQUEST_MAX_BYTES in QEMU 7.2: the longest request qemu-io accepts.
MAX_REQUEST = 2147483136
INT64_MAX = (1 << 63) - 1


class CommandError(Exception):
    """A command stops early: lines for stdout/stderr and a (negative) status."""

    def __init__(self, stdout: str = "", stderr: str = "", status: int = -errno.EINVAL) -> None:
        super().__init__(stdout or stderr)
        self.stdout = stdout
        self.stderr = stderr
        self.status = status


# ---------------------------------------------------------------------------
# Commands: the table, splitting a line, argument counts
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """One qemu-io command: names, argument counts, usage text, our handler.

    ``handler`` names the ``cli.Session`` method that runs the command; None
    marks a qemu-io command blkdebug-io does not offer.
    """

    name: str
    alias: str | None
    argmin: int
    argmax: int
    args: str
    oneline: str
    handler: str | None

    @property
    def usage(self) -> str:
        return (
            f"{self.name} {self.args} -- {self.oneline}"
            if self.args
            else f"{self.name} -- {self.oneline}"
        )


_R, _W = (
    "reads a number of bytes at a specified offset",
    "writes a number of bytes at a specified offset",
)
# fmt: off
SPECS = (
    Spec("read", "r", 2, -1, "[-abCqv] [-P pattern [-s off] [-l len]] off len", _R, "cmd_read"),
    Spec("write", "w", 2, -1, "[-bcCfnquz] [-P pattern | -s source_file] off len", _W, "cmd_write"),
    Spec("discard", "d", 2, -1, "[-Cq] off len", "discards a number of bytes at a specified offset",
         "cmd_discard"),
    Spec("flush", "f", 0, 0, "", "flush all in-core file state to disk", "cmd_flush"),
    Spec("length", "l", 0, 0, "", "gets the length of the current file", "cmd_length"),
    Spec("aio_read", None, 2, -1, "[-Ciqv] [-P pattern] off len [len..]",
         "asynchronously reads a number of bytes", "cmd_aio_read"),
    Spec("aio_write", None, 2, -1, "[-Cfiquz] [-P pattern] off len [len..]",
         "asynchronously writes a number of bytes", "cmd_aio_write"),
    Spec("aio_flush", None, 0, 0, "", "completes all outstanding aio requests", "cmd_aio_flush"),
    Spec("sleep", None, 1, 1, "", "waits for the given value in milliseconds", "cmd_sleep"),
    Spec("break", None, 2, 2, "event tag",
         "sets a breakpoint on event and tags the stopped request as tag", "cmd_break"),
    Spec("remove_break", None, 1, 1, "tag", "remove a breakpoint by tag", "cmd_remove_break"),
    Spec("resume", None, 1, 1, "tag", "resumes the request tagged as tag", "cmd_resume"),
    Spec("wait_break", None, 1, 1, "tag", "waits for the suspension of a request", "cmd_wait_break"),
    # qemu-io commands blkdebug-io does not offer (a clear error, not "not found")
    *(Spec(name, alias, 0, -1, "", "", None) for name, alias in (
        ("abort", None), ("alloc", "a"), ("close", None), ("help", "?"), ("info", "i"),
        ("map", None), ("open", "o"), ("quit", "q"), ("readv", None), ("reopen", None),
        ("sigraise", None), ("truncate", "t"), ("writev", None))),
)
# fmt: on
SUPPORTED = tuple(s.name for s in SPECS if s.handler)


def find_command(name: str) -> Spec | None:
    """The command called ``name`` (its full name or its alias), or None."""
    for spec in SPECS:
        if name in (spec.name, spec.alias):
            return spec
    return None


def breakline(line: str) -> list[str]:
    """qemu-io splits a command at single spaces and drops empty pieces."""
    return [word for word in line.split(" ") if word]


def check_argc(spec: Spec, argv: list[str]) -> str | None:
    """qemu-io's argument-count message (stderr), or None if the count fits."""
    n = len(argv) - 1
    if n >= spec.argmin and (spec.argmax == -1 or n <= spec.argmax):
        return None
    if spec.argmax == -1:
        want = f"at least {spec.argmin} arguments"
    elif spec.argmin == spec.argmax:
        want = f"{spec.argmin} arguments"
    else:
        want = f"between {spec.argmin} and {spec.argmax} arguments"
    return f"bad argument count {n} to {argv[0]}, expected {want}"


# ---------------------------------------------------------------------------
# Options: getopt(3)
# ---------------------------------------------------------------------------


class GetOpt:
    """glibc getopt(3) with argument permutation, yielding options in order.

    After iteration, ``rest`` holds the non-option arguments in order.
    """

    def __init__(self, argv: list[str], optstring: str, spec: Spec) -> None:
        self.argv, self.optstring, self.spec = argv, optstring, spec
        self.rest: list[str] = []

    def _fail(self, message: str) -> CommandError:
        return CommandError(stdout=self.spec.usage, stderr=f"{self.argv[0]}: {message}")

    def __iter__(self) -> Iterator[tuple[str, str]]:
        argv, i = self.argv, 1
        while i < len(argv):
            arg = argv[i]
            if arg == "--":
                self.rest.extend(argv[i + 1 :])
                return
            if not arg.startswith("-") or arg == "-":
                self.rest.append(arg)
                i += 1
                continue
            j = 1
            while j < len(arg):
                c = arg[j]
                k = self.optstring.find(c)
                if k < 0 or c == ":":
                    raise self._fail(f"invalid option -- '{c}'")
                if self.optstring[k + 1 : k + 2] != ":":
                    yield c, ""
                    j += 1
                    continue
                if j + 1 < len(arg):
                    value = arg[j + 1 :]
                elif i + 1 < len(argv):
                    i += 1
                    value = argv[i]
                else:
                    raise self._fail(f"option requires an argument -- '{c}'")
                yield c, value
                break
            i += 1


# ---------------------------------------------------------------------------
# Numbers and pattern bytes: qemu_strtosz, strtol
# ---------------------------------------------------------------------------


_SPACE = " \t\n\v\f\r"
_SUFFIX = {"b": 0, "k": 10, "m": 20, "g": 30, "t": 40, "p": 50, "e": 60}


def _strtoul(s: str, base: int) -> tuple[int | None, int]:
    """C strtoul's digits: (value or None when there are none, end index)."""
    i = len(s) - len(s.lstrip(_SPACE))
    if s[i : i + 1] in ("+", "-"):
        i += 1
    if (
        base == 16
        and s[i : i + 2].lower() == "0x"
        and s[i + 2 : i + 3].lower() in "0123456789abcdef"
        and s[i + 2 : i + 3]
    ):
        i += 2
    digits = "0123456789abcdef"[:base]
    j = i
    while j < len(s) and s[j].lower() in digits:
        j += 1
    if j == i:
        return None, 0
    return int(s[i:j], base), j


def cvtnum(s: str, err: TextIO) -> int:
    """qemu-io's number: qemu_strtosz (suffixes b k M G T P E, fractions with a
    suffix, 0x hex) limited to int64. CommandError with qemu-io's message."""
    bad = CommandError(
        f"Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- {s}"
    )
    large = CommandError(f"Parsing error: argument too large -- {s}")
    val, end = _strtoul(s, 10)
    if val is None or "-" in s[:end]:
        raise bad
    if val >= 1 << 64:
        raise large
    frac, hexa = 0.0, False
    if val == 0 and s[end : end + 1] in ("x", "X"):
        val, end = _strtoul(s, 16)
        assert val is not None
        if val >= 1 << 64:
            raise large
        hexa = True
    elif s[end : end + 1] == ".":
        m = re.match(r"\.(\d*)([eE][+-]?\d+)?", s[end:])
        assert m is not None
        if not m.group(1):
            end += 1  # strtod finds no number in a lone '.': skipped ("1.k" is 1 KiB)
        elif m.group(2):
            raise bad  # an exponent makes the whole number invalid
        else:
            frac = float("0." + m.group(1))
            end += m.end()
    shift = _SUFFIX.get(s[end : end + 1].lower()) if s[end : end + 1] else None
    if shift is not None:
        end += 1
        if hexa:
            print(
                f"{PROG}: warning: Using a multiplier suffix on hex numbers is deprecated: {s}",
                file=err,
            )
    else:
        shift = 0
    if shift == 0 and frac:
        raise bad
    fixed = int(frac * 2**64)  # QEMU's 64.64 fixed-point fraction
    product = fixed << shift
    result = (val << shift) + (product >> 64) + ((product >> 63) & 1)
    if end != len(s):
        raise bad
    if result >= 1 << 64 or result > INT64_MAX:
        raise large
    return result


def c_strtol(s: str) -> tuple[int | None, str]:
    """C strtol(s, &end, 0): (value or None, the unparsed rest)."""
    t = s.lstrip(_SPACE)
    sign = -1 if t[:1] == "-" else 1
    body = t[1:] if t[:1] in ("+", "-") else t
    if body[:2].lower() == "0x" and body[2:3] and body[2:3].lower() in "0123456789abcdef":
        base, body = 16, body[2:]
    elif body[:1] == "0":
        base = 8
    else:
        base = 10
    digits = "0123456789abcdef"[:base]
    n = 0
    while n < len(body) and body[n].lower() in digits:
        n += 1
    if n == 0:
        return None, s
    return sign * int(body[:n], base), body[n:]


def parse_pattern(arg: str) -> int:
    """A ``-P`` pattern byte (C strtol, any base), as qemu-io's parse_pattern."""
    value, rest = c_strtol(arg)
    if value is None:
        value = 0
    if value < 0 or value > 255 or rest:
        raise CommandError(f"{arg} is not a valid pattern byte")
    return value


def parse_sleep(arg: str) -> int:
    """``sleep``'s milliseconds (C strtol, any base, not negative)."""
    value, rest = c_strtol(arg)
    if value is None:
        value = 0
    if value < 0 or rest:
        raise CommandError(f"{arg} is not a valid number")
    return value


# ---------------------------------------------------------------------------
# Output: qemu-io's sizes, times, statistics line, hex dump, errors
# ---------------------------------------------------------------------------


def cvtstr(value: float) -> str:
    """qemu-io's human size: ``512 bytes``, ``1 KiB``, ``3.548 MiB``."""
    text, suffix = f"{value:f}", " bytes"
    for shift, unit in (
        (60, " EiB"),
        (50, " PiB"),
        (40, " TiB"),
        (30, " GiB"),
        (20, " MiB"),
        (10, " KiB"),
    ):
        if value >= 1 << shift:
            text, suffix = f"{value / (1 << shift):.3f}", unit
            break
    cut = text.find(".000")  # C's strstr: the first ".000" ends the number
    return (text[:cut] if cut >= 0 else text) + suffix


def timestr(seconds: float, verbose: bool) -> str:
    """qemu-io's elapsed time: ``00.01 sec``, or ``H:MM:SS.ss`` (``-C``, long runs)."""
    whole = int(seconds)
    frac = seconds - whole
    if verbose or whole:
        return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60 + frac:05.2f}"
    return f"{frac:05.2f} sec"


def report(op: str, seconds: float, offset: int, count: int, csv: bool) -> str:
    """qemu-io's print_report: the success line and the statistics line."""
    t = max(seconds, 1e-9)
    if csv:
        return f"{count},1,{timestr(t, True)},{count / t:.3f},{1 / t:.3f}"
    return (
        f"{op} {count}/{count} bytes at offset {offset}\n"
        f"{cvtstr(count)}, 1 ops; {timestr(t, False)} "
        f"({cvtstr(count / t)}/sec and {1 / t:.4f} ops/sec)"
    )


def dump_buffer(data: bytes, offset: int) -> list[str]:
    """qemu-io's ``-v`` hex dump."""
    rows = []
    for i in range(0, len(data), 16):
        chunk = data[i : i + 16]
        text = "".join(chr(b) if chr(b).isascii() and chr(b).isalnum() else "." for b in chunk)
        rows.append(f"{offset + i:08x}:  " + "".join(f"{b:02x} " for b in chunk) + " " + text)
    return rows


def strerror(exc: OSError) -> str:
    """The C strerror text of a failed request (EIO when it carries no errno)."""
    return os.strerror(exc.errno) if exc.errno else os.strerror(errno.EIO)


# ---------------------------------------------------------------------------
# Each command's arguments -> a Request
# ---------------------------------------------------------------------------


@dataclass
class Request:
    """A parsed read/write/discard/aio command."""

    offset: int = 0
    length: int = 0
    pattern: int | None = None
    pattern_offset: int = 0
    pattern_count: int = 0
    zero: bool = False
    quiet: bool = False
    verbose: bool = False
    csv: bool = False


def _unsupported(argv: list[str], option: str, why: str) -> CommandError:
    return CommandError(
        stderr=f"{PROG}: {argv[0]} {option} is not supported ({why})", status=-errno.ENOTSUP
    )


def _offset_length(spec: Spec, rest: list[str], err: TextIO, limit: str | None) -> tuple[int, int]:
    if len(rest) != 2:
        raise CommandError(spec.usage)
    offset = cvtnum(rest[0], err)
    length = cvtnum(rest[1], err)
    if limit is not None and length > MAX_REQUEST:
        raise CommandError(f"length cannot exceed {MAX_REQUEST}{limit}, given {rest[1]}")
    return offset, length


def parse_read(spec: Spec, argv: list[str], err: TextIO) -> Request:
    r = Request()
    opts = GetOpt(argv, "bCl:pP:qs:v", spec)
    lflag = sflag = False
    for c, value in opts:
        if c == "b":
            raise _unsupported(argv, "-b", "no VM state on a raw image")
        elif c == "C":
            r.csv = True
        elif c == "l":
            lflag, r.pattern_count = True, cvtnum(value, err)
        elif c == "P":
            r.pattern = parse_pattern(value)
        elif c == "q":
            r.quiet = True
        elif c == "s":
            sflag, r.pattern_offset = True, cvtnum(value, err)
        elif c == "v":
            r.verbose = True
    r.offset, r.length = _offset_length(spec, opts.rest, err, "")
    if r.pattern is None and (lflag or sflag):
        raise CommandError(spec.usage)
    if not lflag:
        r.pattern_count = r.length - r.pattern_offset
    if r.pattern_count < 0 or r.pattern_count + r.pattern_offset > r.length:
        raise CommandError("pattern verification range exceeds end of read data")
    return r


def parse_write(spec: Spec, argv: list[str], err: TextIO) -> Request:
    r = Request(pattern=0xCD)
    opts = GetOpt(argv, "bcCfnpP:qs:uz", spec)
    pflag = unmap = False
    for c, value in opts:
        if c in "bcfns":
            raise _unsupported(
                argv,
                f"-{c}",
                {
                    "b": "no VM state on a raw image",
                    "c": "raw images are not compressed",
                    "f": "FUA adds a flush that changes which events fire",
                    "n": "no-fallback write-zeroes is not modelled",
                    "s": "use -P or -z",
                }[c],
            )
        if c == "C":
            r.csv = True
        elif c == "P":
            pflag, r.pattern = True, parse_pattern(value)
        elif c == "q":
            r.quiet = True
        elif c == "u":
            unmap = True
        elif c == "z":
            r.zero = True
    if len(opts.rest) != 2:
        raise CommandError(spec.usage)
    if unmap and not r.zero:
        raise CommandError("-u requires -z to be specified")
    if r.zero and pflag:
        raise CommandError("Only one of -z, -P, and -s can be specified at the same time")
    r.offset, r.length = _offset_length(spec, opts.rest, err, " without -n")
    return r


def parse_discard(spec: Spec, argv: list[str], err: TextIO) -> Request:
    r = Request()
    opts = GetOpt(argv, "Cq", spec)
    for c, _ in opts:
        if c == "C":
            r.csv = True
        else:
            r.quiet = True
    r.offset, r.length = _offset_length(spec, opts.rest, err, "")
    return r


def parse_aio(spec: Spec, argv: list[str], err: TextIO, write: bool) -> Request:
    """aio_read/aio_write (``-i``, an invalid request for statistics, only prints)."""
    r = Request(pattern=0xCD if write else None)
    opts = GetOpt(argv, "CfiqP:uz" if write else "CP:iqv", spec)
    unmap = False
    for c, value in opts:
        if c == "C":
            r.csv = True
        elif c == "P":
            r.pattern = parse_pattern(value)
        elif c == "i":
            raise CommandError(
                f"injecting invalid {'write' if write else 'read'} request", status=0
            )
        elif c == "q":
            r.quiet = True
        elif c == "v":
            r.verbose = True
        elif c == "u":
            unmap = True
        elif c == "z":
            r.zero = True
        elif c == "f":
            raise _unsupported(argv, "-f", "FUA adds a flush that changes which events fire")
    rest = opts.rest
    if len(rest) < 2:
        raise CommandError(spec.usage)
    if r.zero and len(rest) != 2:
        raise CommandError("-z supports only a single length parameter")
    if unmap and not r.zero:
        raise CommandError("-u requires -z to be specified")
    r.offset = cvtnum(rest[0], err)
    if r.zero:
        r.length = cvtnum(rest[1], err)
        return r
    for arg in rest[1:]:
        n = cvtnum(arg, err)
        if n > MAX_REQUEST:
            raise CommandError(f"Argument '{arg}' exceeds maximum size {MAX_REQUEST}")
        if r.length > MAX_REQUEST - n:
            raise CommandError(f"The total number of bytes exceed the maximum size {MAX_REQUEST}")
        r.length += n
    return r
