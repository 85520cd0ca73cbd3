"""Crash states cost what was written, not the image size (core/crash.py).

Two measurements, both targets from issue 10:

1. Recording: ``Disk.write`` of 4 KiB while a recording runs, against the
   same write with no recording (target: ratio <= 1.5). Runs are
   interleaved and the best of ROUNDS is kept for each side.
2. Materializing: record 1,000 writes of 4 KiB with a flush after every
   100th (10 flushes), list the crash states (``run.crashes()``), then build
   every state's image (``crash.open()``, then close, which recycles the
   copy for the next state) on a
   64 MiB image and on a 16 GiB sparse image. Target: the per-state time on
   the 16 GiB image is at most 1.5x the 64 MiB one. Offsets are random 4 KiB
   blocks of each image (seeded), so both see the same amount of data. An
   extra row builds every 10th state afresh (base snapshot + its writes).

    python benchmarks/bench_crash.py [--writes N] [--rounds R] [--max-states M]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import tempfile
import time

import pytest_blkdebug as bd
from pytest_blkdebug.core.crash import Recording

BLOCK = 4096


def write_cost(directory: str, n: int, rounds: int) -> tuple[float, float]:
    """Best per-write seconds (plain, recording) over interleaved rounds."""
    disk = bd.Disk.create(os.path.join(directory, "rec.img"), "1G")
    data = b"x" * BLOCK
    offsets = [(i % 4096) * 2 * BLOCK for i in range(n)]

    def run_writes() -> float:
        start = time.perf_counter()
        write = disk.write
        for offset in offsets:
            write(offset, data)
        return (time.perf_counter() - start) / n

    plain = recording = float("inf")
    for _ in range(rounds):
        plain = min(plain, run_writes())
        with disk.record() as run:
            recording = min(recording, run_writes())
        run.close()
    disk.close()
    return plain, recording


def record(
    directory: str, size: str, writes: int, flushes: int
) -> tuple[bd.Disk, Recording, float]:
    disk = bd.Disk.create(os.path.join(directory, f"img-{size}.img"), size)
    blocks = disk.size // BLOCK
    rng = random.Random(42)
    every = writes // flushes
    start = time.perf_counter()
    with disk.record() as run:
        for i in range(writes):
            disk.write(rng.randrange(blocks) * BLOCK, rng.randbytes(BLOCK))
            if (i + 1) % every == 0:
                disk.flush()
    return disk, run, time.perf_counter() - start


def materialize(
    directory: str, sizes: list[str], writes: int, flushes: int, max_states: int
) -> dict[str, dict[str, float]]:
    """Record on each image, list its states, then build the states of all
    images interleaved (state i of each in turn), so the page cache's
    write-back slows every image alike."""
    rows: dict[str, dict[str, float]] = {}
    lists = {}
    for size in sizes:
        disk, run, recorded = record(directory, size, writes, flushes)
        start = time.perf_counter()
        crashes = run.crashes(max_states=max_states)
        listed = time.perf_counter() - start
        lists[size] = crashes
        rows[size] = {
            "states": crashes.states,
            "distinct": len(crashes),
            "record_s": recorded,
            "list_s": listed,
            "build_s": 0.0,
        }
        disk.close()
    for i in range(max(len(c) for c in lists.values())):
        for size, crashes in lists.items():
            if i < len(crashes):
                start = time.perf_counter()
                crashes[i].open().close()
                rows[size]["build_s"] += time.perf_counter() - start
    # Honesty row: every 10th state built afresh (base snapshot + all its
    # effective writes), as the first open of a file is, no copy recycled.
    for i in range(0, max(len(c) for c in lists.values()), 10):
        for size, crashes in lists.items():
            if i < len(crashes):
                start = time.perf_counter()
                crashes[i].open(engine=bd.Engine()).close()
                rows[size]["fresh_s"] = rows[size].get("fresh_s", 0.0) + time.perf_counter() - start
                rows[size]["fresh_n"] = rows[size].get("fresh_n", 0.0) + 1
    for row in rows.values():
        row["fresh_ms"] = 1000 * row["fresh_s"] / row["fresh_n"]
        total = row["list_s"] + row["build_s"]
        row["per_state_ms"] = 1000 * total / row["distinct"]
        row["states_per_s"] = row["distinct"] / total
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--writes", type=int, default=1000)
    parser.add_argument("--flushes", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--max-states", type=int, default=64)
    parser.add_argument("--requests", type=int, default=3000, help="writes per recording round")
    args = parser.parse_args()
    print(f"Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="bench-crash-") as directory:
        plain, recording = write_cost(directory, args.requests, args.rounds)
        print("\n1. Recording cost, Disk.write of 4 KiB (best of rounds)")
        print(f"   plain      {plain * 1e6:7.2f} us/write")
        print(f"   recording  {recording * 1e6:7.2f} us/write   ratio {recording / plain:.2f}")
        print(
            f"\n2. Materializing every crash state: {args.writes} writes of 4 KiB, "
            f"{args.flushes} flushes, max_states={args.max_states}"
        )
        rows = materialize(directory, ["64M", "16G"], args.writes, args.flushes, args.max_states)
        for size, row in rows.items():
            print(
                f"   {size:>4} image: {row['states']:.0f} states, {row['distinct']:.0f} distinct; "
                f"record {row['record_s'] * 1000:.0f} ms, list {row['list_s']:.2f} s, "
                f"build {row['build_s']:.2f} s; {row['per_state_ms']:.2f} ms/state, "
                f"{row['states_per_s']:.0f} states/s"
            )
        ratio = rows["16G"]["per_state_ms"] / rows["64M"]["per_state_ms"]
        print(f"   per-state time 16 GiB / 64 MiB: {ratio:.2f}")
        fresh = rows["16G"]["fresh_ms"] / rows["64M"]["fresh_ms"]
        print(
            f"   built afresh (no recycled copy, every 10th state): "
            f"64M {rows['64M']['fresh_ms']:.2f} ms/state, "
            f"16G {rows['16G']['fresh_ms']:.2f} ms/state, ratio {fresh:.2f}"
        )


if __name__ == "__main__":
    main()
