"""Attacks on fault sweeps (plugin/sweep.py, core/sweep.py): bodies that
raise what ``Exception`` does not catch, crash-mode images, report lines.
Indexed in tests/test_hostile.py."""

from __future__ import annotations

import pytest


def run(pytester: pytest.Pytester, test: str, *args: str) -> pytest.RunResult:
    pytester.makepyfile(test_sweep_attack=test)
    return pytester.runpytest("-p", "no:cacheprovider", *args)


def test_a_body_that_exits_at_one_point_does_not_end_the_sweep(
    pytester: pytest.Pytester,
) -> None:
    """A body that calls ``sys.exit`` on an I/O error (a CLI's main, say):
    the point fails, and the points after it still run. The sweep stopped
    there, and its line said "2 points, 2 runs, 1 failed (N=3)": three ran,
    the third reached its fault, the fourth never ran."""
    result = run(
        pytester,
        """
import sys

def test_it(blkdebug_sweep):
    def body(disk):
        disk.write(0, b"x" * 512)
        disk.write(512, b"x" * 512)
        try:
            disk.flush()
        except OSError:
            sys.exit(1)

    result = blkdebug_sweep.run(body, iotype=["write", "flush"])
    print("RESULT", result.points, result.runs, result.failures)
""",
        "-s",
    )
    result.stdout.fnmatch_lines(
        [
            "*RESULT 3 [[]1, 2, 3, 4[]] [[]3[]]*",
            "test_sweep_attack.py::test_it: 3 points (write, flush), 4 runs, 1 failed (N=3)",
            "SUBFAILED*N=3*SystemExit: 1",
        ]
    )
    assert result.parseoutcomes()["failed"] == 2  # the subtest and its test, no more


def test_crash_mode_images_keep_the_files_prep_left(pytester: pytest.Pytester) -> None:
    """docs/sweeps.md: files ``prep`` leaves next to the image are copied to
    every point. In crash mode ``check`` saw only the files the recording
    knew (those the body opened through the engine): a file the body never
    touched was missing from every crash image's directory."""
    result = run(
        pytester,
        """
from pathlib import Path

def test_it(blkdebug_sweep):
    def prep(disk):
        (Path(disk.path).parent / "meta.txt").write_text("hello")

    def body(disk):
        disk.write(0, b"x" * 512)
        disk.flush()

    def check(disk, outcome):
        assert (Path(disk.path).parent / "meta.txt").read_text() == "hello"

    result = blkdebug_sweep.run(
        body, prep=prep, check=check, iotype=["write", "flush"], mode="crash"
    )
    assert (result.points, result.failures, result.images) == (2, [], 3)
""",
    )
    result.assert_outcomes(passed=1)


def test_crash_mode_keeps_a_file_in_a_subdirectory_in_its_place(
    pytester: pytest.Pytester,
) -> None:
    """A recorded file in a subdirectory of the point (``data/log.img``)
    was restored flat (``log.img``), so ``check`` opening ``data/log.img``
    read the prepared file: a flushed write was silently missing."""
    result = run(
        pytester,
        """
from pathlib import Path
from pytest_blkdebug import Disk

def test_it(blkdebug_sweep):
    def prep(disk):
        (Path(disk.path).parent / "data").mkdir()
        Disk.create(Path(disk.path).parent / "data" / "log.img", 4096).close()

    def body(disk):
        with Disk(Path(disk.path).parent / "data" / "log.img", engine=disk.engine) as log:
            log.write(0, b"L" * 512)
            log.flush()
            disk.write(0, b"x" * 512)

    seen = []

    def check(disk, outcome):
        with Disk(Path(disk.path).parent / "data" / "log.img") as log:
            seen.append((outcome.crash.id if outcome.crash else None, log.read(0, 1)))

    result = blkdebug_sweep.run(body, prep=prep, check=check, iotype=["write", "flush"], mode="crash")
    assert result.requests[3].operation == "write"  # power lost after the flush
    assert seen == [
        ("e0-none", b"\\0"),  # N=1: the log's write
        ("e0-none", b"\\0"),  # N=2: its flush, not completed
        ("e0-all", b"L"),
        ("e0-all", b"L"),  # N=3: the image's write; the log is durable
        (None, b"L"),
    ]
""",
    )
    result.assert_outcomes(passed=1)


def test_a_check_that_calls_pytest_fail_names_the_point(pytester: pytest.Pytester) -> None:
    """``pytest.fail()`` in ``check`` is a BaseException: the failure lost
    its "N=2: EIO injected into ..." message."""
    result = run(
        pytester,
        """
import pytest

def test_it(blkdebug_sweep):
    def body(disk):
        disk.write(0, b"x" * 512)
        disk.write(512, b"x" * 512)

    def check(disk, outcome):
        if outcome.n == 2:
            pytest.fail("bad at two")

    blkdebug_sweep.run(body, check=check, iotype="write")
""",
    )
    result.stdout.fnmatch_lines(
        [
            "*SweepFailure: N=2: EIO injected into write of 512 bytes at offset 512; "
            "body raised it; check failed: Failed: bad at two"
        ]
    )


def test_a_delay_sweeps_and_a_rule_that_cannot_reach_a_point_is_refused(
    pytester: pytest.Pytester,
) -> None:
    """``errno=0, delay=...`` delayed the Nth request but the sweep counted it
    as not reached: "0 points, 1 runs" and a pass. ``errno=0`` alone (also
    in crash mode) never reaches a point, and ``probability=0.5`` let the
    Nth request pass at random, ending the sweep early ("9 points" for 10
    writes): each passed, having swept nothing or not everything."""
    result = run(
        pytester,
        """
import pytest
from pytest_blkdebug.core.errors import RuleError

def body(disk):
    for i in range(10):
        disk.write(i * 512, b"x" * 512)

def test_delay(blkdebug_sweep):
    result = blkdebug_sweep.run(body, iotype="write", errno=0, delay=0.001)
    assert result.points == 10

@pytest.mark.parametrize(
    ("rule", "what"),
    [
        (dict(errno=0), "errno=0 with no delay or lie"),
        (dict(errno=0, mode="crash"), "errno=0 with no delay or lie"),
        (dict(probability=0.5), "probability=0.5 would let"),
    ],
)
def test_refused(blkdebug_sweep, rule, what):
    with pytest.raises(RuleError, match=what):
        blkdebug_sweep.run(body, iotype="write", **rule)
""",
    )
    result.assert_outcomes(passed=4)


def test_a_crash_mode_check_can_open_its_crash_state(pytester: pytest.Pytester) -> None:
    """``outcome.crash.read()`` (or ``.open()``) in a crash-mode check failed
    with a bare TypeError: the copy's engine was made as the point's engine
    class, which takes the sweep's rule."""
    result = run(
        pytester,
        """
def test_it(blkdebug_sweep):
    def body(disk):
        disk.write(0, b"x" * 512)
        disk.flush()

    def check(disk, outcome):
        if outcome.crash is not None:
            assert outcome.crash.read() == disk.read(0, disk.size)

    result = blkdebug_sweep.run(body, check=check, iotype=["write", "flush"], mode="crash")
    assert result.images == 3
""",
    )
    result.assert_outcomes(passed=1)


def test_an_async_body_or_check_is_refused(pytester: pytest.Pytester) -> None:
    """An ``async def`` body was called and never awaited: no I/O, so no
    point, "0 points, 1 runs" and a pass. The same for an async check given
    to ``blkdebug_crash.run``: every state "passed" unchecked."""
    result = run(
        pytester,
        """
import pytest

async def body(disk):
    await disk.aio.write(0, b"x" * 512)

def test_sweep(blkdebug_sweep):
    with pytest.raises(TypeError, match="body is an async function"):
        blkdebug_sweep.run(body, iotype="write")

def test_crash(blkdebug_disk, blkdebug_crash):
    with blkdebug_disk.record() as run:
        blkdebug_disk.write(0, b"x" * 512)

    async def check(crash):
        assert False

    with pytest.raises(TypeError, match="check is an async function"):
        blkdebug_crash.run(run, check)
""",
    )
    result.assert_outcomes(passed=2)


def test_a_crash_mode_failure_report_shows_the_points_rule_and_trace(
    pytester: pytest.Pytester,
) -> None:
    """docs/sweeps.md: the ``blkdebug sweep N=<n>`` section has that point's
    rule and trace. In crash mode it showed the crash image's fresh disk
    instead: "rules: none", "trace: empty"."""
    result = run(
        pytester,
        """
def test_it(blkdebug_sweep):
    def body(disk):
        disk.write(0, b"x" * 512)
        disk.flush()

    def check(disk, outcome):
        assert disk.read(0, 1) == b"x"

    blkdebug_sweep.run(body, check=check, iotype=["write", "flush"], mode="crash")
""",
    )
    result.stdout.fnmatch_lines(
        [
            "*- blkdebug sweep N=2 -*",
            "crash state e0-none: power lost at #3 end of the recording",
            "*sweep  inject-error  none   errno=EIO once iotype=write,flush after=1*",
            "*flush  *EIO 'Input/output error' by rule 'sweep'*",
        ]
    )
    assert "trace: empty" not in result.stdout.str()


def test_every_crash_image_of_a_point_is_checked_after_one_fails(
    pytester: pytest.Pytester,
) -> None:
    """The first failing crash image ended its point: the others were never
    checked, yet the summary counted them ("4 crash images") and the
    failure named one state of two."""
    result = run(
        pytester,
        """
def test_it(blkdebug_sweep):
    def body(disk):
        disk.write(0, b"x" * 512)
        disk.write(512, b"y" * 512)
        disk.flush()

    seen = []

    def check(disk, outcome):
        seen.append(outcome.crash.id if outcome.crash else None)
        assert disk.read(0, 1) == b"x"

    try:
        blkdebug_sweep.run(body, check=check, iotype="flush", mode="crash", crash_states="all")
    finally:
        print("SEEN", seen)
""",
        "-s",
    )
    result.stdout.fnmatch_lines(
        [
            "*SEEN ['e0-none', 'e0-all', 'e0-p1', 'e0-s2', None]*",
            "*SweepFailure: N=1: power lost at flush, crash state e0-none;*",
            "*and 1 more:",
            "*N=1: power lost at flush, crash state e0-s2; body raised it;*",
        ]
    )


def test_the_image_size_is_parsed_and_checked_before_any_work(
    pytester: pytest.Pytester,
) -> None:
    """``size="1M"`` (as ``Disk.create`` takes it) raised a bare TypeError
    from the image hook, ``size=-1`` a bare OSError (EINVAL), and
    ``size=True`` made a 1-byte image."""
    result = run(
        pytester,
        """
import pytest

def body(disk):
    disk.write(0, b"x" * 512)

def test_suffix(blkdebug_sweep):
    seen = []
    result = blkdebug_sweep.run(lambda disk: seen.append(disk.size) or body(disk), size="1M")
    assert result.points == 1 and seen == [1 << 20, 1 << 20]

@pytest.mark.parametrize("size", [-1, True, 1.5, "lots"])
def test_refused(blkdebug_sweep, size):
    with pytest.raises(ValueError, match="invalid size"):
        blkdebug_sweep.run(body, size=size)
""",
    )
    result.assert_outcomes(passed=5)


def test_events_given_as_one_string_are_refused_by_name(pytester: pytest.Pytester) -> None:
    """``events="commit"`` registered the letters c, o, m, ... and the rule's
    ``event="commit"`` then failed as an unknown event; ``Disk`` says what
    is wrong."""
    result = run(
        pytester,
        """
import pytest

def test_it(blkdebug_sweep):
    with pytest.raises(TypeError, match="events must be a list of names, not a string"):
        blkdebug_sweep.run(lambda disk: None, events="commit", event="commit")
""",
    )
    result.assert_outcomes(passed=1)
