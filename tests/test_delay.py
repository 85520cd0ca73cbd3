"""``delay`` and ``delay_jitter``: requests wait, measured by the wall clock.

The timing tests compare sums over many requests, with generous bounds: 100
requests delayed 0.01 s each take at least a second (a sleep never returns
early), and requests the rule does not match run at the speed of a disk with
no rule at all, within a margin far below the delay they would have had. The
jitter tests read the engine's decisions: the same seed gives the same
delays, another seed others.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pytest_blkdebug import Disk, InjectError
from pytest_blkdebug.core.engine import Engine
from pytest_blkdebug.core.events import READ

DELAY = 0.01
REQUESTS = 100


def slow_reads(jitter: float = 0.0) -> InjectError:
    return InjectError(
        "read_aio", errno=0, iotype="read", delay=DELAY, delay_jitter=jitter, name="slow"
    )


def timed(disk: Disk, operation: str, count: int) -> float:
    start = time.perf_counter()
    for i in range(count):
        if operation == "read":
            disk.read(i * 512, 512)
        else:
            disk.write(i * 512, b"w" * 512)
    return time.perf_counter() - start


def test_100_delayed_requests_take_at_least_a_second(tmp_path: Path) -> None:
    with Disk.create(tmp_path / "d.img", "1M", rules=[slow_reads()]) as disk:
        elapsed = timed(disk, "read", REQUESTS)
        assert disk.rule("slow").hits == REQUESTS
        assert disk.engine.injected_delay == pytest.approx(REQUESTS * DELAY)
    assert elapsed >= REQUESTS * DELAY, f"{REQUESTS} reads delayed {DELAY}s took {elapsed:.3f}s"


def test_requests_the_rule_does_not_match_are_not_slowed(tmp_path: Path) -> None:
    with Disk.create(tmp_path / "plain.img", "1M") as plain:
        plain.read(0, 512)  # warm up: first-call costs go to no one
        baseline = timed(plain, "write", REQUESTS)
    with Disk.create(tmp_path / "d.img", "1M", rules=[slow_reads()]) as disk:
        disk.read(0, 512)  # arms the rule (and is delayed itself)
        writes = timed(disk, "write", REQUESTS)
        assert disk.rule("slow").hits == 1
    # Delayed, the writes would take >= 1 s; unslowed they take milliseconds.
    # The bound leaves room for a loaded machine, not for a delay.
    assert writes < baseline * 5 + 0.5, f"writes {writes:.4f}s vs baseline {baseline:.4f}s"


def test_errno_and_delay_fail_after_waiting(tmp_path: Path) -> None:
    rule = InjectError("read_aio", iotype="read", delay=0.05, once=True, name="slow-fail")
    with Disk.create(tmp_path / "d.img", "1M", rules=[rule]) as disk:
        start = time.perf_counter()
        try:
            disk.read(0, 512)
        except OSError as exc:
            assert exc.errno == 5
        else:
            raise AssertionError("the delayed read did not fail")
        assert time.perf_counter() - start >= 0.05


def delays(seed: int, count: int = 20) -> list[float]:
    rule = slow_reads(jitter=0.005)
    engine = Engine([rule], seed=seed)
    engine.fire("read_aio")
    decisions = [engine.check(READ, 0, 512) for _ in range(count)]
    return [d.delay for d in decisions if d is not None]


def test_seeded_jitter_is_reproducible() -> None:
    first = delays(7)
    assert len(first) == 20
    assert all(DELAY <= d < DELAY + 0.005 for d in first)
    assert len(set(first)) == len(first)  # each request draws its own jitter
    assert delays(7) == first  # the same seed: the same delays
    assert delays(8) != first  # another seed: others


def test_seeded_jitter_is_reproducible_on_a_disk(tmp_path: Path) -> None:
    def run(seed: int) -> list[float]:
        engine = Engine([slow_reads(jitter=0.005)], seed=seed)
        with Disk.create(tmp_path / f"d{seed}.img", "1M", engine=engine) as disk:
            return [timed(disk, "read", 1) for _ in range(5)]

    # each read waits at least its own seeded delay, at most a little more
    for measured, wanted in zip(run(11), delays(11, 5), strict=True):
        assert measured >= wanted
