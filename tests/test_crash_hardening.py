"""Attacks on power-loss recording and crash states (core/crash.py,
crashstates.py, crashplan.py): orders, lifecycles and reuse the authors did
not try. Indexed in tests/test_hostile.py."""

from __future__ import annotations

import os
import threading
import time

import pytest

from pytest_blkdebug import Disk


def test_a_recycled_copy_is_not_reused_across_seeds(tmp_path):
    """Two state lists of one recording with different seeds: a crash copy
    closed unmodified under seed 0 was recycled into seed 1's image of the
    same state, keeping seed 0's garbage bytes."""
    disk = Disk.create(tmp_path / "disk.img", 4096)
    with disk.record() as run:
        disk.write(0, b"A" * 1024)
    zero = run.crashes(garbage=True, seed=0).by_id("e0-g1.0")
    one = run.crashes(garbage=True, seed=1).by_id("e0-g1.0")
    first = zero.read()  # closed unmodified: pooled
    pooled = one.read()
    run.pool.clear()
    assert pooled == one.read()  # what a fresh copy of seed 1's state holds
    assert first != pooled
    disk.close()


def test_allocated_zeroes_past_the_file_end_grow_the_crash_image_too(tmp_path):
    """A disk larger than its file (``size=``): ``write_zeroes(unmap=False)``
    past the end extends the file, as a write does, but every crash image
    that kept it had the old, shorter size: the state that keeps every
    write was not what the code saw."""
    path = tmp_path / "disk.img"
    path.write_bytes(b"x" * 1024)
    disk = Disk(path, size=8192)
    with disk.record() as run:
        disk.write(0, b"A" * 512)
        disk.write_zeroes(2048, 1024, unmap=False)
    live = path.read_bytes()
    assert len(live) == 3072
    crashes = run.crashes()
    assert crashes.by_id("e0-all").read() == live
    assert crashes.by_id("e0-none").read() == b"x" * 1024
    disk.close()


def test_a_write_behind_the_engine_does_not_leak_into_the_next_state(tmp_path):
    """docs/crash.md: crash images never touch each other. A copy written
    through its descriptor (``fileno()``: a C library, mmap, a program given
    the path) looked unmodified to the engine, was recycled, and the next
    state's image kept those bytes."""
    disk = Disk.create(tmp_path / "disk.img", 4096)
    with disk.record() as run:
        disk.write(0, b"A" * 512)
    crashes = run.crashes()
    with crashes.by_id("e0-all").open() as image:
        os.pwrite(image.fileno(), b"R" * 4, 2048)
    assert crashes.by_id("e0-none").read() == bytes(4096)
    assert crashes.by_id("e0-all").read()[:512] == b"A" * 512
    disk.close()


@pytest.mark.parametrize("fail", ['pytest.fail("lost A")', 'sys.exit("lost A")'])
def test_a_state_failed_with_pytest_fail_is_counted_and_described(pytester, fail):
    """``pytest.fail()`` (or ``sys.exit()``) raises a BaseException: the
    state's subtest failed, but the summary said "0 failed" and the report
    had no state description nor rerun line."""
    pytester.makepyfile(
        f"""
import sys
import pytest

def test_log(blkdebug_disk, blkdebug_crash):
    with blkdebug_disk.record() as run:
        blkdebug_disk.write(0, b"A" * 512)
        blkdebug_disk.flush()
    for crash in blkdebug_crash.states(run):
        with blkdebug_crash.check(crash), crash.open() as image:
            if image.read(0, 1) != b"A":
                {fail}
"""
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(
        [
            "*crash state e0-none: power lost at #2 flush of disk.img",
            "*rerun it alone: pytest 'test_a_state_failed_with_pytest_fail_is_counted_and_described.py"
            "::test_log' --blkdebug-crash=e0-none",
            "*: 3 crash states, 2 distinct images, 2 checked, 1 failed (e0-none)",
        ]
    )


def test_a_crash_image_knows_the_recorded_engines_custom_events(tmp_path):
    """The code that ran on the disk runs on its crash image: an event it
    raises (``disk.event("commit")``) was "unknown event" there."""
    disk = Disk.create(tmp_path / "disk.img", 4096, events=["commit"])
    with disk.record() as run:
        disk.write(0, b"A" * 512)
        disk.event("commit")
    with run.crashes().by_id("e0-all").open(events=["extra"]) as image:
        image.event("commit")
        image.event("extra")
    disk.close()


def test_two_recordings_given_one_workdir_keep_their_own_snapshots(tmp_path):
    """``record(workdir=...)`` twice with the same folder: the second
    recording's base snapshot had the first's file name and replaced it,
    so the first's states were built on the later image (its e0-none kept
    the write it may lose)."""
    disk = Disk.create(tmp_path / "disk.img", 4096)
    work = tmp_path / "work"
    with disk.record(workdir=work) as first:
        disk.write(0, b"A" * 512)
    disk.flush()
    with disk.record(workdir=work) as second:
        disk.write(512, b"B" * 512)
    assert first.crashes().by_id("e0-none").read() == bytes(4096)
    assert second.crashes().by_id("e0-none").read() == b"A" * 512 + bytes(3584)
    assert os.path.dirname(first.workdir) == os.path.dirname(second.workdir) == str(work)
    disk.close()


@pytest.mark.parametrize(
    ("where", "kwargs", "name"),
    [
        ("record", {"sector_size": 512.0}, "sector_size"),
        ("record", {"sector_size": True}, "sector_size"),  # was a 1-byte sector
        ("record", {"atomic": 1024.0}, "atomic"),
        ("device", {"sector_size": "512"}, "sector_size"),
        ("crashes", {"max_states": 2.5}, "max_states"),
        ("crashes", {"max_states": True}, "max_states"),
        ("crashes", {"subset_limit": None}, "subset_limit"),
    ],
)
def test_bad_geometry_and_limits_name_the_argument(tmp_path, where, kwargs, name):
    """Floats, strings, None and bools were taken, then failed later with a
    bare TypeError ("'float' object cannot be interpreted as an integer")
    or, for True, cut every write at each byte."""
    disk = Disk.create(tmp_path / "disk.img", 8192)
    with pytest.raises(TypeError, match=f"^{name} must be an int, not "):
        with disk.record(**(kwargs if where == "record" else {})) as run:
            disk.write(100, b"A" * 1500)
            if where == "device":
                run.device(disk, **kwargs)
        run.crashes(torn=True, **(kwargs if where == "crashes" else {}))
    disk.close()


def test_a_mark_after_the_recording_or_not_a_str_is_refused(tmp_path):
    """A mark made after the recording stopped was listed among the marks
    "issued before" the end state's point; a non-str label broke every
    report (``describe`` joins them) with a bare TypeError."""
    disk = Disk.create(tmp_path / "disk.img", 4096)
    with disk.record() as run:
        disk.write(0, b"A" * 512)
        with pytest.raises(TypeError, match="a mark's label is a str, not 3"):
            run.mark(3)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="'late': the recording has stopped"):
        run.mark("late")
    assert all(crash.marks == () for crash in run.crashes())
    disk.close()


def test_a_write_landing_while_the_recording_starts_is_not_lost(tmp_path, monkeypatch):
    """``start()`` snapshotted the disks, then began to listen: a write from
    another thread (an NBD client) landing in between was in neither, so
    even the state that keeps every write lacked it."""
    from pytest_blkdebug.core import crash as crash_module

    disk = Disk.create(tmp_path / "disk.img", 4096)
    copy = crash_module._copy_sparse
    writer = threading.Thread(target=disk.write, args=(0, b"W" * 512))

    def copy_then_a_write_lands(src, dst):
        copy(src, dst)
        writer.start()  # stored once its bytes are in the file
        deadline = time.monotonic() + 10
        while os.pread(disk.fileno(), 1, 0) != b"W" and time.monotonic() < deadline:
            time.sleep(0.001)

    monkeypatch.setattr(crash_module, "_copy_sparse", copy_then_a_write_lands)
    with disk.record() as run:
        monkeypatch.setattr(crash_module, "_copy_sparse", copy)
        writer.join()
        disk.write(512, b"A" * 512)
    live = (tmp_path / "disk.img").read_bytes()
    assert live[:1] == b"W"
    crashes = run.crashes()
    ends = [c for c in crashes if f"e{crashes.epochs - 1}-all" in (c.id, *c.same_as)]
    assert [c.read() for c in ends] == [live]
    disk.close()


def test_without_subtests_a_failing_crash_run_fails_the_test_not_its_teardown(pytester):
    """pytest < 9 (or ``-p no:subtests``): ``blkdebug_crash.run`` collected
    the failures and raised them in the fixture's teardown, so the summary
    read "1 passed, 1 error" for a test whose check failed."""
    pytester.makepyfile(
        """
def test_log(blkdebug_disk, blkdebug_crash):
    with blkdebug_disk.record() as run:
        blkdebug_disk.write(0, b"A" * 512)
        blkdebug_disk.flush()

    def check(crash):
        with crash.open() as image:
            assert image.read(0, 1) == b"A"

    blkdebug_crash.run(run, check)
"""
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "-p", "no:subtests")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*AssertionError: 1 crash states failed; the first, e0-none*"])


def test_a_state_of_another_split_item_is_not_called_missing(pytester):
    """``--blkdebug-crash=ID`` on a split test: the items without the state
    were skipped with "no crash state ID in this test", though it is."""
    pytester.makepyfile(
        """
import pytest

@pytest.mark.blkdebug_split(2)
def test_log(blkdebug_disk, blkdebug_crash):
    with blkdebug_disk.record() as run:
        blkdebug_disk.write(0, b"A" * 512)
        blkdebug_disk.write(512, b"B" * 512)
    for crash in blkdebug_crash.states(run):
        with blkdebug_crash.check(crash):
            pass
"""
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "-rs", "--blkdebug-crash=e0-p1")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(
        ["*crash state e0-p1 is checked by another split item, not split1of2*"]
    )
    assert "no crash state" not in result.stdout.str()


@pytest.mark.parametrize("details", [{}, {"size": -1}, {"size": "big"}, {"size": 2.5}])
def test_an_adapters_truncate_without_a_good_size_is_refused_when_reported(tmp_path, details):
    """``engine.file_op("truncate", path, size=...)``: no size was a bare
    KeyError, -1 a bare OSError only when an image was built, 2.5 was
    taken as 2."""
    disk = Disk.create(tmp_path / "disk.img", 4096)
    with disk.record():
        with pytest.raises(ValueError, match="size= must be an int >= 0"):
            disk.engine.file_op("truncate", disk.path, **details)
    disk.close()


@pytest.mark.parametrize("link", ["hard", "symbolic"])
def test_restore_replaces_a_link_instead_of_writing_through_it(tmp_path, link):
    """docs/crash.md: crash images never touch the live image. ``restore``
    into a folder where the file's name was a link to the live image (a
    hard link kept as a backup, a symlink farm) wrote the crash image into
    the live image."""
    disk = Disk.create(tmp_path / "disk.img", 4096)
    with disk.record() as run:
        disk.write(0, b"A" * 512)
    target = tmp_path / "restored"
    target.mkdir()
    if link == "hard":
        os.link(disk.path, target / "disk.img")
    else:
        os.symlink(disk.path, target / "disk.img")
    run.crashes().by_id("e0-none").restore(target)
    assert (tmp_path / "disk.img").read_bytes()[:512] == b"A" * 512  # live image untouched
    assert (target / "disk.img").read_bytes() == bytes(4096)
    assert not (target / "disk.img").is_symlink()
    disk.close()
