"""``delay`` and ``delay_jitter``: the seeded jitter.

The jitter tests read the engine's decisions: the same seed gives the same
delays, another seed others, and every delay lies in [delay, delay+jitter).
"""

from __future__ import annotations

from pytest_blkdebug import InjectError
from pytest_blkdebug.core.engine import Engine
from pytest_blkdebug.core.events import READ

DELAY = 0.01


def slow_reads(jitter: float = 0.0) -> InjectError:
    return InjectError(
        "read_aio", errno=0, iotype="read", delay=DELAY, delay_jitter=jitter, name="slow"
    )


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
