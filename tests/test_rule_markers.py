"""The new rule attributes and checks through markers (issue 11 and issue 12
items 20 and 24): markers are built by the same schema as TOML and Python."""

from __future__ import annotations

import pytest


def test_after_count_errno_string_and_probability_in_markers(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.inject_error("none", iotype="write", after=1, count=2, errno="28", name="w")
        def test_second_and_third_writes_fail(blkdebug_disk):
            outcomes = []
            for _ in range(5):
                try:
                    blkdebug_disk.write(0, b"x")
                    outcomes.append("ok")
                except OSError as exc:
                    outcomes.append(exc.errno)
            assert outcomes == ["ok", 28, 28, "ok", "ok"]
            rule = blkdebug_disk.rule("w")
            assert (rule.hits, rule.skipped, rule.consumed) == (2, 1, True)

        @pytest.mark.inject_error("none", iotype="read", probability=0.0, name="never")
        def test_probability_zero_never_fails(blkdebug_disk):
            for _ in range(50):
                blkdebug_disk.read(0, 512)
            assert blkdebug_disk.rule("never").skipped == 50
        """
    )
    pytester.runpytest("-p", "no:randomly").assert_outcomes(passed=2)


@pytest.mark.parametrize(
    ("decorator", "expected"),
    [
        ('set_state("read_aio")', "*set_state('read_aio')*missing new_state*"),
        ('inject_error("read_aio", probability=2)', "*probability=2 is out of range (0..1)*"),
        ('inject_error("read_aio", corrupt="flip")', "*corrupt must be one of bitflip*"),
        ('inject_error("read_aio", offset=4096)', "*offset and length give a byte range*"),
    ],
)
def test_marker_errors_name_the_attribute(
    pytester: pytest.Pytester, decorator: str, expected: str
) -> None:
    pytester.makepyfile(
        f"""
        import pytest

        @pytest.mark.{decorator}
        def test_x(blkdebug_disk):
            pass
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([expected])


def test_marker_help_lists_the_new_attributes(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--markers")
    result.stdout.fnmatch_lines(
        ["@pytest.mark.inject_error(event, [*][*]attrs):*after, count, probability, offset*"]
    )


def test_an_ini_hint_reaches_the_test_report(pytester: pytest.Pytester) -> None:
    """Issue 12 item 24: QEMU's text, then the suggestion."""
    pytester.path.joinpath("r.ini").write_text('[inject-error]\nevent = "wirte_aio"\n')
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.blkdebug_rules("r.ini")
        def test_x(blkdebug_disk):
            pass
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*r.ini:2: invalid parameter value: wirte_aio (hint: did you mean 'write_aio'*"]
    )
