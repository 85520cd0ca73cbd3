"""The plugin's markers: registration, order as written, and the error a bad
marker argument gives (at setup, naming the marker, the argument and what is
allowed). Every test runs a small suite through pytester, in process."""

from __future__ import annotations

import pytest

INI_RULES = """\
[inject-error "ini-a"]
event = "l2_load"

[set-state "ini-b"]
event = "l2_load"
new_state = "3"
"""


def names_test(expected: list[str], body: str = "") -> str:
    return f"""
    def check(disk):
        assert [s.name for s in disk.rules] == {expected!r}
        {body}
    """


def test_markers_are_registered_with_signatures(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--markers")
    result.stdout.fnmatch_lines(
        [
            "@pytest.mark.inject_error(event, [*][*]attrs):*errno, sector, once*",
            "@pytest.mark.set_state(event, new_state, [*][*]attrs):*",
            "@pytest.mark.blkdebug_rules([*]paths):*relative to the test file's directory*",
            "@pytest.mark.blkdebug(size=None, events=(), template=None, strict=None, name='disk', "
            "rules=True, wait_timeout=None, hold_timeout=None):*",
        ]
    )


def test_strict_markers_accepts_every_marker(pytester: pytest.Pytester) -> None:
    pytester.path.joinpath("r.ini").write_text(INI_RULES)
    pytester.makepyfile("""
        import pytest

        @pytest.mark.blkdebug(size="1M", events=["journal_commit"])
        @pytest.mark.blkdebug_rules("r.ini")
        @pytest.mark.set_state("journal_commit", 2)
        @pytest.mark.inject_error("journal_commit", state=2, errno="ENOSPC")
        def test_x(blkdebug_disk):
            assert blkdebug_disk.size == 1 << 20
            assert [s.kind for s in blkdebug_disk.rules] == [
                "inject-error", "set-state", "set-state", "inject-error"]
    """)
    result = pytester.runpytest("--strict-markers")
    result.assert_outcomes(passed=1)


def test_order_is_module_class_function_each_top_to_bottom(pytester: pytest.Pytester) -> None:
    """Option files first (ini, then command line), then markers as written,
    whether they are decorators (stored bottom-up by pytest) or lists."""
    pytester.path.joinpath("ini.ini").write_text(INI_RULES)
    pytester.path.joinpath("cli.toml").write_text(
        '[[inject-error]]\nevent = "read_aio"\nname = "cli"\n'
    )
    pytester.path.joinpath("mid.toml").write_text(
        '[[inject-error]]\nevent = "read_aio"\nname = "mid"\n'
    )
    pytester.makeini("[pytest]\nblkdebug_rules = ini.ini\n")
    pytester.makepyfile("""
        import pytest
        ie = pytest.mark.inject_error

        pytestmark = [ie("read_aio", name="m1"), ie("read_aio", name="m2")]

        @ie("read_aio", name="c1")
        @ie("read_aio", name="c2")
        class TestDecorated:
            @ie("read_aio", name="f1")
            @pytest.mark.blkdebug_rules("mid.toml")
            @ie("read_aio", name="f2")
            def test_order(self, blkdebug_disk):
                assert [s.name for s in blkdebug_disk.rules] == [
                    "ini-a", "ini-b", "cli", "m1", "m2", "c1", "c2", "f1", "mid", "f2"]

        class TestListed:
            pytestmark = [ie("read_aio", name="l1"), ie("read_aio", name="l2")]

            @pytest.mark.parametrize("n", [1, pytest.param(2, marks=[
                ie("read_aio", name="p1"), ie("read_aio", name="p2")])])
            @ie("read_aio", name="f1")
            @ie("read_aio", name="f2")
            def test_order(self, blkdebug_disk, n):
                extra = ["p1", "p2"] if n == 2 else []
                assert [s.name for s in blkdebug_disk.rules] == [
                    "ini-a", "ini-b", "cli", "m1", "m2", "l1", "l2", "f1", "f2", *extra]
    """)
    result = pytester.runpytest("--blkdebug-rules", "cli.toml")
    result.assert_outcomes(passed=3)


def test_first_marker_as_written_decides_the_request(pytester: pytest.Pytester) -> None:
    """Definition order is behaviour: of two rules armed by one event, the
    first defined fails the request (QEMU's active list order)."""
    pytester.makepyfile("""
        import errno, pytest

        @pytest.mark.inject_error("read_aio", errno="ENOSPC", name="top")
        @pytest.mark.inject_error("read_aio", errno="EIO", name="bottom")
        def test_top_wins(blkdebug_disk):
            with pytest.raises(OSError) as info:
                blkdebug_disk.read(0, 512)
            assert info.value.errno == errno.ENOSPC and info.value.rule == "top"
            assert blkdebug_disk.rule("top").hits == 1
            assert blkdebug_disk.rule("bottom").hits == 0
    """)
    pytester.runpytest().assert_outcomes(passed=1)


def test_blkdebug_rules_paths_relative_to_test_dir_then_rootdir(pytester: pytest.Pytester) -> None:
    sub = pytester.mkpydir("sub")
    sub.joinpath("local.ini").write_text('[inject-error "local"]\nevent = "read_aio"\n')
    pytester.path.joinpath("rules").mkdir()
    pytester.path.joinpath("rules", "root.toml").write_text(
        '[[set-state]]\nevent = "read_aio"\nnew_state = 2\nname = "root"\n'
    )
    sub.joinpath("test_rel.py").write_text(
        "import pytest\n\n"
        "@pytest.mark.blkdebug_rules('local.ini', 'rules/root.toml')\n"
        "def test_x(blkdebug_disk):\n"
        "    assert [s.name for s in blkdebug_disk.rules] == ['local', 'root']\n"
        "    try:\n"
        "        blkdebug_disk.read(0, 512)\n"
        "    except OSError as exc:\n"
        "        assert exc.rule == 'local'\n"
        "    assert blkdebug_disk.state == 2\n"
    )
    pytester.runpytest().assert_outcomes(passed=1)


@pytest.mark.parametrize(
    ("decorator", "expected"),
    [
        (
            'inject_error("write_aio", errnox=5)',
            "*@pytest.mark.inject_error('write_aio', errnox=5) [[]test_bad.py::test_x[]]: inject-error: "
            "unknown attribute 'errnox' (allowed: event, errno, sector, once, immediately, "
            "iotype, state, name)*",
        ),
        (
            'inject_error("wirte_aio")',
            "*@pytest.mark.inject_error('wirte_aio')*unknown event 'wirte_aio' "
            "(did you mean 'write_aio'*",
        ),
        ('inject_error("read_aio", errno="EFOO")', "*inject_error*unknown errno name 'EFOO'*"),
        ('inject_error("read_aio", sector=-7)', "*inject_error*sector=-7 is out of range*"),
        (
            'inject_error("read_aio", iotype="scribble")',
            "*inject_error*invalid iotype 'scribble' (allowed: read, write, write-zeroes, "
            "discard, flush, block-status)*",
        ),
        ("inject_error()", "*inject_error()*missing event name*"),
        ('inject_error("a", "b")', "*inject_error('a', 'b')*at most 1 positional*"),
        ('set_state("read_aio", "two")', "*set_state*new_state must be an integer*"),
        ('set_state("read_aio", 2, new_state=3)', "*set_state*'new_state' given twice*"),
        (
            'blkdebug(sise="1M")',
            "*@pytest.mark.blkdebug(sise='1M')*unknown argument 'sise' (allowed: size, events, "
            "template, strict, name, rules, wait_timeout, hold_timeout)*",
        ),
        ('blkdebug("1M")', "*blkdebug('1M')*keyword arguments only*"),
        ('blkdebug(size="lots")', "*blkdebug(size='lots')*argument 'size': invalid size 'lots'*"),
        ('blkdebug(strict="yes")', "*argument 'strict': must be True or False*"),
        ('blkdebug(events=["bad name"])', "*argument 'events': invalid event name 'bad name'*"),
        ('blkdebug(template="nope.img")', "*template: no such file 'nope.img'*"),
        ('blkdebug(name="a/b")', "*argument 'name': must be a file name without '/'*"),
        ("blkdebug(wait_timeout=0)", "*argument 'wait_timeout': must be a number of seconds*"),
        (
            'blkdebug_rules("missing.ini")',
            "*@pytest.mark.blkdebug_rules('missing.ini')*no such file 'missing.ini' (looked for*",
        ),
        ("blkdebug_rules()", "*blkdebug_rules()*one or more rule file paths*"),
    ],
)
def test_bad_marker_fails_that_test_at_setup(
    pytester: pytest.Pytester, decorator: str, expected: str
) -> None:
    pytester.makepyfile(
        test_bad=f"""
        import pytest

        @pytest.mark.{decorator}
        def test_x(blkdebug_disk):
            pass

        def test_unaffected(blkdebug_disk):
            pass
    """
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*ERROR at setup of test_x*", expected])


def test_bad_rule_file_in_marker_names_file_and_line(pytester: pytest.Pytester) -> None:
    pytester.path.joinpath("bad.ini").write_text('[inject-error]\nevent = "nosuch"\n')
    pytester.makepyfile("""
        import pytest

        @pytest.mark.blkdebug_rules("bad.ini")
        def test_x(blkdebug_disk):
            pass
    """)
    result = pytester.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*blkdebug_rules('bad.ini')*bad.ini*nosuch*"])


def test_duplicate_rule_names_name_both_sources(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest

        pytestmark = pytest.mark.inject_error("read_aio", name="same")

        @pytest.mark.set_state("read_aio", 2, name="same")
        def test_x(blkdebug_disk):
            pass
    """)
    result = pytester.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "*duplicate rule name 'same': from @pytest.mark.inject_error('read_aio', name='same') "
            "[[]test_duplicate_rule_names_name_both_sources.py[]] and from "
            "@pytest.mark.set_state('read_aio', 2, name='same')*"
        ]
    )


def test_closest_blkdebug_marker_wins_per_argument(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest

        pytestmark = pytest.mark.blkdebug(size="2M", name="mod")

        @pytest.mark.blkdebug(name="fn")
        def test_x(blkdebug_disk):
            assert blkdebug_disk.size == 2 << 20
            assert blkdebug_disk.path.endswith("/fn.img")
    """)
    pytester.runpytest().assert_outcomes(passed=1)


def test_marker_rules_false_skips_option_files(pytester: pytest.Pytester) -> None:
    pytester.path.joinpath("all.ini").write_text(INI_RULES)
    pytester.makeini("[pytest]\nblkdebug_rules = all.ini\n")
    pytester.makepyfile("""
        import pytest

        @pytest.mark.blkdebug(rules=False)
        @pytest.mark.inject_error("read_aio", name="own")
        def test_own_only(blkdebug_disk):
            assert [s.name for s in blkdebug_disk.rules] == ["own"]

        def test_with_files(blkdebug_disk):
            assert [s.name for s in blkdebug_disk.rules] == ["ini-a", "ini-b"]
    """)
    pytester.runpytest().assert_outcomes(passed=2)


def test_plugin_disabled_with_p_no_blkdebug(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest

        @pytest.mark.inject_error("read_aio")
        def test_x(blkdebug_disk):
            pass
    """)
    # In a subprocess: in process, pytest.mark caches marker names across sessions.
    result = pytester.runpytest_subprocess("-p", "no:blkdebug", "--strict-markers")
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*'inject_error' not found in `markers` configuration option*"])
    result = pytester.runpytest("-p", "no:blkdebug")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'blkdebug_disk' not found*"])
    assert "blkdebug:" not in result.stdout.str()
