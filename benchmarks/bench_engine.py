"""Per-request cost of the engine: Disk.read/Disk.write of 4 KiB against
os.pread/os.pwrite on the same image, side by side in one process.

Configurations (target: every ratio <= 1.5):
  0 rules            - a Disk with no rules at all
  1000 idle rules    - rules on an event the workload never raises (cow_read)
  1000 armed, no hit - sector rules armed at open (event `none`) on the odd
                       4 KiB blocks, while the workload touches the even ones,
                       so every request is checked against them and none matches
Extra row (not a target, shown for honesty):
  1000 re-armed      - the same sector rules on write_aio, re-armed by every write

Runs are interleaved (baseline, disk, baseline, disk, ...) and the best of
ROUNDS is kept for each, so a busy machine slows both sides alike. On a
machine other processes keep busy, ``--clock cpu`` counts this thread's CPU
time (user + system, so the system call is in it) instead of wall time.

    python benchmarks/bench_engine.py [--requests N] [--rounds R] [--clock wall|cpu]
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
SPAN = 1000  # distinct 8 KiB-strided offsets the workload cycles through


def odd_block_rules(event: str) -> list[bd.InjectError]:
    return [bd.InjectError(event, sector=(2 * i + 1) * (BLOCK // 512)) for i in range(1000)]


CONFIGS: list[tuple[str, Callable[[], list[bd.InjectError]], bool]] = [
    ("0 rules", lambda: [], True),
    ("1000 idle rules", lambda: [bd.InjectError("cow_read", sector=i) for i in range(1000)], True),
    ("1000 armed, no hit", lambda: odd_block_rules("none"), True),
    ("1000 re-armed per write", lambda: odd_block_rules("write_aio"), False),
]


CLOCK = time.perf_counter


def timed(fn: Callable[[int], object], n: int) -> float:
    clock = CLOCK
    start = clock()
    for i in range(n):
        fn(i)
    return (clock() - start) / n


def measure(
    rules: list[bd.InjectError],
    n: int,
    rounds: int,
    directory: str,
    disk_class: type[bd.Disk] = bd.Disk,
    tweak: Callable[[bd.Disk], None] | None = None,
) -> dict[str, float]:
    """Best seconds per request of each side; ``disk_class`` and ``tweak``
    (called on the open disk) let bench_armed_floor.py measure variants."""
    disk = disk_class.create(os.path.join(directory, "bench.img"), "1G", rules=rules)
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
        base(0), ours(0)  # warm up: allocate the blocks, fill the caches
        for _ in range(rounds):
            for label, fn in ((f"{name}:os", base), (f"{name}:disk", ours)):
                t = timed(fn, n)
                best[label] = min(best.get(label, t), t)
    disk.close()
    return best


def parse_args(doc: str) -> argparse.Namespace:
    """--requests, --rounds and --clock (which sets ``CLOCK``), for this
    script and bench_armed_floor.py."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    args = parser.parse_args()
    global CLOCK
    CLOCK = time.thread_time if args.clock == "cpu" else time.perf_counter
    return args


def main() -> int:
    args = parse_args(__doc__)
    print(
        f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cores; "
        f"{args.requests} requests x best of {args.rounds} interleaved rounds; "
        f"ns per request ({args.clock} clock)"
    )
    print(
        f"{'configuration':26} {'os.pread':>9} {'Disk.read':>10} {'ratio':>6}   "
        f"{'os.pwrite':>9} {'Disk.write':>10} {'ratio':>6}  target"
    )
    worst = 0.0
    with tempfile.TemporaryDirectory() as directory:
        for label, make_rules, is_target in CONFIGS:
            r = measure(make_rules(), args.requests, args.rounds, directory)
            read_ratio = r["read:disk"] / r["read:os"]
            write_ratio = r["write:disk"] / r["write:os"]
            if is_target:
                worst = max(worst, read_ratio, write_ratio)
            print(
                f"{label:26} {r['read:os'] * 1e9:9.0f} {r['read:disk'] * 1e9:10.0f} {read_ratio:6.2f}   "
                f"{r['write:os'] * 1e9:9.0f} {r['write:disk'] * 1e9:10.0f} {write_ratio:6.2f}  "
                f"{'<= 1.5' if is_target else '(info)'}"
            )
    print(f"worst target ratio: {worst:.2f} ({'met' if worst <= 1.5 else 'MISSED'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
