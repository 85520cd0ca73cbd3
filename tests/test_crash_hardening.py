"""Attacks on power-loss recording and crash states (core/crash.py,
crashstates.py, crashplan.py): orders, lifecycles and reuse the authors did
not try. Indexed in tests/test_hostile.py."""

from __future__ import annotations

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
