"""Seeded probability: the rate, reproducibility, and per-rule independence.

``probability=p`` fails each request the rule would fail with probability p,
decided by the rule's own stream, seeded from (engine seed, rule name): the
same seed gives the same failing requests, and one rule's decisions do not
move when other rules see other traffic.
"""

from __future__ import annotations

import math
import random

import pytest

from pytest_blkdebug import Engine, InjectError
from pytest_blkdebug.core.events import READ, WRITE

N = 10_000
P = 0.1


def binomial_interval(n: int, p: float, z: float = 3.2905) -> tuple[float, float]:
    """Normal approximation of the two-sided 99.9% interval (z = 3.2905) of a
    Binomial(n, p) count; with n*p = 1000 the approximation is excellent."""
    mean, sd = n * p, math.sqrt(n * p * (1 - p))
    return mean - z * sd, mean + z * sd


def failures(engine: Engine, iotype: int, n: int, offset: int = 0) -> list[int]:
    """Indices (0..n-1) of the requests the engine failed."""
    return [i for i in range(n) if engine.check(iotype, offset, 512) is not None]


def test_rate_inside_the_binomial_interval() -> None:
    engine = Engine([InjectError("none", probability=P, name="flaky")], seed=1234)
    engine.fire("none")
    failed = failures(engine, READ, N)
    lo, hi = binomial_interval(N, P)
    assert lo <= len(failed) <= hi, (len(failed), lo, hi)  # 901..1099 for N=10,000
    status = engine.rule("flaky")
    assert status.hits == len(failed) and status.skipped == N - len(failed)


@pytest.mark.parametrize("seed", [0, 1, 2**31 - 1, 987654321])
def test_rate_for_several_seeds(seed: int) -> None:
    engine = Engine([InjectError("none", probability=P)], seed=seed)
    engine.fire("none")
    lo, hi = binomial_interval(N, P)
    assert lo <= len(failures(engine, READ, N)) <= hi


def sequence(seed: int) -> list[int]:
    engine = Engine([InjectError("none", probability=P, name="flaky")], seed=seed)
    engine.fire("none")
    return failures(engine, READ, 2000)


def test_same_seed_same_sequence_other_seed_other_sequence() -> None:
    assert sequence(42) == sequence(42)
    assert sequence(42) != sequence(43)


def test_seed_is_always_an_int_and_random_when_not_given() -> None:
    seeds = {Engine().seed for _ in range(8)}
    assert all(isinstance(s, int) for s in seeds)
    assert len(seeds) > 1
    assert Engine(seed=7).seed == 7
    with pytest.raises(TypeError):
        Engine(seed="7")  # type: ignore[arg-type]


def test_a_rules_stream_ignores_other_rules_traffic() -> None:
    """Rule B (writes) fails the same writes whatever rule A (reads) sees."""

    def b_failures(reads_between: int) -> list[int]:
        rules = [
            InjectError("none", iotype="read", probability=0.5, name="A"),
            InjectError("none", iotype="write", probability=P, name="B"),
        ]
        engine = Engine(rules, seed=99)
        engine.fire("none")
        rng = random.Random(reads_between)
        failed = []
        for i in range(2000):
            for _ in range(rng.randrange(reads_between + 1)):
                engine.check(READ, 0, 512)  # A's traffic: draws from A's stream only
            if engine.check(WRITE, 0, 512) is not None:
                failed.append(i)
        return failed

    assert b_failures(0) == b_failures(3) == b_failures(10)


def test_stream_depends_on_the_rule_name_not_its_position() -> None:
    def run(extra: list[InjectError]) -> list[int]:
        engine = Engine([*extra, InjectError("none", probability=P, name="flaky")], seed=5)
        engine.fire("none")
        return failures(engine, READ, 2000, offset=1 << 20)

    other = [InjectError("cow_read", name="unrelated")]
    assert run([]) == run(other)


def test_probability_zero_and_one() -> None:
    never = Engine([InjectError("none", probability=0)], seed=1)
    never.fire("none")
    assert failures(never, READ, 500) == []
    always = Engine([InjectError("none", probability=1)], seed=1)
    always.fire("none")
    assert len(failures(always, READ, 500)) == 500
