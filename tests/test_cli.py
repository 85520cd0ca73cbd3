"""blkdebug-io, the command: options, open errors, --report, the command
language's corners (numbers, patterns, getopt, argument counts, exit status)
compared line by line with real qemu-io, and the hangs it turns into errors.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from qemu_helpers import requires_qemu_io, run_qemu_io

from pytest_blkdebug.qemuio import cli

STATS = ("bytes, 1 ops;", "KiB, 1 ops;", "MiB, 1 ops;", "GiB, 1 ops;")


def run(args: list[str], stdin: str | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = cli.main(
        args, stdout=out, stderr=err, stdin=io.StringIO(stdin) if stdin is not None else None
    )
    return status, out.getvalue(), err.getvalue()


def no_stats(text: str) -> list[str]:
    return [line for line in text.splitlines() if not any(s in line for s in STATS)]


def same_lines(ours: str, theirs: str, commands: list[str]) -> bool:
    """Equal stdout without statistics; aio completions may come in any order."""
    a, b = no_stats(ours), no_stats(theirs)
    if any(c.startswith("aio_") for c in commands):
        return sorted(a) == sorted(b)
    return a == b


@pytest.fixture
def image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "img.raw"
    with open(path, "wb") as f:
        f.truncate(1 << 20)
    return path


# -- options -------------------------------------------------------------------


def test_help_exits_zero_and_shows_the_usage(image: Path) -> None:
    status, out, err = run(["--help"])
    assert status == 0 and err == ""
    assert out.startswith("usage: blkdebug-io [-f raw] [-t writeback] [-c COMMAND]...")
    assert "blkdebug:RULES:IMAGE" in out and "--report" in out and "--wait-timeout" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "blkdebug-io: missing FILENAME"),
        (["-X", "img.raw"], "blkdebug-io: unrecognized arguments: -X"),
        (["-c"], "blkdebug-io: argument -c/--cmd: expected one argument"),
        (["--wait-timeout", "soon", "img.raw"], "argument --wait-timeout: invalid float value"),
        (["--wait-timeout", "0", "img.raw"], "--wait-timeout must be positive, not 0"),
        (["--wait-timeout", "nan", "img.raw"], "--wait-timeout must be a finite number, not nan"),
        (["--wait-timeout", "inf", "img.raw"], "--wait-timeout must be a finite number, not inf"),
        (["-t", "writethrough", "img.raw"], "cache mode 'writethrough' is not supported"),
        (["-t", "none", "img.raw"], "always behaves as qemu-io -t writeback"),
        (["-t", "bogus", "img.raw"], "blkdebug-io: Invalid cache option: bogus"),
        (["-f", "qcow2", "img.raw"], "image format 'qcow2' is not supported"),
        (["--sync-via", "thread", "img.raw"], "argument --sync-via: invalid choice: 'thread'"),
    ],
)
def test_bad_and_refused_options_exit_one_with_a_clear_message(
    image: Path, args: list[str], message: str
) -> None:
    status, out, err = run([*args, "-c", "read 0 512"] if args[:1] != ["-c"] else args)
    assert status == 1
    assert out == ""
    assert message in err, err


def test_python_dash_m_and_the_console_script_run_the_same_main(image: Path) -> None:
    args = ["-c", "write -P 0x41 0 4", "-c", "read -P 0x41 0 4", "img.raw"]
    commands = [[sys.executable, "-m", "pytest_blkdebug", *args]]
    script = shutil.which("blkdebug-io")
    if script:
        commands.append([script, *args])
    for command in commands:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 0, proc.stderr
        assert no_stats(proc.stdout) == [
            "wrote 4/4 bytes at offset 0",
            "read 4/4 bytes at offset 0",
        ]
    assert image.read_bytes()[:5] == b"AAAA\0"


def test_commands_come_from_stdin_without_dash_c(image: Path) -> None:
    status, out, _ = run(["img.raw"], stdin="write -P 7 0 512\n\nlength\nread -P 7 0 512\n")
    assert status == 0
    assert no_stats(out) == [
        "wrote 512/512 bytes at offset 0",
        "1 MiB",
        "read 512/512 bytes at offset 0",
    ]


def test_stdin_commands_run_one_by_one_as_they_are_typed(image: Path) -> None:
    """Each stdin line runs before the next is read, as in qemu-io: a person
    typing sees the answer to each command. Was: every line read up to EOF
    first, so nothing ran (and nothing printed) until Ctrl-D."""
    out = io.StringIO()
    seen_before_each_read: list[str] = []

    class Typing(io.StringIO):
        def readline(self, size: int | None = -1) -> str:
            seen_before_each_read.append(out.getvalue())
            return super().readline()

        def __iter__(self):  # type: ignore[no-untyped-def]
            raise AssertionError("read as a whole, not line by line")

    status = cli.main(
        ["img.raw"], stdout=out, stderr=io.StringIO(), stdin=Typing("write -P 7 0 512\nlength\n")
    )
    assert status == 0
    assert len(seen_before_each_read) == 3  # two lines and the end of input
    assert seen_before_each_read[0] == ""
    assert seen_before_each_read[1].startswith("wrote 512/512 bytes at offset 0\n")
    assert seen_before_each_read[2].endswith("1 MiB\n")


def test_stdin_on_a_terminal_gets_a_prompt_before_each_line(image: Path) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = io.StringIO()
    status = cli.main(["img.raw"], stdout=out, stderr=io.StringIO(), stdin=Terminal("length\n"))
    assert (status, out.getvalue()) == (0, "blkdebug-io> 1 MiB\nblkdebug-io> ")


def test_a_closed_stdin_is_an_empty_script(image: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``blkdebug-io img <&-``: Python's sys.stdin is None, and blkdebug-io
    died with a traceback (AttributeError: 'NoneType' object has no
    attribute 'readline'); no input is no commands."""
    monkeypatch.setattr(sys, "stdin", None)
    status, out, err = run(["img.raw"])
    assert (status, out, err) == (0, "", "")


# -- opening -------------------------------------------------------------------


@requires_qemu_io
@pytest.mark.parametrize(
    ("filename", "files"),
    [
        ("blkdebug:c.ini:img.raw", {"c.ini": '[inject-error]\nevent = "read_aio"\nfoo = "1"\n'}),
        ("blkdebug:c.ini:img.raw", {"c.ini": '[inject-error]\nevent = "nope"\n'}),
        ("blkdebug:c.ini:img.raw", {"c.ini": '[bogus]\nevent = "read_aio"\n'}),
        ("blkdebug:missing.ini:img.raw", {}),
        ("blkdebug:img.raw", {}),
        ("blkdebug::missing.raw", {}),
        ("missing.raw", {}),
        ("blkdebug::", {}),
    ],
)
def test_open_errors_name_the_device_and_match_qemu_io(
    image: Path, filename: str, files: dict[str, str]
) -> None:
    for name, text in files.items():
        (image.parent / name).write_text(text)
    theirs = run_qemu_io(
        ["-f", "raw", "-t", "writeback", "-c", "read 0 512", filename], cwd=image.parent
    )
    status, out, err = run(["-c", "read 0 512", filename])
    assert theirs.returncode == status == 1
    assert out == theirs.stdout == ""
    qemu_message = theirs.stderr.strip().split(f"can't open device {filename}: ", 1)[1]
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    prefix = f"blkdebug-io: can't open device {filename}: "
    assert lines[0].startswith(prefix), err
    ours = lines[0][len(prefix) :]
    if files:  # a rule file error names the file and the line first
        assert ours.startswith("c.ini:"), ours
        assert ours.split(": ", 1)[1] == qemu_message
    elif "missing.ini" in filename:
        assert ours == f"missing.ini: {qemu_message}"
    else:
        assert ours == qemu_message


def test_a_bad_rule_file_line_is_named(image: Path) -> None:
    (image.parent / "c.ini").write_text('[inject-error]\nevent = "read_aio"\n\nerrno = "x"\n')
    status, out, err = run(["-c", "read 0 512", "blkdebug:c.ini:img.raw"])
    assert status == 1 and out == ""
    assert err.startswith("blkdebug-io: can't open device blkdebug:c.ini:img.raw: c.ini:4: ")


def test_an_image_of_odd_size_gets_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "odd.raw"
    path.write_bytes(bytes(1000))
    status, out, err = run(["-c", "length", str(path)])
    assert status == 0 and out == "1000 bytes\n"
    assert "not a multiple of 512: qemu-io would round its length up to 1024" in err


# -- --report --------------------------------------------------------------------


def test_report_shows_state_history_and_every_rules_counters(image: Path) -> None:
    (image.parent / "r.ini").write_text(
        '[set-state]\nevent = "read_aio"\nnew_state = "2"\n\n'
        '[inject-error "second-read"]\nevent = "read_aio"\nstate = "2"\nerrno = "28"\n'
        'once = "on"\n\n'
        '[inject-error]\nevent = "flush_to_disk"\niotype = "block-status"\n'
    )
    status, out, _ = run(
        [
            "-c",
            "read 0 512",
            "-c",
            "read 0 512",
            "-c",
            "read 0 512",
            "--report",
            "blkdebug:r.ini:img.raw",
        ]
    )
    assert status == 1
    lines = out.splitlines()
    assert lines[:5] == [
        "read 512/512 bytes at offset 0",
        lines[1],
        "read failed: No space left on device",
        "read 512/512 bytes at offset 0",
        lines[4],
    ]
    report = "\n".join(lines[5:])
    assert "state: 2" in report
    assert "1 -> 2 (read_aio)" in report
    rows = {line.split()[0]: line.split() for line in lines[5:] if line.startswith("  ")}
    assert rows["name"][:3] == ["name", "kind", "event"]
    header = rows["name"]

    def cell(rule: str, column: str) -> str:
        row = rows[rule]
        # the conditions column holds spaces: count columns from the right
        return row[len(row) - (len(header) - header.index(column))]

    assert rows["second-read"][1:3] == ["inject-error", "read_aio"]
    assert (
        cell("second-read", "armed"),
        cell("second-read", "hits"),
        cell("second-read", "consumed"),
    ) == ("1", "1", "yes")
    assert rows["set-state#1"][1:3] == ["set-state", "read_aio"]
    assert cell("set-state#1", "hits") == "3"
    assert (cell("inject-error#3", "armed"), cell("inject-error#3", "hits")) == ("0", "0")


def test_without_report_nothing_is_added(image: Path) -> None:
    status, out, _ = run(["-c", "length", "img.raw"])
    assert (status, out) == (0, "1 MiB\n")


# -- the command language, line by line against qemu-io ----------------------------

NUMBERS = [
    "512",
    "0x200",
    "0X200",
    "1k",
    "1K",
    "0.5k",
    "1.5k",
    "1b",
    "1B",
    "1kb",
    "1KiB",
    "0x1k",
    "010",
    "-1",
    "+5",
    "1e3",
    "1.0",
    "0.5",
    "1m",
    "1g",
    "1t",
    "1e",
    "8E",
    "9E",
    "1.5",
    "0x",
    "1.k",
    ".5k",
    "00",
    "1.25k",
    "1.1k",
    "1.",
    "18446744073709551616",
    "2.5e1k",
    "0x1.5",
    "4095b",
]

SCRIPTS = {
    "numbers": [f"read -P 0 0 {n}" for n in NUMBERS] + [f"read -q {n} 1" for n in NUMBERS[:12]],
    "patterns": [
        "write -P 0x100 0 1",
        "write -P abc 0 1",
        "write -P 010 0 1",
        "read -P 8 0 1",
        "write -P -0 0 1",
        "write -P 255 1 1",
        "read -P 0xff 1 1",
        "read -P 1 -P 0 0 1",
        "aio_read -P 300 0 1",
    ],
    "sleep": ["sleep 0x10", "sleep -1", "sleep 1k", "sleep 08", "sleep +1", "sleep", "sleep 1 2"],
    "getopt": [
        "read 0 512 -P 0",
        "read -- 0 1",
        "read 0 -- 1",
        "read - 1",
        "read -Y 0 1",
        "read -P",
        "read -P 1",
        "read -s 100 0 512",
        "read -P 0 -s 100 -l 500 0 512",
        "read -P 0 -s 100 -l 10 0 512",
        "read -P 0 -s 1x 0 512",
        "read -qP 0 0 1",
        "read -vq 0 1",
        "read -pq 0 1",
        "write -z -P 1 0 1",
        "write -P 1 -z 0 1",
        "write -u 0 1",
        "write -uz 0 1",
        "aio_write -z 0 512 512",
        "aio_write -u 0 1",
        "aio_read -i 0 1",
        "aio_write -i 0 1",
        "aio_read 0",
        "aio_read -Y 0 1",
        "discard -Y 0 1",
        "discard 0",
        "discard -q 0 1",
    ],
    # requests ending past 2**63 - 1: qemu-io's block layer says EIO; blkdebug-io
    # crashed with the Disk's ValueError (a traceback)
    "int64 end": [
        f"{op} 9223372036854775807 1"
        for op in ("read", "read -v", "write", "write -z", "write -z -u", "discard")
    ]
    + [
        "read 9223372036854775296 512",
        "aio_read 9223372036854775807 1",
        "aio_read 9223372036854775806 1 1",
        "aio_write 9223372036854775807 1",
        "aio_write -z 9223372036854775807 1",
        "write 9223372036854775807 0",
        "read 9223372036854775807 0",
    ],
    "counts": [
        "length 1",
        "flush 1",
        "aio_flush 1",
        "break read_aio",
        "resume",
        "remove_break",
        "wait_break",
        "break a b c",
        "bogus",
        "r 0 1",
        "w 0 1",
        "d 0 1",
        "f",
        "l",
        "",
        "   ",
        "read  0   1",
    ],
    "limits": [
        "read 0 1t",
        "write 0 1t",
        "write -z 0 1t",
        "discard 0 1t",
        "aio_read 0 1t",
        "aio_read 0 1g 1g 1g",
        "aio_write -z 0 1t",
        "read 1g 0",
        "write 1M 1",
        "write -z 1g 0",
        "discard 2M 0",
        "aio_write 2M 1",
        "aio_flush",
    ],
    "output": [
        "write -P 65 0 20",
        "read -v 0 40",
        "aio_read -v 0 17",
        "aio_flush",
        "read -vP 65 3 5",
        "length",
        "discard 0 1",
        "read -v 0 2",
    ],
}


@requires_qemu_io
@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_command_language_matches_qemu_io(tmp_path: Path, name: str) -> None:
    """stdout without statistics lines, stderr (program name aside) and the
    exit status of scripts full of edge cases are qemu-io's."""
    for side in ("qemu", "ours"):
        (tmp_path / side).mkdir()
        with open(tmp_path / side / "img.raw", "wb") as f:
            f.truncate(2 << 20)
    args = ["-f", "raw", "-t", "writeback"]
    for command in SCRIPTS[name]:
        args += ["-c", command]
    theirs = run_qemu_io([*args, "img.raw"], cwd=tmp_path / "qemu")
    status, out, err = run([*args, str(tmp_path / "ours" / "img.raw")])
    assert same_lines(out, theirs.stdout, SCRIPTS[name])
    assert err.replace("blkdebug-io:", "qemu-io:").splitlines() == theirs.stderr.splitlines()
    assert status == theirs.returncode
    assert (tmp_path / "ours" / "img.raw").read_bytes() == (
        tmp_path / "qemu" / "img.raw"
    ).read_bytes()


@requires_qemu_io
def test_exit_status_counts_sync_failures_and_a_silent_failed_flush_but_not_aio(
    tmp_path: Path,
) -> None:
    rules = (
        '[inject-error]\nevent = "none"\niotype = "flush"\n\n'
        '[inject-error]\nevent = "read_aio"\nerrno = "28"\nonce = "on"\n'
    )
    cases = {
        "aio only": (["aio_read 0 512", "aio_write 2M 512", "aio_flush"], 0),
        "flush": (["write 0 512", "flush"], 1),
        "flush clean": (["flush"], 0),
        "sync read": (["read 0 512"], 1),
    }
    for name, (commands, expected) in cases.items():
        d = tmp_path / name.replace(" ", "_")
        d.mkdir()
        (d / "r.ini").write_text(rules)
        with open(d / "img.raw", "wb") as f:
            f.truncate(1 << 20)
        args = ["-f", "raw", "-t", "writeback"]
        for command in commands:
            args += ["-c", command]
        theirs = run_qemu_io([*args, "blkdebug:r.ini:img.raw"], cwd=d)
        status, out, _ = run([*args, f"blkdebug:{d / 'r.ini'}:{d / 'img.raw'}"])
        assert theirs.returncode == status == expected, name
        assert same_lines(out, theirs.stdout, commands), name


def test_breakpoints_on_a_plain_image_are_not_supported(image: Path) -> None:
    status, out, _ = run(
        ["-c", "break read_aio A", "-c", "resume A", "-c", "remove_break A", "img.raw"]
    )
    assert status == 1
    assert out.splitlines() == [
        "Could not set breakpoint: Operation not supported",
        "Could not resume request: Operation not supported",
        "Could not remove breakpoint A: Operation not supported",
    ]


def test_toml_rules_register_custom_events_for_break(image: Path) -> None:
    (image.parent / "r.toml").write_text(
        'events = ["journal_commit"]\n\n[[inject-error]]\nevent = "read_aio"\n'
        'errno = "ENOSPC"\nonce = true\nname = "first-read"\n'
    )
    status, out, _ = run(
        [
            "-c",
            "break journal_commit A",
            "-c",
            "read 0 1",
            "-c",
            "read 0 1",
            "--report",
            "blkdebug:r.toml:img.raw",
        ]
    )
    assert status == 1
    assert no_stats(out)[:2] == [
        "read failed: No space left on device",
        "read 1/1 bytes at offset 0",
    ]
    assert "first-read" in out


def test_unsupported_qemu_io_commands_are_named(image: Path) -> None:
    status, out, err = run(["-c", "map", "-c", "length", "img.raw"])
    assert status == 1 and out == "1 MiB\n"
    assert 'command "map" is not supported by blkdebug-io (supported: read, write' in err


# -- where qemu-io would wait forever -------------------------------------------------


@pytest.mark.parametrize(
    ("commands", "why"),
    [
        (["break read_aio A", "read 0 512"], "read is suspended at a breakpoint"),
        (["break read_aio A", "aio_read 0 512", "aio_flush"], "aio_flush waits for requests"),
        (["break write_aio A", "aio_write 0 512", "break read_aio B"], "at the end of the script"),
        (["wait_break A"], "no request in flight can reach a breakpoint tagged 'A'"),
        (["break read_aio A", "aio_write 0 512", "wait_break A"], "tagged 'A'"),
    ],
)
def test_a_script_qemu_io_would_hang_on_stops_with_an_error(
    image: Path, commands: list[str], why: str
) -> None:
    at_end = "end of the script" in why
    args = [a for c in [*commands, *([] if at_end else ["length"])] for a in ("-c", c)]
    start = time.monotonic()
    status, out, err = run([*args, "--wait-timeout", "30", "blkdebug::img.raw"])
    assert time.monotonic() - start < 20  # detected, not waited out
    assert status == 1
    assert why in err and "qemu-io would wait forever here" in err, err
    assert "1 MiB" not in out.splitlines()  # the script stopped there
    assert "Could not" not in out
    assert "Resuming" not in out  # nothing was resumed behind the user's back


@pytest.mark.parametrize(
    ("commands", "hangs"),
    [
        (["break flush_to_os A"], True),
        (["write 0 512", "break flush_to_disk A"], True),
        (["discard 0 0", "break flush_to_disk A"], True),  # an empty discard dirties too
        (["break flush_to_disk A"], False),  # nothing to flush: no flush_to_disk
        (["write 0 512", "flush", "break flush_to_disk A"], False),
        (["break read_aio A"], False),
    ],
)
def test_a_breakpoint_on_the_flush_qemu_io_does_when_it_exits_is_an_error(
    image: Path, commands: list[str], hangs: bool
) -> None:
    """qemu-io flushes the image when it exits; a breakpoint still pending on
    flush_to_os (or flush_to_disk, with a write since the last flush) holds
    that flush and qemu-io hangs there (seen with qemu-io 7.2 for each case
    marked so). blkdebug-io ended with status 0 as if all was well."""
    args = [a for c in commands for a in ("-c", c)]
    status, _, err = run([*args, "blkdebug::img.raw"])
    if hangs:
        assert status == 1
        assert "qemu-io flushes the image when it exits, and breakpoint 'A' on flush_to_" in err
        assert "qemu-io would wait forever here" in err
    else:
        assert (status, err) == (0, "")


def test_the_image_is_closed_and_unchanged_after_a_stopped_script(image: Path) -> None:
    before = image.read_bytes()
    run(["-c", "break write_aio A", "-c", "aio_write -P 1 0 512", "blkdebug::img.raw"])
    assert image.read_bytes() == before
    assert not [
        p
        for p in os.listdir(f"/proc/{os.getpid()}/fd")
        if os.path.realpath(f"/proc/{os.getpid()}/fd/{p}") == str(image)
    ]


def test_events_registers_custom_events_for_an_ini_file_and_break(image: Path) -> None:
    """An ini file cannot declare events: ``--events`` registers them first,
    so a rule and a breakpoint can name them (as blkdebug-nbd's option)."""
    (image.parent / "r.ini").write_text(
        '[set-state]\nevent = "journal_commit"\nnew_state = "2"\n\n'
        '[inject-error]\nevent = "read_aio"\nstate = "2"\nerrno = "28"\n'
    )
    without = run(["-c", "read 0 512", "blkdebug:r.ini:img.raw"])
    assert without[0] == 1 and "r.ini:2: " in without[2] and "journal_commit" in without[2]
    status, out, err = run(
        [
            "--events",
            "journal_commit, other.event",
            "--events",
            "third",
            "-c",
            "break third A",
            "-c",
            "remove_break A",
            "-c",
            "read 0 512",
            "--report",
            "blkdebug:r.ini:img.raw",
        ]
    )
    assert (status, err) == (0, "")
    assert no_stats(out)[0] == "read 512/512 bytes at offset 0"  # nothing raised journal_commit
    bad = run(["--events", "bad name", "-c", "length", "img.raw"])
    assert bad[0] == 1 and bad[2].startswith("blkdebug-io: --events: invalid event name 'bad name'")


def test_an_interrupted_script_closes_the_image_without_running_held_requests(
    image: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C while a request is suspended: the request is dropped, not run
    on by the closing disk (no 'Resuming' line, no write, no traceback from
    inside the close)."""
    from pytest_blkdebug.qemuio import session

    def interrupted(self: session.Session, spec: object, argv: list[str]) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(session.Session, "cmd_length", interrupted)
    out = io.StringIO()
    commands = ["break pwritev A", "aio_write -P 7 0 512", "length"]
    with pytest.raises(KeyboardInterrupt):
        cli.main([*(a for c in commands for a in ("-c", c)), "blkdebug::img.raw"], stdout=out)
    assert out.getvalue() == "blkdebug: Suspended request 'A'\n"
    assert image.read_bytes()[:512] == bytes(512)


def test_a_delay_rule_keeps_an_aio_request_until_a_poll_after_the_delay(image: Path) -> None:
    """A delay (an extension) is a timer in blkdebug-io's event loop: the
    aio_read waits through the commands that do not poll, and aio_flush
    waits for it."""
    (image.parent / "d.toml").write_text(
        '[[inject-error]]\nevent = "read_aio"\nerrno = 0\ndelay = 0.2\niotype = "read"\n'
    )
    start = time.monotonic()
    status, out, err = run(
        ["-c", "aio_read 0 512", "-c", "length", "-c", "aio_flush", "blkdebug:d.toml:img.raw"]
    )
    assert (status, err) == (0, "")
    assert no_stats(out) == ["1 MiB", "read 512/512 bytes at offset 0"]
    assert time.monotonic() - start >= 0.2
