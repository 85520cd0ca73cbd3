"""Costs that grow with the rule set: listing, looking up and reporting many
rules armed by one event, registering many custom events, and reading TOML
files of many rules (inline arrays and arrays of tables).

Each was quadratic once (issue 12 items 9-11); each is linear now. Wall
time of one run of each, in seconds.

    python benchmarks/bench_rules.py [--rules N]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable

import pytest_blkdebug as bd
from pytest_blkdebug.core.events import EventRegistry
from pytest_blkdebug.report import format_report
from pytest_blkdebug.rulefiles import loads_toml


def timed(label: str, fn: Callable[[], object]) -> None:
    start = time.perf_counter()
    fn()
    print(f"{label:44} {time.perf_counter() - start:8.3f} s", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rules", type=int, default=20_000)
    args = parser.parse_args()
    n = args.rules
    with tempfile.TemporaryDirectory() as directory:
        rules = [bd.InjectError("read_aio", sector=2 * i + 1, name=f"r{i}") for i in range(n)]
        disk = bd.Disk.create(os.path.join(directory, "bench.img"), "1G", rules=rules)
        disk.read(0, 512)  # read_aio arms all of them
        timed(f"{n} armed rules: disk.rules", lambda: disk.rules)
        timed(
            f"{n} armed rules: disk.rule(name) x 3",
            lambda: [disk.rule(f"r{i}").armed for i in (0, n // 2, n - 1)],
        )
        timed(f"{n} armed rules: format_report", lambda: format_report(disk))
        disk.close()
    names = [f"event_{i}" for i in range(16_000)]
    timed("16000 custom events: EventRegistry", lambda: EventRegistry(names))
    inline = "inject-error = [\n" + "".join(
        f'  {{event = "read_aio", sector = {i}}},\n' for i in range(3000)
    )
    timed("3000 rules in a TOML inline array", lambda: loads_toml(inline + "]\n"))
    tables = "".join(f'[[inject-error]]\nevent = "read_aio"\nsector = {i}\n' for i in range(3000))
    timed("3000 rules as TOML [[inject-error]] tables", lambda: loads_toml(tables))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
