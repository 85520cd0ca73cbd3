"""blkdebug-nbd against nbdkit on the same image, with real clients.

Both servers serve one 256 MiB raw image full of data over a Unix socket:
``blkdebug-nbd IMAGE`` (no rules: the engine's cost with nothing armed)
and ``nbdkit --filter=error file IMAGE error-rate=0`` (an error-injection
filter that injects nothing, the closest C equivalent). Each workload runs
against each server in turn, alternating which goes first, ``--runs`` times;
the table gives the medians and the ratio blkdebug-nbd / nbdkit.

Workloads and targets:
  * ``nbdcopy URI null:``: the whole image, multi-connection, 256 KiB
    requests (target: at most 1.5x nbdkit's time);
  * ``qemu-img bench -c 20000 -d 8 -s 4096``: 4 KiB random-offset reads,
    queue depth 8, one connection (target: at most 2.0x);
  * ``qemu-img bench -w ...``: the same with writes (informational).

Run: ``python benchmarks/bench_nbd.py [--runs 7] [--size 256M]``. Needs
nbdkit, nbdcopy and qemu-img; exits 0 when the targets are met, 1 if not.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass

TARGETS = {"nbdcopy": 1.5, "qemu-img bench read": 2.0}


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[str]
    uri: str


def make_image(path: str, size: int) -> None:
    """A raw image of ``size`` bytes of incompressible data (no holes: a hole
    would let nbdcopy skip the read through block status)."""
    block = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for i in range(size >> 20):
            f.write(block[i % 4096 :] + block[: i % 4096])


def start_blkdebug(image: str) -> Server:
    exe = shutil.which("blkdebug-nbd")
    command = [exe] if exe else [sys.executable, "-m", "pytest_blkdebug.nbd"]
    proc = subprocess.Popen([*command, image], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    uri = proc.stdout.readline().strip()
    if not uri.startswith("nbd"):
        proc.kill()
        raise RuntimeError(f"blkdebug-nbd printed {uri!r} instead of a URI")
    return Server("blkdebug-nbd", proc, uri)


def start_nbdkit(image: str, sock: str) -> Server:
    proc = subprocess.Popen(
        ["nbdkit", "-f", "-U", sock, "--filter=error", "file", image, "error-rate=0"], text=True
    )
    deadline = time.monotonic() + 10
    while not os.path.exists(sock):
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise RuntimeError("nbdkit did not start")
        time.sleep(0.01)
    return Server("nbdkit", proc, f"nbd+unix:///?socket={sock}")


def timed(cmd: Sequence[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, timeout=300)
    return time.perf_counter() - t0


def workloads(uri: str, count: int) -> dict[str, list[str]]:
    bench = ["qemu-img", "bench", "-f", "raw", "-c", str(count), "-d", "8", "-s", "4096"]
    return {
        "nbdcopy": ["nbdcopy", uri, "null:"],
        "qemu-img bench read": [*bench, uri],
        "qemu-img bench write": [*bench, "-w", uri],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--size", default="256M", help="image size (M suffix)")
    parser.add_argument("--count", type=int, default=20000, help="qemu-img bench -c")
    args = parser.parse_args(argv)
    for tool in ("nbdkit", "nbdcopy", "qemu-img"):
        if shutil.which(tool) is None:
            print(f"bench_nbd: {tool} not found", file=sys.stderr)
            return 2
    size = int(args.size.rstrip("Mm")) << 20
    with tempfile.TemporaryDirectory(prefix="bench-nbd-") as tmp:
        image = os.path.join(tmp, "img.raw")
        make_image(image, size)
        servers = [start_blkdebug(image), start_nbdkit(image, os.path.join(tmp, "kit.sock"))]
        times: dict[tuple[str, str], list[float]] = {}
        try:
            for run in range(args.runs):
                order = servers if run % 2 == 0 else servers[::-1]
                for server in order:
                    for work, cmd in workloads(server.uri, args.count).items():
                        times.setdefault((work, server.name), []).append(timed(cmd))
        finally:
            for server in servers:
                server.proc.terminate()
                try:
                    server.proc.communicate(timeout=10)
                except subprocess.TimeoutExpired:
                    server.proc.kill()

    ok = True
    print(
        f"\nimage {args.size}, {args.runs} interleaved runs, medians in seconds "
        f"({os.cpu_count()} CPUs, Python {sys.version.split()[0]})\n"
    )
    header = f"{'workload':<24}{'nbdkit':>10}{'blkdebug-nbd':>14}{'ratio':>8}{'target':>8}  result"
    print(header)
    print("-" * len(header))
    for work in workloads("", args.count):
        kit = statistics.median(times[(work, "nbdkit")])
        ours = statistics.median(times[(work, "blkdebug-nbd")])
        ratio = ours / kit
        target = TARGETS.get(work)
        verdict = "-" if target is None else ("ok" if ratio <= target else "MISSED")
        ok = ok and verdict != "MISSED"
        print(
            f"{work:<24}{kit:>10.3f}{ours:>14.3f}{ratio:>7.2f}x"
            f"{(f'{target:.1f}x' if target else '-'):>8}  {verdict}"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
