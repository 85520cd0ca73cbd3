"""The crash plugin (plugin/crash.py, plugin/split.py) through pytester:
subtests named by state ids, a failing state's report, the summary line,
``--blkdebug-crash=ID`` and the K-way split under ``-n 2``."""

from __future__ import annotations

import re

import pytest

#: Two commits of a tiny log, each flushed; the check fails for states that
#: keep the second record without the first (a reordering the device may do).
SUITE = """
import pytest

REC = 512

def workload(disk, run):
    disk.write(0, b"A" * REC)
    disk.write(REC, b"B" * REC)
    disk.flush()
    run.mark("txn 1")
    disk.write(2 * REC, b"C" * REC)
    disk.write(3 * REC, b"D" * REC)
    disk.flush()
    run.mark("txn 2")

def check(crash):
    with crash.open() as image:
        data = image.read(0, 4 * REC)
    records = [data[i * REC : (i + 1) * REC] for i in range(4)]
    present = [r[:1] != b"\\0" for r in records]
    # a later record never survives without the one before it
    for i in range(1, 4):
        assert not (present[i] and not present[i - 1]), f"record {i} without record {i - 1}"
"""

TEST = """
def test_log(blkdebug_disk, blkdebug_crash):
    with blkdebug_disk.record() as run:
        workload(blkdebug_disk, run)
    for crash in blkdebug_crash.states(run):
        with blkdebug_crash.check(crash):
            check(crash)
"""


def run(pytester: pytest.Pytester, test: str, *args: str) -> pytest.RunResult:
    pytester.makepyfile(test_crash_example=SUITE + test)
    return pytester.runpytest("-p", "no:cacheprovider", "-o", "verbosity_subtests=1", *args)


def failed_ids(result: pytest.RunResult) -> list[str]:
    return re.findall(r"SUBFAILED\[(e\d+-\w+)\]", result.stdout.str())


def test_each_state_is_a_subtest_and_a_failure_reports_the_state(
    pytester: pytest.Pytester,
) -> None:
    result = run(pytester, TEST, "-rA")
    out = result.stdout.str()
    failed = failed_ids(result)
    # epoch 0: "B" without "A"; epoch 1: "D" without "C" (with A, B durable)
    assert failed == ["e0-s2", "e1-s2"], out
    assert "crash state e0-s2: power lost at #3 flush of disk.img" in out
    assert "kept (1): #2 write" in out
    assert "lost (1): #1 write" in out
    assert "marks (issued before the point): none" in out
    assert re.search(r"crash state e1-s2: .*\n.*durable: 2 writes", out), out
    assert "marks (issued before the point): txn 1" in out
    assert "--blkdebug-crash=e1-s2" in out
    # the summary line: states before dedup, distinct images, checked, failed
    assert re.search(
        r"test_log: 9 crash states, 7 distinct images, 7 checked, 2 failed \(e0-s2, e1-s2\)",
        out,
    ), out


def test_option_runs_only_the_named_state(pytester: pytest.Pytester) -> None:
    result = run(pytester, TEST, "--blkdebug-crash=e1-s2", "-rA")
    out = result.stdout.str()
    assert failed_ids(result) == ["e1-s2"]
    assert "1 checked, 1 failed" in out
    result = run(pytester, TEST, "--blkdebug-crash=e0-none", "-rA")
    assert failed_ids(result) == []
    assert "1 checked, 0 failed" in result.stdout.str()
    result = run(pytester, TEST, "--blkdebug-crash=e9-none")
    result.assert_outcomes(skipped=1)


def test_callback_form(pytester: pytest.Pytester) -> None:
    test = """
def test_log(blkdebug_disk, blkdebug_crash):
    with blkdebug_disk.record() as run:
        workload(blkdebug_disk, run)
    summary = blkdebug_crash.run(run, check)
    assert summary.failures == 2
"""
    result = run(pytester, test)
    assert failed_ids(result) == ["e0-s2", "e1-s2"]


SPLIT_TEST = """
import json, os

@pytest.mark.blkdebug_split(3)
def test_log(blkdebug_disk, blkdebug_crash, blkdebug_split):
    with blkdebug_disk.record() as run:
        workload(blkdebug_disk, run)
    states = blkdebug_crash.states(run)
    with open(os.environ["SPLIT_OUT"], "a") as f:
        f.write(json.dumps([blkdebug_split.i, [c.id for c in states]]) + "\\n")
    for crash in states:
        with blkdebug_crash.check(crash):
            check(crash)
"""


def test_split_spreads_states_over_items_and_workers(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    out = pytester.path / "split.jsonl"
    monkeypatch.setenv("SPLIT_OUT", str(out))
    pytester.makepyfile(test_crash_example=SUITE + SPLIT_TEST)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-n", "2", "-o", "verbosity_subtests=1", "-rA"
    )
    text = result.stdout.str()
    assert "test_log[split0of3]" in text and "test_log[split2of3]" in text, text
    parts = dict(json.loads(line) for line in out.read_text().splitlines())
    assert sorted(parts) == [0, 1, 2]
    every = [i for ids in parts.values() for i in ids]
    assert len(every) == len(set(every))  # no state twice
    # together they are the whole list, each taking every third state
    single = run(pytester, TEST.replace("def test_log", "def test_whole"), "-rA")
    whole = re.search(r"test_whole: 9 crash states, (\d+) distinct", single.stdout.str())
    assert whole is not None and len(every) == int(whole.group(1))
    assert sorted(failed_ids(result)) == ["e0-s2", "e1-s2"]
    assert text.count("crash states, ") == 3  # one summary line per item


def test_split_marker_needs_a_positive_integer(pytester: pytest.Pytester) -> None:
    test = """
@pytest.mark.blkdebug_split(0)
def test_log(blkdebug_crash):
    pass
"""
    result = run(pytester, test)
    assert "blkdebug_split(K) needs an integer K >= 1, not 0" in result.stdout.str() + str(
        result.stderr
    )
