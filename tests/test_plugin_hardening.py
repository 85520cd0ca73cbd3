"""The plugin under hostile or careless use (issue 12 items in the plugin),
the seed plumbing (issue 11) and the structured counters (issue 9): each
test here failed before its fix.

Part of the hostile suite: tests/test_hostile.py indexes every attack."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest

# -- item 6: nan/inf timeouts ------------------------------------------------------


@pytest.mark.parametrize("value", ["nan", "inf"])
@pytest.mark.parametrize("option", ["wait-timeout", "hold-timeout"])
def test_non_finite_timeout_option_is_a_usage_error(
    pytester: pytest.Pytester, option: str, value: str
) -> None:
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest(f"--blkdebug-{option}={value}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    name = option.replace("-", "_")
    result.stderr.fnmatch_lines(
        [f"*blkdebug_{name} / --blkdebug-{option} must be a finite number of seconds > 0*{value}"]
    )


@pytest.mark.parametrize("key", ["wait_timeout", "hold_timeout"])
@pytest.mark.parametrize("value", ["float('nan')", "float('inf')"])
def test_non_finite_timeout_in_marker_fails_that_test(
    pytester: pytest.Pytester, key: str, value: str
) -> None:
    pytester.makepyfile(
        f"""
        import pytest

        @pytest.mark.blkdebug({key}={value})
        def test_x(blkdebug_disk):
            pass
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [f"*@pytest.mark.blkdebug({key}=*)*: argument '{key}' must be a finite number of seconds*"]
    )


# -- item 21: hold_timeout from the option, the ini, the marker and the factory ------


def test_hold_timeout_cli_over_ini_over_default_marker_and_factory(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeini("[pytest]\nblkdebug_hold_timeout = 30\n")
    pytester.makepyfile(
        """
        import pytest

        def test_option(blkdebug_disk, pytestconfig):
            cli = pytestconfig.getoption("blkdebug_hold_timeout")
            assert blkdebug_disk.hold_timeout == (float(cli) if cli else 30.0)

        @pytest.mark.blkdebug(hold_timeout=0.5)
        def test_marker(blkdebug_disk):
            assert blkdebug_disk.hold_timeout == 0.5

        def test_factory(blkdebug_disk_factory):
            assert blkdebug_disk_factory(hold_timeout=2).hold_timeout == 2.0
            with pytest.raises(ValueError, match="hold_timeout must be a finite number"):
                blkdebug_disk_factory("other", hold_timeout=float("nan"))
        """
    )
    pytester.runpytest().assert_outcomes(passed=3)
    result = pytester.runpytest("--blkdebug-hold-timeout", "7")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["blkdebug: seed *, hold timeout=7s"])


# -- item 17: Ctrl-C while a request is suspended ---------------------------------


def test_interrupt_with_a_suspended_request_prints_no_traceback(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        """
        import threading

        def test_interrupted(blkdebug_disk):
            blkdebug_disk.break_on("write_aio", "A")
            threading.Thread(target=blkdebug_disk.write, args=(0, b"x"), daemon=True).start()
            blkdebug_disk.wait_break("A")
            raise KeyboardInterrupt
        """
    )
    result = pytester.runpytest_subprocess()
    assert result.ret == pytest.ExitCode.INTERRUPTED
    out = result.stdout.str() + result.stderr.str()
    assert "KeyboardInterrupt" in out
    # No traceback through pytest's teardown (what the user's thread does is its own).
    assert "_pytest/runner.py" not in out and "INTERNALERROR" not in out, out
    assert "Failed:" not in out and "left suspended" not in out


# -- item 19: markers on a test without a disk ------------------------------------

UNUSED = """
    import pytest

    @pytest.mark.inject_error("write_aio", name="lost")
    def test_no_disk():
        pass

    def test_no_markers():
        pass

    @pytest.mark.inject_error("write_aio")
    def test_dynamic(request):
        with pytest.raises(OSError):
            request.getfixturevalue("blkdebug_disk").write(0, b"x")
"""


def test_markers_without_a_disk_warn_and_are_counted(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(UNUSED)
    result = pytester.runpytest("-p", "no:randomly")
    result.assert_outcomes(passed=3)
    assert "test_dynamic" not in result.stdout.str().split("warnings summary")[1]
    result.stdout.fnmatch_lines(
        [
            "*test_markers_without_a_disk_warn_and_are_counted.py:*: BlkdebugMarkerWarning: "
            "blkdebug: @pytest.mark.inject_error('write_aio', "
            "name='lost') [[]*test_no_disk[]] had no effect: the test uses no blkdebug disk*",
            "*= blkdebug: rules that never fired =*",
            "@pytest.mark.inject_error('write_aio', name='lost') [[]*[]] in "
            "*::test_no_disk: not applied (the test uses no blkdebug disk)",
        ]
    )
    assert "test_no_markers" not in result.stdout.str().split("warnings summary")[1]


def test_markers_without_a_disk_fail_in_strict_mode(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(UNUSED)
    result = pytester.runpytest("--blkdebug-strict")
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(
        ["*ERROR at teardown of test_no_disk*", "blkdebug: *had no effect*(strict mode)"]
    )


# -- item 22: setup errors once; tracebacks end at the user's line ------------------


def test_setup_error_is_printed_once(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.blkdebug(size="12Q")
        def test_marker(blkdebug_disk):
            pass

        def test_rules(blkdebug_disk_factory):
            pass

        @pytest.mark.blkdebug_rules("bad.toml")
        def test_file(blkdebug_disk):
            pass
        """
    )
    pytester.path.joinpath("bad.toml").write_text("[[inject-error]]\nevent = 3\n")
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, errors=2)
    out = result.stdout.str()
    assert "During handling of the above exception" not in out
    assert out.count("invalid size '12Q'") == 1
    assert "All traceback entries are hidden" not in out


def test_injected_error_traceback_ends_at_the_users_line(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.inject_error("write_aio")
        def test_write(blkdebug_disk):
            blkdebug_disk.write(0, b"x")

        def test_break(blkdebug_disk):
            blkdebug_disk.wait_break("nothing", timeout=0.01)
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(failed=2)
    out = result.stdout.str()
    assert "pytest_blkdebug/core" not in out, out
    result.stdout.fnmatch_lines(
        [
            "test_injected_error_traceback_ends_at_the_users_line.py:5: InjectedError",
            "test_injected_error_traceback_ends_at_the_users_line.py:8: BreakpointTimeout",
        ]
    )
    full = pytester.runpytest("--full-trace").stdout.str()
    assert "pytest_blkdebug/core" in full


# -- item 23: a bad rule file in the ini option --------------------------------------


def test_bad_rule_file_in_ini_is_one_usage_error(pytester: pytest.Pytester) -> None:
    pytester.path.joinpath("bad.ini").write_text("[inject-error]\nevent = write_aio\nerrno = x\n")
    pytester.makeini("[pytest]\nblkdebug_rules = bad.ini\n")
    pytester.makepyfile(
        "def test_a(blkdebug_disk):\n    pass\n\ndef test_b(blkdebug_disk):\n    pass\n"
    )
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    assert err.count("bad.ini") == 1, err
    result.stderr.fnmatch_lines(["*blkdebug_rules (tox.ini): *bad.ini*"])


def test_rule_file_that_is_a_fifo_is_not_a_regular_file(pytester: pytest.Pytester) -> None:
    import os

    os.mkfifo(pytester.path / "rules.ini")
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.blkdebug_rules("rules.ini")
        def test_marker(blkdebug_disk):
            pass
        """
    )
    result = pytester.runpytest("--blkdebug-rules", "rules.ini")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--blkdebug-rules: *rules.ini is not a regular file"])
    result = pytester.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*rules.ini is not a regular file*"])


# -- item 28: a thread resumed by teardown -------------------------------------------


def test_thread_resumed_by_teardown_warns_in_its_own_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import threading

        def test_leaves_a_request_suspended(blkdebug_disk):
            blkdebug_disk.break_on("write_aio", "A")
            threading.Thread(target=blkdebug_disk.write, args=(0, b"x")).start()
            blkdebug_disk.wait_break("A")

        def test_later():
            pass
        """
    )
    result = pytester.runpytest("-p", "no:randomly")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_leaves_a_request_suspended*",
            "a request was left suspended at breakpoint 'A' (write at write_aio); *",
        ]
    )
    warned = result.stdout.str().split("warnings summary")[1]
    assert "::test_leaves_a_request_suspended\n" in warned
    assert "PytestUnhandledThreadExceptionWarning" in warned and "test_later" not in warned


# -- items 26 and 11: JUnit extras, seeds, structured counters under xdist ----------

SEEDED = """
    import errno, pytest

    @pytest.mark.inject_error("write_aio", errno=errno.ENOSPC, name="full")
    def test_fails(blkdebug_disk):
        blkdebug_disk.write(0, b"x")

    def test_passes(blkdebug_disk):
        pass
"""


def seeds(path: object) -> dict[str, str]:
    tree = ET.parse(str(path))
    return {
        str(case.get("name")): str(p.get("value"))
        for case in tree.iter("testcase")
        for p in case.iter("property")
        if p.get("name") == "blkdebug.seed"
    }


def test_seed_option_ini_and_default(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(SEEDED)
    first = pytester.runpytest("--blkdebug-seed=42", "--junitxml=a.xml")
    first.stdout.fnmatch_lines(["blkdebug: seed 42 (given; rerun with --blkdebug-seed=42)*"])
    first.stdout.fnmatch_lines(["seed: * (from the session's 42: --blkdebug-seed=42)"])
    pytester.makeini("[pytest]\nblkdebug_seed = 7\n")
    pytester.runpytest("--blkdebug-seed=42", "--junitxml=b.xml")
    pytester.runpytest("--junitxml=c.xml").stdout.fnmatch_lines(["blkdebug: seed 7 (given;*"])
    a, b, c = (seeds(pytester.path / f"{n}.xml") for n in "abc")
    assert a == b != c  # the command line beats the ini; same seed, same per-test seeds
    assert a["test_fails"] != a["test_passes"]  # derived per test
    pytester.makeini("[pytest]\n")
    random1 = pytester.runpytest("--junitxml=d.xml")
    random1.stdout.fnmatch_lines(
        ["blkdebug: seed * (random; rerun with --blkdebug-seed=*), hold timeout=*"]
    )
    session = re.search(r"--blkdebug-seed=(\d+)\)", random1.stdout.str())
    assert session is not None
    pytester.runpytest(f"--blkdebug-seed={session[1]}", "--junitxml=e.xml")
    assert seeds(pytester.path / "d.xml") == seeds(pytester.path / "e.xml")  # reproduced
    bad = pytester.runpytest("--blkdebug-seed=x")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    bad.stderr.fnmatch_lines(["*blkdebug_seed / --blkdebug-seed: invalid value 'x'*"])
    # A seed copied with leading zeros is the same decimal seed (base 0 refused
    # "042"), and hex is still read as hex.
    pytester.runpytest("--blkdebug-seed=042").stdout.fnmatch_lines(["blkdebug: seed 42 (given;*"])
    pytester.runpytest("--blkdebug-seed=0x2a").stdout.fnmatch_lines(["blkdebug: seed 42 (given;*"])


def test_counters_travel_as_report_data_under_xdist(pytester: pytest.Pytester) -> None:
    pytest.importorskip("xdist")
    pytester.makepyfile(SEEDED)
    pytester.makeconftest(
        """
        import json

        def pytest_configure(config):
            global WORKER
            WORKER = hasattr(config, "workerinput")

        def pytest_runtest_logreport(report):  # on the controller only
            if report.when == "teardown" and hasattr(report, "blkdebug") and not WORKER:
                with open("data.jsonl", "a") as f:
                    f.write(json.dumps([report.nodeid, report.blkdebug]) + "\\n")
        """
    )
    serial = pytester.runpytest_subprocess("--blkdebug-seed=5", "--junitxml=s.xml")
    serial.assert_outcomes(passed=1, failed=1)
    parallel = pytester.runpytest_subprocess("--blkdebug-seed=5", "-n", "2", "--junitxml=p.xml")
    parallel.assert_outcomes(passed=1, failed=1)
    import json

    lines = [json.loads(x) for x in (pytester.path / "data.jsonl").read_text().splitlines()]
    assert len(lines) == 4
    by_run: dict[str, list[object]] = {}
    for nodeid, data in lines:
        by_run.setdefault(nodeid, []).append(data)
    full = by_run["test_counters_travel_as_report_data_under_xdist.py::test_fails"]
    assert full[0] == full[1]  # serial and under -n 2: the same data, seed included
    rule = full[0]["summary"]["engines"][0]["rules"][0]
    assert rule == {
        "name": "full",
        "kind": "inject-error",
        "event": "write_aio",
        "hits": 1,
        "armed": 1,
        "consumed": False,
        "generated": False,
    }
    assert seeds(pytester.path / "s.xml") == seeds(pytester.path / "p.xml")


def test_junit_xml_has_report_section_counters_and_seed(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(SEEDED)
    pytester.runpytest("--junitxml=out.xml", "--blkdebug-seed=3")
    tree = ET.parse(str(pytester.path / "out.xml"))
    props = {
        str(case.get("name")): {
            str(p.get("name")): str(p.get("value")) for p in case.iter("property")
        }
        for case in tree.iter("testcase")
    }
    fails = props["test_fails"]
    assert fails["blkdebug.rule.full.hits"] == "1"
    assert fails["blkdebug.rule.full.armed"] == "1"
    assert fails["blkdebug.rule.full.consumed"] == "0"
    assert fails["blkdebug.seed"].isdigit()
    assert "\nrules (1):\n" in fails["blkdebug.report"]
    assert "ENOSPC 'No space left on device' by rule 'full'" in fails["blkdebug.report"]
    assert "blkdebug.report" not in props["test_passes"]


# -- the harness without pytest ---------------------------------------------------------


def test_harness_is_usable_without_pytest(tmp_path: object) -> None:
    from pathlib import Path

    from pytest_blkdebug import InjectError, SetState
    from pytest_blkdebug.harness import Harness, HitTally, summary_properties

    root = Path(str(tmp_path))
    (root / "r.toml").write_text('[[set-state]]\nevent = "read_aio"\nnew_state = 2\n')
    hits: list[str] = []
    harness = Harness(seed=9, on_hit=lambda disk, name: hits.append(name))
    engine = harness.engine([InjectError("write_aio", once=True, name="w"), str(root / "r.toml")])
    (root / "a.img").write_bytes(b"\0" * 4096)
    disk = harness.open(root / "a.img", engine=engine)
    other = harness.open(root / "a.img", label="other")
    with pytest.raises(OSError):
        disk.write(0, b"x")
    disk.read(0, 1)
    other.engine.add_rules([SetState("flush_to_os", 3, name="never")])
    assert hits == ["w", "set-state#2"]
    summary = harness.summary()
    assert [e["label"] for e in summary["engines"]] == ["", "other"]
    assert ("blkdebug.rule.w.hits", 1) in summary_properties(summary)
    assert ("blkdebug[other].rule.never.hits", 0) in summary_properties(summary)
    assert harness.close() == []
    tally = HitTally()
    tally.add("run", summary)
    assert tally.unfired_lines() == ["[other] never: 0 hits in 1 test (run)"]


def test_injected_delay_is_reported_when_there_was_one(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.inject_error("read_aio", errno=0, delay=0.01, name="slow")
        def test_slow(blkdebug_disk):
            blkdebug_disk.read(0, 512)
            assert False

        def test_fast(blkdebug_disk):
            assert False
        """
    )
    result = pytester.runpytest("--junitxml=out.xml")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*_ test_slow _*", "injected delay: 0.010 s in all", "seed: *"])
    assert result.stdout.str().count("injected delay") == 1  # none: no line
    tree = ET.parse(str(pytester.path / "out.xml"))
    delays = [
        (case.get("name"), p.get("value"))
        for case in tree.iter("testcase")
        for p in case.iter("property")
        if p.get("name") == "blkdebug.injected_delay"
    ]
    assert delays == [("test_slow", "0.010000")]


@pytest.mark.parametrize("args", ["0", "1.5", "'2'", "True", "", "k=2"])
def test_a_bad_split_marker_fails_its_test_at_setup_and_the_others_run(
    pytester: pytest.Pytester, args: str
) -> None:
    """A bad ``blkdebug_split`` argument was a UsageError at collection: the
    whole session stopped (``Interrupted: 1 error during collection``) and no
    test ran. As for every other marker, it now fails that test at setup,
    naming it, and the others run."""
    pytester.makepyfile(
        f"""
        import pytest

        @pytest.mark.blkdebug_split({args})
        def test_bad(blkdebug_split):
            pass

        @pytest.mark.blkdebug_split(2)
        def test_good(blkdebug_split):
            pass

        def test_plain():
            pass
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(["*ERROR at setup of test_bad*", "*blkdebug: *test_bad: *"])


def test_a_duplicate_rule_name_across_factory_rule_files_names_both_files(
    pytester: pytest.Pytester,
) -> None:
    """Markers named both sources of a duplicate rule name; the factory's
    ``rules=[...]`` (and blkdebug-nbd's ``--rules``, through the same loader)
    said only ``duplicate rule name 'a'``, leaving the user to search every
    file. Now the error names both sources, and a rule added to an existing
    engine says the engine already has one of that name."""
    pytester.path.joinpath("r.ini").write_text('[inject-error "a"]\nevent = "read_aio"\n')
    pytester.path.joinpath("r.toml").write_text(
        '[[inject-error]]\nname = "a"\nevent = "read_aio"\n'
    )
    pytester.makepyfile(
        """
        import pytest
        from pytest_blkdebug import InjectError

        def test_files(blkdebug_disk_factory):
            blkdebug_disk_factory(rules=["r.ini", "r.toml"])

        def test_file_twice(blkdebug_disk_factory):
            blkdebug_disk_factory(rules=["r.ini", "r.ini"])

        def test_object(blkdebug_disk_factory):
            blkdebug_disk_factory(rules=["r.ini", InjectError("read_aio", name="a")])

        def test_shared_engine(blkdebug_disk_factory):
            first = blkdebug_disk_factory(rules=["r.ini"])
            blkdebug_disk_factory("b", rules=["r.toml"], engine=first.engine)
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=4)
    result.stdout.fnmatch_lines_random(
        [
            "E * duplicate rule name 'a': from r.ini and from r.toml",
            "E * duplicate rule name 'a': from r.ini and from r.ini",
            "E * duplicate rule name 'a': from r.ini and from InjectError(name='a')",
            "E * duplicate rule name 'a': the engine already has a rule of that name",
        ]
    )
