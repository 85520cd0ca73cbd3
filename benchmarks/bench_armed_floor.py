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

import os
import platform
import tempfile
from collections.abc import Callable

import bench_engine  # beside this script: the same workload and timing loop

import pytest_blkdebug as bd

#: The first bytes of the odd 4 KiB blocks, where bench_engine's armed rules are.
ARMED_PAGES = frozenset((2 * i + 1) * bench_engine.BLOCK for i in range(bench_engine.SPAN))


def armed_rules() -> list[bd.InjectError]:
    return bench_engine.odd_block_rules("none")


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
    ("empty matcher, inexact", bd.Disk, with_gates(empty_matcher)),
    ("no armed test, inexact", bd.Disk, with_gates(None)),
]


def main() -> int:
    args = bench_engine.parse_args(__doc__)
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
            r = bench_engine.measure(
                armed_rules(), args.requests, args.rounds, directory, cls, tweak
            )
            print(
                f"{label:24} {r['read:os'] * 1e9:9.0f} {r['read:disk'] * 1e9:6.0f} "
                f"{r['read:disk'] / r['read:os']:6.2f}   {r['write:os'] * 1e9:9.0f} "
                f"{r['write:disk'] * 1e9:6.0f} {r['write:disk'] / r['write:os']:6.2f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
