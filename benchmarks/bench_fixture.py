"""What the blkdebug_disk fixture costs a suite: whole pytest runs, compared.

Generates two suites of N tests (default 400) in a temporary directory:

- ``disks``: every test gets a fresh ``blkdebug_disk`` of 1 GiB (sparse) with
  two rules (a set-state and an inject-error from module markers), writes
  4 KiB and reads it back through the engine;
- ``plain``: every test uses only ``tmp_path``, writing and reading a 4 KiB
  file.

Each suite runs as a whole ``python -m pytest`` in a subprocess (start-up,
collection, fixtures, reporting, teardown: what a user waits for); the best
of three runs is kept. Prints both times, the per-test overhead and the ratio
(target: at most 1.5).

    python benchmarks/bench_fixture.py [--tests 400] [--repeat 3] [--size 1G]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PER_MODULE = 50

DISK_MODULE = """\
import errno
import pytest

pytestmark = [
    pytest.mark.set_state("write_aio", 2, state=1),
    pytest.mark.inject_error("write_aio", state=2, sector=2048, errno=errno.ENOSPC),
]

{tests}
"""

DISK_TEST = """
def test_disk_{n}(blkdebug_disk):
    blkdebug_disk.write(0, b"d" * 4096)
    assert blkdebug_disk.read(0, 4096) == b"d" * 4096
    assert blkdebug_disk.state == 2
"""

PLAIN_MODULE = "{tests}\n"

PLAIN_TEST = """
def test_plain_{n}(tmp_path):
    path = tmp_path / "file"
    path.write_bytes(b"d" * 4096)
    assert path.read_bytes() == b"d" * 4096
"""


def write_suite(root: Path, module: str, test: str, count: int, ini: str) -> Path:
    root.mkdir(parents=True)
    root.joinpath("pytest.ini").write_text(ini)
    for start in range(0, count, PER_MODULE):
        tests = "".join(test.format(n=n) for n in range(start, min(count, start + PER_MODULE)))
        root.joinpath(f"test_{start // PER_MODULE:03d}.py").write_text(module.format(tests=tests))
    return root


def run_suite(root: Path, count: int, *extra: str) -> float:
    """Wall time of one whole pytest run; fails loudly if any test did not pass.

    Each suite gets its own ``--basetemp``, so each pays for removing its own
    previous run's files rather than whichever suite ran three sessions ago.
    """
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    basetemp = root.parent / f"basetemp-{root.name}{''.join(extra)}"
    args = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        f"--basetemp={basetemp}",
        *extra,
        str(root),
    ]
    start = time.perf_counter()
    proc = subprocess.run(
        args, cwd=root, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    elapsed = time.perf_counter() - start
    if proc.returncode != 0 or f"{count} passed" not in proc.stdout:
        raise SystemExit(f"suite {root.name} did not pass:\n{proc.stdout[-3000:]}{proc.stderr}")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tests", type=int, default=400, help="tests per suite (default 400)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per suite, best kept")
    parser.add_argument("--size", default="1G", help="image size of the disk suite (default 1G)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-fixture-") as tmp:
        base = Path(tmp)
        disks = write_suite(
            base / "disks",
            DISK_MODULE,
            DISK_TEST,
            args.tests,
            f"[pytest]\nblkdebug_image_size = {args.size}\n",
        )
        plain = write_suite(base / "plain", PLAIN_MODULE, PLAIN_TEST, args.tests, "[pytest]\n")
        run_suite(plain, args.tests)  # warm the page cache and imports once
        run_suite(disks, args.tests)
        times: dict[str, list[float]] = {"plain": [], "disks": [], "unloaded": []}
        for _ in range(args.repeat):  # interleaved, so drift hits all alike
            times["plain"].append(run_suite(plain, args.tests))
            times["disks"].append(run_suite(disks, args.tests))
            times["unloaded"].append(run_suite(plain, args.tests, "-pno:blkdebug"))
    best = {name: min(values) for name, values in times.items()}
    ratio = best["disks"] / best["plain"]
    per_test = (best["disks"] - best["plain"]) / args.tests * 1e6
    runs = {name: ", ".join(f"{t:.3f}" for t in values) for name, values in times.items()}
    print(
        f"{args.tests} tests per suite, best of {args.repeat} whole pytest runs "
        f"(python {sys.version.split()[0]}, {os.cpu_count()} CPUs)"
    )
    print(
        f"  tmp_path only, plugin not loaded:       {best['unloaded']:7.3f} s  "
        f"(runs: {runs['unloaded']})"
    )
    print(
        f"  tmp_path only, plugin loaded:           {best['plain']:7.3f} s  (runs: {runs['plain']})"
    )
    print(
        f"  blkdebug_disk ({args.size}, 2 rules, 4 KiB I/O): {best['disks']:7.3f} s  "
        f"(runs: {runs['disks']})"
    )
    print(f"  overhead per test: {per_test:.0f} us; ratio {ratio:.2f} (target <= 1.5)")
    return 0 if ratio <= 1.5 else 1


if __name__ == "__main__":
    raise SystemExit(main())
