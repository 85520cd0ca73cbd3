"""The ``blkdebug_sweep`` fixture: one run per matching request, the Nth failing.

Small suites run through pytester (in process unless xdist is involved).
Each checks exact figures: how many points a workload has for read, write,
flush and event rules, the request each point failed, which point a broken
body is reported at, ``persist``, ``--blkdebug-sweep=N`` and the K-way split.
"""

from __future__ import annotations

import json
import re

import pytest

#: A workload used by several tests: 2 reads, 3 writes, a flush, a clean flush.
WORKLOAD = """
BLOCK = 4096

def workload(disk):
    disk.read(0, 512)
    for i in range(3):
        disk.write(i * BLOCK, bytes([i + 1]) * BLOCK)
    disk.read(BLOCK, 512)
    disk.flush()
    disk.flush()  # nothing written since: not checked, not a point
"""


def run(pytester: pytest.Pytester, test: str, *args: str) -> pytest.RunResult:
    pytester.makepyfile(test_sweep_example=WORKLOAD + test)
    # verbosity_subtests=1: passed subtests are counted in the summary line
    return pytester.runpytest("-p", "no:cacheprovider", "-o", "verbosity_subtests=1", *args)


def outcomes(result: pytest.RunResult) -> dict[str, int]:
    """The summary line's counts, "subtests passed" included (parseoutcomes
    folds that into "subtests"), without warnings."""
    line = next(ln for ln in reversed(result.outlines) if re.search(r" in [0-9.]+s", ln))
    counts = re.findall(r"(\d+) ([a-z ]+?)(?=,| in [0-9.]+s)", line.strip("= "))
    return {what: int(n) for n, what in counts if not what.startswith("warning")}


@pytest.mark.parametrize(
    ("rule", "points", "requests"),
    [
        ("iotype='read'", 2, "[('read', 0, 512), ('read', 4096, 512)]"),
        (
            "iotype='write'",
            3,
            "[('write', 0, 4096), ('write', 4096, 4096), ('write', 8192, 4096)]",
        ),
        ("iotype='flush'", 1, "[('flush', 0, 0)]"),
        ("", 6, None),  # QEMU's default iotypes: reads, writes and the checked flush
    ],
    ids=["read", "write", "flush", "default-iotypes"],
)
def test_points_are_counted_exactly(
    pytester: pytest.Pytester, rule: str, points: int, requests: str | None
) -> None:
    result = run(
        pytester,
        f"""
def test_it(blkdebug_sweep):
    seen = []
    def check(disk, outcome):
        seen.append((outcome.n, outcome.hit, outcome.raised))
    result = blkdebug_sweep.run(workload, check=check, {rule})
    assert result.points == {points}
    assert result.runs == list(range(1, {points} + 2))
    assert seen == [(n, True, True) for n in range(1, {points} + 1)] + [({points} + 1, False, False)]
    got = [(r.operation, r.offset, r.length) for r in result.requests.values()]
    assert {requests or "got"} == got
    assert list(result.requests) == list(range(1, {points} + 1))
""",
    )
    assert outcomes(result) == {"passed": 1, "subtests passed": points + 1}


def test_event_rule_counts_requests_from_its_event_on(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        """
import pytest

@pytest.mark.blkdebug(events=["commit"])
def test_it(blkdebug_sweep):
    def body(disk):
        disk.write(0, b"a" * 512)        # before the event: never fails
        disk.event("commit")
        disk.write(512, b"b" * 512)
        disk.write(1024, b"c" * 512)
        disk.flush()
    result = blkdebug_sweep.run(body, event="commit", iotype=["write", "flush"])
    assert result.points == 3
    assert [str(r) for r in result.requests.values()] == [
        "write of 512 bytes at offset 512", "write of 512 bytes at offset 1024", "flush"]
""",
    )
    assert outcomes(result) == {"passed": 1, "subtests passed": 4}


def test_each_point_starts_from_the_prepared_image(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        """
from pathlib import Path

def prep(disk):
    disk.write(0, b"prepared")           # no rule on the prep's disk
    disk.flush()
    (Path(disk.path).parent / "notes.txt").write_text("next to the image")

def test_it(blkdebug_sweep):
    paths = set()
    def body(disk):
        paths.add(disk.path)
        assert disk.read(0, 8) == b"prepared"
        assert (Path(disk.path).parent / "notes.txt").read_text() == "next to the image"
        disk.write(0, b"changed!")
        disk.write(4096, b"x")
    def check(disk, outcome):
        data = disk.read(0, 8) if outcome.n > 1 else None
        if outcome.n > 1:
            assert data == b"changed!"  # this point's own copy
    result = blkdebug_sweep.run(body, prep=prep, check=check, iotype="write")
    assert result.points == 2 and len(paths) == 3
""",
    )
    assert outcomes(result) == {"passed": 1, "subtests passed": 3}


def test_a_body_that_breaks_at_n3_is_reported_as_n3_with_its_request(
    pytester: pytest.Pytester,
) -> None:
    result = run(
        pytester,
        """
def test_it(blkdebug_sweep, tmp_path):
    def body(disk):
        for i in range(5):
            try:
                disk.write(i * 4096, b"x" * 4096)
            except OSError:
                if i != 2:
                    raise  # the third write's error is swallowed: the bug

    def check(disk, outcome):
        assert outcome.raised == outcome.hit, "an I/O error was swallowed"

    result = blkdebug_sweep.run(body, check=check, iotype="write")
    assert result.failures == [3] and result.points == 5
    # the failing point's files stay for a look; the passing points' are gone
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir()) == ["N=3", "template"]
    assert (tmp_path / "sweep" / "N=3" / "disk.img").exists()
""",
    )
    assert outcomes(result) == {"failed": 2, "subtests passed": 5}
    out = result.stdout.str()
    result.stdout.fnmatch_lines(
        [
            "*SweepFailure: N=3: EIO injected into write of 4096 bytes at offset 8192; "
            "body returned; check failed: AssertionError: an I/O error was swallowed",
            "*- blkdebug sweep N=3 -*",
            "rerun this point: pytest 'test_sweep_example.py::test_it' --blkdebug-sweep=3"
            " --blkdebug-seed=*",
            "SUBFAILED[[]N=3[]] test_sweep_example.py::test_it*",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*= blkdebug sweeps =*",
            "test_sweep_example.py::test_it: 5 points (write), 6 runs, 1 failed (N=3)",
        ]
    )
    assert "N=1" not in out.split("short test summary")[1].replace("N=3", "")


def test_body_failing_without_a_fault_fails_the_last_run(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        """
def test_it(blkdebug_sweep):
    def body(disk):
        disk.write(0, b"x")
        raise RuntimeError("the workload is broken anyway")
    blkdebug_sweep.run(body, iotype="write")
""",
    )
    assert outcomes(result) == {"failed": 2, "subtests passed": 1}
    result.stdout.fnmatch_lines(
        ["*N=2 (not reached: no fault was injected): body raised RuntimeError: the workload*"]
    )


def test_the_exception_body_raised_is_in_the_outcome(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        """
class StoreError(Exception):
    pass

def test_it(blkdebug_sweep):
    def body(disk):
        try:
            disk.write(0, b"x")
        except OSError as exc:
            raise StoreError("write failed") from exc
    def check(disk, outcome):
        if outcome.hit:
            assert isinstance(outcome.error, StoreError)
            assert outcome.injected is not None and outcome.injected.errno == 28
            assert outcome.injected.rule == "sweep" and outcome.injected.operation == "write"
    assert blkdebug_sweep.run(body, check=check, errno="ENOSPC").points == 1
""",
    )
    assert outcomes(result) == {"passed": 1, "subtests passed": 2}


def test_persist_fails_every_request_from_the_nth_on(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        """
def test_it(blkdebug_sweep):
    def body(disk):
        failed = 0
        for i in range(4):
            try:
                disk.write(i * 512, b"x" * 512)
            except OSError:
                failed += 1
        return failed

    seen = {}
    def check(disk, outcome):
        seen[outcome.n] = (outcome.value, len(outcome.failed))
        if outcome.hit:
            assert outcome.request.offset == (outcome.n - 1) * 512

    result = blkdebug_sweep.run(body, check=check, iotype="write", persist=True)
    assert result.points == 4
    assert seen == {1: (4, 4), 2: (3, 3), 3: (2, 2), 4: (1, 1), 5: (0, 0)}

    once = {}
    blkdebug_sweep.run(body, check=lambda d, o: once.__setitem__(o.n, o.value), iotype="write")
    assert once == {1: 1, 2: 1, 3: 1, 4: 1, 5: 0}
""",
    )
    assert outcomes(result) == {"passed": 1, "subtests passed": 10}


def test_rerun_one_point_with_the_option(pytester: pytest.Pytester) -> None:
    test = """
def test_it(blkdebug_sweep):
    ran = []
    result = blkdebug_sweep.run(workload, check=lambda d, o: ran.append(o.n), iotype="write")
    print("RAN", ran, [str(r) for r in result.requests.values()])
"""
    result = run(pytester, test, "--blkdebug-sweep=3", "-s")
    assert outcomes(result) == {"passed": 1, "subtests passed": 1}
    result.stdout.fnmatch_lines(["*RAN [[]3[]] [[]'write of 4096 bytes at offset 8192'[]]*"])
    usage = run(pytester, test, "--blkdebug-sweep=0")
    assert usage.ret == pytest.ExitCode.USAGE_ERROR
    usage.stderr.fnmatch_lines(["*--blkdebug-sweep: N must be 1 or more, not 0*"])
    # Past the last point (the workload writes 3 times): nothing to check,
    # said in a warning rather than a silent pass.
    past = run(pytester, test, "--blkdebug-sweep=9", "-s")
    assert outcomes(past)["passed"] == 1
    past.stdout.fnmatch_lines(
        [
            "*--blkdebug-sweep=9 checked nothing: the workload ran to its end without reaching"
            " request 9*"
        ]
    )
    assert "checked nothing" not in str(result.stdout)


def test_bad_rule_attributes_are_named(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        """
import pytest
from pytest_blkdebug import RuleError

def test_it(blkdebug_sweep):
    with pytest.raises(RuleError, match="invalid iotype 'wirte'"):
        blkdebug_sweep.run(workload, iotype="wirte")
    with pytest.raises(RuleError, match="unknown event 'comit'"):
        blkdebug_sweep.run(workload, event="comit")
    with pytest.raises(RuleError, match="'count' is the sweep's to set"):
        blkdebug_sweep.run(workload, count=2)
    with pytest.raises(RuleError, match="unexpected keyword argument 'colour'"):
        blkdebug_sweep.run(workload, colour="red")
""",
    )
    assert outcomes(result) == {"passed": 1}


def test_split_spreads_the_points_over_workers(pytester: pytest.Pytester) -> None:
    pytest.importorskip("xdist")
    pytester.makepyfile(
        test_sweep_example=WORKLOAD
        + """
import json, os, pytest

@pytest.mark.blkdebug_split(2)
def test_it(blkdebug_sweep, blkdebug_split):
    result = blkdebug_sweep.run(workload, iotype="write")
    record = {"worker": os.environ.get("PYTEST_XDIST_WORKER"), "runs": result.runs,
              "requests": {n: str(r) for n, r in result.requests.items()}}
    with open(f"part{blkdebug_split[0]}.json", "w") as f:
        json.dump(record, f)
"""
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2")
    result.assert_outcomes(passed=2)
    first = json.loads((pytester.path / "part0.json").read_text())
    second = json.loads((pytester.path / "part1.json").read_text())
    assert first["worker"] != second["worker"]  # one item per worker
    assert first["runs"] == [1, 3, 5] and second["runs"] == [2, 4]
    assert {**first["requests"], **second["requests"]} == {
        "1": "write of 4096 bytes at offset 0",
        "2": "write of 4096 bytes at offset 4096",
        "3": "write of 4096 bytes at offset 8192",
    }
    # a rerun of one point runs in the item that has it
    rerun = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--blkdebug-sweep=2")
    rerun.assert_outcomes(passed=2)
    assert json.loads((pytester.path / "part1.json").read_text())["runs"] == [2]
    assert json.loads((pytester.path / "part0.json").read_text())["runs"] == []


def test_crash_mode_checks_each_image_a_power_loss_at_n_leaves(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        """
def test_it(blkdebug_sweep):
    def body(disk):
        disk.write(0, b"A" * 512)
        disk.flush()
        disk.write(512, b"B" * 512)  # never flushed

    seen = {}
    def check(disk, outcome):
        image = (disk.read(0, 1) + disk.read(512, 1)).replace(bytes(1), b"-").decode()
        seen.setdefault(outcome.n, set()).add(image)
        assert (outcome.crash is None) == (not outcome.hit)

    result = blkdebug_sweep.run(body, check=check, iotype=["write", "flush"], mode="crash")
    assert result.points == 3
    # N=1: nothing reached the disk; N=2: the write may or may not have;
    # N=3: the flushed write is durable, the unflushed one lost; N=4: no crash
    assert seen == {1: {"--"}, 2: {"--", "A-"}, 3: {"A-"}, 4: {"AB"}}
""",
    )
    assert outcomes(result) == {"passed": 1, "subtests passed": 4}


def test_crash_mode_failure_shows_the_crash_state(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        """
def test_it(blkdebug_sweep):
    def body(disk):
        disk.write(0, b"A" * 512)
        disk.flush()

    def check(disk, outcome):
        assert disk.read(0, 1) == b"A", "the write was lost"

    blkdebug_sweep.run(body, check=check, mode="crash")
""",
    )
    assert outcomes(result) == {"failed": 3, "subtests passed": 1}
    result.stdout.fnmatch_lines(
        [
            "*SweepFailure: N=1: power lost at write of 512 bytes at offset 0, crash state e0-none;"
            " body raised it; check failed: AssertionError: the write was lost*",
            "*- blkdebug sweep N=1 -*",
            "crash state e0-none: power lost at #1 end of the recording",
        ]
    )


def test_a_lie_sweeps_too(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        """
import zlib

def prep(disk):
    for i in range(4):
        block = bytes([i]) * 508
        disk.write(i * 512, block + zlib.crc32(block).to_bytes(4, "little"))

def read_all(disk):
    blocks = []
    for i in range(4):
        raw = disk.read(i * 512, 512)
        if zlib.crc32(raw[:508]).to_bytes(4, "little") != raw[508:]:
            raise ValueError(f"block {i} fails its checksum")
        blocks.append(raw[0])
    return blocks

def test_it(blkdebug_sweep):
    def check(disk, outcome):
        if outcome.hit:  # the Nth read returned one flipped bit: the checksum sees it
            assert str(outcome.error) == f"block {outcome.n - 1} fails its checksum"
            assert outcome.injected is None  # no error was raised: the disk lied
        else:
            assert outcome.value == [0, 1, 2, 3]
    result = blkdebug_sweep.run(read_all, prep=prep, check=check, corrupt="bitflip")
    assert result.points == 4

def test_reported(blkdebug_sweep):
    blkdebug_sweep.run(lambda d: d.read(0, 512), check=lambda d, o: o.raised, corrupt="zero",
                       iotype="read")
    blkdebug_sweep.run(lambda d: d.read(0, 512), check=lambda d, o: not o.hit or 1 / 0,
                       corrupt="zero", iotype="read")
""",
    )
    assert outcomes(result) == {"passed": 1, "failed": 2, "subtests passed": 8}
    result.stdout.fnmatch_lines(
        [
            "*SweepFailure: N=1: corrupt=zero injected into read of 512 bytes at offset 0; "
            "body returned; check failed: ZeroDivisionError: division by zero"
        ]
    )


def test_without_subtests_the_failures_are_collected(pytester: pytest.Pytester) -> None:
    # pytest before 9 has no subtests fixture: -p no:subtests stands for it
    result = run(
        pytester,
        """
def test_it(blkdebug_sweep):
    def check(disk, outcome):
        assert outcome.n not in (2, 3), "wrong"
    blkdebug_sweep.run(workload, check=check, iotype="write")
""",
        "-p",
        "no:subtests",
    )
    assert outcomes(result) == {"failed": 1}
    result.stdout.fnmatch_lines(
        [
            "E *SweepFailure: N=2: EIO injected into write of 4096 bytes at offset 4096; "
            "body raised it; check failed: AssertionError: wrong",
            "E * N=3: EIO injected into write of 4096 bytes at offset 8192; *",
            "test_sweep_example.py::test_it: 3 points (write), 4 runs, 2 failed (N=2, N=3)",
        ]
    )
