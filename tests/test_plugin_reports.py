"""What the plugin reports: the ``blkdebug`` section (failures; passes with
-rA or blkdebug_report=all; never with none), JUnit XML properties, the
session summary of rules that never fired, and the same outcomes and
properties under pytest-xdist."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

SUITE = """
    import errno, pytest

    @pytest.mark.set_state("write_aio", new_state=2, state=1)
    @pytest.mark.inject_error("write_aio", state=2, errno=errno.ENOSPC, name="second-write")
    @pytest.mark.inject_error("flush_to_disk", name="never-flushed")
    def test_fails(blkdebug_disk):
        blkdebug_disk.write(0, b"a" * 512)
        blkdebug_disk.write(512, b"b" * 512)

    @pytest.mark.inject_error("read_aio", sector=1, once=True, name="bad-sector")
    def test_passes(blkdebug_disk):
        blkdebug_disk.read(0, 512)
        with pytest.raises(OSError):
            blkdebug_disk.read(0, 1024)

    def test_two_engines(blkdebug_disk, blkdebug_disk_factory):
        from pytest_blkdebug import SetState
        blkdebug_disk_factory("journal", rules=[SetState("read_aio", 9, name="j")])
        blkdebug_disk_factory("journal2", share=True)

    def test_without_disk():
        pass
"""


def section_of(text: str, title: str) -> str:
    """The lines of one ``---- title ----`` section of pytest's output."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip("-_= ") == title)
    end = next(
        (i for i in range(start + 1, len(lines)) if lines[i].startswith(("----", "____", "===="))),
        len(lines),
    )
    return "\n".join(lines[start + 1 : end])


def squash(text: str) -> list[str]:
    """Lines with runs of spaces folded: table checks that ignore column widths."""
    return [" ".join(line.split()) for line in text.splitlines()]


def test_failure_shows_state_history_rules_and_trace(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(SUITE)
    result = pytester.runpytest()
    result.assert_outcomes(passed=3, failed=1)
    out = result.stdout.str()
    result.stdout.fnmatch_lines(
        [
            "*_ test_fails _*",
            "E *.InjectedError: [[]Errno 28[]] No space left on device (injected by rule "
            "'second-write' into write of 512 bytes at offset 512)",
            "*- blkdebug -*",
        ]
    )
    section = squash(section_of(out, "blkdebug"))
    # A failure's section ends with the test's seed and the session's.
    assert re.fullmatch(
        r"seed: \d+ \(from the session's (\d+): --blkdebug-seed=\1\)", section[-1]
    ), section[-1]
    assert section[1:-1] == [
        "state: 2",
        "history: 1 -> 2 (write_aio)",
        "rules (3):",
        "name kind event conditions armed hits consumed active",
        "set-state#1 set-state write_aio state=1 -> 2 - 1 - -",
        "second-write inject-error write_aio errno=ENOSPC state=2 1 1 no yes",
        "never-flushed inject-error flush_to_disk errno=EIO 0 0 no no",
        "trace (3):",
        "what request result state",
        "event write_aio 2",
        "event write_aio 2",
        "write 512 bytes at 512 ENOSPC 'No space left on device' by rule 'second-write' 2",
    ]
    result.stdout.fnmatch_lines(["disk */test_fails0/disk.img (64 MiB)"])
    assert out.count("- blkdebug -") == 1  # passing tests: no section by default


def test_passing_tests_sections_with_rA(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(SUITE)
    result = pytester.runpytest("-rA")
    out = result.stdout.str()
    assert out.count("- blkdebug -") == 3
    passes = out[out.index("= PASSES =") :]
    text = squash(section_of(passes[passes.index("_ test_passes _") :], "blkdebug"))
    assert text[1:6] == [
        "state: 1",
        "history: no state changes",
        "rules (1):",
        "name kind event conditions armed hits consumed active",
        "bad-sector inject-error read_aio errno=EIO sector=1 once 2 1 yes no",
    ]
    assert text[-1] == "read 1024 bytes at 0 EIO 'Input/output error' by rule 'bad-sector' 1"
    two = squash(section_of(passes[passes.index("_ test_two_engines _") :], "blkdebug"))
    # share=True joins the test's first disk; journal has an engine of its own
    assert two[0].startswith("disks sharing one engine: ") and two[0].endswith(
        "/disk.img (64 MiB), " + two[0].split(", ")[1]
    )
    assert two[0].endswith("/journal2.img (64 MiB)") and two[3] == "rules: none"
    assert two[4:6] == ["trace: empty", ""]
    assert two[6].startswith("disk ") and two[6].endswith("/journal.img (64 MiB)")
    assert "j set-state read_aio -> 9 - 0 - -" in two


def test_report_all_and_none(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(SUITE)
    result = pytester.runpytest("--blkdebug-report", "all")
    out = result.stdout.str()
    summary = out[out.index("= blkdebug reports of passed tests =") :]
    summary = summary[: summary.index("= blkdebug: rules that never fired =")]
    assert "- test_report_all_and_none.py::test_passes -" in summary
    assert "- test_report_all_and_none.py::test_two_engines -" in summary
    assert "test_without_disk" not in summary and "test_fails" not in summary
    assert out.count("- blkdebug -") == 1  # the failure's own section
    # -rA with "all": pytest shows them, no second copy
    out = pytester.runpytest("--blkdebug-report", "all", "-rA").stdout.str()
    assert "blkdebug reports of passed tests" not in out and out.count("- blkdebug -") == 3
    pytester.makeini("[pytest]\nblkdebug_report = none\n")
    result = pytester.runpytest("-rA")
    result.assert_outcomes(passed=3, failed=1)
    assert "- blkdebug -" not in result.stdout.str()
    out = pytester.runpytest("-rA", "--blkdebug-report", "failed").stdout.str()
    assert out.count("- blkdebug -") == 3  # the command line beats the ini


def junit_properties(path: Path) -> dict[str, dict[str, str]]:
    """Each test's properties; the seed (random per run) and a failure's
    report section (its paths differ per run) are checked here and left out."""
    tree = ET.parse(path)
    result = {}
    for case in tree.iter("testcase"):
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        if props:
            assert props.pop("blkdebug.seed").isdigit()
        report = props.pop("blkdebug.report", None)
        if case.get("name") == "test_fails":
            assert report is not None and "\nstate: 2\nhistory: 1 -> 2 (write_aio)\n" in report
            assert "by rule 'second-write'" in report and "\nseed: " in report
        else:
            assert report is None
        result[case.get("name")] = props
    return result


EXPECTED_PROPERTIES = {
    "test_fails": {
        "blkdebug.state": "2",
        "blkdebug.rule.set-state#1.hits": "1",
        "blkdebug.rule.second-write.hits": "1",
        "blkdebug.rule.never-flushed.hits": "0",
        "blkdebug.rule.second-write.armed": "1",
        "blkdebug.rule.second-write.consumed": "0",
        "blkdebug.rule.never-flushed.armed": "0",
        "blkdebug.rule.never-flushed.consumed": "0",
    },
    "test_passes": {
        "blkdebug.state": "1",
        "blkdebug.rule.bad-sector.hits": "1",
        "blkdebug.rule.bad-sector.armed": "2",
        "blkdebug.rule.bad-sector.consumed": "1",
    },
    "test_two_engines": {
        "blkdebug.state": "1",
        "blkdebug[journal].state": "1",
        "blkdebug[journal].rule.j.hits": "0",
    },
    "test_without_disk": {},
}


def test_junit_xml_properties(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(SUITE)
    pytester.runpytest("--junitxml=out.xml").assert_outcomes(passed=3, failed=1)
    assert junit_properties(pytester.path / "out.xml") == EXPECTED_PROPERTIES


def test_summary_lists_rules_that_never_fired(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(SUITE)
    pytester.makepyfile(
        test_more="""
        import pytest

        @pytest.mark.parametrize("n", [1, 2])
        @pytest.mark.inject_error("flush_to_disk", name="never-flushed")
        @pytest.mark.inject_error("read_aio", name="fires-once")
        def test_x(blkdebug_disk, n):
            if n == 2:
                with pytest.raises(OSError):
                    blkdebug_disk.read(0, 1)
    """
    )
    result = pytester.runpytest("-p", "no:randomly")
    result.stdout.fnmatch_lines(
        [
            "*= blkdebug: rules that never fired =*",
            "never-flushed: 0 hits in 3 tests (test_more.py::test_x[[]1[]], "
            "test_more.py::test_x[[]2[]], test_summary_lists_rules_that_never_fired.py::test_fails)",
            "[[]journal[]] j: 0 hits in 1 test (*::test_two_engines)",
            "*= short test summary info =*",
        ]
    )
    out = result.stdout.str()
    summary = out[out.index("rules that never fired") : out.index("short test summary info")]
    assert summary.count("\n") == 3, summary
    assert "fires-once" not in summary and "bad-sector" not in summary


def test_same_outcomes_and_properties_under_xdist(pytester: pytest.Pytester) -> None:
    pytest.importorskip("xdist")
    pytester.makepyfile(SUITE)
    serial = pytester.runpytest_subprocess("--junitxml=serial.xml", "-p", "no:cacheprovider")
    serial.assert_outcomes(passed=3, failed=1)
    parallel = pytester.runpytest_subprocess(
        "-n", "2", "--junitxml=parallel.xml", "-p", "no:cacheprovider"
    )
    parallel.assert_outcomes(passed=3, failed=1)
    parallel.stdout.fnmatch_lines(["*created: 2/2 workers*"])
    assert junit_properties(pytester.path / "serial.xml") == EXPECTED_PROPERTIES
    assert junit_properties(pytester.path / "parallel.xml") == EXPECTED_PROPERTIES
    for result in (serial, parallel):
        result.stdout.fnmatch_lines(
            [
                "*- blkdebug -*",
                "*ENOSPC 'No space left on device' by rule 'second-write'*",
                "*= blkdebug: rules that never fired =*",
                "never-flushed: 0 hits in 1 test (*::test_fails)",
                "[[]journal[]] j: 0 hits in 1 test (*::test_two_engines)",
            ]
        )
