"""The plugin's options: ini keys and command-line flags with one help text,
precedence command line > ini > default (and a marker per test), the report
header, usage errors, --blkdebug-no-rules and strict mode."""

from __future__ import annotations

import pytest

from pytest_blkdebug import plugin

SIZE_TEST = """
    import os, pytest

    def test_size(blkdebug_disk):
        assert blkdebug_disk.size == int(os.environ["EXPECT"])

    @pytest.mark.blkdebug(size="4M")
    def test_marker_wins(blkdebug_disk):
        assert blkdebug_disk.size == 4 << 20
"""


def test_help_text_is_shared_by_flag_and_ini_key(pytester: pytest.Pytester) -> None:
    out = " ".join(pytester.runpytest("--help").stdout.str().split())
    for text in (
        plugin.RULES_HELP,
        plugin.EVENTS_HELP,
        plugin.SIZE_HELP,
        plugin.REPORT_HELP,
        plugin.STRICT_HELP,
        plugin.WAIT_TIMEOUT_HELP,
    ):
        assert out.count(" ".join(text.split())) == 2, text
    for flag in (
        "--blkdebug-rules=FILE",
        "--blkdebug-events=NAME[,NAME]",
        "--blkdebug-image-size=SIZE",
        "--blkdebug-report={failed,all,none}",
        "--blkdebug-strict",
        "--blkdebug-wait-timeout=SECONDS",
        "--blkdebug-no-rules",
    ):
        assert flag in out, flag
    for key in (
        "blkdebug_rules (paths)",
        "blkdebug_events (args)",
        "blkdebug_image_size (string)",
        "blkdebug_report (string)",
        "blkdebug_strict (bool)",
        "blkdebug_wait_timeout (string)",
    ):
        assert key in out, key


def test_image_size_cli_over_ini_over_default(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(SIZE_TEST)
    monkeypatch.setenv("EXPECT", str(64 << 20))
    pytester.runpytest().assert_outcomes(passed=2)
    pytester.makeini("[pytest]\nblkdebug_image_size = 2M\n")
    monkeypatch.setenv("EXPECT", str(2 << 20))
    pytester.runpytest().assert_outcomes(passed=2)
    monkeypatch.setenv("EXPECT", str(3 << 20))
    pytester.runpytest("--blkdebug-image-size", "3M").assert_outcomes(passed=2)
    monkeypatch.setenv("EXPECT", "12345")
    pytester.runpytest("-o", "blkdebug_image_size=12345").assert_outcomes(passed=2)


def test_wait_timeout_cli_over_ini_over_default_marker_per_test(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nblkdebug_wait_timeout = 2.5\n")
    pytester.makepyfile("""
        import os, pytest

        def test_option(blkdebug_disk, pytestconfig):
            expected = 7.0 if pytestconfig.getoption("blkdebug_wait_timeout") else 2.5
            assert blkdebug_disk.wait_timeout == expected

        @pytest.mark.blkdebug(wait_timeout=0.01)
        def test_marker(blkdebug_disk):
            assert blkdebug_disk.wait_timeout == 0.01
            blkdebug_disk.break_on("write_aio", "A")
            with pytest.raises(TimeoutError, match="tag 'A' within 0.01 s"):
                blkdebug_disk.wait_break("A")
    """)
    pytester.runpytest().assert_outcomes(passed=2)
    pytester.runpytest("--blkdebug-wait-timeout", "7").assert_outcomes(passed=2)


def test_rule_files_ini_relative_to_ini_then_cli_appended(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    rules = pytester.mkdir("rules")
    rules.joinpath("a.ini").write_text('[inject-error "from-ini"]\nevent = "read_aio"\n')
    rules.joinpath("b.toml").write_text(
        '[[set-state]]\nevent = "read_aio"\nnew_state = 4\nname = "from-cli"\n'
    )
    pytester.makeini("[pytest]\nblkdebug_rules = rules/a.ini\n")
    tests = pytester.mkdir("tests")
    tests.joinpath("test_files.py").write_text(
        "import os\n\n"
        "def test_names(blkdebug_disk):\n"
        "    assert [s.name for s in blkdebug_disk.rules] == os.environ['EXPECT'].split()\n"
    )
    monkeypatch.chdir(tests)  # ini paths do not depend on the current directory
    monkeypatch.setenv("EXPECT", "from-ini")
    pytester.runpytest().assert_outcomes(passed=1)
    monkeypatch.setenv("EXPECT", "from-ini from-cli")
    pytester.runpytest("--blkdebug-rules", "../rules/b.toml").assert_outcomes(passed=1)
    monkeypatch.setenv("EXPECT", "from-cli")
    pytester.runpytest(
        "-o", "blkdebug_rules=", "--blkdebug-rules", "../rules/b.toml"
    ).assert_outcomes(passed=1)


def test_events_from_ini_and_cli_are_added(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nblkdebug_events = journal_commit checkpoint\n")
    pytester.makepyfile("""
        import os

        def test_events(blkdebug_disk):
            assert blkdebug_disk.registry.custom == tuple(os.environ["EXPECT"].split())
            for name in blkdebug_disk.registry.custom:
                blkdebug_disk.event(name)
    """)
    import os

    os.environ["EXPECT"] = "journal_commit checkpoint"
    try:
        pytester.runpytest().assert_outcomes(passed=1)
        os.environ["EXPECT"] = "journal_commit checkpoint a b c"
        pytester.runpytest("--blkdebug-events=a,b", "--blkdebug-events", "c").assert_outcomes(
            passed=1
        )
    finally:
        del os.environ["EXPECT"]


def test_report_header_names_rule_files_and_settings(pytester: pytest.Pytester) -> None:
    pytester.path.joinpath("r.ini").write_text("")
    pytester.path.joinpath("s.ini").write_text("")
    pytester.makeini(
        "[pytest]\nblkdebug_rules = r.ini\nblkdebug_strict = true\n"
        "blkdebug_events = journal_commit\n"
    )
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest("--blkdebug-rules", "s.ini", "--blkdebug-report", "all")
    result.stdout.fnmatch_lines(
        [
            "blkdebug: rules from blkdebug_rules (tox.ini): r.ini; --blkdebug-rules: s.ini; "
            "report=all, strict=on, image size=64 MiB, wait timeout=5s, events=journal_commit"
        ]
    )
    result = pytester.runpytest("--blkdebug-no-rules", "-o", "blkdebug_strict=false")
    result.stdout.fnmatch_lines(
        [
            "blkdebug: NO RULES (--blkdebug-no-rules: disks are made, no rule is loaded); "
            "report=failed, strict=off, *"
        ]
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--blkdebug-rules", "nope.ini"], "*--blkdebug-rules: no such rule file: */nope.ini"),
        (
            ["-o", "blkdebug_rules=nope.toml"],
            "*blkdebug_rules (-o): no such rule file: */nope.toml",
        ),
        (
            ["--blkdebug-image-size", "big"],
            "*blkdebug_image_size / --blkdebug-image-size: invalid size 'big'*",
        ),
        (
            ["-o", "blkdebug_report=some"],
            "*blkdebug_report: invalid value 'some' (allowed: failed, all, none)",
        ),
        (["--blkdebug-report", "some"], "*argument --blkdebug-report: invalid choice: 'some'*"),
        (
            ["--blkdebug-wait-timeout", "-1"],
            "*--blkdebug-wait-timeout: invalid value '-1' (a number of seconds > 0)",
        ),
        (["-o", "blkdebug_events=ok bad/name"], "*invalid event name 'bad/name'*"),
        (["-o", "blkdebug_strict=maybe"], "*blkdebug_strict: *maybe*(use true or false)"),
    ],
)
def test_bad_option_value_is_a_usage_error(
    pytester: pytest.Pytester, args: list[str], expected: str
) -> None:
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([expected])


FAULT_SUITE = """
    import pytest

    @pytest.mark.inject_error("write_aio", errno="ENOSPC")
    def test_depends_on_its_fault(blkdebug_disk):
        with pytest.raises(OSError):
            blkdebug_disk.write(0, b"x")

    def test_file_rule_fires(blkdebug_disk):
        with pytest.raises(OSError):
            blkdebug_disk.read(0, 512)

    @pytest.mark.blkdebug(events=["journal_commit"])
    def test_no_fault_needed(blkdebug_disk, blkdebug_disk_factory):
        from pytest_blkdebug import InjectError
        blkdebug_disk.write(0, b"x")
        blkdebug_disk.event("journal_commit")  # events stay registered
        other = blkdebug_disk_factory(rules=[InjectError("read_aio")])
        assert other.rules == []
"""


def test_no_rules_keeps_disks_and_loads_no_rules(pytester: pytest.Pytester) -> None:
    pytester.path.joinpath("r.ini").write_text('[inject-error]\nevent = "read_aio"\n')
    pytester.makeini("[pytest]\nblkdebug_rules = r.ini\n")
    pytester.makepyfile(FAULT_SUITE)
    result = pytester.runpytest()
    result.assert_outcomes(passed=2, failed=1)  # the last test's factory disk has a rule
    result = pytester.runpytest("--blkdebug-no-rules")
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(
        ["*NO RULES*", "FAILED *test_depends_on_its_fault*", "FAILED *test_file_rule_fires*"]
    )


STRICT_SUITE = """
    import pytest

    @pytest.mark.inject_error("read_aio", name="fires")
    @pytest.mark.inject_error("flush_to_disk", name="never")
    def test_one_unfired(blkdebug_disk):
        with pytest.raises(OSError):
            blkdebug_disk.read(0, 1)

    @pytest.mark.blkdebug(strict=False)
    @pytest.mark.inject_error("flush_to_disk", name="never")
    def test_opted_out(blkdebug_disk):
        pass

    @pytest.mark.inject_error("flush_to_disk", name="never")
    def test_failing_is_not_reported_twice(blkdebug_disk):
        assert False

    @pytest.mark.inject_error("read_aio", name="fires")
    def test_all_fired(blkdebug_disk):
        with pytest.raises(OSError):
            blkdebug_disk.read(0, 1)
"""


def test_strict_mode_fails_at_teardown_naming_the_rule(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(STRICT_SUITE)
    result = pytester.runpytest()
    result.assert_outcomes(passed=3, failed=1)  # strict is off by default
    for args in (["--blkdebug-strict"], ["-o", "blkdebug_strict=true"]):
        result = pytester.runpytest(*args)
        result.assert_outcomes(passed=3, failed=1, errors=1)
        result.stdout.fnmatch_lines(
            [
                "*ERROR at teardown of test_one_unfired*",
                "*blkdebug strict: rule 'never' (inject-error flush_to_disk errno=EIO) never fired",
                "*(opt out for this test: @pytest.mark.blkdebug(strict=False))",
            ]
        )


def test_strict_marker_per_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest

        @pytest.mark.blkdebug(strict=True)
        @pytest.mark.set_state("flush_to_disk", 2, name="unused")
        def test_strict_here(blkdebug_disk):
            pass
    """)
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*rule 'unused' (set-state flush_to_disk -> 2) never fired*"])
