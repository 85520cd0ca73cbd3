"""The plugin's fixtures and hooks: blkdebug_disk, blkdebug_disk_factory,
blkdebug_nbd, the three pytest_blkdebug_* hooks, teardown of frozen requests,
and that nothing leaks from one test to the next. Small suites run through
pytester, in process unless a subprocess is needed."""

from __future__ import annotations

import shutil

import pytest

from tests.qemu_helpers import qemu_io_path


def test_disk_is_fresh_sparse_image_in_tmp_path_and_closed_after(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import os
        SEEN = []

        def test_first(blkdebug_disk, tmp_path):
            assert blkdebug_disk.path == str(tmp_path / "disk.img")
            assert blkdebug_disk.size == os.path.getsize(blkdebug_disk.path) == 64 << 20
            assert os.stat(blkdebug_disk.path).st_blocks == 0  # sparse
            assert blkdebug_disk.state == 1 and blkdebug_disk.rules == []
            assert blkdebug_disk.wait_timeout == 5.0
            blkdebug_disk.write(4096, b"data")
            SEEN.append(blkdebug_disk)

        def test_second(blkdebug_disk):
            first = SEEN[0]
            assert first.closed and blkdebug_disk is not first
            assert blkdebug_disk.path != first.path
            with open(first.path, "rb") as f:  # the image stays after teardown
                f.seek(4096)
                assert f.read(4) == b"data"
            assert blkdebug_disk.read(4096, 4) == bytes(4)
    """)
    pytester.runpytest().assert_outcomes(passed=2)


def test_factory_makes_more_disks_with_the_tests_options(pytester: pytest.Pytester) -> None:
    pytester.path.joinpath("extra.toml").write_text(
        'events = ["journal_commit"]\n'
        '[[inject-error]]\nevent = "journal_commit"\nerrno = "ENOSPC"\nname = "commit"\n'
    )
    pytester.makeini("[pytest]\nblkdebug_image_size = 1M\n")
    pytester.makepyfile("""
        import errno, os, pytest
        from pytest_blkdebug import InjectError, SetState

        @pytest.mark.inject_error("read_aio", name="marked")
        def test_factory(blkdebug_disk_factory, tmp_path):
            a = blkdebug_disk_factory()
            b = blkdebug_disk_factory("journal", size="2M")
            c = blkdebug_disk_factory(rules=[SetState("write_aio", 5), "extra.toml"])
            assert [a.path, b.path, c.path] == [
                str(tmp_path / "disk.img"), str(tmp_path / "journal.img"),
                str(tmp_path / "disk3.img")]
            assert (a.size, b.size, c.size) == (1 << 20, 2 << 20, 1 << 20)
            # default: the test's rules on a fresh engine each; rules=...: those instead
            assert [s.name for s in a.rules] == ["marked"] == [s.name for s in b.rules]
            assert a.engine is not b.engine
            assert [s.name for s in c.rules] == ["set-state#1", "commit"]
            c.write(0, b"x")
            assert c.state == 5 and a.state == 1
            with pytest.raises(OSError) as info:
                c.event("journal_commit")
                c.write(0, b"y")
            assert info.value.errno == errno.ENOSPC
            with pytest.raises(ValueError, match="already has a disk named 'journal'"):
                blkdebug_disk_factory("journal")
            with pytest.raises(ValueError, match="not both"):
                blkdebug_disk_factory(engine=a.engine, share=True)
            with pytest.raises(FileNotFoundError, match="no such file 'nope.ini'"):
                blkdebug_disk_factory(rules=["nope.ini"])
    """)
    pytester.runpytest().assert_outcomes(passed=1)


def test_factory_disks_share_one_engine(pytester: pytest.Pytester) -> None:
    """Rules and state span files: a set-state on the database's writes gates
    an error on the journal's."""
    pytester.makepyfile("""
        import pytest
        from pytest_blkdebug import InjectError, SetState

        @pytest.mark.set_state("write_aio", 2, state=1)
        @pytest.mark.inject_error("write_aio", state=2, once=True, name="second")
        def test_shared(blkdebug_disk, blkdebug_disk_factory):
            journal = blkdebug_disk_factory("journal", share=True)
            wal = blkdebug_disk_factory("wal", engine=blkdebug_disk.engine,
                                        rules=[InjectError("flush_to_disk", name="wal-flush")])
            assert journal.engine is blkdebug_disk.engine is wal.engine
            assert [s.name for s in journal.rules] == ["set-state#1", "second", "wal-flush"]
            blkdebug_disk.write(0, b"db")
            assert journal.state == 2
            with pytest.raises(OSError) as info:
                journal.write(0, b"j")
            assert info.value.rule == "second"
            assert blkdebug_disk.rule("second").consumed
            with pytest.raises(OSError):
                wal.write(0, b"w")
                wal.flush()

        def test_share_without_a_first_disk_makes_the_engine(blkdebug_disk_factory):
            a = blkdebug_disk_factory(share=True)
            b = blkdebug_disk_factory(share=True)
            assert a.engine is b.engine
    """)
    pytester.runpytest().assert_outcomes(passed=2)


def test_template_copies_a_prepared_image(pytester: pytest.Pytester) -> None:
    golden = pytester.path / "golden.img"
    with open(golden, "wb") as f:
        f.truncate(3 << 20)
        f.seek(1 << 20)
        f.write(b"GOLDEN")
    pytester.makepyfile("""
        import os, pytest

        @pytest.mark.blkdebug(template="golden.img")
        def test_template_keeps_its_size(blkdebug_disk):
            assert blkdebug_disk.size == 3 << 20
            assert blkdebug_disk.read(1 << 20, 6) == b"GOLDEN"
            blkdebug_disk.write(1 << 20, b"CHANGE")

        @pytest.mark.blkdebug(template="golden.img", size="8M")
        def test_template_resized(blkdebug_disk, blkdebug_disk_factory):
            assert blkdebug_disk.size == 8 << 20
            assert blkdebug_disk.read(1 << 20, 6) == b"GOLDEN"  # the copy was private
            plain = blkdebug_disk_factory(template=os.path.abspath("golden.img"), size="4M")
            assert plain.size == 4 << 20 and plain.read(1 << 20, 6) == b"GOLDEN"
    """)
    pytester.runpytest().assert_outcomes(passed=2)
    assert golden.read_bytes()[1 << 20 : (1 << 20) + 6] == b"GOLDEN"


def test_make_image_hook_first_result_wins(pytester: pytest.Pytester) -> None:
    pytester.makeconftest("""
        import pytest

        def pytest_blkdebug_make_image(item, path, size, template):
            if item.get_closest_marker("formatted") is None:
                return None  # the plugin's default makes the image
            with open(path, "wb") as f:
                f.truncate(size)
                f.write(b"FS" + size.to_bytes(8, "little"))
            return path

        def pytest_configure(config):
            config.addinivalue_line("markers", "formatted: image with a header")
    """)
    pytester.makepyfile("""
        import pytest

        @pytest.mark.formatted
        @pytest.mark.blkdebug(size="1M")
        def test_formatted(blkdebug_disk):
            assert blkdebug_disk.read(0, 10) == b"FS" + (1 << 20).to_bytes(8, "little")

        def test_plain(blkdebug_disk):
            assert blkdebug_disk.read(0, 10) == bytes(10)
    """)
    pytester.runpytest("--strict-markers").assert_outcomes(passed=2)


def test_register_events_and_rule_hit_hooks(pytester: pytest.Pytester) -> None:
    """Events from a conftest hook; every hit reported with its disk; hooks
    in a sub-directory's conftest apply only there."""
    pytester.makeconftest("""
        HITS = []

        def pytest_blkdebug_register_events(config):
            return ["journal_commit"]

        def pytest_blkdebug_rule_hit(item, disk, rule_name):
            HITS.append((item.name, disk.path.rsplit("/", 1)[-1], rule_name, disk.state))
    """)
    sub = pytester.mkpydir("sub")
    sub.joinpath("conftest.py").write_text(
        "def pytest_blkdebug_register_events(config):\n    return ['checkpoint']\n"
    )
    sub.joinpath("test_sub.py").write_text(
        "def test_sub(blkdebug_disk):\n"
        "    blkdebug_disk.event('checkpoint')\n"
        "    blkdebug_disk.event('journal_commit')\n"
    )
    pytester.makepyfile("""
        import pytest
        from conftest import HITS

        @pytest.mark.set_state("none", 3)
        @pytest.mark.inject_error("journal_commit", errno="EIO", name="commit")
        def test_hits(blkdebug_disk, blkdebug_disk_factory):
            assert HITS == [("test_hits", "disk.img", "set-state#1", 3)]  # the open event
            blkdebug_disk.event("journal_commit")
            with pytest.raises(OSError):
                blkdebug_disk.write(0, b"x")
            other = blkdebug_disk_factory("other", share=True)
            with pytest.raises(OSError):
                other.read(0, 1)
            assert HITS[1:] == [("test_hits", "disk.img", "commit", 3)] * 2
            assert blkdebug_disk.rule("commit").hits == 2

        def test_unknown_here(blkdebug_disk):
            with pytest.raises(ValueError, match="unknown event 'checkpoint'"):
                blkdebug_disk.event("checkpoint")
    """)
    pytester.runpytest().assert_outcomes(passed=3)


def test_bad_event_from_hook_fails_the_test_naming_the_hook(pytester: pytest.Pytester) -> None:
    pytester.makeconftest("""
        def pytest_blkdebug_register_events(config):
            return ["not a name"]
    """)
    pytester.makepyfile("def test_x(blkdebug_disk):\n    pass\n")
    result = pytester.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*pytest_blkdebug_register_events: invalid event name 'not a name'*"]
    )


def test_a_request_left_suspended_fails_the_test_at_teardown(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import threading

        ERRORS = []

        def test_forgotten(blkdebug_disk):
            def write():
                try:
                    blkdebug_disk.write(0, b"x")
                except ValueError as exc:  # closed while held: the image is not touched
                    ERRORS.append(exc)

            blkdebug_disk.break_on("write_aio", "A")
            threading.Thread(target=write, daemon=True).start()
            blkdebug_disk.wait_break("A")
            # the test forgets to resume "A"

        def test_pending_breakpoint_is_fine(blkdebug_disk):
            blkdebug_disk.break_on("write_aio", "B")
    """)
    result = pytester.runpytest()
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_forgotten*",
            "*a request was left suspended at breakpoint 'A' (write at write_aio); it was "
            "resumed at teardown*",
        ]
    )


def test_nothing_leaks_between_tests(pytester: pytest.Pytester) -> None:
    """The same test twice: fresh state, counters, events and open files.

    The descriptors are counted after a garbage collection: a closed disk's
    descriptor number is freed with its ``Image`` (core/image.py), and an
    earlier test's garbage collected in the middle of this loop changed the
    count (a flaky failure under load)."""
    pytester.makepyfile("""
        import gc, os, pytest
        FDS = []

        @pytest.mark.parametrize("run", range(12))
        @pytest.mark.set_state("write_aio", 7)
        @pytest.mark.inject_error("read_aio", once=True, name="r")
        def test_again(blkdebug_disk, blkdebug_disk_factory, run):
            assert blkdebug_disk.state == 1
            assert [(s.name, s.hits, s.armed, s.consumed) for s in blkdebug_disk.rules] == [
                ("set-state#1", 0, 0, False), ("r", 0, 0, False)]
            assert "mine" not in blkdebug_disk.registry
            blkdebug_disk.registry.register("mine")
            blkdebug_disk.write(0, b"x")
            with pytest.raises(OSError):
                blkdebug_disk.read(0, 1)
            assert blkdebug_disk.state == 7 and blkdebug_disk.rule("r").consumed
            blkdebug_disk_factory("extra")
            gc.collect()
            FDS.append(len(os.listdir("/proc/self/fd")))

        def test_fds_stable():
            assert len(FDS) == 12
            assert len(set(FDS[1:])) == 1, FDS
    """)
    pytester.runpytest("-p", "no:randomly").assert_outcomes(passed=13)


@pytest.mark.skipif(shutil.which("nbdinfo") is None, reason="nbdinfo not installed")
def test_nbd_fixture_exports_the_tests_disk(pytester: pytest.Pytester) -> None:
    pytest.importorskip("pytest_blkdebug.nbd")
    if qemu_io_path() is None:
        pytest.skip("qemu-io not installed")
    pytester.makepyfile(f"""
        import subprocess, pytest

        @pytest.mark.blkdebug(size="1M")
        @pytest.mark.inject_error("read_aio", errno="ENOSPC", once=True, name="r")
        def test_export(blkdebug_nbd, blkdebug_disk):
            assert blkdebug_nbd.uri.startswith("nbd")
            size = subprocess.run(["nbdinfo", "--size", blkdebug_nbd.uri], check=True,
                                  capture_output=True, text=True, timeout=30).stdout
            assert int(size) == 1 << 20
            out = subprocess.run([{qemu_io_path()!r}, "-f", "raw", "-c", "read 0 512",
                                  blkdebug_nbd.url_for("qemu")], capture_output=True,
                                 text=True, timeout=30, env={{"LC_ALL": "C"}})
            assert "read failed: No space left on device" in out.stdout + out.stderr
            assert blkdebug_disk.rule("r").hits == 1
    """)
    pytester.runpytest().assert_outcomes(passed=1)
