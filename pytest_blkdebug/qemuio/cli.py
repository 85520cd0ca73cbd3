"""``blkdebug-io``: the program that runs qemu-io's commands over a ``Disk``.

``blkdebug-io [-f raw] [-t writeback] [-c COMMAND]... [--report] FILENAME``
runs the commands in order and prints what ``qemu-io -f raw -t writeback``
7.2 prints, line for line (the statistics line after a success has the same
format, other figures). FILENAME is ``blkdebug:CONFIG:IMAGE``,
``blkdebug::IMAGE`` or a plain image. Why: the same script can be run through
real QEMU and through this project, which is how the conformance tests prove
the engine right, and ``--report`` then shows what QEMU cannot (final state,
state history, every rule's counters).

This module holds the program: its own options (``main``, ``_parser``),
opening the image and its rule file (``split_filename``, ``open_disk``) and
the exit status. The command language (the command table, getopt, numbers
with suffixes, pattern bytes, the exact output lines) lives in
``commands.py``; running a script on the disk (the ``Session`` and its
``cmd_*`` methods) in ``session.py``; when each request progresses (qemu-io's
event loop: which commands poll) in ``loop.py``. Where qemu-io would wait
forever, blkdebug-io stops with a clear error and exit status 1 instead.
Commands that qemu-io treats as failed (exit status 1) are the same here: a
failed ``read``/``write``/``discard``/``flush``, a pattern mismatch of
``read -P``, bad arguments, unknown commands and failed breakpoint commands;
an ``aio_read``/``aio_write`` that fails does not count.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import warnings
from collections.abc import Iterable, Iterator
from typing import NoReturn, TextIO

from ..core.disk import DEFAULT_WAIT_TIMEOUT, Disk
from ..core.errors import RuleError
from ..core.events import EventRegistry
from ..harness import Harness
from ..report import format_report
from .commands import PROG
from .session import Session

#: Kept for scripts that pass it: blkdebug-io no longer waits (see loop.py).
CACHE_MODES = ("none", "writeback", "unsafe", "directsync", "writethrough")


class OpenError(Exception):
    """The image or its rule file cannot be opened (qemu-io: can't open device)."""


# ---------------------------------------------------------------------------
# The program's own arguments
# ---------------------------------------------------------------------------


class _UsageError(Exception):
    """A bad blkdebug-io option: main prints it and exits 1 (argparse would exit 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _UsageError(message)


def _parser() -> _Parser:
    p = _Parser(
        prog=PROG,
        add_help=False,
        usage=f"{PROG} [-f raw] [-t writeback] [-c COMMAND]... [--events NAME,...] "
        "[--report] [--wait-timeout SECONDS] FILENAME",
        description="Run qemu-io commands against a raw image through the blkdebug engine. "
        "FILENAME is blkdebug:RULES:IMAGE, blkdebug::IMAGE or IMAGE; RULES is a "
        "QEMU ini (.ini/.cfg/.conf) or TOML rule file. Without -c, commands are "
        "read from standard input, one per line.",
    )
    p.add_argument("-h", "--help", action="store_true", help="show this help and exit")
    p.add_argument(
        "-c",
        "--cmd",
        action="append",
        default=[],
        metavar="COMMAND",
        help="run COMMAND (repeatable), e.g. -c 'read -P 0 0 512'",
    )
    p.add_argument("-f", "--format", default="raw", help="image format: raw only")
    p.add_argument(
        "-t",
        "--cache",
        default="writeback",
        help="cache mode: writeback only (qemu-io's default is writethrough)",
    )
    p.add_argument(
        "--events",
        action="append",
        default=[],
        metavar="NAME,...",
        help="custom event names to register before the rule file is read "
        "(comma-separated, repeatable), so that rules and 'break' can use them",
    )
    p.add_argument(
        "--report",
        action="store_true",
        help="after the commands, print the final state, the state history "
        "and every rule's counters",
    )
    p.add_argument(
        "--wait-timeout",
        type=float,
        default=DEFAULT_WAIT_TIMEOUT,
        metavar="SECONDS",
        help="accepted for older scripts; blkdebug-io never waits: where qemu-io "
        "would wait forever it stops at once with an error",
    )
    p.add_argument(
        "--sync-via",
        choices=("disk", "aio"),
        default="disk",
        help="how read/write/discard/flush reach the image: the Disk's blocking methods "
        "(default) or its asyncio view (the conformance tests run both)",
    )
    p.add_argument("filename", nargs="?", metavar="FILENAME")
    return p


# ---------------------------------------------------------------------------
# Opening FILENAME: the image and its rule file
# ---------------------------------------------------------------------------


def split_filename(filename: str) -> tuple[str | None, str]:
    """``blkdebug:CONFIG:IMAGE`` -> (CONFIG or "" , IMAGE); a plain path -> (None, path).

    As QEMU's blkdebug_parse_filename: the config ends at the first ``:``
    after the prefix, the image is the rest.
    """
    if not filename.startswith("blkdebug:"):
        return None, filename
    rest = filename[len("blkdebug:") :]
    config, sep, image = rest.partition(":")
    if not sep:
        raise OpenError("blkdebug requires both config file and image path")
    return config, image


def open_disk(
    filename: str, err: TextIO, events: Iterable[str] = (), harness: Harness | None = None
) -> tuple[Disk, bool]:
    """Open FILENAME as qemu-io would; returns (disk, over_blkdebug).

    ``events`` are custom event names registered before the rule file is
    read: an ini file (which cannot declare events) may then use them, and
    ``break`` may stop on them. The engine and the disk come from
    ``harness`` (the bookkeeping every front end shares; a new one if None),
    whose ``close()`` then closes the disk.
    """
    config, image = split_filename(filename)
    if harness is None:
        # No hold timeout that matters: blkdebug-io never blocks on a hold
        # (loop.py); where qemu-io would wait forever it stops with an error.
        harness = Harness(events=events, hold_timeout=10.0**7)
    else:
        harness.events = (*harness.events, *events)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        engine = harness.engine(config or ())
    for w in caught:
        print(f"{PROG}: warning: {w.message}", file=err)
    if not image:
        raise OpenError("The 'file' block driver requires a file name")
    try:
        disk = harness.open(image, engine=engine)
    except OSError as exc:
        raise OpenError(
            f"Could not open '{image}': {os.strerror(exc.errno) if exc.errno else exc}"
        ) from None
    if disk.size % 512:
        print(
            f"{PROG}: warning: {image} is {disk.size} bytes, not a multiple of 512: "
            f"qemu-io would round its length up to {-(-disk.size // 512) * 512} bytes",
            file=err,
        )
    return disk, config is not None


def _script(source: TextIO, out: TextIO) -> Iterator[str]:
    """The commands of standard input, each read once the one before has run.

    As qemu-io, a line is read only when the previous command is done (a
    person typing sees each answer before the next prompt); the prompt
    ``blkdebug-io> `` is shown before each line when the input is a terminal
    (qemu-io shows it on a pipe too: see docs/differences.md).
    """
    try:
        prompt = source.isatty()
    except (AttributeError, ValueError):
        prompt = False
    while True:
        if prompt:
            out.write(f"{PROG}> ")
            out.flush()
        line = source.readline()
        if not line:
            return
        yield line.rstrip("\r\n")


def main(
    argv: list[str] | None = None,
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    stdin: TextIO | None = None,
) -> int:
    """Entry point of ``blkdebug-io`` (and ``python -m pytest_blkdebug``).

    Returns the exit status: 0, or 1 when opening failed or any command
    failed (qemu-io's rule). ``stdout``/``stderr``/``stdin`` default to the
    process's streams; tests pass their own to run it in-process.
    """
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    parser = _parser()
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    except _UsageError as exc:
        print(f"{PROG}: {exc}\nTry '{PROG} --help' for more information.", file=err)
        return 1
    if args.help:
        out.write(parser.format_help())
        return 0
    if args.format != "raw":
        print(
            f"{PROG}: image format '{args.format}' is not supported: {PROG} works on raw "
            "images only (qcow2's metadata events come from your own code's disk.event())",
            file=err,
        )
        return 1
    if args.cache not in CACHE_MODES:
        print(f"{PROG}: Invalid cache option: {args.cache}", file=err)
        return 1
    if args.cache != "writeback":
        print(
            f"{PROG}: cache mode '{args.cache}' is not supported: {PROG} always behaves "
            "as qemu-io -t writeback (other modes add flushes that change which events "
            "fire)",
            file=err,
        )
        return 1
    if not 0 < args.wait_timeout < math.inf:  # nan fails too
        print(
            f"{PROG}: --wait-timeout must be positive, not {args.wait_timeout:g}"
            if args.wait_timeout <= 0
            else f"{PROG}: --wait-timeout must be a finite number, not {args.wait_timeout:g}",
            file=err,
        )
        return 1
    if not args.filename:
        print(
            f"{PROG}: missing FILENAME (blkdebug:RULES:IMAGE, blkdebug::IMAGE or IMAGE)\n"
            f"Try '{PROG} --help' for more information.",
            file=err,
        )
        return 1
    events = [name.strip() for chunk in args.events for name in chunk.split(",") if name.strip()]
    try:
        EventRegistry(events)
    except RuleError as exc:
        print(f"{PROG}: --events: {exc}", file=err)
        return 1
    harness = Harness(events=events, hold_timeout=10.0**7)  # see open_disk
    try:
        disk, over_blkdebug = open_disk(args.filename, err, harness=harness)
    except (OpenError, RuleError) as exc:
        print(f"{PROG}: can't open device {args.filename}: {exc}", file=err)
        return 1
    commands: Iterable[str] = args.cmd
    if not args.cmd:
        source = stdin if stdin is not None else sys.stdin
        commands = _script(source, out) if source is not None else ()  # stdin closed
    try:
        session = Session(disk, over_blkdebug, out, err, args.sync_via == "aio")
        try:
            status = session.run(commands)
        finally:
            session.detach()
        if args.report:
            out.write(format_report(disk) + "\n")
    finally:
        harness.close()
    out.flush()
    return status
