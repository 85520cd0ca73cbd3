"""Why bench_engine.py's "1000 armed, no hit" row misses 1.5x: its floor in CPython.

The row asks Disk.read/Disk.write of 4 KiB to be at most 1.5x os.pread/
os.pwrite while a thousand sector rules are armed and none matches, so
every request must be tested against them. This script measures the
shipped Disk against variants of its fast path that make the armed test
cheaper, down to variants that are *not exact* (they would let a matching
request through) and so only bound what any exact test could cost:

  shipped                  Disk as released (the gate's matcher: a Python call)
  set lookup, exact        the test inlined as one C-level frozenset lookup of
                           the request's page, plus the alignment test that
                           makes it exact for aligned requests of <= 4 KiB
  set lookup, inexact      the lookup without the alignment test (a bound)
  empty matcher, inexact   the Python call to a matcher that returns False
  no armed test, inexact   the rules armed, the fast path not asking them:
                           the 0-rules path (the floor of all the above)

The workload is bench_engine.py's: even 4 KiB blocks, rules on the odd ones.
Runs interleave (os call, variant, os call, ...) and keep the best of
ROUNDS; ``--clock cpu`` counts this thread's CPU time. BENCHMARKS.md ("The
armed row's floor") has the figures and what they mean.

    python benchmarks/bench_armed_floor.py [--requests N] [--rounds R] [--clock wall|cpu]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections.abc import Callable

import pytest_blkdebug as bd

BLOCK = 4096
SPAN = 1000
ARMED_PAGES = frozenset((2 * i + 1) * BLOCK for i in range(SPAN))  # the odd blocks


def armed_rules() -> list[bd.InjectError]:
    return [bd.InjectError("none", sector=page // 512) for page in sorted(ARMED_PAGES)]


class SetLookupExact(bd.Disk):
    """The armed test as one frozenset lookup, exact for aligned requests of
    up to 4 KiB (the others would ask the matcher; none occur here)."""

    def read(self, offset: int, length: int, on_hold: object = None) -> bytes:
        image = self.image
        pages = ARMED_PAGES
        if (
            type(offset) is int
            and type(length) is int
            and offset >= 0
            and length >= 0
            and offset + length <= image.limit
            and (not offset & 4095 and length <= 4096 and offset not in pages)
        ):
            data = os.pread(image.fd, length, offset)
            if len(data) == length:
                return data
        raise AssertionError("not reached in this workload")

    def write(
        self, offset: int, data: bytes | bytearray | memoryview, on_hold: object = None
    ) -> None:
        image = self.image
        pages = ARMED_PAGES
        length = len(data) if type(data) is bytes else memoryview(data).nbytes
        if (
            type(offset) is int
            and offset >= 0
            and offset + length <= image.limit
            and not image.readonly
            and (not offset & 4095 and length <= 4096 and offset not in pages)
        ):
            try:
                if os.pwrite(image.fd, data, offset) < length:
                    image.pwrite(offset, data)
            finally:
                image.dirty_event = image.dirty_check = True
            if self.engine.recorders:
                raise AssertionError("not reached in this workload")
            return
        raise AssertionError("not reached in this workload")


class SetLookupInexact(bd.Disk):
    """The lookup alone, without the alignment test: not exact (a bound)."""

    def read(self, offset: int, length: int, on_hold: object = None) -> bytes:
        image = self.image
        pages = ARMED_PAGES
        if (
            type(offset) is int
            and type(length) is int
            and offset >= 0
            and length >= 0
            and offset + length <= image.limit
            and offset not in pages
        ):
            data = os.pread(image.fd, length, offset)
            if len(data) == length:
                return data
        raise AssertionError("not reached in this workload")

    def write(
        self, offset: int, data: bytes | bytearray | memoryview, on_hold: object = None
    ) -> None:
        image = self.image
        pages = ARMED_PAGES
        length = len(data) if type(data) is bytes else memoryview(data).nbytes
        if (
            type(offset) is int
            and offset >= 0
            and offset + length <= image.limit
            and not image.readonly
            and offset not in pages
        ):
            try:
                if os.pwrite(image.fd, data, offset) < length:
                    image.pwrite(offset, data)
            finally:
                image.dirty_event = image.dirty_check = True
            if self.engine.recorders:
                raise AssertionError("not reached in this workload")
            return
        raise AssertionError("not reached in this workload")


def empty_matcher(offset: int, length: int) -> bool:
    return False


def with_gates(check: Callable[[int, int], bool] | None) -> Callable[[bd.Disk], None]:
    """Replace the disk's gate tests (a private hook: this script only)."""

    def apply(disk: bd.Disk) -> None:
        disk._read_gate.check = check  # noqa: SLF001
        disk._write_gate.check = check  # noqa: SLF001

    return apply


VARIANTS: list[tuple[str, type[bd.Disk], Callable[[bd.Disk], None] | None]] = [
    ("shipped", bd.Disk, None),
    ("set lookup, exact", SetLookupExact, None),
    ("set lookup, inexact", SetLookupInexact, None),
    ("empty matcher, inexact", bd.Disk, with_gates(empty_matcher)),
    ("no armed test, inexact", bd.Disk, with_gates(None)),
]

CLOCK = time.perf_counter


def timed(fn: Callable[[int], object], n: int) -> float:
    clock = CLOCK
    start = clock()
    for i in range(n):
        fn(i)
    return (clock() - start) / n


def measure(
    cls: type[bd.Disk], tweak: Callable[[bd.Disk], None] | None, n: int, rounds: int, directory: str
) -> dict[str, float]:
    path = os.path.join(directory, "bench.img")
    bd.Disk.create(path, "1G").close()
    disk = cls(path, engine=bd.Engine(armed_rules()))
    if tweak is not None:
        tweak(disk)
    fd = disk.fileno()
    data = b"x" * BLOCK

    def offset(i: int) -> int:
        return (i % SPAN) * 2 * BLOCK  # even 4 KiB blocks only

    pairs = {
        "read": (lambda i: os.pread(fd, BLOCK, offset(i)), lambda i: disk.read(offset(i), BLOCK)),
        "write": (lambda i: os.pwrite(fd, data, offset(i)), lambda i: disk.write(offset(i), data)),
    }
    best: dict[str, float] = {}
    for name, (base, ours) in pairs.items():
        base(0), ours(0)
        for _ in range(rounds):
            for label, fn in ((f"{name}:os", base), (f"{name}:disk", ours)):
                t = timed(fn, n)
                best[label] = min(best.get(label, t), t)
    disk.close()
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    args = parser.parse_args()
    global CLOCK
    CLOCK = time.thread_time if args.clock == "cpu" else time.perf_counter
    print(
        f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cores; "
        f"1000 armed rules, none hit; {args.requests} requests x best of {args.rounds}; "
        f"ns per request ({args.clock} clock)"
    )
    print(
        f"{'fast path':24} {'os.pread':>9} {'read':>6} {'ratio':>6}   "
        f"{'os.pwrite':>9} {'write':>6} {'ratio':>6}"
    )
    with tempfile.TemporaryDirectory() as directory:
        for label, cls, tweak in VARIANTS:
            r = measure(cls, tweak, args.requests, args.rounds, directory)
            print(
                f"{label:24} {r['read:os'] * 1e9:9.0f} {r['read:disk'] * 1e9:6.0f} "
                f"{r['read:disk'] / r['read:os']:6.2f}   {r['write:os'] * 1e9:9.0f} "
                f"{r['write:disk'] * 1e9:6.0f} {r['write:disk'] / r['write:os']:6.2f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
